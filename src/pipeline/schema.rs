//! The JSON Schema of pipeline files: generated from the model types by schemars, and
//! applied to the untyped YAML tree by the `jsonschema` crate as the first validation
//! pass. Each schema error is mapped back to a line and column through the tree.

use std::sync::OnceLock;

use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use super::model::Pipeline;
use super::yaml::{Node, NodeValue, pointer_escape, pointer_tokens, scalar_display};
use crate::diagnostic::{Diagnostic, closest, did_you_mean, with_article};

/// The pipeline JSON Schema (draft 2020-12), as `dwflow schema` prints it.
pub fn pipeline_schema() -> Value {
    let schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<Pipeline>();
    let mut value = serde_json::to_value(schema).unwrap_or(Value::Null);
    strip_null(&mut value);
    add_integer_bounds(&mut value);
    value
}

/// schemars marks `u32`/`u64` fields with a `format`, which validators treat as an
/// annotation: add the `maximum` they imply, so that a value the model cannot hold is
/// reported at its place instead of failing the typed parse.
fn add_integer_bounds(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let max = match map.get("format").and_then(Value::as_str) {
                Some("uint32") => Some(Value::from(u32::MAX)),
                Some("uint64") => Some(Value::from(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(add_integer_bounds);
        }
        Value::Array(items) => items.iter_mut().for_each(add_integer_bounds),
        _ => {}
    }
}

/// `Option<T>` means "may be omitted", not "may be null": remove the `null` alternatives
/// schemars adds, so that an explicit `~` is reported instead of read as "absent".
fn strip_null(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                if types.len() > 1 {
                    types.retain(|t| t != "null");
                }
                if types.len() == 1 {
                    let single = types.remove(0);
                    map.insert("type".into(), single);
                }
            }
            let unwrap = match map.get("anyOf") {
                Some(Value::Array(alts)) if alts.len() == 2 => alts
                    .iter()
                    .position(|a| a.get("type").and_then(Value::as_str) == Some("null"))
                    .map(|null_at| alts[1 - null_at].clone()),
                _ => None,
            };
            if let Some(Value::Object(inner)) = unwrap {
                map.remove("anyOf");
                for (k, v) in inner {
                    map.entry(k).or_insert(v);
                }
            }
            for v in map.values_mut() {
                strip_null(v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_null),
        _ => {}
    }
}

/// The schema text exactly as checked in at `schemas/pipeline.schema.json`.
pub fn pipeline_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&pipeline_schema()).unwrap_or_default();
    text.push('\n');
    text
}

fn compiled() -> &'static (Value, Option<jsonschema::Validator>) {
    static CELL: OnceLock<(Value, Option<jsonschema::Validator>)> = OnceLock::new();
    CELL.get_or_init(|| {
        let schema = pipeline_schema();
        let validator = jsonschema::options()
            .should_validate_formats(false)
            .build(&schema)
            .ok();
        (schema, validator)
    })
}

/// What the schema pass learned: its diagnostics, the unknown keys to drop and the
/// scalars to keep as their source text before the typed parse.
#[derive(Default)]
pub struct SchemaOutcome {
    pub diagnostics: Vec<Diagnostic>,
    /// JSON pointers of entries to drop before the typed parse: unknown keys and values
    /// of the wrong type or out of range (all reported already), so that the semantic
    /// analyzer can still check the rest of the file.
    pub drop: Vec<String>,
    /// (pointer, text): plain scalars YAML typed as numbers or booleans whose source text
    /// is exactly their canonical form, kept as that text where a string is expected.
    pub keep_as_text: Vec<(String, String)>,
}

/// Runs the schema over `json` (the tree converted) and maps every error to a diagnostic.
pub fn check(tree: &Node, json: &Value, source: &str) -> SchemaOutcome {
    let mut out = SchemaOutcome::default();
    let (schema, validator) = compiled();
    let Some(validator) = validator else {
        out.diagnostics.push(Diagnostic::error(
            "internal",
            tree.pos,
            "the built-in pipeline schema failed to compile",
        ));
        return out;
    };
    for err in validator.iter_errors(json) {
        let pointer = err.instance_path().as_str().to_string();
        map_error(err.kind(), &pointer, tree, json, schema, source, &mut out);
    }
    out
}

fn map_error(
    kind: &ValidationErrorKind,
    pointer: &str,
    tree: &Node,
    json: &Value,
    schema: &Value,
    source: &str,
    out: &mut SchemaOutcome,
) {
    let node = tree.lookup(pointer, source).unwrap_or(tree);
    let what = describe_location(pointer, json);
    if matches!(
        kind,
        ValidationErrorKind::Type { .. }
            | ValidationErrorKind::Enum { .. }
            | ValidationErrorKind::OneOfNotValid { .. }
            | ValidationErrorKind::Minimum { .. }
            | ValidationErrorKind::Maximum { .. }
    ) {
        out.drop.push(pointer.to_string());
    }
    match kind {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_keys(schema, pointer);
            for key in unexpected {
                let key_ptr = format!("{pointer}/{}", pointer_escape(key));
                let pos = tree
                    .lookup_key(&key_ptr, source)
                    .map_or(node.pos, |k| k.pos);
                let hint = did_you_mean(key, allowed.iter().map(String::as_str)).or_else(|| {
                    (!allowed.is_empty())
                        .then(|| format!("allowed keys here: {}", allowed.join(", ")))
                });
                out.diagnostics.push(
                    Diagnostic::error("unknown-key", pos, format!("unknown key `{key}` in {what}"))
                        .with_hint_opt(hint),
                );
                out.drop.push(key_ptr);
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or("?");
            let hint = match name {
                "name" => "add `name: <pipeline name>` at the top of the file",
                "steps" => "add a `steps:` list with at least one step",
                "id" => "give the step an `id` such as `id: aggregate`",
                _ => "add the missing key",
            };
            // A misspelt required key (`attemps`) is reported once, as an unknown key
            // whose hint names this one.
            let allowed = allowed_keys(schema, pointer);
            let misspelt = match &node.value {
                NodeValue::Map(entries) => entries.iter().any(|(k, _)| {
                    let k = k.key_text(source);
                    !allowed.contains(&k)
                        && closest(&k, allowed.iter().map(String::as_str)) == Some(name)
                }),
                _ => false,
            };
            if !misspelt {
                out.diagnostics.push(
                    Diagnostic::error(
                        "missing-key",
                        node.pos,
                        format!("{what} is missing the required key `{name}`"),
                    )
                    .with_hint(hint),
                );
            }
            // Reported; drop the incomplete object (when it sits in a mapping) so the
            // typed parse, and with it the analysis of the rest, can go on.
            if !pointer.is_empty() {
                out.drop.push(pointer.to_string());
            }
        }
        ValidationErrorKind::Type { kind } => type_error(kind, pointer, node, &what, source, out),
        ValidationErrorKind::Pattern { pattern } => {
            let text = scalar_display(&node.value);
            let (code, hint) = if pointer_tokens(pointer).last().map(String::as_str) == Some("id") {
                (
                    "invalid-id",
                    "step ids use lowercase letters, digits, `_` and `-`, e.g. `daily-energy`"
                        .to_string(),
                )
            } else if pattern.contains("ms|s|m|h|d") {
                (
                    "invalid-duration",
                    "write a duration such as `90s`, `30m`, `2h` or `1h30m`".to_string(),
                )
            } else {
                ("invalid-value", format!("the value must match `{pattern}`"))
            };
            out.diagnostics.push(
                Diagnostic::error(code, node.pos, format!("invalid {what}: `{text}`"))
                    .with_hint(hint),
            );
        }
        ValidationErrorKind::Enum { .. } | ValidationErrorKind::OneOfNotValid { .. }
            if !allowed_values(schema, pointer).is_empty() =>
        {
            let choices = allowed_values(schema, pointer);
            let text = scalar_display(&node.value);
            let hint = did_you_mean(&text, choices.iter().map(String::as_str))
                .unwrap_or_else(|| format!("use one of: {}", choices.join(", ")));
            out.diagnostics.push(
                Diagnostic::error(
                    "invalid-value",
                    node.pos,
                    format!("invalid {what}: `{text}`"),
                )
                .with_hint(hint),
            );
        }
        ValidationErrorKind::MinItems { limit } if pointer == "/steps" => {
            let _ = limit;
            out.diagnostics.push(
                Diagnostic::error("missing-key", node.pos, "the pipeline has no steps")
                    .with_hint("add at least one step under `steps:`"),
            );
        }
        ValidationErrorKind::Minimum { limit }
        | ValidationErrorKind::ExclusiveMinimum { limit } => {
            out.diagnostics.push(
                Diagnostic::error(
                    "invalid-value",
                    node.pos,
                    format!(
                        "{what} is {}, below the minimum {limit}",
                        node.raw(source)
                            .map_or_else(|| scalar_display(&node.value), str::to_string)
                    ),
                )
                .with_hint(format!("use a value of at least {limit}")),
            );
        }
        ValidationErrorKind::Maximum { limit }
        | ValidationErrorKind::ExclusiveMaximum { limit } => {
            out.diagnostics.push(
                Diagnostic::error(
                    "invalid-value",
                    node.pos,
                    format!(
                        "{what} is {}, above the maximum {limit}",
                        node.raw(source)
                            .map_or_else(|| scalar_display(&node.value), str::to_string)
                    ),
                )
                .with_hint(format!("use a value of at most {limit}")),
            );
        }
        ValidationErrorKind::MinLength { .. } => {
            out.diagnostics.push(
                Diagnostic::error("invalid-value", node.pos, format!("{what} is empty"))
                    .with_hint("give a non-empty value"),
            );
        }
        other => {
            out.diagnostics.push(Diagnostic::error(
                "schema",
                node.pos,
                format!("{what}: {}", schema_message(other)),
            ));
        }
    }
}

fn schema_message(kind: &ValidationErrorKind) -> String {
    match kind {
        ValidationErrorKind::MinItems { limit } => format!("needs at least {limit} item(s)"),
        ValidationErrorKind::MaxItems { limit } => format!("allows at most {limit} item(s)"),
        ValidationErrorKind::UniqueItems => "items must be unique".into(),
        other => format!("does not match the schema ({})", other.keyword()),
    }
}

fn type_error(
    kind: &TypeKind,
    pointer: &str,
    node: &Node,
    what: &str,
    source: &str,
    out: &mut SchemaOutcome,
) {
    let expected: Vec<String> = match kind {
        TypeKind::Single(t) => vec![t.to_string()],
        TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect(),
    };
    let wants_string = expected.iter().any(|t| t == "string");
    let raw = node.raw(source).unwrap_or("").trim();
    if wants_string && node.value.is_scalar() && !matches!(node.value, NodeValue::Str(_)) {
        let canonical = scalar_display(&node.value);
        if !matches!(node.value, NodeValue::Null) && raw == canonical {
            // `Year: 2014` means the text "2014": nothing is converted, so keep it.
            out.keep_as_text
                .push((pointer.to_string(), raw.to_string()));
            out.drop.retain(|p| p != pointer);
            return;
        }
        let (message, hint) = match node.value {
            NodeValue::Null => (
                format!("{what} is empty (YAML reads `{raw}` as null), but text is expected"),
                if raw.is_empty() {
                    "write a value, or remove the key".to_string()
                } else {
                    format!("write \"{raw}\" in quotes if you mean that text")
                },
            ),
            _ => (
                format!(
                    "{what}: unquoted `{raw}` is read by YAML as the {} {canonical}, not as the text `{raw}`",
                    node.value.kind_name()
                ),
                format!("quote it to keep the text exactly: \"{raw}\""),
            ),
        };
        out.diagnostics
            .push(Diagnostic::error("implicit-type", node.pos, message).with_hint(hint));
        // Reported; analyze the rest as if it had been quoted.
        out.keep_as_text
            .push((pointer.to_string(), raw.to_string()));
        out.drop.retain(|p| p != pointer);
        return;
    }
    let found = node.value.kind_name();
    // In the words of YAML users (list, mapping), with articles.
    let wanted = expected
        .iter()
        .map(|t| {
            with_article(match t.as_str() {
                "array" => "list",
                "object" => "mapping",
                other => other,
            })
        })
        .collect::<Vec<_>>()
        .join(" or ");
    let mut hint = format!("write {wanted} here");
    if wants_string && matches!(node.value, NodeValue::Map(_)) && raw.starts_with('{') {
        hint = "a value that starts with `{{` must be quoted in YAML: \"{{ ... }}\"".to_string();
    } else if expected.iter().any(|t| t == "array") && !matches!(node.value, NodeValue::Seq(_)) {
        hint = format!("write a list, e.g. [{}]", scalar_display(&node.value));
    }
    out.diagnostics.push(
        Diagnostic::error(
            "wrong-type",
            node.pos,
            format!("{what} must be {wanted}, found {}", with_article(found)),
        )
        .with_hint(hint),
    );
}

/// A readable name for the place a pointer designates: "the pipeline", "step `rank`",
/// "`params.Year` of step `rank`", "`defaults.retry`".
pub fn describe_location(pointer: &str, json: &Value) -> String {
    let tokens = pointer_tokens(pointer);
    if tokens.is_empty() {
        return "the pipeline".to_string();
    }
    let path = |ts: &[String]| {
        let mut out = String::new();
        for t in ts {
            if t.parse::<usize>().is_ok() {
                out.push_str(&format!("[{t}]"));
            } else {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(t);
            }
        }
        out
    };
    if tokens[0] == "steps"
        && let Some(n) = tokens.get(1).and_then(|t| t.parse::<usize>().ok())
    {
        let step = json
            .pointer(&format!("/steps/{n}/id"))
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .map_or_else(|| format!("step #{}", n + 1), |id| format!("step `{id}`"));
        return if tokens.len() == 2 {
            step
        } else {
            format!("`{}` of {step}", path(&tokens[2..]))
        };
    }
    format!("`{}`", path(&tokens))
}

/// The schema node that applies at an instance pointer (following `$ref`, `properties`,
/// `items` and `additionalProperties`).
fn schema_at<'a>(schema: &'a Value, pointer: &str) -> Option<&'a Value> {
    let mut node = resolve(schema, schema);
    for token in pointer_tokens(pointer) {
        let next = node
            .get("properties")
            .and_then(|p| p.get(&token))
            .or_else(|| token.parse::<usize>().ok().and_then(|_| node.get("items")))
            .or_else(|| node.get("additionalProperties").filter(|v| v.is_object()))?;
        node = resolve(schema, next);
    }
    Some(node)
}

/// The values an enumeration allows at an instance pointer (`enum`, or `oneOf` of
/// `const`s as schemars writes documented enums).
fn allowed_values(schema: &Value, pointer: &str) -> Vec<String> {
    let Some(node) = schema_at(schema, pointer) else {
        return Vec::new();
    };
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect();
    }
    node.get("oneOf")
        .and_then(Value::as_array)
        .map(|alts| {
            alts.iter()
                .filter_map(|a| {
                    resolve(schema, a)
                        .get("const")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .or_else(|| {
                            a.get("enum")
                                .and_then(Value::as_array)
                                .and_then(|v| v.first())
                                .and_then(Value::as_str)
                                .map(str::to_string)
                        })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The property names the schema allows in the object at `pointer`.
fn allowed_keys(schema: &Value, pointer: &str) -> Vec<String> {
    schema_at(schema, pointer)
        .and_then(|n| n.get("properties"))
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..8 {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => match root.pointer(r.trim_start_matches('#')) {
                Some(target) => node = target,
                None => return node,
            },
            None => return node,
        }
    }
    node
}
