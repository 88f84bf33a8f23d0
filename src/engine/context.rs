//! The template context of a running pipeline: typed params, the outputs and run facts
//! of finished steps, the run itself and the trigger event. Rendering uses the shared
//! minijinja environment with strict undefined, so a missing value is an error.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use indexmap::IndexMap;
use minijinja::Value as TValue;
use minijinja::value::Serde;
use serde_json::{Value, json};

use super::RunOptions;
use super::events::Outcome;
use crate::pipeline::model::{Pipeline, Step};
use crate::template::environment;

pub(crate) struct RunContext {
    params: TValue,
    run: TValue,
    event: TValue,
    /// Finished steps, shared with every rendering context rather than copied into each
    /// (copying made a 10,000-step run quadratic).
    steps: Arc<RwLock<BTreeMap<String, TValue>>>,
    started: IndexMap<String, Instant>,
    durations: IndexMap<String, u64>,
}

impl RunContext {
    pub fn new(
        p: &Pipeline,
        params: &IndexMap<String, Value>,
        run_id: &str,
        o: &RunOptions,
    ) -> Self {
        RunContext {
            params: TValue::from(Serde(params)),
            run: TValue::from(Serde(json!({
                "id": run_id,
                "pipeline": p.name,
                "started_at": super::journal::now(),
                "trigger": o.trigger,
            }))),
            event: TValue::from(Serde(&o.event)),
            steps: Arc::default(),
            started: IndexMap::new(),
            durations: IndexMap::new(),
        }
    }

    fn base(&self, item: Option<&str>) -> TValue {
        let steps = TValue::from_object(StepsView(Arc::clone(&self.steps)));
        match item {
            Some(item) => minijinja::context! {
                params => self.params.clone(),
                steps => steps,
                run => self.run.clone(),
                event => self.event.clone(),
                item => item,
            },
            None => minijinja::context! {
                params => self.params.clone(),
                steps => steps,
                run => self.run.clone(),
                event => self.event.clone(),
            },
        }
    }

    pub fn eval_when(&self, expr: &str) -> Result<bool, String> {
        let e = environment()
            .compile_expression(expr)
            .map_err(|e| e.to_string())?;
        e.eval(self.base(None))
            .map(|v| v.is_true())
            .map_err(|e| e.to_string())
    }

    /// The rendered `for_each` items, or `None` for a step without fan-out.
    pub fn fan_out(&self, step: &Step) -> Result<Option<Vec<String>>, String> {
        let Some(fe) = &step.for_each else {
            return Ok(None);
        };
        let ctx = self.base(None);
        if let Some(items) = &fe.items {
            return items
                .iter()
                .map(|t| environment().render_str(t, &ctx).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map(Some);
        }
        let expr = fe.expr.as_deref().unwrap_or("[]");
        let e = environment()
            .compile_expression(expr)
            .map_err(|e| e.to_string())?;
        let v = e.eval(ctx).map_err(|e| e.to_string())?;
        let iter = v
            .try_iter()
            .map_err(|_| format!("`{expr}` is not a list (it is {})", v.kind()))?;
        Ok(Some(
            iter.map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect(),
        ))
    }

    /// Renders a step's job parameters (every value a string).
    pub fn render_params(
        &self,
        step: &Step,
        item: Option<&str>,
    ) -> Result<IndexMap<String, String>, String> {
        let ctx = self.base(item);
        let mut out = IndexMap::with_capacity(step.params.len());
        for (k, t) in &step.params {
            let v = if t.contains("{{") || t.contains("{%") {
                environment().render_str(t, &ctx).map_err(|e| {
                    format!(
                        "cannot render parameter `{k}`: {}",
                        e.detail().map_or_else(|| e.to_string(), str::to_string)
                    )
                })?
            } else {
                t.clone()
            };
            out.insert(k.clone(), v);
        }
        Ok(out)
    }

    /// Renders `expect` templates with `outputs` (the step's own outputs).
    pub fn render_with_outputs(
        text: &str,
        outputs: &IndexMap<String, String>,
    ) -> Result<String, String> {
        environment()
            .render_str(text, minijinja::context! { outputs => Serde(outputs) })
            .map_err(|e| e.to_string())
    }

    pub fn step_finished(
        &mut self,
        step: &Step,
        outcome: Outcome,
        outputs: &IndexMap<String, String>,
        run_ids: &[String],
        attempts: u32,
    ) {
        let duration = self
            .started
            .get(&step.id)
            .map(|t| t.elapsed().as_millis() as u64);
        if let Some(d) = duration {
            self.durations.insert(step.id.clone(), d);
        }
        let run_id = if run_ids.len() == 1 {
            json!(run_ids[0])
        } else {
            json!(run_ids)
        };
        self.steps
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                step.id.clone(),
                TValue::from(Serde(json!({
                    "outputs": outputs,
                    "run_id": run_id,
                    "status": outcome.as_str(),
                    "duration": duration.map(|d| d as f64 / 1000.0),
                    "attempts": attempts,
                }))),
            );
    }

    pub fn duration_ms(&self, id: &str) -> Option<u64> {
        self.durations.get(id).copied()
    }

    pub fn mark_started(&mut self, id: &str) {
        self.started.insert(id.to_string(), Instant::now());
    }
}

/// `steps` as templates see it: the finished steps by id.
#[derive(Debug)]
struct StepsView(Arc<RwLock<BTreeMap<String, TValue>>>);

impl minijinja::value::Object for StepsView {
    fn get_value(self: &Arc<Self>, key: &TValue) -> Option<TValue> {
        let map = self.0.read().ok()?;
        map.get(key.as_str()?).cloned()
    }
    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let Ok(map) = self.0.read() else {
            return minijinja::value::Enumerator::Empty;
        };
        minijinja::value::Enumerator::Values(map.keys().map(|k| TValue::from(k.as_str())).collect())
    }
}
