//! The template language: one minijinja environment (strict undefined, no auto-escaping)
//! shared by validate, plan and run, plus the static analysis the validator needs
//! (variable references and filter names of a template, without rendering it).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use minijinja::{Environment, UndefinedBehavior};

/// Work one render may do: about one unit per instruction or per 64 bytes of data
/// (so at most about 64 MB), far beyond what any job parameter template needs.
pub const RENDER_FUEL: u64 = 1_000_000;

/// The environment every pipeline template is compiled and rendered in.
pub fn environment() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        // A reference to something that does not exist is an error, never "".
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        // One render or evaluation may do this much work: pipeline files are untrusted
        // input, and `{% for a in 'x' * 100000 %}{% for b in 'x' * 100000 %}` would
        // otherwise run (and grow) without end in plan and run.
        env.set_fuel(Some(RENDER_FUEL));
        // A value is sent as written: a block scalar's final line break (`|`) stays,
        // as it does in a value without a template.
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
        {
            env.set_syntax(syntax);
        }
        env
    })
}

/// A template error with the byte range it concerns inside the template text.
#[derive(Debug, Clone)]
pub struct TemplateError {
    pub message: String,
    pub range: Option<std::ops::Range<usize>>,
}

impl From<minijinja::Error> for TemplateError {
    fn from(e: minijinja::Error) -> Self {
        let message = e
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| e.kind().to_string());
        TemplateError {
            message,
            range: e.range(),
        }
    }
}

/// What a template refers to: dotted variable paths (`params.year`,
/// `steps.aggregate.outputs.ResultDatasetName`) and filter names.
#[derive(Debug, Clone, Default)]
pub struct TemplateRefs {
    pub variables: Vec<String>,
    pub filters: Vec<String>,
}

/// Parses `text` as a template and lists what it refers to.
pub fn analyze_template(text: &str) -> Result<TemplateRefs, TemplateError> {
    if !text.contains("{{") && !text.contains("{%") {
        return Ok(TemplateRefs::default());
    }
    let tmpl = environment().template_from_str(text)?;
    let mut variables: Vec<String> = tmpl.undeclared_variables(true).into_iter().collect();
    variables.extend(subscript_paths(text, true));
    variables.sort();
    variables.dedup();
    Ok(TemplateRefs {
        variables,
        filters: filter_names(text, true),
    })
}

/// Parses `text` as an expression (`when`, `for_each.expr`) and lists what it refers to.
pub fn analyze_expression(text: &str) -> Result<TemplateRefs, TemplateError> {
    let expr = environment().compile_expression(text)?;
    let mut variables: Vec<String> = expr.undeclared_variables(true).into_iter().collect();
    variables.extend(subscript_paths(text, false));
    variables.sort();
    variables.dedup();
    Ok(TemplateRefs {
        variables,
        filters: filter_names(text, false),
    })
}

/// Whether the environment knows a filter, asked of minijinja itself so that the answer
/// follows its version and features.
pub fn filter_exists(name: &str) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Ok(guard) = cache.lock()
        && let Some(known) = guard.get(name)
    {
        return *known;
    }
    let probe = format!("{{{{ none | {name} }}}}");
    let known = match environment().render_str(&probe, ()) {
        Ok(_) => true,
        Err(e) => e.kind() != minijinja::ErrorKind::UnknownFilter,
    };
    if let Ok(mut guard) = cache.lock() {
        guard.insert(name.to_string(), known);
    }
    known
}

/// Roots whose members templates may reach by subscript: `steps['daily-energy']` is the
/// only way to name a step whose id has a `-`, `params["x"]` works as well.
const SUBSCRIPT_ROOTS: &[&str] = &["steps", "params"];

/// References written with a subscript right after the root (`steps['a-b'].outputs.X`,
/// `params["year"]`), as dotted paths of at most three parts (`steps.a-b.outputs`).
/// minijinja lists those as the bare root only, which would hide them from checks.
fn subscript_paths(text: &str, template: bool) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_block = !template;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if !in_block {
            if b == b'{' && matches!(bytes.get(i + 1), Some(b'{') | Some(b'%')) {
                in_block = true;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' => quote = Some(b),
            b'}' | b'%' if template && bytes.get(i + 1) == Some(&b'}') => {
                in_block = false;
                i += 2;
                continue;
            }
            _ if is_ident_byte(b) => {
                let start = i;
                while i < bytes.len() && is_ident_byte(bytes[i]) {
                    i += 1;
                }
                let after_dot = start > 0 && bytes[start - 1] == b'.';
                let root = &text[start..i];
                if !after_dot && SUBSCRIPT_ROOTS.contains(&root) {
                    let (parts, end) = accessors(text, i, 2);
                    if parts.first().is_some_and(|(subscript, _)| *subscript) {
                        let mut path = root.to_string();
                        for (_, part) in parts {
                            path.push('.');
                            path.push_str(&part);
                        }
                        out.push(path);
                        i = end;
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Up to `max` accessors (`.name` or `['name']` / `["name"]`) from byte `i`: each with
/// whether it was a subscript, and the byte after the last one.
fn accessors(text: &str, mut i: usize, max: usize) -> (Vec<(bool, String)>, usize) {
    let bytes = text.as_bytes();
    let mut parts = Vec::new();
    while parts.len() < max {
        match bytes.get(i) {
            Some(b'.') => {
                let start = i + 1;
                let mut j = start;
                while j < bytes.len() && is_ident_byte(bytes[j]) {
                    j += 1;
                }
                if j == start {
                    break;
                }
                parts.push((false, text[start..j].to_string()));
                i = j;
            }
            Some(b'[') => {
                let mut j = i + 1;
                while bytes.get(j).is_some_and(u8::is_ascii_whitespace) {
                    j += 1;
                }
                let Some(&q) = bytes.get(j).filter(|q| matches!(q, b'"' | b'\'')) else {
                    break;
                };
                let start = j + 1;
                let Some(len) = text[start..].find(q as char) else {
                    break;
                };
                let key = &text[start..start + len];
                let mut k = start + len + 1;
                while bytes.get(k).is_some_and(u8::is_ascii_whitespace) {
                    k += 1;
                }
                if bytes.get(k) != Some(&b']') || key.contains('\\') {
                    break;
                }
                parts.push((true, key.to_string()));
                i = k + 1;
            }
            _ => break,
        }
    }
    (parts, i)
}

/// Names of the filters a template applies: identifiers after a `|` inside `{{ }}` or
/// `{% %}` blocks (or anywhere, for a bare expression), outside string literals.
fn filter_names(text: &str, template: bool) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_block = !template;
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let b = bytes[i];
        if !in_block {
            if b == b'{' && matches!(bytes.get(i + 1), Some(b'{') | Some(b'%')) {
                in_block = true;
                i += 2;
                continue;
            }
            i += 1;
            continue;
        }
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' => quote = Some(b),
            b'}' | b'%' if template && bytes.get(i + 1) == Some(&b'}') => {
                in_block = false;
                i += 2;
                continue;
            }
            b'|' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j].is_ascii_whitespace() {
                    j += 1;
                }
                let start = j;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                if j > start {
                    out.push(text[start..j].to_string());
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nested_references_and_filters() {
        let refs = analyze_template(
            "{{ steps.agg.outputs.ResultDatasetName | upper }}-{{ params.year|int }}-{{ 'a|b' }}",
        )
        .unwrap();
        assert_eq!(
            refs.variables,
            vec!["params.year", "steps.agg.outputs.ResultDatasetName"]
        );
        assert_eq!(refs.filters, vec!["int", "upper"]);
    }

    #[test]
    fn finds_subscript_references() {
        let refs = analyze_template(
            "{{ steps['daily-energy'].outputs.ResultDatasetName }} {{ params[\"year\"] }} {{ x.steps['no'] }} {{ 'steps[\"q\"]' }}",
        )
        .unwrap();
        assert!(
            refs.variables
                .contains(&"steps.daily-energy.outputs".to_string()),
            "{refs:?}"
        );
        assert!(
            refs.variables.contains(&"params.year".to_string()),
            "{refs:?}"
        );
        assert!(
            !refs
                .variables
                .iter()
                .any(|v| v.contains("no") || v.contains('q')),
            "{refs:?}"
        );
        let refs = analyze_expression("steps[\"a-b\"].status == 'ok'").unwrap();
        assert!(
            refs.variables.contains(&"steps.a-b.status".to_string()),
            "{refs:?}"
        );
    }

    #[test]
    fn plain_text_is_not_parsed() {
        let refs = analyze_template("lhb | daily").unwrap();
        assert!(refs.variables.is_empty() && refs.filters.is_empty());
    }

    #[test]
    fn knows_builtin_filters_only() {
        assert!(filter_exists("upper"));
        assert!(filter_exists("default"));
        assert!(!filter_exists("uppercase"));
    }

    #[test]
    fn syntax_errors_carry_a_range() {
        let err = analyze_template("x {{ params.year + }}").unwrap_err();
        assert!(err.range.is_some(), "{err:?}");
    }
}
