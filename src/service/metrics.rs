//! The service's Prometheus metrics (`GET /metrics`, text exposition format 0.0.4):
//! runs by state (read from the history at scrape time, so they survive restarts),
//! runs finished, step durations, trigger firings, event deliveries, and the calls the
//! service makes to the analytics environment, counted by a [`MeteredBackend`] wrapped
//! around the target's backend.
//!
//! The exposition format is a few lines of text; the values come from our own
//! counters and from SQLite at scrape time, which a registry crate would not hold.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indexmap::IndexMap;

use crate::backend::{Backend, BackendError, DatasetInfo, JobInfo, JobRef, Rows, RunId, RunStatus};

/// Upper bounds (seconds) of the step-duration histogram buckets.
const BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0,
];

#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS.len()];
        }
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Counters {
    runs_finished: BTreeMap<(String, String), u64>,
    trigger_firings: BTreeMap<(String, String, String), u64>,
    events: BTreeMap<String, u64>,
    remote_calls: BTreeMap<(&'static str, &'static str), u64>,
    step_durations: BTreeMap<(String, String), Histogram>,
}

#[derive(Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
}

/// Escapes a label value for the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Counters) -> R) -> R {
        f(&mut self.counters.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn run_finished(&self, pipeline: &str, state: &str) {
        self.with(|c| {
            *c.runs_finished
                .entry((pipeline.into(), state.into()))
                .or_default() += 1
        });
    }

    /// A trigger fired; `result` is `started`, `queued`, `skipped` or `rejected`.
    pub fn trigger_fired(&self, pipeline: &str, kind: &str, result: &str) {
        self.with(|c| {
            *c.trigger_firings
                .entry((pipeline.into(), kind.into(), result.into()))
                .or_default() += 1
        });
    }

    /// An event delivery: `accepted`, `unauthorized`, `replay`, `invalid`.
    pub fn event(&self, result: &str) {
        self.with(|c| *c.events.entry(result.into()).or_default() += 1);
    }

    pub fn step_finished(&self, pipeline: &str, outcome: &str, took: Duration) {
        // Steps that never ran have no duration worth a bucket.
        if matches!(outcome, "skipped" | "not_run") {
            return;
        }
        self.with(|c| {
            c.step_durations
                .entry((pipeline.into(), outcome.into()))
                .or_default()
                .observe(took.as_secs_f64())
        });
    }

    fn remote_call(&self, op: &'static str, result: &'static str) {
        self.with(|c| *c.remote_calls.entry((op, result)).or_default() += 1);
    }

    /// The exposition text; `runs_by_state` comes from the history.
    pub fn render(&self, runs_by_state: &[(String, i64)], in_flight: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP dwflow_runs Pipeline runs in the history, by state."
        );
        let _ = writeln!(out, "# TYPE dwflow_runs gauge");
        for (state, n) in runs_by_state {
            let _ = writeln!(out, "dwflow_runs{{state=\"{}\"}} {n}", label(state));
        }
        let _ = writeln!(
            out,
            "# HELP dwflow_runs_in_flight Pipeline runs this process is executing."
        );
        let _ = writeln!(out, "# TYPE dwflow_runs_in_flight gauge");
        let _ = writeln!(out, "dwflow_runs_in_flight {in_flight}");
        self.with(|c| {
            let _ = writeln!(out, "# HELP dwflow_runs_finished_total Pipeline runs finished by this process.");
            let _ = writeln!(out, "# TYPE dwflow_runs_finished_total counter");
            for ((p, s), n) in &c.runs_finished {
                let _ = writeln!(
                    out,
                    "dwflow_runs_finished_total{{pipeline=\"{}\",state=\"{}\"}} {n}",
                    label(p),
                    label(s)
                );
            }
            let _ = writeln!(out, "# HELP dwflow_trigger_firings_total Triggers that fired, by what came of them.");
            let _ = writeln!(out, "# TYPE dwflow_trigger_firings_total counter");
            for ((p, k, r), n) in &c.trigger_firings {
                let _ = writeln!(
                    out,
                    "dwflow_trigger_firings_total{{pipeline=\"{}\",trigger=\"{}\",result=\"{}\"}} {n}",
                    label(p),
                    label(k),
                    label(r)
                );
            }
            let _ = writeln!(out, "# HELP dwflow_events_total Event deliveries to /api/events, by result.");
            let _ = writeln!(out, "# TYPE dwflow_events_total counter");
            for (r, n) in &c.events {
                let _ = writeln!(out, "dwflow_events_total{{result=\"{}\"}} {n}", label(r));
            }
            let _ = writeln!(out, "# HELP dwflow_remote_calls_total Calls to the analytics environment, by operation and result.");
            let _ = writeln!(out, "# TYPE dwflow_remote_calls_total counter");
            for ((op, r), n) in &c.remote_calls {
                let _ = writeln!(out, "dwflow_remote_calls_total{{op=\"{op}\",result=\"{r}\"}} {n}");
            }
            let _ = writeln!(out, "# HELP dwflow_step_duration_seconds Step durations, by pipeline and outcome.");
            let _ = writeln!(out, "# TYPE dwflow_step_duration_seconds histogram");
            for ((p, o), h) in &c.step_durations {
                let labels = format!("pipeline=\"{}\",outcome=\"{}\"", label(p), label(o));
                for (b, n) in BUCKETS.iter().zip(&h.counts) {
                    let _ = writeln!(out, "dwflow_step_duration_seconds_bucket{{{labels},le=\"{b}\"}} {n}");
                }
                let _ = writeln!(out, "dwflow_step_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "dwflow_step_duration_seconds_sum{{{labels}}} {}", h.sum);
                let _ = writeln!(out, "dwflow_step_duration_seconds_count{{{labels}}} {}", h.count);
            }
        });
        out
    }
}

/// A backend that counts its calls (and their errors) into [`Metrics`].
pub struct MeteredBackend {
    inner: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
}

impl MeteredBackend {
    pub fn new(inner: Arc<dyn Backend>, metrics: Arc<Metrics>) -> Self {
        MeteredBackend { inner, metrics }
    }

    fn count<T>(&self, op: &'static str, r: Result<T, BackendError>) -> Result<T, BackendError> {
        self.metrics
            .remote_call(op, if r.is_ok() { "ok" } else { "error" });
        r
    }
}

#[async_trait::async_trait]
impl Backend for MeteredBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn idempotent_invoke(&self) -> bool {
        self.inner.idempotent_invoke()
    }
    async fn list_jobs(&self) -> Result<Vec<JobInfo>, BackendError> {
        self.count("list_jobs", self.inner.list_jobs().await)
    }
    async fn describe_job(&self, job: &JobRef) -> Result<JobInfo, BackendError> {
        self.count("describe_job", self.inner.describe_job(job).await)
    }
    async fn resolve_job(&self, job: &JobRef) -> Result<u64, BackendError> {
        self.count("resolve_job", self.inner.resolve_job(job).await)
    }
    async fn invoke(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
    ) -> Result<RunId, BackendError> {
        self.count(
            "invoke",
            self.inner.invoke(job_id, params, idempotency_key).await,
        )
    }
    async fn invoke_with_secrets(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
        secrets: &[String],
    ) -> Result<RunId, BackendError> {
        self.count(
            "invoke",
            self.inner
                .invoke_with_secrets(job_id, params, idempotency_key, secrets)
                .await,
        )
    }
    async fn status(&self, run: &RunId) -> Result<RunStatus, BackendError> {
        self.count("status", self.inner.status(run).await)
    }
    async fn cancel(&self, run: &RunId) -> Result<(), BackendError> {
        self.count("cancel", self.inner.cancel(run).await)
    }
    fn has_datasets(&self) -> bool {
        self.inner.has_datasets()
    }
    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, BackendError> {
        self.count("list_datasets", self.inner.list_datasets().await)
    }
    async fn list_datasets_created_after(
        &self,
        after: Option<&str>,
    ) -> Result<Vec<DatasetInfo>, BackendError> {
        self.count(
            "list_datasets",
            self.inner.list_datasets_created_after(after).await,
        )
    }
    async fn find_dataset(&self, name: &str) -> Result<Option<DatasetInfo>, BackendError> {
        self.count("find_dataset", self.inner.find_dataset(name).await)
    }
    async fn read_dataset(&self, name: &str, limit: Option<usize>) -> Result<Rows, BackendError> {
        self.count("read_dataset", self.inner.read_dataset(name, limit).await)
    }
}
