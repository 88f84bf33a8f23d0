//! The engine: runs a checked pipeline against a [`Backend`]. The scheduler starts each
//! step when its dependencies and trigger rule allow it, within the parallelism limits;
//! each step instance goes through invoke -> poll (adaptive interval) -> outcome, with
//! retries and timeouts; everything is journaled before it matters and reported as
//! typed events.

mod attempt;
mod context;
pub mod events;
pub mod history;
pub mod journal;
pub mod resume;
mod writer;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, ErrorKind, JobRef};
use crate::duration::parse_duration;
use crate::pipeline::load::CheckedPipeline;
use crate::pipeline::model::{RunIf, Step};
pub use attempt::PollPolicy;
use events::{Event, Outcome, RunState};
use journal::{Journal, Record};
pub use resume::ResumeState;
use writer::JournalWriter;

/// How the engine runs: where it keeps state, how it polls, how long it waits.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Directory of run journals (default `.dwflow/runs`).
    pub state_dir: PathBuf,
    pub poll: PollPolicy,
    /// How long to wait for cancelled remote runs to reach a terminal state.
    pub cancel_wait: Duration,
    /// Target name, recorded in the journal.
    pub target: String,
    /// The trigger event, as `event` in templates (`null` for manual runs).
    pub event: Value,
    /// What started the run: `manual`, `schedule`, `event`, `dataset`.
    pub trigger: String,
    /// Write the journal on the engine's thread instead of a group-commit thread
    /// (deterministic tests in paused time).
    pub inline_journal: bool,
    /// Learn how long each job's runs take (`history.sqlite` in the state directory)
    /// and poll by the expected duration.
    pub learn_durations: bool,
    /// The id of a new run (default: a fresh one). The service picks it so that its
    /// history names the run before the journal exists.
    pub run_id: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            state_dir: PathBuf::from(".dwflow/runs"),
            poll: PollPolicy::default(),
            cancel_wait: Duration::from_secs(120),
            target: "local".into(),
            event: Value::Null,
            trigger: "manual".into(),
            inline_journal: false,
            learn_durations: true,
            run_id: None,
        }
    }
}

/// Where events go. Unbounded: the engine must never wait on a slow reporter.
pub type EventSink = mpsc::UnboundedSender<Event>;

/// The result of one step, as reported at the end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub id: String,
    pub job: String,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub attempts: u32,
    pub remote_run_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub outputs: IndexMap<String, String>,
}

/// The result of a pipeline run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: String,
    pub pipeline: String,
    pub state: RunState,
    pub duration_ms: u64,
    pub steps: Vec<StepReport>,
    /// Set when the environment itself failed (auth, network): exit status 3.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_error: Option<String>,
}

/// Errors that stop a run before or outside its steps.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot write the run journal: {0}")]
    Journal(String),
    #[error("{0}")]
    Invalid(String),
}

/// Shared by every task of one pipeline run.
pub(crate) struct RunShared {
    pub backend: Arc<dyn Backend>,
    pub journal: JournalWriter,
    pub events: EventSink,
    pub poll: PollPolicy,
    pub cancel_wait: Duration,
    pub run_id: String,
    /// Limits job runs in flight across the pipeline (`max_parallel`).
    pub parallel: Option<Arc<Semaphore>>,
    /// Secret values, masked wherever text leaves the engine.
    pub secrets: Vec<String>,
    /// Run durations of earlier runs, per job on this target.
    pub history: Option<history::DurationHistory>,
    pub target: String,
    /// Expected durations already looked up, per job id.
    pub expected: std::sync::Mutex<HashMap<u64, Option<Duration>>>,
}

impl RunShared {
    pub fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }
    pub fn mask(&self, text: &str) -> String {
        crate::secrets::mask(text, &self.secrets)
    }
    /// How long runs of `job` took before on this target, if known.
    pub fn expected_duration(&self, job: u64) -> Option<Duration> {
        let history = self.history.as_ref()?;
        let mut cache = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        *cache
            .entry(job)
            .or_insert_with(|| history.expected(&self.target, job))
    }
    /// Remembers how long a successful run of `job` took.
    pub fn learn_duration(&self, job: u64, took: Duration) {
        if let Some(history) = &self.history
            && let Err(e) = history.record(&self.target, job, took)
        {
            self.emit(Event::Warning { message: e });
        }
    }
    /// Journals a record and waits until it is on disk.
    pub async fn record(&self, r: Record) -> Result<(), String> {
        self.journal.append(r).await
    }
    /// Journals a record that resume can do without (it re-reads the remote run):
    /// flushed with the next durable record.
    pub fn record_lazy(&self, r: Record) {
        self.journal.append_lazy(r)
    }
}

/// Per-step progress inside the scheduler.
#[derive(Debug, Clone)]
enum StepStatus {
    Waiting,
    Running,
    Done(Outcome),
}

/// What a finished step hands to the scheduler.
#[derive(Debug, Clone)]
pub(crate) struct StepResult {
    pub outcome: Outcome,
    pub message: Option<String>,
    pub outputs: IndexMap<String, String>,
    pub remote_run_ids: Vec<String>,
    pub attempts: u32,
    pub environment_error: Option<String>,
}

/// Runs a pipeline (new, or resumed from its journal) to the end.
pub async fn run_pipeline(
    backend: Arc<dyn Backend>,
    checked: &CheckedPipeline,
    params: IndexMap<String, Value>,
    options: RunOptions,
    events: EventSink,
    cancel: CancellationToken,
    resume: Option<ResumeState>,
) -> Result<RunReport, EngineError> {
    let p = &checked.pipeline;
    let started = Instant::now();
    let secrets = crate::secrets::secret_values(p, &params);
    let (run_id, journal) = match &resume {
        Some(r) => {
            let mut j = Journal::open(&options.state_dir, &r.run_id)
                .map_err(|e| EngineError::Journal(e.to_string()))?;
            j.append(&Record::Resumed {
                at: journal::now(),
                pid: std::process::id(),
            })
            .map_err(|e| EngineError::Journal(e.to_string()))?;
            (r.run_id.clone(), j)
        }
        None => {
            let run_id = options.run_id.clone().unwrap_or_else(new_run_id);
            let mut j = Journal::create(&options.state_dir, &run_id, &checked.source)
                .map_err(|e| EngineError::Journal(e.to_string()))?;
            let masked = crate::plan::masked_params(p, &params);
            j.append(&Record::RunStarted {
                run_id: run_id.clone(),
                pipeline: p.name.clone(),
                path: checked.path.clone(),
                source_sha256: crate::secrets::sha256_hex(checked.source.as_bytes()),
                params: masked,
                secret_params: p
                    .params
                    .iter()
                    .filter(|(_, s)| s.secret)
                    .map(|(k, _)| k.clone())
                    .collect(),
                target: options.target.clone(),
                started_at: journal::now(),
                pid: std::process::id(),
            })
            .map_err(|e| EngineError::Journal(e.to_string()))?;
            (run_id, j)
        }
    };
    let history = if options.learn_durations {
        match history::DurationHistory::open(&options.state_dir) {
            Ok(h) => Some(h),
            Err(e) => {
                let _ = events.send(Event::Warning {
                    message: format!("{e}; polling without the durations of earlier runs"),
                });
                None
            }
        }
    } else {
        None
    };
    let shared = Arc::new(RunShared {
        backend,
        journal: if options.inline_journal {
            JournalWriter::inline(journal)
        } else {
            JournalWriter::spawn(journal)
        },
        events: events.clone(),
        poll: options.poll.clone(),
        cancel_wait: options.cancel_wait,
        run_id: run_id.clone(),
        parallel: p.max_parallel.map(|n| Arc::new(Semaphore::new(n as usize))),
        secrets,
        history,
        target: options.target.clone(),
        expected: std::sync::Mutex::new(HashMap::new()),
    });
    let _ = events.send(Event::RunStarted {
        run_id: run_id.clone(),
        pipeline: p.name.clone(),
        steps: checked.step_ids(),
        resumed: resume.is_some(),
    });

    let ctx = context::RunContext::new(p, &params, &run_id, &options);
    let mut scheduler = Scheduler {
        checked,
        shared: shared.clone(),
        ctx,
        status: vec![StepStatus::Waiting; p.steps.len()],
        results: vec![None; p.steps.len()],
        started_at: vec![None; p.steps.len()],
        job_ids: HashMap::new(),
        resume,
        steps_cancel: cancel.child_token(),
        stopping: false,
        environment_error: None,
    };
    let state = scheduler.run(cancel, started).await;
    let report = scheduler.report(state, started);
    shared
        .record(Record::RunFinished {
            state,
            at: journal::now(),
        })
        .await
        .map_err(EngineError::Journal)?;
    let _ = events.send(Event::RunFinished {
        state,
        duration: started.elapsed(),
    });
    Ok(report)
}

/// A new pipeline run id: time-ordered, unique.
pub fn new_run_id() -> String {
    // Time-ordered, so `runs list` and directory listings sort by start.
    let now = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("{now}-{}", &short[..8])
}

struct Scheduler<'a> {
    checked: &'a CheckedPipeline,
    shared: Arc<RunShared>,
    ctx: context::RunContext,
    status: Vec<StepStatus>,
    results: Vec<Option<StepResult>>,
    started_at: Vec<Option<Instant>>,
    job_ids: HashMap<String, Result<u64, BackendError>>,
    resume: Option<ResumeState>,
    /// Cancels every running step: user interruption, fail-fast, pipeline timeout.
    steps_cancel: CancellationToken,
    stopping: bool,
    environment_error: Option<String>,
}

impl Scheduler<'_> {
    async fn run(&mut self, cancel: CancellationToken, started: Instant) -> RunState {
        let p = &self.checked.pipeline;
        let fail_fast = p.fail_fast.unwrap_or(true);
        let deadline = p
            .timeout
            .as_deref()
            .and_then(parse_duration)
            .map(|d| tokio::time::Instant::from_std(started + d));
        // Readiness is event-driven: a step becomes ready when its last need finishes,
        // so the scheduler does O(edges) work for a whole run, not O(steps) per event.
        let order = self
            .checked
            .graph
            .topo_order()
            .unwrap_or_else(|| (0..p.steps.len()).collect());
        let mut rank = vec![0usize; p.steps.len()];
        for (pos, &i) in order.iter().enumerate() {
            rank[i] = pos;
        }
        let mut remaining: Vec<usize> = (0..p.steps.len())
            .map(|i| self.checked.graph.deps(i).len())
            .collect();
        let mut ready: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::new();
        let mut tasks: JoinSet<(usize, StepResult)> = JoinSet::new();
        let mut interrupted = false;
        let mut timed_out = false;
        let mut failed = false;

        // Steps the journal says are finished are accepted as they are.
        let mut done_now: Vec<usize> = Vec::new();
        if let Some(r) = &self.resume {
            for (i, step) in p.steps.iter().enumerate() {
                if let Some(done) = r.finished.get(&step.id) {
                    self.ctx.step_finished(
                        step,
                        done.outcome,
                        &done.outputs,
                        &done.remote_run_ids,
                        done.attempts,
                    );
                    self.status[i] = StepStatus::Done(done.outcome);
                    failed |= done.outcome.is_failure();
                    self.results[i] = Some(done.clone());
                    done_now.push(i);
                }
            }
        }
        for i in done_now {
            self.release(i, &mut remaining, &rank, &mut ready);
        }
        for (i, r) in remaining.iter().enumerate() {
            if *r == 0 && matches!(self.status[i], StepStatus::Waiting) {
                ready.push(Reverse((rank[i], i)));
            }
        }

        loop {
            while let Some(Reverse((_, i))) = ready.pop() {
                if !matches!(self.status[i], StepStatus::Waiting) {
                    continue;
                }
                let dep_outcomes: Vec<Outcome> = self
                    .checked
                    .graph
                    .deps(i)
                    .iter()
                    .map(|&d| match self.status[d] {
                        StepStatus::Done(o) => o,
                        _ => Outcome::NotRun,
                    })
                    .collect();
                if self.stopping {
                    self.finish_without_running(
                        i,
                        Outcome::NotRun,
                        "the pipeline run stopped before this step started".into(),
                    )
                    .await;
                    self.release(i, &mut remaining, &rank, &mut ready);
                    continue;
                }
                let step = &p.steps[i];
                let rule = step
                    .run_if
                    .or(p.defaults.as_ref().and_then(|d| d.run_if))
                    .unwrap_or_default();
                if let Some(reason) = run_if_blocks(rule, &dep_outcomes) {
                    self.finish_without_running(i, Outcome::Skipped, reason)
                        .await;
                    self.release(i, &mut remaining, &rank, &mut ready);
                    continue;
                }
                match self.prepare(step).await {
                    Ok(Prepared::Skip(reason)) => {
                        self.finish_without_running(i, Outcome::Skipped, reason)
                            .await;
                        self.release(i, &mut remaining, &rank, &mut ready);
                    }
                    Ok(Prepared::Run {
                        job_id,
                        job_label,
                        instances,
                    }) => {
                        self.status[i] = StepStatus::Running;
                        self.started_at[i] = Some(Instant::now());
                        self.ctx.mark_started(&step.id);
                        let shared = self.shared.clone();
                        let step = step.clone();
                        let defaults = p.defaults.clone();
                        let cancel = self.steps_cancel.child_token();
                        let resume = self.resume.as_ref().map(|r| r.for_step(&step.id));
                        tasks.spawn(async move {
                            let result = attempt::run_step(
                                shared, step, defaults, job_id, job_label, instances, cancel,
                                resume,
                            )
                            .await;
                            (i, result)
                        });
                    }
                    Err(result) => {
                        self.status[i] = StepStatus::Running;
                        self.started_at[i] = Some(Instant::now());
                        failed = true;
                        if fail_fast {
                            self.stop();
                        }
                        self.complete(i, result).await;
                        self.release(i, &mut remaining, &rank, &mut ready);
                    }
                }
            }
            if tasks.is_empty() {
                // Nothing runs and nothing is ready: every step is done (only a cycle,
                // which validation refuses, could leave steps waiting).
                break;
            }
            let sleep_until = deadline
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
            tokio::select! {
                joined = tasks.join_next() => {
                    if let Some(Ok((i, result))) = joined {
                        // Cancel the others before anything else (the journal write waits
                        // on the disk).
                        if result.outcome.is_failure() {
                            failed = true;
                            if fail_fast {
                                self.stop();
                            }
                        }
                        self.complete(i, result).await;
                        self.release(i, &mut remaining, &rank, &mut ready);
                    }
                }
                _ = cancel.cancelled(), if !interrupted => {
                    interrupted = true;
                    self.stop();
                }
                _ = tokio::time::sleep_until(sleep_until), if deadline.is_some() && !timed_out => {
                    timed_out = true;
                    let _ = self.shared.events.send(Event::Warning { message: format!("the pipeline timeout ({}) fired: cancelling running steps", p.timeout.clone().unwrap_or_default()) });
                    self.stop();
                }
            }
        }
        if interrupted {
            RunState::Canceled
        } else if timed_out {
            RunState::TimedOut
        } else if failed {
            RunState::Failed
        } else {
            RunState::Succeeded
        }
    }

    /// A step is done: its dependents with no other unfinished need become ready.
    fn release(
        &self,
        i: usize,
        remaining: &mut [usize],
        rank: &[usize],
        ready: &mut BinaryHeap<Reverse<(usize, usize)>>,
    ) {
        for j in self.checked.graph.dependents(i) {
            remaining[j] = remaining[j].saturating_sub(1);
            if remaining[j] == 0 && matches!(self.status[j], StepStatus::Waiting) {
                ready.push(Reverse((rank[j], j)));
            }
        }
    }

    fn stop(&mut self) {
        self.stopping = true;
        self.steps_cancel.cancel();
    }

    async fn finish_without_running(&mut self, i: usize, outcome: Outcome, reason: String) {
        self.started_at[i] = Some(Instant::now());
        self.status[i] = StepStatus::Running;
        self.complete(
            i,
            StepResult {
                outcome,
                message: Some(reason),
                outputs: IndexMap::new(),
                remote_run_ids: Vec::new(),
                attempts: 0,
                environment_error: None,
            },
        )
        .await;
    }

    async fn complete(&mut self, i: usize, result: StepResult) {
        let step = &self.checked.pipeline.steps[i];
        let duration = self.started_at[i].map_or(Duration::ZERO, |t| t.elapsed());
        if let Some(e) = &result.environment_error {
            self.environment_error.get_or_insert_with(|| e.clone());
        }
        let message = result.message.as_deref().map(|m| self.shared.mask(m));
        let outputs: IndexMap<String, String> = result
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), self.shared.mask(v)))
            .collect();
        if let Err(e) = self
            .shared
            .record(Record::StepFinished {
                step: step.id.clone(),
                outcome: result.outcome,
                message: message.clone(),
                outputs: outputs.clone(),
                at: journal::now(),
            })
            .await
        {
            let _ = self.shared.events.send(Event::Warning {
                message: format!("journal: {e}"),
            });
        }
        self.ctx.step_finished(
            step,
            result.outcome,
            &result.outputs,
            &result.remote_run_ids,
            result.attempts,
        );
        self.shared.emit(Event::StepFinished {
            step: step.id.clone(),
            outcome: result.outcome,
            duration,
            message,
            outputs,
        });
        self.status[i] = StepStatus::Done(result.outcome);
        self.results[i] = Some(result);
    }

    /// Decides whether a ready step runs: `when`, fan-out items, rendered parameters,
    /// the job id. An `Err` is the step's (failed) result.
    async fn prepare(&mut self, step: &Step) -> Result<Prepared, StepResult> {
        let fail = |message: String, env: Option<String>| StepResult {
            outcome: Outcome::Failed,
            message: Some(message),
            outputs: IndexMap::new(),
            remote_run_ids: Vec::new(),
            attempts: 0,
            environment_error: env,
        };
        if let Some(when) = &step.when {
            match self.ctx.eval_when(when) {
                Ok(true) => {}
                Ok(false) => return Ok(Prepared::Skip(format!("`when: {when}` is false"))),
                Err(e) => return Err(fail(format!("cannot evaluate `when`: {e}"), None)),
            }
        }
        let items = match self.ctx.fan_out(step) {
            Ok(items) => items,
            Err(e) => return Err(fail(format!("cannot evaluate `for_each`: {e}"), None)),
        };
        let mut instances = Vec::new();
        match items {
            None => match self.ctx.render_params(step, None) {
                Ok(params) => instances.push(attempt::InstancePlan { item: None, params }),
                Err(e) => return Err(fail(e, None)),
            },
            Some(items) => {
                if items.is_empty() {
                    return Ok(Prepared::Skip("`for_each` has no items".into()));
                }
                for (k, item) in items.into_iter().enumerate() {
                    match self.ctx.render_params(step, Some(&item)) {
                        Ok(params) => instances.push(attempt::InstancePlan {
                            item: Some(k),
                            params,
                        }),
                        Err(e) => return Err(fail(e, None)),
                    }
                }
            }
        }
        let job = match (&step.job, step.job_id) {
            (_, Some(id)) => JobRef::Id(id),
            (Some(name), None) => JobRef::Name(name.clone()),
            (None, None) => return Err(fail("the step names no job".into(), None)),
        };
        let job_label = match &job {
            JobRef::Name(n) => n.clone(),
            JobRef::Id(id) => id.to_string(),
        };
        let key = job_label.clone();
        if !self.job_ids.contains_key(&key) {
            let resolved = self.shared.backend.resolve_job(&job).await;
            self.job_ids.insert(key.clone(), resolved);
        }
        match self.job_ids.get(&key) {
            Some(Ok(id)) => Ok(Prepared::Run {
                job_id: *id,
                job_label,
                instances,
            }),
            Some(Err(e)) => {
                let env = matches!(e.kind, ErrorKind::Auth | ErrorKind::Unavailable)
                    .then(|| e.message.clone());
                Err(fail(format!("cannot resolve {job}: {}", e.message), env))
            }
            None => Err(fail(format!("cannot resolve {job}"), None)),
        }
    }

    fn report(&self, state: RunState, started: Instant) -> RunReport {
        let p = &self.checked.pipeline;
        let steps = p
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let r = self.results[i].clone();
                StepReport {
                    id: s.id.clone(),
                    job: s
                        .job
                        .clone()
                        .or_else(|| s.job_id.map(|j| j.to_string()))
                        .unwrap_or_default(),
                    outcome: r.as_ref().map_or(Outcome::NotRun, |r| r.outcome),
                    duration_ms: self.ctx.duration_ms(&s.id),
                    attempts: r.as_ref().map_or(0, |r| r.attempts),
                    remote_run_ids: r
                        .as_ref()
                        .map(|r| r.remote_run_ids.clone())
                        .unwrap_or_default(),
                    message: r
                        .as_ref()
                        .and_then(|r| r.message.as_deref().map(|m| self.shared.mask(m))),
                    outputs: r
                        .map(|r| {
                            r.outputs
                                .iter()
                                .map(|(k, v)| (k.clone(), self.shared.mask(v)))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        RunReport {
            run_id: self.shared.run_id.clone(),
            pipeline: p.name.clone(),
            state,
            duration_ms: started.elapsed().as_millis() as u64,
            steps,
            environment_error: self.environment_error.clone(),
        }
    }
}

enum Prepared {
    Skip(String),
    Run {
        job_id: u64,
        job_label: String,
        instances: Vec<attempt::InstancePlan>,
    },
}

/// Why a trigger rule keeps a step from running, given its needed steps' outcomes.
pub fn run_if_blocks(rule: RunIf, deps: &[Outcome]) -> Option<String> {
    if deps.is_empty() {
        return None;
    }
    let succeeded = deps.iter().filter(|o| **o == Outcome::Succeeded).count();
    let failed = deps.iter().filter(|o| o.is_failure()).count();
    let all = deps.len();
    let ok = match rule {
        RunIf::AllSuccess => succeeded == all,
        RunIf::AllDone => true,
        RunIf::NoneFailed => {
            failed == 0
                && deps
                    .iter()
                    .all(|o| matches!(o, Outcome::Succeeded | Outcome::Skipped))
        }
        RunIf::AtLeastOneSuccess => succeeded > 0,
        RunIf::AllFailed => failed == all,
        RunIf::AtLeastOneFailed => failed > 0,
    };
    if ok {
        return None;
    }
    let why = if failed > 0 {
        "a needed step failed"
    } else if succeeded < all {
        "a needed step did not succeed"
    } else {
        "needed steps succeeded"
    };
    Some(format!("run_if: {} is not met ({why})", rule.as_str()))
}
