//! The service's run manager: admits pipeline runs under each pipeline's concurrency
//! policy (`allow`, `queue`, `skip`, `cancel_previous`), executes them with the engine,
//! records their progress in the history from the engine's events, cancels them, and at
//! start-up takes back the runs a previous process left: in-flight runs are resumed
//! from their journals exactly as `dwflow resume` does (remote runs reattached, never
//! invoked twice), queued ones are queued again.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::store::{NewRun, Store, StoreError};
use crate::backend::Backend;
use crate::engine::events::{Event, RunState};
use crate::engine::{self, PollPolicy, ResumeState, RunOptions, RunReport};
use crate::pipeline::load::{CheckedPipeline, load_bytes};
use crate::pipeline::model::Concurrency;

/// A request to start a pipeline run.
#[derive(Clone)]
pub struct StartRequest {
    pub checked: Arc<CheckedPipeline>,
    /// Resolved, typed parameter values (secrets included: they stay in memory).
    pub params: IndexMap<String, Value>,
    /// `manual`, `schedule`, `event` or `dataset`.
    pub trigger: String,
    /// What fired: a cron tick, an event type, a dataset name.
    pub trigger_detail: Option<String>,
    /// Identifies one firing of one trigger for one pipeline (a tick, a dataset, a
    /// signed delivery): the history holds at most one run per key.
    pub trigger_key: Option<String>,
    pub event: Value,
    pub commit: Option<String>,
}

/// What became of a start request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    Running,
    Queued,
    /// Dropped: a run of the pipeline was in flight and its policy is `skip`.
    Skipped,
}

#[derive(Debug, Clone, Serialize)]
pub struct Admitted {
    pub run_id: String,
    pub state: Admission,
}

/// Why a run could not be admitted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the service is shutting down")]
    ShuttingDown,
    /// The trigger firing already started run `.0` (a firing repeated after a crash).
    #[error("this firing already started run {0}")]
    AlreadyStarted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a cancel request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run is in flight: the engine cancels its remote runs and records the end.
    Canceling,
    /// It was waiting in the queue and is now canceled.
    Canceled,
    Finished(String),
    NotFound,
}

struct Flight {
    pipeline: String,
    cancel: CancellationToken,
}

struct Pending {
    run_id: String,
    request: StartRequest,
}

#[derive(Default)]
struct Inner {
    flights: HashMap<String, Flight>,
    queues: HashMap<String, VecDeque<Pending>>,
}

pub struct Manager {
    store: Arc<Store>,
    backend: Arc<dyn Backend>,
    target: String,
    state_dir: PathBuf,
    poll: PollPolicy,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
    me: Weak<Manager>,
    /// Set at shutdown: nothing new starts (queued runs wait for the next start).
    shutting_down: std::sync::atomic::AtomicBool,
    /// The history writer: runs' progress is written on a thread of its own, so that
    /// disk writes never hold up the async runtime that serves the API and polls runs.
    writer: std::sync::mpsc::Sender<Progress>,
}

/// What the history writer is sent.
enum Progress {
    Event {
        run_id: Arc<str>,
        pipeline: Arc<str>,
        event: Event,
    },
    /// Answered once everything sent before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

fn masked_json(checked: &CheckedPipeline, params: &IndexMap<String, Value>) -> Value {
    serde_json::to_value(crate::plan::masked_params(&checked.pipeline, params))
        .unwrap_or(Value::Null)
}

impl Manager {
    pub fn new(
        store: Arc<Store>,
        backend: Arc<dyn Backend>,
        target: String,
        state_dir: PathBuf,
        poll: PollPolicy,
        metrics: Arc<Metrics>,
    ) -> Arc<Manager> {
        let (writer, progress) = std::sync::mpsc::channel();
        {
            let (store, metrics) = (Arc::clone(&store), Arc::clone(&metrics));
            let spawned = std::thread::Builder::new()
                .name("dwflow-history".into())
                .spawn(move || write_progress(&store, &metrics, progress));
            if let Err(e) = spawned {
                tracing::error!("cannot start the history writer: {e}");
            }
        }
        Arc::new_cyclic(|me| Manager {
            store,
            backend,
            target,
            state_dir,
            poll,
            metrics,
            inner: Mutex::new(Inner::default()),
            me: me.clone(),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            writer,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops starting runs: later submissions are refused, queues stay as they are.
    pub fn shut_down(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.lock().flights.len()
    }

    pub fn is_in_flight(&self, run_id: &str) -> bool {
        self.lock().flights.contains_key(run_id)
    }

    /// Admits a run under its pipeline's concurrency policy (default `queue`).
    pub fn submit(&self, request: StartRequest) -> Result<Admitted, SubmitError> {
        if self.is_shutting_down() {
            return Err(SubmitError::ShuttingDown);
        }
        let checked = Arc::clone(&request.checked);
        let name = checked.pipeline.name.clone();
        let policy = checked
            .pipeline
            .on
            .as_ref()
            .and_then(|o| o.concurrency)
            .unwrap_or(Concurrency::Queue);
        let run_id = engine::new_run_id();
        let mut inner = self.lock();
        let busy = inner.flights.values().any(|f| f.pipeline == name)
            || inner.queues.get(&name).is_some_and(|q| !q.is_empty());
        let state = match (policy, busy) {
            (Concurrency::Allow, _) | (_, false) => Admission::Running,
            (Concurrency::Queue | Concurrency::CancelPrevious, true) => Admission::Queued,
            (Concurrency::Skip, true) => Admission::Skipped,
        };
        let params_json = masked_json(&checked, &request.params);
        // An event that carried a secret parameter's value is kept with it masked.
        let secrets = crate::secrets::secret_values(&checked.pipeline, &request.params);
        let event_shown = if secrets.is_empty() {
            request.event.clone()
        } else {
            let text = crate::secrets::mask(&request.event.to_string(), &secrets);
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        // Recorded before anything acts on it; a trigger that already started its run
        // (a firing retried after a crash) stops here.
        let inserted = self.store.insert_run(&NewRun {
            run_id: &run_id,
            pipeline: &name,
            file: &checked.path,
            source: &checked.source,
            source_sha256: &crate::secrets::sha256_hex(checked.source.as_bytes()),
            git_commit: request.commit.as_deref(),
            target: &self.target,
            state: match state {
                Admission::Running => "running",
                Admission::Queued => "queued",
                Admission::Skipped => "skipped",
            },
            trigger: &request.trigger,
            trigger_detail: request.trigger_detail.as_deref(),
            trigger_key: request.trigger_key.as_deref(),
            event: &event_shown,
            params: &params_json,
            has_secrets: checked.pipeline.params.values().any(|s| s.secret),
        })?;
        if let Some(existing) = inserted {
            return Err(SubmitError::AlreadyStarted(existing));
        }
        if policy == Concurrency::CancelPrevious && busy {
            for (id, f) in inner.flights.iter().filter(|(_, f)| f.pipeline == name) {
                self.store.request_cancel(id)?;
                f.cancel.cancel();
            }
            // Runs waiting behind the one in flight are superseded as well.
            for p in inner.queues.remove(&name).unwrap_or_default() {
                self.store.set_run_finished(
                    &p.run_id,
                    "canceled",
                    None,
                    Some("superseded by a newer run (concurrency: cancel_previous)"),
                )?;
            }
        }
        self.metrics
            .trigger_fired(&name, &request.trigger, admission_text(state));
        match state {
            Admission::Running => self.launch(&mut inner, run_id.clone(), request, None),
            Admission::Queued => inner.queues.entry(name).or_default().push_back(Pending {
                run_id: run_id.clone(),
                request,
            }),
            Admission::Skipped => {
                self.store.set_run_finished(
                    &run_id,
                    "skipped",
                    Some(0),
                    Some("a run of this pipeline was in flight (concurrency: skip)"),
                )?;
            }
        }
        Ok(Admitted { run_id, state })
    }

    /// Cancels a run in flight or waiting in a queue.
    pub fn cancel(&self, run_id: &str) -> Result<CancelOutcome, StoreError> {
        let mut inner = self.lock();
        if let Some(f) = inner.flights.get(run_id) {
            // On record first: a restart before the run stops resumes it cancelling.
            self.store.request_cancel(run_id)?;
            f.cancel.cancel();
            return Ok(CancelOutcome::Canceling);
        }
        for q in inner.queues.values_mut() {
            if let Some(i) = q.iter().position(|p| p.run_id == run_id) {
                q.remove(i);
                self.store.set_run_finished(
                    run_id,
                    "canceled",
                    Some(0),
                    Some("canceled while queued"),
                )?;
                return Ok(CancelOutcome::Canceled);
            }
        }
        drop(inner);
        Ok(match self.store.run(run_id)? {
            Some(r) => CancelOutcome::Finished(r.state),
            None => CancelOutcome::NotFound,
        })
    }

    /// Cancels every run in flight (service shutdown with `--cancel-on-shutdown`).
    pub fn cancel_all(&self) {
        for f in self.lock().flights.values() {
            f.cancel.cancel();
        }
    }

    /// Waits until no run is in flight, at most `limit`.
    pub async fn drain(&self, limit: std::time::Duration) {
        let end = tokio::time::Instant::now() + limit;
        while self.in_flight() > 0 && tokio::time::Instant::now() < end {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn launch(
        &self,
        inner: &mut Inner,
        run_id: String,
        request: StartRequest,
        resume: Option<ResumeState>,
    ) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let cancel = CancellationToken::new();
        if resume.is_some() && self.store.cancel_requested(&run_id).unwrap_or(false) {
            // Cancelled before the last stop: resume it to cancel its remote runs.
            cancel.cancel();
        }
        inner.flights.insert(
            run_id.clone(),
            Flight {
                pipeline: request.checked.pipeline.name.clone(),
                cancel: cancel.clone(),
            },
        );
        if resume.is_none() {
            let plan = crate::plan::plan(&request.checked, &request.params);
            let steps: Vec<_> = plan
                .steps
                .iter()
                .map(|s| {
                    let job = match (&s.job, s.job_id) {
                        (Some(j), _) => j.clone(),
                        (None, Some(id)) => format!("job_id {id}"),
                        (None, None) => String::new(),
                    };
                    (s.id.clone(), job, s.needs.clone(), s.wave)
                })
                .collect();
            if let Err(e) = self.store.insert_steps(&run_id, &steps) {
                tracing::warn!(run_id, "cannot record the steps: {e}");
            }
        }
        tokio::spawn(async move { me.execute(run_id, request, resume, cancel).await });
    }

    async fn execute(
        self: Arc<Self>,
        run_id: String,
        request: StartRequest,
        resume: Option<ResumeState>,
        cancel: CancellationToken,
    ) {
        let pipeline = request.checked.pipeline.name.clone();
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let forwarder = {
            let writer = self.writer.clone();
            let (run_id, pipeline): (Arc<str>, Arc<str>) =
                (run_id.as_str().into(), pipeline.as_str().into());
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    let _ = writer.send(Progress::Event {
                        run_id: Arc::clone(&run_id),
                        pipeline: Arc::clone(&pipeline),
                        event,
                    });
                }
            })
        };
        let options = RunOptions {
            state_dir: self.state_dir.clone(),
            poll: self.poll.clone(),
            target: self.target.clone(),
            event: request.event.clone(),
            trigger: request.trigger.clone(),
            run_id: Some(run_id.clone()),
            ..RunOptions::default()
        };
        let result = engine::run_pipeline(
            Arc::clone(&self.backend),
            &request.checked,
            request.params.clone(),
            options,
            tx,
            cancel,
            resume,
        )
        .await;
        // Everything the run reported is in the history before its end is.
        let _ = forwarder.await;
        let (flushed, written) = tokio::sync::oneshot::channel();
        if self.writer.send(Progress::Flush(flushed)).is_ok() {
            let _ = written.await;
        }
        let state = match result {
            Ok(report) => {
                self.record_report(&report);
                report.state.as_str().to_string()
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(run_id, pipeline, "the run could not start: {msg}");
                let _ = self
                    .store
                    .set_run_finished(&run_id, "failed", None, Some(&msg));
                "failed".to_string()
            }
        };
        self.metrics.run_finished(&pipeline, &state);
        tracing::info!(run_id, pipeline, state, "pipeline run finished");
        let mut inner = self.lock();
        inner.flights.remove(&run_id);
        self.dispatch(&mut inner, &pipeline);
    }

    /// The engine's report closes the steps no event ended (those the run never
    /// reached, those finished by an earlier process of a resumed run).
    fn record_report(&self, report: &RunReport) {
        for s in &report.steps {
            let outputs = serde_json::to_value(&s.outputs).unwrap_or(Value::Null);
            if let Err(e) = self.store.step_finished(
                &report.run_id,
                &s.id,
                s.outcome.as_str(),
                s.duration_ms.unwrap_or(0),
                s.message.as_deref(),
                &outputs,
                true,
            ) {
                tracing::warn!(run_id = report.run_id, "cannot record step {}: {e}", s.id);
            }
        }
        let error = report.environment_error.clone().or_else(|| {
            (report.state != RunState::Succeeded).then(|| {
                report
                    .steps
                    .iter()
                    .filter(|s| s.outcome.is_failure())
                    .map(|s| format!("{}: {}", s.id, s.message.as_deref().unwrap_or("failed")))
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        });
        let error = error.filter(|e| !e.is_empty());
        if let Err(e) = self.store.set_run_finished(
            &report.run_id,
            report.state.as_str(),
            Some(report.duration_ms),
            error.as_deref(),
        ) {
            tracing::warn!(run_id = report.run_id, "cannot record the run's end: {e}");
        }
    }

    /// Starts the next queued run of `pipeline` when none of it is in flight.
    fn dispatch(&self, inner: &mut Inner, pipeline: &str) {
        if self.is_shutting_down() || inner.flights.values().any(|f| f.pipeline == pipeline) {
            return;
        }
        let next = inner.queues.get_mut(pipeline).and_then(VecDeque::pop_front);
        if let Some(p) = next {
            if let Err(e) = self.store.set_run_state(&p.run_id, "running") {
                tracing::warn!(run_id = p.run_id, "cannot record the run's start: {e}");
            }
            self.launch(inner, p.run_id, p.request, None);
        }
    }

    /// Takes back what a previous process left: runs in flight are resumed from their
    /// journals, queued runs are queued again. Returns how many of each.
    pub fn recover(&self, commit: Option<&str>) -> Result<(usize, usize), StoreError> {
        let mut resumed = 0;
        let mut requeued = 0;
        for row in self.store.runs_in(&["running", "queued"])? {
            let Some((file, source)) = self.store.run_source(&row.run_id)? else {
                continue;
            };
            let fail = |why: String| {
                tracing::error!(run_id = row.run_id, "cannot take the run back: {why}");
                self.store.close_unfinished(&row.run_id, "interrupted")?;
                self.store
                    .set_run_finished(&row.run_id, "interrupted", None, Some(&why))
            };
            let queued = row.state == "queued";
            if row.target != self.target {
                // Its remote run ids, or its admission, mean nothing on another target.
                fail(format!(
                    "it was started on target `{}`, the service now runs `{}`{}",
                    row.target,
                    self.target,
                    if queued { "; start it again" } else { "" }
                ))?;
                continue;
            }
            let Some(checked) = load_bytes(&file, source.as_bytes()).checked else {
                fail("the pipeline it started with no longer validates".into())?;
                continue;
            };
            if row.has_secrets {
                fail(if queued {
                    "it was queued with secret parameter values, which are never stored; start it again".into()
                } else {
                    let secrets: Vec<String> = checked
                        .pipeline
                        .params
                        .iter()
                        .filter(|(_, spec)| spec.secret)
                        .map(|(name, _)| format!("-p {name}=..."))
                        .collect();
                    format!(
                        "secret parameter values are never stored; continue it with `dwflow resume {} --state-dir {} {}` (this page will not follow that run)",
                        row.run_id,
                        self.state_dir.display(),
                        secrets.join(" ")
                    )
                })?;
                continue;
            }
            let params: IndexMap<String, Value> =
                serde_json::from_value(row.params.clone()).unwrap_or_default();
            let request = StartRequest {
                checked: Arc::new(checked),
                params,
                trigger: row.trigger.clone(),
                trigger_detail: row.trigger_detail.clone(),
                trigger_key: None,
                event: row.event.clone(),
                commit: row.git_commit.clone().or(commit.map(str::to_string)),
            };
            let mut inner = self.lock();
            if queued {
                inner
                    .queues
                    .entry(request.checked.pipeline.name.clone())
                    .or_default()
                    .push_back(Pending {
                        run_id: row.run_id.clone(),
                        request,
                    });
                requeued += 1;
                continue;
            }
            let journal_dir = self.state_dir.join(&row.run_id);
            if !journal_dir.join("journal.jsonl").exists() {
                drop(inner);
                if self.store.has_attempts(&row.run_id)? {
                    // Jobs were invoked, but their journal is not here (another
                    // --state-dir?): starting afresh could run them twice.
                    fail(format!(
                        "its journal is not in {}, and jobs were already invoked; find the journal and `dwflow resume {}` there",
                        self.state_dir.display(),
                        row.run_id
                    ))?;
                    continue;
                }
                // The process stopped before the engine invoked anything (invocations
                // are journaled first): start it afresh.
                let _ = std::fs::remove_dir_all(&journal_dir);
                let mut inner = self.lock();
                self.launch(&mut inner, row.run_id.clone(), request, None);
                resumed += 1;
                continue;
            }
            match ResumeState::load(&self.state_dir, &row.run_id) {
                Ok(state) => match state.ended {
                    Some(ended) => {
                        drop(inner);
                        self.store
                            .set_run_finished(&row.run_id, ended.as_str(), None, None)?;
                    }
                    None => {
                        tracing::info!(run_id = row.run_id, "resuming a run left in flight");
                        let mut request = request;
                        request.params = state.params.clone();
                        self.launch(&mut inner, row.run_id.clone(), request, Some(state));
                        resumed += 1;
                    }
                },
                Err(e) => {
                    drop(inner);
                    fail(format!("its journal cannot be read: {e}"))?;
                }
            }
        }
        let mut inner = self.lock();
        let pipelines: Vec<String> = inner.queues.keys().cloned().collect();
        for p in pipelines {
            self.dispatch(&mut inner, &p);
        }
        Ok((resumed, requeued))
    }
}

fn admission_text(a: Admission) -> &'static str {
    match a {
        Admission::Running => "started",
        Admission::Queued => "queued",
        Admission::Skipped => "skipped",
    }
}

/// The history writer's loop: writes runs' progress as the engine reports it.
fn write_progress(store: &Store, metrics: &Metrics, progress: std::sync::mpsc::Receiver<Progress>) {
    for message in progress {
        let (run_id, pipeline, event) = match message {
            Progress::Event {
                run_id,
                pipeline,
                event,
            } => (run_id, pipeline, event),
            Progress::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let (run_id, pipeline) = (&*run_id, &*pipeline);
        let r = match &event {
            Event::RunStarted { .. } => store.set_run_started(run_id),
            Event::Invoking {
                instance,
                attempt,
                params,
                ..
            } => store.attempt_invoking(
                run_id,
                &instance.step,
                &instance.to_string(),
                *attempt,
                &serde_json::to_value(params).unwrap_or(Value::Null),
            ),
            Event::Started {
                instance,
                attempt,
                remote_run_id,
            }
            | Event::Reattached {
                instance,
                attempt,
                remote_run_id,
            } => store.attempt_started(
                run_id,
                &instance.step,
                &instance.to_string(),
                *attempt,
                remote_run_id,
            ),
            Event::StateChanged { instance, state } => {
                store.attempt_state(run_id, &instance.to_string(), state, None, false)
            }
            Event::Retrying {
                instance, reason, ..
            } => store.attempt_state(run_id, &instance.to_string(), "failed", Some(reason), true),
            Event::InstanceFinished {
                instance,
                outcome,
                message,
                ..
            } => store.attempt_state(
                run_id,
                &instance.to_string(),
                outcome.as_str(),
                message.as_deref(),
                true,
            ),
            Event::StepFinished {
                step,
                outcome,
                duration,
                message,
                outputs,
            } => {
                metrics.step_finished(pipeline, outcome.as_str(), *duration);
                store.step_finished(
                    run_id,
                    step,
                    outcome.as_str(),
                    duration.as_millis() as u64,
                    message.as_deref(),
                    &serde_json::to_value(outputs).unwrap_or(Value::Null),
                    false,
                )
            }
            Event::Warning { message } => {
                tracing::warn!(run_id, pipeline, "{message}");
                Ok(())
            }
            Event::RunFinished { .. } => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(run_id, "cannot record progress: {e}");
        }
    }
}
