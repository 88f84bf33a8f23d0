//! Loading a pipeline file: bytes -> YAML tree -> schema pass -> typed model -> semantic
//! analysis -> a checked pipeline. Each stage adds its findings to one report; a stage
//! runs as long as the one before it left something it can work on.

use std::path::Path;

use serde_json::Value;

use super::analyze::analyze;
use super::model::Pipeline;
use super::schema;
use super::yaml::{self, NodeValue};
use crate::diagnostic::{Diagnostic, FileReport};
use crate::graph::StepGraph;

/// A pipeline that passed every check: its model, resolved dependencies and graph.
#[derive(Debug, Clone)]
pub struct CheckedPipeline {
    pub pipeline: Pipeline,
    pub graph: StepGraph,
    /// Path as given by the user.
    pub path: String,
    /// The file's text, for content hashes and messages.
    pub source: String,
}

impl CheckedPipeline {
    pub fn step_ids(&self) -> Vec<String> {
        self.pipeline.steps.iter().map(|s| s.id.clone()).collect()
    }
}

/// The outcome of loading one file.
pub struct Loaded {
    pub report: FileReport,
    /// Present when the file has no errors (warnings allowed).
    pub checked: Option<CheckedPipeline>,
}

/// Reads and checks a file.
pub fn load_file(path: &Path) -> Loaded {
    let display = path.display().to_string();
    match read_capped(path) {
        Ok(bytes) => load_bytes(&display, &bytes),
        Err(e) => Loaded {
            report: FileReport {
                path: display,
                source: None,
                diagnostics: vec![
                    Diagnostic::error(
                        "io",
                        yaml::Pos {
                            line: 1,
                            col: 1,
                            ..Default::default()
                        },
                        format!("cannot read the file: {e}"),
                    )
                    .with_hint("check the path and its permissions"),
                ],
            },
            checked: None,
        },
    }
}

/// Reads at most one byte past the size limit, so a huge file costs no more than that.
fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(yaml::MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Checks a file's content; `path` is used in messages only.
pub fn load_bytes(path: &str, bytes: &[u8]) -> Loaded {
    let mut report = FileReport {
        path: path.to_string(),
        source: None,
        diagnostics: Vec::new(),
    };
    let tree = match yaml::parse(bytes) {
        Ok(tree) => tree,
        Err(e) => {
            // Keep the text (when it is text) so the error gets a snippet.
            report.source = std::str::from_utf8(bytes).ok().map(str::to_string);
            let hint = match e.kind {
                yaml::YamlErrorKind::DuplicateKey => {
                    "each key may appear once in a mapping; remove or rename one"
                }
                yaml::YamlErrorKind::Budget => {
                    "the file expands beyond dwflow's limits (aliases, nesting or size); write it out plainly"
                }
                yaml::YamlErrorKind::InvalidUtf8 => "save the file as UTF-8",
                yaml::YamlErrorKind::Empty => "start from an example in pipelines/",
                yaml::YamlErrorKind::TooLarge => "split the pipeline, or generate it smaller",
                yaml::YamlErrorKind::Syntax => "check indentation, quoting and `:` after keys",
            };
            report
                .diagnostics
                .push(Diagnostic::error(e.kind.code(), e.pos, e.message).with_hint(hint));
            return Loaded {
                report,
                checked: None,
            };
        }
    };
    // The tree was parsed from valid UTF-8 (minus a BOM, which spans skip too).
    let text = String::from_utf8_lossy(bytes);
    let source = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();

    if !matches!(tree.value, NodeValue::Map(_)) {
        report.diagnostics.push(
            Diagnostic::error(
                "wrong-type",
                tree.pos,
                format!(
                    "a pipeline file must be a mapping, found a {}",
                    tree.value.kind_name()
                ),
            )
            .with_hint("start with `name:` and `steps:` keys"),
        );
        report.source = Some(source);
        return Loaded {
            report,
            checked: None,
        };
    }

    let mut json = tree.to_json(&source);
    let outcome = schema::check(&tree, &json, &source);
    report.diagnostics.extend(outcome.diagnostics);
    for (ptr, text) in outcome.keep_as_text {
        if let Some(slot) = json.pointer_mut(&ptr) {
            *slot = Value::String(text);
        }
    }
    // Drop what the schema refused (already reported) so the rest can still be analyzed.
    for ptr in outcome.drop.iter().rev() {
        remove_pointer(&mut json, ptr);
    }

    if report.errors() > 0 {
        fill_placeholders(&mut json);
    }

    let pipeline: Option<Pipeline> = serde_json::from_value(json).ok();
    let mut checked = None;
    if let Some(pipeline) = pipeline {
        let analysis = analyze(&pipeline, &tree, &source);
        report.diagnostics.extend(analysis.diagnostics);
        if report.errors() == 0 {
            checked = Some(CheckedPipeline {
                graph: StepGraph::new(analysis.deps),
                pipeline,
                path: path.to_string(),
                source: source.clone(),
            });
        }
    } else if report.errors() == 0 {
        // The schema accepted what the types refuse: a gap between the two, reported
        // rather than hidden.
        report.diagnostics.push(Diagnostic::error(
            "schema",
            tree.pos,
            "the file matches the schema but not dwflow's pipeline model",
        ));
    }
    report.source = Some(source);
    report.sort();
    Loaded { report, checked }
}

/// Stand-ins for a missing (or refused, hence dropped) pipeline `name` and step `id`,
/// both reported already, so that the typed parse succeeds and the rest of the file is
/// still analyzed. The step stand-in (`#2`) cannot clash with a real id.
fn fill_placeholders(json: &mut Value) {
    let Value::Object(root) = json else { return };
    if !root.contains_key("name") {
        root.insert("name".into(), Value::String(String::new()));
    }
    if let Some(Value::Array(steps)) = root.get_mut("steps") {
        for (n, step) in steps.iter_mut().enumerate() {
            if let Value::Object(step) = step
                && !step.contains_key("id")
            {
                step.insert("id".into(), Value::String(format!("#{}", n + 1)));
            }
        }
    }
}

fn remove_pointer(json: &mut Value, ptr: &str) {
    let Some((parent, last)) = ptr.rsplit_once('/') else {
        return;
    };
    let key = last.replace("~1", "/").replace("~0", "~");
    match json.pointer_mut(parent) {
        Some(Value::Object(map)) => {
            map.shift_remove(&key);
        }
        // An item of a list: removing it would shift the positions of the items after
        // it (and of every finding about them), so drop the whole list instead, unless
        // it is the list of steps, which the analysis needs.
        Some(Value::Array(_)) if parent != "/steps" => remove_pointer(json, parent),
        _ => {}
    }
}
