//! Remote figures, against the emulator (`dwflow emulator`, a separate process on
//! loopback) through the real gateway client. Printed, not asserted.
//!
//! 1. Status calls and detection latency (from a run's end to the poller noticing) for
//!    a 60 s and a 30 min job, polled four ways on the same emulator: dwflow on a job it
//!    has not seen before, dwflow with the durations of earlier runs, Airflow's
//!    `DatabricksRunNowOperator` default (a check every 30 s), and the Databricks SDK's
//!    waiter (sleeps of 1, 2, ... 10 s, then 10 s). Time is scaled: job lengths and every
//!    polling interval are divided by `SCALE`, so counts are exact and latencies carry an
//!    error of about one loopback round trip (~1 ms) times `SCALE`.
//! 2. 1,000 steps in flight at once from one dwflow process (one pipeline, no `needs`),
//!    with the process's resident memory per in-flight step.
//!
//! Run: `cargo bench --bench remote_polling` (about 2 minutes).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dwflow::backend::http::Secret;
use dwflow::backend::workbench::{WorkbenchAuth, WorkbenchBackend, WorkbenchSettings};
use dwflow::backend::{Backend, JobRef};
use dwflow::engine::events::RunState;
use dwflow::engine::{PollPolicy, RunOptions, run_pipeline};
use dwflow::pipeline::load::load_bytes;
use indexmap::IndexMap;
use reqwest::Url;
use tokio_util::sync::CancellationToken;

/// Simulated seconds per real second.
const SCALE: f64 = 120.0;
const WORKSPACE_ID: &str = "00000000-0000-4000-8000-000000000001";

struct Emulator {
    child: Child,
    base: String,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_emulator(ws: &Path) -> Emulator {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dwflow"))
        .args(["emulator", "--listen", "127.0.0.1:0", "--workspace"])
        .arg(ws)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the emulator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the emulator's address");
    let base = line
        .trim()
        .strip_prefix("emulator listening on ")
        .expect("the emulator prints its address")
        .to_string();
    Emulator { child, base }
}

fn backend(base: &str) -> Arc<WorkbenchBackend> {
    let settings = WorkbenchSettings::new(
        Url::parse(&format!("{base}/veracity/dw/gateway/api/v2")).unwrap(),
        WORKSPACE_ID,
        WorkbenchAuth::ClientCredentials {
            token_url: Url::parse(&format!("{base}/oauth2/token")).unwrap(),
            resource: dwflow::emulator::WORKBENCH_RESOURCE.into(),
            client_id: dwflow::emulator::DEFAULT_CLIENT_ID.into(),
            client_secret: Secret::new(dwflow::emulator::DEFAULT_CLIENT_SECRET),
        },
        Secret::new(dwflow::emulator::DEFAULT_SUBSCRIPTION_KEY),
    );
    Arc::new(WorkbenchBackend::new(settings).expect("backend"))
}

/// Requests the emulator has served, all endpoints together.
async fn requests(base: &str) -> u64 {
    let stats: serde_json::Value = reqwest::get(format!("{base}/_emulator/stats"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["requests"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(|v| v.as_u64()).sum())
}

fn scaled(simulated_secs: f64) -> Duration {
    Duration::from_secs_f64(simulated_secs / SCALE)
}

fn params(simulated_secs: f64) -> IndexMap<String, String> {
    let mut p = IndexMap::new();
    p.insert(
        "Seconds".to_string(),
        format!("{:.3}", simulated_secs / SCALE),
    );
    p
}

struct Polled {
    status_calls: u64,
    requests: u64,
    latency_secs: f64,
}

/// A poller outside dwflow's engine: invoke, then check after each of `intervals`.
async fn poll_like(
    base: &str,
    b: &WorkbenchBackend,
    job: u64,
    job_secs: f64,
    interval: impl Fn(u32) -> f64,
) -> Polled {
    let before = requests(base).await;
    let run = b.invoke(job, &params(job_secs), "").await.unwrap();
    let ends = Instant::now() + scaled(job_secs);
    let mut n = 0;
    loop {
        tokio::time::sleep(scaled(interval(n))).await;
        n += 1;
        let s = b.status(&run).await.unwrap();
        if s.is_terminal() {
            assert!(s.is_success(), "{s:?}");
            let latency = Instant::now().saturating_duration_since(ends);
            return Polled {
                status_calls: u64::from(n),
                requests: requests(base).await - before - 1,
                latency_secs: latency.as_secs_f64() * SCALE,
            };
        }
    }
}

/// dwflow's engine on a one-step pipeline, learning durations in `state_dir`.
async fn poll_dwflow(
    base: &str,
    b: Arc<WorkbenchBackend>,
    state_dir: &Path,
    job_secs: f64,
) -> Polled {
    let yaml = format!(
        "name: wait\nsteps:\n  - id: wait\n    job: Wait\n    params:\n      Seconds: \"{:.3}\"\n",
        job_secs / SCALE
    );
    let loaded = load_bytes("wait.yaml", yaml.as_bytes());
    let checked = loaded.checked.expect("valid pipeline");
    let d = PollPolicy::default();
    let options = RunOptions {
        state_dir: state_dir.to_path_buf(),
        poll: PollPolicy {
            first: d.first.div_f64(SCALE),
            factor: d.factor,
            cap: d.cap.div_f64(SCALE),
            far_cap: d.far_cap.div_f64(SCALE),
        },
        target: "emulator".into(),
        ..RunOptions::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = tokio::spawn(async move {
        let mut started = None;
        let mut state_changes = 0u64;
        while let Some(e) = rx.recv().await {
            match e {
                dwflow::engine::events::Event::Started { .. } => started = Some(Instant::now()),
                dwflow::engine::events::Event::StateChanged { .. } => state_changes += 1,
                dwflow::engine::events::Event::InstanceFinished { .. } => {
                    return (started, Some(Instant::now()), state_changes);
                }
                _ => {}
            }
        }
        (started, None, state_changes)
    });
    let before = requests(base).await;
    let report = run_pipeline(
        b,
        &checked,
        IndexMap::new(),
        options,
        tx,
        CancellationToken::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.state, RunState::Succeeded);
    let (started, finished, _) = events.await.unwrap();
    let (started, finished) = (started.unwrap(), finished.unwrap());
    let after = requests(base).await - 1;
    // The run was invoked just before `Started`; it ran `job_secs` (scaled).
    let latency = finished
        .saturating_duration_since(started + scaled(job_secs))
        .as_secs_f64()
        * SCALE;
    let all = after - before;
    Polled {
        // Everything but the job lookup, the invocation and token requests.
        status_calls: all.saturating_sub(3),
        requests: all,
        latency_secs: latency,
    }
}

fn write_workspace(root: &Path) {
    std::fs::create_dir_all(root.join("datasets")).unwrap();
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::write(
        root.join("jobs/Wait.yaml"),
        "name: Wait\nparameters:\n  Seconds: {description: How long the job runs.}\ncommand:\n  argv: [sleep, \"{{ Seconds }}\"]\n",
    )
    .unwrap();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

async fn polling_figures(emu: &Emulator) {
    let b = backend(&emu.base);
    let job = b.resolve_job(&JobRef::Name("Wait".into())).await.unwrap();
    println!("status checks and detection latency, simulated time (x{SCALE} faster)");
    println!(
        "{:<10} {:<34} {:>12} {:>10} {:>12}",
        "job", "poller", "status calls", "requests", "latency (s)"
    );
    for job_secs in [60.0, 1800.0] {
        let label = if job_secs < 100.0 { "60 s" } else { "30 min" };
        let state = tempfile::tempdir().unwrap();
        let rows = [
            (
                "dwflow, first run of the job",
                poll_dwflow(&emu.base, b.clone(), state.path(), job_secs).await,
            ),
            (
                "dwflow, with earlier durations",
                poll_dwflow(&emu.base, b.clone(), state.path(), job_secs).await,
            ),
            (
                "Airflow (fixed 30 s)",
                poll_like(&emu.base, &b, job, job_secs, |_| 30.0).await,
            ),
            (
                "Databricks SDK (1..10 s ramp)",
                poll_like(&emu.base, &b, job, job_secs, |n| f64::from((n + 1).min(10))).await,
            ),
        ];
        for (name, p) in rows {
            println!(
                "{label:<10} {name:<34} {:>12} {:>10} {:>12.1}",
                p.status_calls, p.requests, p.latency_secs
            );
        }
    }
}

async fn concurrency_figures(emu: &Emulator, steps: usize, job_secs: f64) {
    let b = backend(&emu.base);
    let mut yaml = String::from("name: many\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!(
            "  - id: s{i}\n    job: Wait\n    needs: []\n    params:\n      Seconds: \"{job_secs}\"\n"
        ));
    }
    let checked = load_bytes("many.yaml", yaml.as_bytes())
        .checked
        .expect("valid pipeline");
    let state = tempfile::tempdir().unwrap();
    let options = RunOptions {
        state_dir: state.path().to_path_buf(),
        target: "emulator".into(),
        ..RunOptions::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let in_flight = tokio::spawn(async move {
        let (mut now, mut most) = (0i64, 0i64);
        while let Some(e) = rx.recv().await {
            match e {
                dwflow::engine::events::Event::Started { .. } => now += 1,
                dwflow::engine::events::Event::InstanceFinished { .. } => now -= 1,
                _ => {}
            }
            most = most.max(now);
        }
        most
    });
    let base_rss = rss_kib();
    let sampling = Arc::new(std::sync::atomic::AtomicU64::new(base_rss));
    let sampler = {
        let peak = sampling.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let t = Instant::now();
    let report = run_pipeline(
        b,
        &checked,
        IndexMap::new(),
        options,
        tx,
        CancellationToken::new(),
        None,
    )
    .await
    .unwrap();
    let took = t.elapsed();
    sampler.abort();
    assert_eq!(
        report.state,
        RunState::Succeeded,
        "{:?}",
        report.steps.iter().find(|s| s.message.is_some())
    );
    let most = in_flight.await.unwrap();
    let peak = sampling.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "{steps} steps of {job_secs} s, no needs: {most} in flight at once, run took {:.1} s; RSS {} KiB before, peak {} KiB: {:.1} KiB per in-flight step",
        took.as_secs_f64(),
        base_rss,
        peak,
        (peak.saturating_sub(base_rss)) as f64 / most.max(1) as f64
    );
}

fn main() {
    let ws = tempfile::tempdir().unwrap();
    write_workspace(ws.path());
    let emu = start_emulator(ws.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        polling_figures(&emu).await;
        println!();
        concurrency_figures(&emu, 1000, 20.0).await;
    });
}
