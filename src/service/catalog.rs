//! The set of pipelines the service serves: every `*.yaml`/`*.yml` under `--pipelines`,
//! each validated on load. Invalid files are kept with their diagnostics (shown by the
//! API, the page and the log) and never started; the valid ones keep serving. A reload
//! builds a whole new catalog and swaps it in at once, so a run always starts from one
//! consistent set, and a run in flight keeps the definition it started with.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::diagnostic::{Diagnostic, Severity};
use crate::pipeline::load::{CheckedPipeline, load_file};

/// One pipeline file as loaded.
#[derive(Debug, Clone)]
pub struct Entry {
    pub file: String,
    pub name: Option<String>,
    pub source_sha256: Option<String>,
    pub checked: Option<Arc<CheckedPipeline>>,
    pub diagnostics: Vec<Diagnostic>,
}

/// A loaded set of pipelines, immutable once built.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub entries: Vec<Entry>,
    /// Valid pipelines by name.
    pub by_name: BTreeMap<String, Arc<CheckedPipeline>>,
    /// The git commit of the pipelines' checkout, if it is one.
    pub commit: Option<String>,
    pub loaded_at: String,
}

/// A problem in one file, as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub line: u32,
    pub column: u32,
    pub severity: &'static str,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl From<&Diagnostic> for Problem {
    fn from(d: &Diagnostic) -> Self {
        Problem {
            line: d.line,
            column: d.column,
            severity: match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            },
            code: d.code,
            message: d.message.clone(),
            hint: d.hint.clone(),
        }
    }
}

impl Catalog {
    /// Loads every pipeline file under `dir`.
    pub fn load(dir: &Path) -> Catalog {
        let (files, problems) = crate::cli::collect_files(&[dir.to_path_buf()]);
        let mut entries = Vec::new();
        for report in problems {
            // An empty directory is a valid (empty) set for a service.
            if report
                .diagnostics
                .iter()
                .any(|d| d.message.contains("no *.yaml"))
            {
                continue;
            }
            entries.push(Entry {
                file: report.path,
                name: None,
                source_sha256: None,
                checked: None,
                diagnostics: report.diagnostics,
            });
        }
        let mut by_name: BTreeMap<String, Arc<CheckedPipeline>> = BTreeMap::new();
        for file in files {
            entries.push(load_entry(&file, &mut by_name));
        }
        Catalog {
            entries,
            by_name,
            commit: git_commit(dir),
            loaded_at: crate::engine::journal::now(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CheckedPipeline>> {
        self.by_name.get(name)
    }

    pub fn invalid(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.checked.is_none())
    }
}

fn load_entry(file: &Path, by_name: &mut BTreeMap<String, Arc<CheckedPipeline>>) -> Entry {
    let loaded = load_file(file);
    let source_sha256 = loaded
        .report
        .source
        .as_deref()
        .map(|s| crate::secrets::sha256_hex(s.as_bytes()));
    let mut diagnostics = loaded.report.diagnostics;
    let mut checked = loaded.checked.map(Arc::new);
    let name = checked
        .as_ref()
        .map(|c| c.pipeline.name.clone())
        .or_else(|| loaded.report.source.as_deref().and_then(declared_name));
    if let (Some(n), Some(_)) = (&name, &checked) {
        if let Some(first) = by_name.get(n) {
            // Two files, one name: the API could not tell them apart.
            diagnostics.push(
                Diagnostic::error(
                    "duplicate-pipeline",
                    Default::default(),
                    format!("pipeline `{n}` is also defined in {}", first.path),
                )
                .with_hint("give each pipeline file its own `name`"),
            );
            checked = None;
        } else if let Some(c) = &checked {
            by_name.insert(n.clone(), Arc::clone(c));
        }
    }
    Entry {
        file: file.display().to_string(),
        name,
        source_sha256,
        checked,
        diagnostics,
    }
}

/// The `name:` an invalid file declares, so that the API and the page can say which
/// pipeline is broken (it is still never started).
fn declared_name(source: &str) -> Option<String> {
    use crate::pipeline::yaml::{self, NodeValue};
    let tree = yaml::parse(source.as_bytes()).ok()?;
    let text = source.strip_prefix('\u{feff}').unwrap_or(source);
    match &tree.lookup("/name", text)?.value {
        NodeValue::Str(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The commit checked out where the pipelines live, when that is a git work tree.
fn git_commit(dir: &Path) -> Option<String> {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "--verify", "--quiet", "HEAD"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let commit = text.trim();
    if !out.status.success() || commit.is_empty() {
        return None;
    }
    // A pipeline edited or added since that commit did not run as committed: say so.
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["status", "--porcelain", "--", "."])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dirty = status.status.success() && !status.stdout.is_empty();
    Some(if dirty {
        format!("{commit}-dirty")
    } else {
        commit.to_string()
    })
}
