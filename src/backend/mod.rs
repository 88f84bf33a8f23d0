//! The seam between the engine and an analytics environment. The engine knows only the
//! [`Backend`] trait; each environment (the embedded local one, the Veracity Data
//! Workbench gateway, Databricks) implements it in its own module.

pub mod databricks;
pub mod http;
pub mod local;
pub mod run_state;
pub mod scripted;
pub mod wire;
pub mod workbench;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

/// A job as the environment describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Numeric job id (Databricks ids exceed 32 bits).
    pub id: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<String>,
    /// Creation time, RFC 3339, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The job's parameters; `None` when the environment does not say (the Veracity
    /// gateway's job list, for one), which is not the same as "no parameters".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Vec<JobParam>>,
}

/// One named job parameter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobParam {
    pub name: String,
    /// Default value; `None` means the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// How a pipeline step names its job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobRef {
    Name(String),
    Id(u64),
}

impl std::fmt::Display for JobRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobRef::Name(n) => write!(f, "job `{n}`"),
            JobRef::Id(id) => write!(f, "job id {id}"),
        }
    }
}

/// A remote (or local) run id, as the environment spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a run is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Queued,
    Pending,
    Running,
    Terminating,
    /// Finished; see the result.
    Terminated,
    /// A state this client does not know: treated as "not finished yet".
    Unknown(String),
}

impl Lifecycle {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Lifecycle::Terminated)
    }
}

/// How a finished run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunResult {
    Success,
    Failed,
    TimedOut,
    Canceled,
    Skipped,
    InternalError,
    /// Any other result string: never success.
    Other(String),
}

impl RunResult {
    pub fn is_success(&self) -> bool {
        matches!(self, RunResult::Success)
    }
}

/// A run's status as reported by the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    pub lifecycle: Lifecycle,
    /// Set once `lifecycle` is `Terminated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    /// The environment's message (the error, on failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether a failure is worth retrying (internal/cloud errors, a run cut off by a
    /// crash), as opposed to a failure of the job's own code.
    #[serde(default)]
    pub retryable: bool,
    /// Values the job reported (local command jobs: a JSON object on the last line of
    /// stdout; Databricks: task values / notebook output).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<String, String>,
}

impl RunStatus {
    pub fn is_terminal(&self) -> bool {
        self.lifecycle.is_terminal()
    }
    /// Success only on an explicit success result.
    pub fn is_success(&self) -> bool {
        self.is_terminal() && self.result.as_ref().is_some_and(RunResult::is_success)
    }
}

/// A dataset as the environment lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    /// The environment's id for it (the name itself for local datasets).
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<String>,
    /// Number of rows, where known without reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// Rows read from a dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rows {
    pub columns: Vec<String>,
    /// Values are JSON scalars; a missing value is `null`.
    pub rows: Vec<Vec<serde_json::Value>>,
}

/// What went wrong talking to an environment.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub kind: ErrorKind,
    pub message: String,
    /// Safe to try the same call again (connection errors, 5xx, throttling).
    pub retryable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Credentials missing, wrong or expired.
    Auth,
    /// The network or the service failed.
    Unavailable,
    /// The job, run or dataset does not exist.
    NotFound,
    /// A job name matched more than one job.
    Ambiguous,
    /// The request was refused as invalid (bad parameters, bad dataset name).
    Invalid,
    /// A local I/O or engine failure.
    Internal,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        BackendError {
            kind,
            message: message.into(),
            retryable: matches!(kind, ErrorKind::Unavailable),
        }
    }
}

/// An analytics environment: the only thing the engine talks to.
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// A short name for messages: "local", "workbench", "databricks".
    fn kind(&self) -> &'static str;

    /// Whether `invoke` honours idempotency keys (one run per key). Where it does not,
    /// an invocation whose answer was lost cannot be safely sent again.
    fn idempotent_invoke(&self) -> bool {
        true
    }

    async fn list_jobs(&self) -> Result<Vec<JobInfo>, BackendError>;

    /// A job with its parameters (where the environment knows them).
    async fn describe_job(&self, job: &JobRef) -> Result<JobInfo, BackendError>;

    /// Resolves a name to exactly one job id; absence and ambiguity are errors that
    /// list candidates.
    async fn resolve_job(&self, job: &JobRef) -> Result<u64, BackendError> {
        match job {
            JobRef::Id(id) => Ok(*id),
            JobRef::Name(name) => {
                let jobs = self.list_jobs().await?;
                resolve_in(self.kind(), name, &jobs)
            }
        }
    }

    /// Starts a run. `idempotency_key` identifies this attempt: an environment that
    /// honours it starts at most one run per key.
    async fn invoke(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
    ) -> Result<RunId, BackendError>;

    /// [`Backend::invoke`], naming the values of secret pipeline parameters among
    /// `params`, so that an environment that keeps its own records (the local one) can
    /// keep them masked. A remote environment receives the values as it must.
    async fn invoke_with_secrets(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
        secrets: &[String],
    ) -> Result<RunId, BackendError> {
        let _ = secrets;
        self.invoke(job_id, params, idempotency_key).await
    }

    async fn status(&self, run: &RunId) -> Result<RunStatus, BackendError>;

    /// Asks for cancellation; callers poll `status` until terminal to confirm.
    async fn cancel(&self, run: &RunId) -> Result<(), BackendError>;

    /// Whether the environment has datasets at all. Databricks' Jobs API has none: there
    /// the engine skips `expect` checks (with a warning) instead of failing the step.
    fn has_datasets(&self) -> bool {
        true
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, BackendError>;

    /// Datasets created after `after` (RFC 3339), for the service's dataset trigger.
    /// The filter is a hint that saves transfer where the environment supports it (the
    /// gateway's `createdAfter`); callers still de-duplicate by name.
    async fn list_datasets_created_after(
        &self,
        after: Option<&str>,
    ) -> Result<Vec<DatasetInfo>, BackendError> {
        let _ = after;
        self.list_datasets().await
    }

    async fn find_dataset(&self, name: &str) -> Result<Option<DatasetInfo>, BackendError>;

    /// Reads up to `limit` rows (all when `None`).
    async fn read_dataset(&self, name: &str, limit: Option<usize>) -> Result<Rows, BackendError>;
}

/// Finds the one job named `name` in `jobs`; absence and ambiguity are errors that list
/// candidates (the default of [`Backend::resolve_job`], shared with overrides).
pub fn resolve_in(kind: &str, name: &str, jobs: &[JobInfo]) -> Result<u64, BackendError> {
    let matches: Vec<&JobInfo> = jobs.iter().filter(|j| j.name == name).collect();
    match matches.as_slice() {
        [one] => Ok(one.id),
        [] => {
            let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
            let hint = crate::diagnostic::did_you_mean(name, names.iter().copied())
                .map(|h| format!("; {h}"))
                .unwrap_or_else(|| {
                    if names.is_empty() {
                        "; it has no jobs".to_string()
                    } else if names.len() > 30 {
                        format!(
                            "; {} jobs there (see `dwflow jobs list`), e.g. {}",
                            names.len(),
                            names[..10].join(", ")
                        )
                    } else {
                        format!("; jobs here: {}", names.join(", "))
                    }
                });
            Err(BackendError::new(
                ErrorKind::NotFound,
                format!("no job named `{name}` in the {kind} environment{hint}"),
            ))
        }
        many => Err(BackendError::new(
            ErrorKind::Ambiguous,
            format!(
                "{} jobs are named `{name}` (ids {}); use `job_id` to pick one",
                many.len(),
                many.iter()
                    .map(|j| j.id.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}
