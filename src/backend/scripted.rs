//! An in-process backend whose runs follow a script (durations, results, state
//! sequences, invocation failures), on tokio's clock, so engine tests are deterministic
//! and can run in paused time. It records every call for assertions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indexmap::IndexMap;
use tokio::time::Instant;

use super::{
    Backend, BackendError, DatasetInfo, ErrorKind, JobInfo, JobParam, JobRef, Lifecycle, Rows,
    RunId, RunResult, RunStatus,
};

/// What one attempt of a scripted job does.
#[derive(Debug, Clone)]
pub struct AttemptScript {
    /// Time spent queued before running.
    pub queued: Duration,
    /// Time spent running.
    pub duration: Duration,
    pub result: RunResult,
    pub message: Option<String>,
    pub retryable: bool,
    pub outputs: IndexMap<String, String>,
    /// Report this (unknown) state string instead of `running` while it runs.
    pub running_state: Option<String>,
    /// Fail the invocation itself.
    pub invoke_error: Option<BackendError>,
}

impl AttemptScript {
    pub fn success(duration: Duration) -> Self {
        AttemptScript {
            queued: Duration::ZERO,
            duration,
            result: RunResult::Success,
            message: None,
            retryable: false,
            outputs: IndexMap::new(),
            running_state: None,
            invoke_error: None,
        }
    }
    pub fn failure(duration: Duration, message: &str, retryable: bool) -> Self {
        AttemptScript {
            result: RunResult::Failed,
            message: Some(message.to_string()),
            retryable,
            ..Self::success(duration)
        }
    }
}

/// A job: its attempts in order (the last one repeats).
#[derive(Debug, Clone)]
pub struct JobScript {
    pub attempts: Vec<AttemptScript>,
}

/// One recorded invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub job: String,
    pub params: IndexMap<String, String>,
    pub key: String,
    pub run_id: String,
    pub at: Instant,
    /// When the script ends the run (or when it was cancelled).
    pub ends: Instant,
    pub canceled: bool,
}

#[derive(Default)]
struct State {
    invocations: Vec<Invocation>,
    by_key: HashMap<String, usize>,
    per_job_count: HashMap<String, usize>,
    status_calls: usize,
}

pub struct ScriptedBackend {
    jobs: IndexMap<String, (u64, JobScript)>,
    state: Mutex<State>,
    /// A job that is not scripted runs like this.
    default: AttemptScript,
}

impl ScriptedBackend {
    pub fn new(default: AttemptScript) -> Self {
        ScriptedBackend {
            jobs: IndexMap::new(),
            state: Mutex::new(State::default()),
            default,
        }
    }

    pub fn job(mut self, name: &str, script: JobScript) -> Self {
        let id = 1_000_000_000_000 + self.jobs.len() as u64;
        self.jobs.insert(name.to_string(), (id, script));
        self
    }

    pub fn invocations(&self) -> Vec<Invocation> {
        self.lock().invocations.clone()
    }

    pub fn status_calls(&self) -> usize {
        self.lock().status_calls
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn name_of(&self, job_id: u64) -> String {
        self.jobs
            .iter()
            .find(|(_, (id, _))| *id == job_id)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("job-{job_id}"))
    }

    fn script_for(&self, job: &str, attempt: usize) -> AttemptScript {
        match self.jobs.get(job) {
            Some((_, s)) if !s.attempts.is_empty() => {
                s.attempts[attempt.min(s.attempts.len() - 1)].clone()
            }
            _ => self.default.clone(),
        }
    }

    fn run(&self, run: &RunId) -> Result<(Invocation, AttemptScript), BackendError> {
        let st = self.lock();
        let idx: usize = run
            .0
            .strip_prefix("run-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("no run {run}")))?;
        let inv = st
            .invocations
            .get(idx)
            .cloned()
            .ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("no run {run}")))?;
        let nth = st.invocations[..idx]
            .iter()
            .filter(|i| i.job == inv.job)
            .count();
        drop(st);
        Ok((inv.clone(), self.script_for(&inv.job, nth)))
    }
}

#[async_trait::async_trait]
impl Backend for ScriptedBackend {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    async fn list_jobs(&self) -> Result<Vec<JobInfo>, BackendError> {
        Ok(self
            .jobs
            .iter()
            .map(|(name, (id, _))| JobInfo {
                id: *id,
                name: name.clone(),
                creator: None,
                created: None,
                parameters: Some(Vec::<JobParam>::new()),
            })
            .collect())
    }

    async fn describe_job(&self, job: &JobRef) -> Result<JobInfo, BackendError> {
        let id = self.resolve_job(job).await?;
        self.list_jobs()
            .await?
            .into_iter()
            .find(|j| j.id == id)
            .ok_or_else(|| BackendError::new(ErrorKind::NotFound, format!("no {job}")))
    }

    async fn resolve_job(&self, job: &JobRef) -> Result<u64, BackendError> {
        match job {
            JobRef::Id(id) => Ok(*id),
            JobRef::Name(n) => Ok(self.jobs.get(n).map(|(id, _)| *id).unwrap_or_else(|| {
                // Unscripted jobs get a stable id from their name.
                2_000_000_000_000
                    + n.bytes()
                        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64))
                        % 1_000_000_000
            })),
        }
    }

    async fn invoke(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        key: &str,
    ) -> Result<RunId, BackendError> {
        let job = match self.jobs.iter().find(|(_, (id, _))| *id == job_id) {
            Some((n, _)) => n.clone(),
            None => self.name_of(job_id),
        };
        let st = self.lock();
        if let Some(&i) = st.by_key.get(key) {
            return Ok(RunId(format!("run-{i}")));
        }
        let nth = *st.per_job_count.get(&job).unwrap_or(&0);
        drop(st);
        let script = self.script_for(&job, nth);
        let mut st = self.lock();
        *st.per_job_count.entry(job.clone()).or_default() += 1;
        if let Some(e) = script.invoke_error {
            // A failed invocation still counts as an attempt of the job.
            st.invocations.push(Invocation {
                job,
                params: params.clone(),
                key: key.to_string(),
                run_id: String::new(),
                at: Instant::now(),
                ends: Instant::now(),
                canceled: false,
            });
            return Err(e);
        }
        let idx = st.invocations.len();
        let now = Instant::now();
        st.invocations.push(Invocation {
            job,
            params: params.clone(),
            key: key.to_string(),
            run_id: format!("run-{idx}"),
            at: now,
            ends: now + script.queued + script.duration,
            canceled: false,
        });
        st.by_key.insert(key.to_string(), idx);
        Ok(RunId(format!("run-{idx}")))
    }

    async fn status(&self, run: &RunId) -> Result<RunStatus, BackendError> {
        self.lock().status_calls += 1;
        let (inv, script) = self.run(run)?;
        let now = Instant::now();
        if now >= inv.ends {
            let (result, message, retryable) = if inv.canceled {
                (
                    RunResult::Canceled,
                    Some("canceled by request".to_string()),
                    false,
                )
            } else {
                (
                    script.result.clone(),
                    script.message.clone(),
                    script.retryable,
                )
            };
            return Ok(RunStatus {
                lifecycle: Lifecycle::Terminated,
                result: Some(result.clone()),
                message,
                retryable,
                outputs: if result.is_success() {
                    script.outputs
                } else {
                    IndexMap::new()
                },
            });
        }
        let lifecycle = if inv.canceled {
            Lifecycle::Terminating
        } else if now < inv.at + script.queued {
            Lifecycle::Queued
        } else {
            match script.running_state {
                Some(s) => Lifecycle::Unknown(s),
                None => Lifecycle::Running,
            }
        };
        Ok(RunStatus {
            lifecycle,
            result: None,
            message: None,
            retryable: false,
            outputs: IndexMap::new(),
        })
    }

    async fn cancel(&self, run: &RunId) -> Result<(), BackendError> {
        let (inv, _) = self.run(run)?;
        let idx: usize = inv.run_id.trim_start_matches("run-").parse().unwrap_or(0);
        let mut st = self.lock();
        if let Some(i) = st.invocations.get_mut(idx) {
            let now = Instant::now();
            if now < i.ends {
                i.canceled = true;
                // Cancellation takes a moment, as it does remotely.
                i.ends = now + Duration::from_millis(200);
            }
        }
        Ok(())
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, BackendError> {
        Ok(Vec::new())
    }

    async fn find_dataset(&self, name: &str) -> Result<Option<DatasetInfo>, BackendError> {
        // A dataset "exists" when a successful run was given it as ResultDatasetName.
        let st = self.lock();
        let exists = st.invocations.iter().any(|i| {
            !i.canceled && i.params.get("ResultDatasetName").map(String::as_str) == Some(name)
        });
        Ok(exists.then(|| DatasetInfo {
            name: name.to_string(),
            id: name.to_string(),
            created: None,
            columns: Vec::new(),
            rows: None,
        }))
    }

    async fn read_dataset(&self, name: &str, _limit: Option<usize>) -> Result<Rows, BackendError> {
        Err(BackendError::new(
            ErrorKind::NotFound,
            format!("the scripted backend has no dataset `{name}`"),
        ))
    }
}
