//! `dwflow serve`: the service that starts pipeline runs on events, schedules, dataset
//! arrivals and by hand, keeps their history in SQLite and shows them on a web page.
//!
//! - [`catalog`]: the pipelines served (validated on load, reloaded atomically);
//! - [`manager`]: admission (concurrency policies), execution, cancel, recovery;
//! - [`store`]: the durable history (versioned migrations);
//! - [`triggers`]: event matching, cron maths, dataset patterns;
//! - [`auth`]: bearer tokens and signed events;
//! - [`api`] and [`web`]: the HTTP API and the page; [`metrics`]: Prometheus text.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod manager;
pub mod metrics;
pub mod store;
pub mod triggers;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::backend::Backend;
use crate::engine::PollPolicy;
use crate::exit::Exit;
use crate::pipeline::model::MissedTicks;
use auth::AuthConfig;
use catalog::Catalog;
use manager::{Admitted, Manager, StartRequest};
use metrics::{MeteredBackend, Metrics};
use store::Store;
use triggers::Schedule;

/// `dwflow serve` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address requires an API token.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Directory of pipeline files to serve (walked for *.yaml / *.yml).
    #[arg(long, default_value = "pipelines")]
    pub pipelines: PathBuf,
    /// The history database (SQLite).
    #[arg(long, env = "DWFLOW_DB", default_value = ".dwflow/service.sqlite")]
    pub db: PathBuf,
    /// Directory of run journals (what resuming a run reads).
    #[arg(long, env = "DWFLOW_STATE_DIR", default_value = ".dwflow/runs")]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub target: crate::target::TargetArgs,
    /// Longest interval between two status checks of a remote run, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = crate::runner::parse_duration_arg)]
    pub poll_cap: Duration,
    /// How often dataset triggers list the target's datasets.
    #[arg(long, default_value = "30s", value_parser = crate::runner::parse_duration_arg)]
    pub dataset_poll: Duration,
    /// Environment variable holding the API bearer token.
    #[arg(long, default_value = "DWFLOW_API_TOKEN")]
    pub api_token_env: String,
    /// Environment variable holding the shared secret of signed events.
    #[arg(long, default_value = "DWFLOW_WEBHOOK_SECRET")]
    pub webhook_secret_env: String,
    /// Do not watch the pipelines directory (reload with `POST /api/reload` only).
    #[arg(long)]
    pub no_watch: bool,
    /// On shutdown, cancel the runs in flight (and wait for their remote runs to stop)
    /// instead of leaving them to be resumed by the next start.
    #[arg(long)]
    pub cancel_on_shutdown: bool,
}

/// Everything the handlers and loops share.
pub struct Service {
    pub catalog: RwLock<Arc<Catalog>>,
    pub manager: Arc<Manager>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub auth: AuthConfig,
    pub backend: Arc<dyn Backend>,
    pub target: String,
    pipelines_dir: PathBuf,
    /// Wakes the schedule loop after a reload.
    reloaded: Notify,
    reloading: tokio::sync::Mutex<()>,
}

/// What an event delivery started.
#[derive(Debug, Default, serde::Serialize)]
pub struct EventOutcome {
    pub runs: Vec<Value>,
    pub rejected: Vec<Value>,
}

impl Service {
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads the pipelines again and swaps the new set in at once.
    pub async fn reload(&self) -> Arc<Catalog> {
        // One reload at a time, so that an older load is never installed last.
        let _one = self.reloading.lock().await;
        let dir = self.pipelines_dir.clone();
        let fresh = match tokio::task::spawn_blocking(move || Catalog::load(&dir)).await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reloading the pipelines failed ({e}); keeping the current set");
                return self.catalog();
            }
        };
        log_catalog(&fresh);
        let fresh = Arc::new(fresh);
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::clone(&fresh);
        self.reloaded.notify_one();
        fresh
    }

    /// Starts a run by hand (API, page): `params` are JSON values, converted to the
    /// declared types as on the command line.
    pub fn start_manual(
        &self,
        name: &str,
        params: &serde_json::Map<String, Value>,
    ) -> Result<Admitted, StartError> {
        let catalog = self.catalog();
        let Some(checked) = catalog.get(name) else {
            return Err(StartError::NotFound(name.to_string()));
        };
        let mut given = Vec::new();
        let mut problems = Vec::new();
        for (k, v) in params {
            match v {
                Value::String(s) => given.push((k.clone(), s.clone())),
                Value::Number(_) | Value::Bool(_) => given.push((k.clone(), v.to_string())),
                _ => problems.push(format!("parameter `{k}`: give a string, number or boolean")),
            }
        }
        if !problems.is_empty() {
            return Err(StartError::Invalid(problems));
        }
        let params = crate::plan::resolve_params(&checked.pipeline, &given)
            .map_err(|e| StartError::Invalid(e.problems))?;
        self.manager
            .submit(StartRequest {
                checked: Arc::clone(checked),
                params,
                trigger: "manual".into(),
                trigger_detail: None,
                trigger_key: None,
                event: Value::Null,
                commit: catalog.commit.clone(),
            })
            .map_err(|e| match e {
                manager::SubmitError::ShuttingDown => StartError::ShuttingDown,
                manager::SubmitError::Store(e) => StartError::Store(e.to_string()),
                e @ manager::SubmitError::AlreadyStarted(_) => StartError::Store(e.to_string()),
            })
    }

    /// Starts every pipeline whose event trigger matches. `delivery` identifies a signed
    /// delivery: one run per pipeline and trigger for it, even if it is handled twice.
    pub fn handle_event(&self, event: &Value, delivery: Option<&str>) -> EventOutcome {
        let catalog = self.catalog();
        let kind = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut out = EventOutcome::default();
        for checked in catalog.by_name.values() {
            let Some(on) = &checked.pipeline.on else {
                continue;
            };
            for (index, t) in on.event.iter().enumerate() {
                if !triggers::event_matches(&t.kind, &t.filter, event) {
                    continue;
                }
                let firing = Firing {
                    templates: &t.params,
                    trigger: "event",
                    detail: kind.to_string(),
                    key: delivery.map(|d| format!("event:{}:{index}:{d}", checked.pipeline.name)),
                    event: event.clone(),
                };
                self.fire(&catalog, checked, firing, &mut out);
            }
        }
        out
    }

    fn fire(
        &self,
        catalog: &Catalog,
        checked: &Arc<crate::pipeline::load::CheckedPipeline>,
        firing: Firing<'_>,
        out: &mut EventOutcome,
    ) {
        let name = &checked.pipeline.name;
        let trigger = firing.trigger;
        match triggers::trigger_params(checked, firing.templates, &firing.event) {
            Ok(params) => match self.manager.submit(StartRequest {
                checked: Arc::clone(checked),
                params,
                trigger: trigger.into(),
                trigger_detail: Some(firing.detail),
                trigger_key: firing.key,
                event: firing.event,
                commit: catalog.commit.clone(),
            }) {
                Ok(a) => {
                    tracing::info!(pipeline = name, run_id = a.run_id, trigger, state = ?a.state, "trigger fired");
                    out.runs
                        .push(json!({"pipeline": name, "run_id": a.run_id, "state": a.state}));
                }
                Err(manager::SubmitError::AlreadyStarted(run_id)) => {
                    tracing::info!(
                        pipeline = name,
                        run_id,
                        trigger,
                        "this firing already started its run"
                    );
                    out.runs.push(
                        json!({"pipeline": name, "run_id": run_id, "state": "already_started"}),
                    );
                }
                Err(e) => out
                    .rejected
                    .push(json!({"pipeline": name, "problems": [e.to_string()]})),
            },
            Err(problems) => {
                tracing::warn!(
                    pipeline = name,
                    trigger,
                    "trigger fired with invalid parameters: {}",
                    problems.join("; ")
                );
                self.metrics.trigger_fired(name, trigger, "rejected");
                out.rejected
                    .push(json!({"pipeline": name, "problems": problems}));
            }
        }
    }

    /// Handles the schedule triggers: fires the ticks due now, applies each trigger's
    /// policy to ticks missed while the service was down, never runs one tick twice
    /// (the history claims each tick once). Returns when the next tick is due.
    fn schedule_pass(&self, now: chrono::DateTime<Utc>) -> Option<chrono::DateTime<Utc>> {
        let catalog = self.catalog();
        let mut next: Option<chrono::DateTime<Utc>> = None;
        for (name, checked) in &catalog.by_name {
            let Some(on) = &checked.pipeline.on else {
                continue;
            };
            for (index, t) in on.schedule.iter().enumerate() {
                let schedule = match Schedule::parse(t, index) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(pipeline = name, "schedule not used: {e}");
                        continue;
                    }
                };
                if let Some(n) = schedule.next_after(now) {
                    next = Some(next.map_or(n, |x| x.min(n)));
                }
                let Some(latest) = schedule.latest_at_or_before(now) else {
                    continue;
                };
                let last = match self.store.last_tick(name, &schedule.key) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(pipeline = name, "schedule state: {e}");
                        continue;
                    }
                };
                let Some(last) = last else {
                    // A schedule seen for the first time starts from now: nothing
                    // before it was missed.
                    let _ =
                        self.store
                            .claim_tick(name, &schedule.key, &triggers::tick_text(latest));
                    continue;
                };
                let latest_text = triggers::tick_text(latest);
                if latest_text <= last {
                    continue;
                }
                // Ticks between the last one handled and now: one is on time; more
                // than one, or one long past, were missed.
                let first_due = chrono::DateTime::parse_from_rfc3339(&last)
                    .ok()
                    .and_then(|l| schedule.next_after(l.with_timezone(&Utc)));
                let missed = first_due.is_some_and(|f| f < latest)
                    || now - latest > chrono::Duration::seconds(60);
                let run = !missed || t.missed == Some(MissedTicks::RunOnce);
                if run {
                    // The run is recorded under the tick's key before the tick is
                    // claimed: a crash in between finds the run, never starts another.
                    let detail = if missed {
                        format!("{} (missed tick {latest_text}, run once)", schedule.key)
                    } else {
                        format!("{} at {latest_text}", schedule.key)
                    };
                    let firing = Firing {
                        templates: &t.params,
                        trigger: "schedule",
                        detail,
                        key: Some(format!("schedule:{name}:{}:{latest_text}", schedule.key)),
                        event: json!({"type": "schedule", "tick": latest_text, "cron": t.cron}),
                    };
                    self.fire(&catalog, checked, firing, &mut EventOutcome::default());
                } else {
                    tracing::info!(
                        pipeline = name,
                        "missed schedule ticks up to {latest_text} skipped (missed: skip)"
                    );
                    self.metrics.trigger_fired(name, "schedule", "missed");
                }
                if let Err(e) = self.store.claim_tick(name, &schedule.key, &latest_text) {
                    tracing::error!(pipeline = name, "schedule state: {e}");
                }
            }
        }
        next
    }

    async fn schedule_loop(self: Arc<Self>) {
        loop {
            let next = self.schedule_pass(Utc::now());
            // Wake a little after the tick so that it is at or before "now"; at least
            // once a minute, so that a clock change or a missed wake-up costs little.
            let wait = next
                .and_then(|n| (n - Utc::now()).to_std().ok())
                .unwrap_or(Duration::from_secs(60))
                .saturating_add(Duration::from_millis(5))
                .min(Duration::from_secs(60));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.reloaded.notified() => {}
            }
        }
    }

    /// One pass of the dataset triggers: lists the target's datasets and fires for
    /// each name not seen before that matches a pattern. The first pass only records
    /// what exists (nothing there before the service watched is "new").
    async fn dataset_pass(&self) {
        let catalog = self.catalog();
        let watched: Vec<_> = catalog
            .by_name
            .values()
            .filter(|c| {
                c.pipeline
                    .on
                    .as_ref()
                    .is_some_and(|o| !o.dataset.is_empty())
            })
            .cloned()
            .collect();
        if watched.is_empty() {
            return;
        }
        let poll_started = crate::engine::journal::now();
        let primed = match self.store.dataset_watermark(&self.target) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("dataset trigger state: {e}");
                return;
            }
        };
        // Ask only for what appeared since the last successful poll (the gateway's
        // `createdAfter`), with a margin for clock skew and slow indexing; names already
        // seen are skipped anyway.
        let after = primed.as_deref().and_then(|p| {
            chrono::DateTime::parse_from_rfc3339(p)
                .ok()
                .map(|t| (t - chrono::Duration::hours(1)).to_rfc3339())
        });
        let datasets = match self
            .backend
            .list_datasets_created_after(after.as_deref())
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("dataset trigger: cannot list datasets: {e}");
                return;
            }
        };
        if primed.is_none() {
            let names: Vec<String> = datasets.iter().map(|d| d.name.clone()).collect();
            if let Err(e) = self.store.prime_datasets(&self.target, &names) {
                tracing::error!("dataset trigger state: {e}");
            }
            return;
        }
        if let Err(e) = self
            .store
            .set_dataset_watermark(&self.target, &poll_started)
        {
            tracing::error!("dataset trigger state: {e}");
        }
        for d in datasets {
            let matching: Vec<_> = watched
                .iter()
                .flat_map(|c| {
                    c.pipeline
                        .on
                        .iter()
                        .flat_map(|o| o.dataset.iter().enumerate())
                        .filter(|(_, t)| triggers::glob_match(&t.pattern, &d.name))
                        .map(move |(i, t)| (c, i, t))
                })
                .collect();
            match self.store.dataset_seen(&self.target, &d.name) {
                Ok(false) => {}
                Ok(true) => continue,
                Err(e) => {
                    tracing::error!("dataset trigger state: {e}");
                    continue;
                }
            }
            // Runs first, under keys of their own, then the name is marked seen: a crash
            // in between finds the runs, never starts them twice.
            for (checked, index, t) in matching {
                let firing = Firing {
                    templates: &t.params,
                    trigger: "dataset",
                    detail: d.name.clone(),
                    key: Some(format!(
                        "dataset:{}:{index}:{}:{}",
                        checked.pipeline.name, self.target, d.name
                    )),
                    event: json!({
                        "type": "dataset",
                        "dataset": d.name,
                        "id": d.id,
                        "created": d.created,
                    }),
                };
                self.fire(&catalog, checked, firing, &mut EventOutcome::default());
            }
            // Every new name is remembered, matching or not, so that a pattern added
            // later does not fire for old datasets.
            if let Err(e) = self.store.see_dataset(&self.target, &d.name) {
                tracing::error!("dataset trigger state: {e}");
            }
        }
    }

    async fn dataset_loop(self: Arc<Self>, every: Duration) {
        loop {
            self.dataset_pass().await;
            tokio::time::sleep(every).await;
        }
    }
}

/// One firing of a trigger for one pipeline.
struct Firing<'a> {
    templates: &'a std::collections::BTreeMap<String, String>,
    trigger: &'static str,
    detail: String,
    /// One run per key in the history (`None`: no such guard, e.g. a bearer event).
    key: Option<String>,
    event: Value,
}

/// Why a manual start was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no valid pipeline named `{0}`")]
    NotFound(String),
    #[error("invalid parameters")]
    Invalid(Vec<String>),
    #[error("history: {0}")]
    Store(String),
    #[error("the service is shutting down")]
    ShuttingDown,
}

fn log_catalog(c: &Catalog) {
    tracing::info!(
        pipelines = c.by_name.len(),
        invalid = c.invalid().count(),
        commit = c.commit.as_deref().unwrap_or("-"),
        "pipelines loaded"
    );
    for e in c.invalid() {
        for d in &e.diagnostics {
            tracing::warn!(
                "{}:{}:{}: {}[{}]: {} (file skipped)",
                e.file,
                d.line,
                d.column,
                match d.severity {
                    crate::diagnostic::Severity::Error => "error",
                    crate::diagnostic::Severity::Warning => "warning",
                },
                d.code,
                d.message
            );
        }
    }
}

/// Whether `path` is a file the catalog of `root` would load: `*.yaml`/`*.yml`, with no
/// hidden directory on the way.
fn is_pipeline_file(roots: &[PathBuf], path: &std::path::Path) -> bool {
    // Below the root only (the root itself may well sit in a hidden directory); a path
    // from elsewhere is judged by its file name.
    let rel = roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok())
        .or_else(|| path.file_name().map(std::path::Path::new))
        .unwrap_or(path);
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    ) && !rel.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|s| s.starts_with('.') && s != "." && s != "..")
    })
}

/// Reloads when files under the pipelines directory change (debounced).
fn watch(service: &Arc<Service>, dir: PathBuf) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let roots: Vec<PathBuf> = [
        Some(dir.clone()),
        std::fs::canonicalize(&dir).ok(),
        std::path::absolute(&dir).ok(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only the files the catalog loads matter: not a journal's copy of a pipeline or
        // a database written under the same directory (hidden entries are not walked).
        if let Ok(ev) = res
            && !matches!(ev.kind, notify::EventKind::Access(_))
            && ev.paths.iter().any(|p| is_pipeline_file(&roots, p))
        {
            let _ = tx.send(());
        }
    })
    .map_err(|e| {
        tracing::warn!(
            "cannot watch {}: {e}; reload with POST /api/reload",
            dir.display()
        )
    })
    .ok()?;
    watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .map_err(|e| {
            tracing::warn!(
                "cannot watch {}: {e}; reload with POST /api/reload",
                dir.display()
            )
        })
        .ok()?;
    let service = Arc::clone(service);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Editors write in bursts: wait for quiet, then load once.
            loop {
                match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            tracing::info!("pipeline files changed: reloading");
            service.reload().await;
        }
    });
    Some(watcher)
}

fn env_secret(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `dwflow serve`.
pub fn run(args: &ServeArgs) -> Exit {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in log files and collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let auth = AuthConfig {
        api_token: env_secret(&args.api_token_env),
        webhook_secret: env_secret(&args.webhook_secret_env),
    };
    if !args.listen.ip().is_loopback() && auth.api_token.is_none() {
        eprintln!(
            "error: refusing to listen on {} without an API token: set {} (or listen on 127.0.0.1)",
            args.listen, args.api_token_env
        );
        return Exit::Invalid;
    }
    if !args.pipelines.is_dir() {
        eprintln!(
            "error: the pipelines directory {} does not exist (give --pipelines DIR)",
            args.pipelines.display()
        );
        return Exit::Invalid;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Environment;
        }
    };
    rt.block_on(serve(args, auth))
}

async fn serve(args: &ServeArgs, auth: AuthConfig) -> Exit {
    let target = match crate::target::open(&args.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return e.exit();
        }
    };
    // Two services on one history would both take back the same runs.
    let _db_lock = match store::lock_exclusive(&args.db) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    let store = match Store::open(&args.db) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Environment;
        }
    };
    if auth.webhook_secret.is_none() && auth.api_token.is_none() {
        tracing::warn!(
            "neither {} nor {} is set: POST /api/events refuses every event",
            args.webhook_secret_env,
            args.api_token_env
        );
    }
    let metrics = Arc::new(Metrics::default());
    let backend: Arc<dyn Backend> = Arc::new(MeteredBackend::new(
        Arc::clone(&target.backend),
        Arc::clone(&metrics),
    ));
    let local = target.backend.kind() == "local";
    let poll = if local {
        PollPolicy {
            first: Duration::from_millis(50),
            cap: args.poll_cap.min(Duration::from_millis(250)),
            far_cap: Duration::from_secs(2),
            ..PollPolicy::default()
        }
    } else {
        PollPolicy {
            cap: args.poll_cap,
            far_cap: PollPolicy::default().far_cap.max(args.poll_cap),
            ..PollPolicy::default()
        }
    };
    // Listen before taking back old runs: a service that cannot serve starts nothing.
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return Exit::Environment;
        }
    };
    let catalog = Catalog::load(&args.pipelines);
    log_catalog(&catalog);
    // Journals are found again after a restart from another directory.
    let state_dir = std::path::absolute(&args.state_dir).unwrap_or_else(|_| args.state_dir.clone());
    let manager = Manager::new(
        Arc::clone(&store),
        Arc::clone(&backend),
        target.name.clone(),
        state_dir,
        poll,
        Arc::clone(&metrics),
    );
    match manager.recover(catalog.commit.as_deref()) {
        Ok((0, 0)) => {}
        Ok((resumed, queued)) => {
            tracing::info!(
                resumed,
                queued,
                "took back the runs a previous process left"
            )
        }
        Err(e) => {
            eprintln!("error: cannot read the history: {e}");
            return Exit::Environment;
        }
    }
    let service = Arc::new(Service {
        catalog: RwLock::new(Arc::new(catalog)),
        manager: Arc::clone(&manager),
        store,
        metrics,
        auth,
        backend,
        target: target.name.clone(),
        pipelines_dir: args.pipelines.clone(),
        reloaded: Notify::new(),
        reloading: tokio::sync::Mutex::new(()),
    });
    let addr = listener.local_addr().unwrap_or(args.listen);
    eprintln!("dwflow serve listening on http://{addr}");
    tokio::spawn(Arc::clone(&service).schedule_loop());
    tokio::spawn(Arc::clone(&service).dataset_loop(args.dataset_poll));
    let _watcher = if args.no_watch {
        None
    } else {
        watch(&service, args.pipelines.clone())
    };
    let app = api::router(Arc::clone(&service));
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        eprintln!("error: the server stopped: {e}");
        return Exit::Environment;
    }
    // Nothing new starts from here on: triggers and queued runs wait for the next start.
    manager.shut_down();
    if args.cancel_on_shutdown {
        tracing::info!("shutting down: cancelling the runs in flight");
        manager.cancel_all();
        manager.drain(Duration::from_secs(120)).await;
    } else if manager.in_flight() > 0 {
        tracing::info!(
            in_flight = manager.in_flight(),
            "shutting down: runs in flight are resumed at the next start"
        );
    }
    Exit::Success
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_the_catalog_loads_trigger_a_reload() {
        let roots = vec![PathBuf::from("/tmp/.tmpX/pipelines")];
        let yes = |p: &str| is_pipeline_file(&roots, std::path::Path::new(p));
        assert!(yes("/tmp/.tmpX/pipelines/a.yaml"));
        assert!(yes("/tmp/.tmpX/pipelines/sub/b.yml"));
        assert!(!yes("/tmp/.tmpX/pipelines/.dwflow/runs/r1/pipeline.yaml"));
        assert!(!yes("/tmp/.tmpX/pipelines/service.sqlite-wal"));
        assert!(!yes("/tmp/.tmpX/pipelines/.a.yaml.swp"));
    }
}
