//! Diagnostics: one problem found in one file, with its position, stable code and hint,
//! and the three ways `dwflow validate` prints them (human, JSON, GitHub annotations).

use std::fmt::Write as _;

use serde::Serialize;

use crate::pipeline::yaml::Pos;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding. `code` is stable: scripts and tests match on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub line: u32,
    pub column: u32,
    /// Length of the highlighted text in bytes (0: a point).
    #[serde(skip)]
    pub len: usize,
}

impl Diagnostic {
    pub fn error(code: &'static str, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            hint: None,
            line: pos.line.max(1),
            column: pos.col.max(1),
            len: pos.len,
        }
    }

    pub fn warning(code: &'static str, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, pos, message)
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

/// All findings for one file, with its text for snippets.
#[derive(Debug, Clone)]
pub struct FileReport {
    pub path: String,
    pub source: Option<String>,
    pub diagnostics: Vec<Diagnostic>,
}

impl FileReport {
    pub fn errors(&self) -> usize {
        self.count(Severity::Error)
    }
    pub fn warnings(&self) -> usize {
        self.count(Severity::Warning)
    }
    fn count(&self, s: Severity) -> usize {
        self.diagnostics.iter().filter(|d| d.severity == s).count()
    }
    /// Orders findings by position so output reads top to bottom.
    pub fn sort(&mut self) {
        self.diagnostics
            .sort_by(|a, b| (a.line, a.column, a.code).cmp(&(b.line, b.column, b.code)));
        self.diagnostics.dedup();
    }
}

/// `PATH:LINE:COL: error[CODE]: message`, then the source line with a caret and the hint.
pub fn render_human(report: &FileReport, out: &mut String) {
    let mut lines = LineCursor::new(report.source.as_deref());
    for d in &report.diagnostics {
        let _ = writeln!(
            out,
            "{}:{}:{}: {}[{}]: {}",
            report.path,
            d.line,
            d.column,
            d.severity.as_str(),
            d.code,
            d.message
        );
        if let Some(line_text) = lines.line(d.line as usize) {
            let gutter = d.line.to_string().len();
            let shown: String = line_text.chars().take(160).collect();
            let col = (d.column as usize).saturating_sub(1);
            let rest: String = shown.chars().skip(col).collect();
            let width = if d.len == 0 {
                1
            } else {
                rest.chars()
                    .scan(0usize, |bytes, c| {
                        *bytes += c.len_utf8();
                        Some(*bytes)
                    })
                    .take_while(|b| *b <= d.len)
                    .count()
                    .clamp(1, rest.chars().count().max(1))
            };
            let pad: String = shown
                .chars()
                .take(col)
                .map(|c| if c == '\t' { '\t' } else { ' ' })
                .collect();
            let _ = writeln!(out, "{:gutter$} |", "");
            let _ = writeln!(out, "{} | {}", d.line, shown);
            let _ = writeln!(out, "{:gutter$} | {}{}", "", pad, "^".repeat(width));
        }
        if let Some(hint) = &d.hint {
            let _ = writeln!(out, "  = hint: {hint}");
        }
        out.push('\n');
    }
}

/// The lines of a text by number (1-based), read forward from the last one asked for:
/// findings come sorted by line, so a report reads its file once, not once per finding
/// (which was quadratic: minutes for a big file with an error on every step).
struct LineCursor<'a> {
    text: Option<&'a str>,
    lines: std::str::Lines<'a>,
    /// Number of the line `lines` yields next.
    next: usize,
}

impl<'a> LineCursor<'a> {
    fn new(text: Option<&'a str>) -> Self {
        LineCursor {
            text,
            lines: text.unwrap_or_default().lines(),
            next: 1,
        }
    }

    fn line(&mut self, n: usize) -> Option<&'a str> {
        let text = self.text?;
        if n == 0 {
            return None;
        }
        if n < self.next {
            self.lines = text.lines();
            self.next = 1;
        }
        let line = self.lines.nth(n - self.next);
        self.next = n + 1;
        line
    }
}

/// GitHub Actions workflow commands: one `::error file=..,line=..,col=..::` per finding.
pub fn render_github(report: &FileReport, out: &mut String) {
    for d in &report.diagnostics {
        let mut msg = format!("[{}] {}", d.code, d.message);
        if let Some(h) = &d.hint {
            msg.push_str("\nhint: ");
            msg.push_str(h);
        }
        let _ = writeln!(
            out,
            "::{} file={},line={},col={},title=dwflow {}::{}",
            d.severity.as_str(),
            escape_property(&report.path),
            d.line,
            d.column,
            d.code,
            escape_data(&msg)
        );
    }
}

/// One JSON object per finding, with the file path.
#[derive(Serialize)]
pub struct JsonDiagnostic<'a> {
    pub file: &'a str,
    pub line: u32,
    pub column: u32,
    pub severity: Severity,
    pub code: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<&'a str>,
}

pub fn json_list(reports: &[FileReport]) -> Vec<JsonDiagnostic<'_>> {
    reports
        .iter()
        .flat_map(|r| {
            r.diagnostics.iter().map(move |d| JsonDiagnostic {
                file: &r.path,
                line: d.line,
                column: d.column,
                severity: d.severity,
                code: d.code,
                message: &d.message,
                hint: d.hint.as_deref(),
            })
        })
        .collect()
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

/// A word with its indefinite article: "a string", "an integer".
pub fn with_article(word: &str) -> String {
    let an = word.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {word}", if an { "an" } else { "a" })
}

/// "did you mean `x`?" for the closest candidate, if any is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

/// The candidate closest to `word` by Jaro-Winkler similarity, if similar enough.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_cursor_finds_lines_in_any_order() {
        let text = "a\nb\r\n\nd";
        let mut cursor = LineCursor::new(Some(text));
        for n in [1usize, 2, 2, 4, 3, 1, 5, 0, 4] {
            let expected = n.checked_sub(1).and_then(|i| text.lines().nth(i));
            assert_eq!(cursor.line(n), expected, "line {n}");
        }
        assert_eq!(LineCursor::new(None).line(1), None);
    }

    #[test]
    fn many_findings_render_each_with_its_line() {
        let source: String = (1..=2000).map(|i| format!("line {i}\n")).collect();
        let pos = |line| Pos {
            line,
            col: 1,
            ..Pos::default()
        };
        let report = FileReport {
            path: "big.yaml".into(),
            source: Some(source),
            diagnostics: [1500, 2, 2000, 7]
                .into_iter()
                .map(|l| Diagnostic::error("x", pos(l), "m"))
                .collect(),
        };
        let mut out = String::new();
        render_human(&report, &mut out);
        for l in [1500, 2, 2000, 7] {
            assert!(out.contains(&format!("{l} | line {l}\n")), "{out}");
        }
    }
}
