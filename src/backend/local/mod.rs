//! The embedded local analytics environment: a workspace directory of datasets (CSV,
//! optionally gzip-compressed) and job definitions (YAML), whose jobs really run here:
//! SQL by SQLite over the datasets, or a command as a process.
//!
//! ```text
//! workspace/
//!   datasets/NAME.csv | NAME.csv.gz   source datasets (read-only to jobs)
//!   datasets/NAME.schema.yaml         optional: `columns: {Col: integer|real|text}`
//!   jobs/NAME.yaml                    job definitions (see `jobs`)
//!   .dwflow/                          generated state, never part of the tree
//!     cache.sqlite                    import cache, a table per dataset version
//!     datasets/NAME.csv               datasets written by jobs
//!     local-runs/RUN_ID.json          run records
//! ```
//!
//! Runs are asynchronous (a thread each), go through the lifecycle states of the
//! [`Backend`] trait, can be cancelled, and survive the process only as records: a run
//! whose process died is marked failed (retryable) the next time the workspace is opened
//! or the run is looked at.

mod cache;
mod command;
mod datasets;
mod jobs;
mod names;
mod process;
mod record;
mod sql;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use indexmap::IndexMap;
use sha2::{Digest, Sha256};

use self::cache::{Cache, CacheError};
use self::jobs::{JobDef, RenderedTask};
use self::process::owner_alive;
use crate::backend::{
    Backend, BackendError, DatasetInfo, ErrorKind, JobInfo, JobRef, Lifecycle, Rows, RunId,
    RunResult, RunStatus,
};

pub use self::jobs::job_id;
pub use self::names::validate_dataset_name;
pub use self::process::{Owner, group_alive, process_alive};
pub use self::record::RunRecord;

/// The message of a run cut off by the death of its dwflow process.
pub const INTERRUPTED_MESSAGE: &str = "interrupted: the dwflow process running it exited";

/// Paths of a workspace.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub root: PathBuf,
    pub datasets: PathBuf,
    pub jobs: PathBuf,
    pub state: PathBuf,
    pub generated: PathBuf,
    pub runs: PathBuf,
    pub keys: PathBuf,
    pub cache: PathBuf,
}

impl Paths {
    fn new(root: PathBuf) -> Self {
        let state = root.join(".dwflow");
        Paths {
            datasets: root.join("datasets"),
            jobs: root.join("jobs"),
            generated: state.join("datasets"),
            runs: state.join("local-runs"),
            keys: state.join("local-runs").join("keys"),
            cache: state.join("cache.sqlite"),
            state,
            root,
        }
    }
}

/// How a task ended.
pub(crate) enum Outcome {
    Success { outputs: IndexMap<String, String> },
    Failed { message: String },
    Canceled,
}

impl Outcome {
    pub(crate) fn failed(message: impl Into<String>) -> Self {
        Outcome::Failed {
            message: message.into(),
        }
    }
}

/// A run this process runs: its record (the truth, mirrored to disk) and how to stop it.
pub(crate) struct RunHandle {
    record: Mutex<RunRecord>,
    cancel: AtomicBool,
    interrupt: Mutex<Option<rusqlite::InterruptHandle>>,
}

impl RunHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, RunRecord> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cancel_requested(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Asks the run to stop: the task notices the flag; a running query is interrupted.
    fn request_cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        if let Some(h) = self
            .interrupt
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            h.interrupt();
        }
    }

    /// Registers the interrupt handle of the query's connection.
    pub(crate) fn set_interrupt(&self, h: rusqlite::InterruptHandle) {
        let mut slot = self.interrupt.lock().unwrap_or_else(|p| p.into_inner());
        if self.cancel_requested() {
            h.interrupt();
        }
        *slot = Some(h);
    }

    /// Records a command's process group, so that a crash does not leave it orphaned.
    pub(crate) fn set_process_group(&self, inner: &Inner, pgid: u32, start: Option<u64>) {
        let mut rec = self.lock();
        rec.pgid = Some(pgid);
        rec.pgid_start_ticks = start;
        inner.save(&rec);
    }

    pub(crate) fn set_output_tails(&self, stdout: String, stderr: String) {
        let mut rec = self.lock();
        rec.stdout_tail = stdout;
        rec.stderr_tail = stderr;
    }
}

/// The state shared by a [`LocalBackend`] and its run threads.
pub(crate) struct Inner {
    pub(crate) paths: Paths,
    pub(crate) cache: Cache,
    owner: Owner,
    runs: Mutex<HashMap<String, Arc<RunHandle>>>,
    invoke_lock: Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        process::unregister_instance(&self.owner.instance);
    }
}

fn internal(what: impl std::fmt::Display, e: impl std::fmt::Display) -> BackendError {
    BackendError::new(ErrorKind::Internal, format!("{what}: {e}"))
}

impl Inner {
    /// Writes a record to disk; a failure is logged (the run itself goes on).
    fn save(&self, rec: &RunRecord) -> bool {
        match record::write(&self.paths.runs, rec) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("cannot write the record of run {}: {e}", rec.run_id);
                false
            }
        }
    }

    /// Marks a record whose process died as failed (retryable), and stops a command's
    /// process group that outlived it.
    fn recover(&self, rec: &mut RunRecord) {
        // A run that was being cancelled ends as cancelled: nobody wants it retried.
        let was_canceling = rec.state == Lifecycle::Terminating;
        rec.state = Lifecycle::Terminated;
        rec.ended = Some(record::now());
        let mut message = if was_canceling {
            rec.result = Some(RunResult::Canceled);
            rec.retryable = false;
            format!("canceled; {INTERRUPTED_MESSAGE} while cancelling it")
        } else {
            rec.result = Some(RunResult::Failed);
            rec.retryable = true;
            INTERRUPTED_MESSAGE.to_string()
        };
        if let Some(pgid) = rec.pgid
            && process::kill_orphan_group(pgid, rec.pgid_start_ticks)
        {
            message.push_str(&format!("; its orphaned process group {pgid} was stopped"));
        }
        rec.message = Some(message);
        tracing::warn!(
            "run {} of job {}: {}",
            rec.run_id,
            rec.job,
            INTERRUPTED_MESSAGE
        );
        if let Err(e) = record::write(&self.paths.runs, rec) {
            tracing::error!("cannot write the record of run {}: {e}", rec.run_id);
        }
    }

    /// Reads a run's record from disk, recovering it if its process is gone.
    fn record_from_disk(&self, run_id: &str) -> Result<RunRecord, BackendError> {
        let path = record::path_of(&self.paths.runs, run_id);
        if !path.is_file() {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!("no local run `{run_id}` in {}", self.paths.root.display()),
            ));
        }
        let mut rec = record::read(&path).map_err(|m| BackendError::new(ErrorKind::Internal, m))?;
        if !rec.is_terminal() && !owner_alive(&rec.owner) {
            self.recover(&mut rec);
        }
        Ok(rec)
    }

    fn handle(&self, run_id: &str) -> Option<Arc<RunHandle>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned()
    }

    fn load_jobs(&self) -> Result<Vec<JobDef>, BackendError> {
        let (jobs, errors) = jobs::load_all(&self.paths.root)?;
        if !errors.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!("bad job definition: {}", errors.join("; ")),
            ));
        }
        Ok(jobs)
    }

    fn find_job(&self, job: &JobRef) -> Result<JobDef, BackendError> {
        match job {
            JobRef::Name(name) => jobs::load_by_name(&self.paths.root, name)?.ok_or_else(|| {
                let names = jobs::load_all(&self.paths.root)
                    .map(|(j, _)| j.into_iter().map(|j| j.name).collect::<Vec<_>>())
                    .unwrap_or_default();
                let hint = crate::diagnostic::did_you_mean(name, names.iter().map(String::as_str))
                    .map(|h| format!("; {h}"))
                    .unwrap_or_else(|| format!("; jobs here: {}", names.join(", ")));
                BackendError::new(
                    ErrorKind::NotFound,
                    format!("no job named `{name}` in the local environment{hint}"),
                )
            }),
            JobRef::Id(id) => {
                let (all, errors) = jobs::load_all(&self.paths.root)?;
                all.into_iter().find(|j| j.id == *id).ok_or_else(|| {
                    let bad = if errors.is_empty() {
                        String::new()
                    } else {
                        format!(" (some job files could not be read: {})", errors.join("; "))
                    };
                    BackendError::new(
                        ErrorKind::NotFound,
                        format!("no job with id {id} in the local environment{bad}"),
                    )
                })
            }
        }
    }

    fn dataset_info(&self, ds: &datasets::Located) -> Result<DatasetInfo, BackendError> {
        let shown = ds.display(&self.paths);
        let columns = cache::read_header(ds, &shown).map_err(cache_error)?;
        let created = std::fs::metadata(&ds.path)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| {
                chrono::DateTime::<chrono::Utc>::from(t)
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            });
        Ok(DatasetInfo {
            name: ds.name.clone(),
            id: ds.name.clone(),
            created,
            columns,
            rows: self.cache.known_rows(ds),
        })
    }

    fn invoke(
        self: &Arc<Self>,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
        secrets: &[String],
    ) -> Result<RunId, BackendError> {
        // A key already used names its run, whatever changed since (the job's file, the
        // parameters): nothing new starts.
        let key_path = (!idempotency_key.is_empty()).then(|| {
            self.paths
                .keys
                .join(hex(&Sha256::digest(idempotency_key.as_bytes())))
        });
        if let Some(existing) = key_path.as_deref().and_then(read_key) {
            return Ok(RunId(existing));
        }
        let job = self.find_job(&JobRef::Id(job_id))?;
        let params = job.resolve_params(params)?;
        let task = job.render(&params)?;
        let (inputs, output, kind) = match &task {
            RenderedTask::Sql { inputs, output, .. } => {
                for name in inputs {
                    validate_dataset_name(name).map_err(|e| {
                        BackendError::new(
                            ErrorKind::Invalid,
                            format!("job `{}`: input: {}", job.name, e.message),
                        )
                    })?;
                }
                validate_dataset_name(output).map_err(|e| {
                    BackendError::new(
                        ErrorKind::Invalid,
                        format!("job `{}`: output: {}", job.name, e.message),
                    )
                })?;
                if let Some(src) = datasets::locate_source(&self.paths, output)? {
                    return Err(BackendError::new(
                        ErrorKind::Invalid,
                        format!(
                            "job `{}`: output `{output}` is a source dataset ({}), which jobs may not overwrite; choose another name",
                            job.name,
                            src.display(&self.paths)
                        ),
                    ));
                }
                (inputs.clone(), Some(output.clone()), "sql")
            }
            RenderedTask::Command { cwd, .. } => {
                if let Some(cwd) = cwd {
                    command::check_cwd(cwd).map_err(|m| {
                        BackendError::new(ErrorKind::Invalid, format!("job `{}`: {m}", job.name))
                    })?;
                }
                (Vec::new(), None, "command")
            }
        };

        let _guard = self.invoke_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = key_path.as_deref().and_then(read_key) {
            return Ok(RunId(existing));
        }

        let run_id = format!("local-{}", uuid::Uuid::now_v7());
        let rec = RunRecord {
            run_id: run_id.clone(),
            job: job.name.clone(),
            job_id: job.id,
            task: kind.to_string(),
            params,
            idempotency_key: (!idempotency_key.is_empty()).then(|| idempotency_key.to_string()),
            created: record::now(),
            started: None,
            ended: None,
            state: Lifecycle::Queued,
            result: None,
            message: None,
            retryable: false,
            inputs,
            output_dataset: output,
            outputs: IndexMap::new(),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            owner: self.owner.clone(),
            pgid: None,
            pgid_start_ticks: None,
            secrets: secrets.to_vec(),
        };
        record::write(&self.paths.runs, &rec)
            .map_err(|e| internal(format!("cannot write the record of run {run_id}"), e))?;
        if let Some(key_path) = &key_path {
            match claim_key(key_path, &run_id) {
                Ok(None) => {}
                Ok(Some(existing)) => {
                    // Another process claimed the key first: its run is the run.
                    let _ = std::fs::remove_file(record::path_of(&self.paths.runs, &run_id));
                    return Ok(RunId(existing));
                }
                Err(e) => {
                    let _ = std::fs::remove_file(record::path_of(&self.paths.runs, &run_id));
                    return Err(internal("cannot record the idempotency key", e));
                }
            }
        }
        let handle = Arc::new(RunHandle {
            record: Mutex::new(rec),
            cancel: AtomicBool::new(false),
            interrupt: Mutex::new(None),
        });
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run_id.clone(), Arc::clone(&handle));
        let inner = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name(format!("dwflow-{run_id}"))
            .spawn(move || inner.run_task(&handle, job, task));
        if let Err(e) = spawned {
            let h = self.handle(&run_id);
            if let Some(h) = h {
                let mut rec = h.lock();
                finish(
                    &mut rec,
                    Outcome::failed(format!("cannot start a thread: {e}")),
                );
                self.save(&rec);
            }
        }
        Ok(RunId(run_id))
    }

    /// The body of a run's thread.
    fn run_task(&self, handle: &RunHandle, job: JobDef, task: RenderedTask) {
        {
            let mut rec = handle.lock();
            if handle.cancel_requested() {
                drop(rec);
                self.complete(handle, Outcome::Canceled);
                return;
            }
            rec.state = Lifecycle::Running;
            rec.started = Some(record::now());
            self.save(&rec);
        }
        let run_id = handle.lock().run_id.clone();
        let params = handle.lock().params.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &task {
            RenderedTask::Sql {
                query,
                inputs,
                output,
            } => sql::run(self, handle, query, inputs, output),
            RenderedTask::Command { argv, env, cwd } => command::run(
                self,
                handle,
                command::CommandSpec {
                    argv,
                    env,
                    cwd: cwd.as_deref(),
                    params: &params,
                    job: &job.name,
                    run_id: &run_id,
                },
            ),
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Outcome::Failed {
                message: format!("internal error in dwflow's local environment: {what}"),
            }
        });
        self.complete(handle, outcome);
    }

    /// Ends a run: the final record, on disk.
    fn complete(&self, handle: &RunHandle, outcome: Outcome) {
        let mut rec = handle.lock();
        finish(&mut rec, outcome);
        if self.save(&rec) {
            // Finished and on disk: the record answers from now on (memory stays bounded
            // in a long-lived service). Unsaved, the run stays in memory.
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&rec.run_id);
        }
    }

    fn cancel(&self, run_id: &str) -> Result<(), BackendError> {
        if let Some(handle) = self.handle(run_id) {
            {
                let mut rec = handle.lock();
                if rec.is_terminal() {
                    return Ok(());
                }
                if rec.state != Lifecycle::Terminating {
                    rec.state = Lifecycle::Terminating;
                    self.save(&rec);
                }
            }
            handle.request_cancel();
            return Ok(());
        }
        let rec = self.record_from_disk(run_id)?;
        if rec.is_terminal() {
            return Ok(());
        }
        Err(BackendError::new(
            ErrorKind::Invalid,
            format!(
                "run `{run_id}` is run by another dwflow process (pid {}): cancel it there",
                rec.owner.pid
            ),
        ))
    }

    fn status(&self, run_id: &str) -> Result<RunStatus, BackendError> {
        if let Some(handle) = self.handle(run_id) {
            return Ok(handle.lock().status());
        }
        Ok(self.record_from_disk(run_id)?.status())
    }

    fn run_record(&self, run_id: &str) -> Result<RunRecord, BackendError> {
        if let Some(handle) = self.handle(run_id) {
            return Ok(handle.lock().clone());
        }
        self.record_from_disk(run_id)
    }
}

/// Ends a record with an outcome.
fn finish(rec: &mut RunRecord, outcome: Outcome) {
    rec.state = Lifecycle::Terminated;
    rec.ended = Some(record::now());
    match outcome {
        Outcome::Success { outputs } => {
            rec.result = Some(RunResult::Success);
            rec.message = None;
            rec.outputs = outputs;
        }
        Outcome::Failed { message } => {
            rec.result = Some(RunResult::Failed);
            rec.message = Some(message);
        }
        Outcome::Canceled => {
            rec.result = Some(RunResult::Canceled);
            rec.message = Some("canceled by request".to_string());
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The run id an idempotency key file names, if the key was used.
fn read_key(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let id = text.trim();
    names::is_valid_run_id(id).then(|| id.to_string())
}

/// Claims an idempotency key for a run: `Ok(None)` when claimed, `Ok(Some(other))` when
/// another run holds it. Atomic across processes (a hard link cannot replace a file).
fn claim_key(path: &Path, run_id: &str) -> std::io::Result<Option<String>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".claim-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&tmp, format!("{run_id}\n"))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(Some(read_key(path).ok_or_else(|| {
                std::io::Error::other(format!("{} does not name a run", path.display()))
            })?))
        }
        Err(e) => Err(e),
    }
}

fn cache_error(e: CacheError) -> BackendError {
    match e {
        CacheError::Canceled => BackendError::new(ErrorKind::Internal, "canceled"),
        CacheError::Data(m) => BackendError::new(ErrorKind::Invalid, m),
        CacheError::Internal(m) => BackendError::new(ErrorKind::Internal, m),
    }
}

/// The embedded local analytics environment over one workspace directory.
#[derive(Clone)]
pub struct LocalBackend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBackend")
            .field("workspace", &self.inner.paths.root)
            .finish()
    }
}

impl LocalBackend {
    /// Opens a workspace (a directory with `jobs/` and/or `datasets/`), creating its
    /// `.dwflow/` state directory, and marks runs left unfinished by a dead dwflow process
    /// as failed (retryable).
    pub fn open(workspace_dir: &Path) -> Result<LocalBackend, BackendError> {
        let root = std::fs::canonicalize(workspace_dir).map_err(|e| {
            BackendError::new(
                ErrorKind::Invalid,
                format!("cannot open workspace {}: {e}", workspace_dir.display()),
            )
        })?;
        if !root.is_dir() {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!("workspace {} is not a directory", root.display()),
            ));
        }
        let paths = Paths::new(root);
        if !paths.jobs.is_dir() && !paths.datasets.is_dir() {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!(
                    "{} is not a dwflow workspace: it has neither `jobs/` nor `datasets/`",
                    paths.root.display()
                ),
            ));
        }
        for dir in [&paths.state, &paths.generated, &paths.runs, &paths.keys] {
            std::fs::create_dir_all(dir)
                .map_err(|e| internal(format!("cannot create {}", dir.display()), e))?;
        }
        // Generated state never dirties a git tree, whatever the repository ignores.
        let ignore = paths.state.join(".gitignore");
        if !ignore.exists() {
            let _ = std::fs::write(&ignore, "# dwflow's generated state\n*\n");
        }
        let cache = Cache::new(&paths);
        let instance = uuid::Uuid::new_v4().to_string();
        let owner = process::current_owner(&instance);
        let inner = Arc::new(Inner {
            paths,
            cache,
            owner,
            runs: Mutex::new(HashMap::new()),
            invoke_lock: Mutex::new(()),
        });
        inner.cache.init().map_err(cache_error)?;
        process::register_instance(&instance);
        inner.recover_all();
        Ok(LocalBackend { inner })
    }

    /// The workspace directory (canonical).
    pub fn workspace(&self) -> &Path {
        &self.inner.paths.root
    }

    /// The full record of a run: parameters, times, state, output dataset, and the
    /// tails of a command's stdout and stderr.
    pub fn run_record(&self, run: &RunId) -> Result<RunRecord, BackendError> {
        let inner = Arc::clone(&self.inner);
        check_run_id(&run.0)?;
        inner.run_record(&run.0)
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>) -> Result<T, BackendError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(inner))
            .await
            .map_err(|e| internal("local environment task failed", e))?
    }
}

impl Inner {
    /// Marks every unfinished run whose process is gone as failed.
    fn recover_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.runs) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            match record::read(&path) {
                Ok(mut rec) => {
                    if !rec.is_terminal() && !owner_alive(&rec.owner) {
                        self.recover(&mut rec);
                    }
                }
                Err(m) => tracing::warn!("{m}"),
            }
        }
    }
}

fn check_run_id(id: &str) -> Result<(), BackendError> {
    if names::is_valid_run_id(id) {
        Ok(())
    } else {
        Err(BackendError::new(
            ErrorKind::NotFound,
            format!("`{id}` is not a local run id"),
        ))
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn list_jobs(&self) -> Result<Vec<JobInfo>, BackendError> {
        self.blocking(|inner| Ok(inner.load_jobs()?.iter().map(JobDef::info).collect()))
            .await
    }

    async fn describe_job(&self, job: &JobRef) -> Result<JobInfo, BackendError> {
        let job = job.clone();
        self.blocking(move |inner| Ok(inner.find_job(&job)?.info()))
            .await
    }

    async fn invoke(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
    ) -> Result<RunId, BackendError> {
        self.invoke_with_secrets(job_id, params, idempotency_key, &[])
            .await
    }

    async fn invoke_with_secrets(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
        secrets: &[String],
    ) -> Result<RunId, BackendError> {
        let params = params.clone();
        let key = idempotency_key.to_string();
        let secrets = secrets.to_vec();
        self.blocking(move |inner| inner.invoke(job_id, &params, &key, &secrets))
            .await
    }

    async fn status(&self, run: &RunId) -> Result<RunStatus, BackendError> {
        check_run_id(&run.0)?;
        let id = run.0.clone();
        self.blocking(move |inner| inner.status(&id)).await
    }

    async fn cancel(&self, run: &RunId) -> Result<(), BackendError> {
        check_run_id(&run.0)?;
        let id = run.0.clone();
        self.blocking(move |inner| inner.cancel(&id)).await
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, BackendError> {
        self.blocking(|inner| {
            datasets::list(&inner.paths)?
                .iter()
                .map(|d| inner.dataset_info(d))
                .collect()
        })
        .await
    }

    async fn find_dataset(&self, name: &str) -> Result<Option<DatasetInfo>, BackendError> {
        validate_dataset_name(name)?;
        let name = name.to_string();
        self.blocking(move |inner| {
            datasets::locate(&inner.paths, &name)?
                .map(|d| inner.dataset_info(&d))
                .transpose()
        })
        .await
    }

    async fn read_dataset(&self, name: &str, limit: Option<usize>) -> Result<Rows, BackendError> {
        validate_dataset_name(name)?;
        let name = name.to_string();
        self.blocking(move |inner| {
            let Some(ds) = datasets::locate(&inner.paths, &name)? else {
                return Err(BackendError::new(
                    ErrorKind::NotFound,
                    format!("no dataset named `{name}` in the local environment"),
                ));
            };
            let table = inner
                .cache
                .ensure(&inner.paths, &ds, &|| false)
                .map_err(cache_error)?;
            inner.cache.read(&table, limit).map_err(cache_error)
        })
        .await
    }
}
