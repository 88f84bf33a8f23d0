//! Scheduler figures (printed, not asserted):
//! - overhead: a generated 10,000-step DAG of zero-length jobs on the scripted backend,
//!   wall-clock time;
//! - makespan: the same kind of DAG with known job durations, in tokio's virtual time,
//!   against the DAG's critical path;
//! - status calls per run for runs of increasing length.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dwflow::backend::scripted::{AttemptScript, JobScript, ScriptedBackend};
use dwflow::engine::events::RunState;
use dwflow::engine::{PollPolicy, RunOptions, run_pipeline};
use dwflow::pipeline::load::load_bytes;
use tokio_util::sync::CancellationToken;

/// A deterministic pseudo-random sequence (no rand crate needed for a benchmark).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// A DAG of `n` steps: each needs up to 3 of the 50 steps before it; step `i` runs job
/// `J{i % jobs}`.
fn dag(n: usize, jobs: usize, seed: u64) -> (String, Vec<Vec<usize>>) {
    let mut rng = Lcg(seed);
    let mut y = String::from("name: bench\nsteps:\n");
    let mut deps = Vec::with_capacity(n);
    for i in 0..n {
        let mut d: Vec<usize> = Vec::new();
        if i > 0 {
            for _ in 0..(1 + rng.next() % 3) {
                let back = 1 + (rng.next() as usize % 50.min(i));
                d.push(i - back);
            }
        }
        d.sort();
        d.dedup();
        let needs: Vec<String> = d.iter().map(|x| format!("s{x}")).collect();
        y.push_str(&format!(
            "  - id: s{i}\n    job: J{}\n    needs: [{}]\n",
            i % jobs,
            needs.join(", ")
        ));
        deps.push(d);
    }
    (y, deps)
}

fn options(dir: &std::path::Path, inline: bool) -> RunOptions {
    RunOptions {
        state_dir: dir.to_path_buf(),
        inline_journal: inline,
        poll: PollPolicy::default(),
        ..RunOptions::default()
    }
}

async fn run(
    yaml: &str,
    backend: ScriptedBackend,
    inline: bool,
) -> (RunState, Arc<ScriptedBackend>) {
    let loaded = load_bytes("bench.yaml", yaml.as_bytes());
    let checked = loaded.checked.expect("valid generated pipeline");
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(backend);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let report = run_pipeline(
        backend.clone(),
        &checked,
        Default::default(),
        options(dir.path(), inline),
        tx,
        CancellationToken::new(),
        None,
    )
    .await
    .expect("run");
    let _ = drain.await;
    (report.state, backend)
}

fn main() {
    println!("scheduler benchmark (release build)\n");

    // 1. Overhead: zero-length jobs, real time, real journal (fsync, group commit).
    let (yaml, _) = dag(10_000, 100, 7);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    let (state, backend) = rt.block_on(run(
        &yaml,
        ScriptedBackend::new(AttemptScript::success(Duration::ZERO)),
        false,
    ));
    let took = start.elapsed();
    assert_eq!(state, RunState::Succeeded);
    println!(
        "10,000-step DAG, zero-length jobs: {:.2} s wall ({} invocations, {} status calls, journal fsynced)",
        took.as_secs_f64(),
        backend.invocations().len(),
        backend.status_calls()
    );

    // 2. Makespan vs critical path, known durations, virtual time.
    for (n, label) in [(200usize, "200-step"), (2_000, "2,000-step")] {
        let (yaml, deps) = dag(n, n, 11);
        let mut rng = Lcg(99);
        let durations: Vec<u64> = (0..n).map(|_| 30 + rng.next() % 600).collect();
        let mut backend = ScriptedBackend::new(AttemptScript::success(Duration::ZERO));
        for (i, d) in durations.iter().enumerate() {
            backend = backend.job(
                &format!("J{i}"),
                JobScript {
                    attempts: vec![AttemptScript::success(Duration::from_secs(*d))],
                },
            );
        }
        let mut finish = vec![0u64; n];
        for i in 0..n {
            let start = deps[i].iter().map(|&d| finish[d]).max().unwrap_or(0);
            finish[i] = start + durations[i];
        }
        let critical = *finish.iter().max().unwrap_or(&0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let (state, makespan) = rt.block_on(async {
            let t0 = tokio::time::Instant::now();
            let (state, _) = run(&yaml, backend, true).await;
            (state, t0.elapsed())
        });
        assert_eq!(state, RunState::Succeeded);
        let over = makespan.as_secs_f64() / critical as f64 - 1.0;
        println!(
            "{label} DAG, jobs of 30-630 s: makespan {:.0} s vs critical path {} s: +{:.2}% (poll cap {} s)",
            makespan.as_secs_f64(),
            critical,
            over * 100.0,
            PollPolicy::default().cap.as_secs()
        );
    }

    // 3. Status calls per run, by run length.
    println!("\nstatus calls per run (poll: at once, 0.5 s, doubling to the 10 s cap):");
    println!(
        "{:>12}  {:>12}  {:>22}",
        "run length", "status calls", "detection latency"
    );
    for secs in [1u64, 10, 60, 300, 1_800, 7_200] {
        let b = ScriptedBackend::new(AttemptScript::success(Duration::from_secs(secs)));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let (calls, latency) = rt.block_on(async {
            let t0 = tokio::time::Instant::now();
            let (_, backend) = run("name: p\nsteps:\n  - id: a\n    job: J\n", b, true).await;
            (
                backend.status_calls(),
                t0.elapsed().saturating_sub(Duration::from_secs(secs)),
            )
        });
        println!(
            "{:>11}s  {:>12}  {:>21.1}s",
            secs,
            calls,
            latency.as_secs_f64()
        );
    }
}
