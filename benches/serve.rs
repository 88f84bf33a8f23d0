//! Service figures, printed (not asserted), against the release `dwflow serve` on
//! loopback over a temporary local workspace whose `Noop` job is the `true` command
//! (an instant backend):
//!
//! 1. signed events accepted per second from 8 concurrent clients for 5 s, each starting
//!    a run, and how fast those runs complete;
//! 2. latency from sending an event to the first job invocation (the attempt's start in
//!    the history), p50/p99 over 200 events sent one at a time;
//! 3. resident memory of the service with at least 1,000 runs in its history and 100 in
//!    flight (each a `sleep` command).
//!
//! Run: `cargo bench --bench serve` (about a minute).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dwflow::service::auth::sign;
use serde_json::{Value, json};

const SECRET: &str = "bench-secret";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dwflow"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--pipelines",
        ])
        .arg(dir.join("pipelines"))
        .arg("--db")
        .arg(dir.join("service.sqlite"))
        .arg("--state-dir")
        .arg(dir.join("runs"))
        .env("DWFLOW_WORKSPACE", dir.join("ws"))
        .env("DWFLOW_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("dwflow serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("dwflow serve listening on ") {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).expect("listening");
    Server { child, base }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn send_event(client: &reqwest::Client, base: &str, n: u64) -> (u16, Value) {
    let body = json!({"type": "tick", "n": n}).to_string().into_bytes();
    let ts = chrono::Utc::now().timestamp();
    let resp = client
        .post(format!("{base}/api/events"))
        .header("x-dwflow-timestamp", ts.to_string())
        .header("x-dwflow-signature", sign(SECRET, ts, &body))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the service answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn get(client: &reqwest::Client, url: &str) -> Value {
    client
        .get(url)
        .send()
        .await
        .expect("answers")
        .json()
        .await
        .unwrap_or(Value::Null)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for sub in ["ws/datasets", "ws/jobs", "pipelines"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    std::fs::write(
        d.join("ws/jobs/Noop.yaml"),
        "name: Noop\nparameters:\n  N: {default: \"0\"}\ncommand:\n  argv: [\"true\"]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("ws/jobs/Hold.yaml"),
        "name: Hold\nparameters:\n  Seconds: {default: \"300\"}\ncommand:\n  argv: [\"sh\", \"-c\", \"exec sleep $Seconds\"]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("pipelines/on-tick.yaml"),
        "name: on-tick\nparams:\n  n: {type: integer}\non:\n  concurrency: allow\n  event:\n    - type: tick\n      params: {n: \"{{ event.n }}\"}\nsteps:\n  - id: noop\n    job: Noop\n    params: {N: \"{{ params.n }}\"}\n",
    )
    .unwrap();
    std::fs::write(
        d.join("pipelines/hold.yaml"),
        "name: hold\non:\n  concurrency: allow\nsteps:\n  - id: hold\n    job: Hold\n",
    )
    .unwrap();
    let server = start(d);
    let base = server.base.clone();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let pid = server.child.id();
    println!("dwflow serve (release), local target, `Noop` = the `true` command");
    println!("idle RSS: {} MiB", rss_kib(pid) / 1024);

    // 1. Throughput.
    let counter = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let window = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, base) = (client.clone(), base.clone());
        let (counter, accepted, started) = (counter.clone(), accepted.clone(), started.clone());
        tasks.push(tokio::spawn(async move {
            while t0.elapsed() < window {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (status, body) = send_event(&client, &base, n).await;
                if status == 202 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    started.fetch_add(
                        body["runs"].as_array().map_or(0, |r| r.len() as u64),
                        Ordering::Relaxed,
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let n_acc = accepted.load(Ordering::Relaxed);
    println!(
        "events: {n_acc} signed events accepted in {secs:.1} s = {:.0}/s (8 clients), {} runs started",
        n_acc as f64 / secs,
        started.load(Ordering::Relaxed)
    );
    // Wait for those runs to finish.
    let drain = Instant::now();
    loop {
        let h = get(&client, &format!("{base}/healthz")).await;
        if h["runs_in_flight"].as_u64() == Some(0) {
            break;
        }
        if drain.elapsed() > Duration::from_secs(300) {
            println!("runs still in flight after 300 s");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "runs: all {} finished {:.1} s after the last event ({:.0} runs/s end to end)",
        started.load(Ordering::Relaxed),
        drain.elapsed().as_secs_f64(),
        started.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()
    );

    // 2. Latency, one event at a time.
    let mut sent = Vec::new();
    for i in 0..200u64 {
        let at = chrono::Utc::now();
        let (status, body) = send_event(&client, &base, 1_000_000 + i).await;
        assert_eq!(status, 202, "{body}");
        let id = body["runs"][0]["run_id"].as_str().unwrap().to_string();
        sent.push((at, id));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut lat = Vec::new();
    for (at, id) in &sent {
        let run = get(&client, &format!("{base}/api/runs/{id}")).await;
        if let Some(t) = run["attempts"][0]["started_at"].as_str()
            && let Ok(t) = chrono::DateTime::parse_from_rfc3339(t)
        {
            lat.push(
                (t.with_timezone(&chrono::Utc) - *at)
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1000.0,
            );
        }
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    println!(
        "event -> first invocation: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0.0),
        lat.len()
    );

    // 3. Memory with a long history and 100 runs in flight.
    let history = get(&client, &format!("{base}/api/runs?limit=1000")).await["runs"]
        .as_array()
        .map_or(0, Vec::len);
    let mut n = 2_000_000u64;
    let mut total = history;
    while total < 1000 {
        send_event(&client, &base, n).await;
        n += 1;
        total += 1;
    }
    let mut held = Vec::new();
    for _ in 0..100 {
        let r: Value = client
            .post(format!("{base}/api/pipelines/hold/runs"))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        held.push(r["run_id"].as_str().unwrap().to_string());
    }
    let t = Instant::now();
    loop {
        let h = get(&client, &format!("{base}/healthz")).await;
        let m = get(
            &client,
            &format!("{base}/api/runs?state=running&limit=1000"),
        )
        .await;
        let invoked = m["runs"].as_array().map_or(0, Vec::len);
        if h["runs_in_flight"].as_u64() == Some(100) && invoked == 100 {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(pid);
    let all = get(&client, &format!("{base}/api/runs?limit=1000")).await["runs"]
        .as_array()
        .map_or(0, Vec::len);
    println!(
        "memory: RSS {} MiB with {}+ runs in history and 100 in flight",
        rss / 1024,
        all
    );
    for id in held {
        let _ = client
            .post(format!("{base}/api/runs/{id}/cancel"))
            .json(&json!({}))
            .send()
            .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(server);
}
