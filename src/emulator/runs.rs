//! The emulator's runs: numeric run ids over local runs, idempotency tokens, runs held
//! queued for a while (`--queued-secs`), and the mapping of local states to the remote
//! vocabulary.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indexmap::IndexMap;

use super::Emu;
use crate::backend::{
    Backend, BackendError, ErrorKind, JobInfo, JobRef, Lifecycle, RunId, RunResult,
};

/// The first run id handed out; ids increment from there.
pub const FIRST_RUN_ID: u64 = 700_000_000_000;
/// A job run's single task run has the id `run_id + TASK_RUN_OFFSET`.
pub const TASK_RUN_OFFSET: u64 = 100_000_000_000;

/// Where an emulator run is.
enum Phase {
    /// Held before it really starts (`--queued-secs`).
    Held { until: Instant },
    /// Being started in the local environment.
    Starting,
    /// Started: the local run.
    Started(RunId),
    /// The local environment refused it after it was held.
    StartFailed { message: String, ended_ms: i64 },
    /// Cancelled while held: it never started.
    CanceledBeforeStart { ended_ms: i64 },
}

struct Entry {
    job_id: u64,
    job_name: String,
    params: IndexMap<String, String>,
    created_ms: i64,
    created: Instant,
    phase: Phase,
    cancel_requested: bool,
}

/// Every run this emulator started.
pub(crate) struct Runs {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Entry>>,
    /// Idempotency token -> its run, once started.
    tokens: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<u64>>>>>,
}

impl Default for Runs {
    fn default() -> Self {
        Runs {
            next: AtomicU64::new(FIRST_RUN_ID),
            map: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Epoch milliseconds of an RFC 3339 time.
pub(crate) fn millis(rfc3339: Option<&str>) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(rfc3339?)
        .ok()
        .map(|t| t.timestamp_millis())
}

impl Runs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a run id names a run of this emulator.
    pub fn exists(&self, run_id: u64) -> bool {
        self.lock().contains_key(&run_id)
    }
}

/// Checks parameters against a job's definition, as the local environment does when it
/// starts a run (used for held runs, which start later).
fn check_params(job: &JobInfo, given: &IndexMap<String, String>) -> Result<(), BackendError> {
    let Some(params) = &job.parameters else {
        return Ok(());
    };
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let mut unknown: Vec<&str> = given
        .keys()
        .map(String::as_str)
        .filter(|k| !names.contains(k))
        .collect();
    unknown.sort();
    if !unknown.is_empty() {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "job `{}` has no parameter `{}`; its parameters: {}",
                job.name,
                unknown.join("`, `"),
                names.join(", ")
            ),
        ));
    }
    let missing: Vec<&str> = params
        .iter()
        .filter(|p| p.default.is_none() && !given.contains_key(&p.name))
        .map(|p| p.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "job `{}` is missing required parameter{} `{}` (no default); its parameters: {}",
                job.name,
                if missing.len() == 1 { "" } else { "s" },
                missing.join("`, `"),
                names.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Starts a run of a job (or, with an idempotency token already used, returns its run).
pub(crate) async fn invoke(
    emu: &Arc<Emu>,
    job_id: u64,
    params: IndexMap<String, String>,
    idempotency_token: Option<&str>,
) -> Result<u64, BackendError> {
    let Some(token) = idempotency_token.filter(|t| !t.is_empty()) else {
        return start(emu, job_id, params).await;
    };
    let slot = {
        let mut tokens = emu.runs.tokens.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(tokens.entry(token.to_string()).or_default())
    };
    let mut slot = slot.lock().await;
    if let Some(run_id) = *slot {
        return Ok(run_id);
    }
    let run_id = start(emu, job_id, params).await?;
    *slot = Some(run_id);
    *emu.stats()
        .invocations
        .per_idempotency_token
        .entry(token.to_string())
        .or_default() += 1;
    Ok(run_id)
}

async fn start(
    emu: &Arc<Emu>,
    job_id: u64,
    params: IndexMap<String, String>,
) -> Result<u64, BackendError> {
    let job = emu.backend.describe_job(&JobRef::Id(job_id)).await?;
    let queued = emu.config.faults.queued;
    let now = Instant::now();
    let phase = if queued.is_zero() {
        Phase::Started(emu.backend.invoke(job_id, &params, "").await?)
    } else {
        check_params(&job, &params)?;
        Phase::Held {
            until: now + queued,
        }
    };
    let held = matches!(phase, Phase::Held { .. });
    let run_id = emu.runs.next.fetch_add(1, Ordering::SeqCst);
    emu.runs.lock().insert(
        run_id,
        Entry {
            job_id,
            job_name: job.name.clone(),
            params: params.clone(),
            created_ms: now_ms(),
            created: now,
            phase,
            cancel_requested: false,
        },
    );
    *emu.stats()
        .invocations
        .per_job
        .entry(job.name.clone())
        .or_default() += 1;
    if held {
        let emu = Arc::clone(emu);
        tokio::spawn(async move {
            tokio::time::sleep_until((now + queued).into()).await;
            start_held(&emu, run_id, job_id, params).await;
        });
    }
    Ok(run_id)
}

/// Starts a held run for real, unless it was cancelled meanwhile.
async fn start_held(emu: &Arc<Emu>, run_id: u64, job_id: u64, params: IndexMap<String, String>) {
    {
        let mut map = emu.runs.lock();
        let Some(entry) = map.get_mut(&run_id) else {
            return;
        };
        if !matches!(entry.phase, Phase::Held { .. }) {
            return;
        }
        entry.phase = Phase::Starting;
    }
    let started = emu.backend.invoke(job_id, &params, "").await;
    let cancel = {
        let mut map = emu.runs.lock();
        let Some(entry) = map.get_mut(&run_id) else {
            return;
        };
        match started {
            Ok(local) => {
                entry.phase = Phase::Started(local.clone());
                entry.cancel_requested.then_some(local)
            }
            Err(e) => {
                entry.phase = Phase::StartFailed {
                    message: e.message,
                    ended_ms: now_ms(),
                };
                None
            }
        }
    };
    if let Some(local) = cancel
        && let Err(e) = emu.backend.cancel(&local).await
    {
        tracing::warn!("emulator: cannot cancel run {run_id}: {e}");
    }
}

/// Asks a run to stop. A no-op on a finished run.
pub(crate) async fn cancel(emu: &Emu, run_id: u64) -> Result<(), BackendError> {
    let local = {
        let mut map = emu.runs.lock();
        let Some(entry) = map.get_mut(&run_id) else {
            return Err(not_found(run_id));
        };
        match &entry.phase {
            Phase::Held { .. } => {
                entry.phase = Phase::CanceledBeforeStart { ended_ms: now_ms() };
                return Ok(());
            }
            Phase::Starting => {
                entry.cancel_requested = true;
                return Ok(());
            }
            Phase::Started(local) => {
                entry.cancel_requested = true;
                local.clone()
            }
            Phase::StartFailed { .. } | Phase::CanceledBeforeStart { .. } => return Ok(()),
        }
    };
    emu.backend.cancel(&local).await
}

pub(crate) fn not_found(run_id: u64) -> BackendError {
    BackendError::new(ErrorKind::NotFound, format!("run {run_id} does not exist"))
}

/// A run as both APIs describe it.
#[derive(Debug, Clone)]
pub(crate) struct RunView {
    pub run_id: u64,
    pub job_id: u64,
    pub job_name: String,
    pub params: IndexMap<String, String>,
    pub lifecycle: Lifecycle,
    pub result: Option<RunResult>,
    pub message: Option<String>,
    pub retryable: bool,
    pub outputs: IndexMap<String, String>,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub stderr_tail: String,
}

impl RunView {
    pub fn task_run_id(&self) -> u64 {
        self.run_id + TASK_RUN_OFFSET
    }
    pub fn is_terminal(&self) -> bool {
        self.lifecycle.is_terminal()
    }
}

/// The current view of a run.
pub(crate) async fn view(emu: &Emu, run_id: u64) -> Result<RunView, BackendError> {
    let (mut v, local, cancel_requested) = {
        let map = emu.runs.lock();
        let entry = map.get(&run_id).ok_or_else(|| not_found(run_id))?;
        let mut v = RunView {
            run_id,
            job_id: entry.job_id,
            job_name: entry.job_name.clone(),
            params: entry.params.clone(),
            lifecycle: Lifecycle::Queued,
            result: None,
            message: None,
            retryable: false,
            outputs: IndexMap::new(),
            start_ms: entry.created_ms,
            end_ms: None,
            stderr_tail: String::new(),
        };
        let local = match &entry.phase {
            Phase::Held { until } => {
                let total = until.saturating_duration_since(entry.created);
                let elapsed = entry.created.elapsed();
                if elapsed < total / 2 {
                    v.message = Some("Queued: waiting for capacity in the workspace".into());
                } else {
                    v.lifecycle = Lifecycle::Pending;
                    v.message = Some("Waiting for the job cluster to start".into());
                }
                None
            }
            Phase::Starting => {
                v.lifecycle = Lifecycle::Pending;
                v.message = Some("Waiting for the job cluster to start".into());
                None
            }
            Phase::Started(local) => Some(local.clone()),
            Phase::StartFailed { message, ended_ms } => {
                v.lifecycle = Lifecycle::Terminated;
                v.result = Some(RunResult::Failed);
                v.message = Some(message.clone());
                v.end_ms = Some(*ended_ms);
                None
            }
            Phase::CanceledBeforeStart { ended_ms } => {
                v.lifecycle = Lifecycle::Terminated;
                v.result = Some(RunResult::Canceled);
                v.message = Some("canceled by request before it started".into());
                v.end_ms = Some(*ended_ms);
                None
            }
        };
        (v, local, entry.cancel_requested)
    };
    if let Some(local) = local {
        let backend = emu.backend.clone();
        let id = local.clone();
        let rec = tokio::task::spawn_blocking(move || backend.run_record(&id))
            .await
            .map_err(|e| BackendError::new(ErrorKind::Internal, e.to_string()))??;
        if cancel_requested && !rec.is_terminal() {
            // Cancelled but still going: ask again. A local SQL run can miss a cancel
            // that arrives just as its query starts (SQLite drops an interrupt while no
            // statement runs); Databricks does not lose cancels, so the emulator repeats
            // it at each look until the run ends.
            if let Err(e) = emu.backend.cancel(&local).await {
                tracing::debug!("emulator: repeating the cancel of run {run_id}: {e}");
            }
        }
        v.lifecycle = rec.state.clone();
        v.result = rec.result.clone();
        v.message = rec.message.clone();
        v.retryable = rec.retryable;
        v.outputs = rec.outputs.clone();
        v.params = rec.params.clone();
        v.end_ms = millis(rec.ended.as_deref());
        v.stderr_tail = rec.stderr_tail.clone();
    }
    Ok(v)
}

/// A run's state in the remote vocabulary.
#[derive(Debug, Clone)]
pub(crate) struct Words {
    pub life_cycle: String,
    pub result: Option<String>,
    /// `status.state` (Jobs API 2.1's newer field).
    pub status_state: String,
    /// `(code, type)` of `status.termination_details`, once terminated.
    pub termination: Option<(&'static str, &'static str)>,
    pub message: String,
}

impl Words {
    pub fn of(v: &RunView) -> Words {
        let message = v.message.clone().unwrap_or_default();
        let plain = |s: &str| Words {
            life_cycle: s.to_string(),
            result: None,
            status_state: s.to_string(),
            termination: None,
            message: message.clone(),
        };
        let done = |life: &str, result: &str, code, ty| Words {
            life_cycle: life.to_string(),
            result: Some(result.to_string()),
            status_state: "TERMINATED".to_string(),
            termination: Some((code, ty)),
            message: message.clone(),
        };
        match &v.lifecycle {
            Lifecycle::Queued => plain("QUEUED"),
            Lifecycle::Pending => plain("PENDING"),
            Lifecycle::Running => plain("RUNNING"),
            Lifecycle::Terminating => plain("TERMINATING"),
            Lifecycle::Unknown(s) => plain(s),
            Lifecycle::Terminated => match &v.result {
                Some(RunResult::Success) => done("TERMINATED", "SUCCESS", "SUCCESS", "SUCCESS"),
                Some(RunResult::Failed) if v.retryable => done(
                    "INTERNAL_ERROR",
                    "FAILED",
                    "INTERNAL_ERROR",
                    "INTERNAL_ERROR",
                ),
                Some(RunResult::Failed) => done(
                    "TERMINATED",
                    "FAILED",
                    "RUN_EXECUTION_ERROR",
                    "CLIENT_ERROR",
                ),
                Some(RunResult::TimedOut) => done(
                    "TERMINATED",
                    "TIMEDOUT",
                    "RUN_EXECUTION_ERROR",
                    "CLIENT_ERROR",
                ),
                Some(RunResult::Canceled) => {
                    done("TERMINATED", "CANCELED", "CANCELED", "CLIENT_ERROR")
                }
                Some(RunResult::Skipped) => Words {
                    life_cycle: "SKIPPED".to_string(),
                    result: None,
                    status_state: "TERMINATED".to_string(),
                    termination: Some(("SKIPPED", "CLIENT_ERROR")),
                    message: message.clone(),
                },
                Some(RunResult::Other(s)) => Words {
                    result: Some(s.to_uppercase()),
                    ..done(
                        "TERMINATED",
                        "FAILED",
                        "RUN_EXECUTION_ERROR",
                        "CLIENT_ERROR",
                    )
                },
                Some(RunResult::InternalError) | None => done(
                    "INTERNAL_ERROR",
                    "FAILED",
                    "INTERNAL_ERROR",
                    "INTERNAL_ERROR",
                ),
            },
        }
    }

    /// Replaces a non-terminal state by an unknown one (never a terminal state).
    pub fn replace_state(&mut self, unknown: &str) {
        self.life_cycle = unknown.to_string();
        self.status_state = unknown.to_string();
    }
}
