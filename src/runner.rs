//! The commands that run pipelines: `run`, `resume` and `runs`. They wire a target, the
//! engine, the reporters and the signal handling together; the logic lives elsewhere.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::engine::events::RunState;
use crate::engine::{self, PollPolicy, ResumeState, RunOptions, RunReport};
use crate::exit::Exit;
use crate::pipeline::load::{CheckedPipeline, load_bytes};
use crate::report::progress::{self, ProgressMode};
use crate::report::summary;
use crate::target::{self, TargetArgs};

/// Options shared by `run` and `resume`.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// Directory of run journals.
    #[arg(long, env = "DWFLOW_STATE_DIR", default_value = ".dwflow/runs")]
    pub state_dir: PathBuf,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Longest interval between two status checks of a run, e.g. `10s`.
    #[arg(long, default_value = "10s", value_parser = parse_duration_arg)]
    pub poll_cap: std::time::Duration,
    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Human)]
    pub format: SummaryFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SummaryFormat {
    Human,
    Json,
}

/// Parses a duration given on the command line (`10s`, `2m`).
pub(crate) fn parse_duration_arg(s: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse_duration(s)
        .ok_or_else(|| format!("`{s}` is not a duration (e.g. 10s, 2m)"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            Exit::Environment
        })
}

/// `dwflow run PIPELINE...`: runs each pipeline in turn; stops at the first that fails.
pub fn run(
    paths: &[PathBuf],
    raw_params: &[String],
    target: &TargetArgs,
    engine: &EngineArgs,
) -> Exit {
    let mut checked = Vec::new();
    for p in paths {
        match crate::cli::load_checked(p) {
            Ok(c) => checked.push(c),
            Err(e) => return e,
        }
    }
    let given = match crate::plan::parse_assignments(raw_params) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    // With several pipelines each takes the parameters it declares; a name that none
    // declares is a typo, not something to drop silently.
    if checked.len() > 1 {
        let unknown: Vec<String> = given
            .iter()
            .filter(|(k, _)| !checked.iter().any(|c| c.pipeline.params.contains_key(k)))
            .map(|(k, _)| format!("`{k}`"))
            .collect();
        if !unknown.is_empty() {
            eprintln!(
                "error: no pipeline given declares parameter {}",
                unknown.join(", ")
            );
            return Exit::Invalid;
        }
    }
    // Resolve every pipeline's parameters before running any of them.
    let mut resolved = Vec::new();
    for c in &checked {
        let mine: Vec<(String, String)> = if checked.len() == 1 {
            given.clone()
        } else {
            given
                .iter()
                .filter(|(k, _)| c.pipeline.params.contains_key(k))
                .cloned()
                .collect()
        };
        match crate::plan::resolve_params(&c.pipeline, &mine) {
            Ok(p) => resolved.push(p),
            Err(e) => {
                eprintln!("error: {}: {e}", c.path);
                return Exit::Invalid;
            }
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        let target = match target::open(target) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return e.exit();
            }
        };
        let mut exit = Exit::Success;
        for (c, params) in checked.iter().zip(resolved) {
            exit = execute(&target, c, params, engine, None).await;
            if exit != Exit::Success {
                break;
            }
        }
        exit
    })
}

/// `dwflow resume RUN_ID`.
pub fn resume(
    run_id: &str,
    raw_params: &[String],
    target: &TargetArgs,
    engine: &EngineArgs,
) -> Exit {
    let state = match ResumeState::load(&engine.state_dir, run_id) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    if let Some(ended) = state.ended
        && ended == RunState::Succeeded
    {
        eprintln!("run {run_id} already succeeded; nothing to resume");
        return Exit::Success;
    }
    if let Some(pid) = owner_alive(&engine.state_dir, run_id) {
        eprintln!("error: run {run_id} is still being run by process {pid}");
        return Exit::Invalid;
    }
    let loaded = load_bytes(&state.path, state.source.as_bytes());
    let Some(checked) = loaded.checked else {
        eprintln!("error: the pipeline recorded for run {run_id} no longer validates");
        return Exit::Invalid;
    };
    // Secret values were never journaled: they must be given again.
    let given = match crate::plan::parse_assignments(raw_params) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    let mut params: IndexMap<String, Value> = state.params.clone();
    let mut missing = Vec::new();
    for name in &state.secret_params {
        match given.iter().find(|(k, _)| k == name) {
            Some((_, v)) => match checked
                .pipeline
                .params
                .get(name)
                .map(|s| crate::plan::convert(s.kind, v))
            {
                Some(Ok(v)) => {
                    params.insert(name.clone(), v);
                }
                _ => missing.push(name.clone()),
            },
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        eprintln!(
            "error: secret parameters are not journaled; give them again: {}",
            missing
                .iter()
                .map(|m| format!("-p {m}=..."))
                .collect::<Vec<_>>()
                .join(" ")
        );
        return Exit::Invalid;
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    // Resume where the run started: its remote run ids mean nothing elsewhere.
    rt.block_on(async {
        let target = match target::open_for_resume(target, &state.target) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return e.exit();
            }
        };
        if target.name != state.target {
            eprintln!(
                "error: run {run_id} was started on target `{}`; resuming it on `{}` would start its jobs again in another environment (give --target {} or leave --target out)",
                state.target,
                target.name,
                state.target.strip_prefix("local:").map_or(state.target.as_str(), |_| "local")
            );
            return Exit::Invalid;
        }
        execute(&target, &checked, params, engine, Some(state)).await
    })
}

fn owner_alive(state_dir: &Path, run_id: &str) -> Option<u32> {
    let runs = crate::engine::journal::list(state_dir).ok()?;
    let run = runs.into_iter().find(|r| r.run_id == run_id)?;
    if run.state != RunState::Running {
        return None;
    }
    let records = crate::engine::journal::read(state_dir, run_id).ok()?;
    records.iter().rev().find_map(|r| match r {
        crate::engine::journal::Record::Resumed { pid, .. }
        | crate::engine::journal::Record::RunStarted { pid, .. } => Some(*pid),
        _ => None,
    })
}

async fn execute(
    target: &target::Target,
    checked: &CheckedPipeline,
    params: IndexMap<String, Value>,
    args: &EngineArgs,
    resume: Option<ResumeState>,
) -> Exit {
    // Local runs finish in milliseconds to seconds: check them sooner; remote runs
    // take minutes and each check is an API call.
    let (first, cap, far_cap) = if target.backend.kind() == "local" {
        // A local status check is a memory read: check often, so that the durations
        // shown are the runs' own, not the polling interval's.
        let cap = args.poll_cap.min(std::time::Duration::from_millis(250));
        (
            std::time::Duration::from_millis(50),
            cap,
            std::time::Duration::from_secs(2),
        )
    } else {
        let default = PollPolicy::default();
        (default.first, args.poll_cap, default.far_cap)
    };
    let options = RunOptions {
        state_dir: args.state_dir.clone(),
        poll: PollPolicy {
            first: first.min(cap),
            cap,
            far_cap: far_cap.max(cap),
            ..PollPolicy::default()
        },
        target: target.name.clone(),
        ..RunOptions::default()
    };
    let cancel = CancellationToken::new();
    let signals = tokio::spawn(watch_signals(cancel.clone()));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reporter = tokio::spawn(progress::report(rx, args.progress));
    let result = engine::run_pipeline(
        Arc::clone(&target.backend),
        checked,
        params,
        options,
        tx,
        cancel,
        resume,
    )
    .await;
    signals.abort();
    let _ = reporter.await;
    match result {
        Ok(report) => {
            match args.format {
                SummaryFormat::Human => {
                    print!("{}", summary::table(&report));
                    if report.state != RunState::Succeeded {
                        eprintln!(
                            "to continue this run (succeeded steps are kept): dwflow resume {}",
                            report.run_id
                        );
                    }
                }
                SummaryFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ),
            }
            exit_for(&report)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Environment
        }
    }
}

/// The exit status a finished run maps to.
pub fn exit_for(report: &RunReport) -> Exit {
    match report.state {
        RunState::Succeeded => Exit::Success,
        RunState::Canceled | RunState::Interrupted => Exit::Interrupted,
        RunState::Failed | RunState::TimedOut if report.environment_error.is_some() => {
            Exit::Environment
        }
        RunState::Failed | RunState::TimedOut | RunState::Running => Exit::StepFailed,
    }
}

/// First Ctrl-C / SIGTERM: cancel everything and let the engine wait for the remote
/// runs to stop. Second: exit at once (the journal is consistent after every record).
async fn watch_signals(cancel: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return,
    };
    let mut int = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return,
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("\ninterrupted: cancelling running jobs (Ctrl-C again: exit now)");
    cancel.cancel();
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    eprintln!("interrupted again: exiting now; `dwflow resume` can continue the run");
    std::process::exit(Exit::Interrupted.code());
}

/// `dwflow runs list`.
pub fn runs_list(state_dir: &Path, json: bool) -> Exit {
    match crate::engine::journal::list(state_dir) {
        Ok(runs) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&runs).unwrap_or_default()
                );
            } else if runs.is_empty() {
                println!("no pipeline runs in {}", state_dir.display());
            } else {
                println!(
                    "{:<26}  {:<28}  {:<11}  {:<24}  TARGET",
                    "RUN ID", "PIPELINE", "STATE", "STARTED"
                );
                for r in runs {
                    println!(
                        "{:<26}  {:<28}  {:<11}  {:<24}  {}",
                        r.run_id,
                        r.pipeline,
                        r.state.as_str(),
                        r.started_at,
                        r.target
                    );
                }
            }
            Exit::Success
        }
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", state_dir.display());
            Exit::Environment
        }
    }
}

/// `dwflow runs show RUN_ID`: the journal of one pipeline run.
pub fn runs_show(state_dir: &Path, run_id: &str) -> Exit {
    match crate::engine::journal::read(state_dir, run_id) {
        Ok(records) => {
            for r in records {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            }
            Exit::Success
        }
        Err(e) => {
            eprintln!("error: {e}");
            Exit::Invalid
        }
    }
}
