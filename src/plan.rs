//! The plan: what a run would do, computed without side effects. Resolves the pipeline's
//! parameters (typed, from the command line), orders steps in waves and renders each
//! step's parameters. Values that only exist at run time are shown as placeholders.

use std::sync::Arc;

use indexmap::IndexMap;
use minijinja::Value as TValue;
use minijinja::value::{Enumerator, Object, ObjectRepr};
use serde::Serialize;
use serde_json::Value;

use crate::diagnostic::did_you_mean;
use crate::pipeline::analyze::canonical_text;
use crate::pipeline::load::CheckedPipeline;
use crate::pipeline::model::{ParamType, Pipeline};
use crate::template::environment;

/// What secret values are replaced with wherever they are shown.
pub const MASK: &str = "***";

/// Problems with the parameters given for a run; all of them, not just the first.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid parameters:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ParamErrors {
    pub problems: Vec<String>,
}

/// Parses `NAME=VALUE` pairs from the command line.
pub fn parse_assignments(raw: &[String]) -> Result<Vec<(String, String)>, ParamErrors> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for r in raw {
        match r.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => out.push((k.trim().to_string(), v.to_string())),
            _ => problems.push(format!("`{r}` is not NAME=VALUE")),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ParamErrors { problems })
    }
}

/// Resolves the pipeline's parameters from given text values and defaults, converting
/// each to its declared type.
pub fn resolve_params(
    p: &Pipeline,
    given: &[(String, String)],
) -> Result<IndexMap<String, Value>, ParamErrors> {
    let mut problems = Vec::new();
    let mut values = IndexMap::new();
    let mut seen = std::collections::HashSet::new();
    for (name, raw) in given {
        if !seen.insert(name.as_str()) {
            problems.push(format!("parameter `{name}` is given more than once"));
            continue;
        }
        let Some(spec) = p.params.get(name) else {
            let hint = did_you_mean(name, p.params.keys().map(String::as_str))
                .map(|h| format!(" ({h})"))
                .unwrap_or_else(|| {
                    if p.params.is_empty() {
                        " (the pipeline declares no parameters)".to_string()
                    } else {
                        let names: Vec<&str> = p.params.keys().map(String::as_str).collect();
                        format!(" (the pipeline declares: {})", names.join(", "))
                    }
                });
            problems.push(format!("unknown parameter `{name}`{hint}"));
            continue;
        };
        match convert(spec.kind, raw) {
            Ok(v) => {
                values.insert(name.clone(), v);
            }
            Err(why) => {
                let shown = if spec.secret { MASK } else { raw.as_str() };
                problems.push(format!("parameter `{name}`: `{shown}` {why}"));
            }
        }
    }
    let mut missing = Vec::new();
    let mut ordered = IndexMap::new();
    for (name, spec) in &p.params {
        if let Some(v) = values.shift_remove(name) {
            ordered.insert(name.clone(), v);
        } else if let Some(d) = &spec.default {
            // Defaults were type-checked by validation; a string default may have been
            // written as a plain YAML number (`2014`), so convert by text.
            let v = match (spec.kind, d) {
                (ParamType::String, other) if !other.is_string() => {
                    Value::String(canonical_text(other))
                }
                _ => d.clone(),
            };
            ordered.insert(name.clone(), v);
        } else if !seen.contains(name.as_str()) {
            // (A value given but refused is reported above, not as missing.)
            missing.push(name.clone());
        }
    }
    if !missing.is_empty() {
        problems.push(format!(
            "missing required parameter{} {} (give {})",
            if missing.len() > 1 { "s" } else { "" },
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            missing
                .iter()
                .map(|m| format!("-p {m}=..."))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if problems.is_empty() {
        Ok(ordered)
    } else {
        Err(ParamErrors { problems })
    }
}

/// Converts a text value to a parameter type, explicitly (no YAML-style guessing).
pub fn convert(kind: ParamType, raw: &str) -> Result<Value, String> {
    match kind {
        ParamType::String => Ok(Value::String(raw.to_string())),
        ParamType::Integer => raw
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| "is not an integer".to_string()),
        ParamType::Number => raw
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| "is not a number".to_string()),
        ParamType::Boolean => match raw.trim() {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("is not a boolean (write true or false)".to_string()),
        },
    }
}

/// The parameter values as shown to people: secrets masked.
pub fn masked_params(p: &Pipeline, values: &IndexMap<String, Value>) -> IndexMap<String, Value> {
    values
        .iter()
        .map(|(k, v)| {
            let secret = p.params.get(k).is_some_and(|s| s.secret);
            (
                k.clone(),
                if secret {
                    Value::String(MASK.into())
                } else {
                    v.clone()
                },
            )
        })
        .collect()
}

/// One step of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    pub needs: Vec<String>,
    pub wave: usize,
    pub params: IndexMap<String, String>,
    /// Rendered `for_each` items, when the step fans out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_each: Option<Vec<String>>,
    /// Why the step would be skipped, if its `when` is already known to be false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
    /// Problems met while rendering (e.g. a filter failing on a placeholder).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The job as the target describes it (`plan --remote`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteJob>,
}

/// A step's job as the target describes it.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteJob {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<u64>,
    /// `None`: the target does not say (the Data Workbench gateway).
    pub parameters: Option<Vec<crate::backend::JobParam>>,
    /// Why the job could not be described (not found, ambiguous).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A whole plan, as `plan --format json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub pipeline: String,
    pub params: IndexMap<String, Value>,
    pub steps: Vec<PlannedStep>,
}

/// Builds the plan of a checked pipeline with resolved parameter values.
pub fn plan(checked: &CheckedPipeline, params: &IndexMap<String, Value>) -> Plan {
    let p = &checked.pipeline;
    let shown = masked_params(p, params);
    let waves = checked
        .graph
        .waves()
        .unwrap_or_else(|| vec![0; p.steps.len()]);
    let order = checked
        .graph
        .topo_order()
        .unwrap_or_else(|| (0..p.steps.len()).collect());
    let env = environment();
    let params_value = TValue::from(minijinja::value::Serde(&shown));
    let run = TValue::from(minijinja::value::Serde(serde_json::json!({
        "id": "<run-time: run.id>",
        "pipeline": p.name,
        "started_at": "<run-time: run.started_at>",
        "trigger": "manual",
    })));
    let event = TValue::from_object(Placeholder("event".into()));
    let steps_ctx: Arc<std::sync::RwLock<IndexMap<String, TValue>>> = Arc::default();
    let mut planned: Vec<Option<PlannedStep>> = vec![None; p.steps.len()];
    for i in order {
        let step = &p.steps[i];
        let mut notes = Vec::new();
        let steps_value = TValue::from_object(StepsSoFar {
            len: steps_ctx.read().map_or(0, |m| m.len()),
            all: Arc::clone(&steps_ctx),
        });
        let base = minijinja::context! {
            params => params_value.clone(),
            steps => steps_value,
            run => run.clone(),
            event => event.clone(),
        };
        let skip = step.when.as_deref().and_then(|w| {
            match env.compile_expression(w).and_then(|e| e.eval(&base)) {
                Ok(v) if !v.is_true() && !mentions_placeholder(&v) => {
                    Some(format!("`when: {w}` is false"))
                }
                _ => None,
            }
        });
        let items: Option<Vec<String>> = step.for_each.as_ref().map(|fe| {
            if let Some(items) = &fe.items {
                items
                    .iter()
                    .map(|t| render(env, t, &base, &mut notes))
                    .collect()
            } else if let Some(expr) = &fe.expr {
                match env.compile_expression(expr).and_then(|e| e.eval(&base)) {
                    Ok(v) => match v.try_iter() {
                        Ok(it) => it.map(|x| x.to_string()).collect(),
                        Err(_) => vec![format!("<run-time: items of {expr}>")],
                    },
                    Err(_) => vec![format!("<run-time: items of {expr}>")],
                }
            } else {
                Vec::new()
            }
        });
        let ctx = if step.for_each.is_some() {
            minijinja::context! { item => "<each item>", ..base }
        } else {
            base
        };
        let rendered: IndexMap<String, String> = step
            .params
            .iter()
            .map(|(k, t)| (k.clone(), render(env, t, &ctx, &mut notes)))
            .collect();
        steps_ctx.write().unwrap_or_else(|e| e.into_inner()).insert(
            step.id.clone(),
            TValue::from_object(StepView {
                id: step.id.clone(),
                outputs: if step.for_each.is_some() {
                    IndexMap::new()
                } else {
                    rendered.clone()
                },
            }),
        );
        planned[i] = Some(PlannedStep {
            id: step.id.clone(),
            job: step.job.clone(),
            job_id: step.job_id,
            needs: checked
                .graph
                .deps(i)
                .iter()
                .map(|&d| p.steps[d].id.clone())
                .collect(),
            wave: waves[i],
            params: rendered,
            for_each: items,
            skip,
            notes,
            remote: None,
        });
    }
    let mut steps: Vec<PlannedStep> = planned.into_iter().flatten().collect();
    steps.sort_by_key(|s| s.wave);
    Plan {
        pipeline: p.name.clone(),
        params: shown,
        steps,
    }
}

fn render(
    env: &minijinja::Environment<'static>,
    text: &str,
    ctx: &TValue,
    notes: &mut Vec<String>,
) -> String {
    if !text.contains("{{") && !text.contains("{%") {
        return text.to_string();
    }
    match env.render_str(text, ctx) {
        Ok(s) => s,
        Err(e) => {
            notes.push(format!(
                "`{text}` cannot be rendered before the run: {}",
                // (`OutOfFuel` has no detail; its kind says "engine ran out of fuel".)
                e.detail()
                    .map_or_else(|| e.kind().to_string(), str::to_string)
            ));
            format!("<run-time: {text}>")
        }
    }
}

fn mentions_placeholder(v: &TValue) -> bool {
    v.as_str().is_some_and(|s| s.starts_with("<run-time"))
}

/// `steps` in plan context: the steps planned so far (the first `len` entries of a
/// shared, append-only map), a map sorted by id as seen from templates. Shared rather
/// than copied for each step, which was quadratic in time and memory on big pipelines.
#[derive(Debug)]
struct StepsSoFar {
    all: Arc<std::sync::RwLock<IndexMap<String, TValue>>>,
    len: usize,
}

impl Object for StepsSoFar {
    fn get_value(self: &Arc<Self>, key: &TValue) -> Option<TValue> {
        let all = self.all.read().ok()?;
        let (i, _, v) = all.get_full(key.as_str()?)?;
        (i < self.len).then(|| v.clone())
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let Ok(all) = self.all.read() else {
            return Enumerator::Empty;
        };
        let mut keys: Vec<&String> = all.keys().take(self.len).collect();
        keys.sort();
        Enumerator::Values(keys.into_iter().map(|k| TValue::from(k.as_str())).collect())
    }
}

/// `steps.<id>` in plan context: rendered parameters are known; everything the job
/// reports, and the run's id, status and duration, are placeholders.
#[derive(Debug)]
struct StepView {
    id: String,
    outputs: IndexMap<String, String>,
}

impl Object for StepView {
    fn get_value(self: &Arc<Self>, key: &TValue) -> Option<TValue> {
        let key = key.as_str()?;
        Some(match key {
            "outputs" => TValue::from_object(OutputsView {
                id: self.id.clone(),
                known: self.outputs.clone(),
            }),
            other => TValue::from(format!("<run-time: steps.{}.{other}>", self.id)),
        })
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["outputs", "run_id", "status", "duration", "attempts"])
    }
}

#[derive(Debug)]
struct OutputsView {
    id: String,
    known: IndexMap<String, String>,
}

impl Object for OutputsView {
    fn get_value(self: &Arc<Self>, key: &TValue) -> Option<TValue> {
        let key = key.as_str()?;
        Some(match self.known.get(key) {
            Some(v) => TValue::from(v.clone()),
            None => TValue::from(format!("<run-time: steps.{}.outputs.{key}>", self.id)),
        })
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.known.keys().map(|k| TValue::from(k.clone())).collect())
    }
}

/// A value only a trigger provides (`event.*`): every attribute is a placeholder.
#[derive(Debug)]
struct Placeholder(String);

impl Object for Placeholder {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }
    fn get_value(self: &Arc<Self>, key: &TValue) -> Option<TValue> {
        Some(TValue::from_object(Placeholder(format!(
            "{}.{}",
            self.0, key
        ))))
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Empty
    }
    fn render(self: &Arc<Self>, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<run-time: {}>", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::load::load_bytes;

    /// Inputs the fuzzer (`fuzz/`) found or that guard the same bounds: each loads, and
    /// when valid with defaults for every parameter, plans, in bounded time and memory.
    #[test]
    fn fuzz_regressions_load_and_plan() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz-regressions");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz-regressions dir") {
            let path = entry.expect("dir entry").path();
            let bytes = std::fs::read(&path).expect("readable");
            let loaded = load_bytes(&path.display().to_string(), &bytes);
            seen += 1;
            let Some(checked) = loaded.checked else {
                continue;
            };
            if let Ok(params) = resolve_params(&checked.pipeline, &[]) {
                let _ = plan(&checked, &params);
            }
        }
        assert!(seen > 0, "no files in {}", dir.display());
    }

    #[test]
    fn a_render_bomb_runs_out_of_fuel() {
        let bytes =
            include_bytes!("../tests/fixtures/fuzz-regressions/render-bomb.yaml").as_slice();
        let checked = load_bytes("render-bomb.yaml", bytes)
            .checked
            .expect("the bomb is a valid pipeline");
        let params = resolve_params(&checked.pipeline, &[]).expect("no params");
        let planned = plan(&checked, &params);
        let step = &planned.steps[0];
        assert!(step.params["X"].starts_with("<run-time:"), "{step:?}");
        assert!(step.notes.iter().any(|n| n.contains("fuel")), "{step:?}");
    }
}
