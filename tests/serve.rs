//! Integration tests of `dwflow serve` through the real binary on loopback: the service
//! over a small local workspace (its jobs really run), or over `dwflow emulator` (the
//! Data Workbench gateway API, so that cancels and reattachment cross real HTTP).
//!
//! Covered: signed events start the matching pipeline with the event's values, while
//! unsigned, badly signed, stale and replayed deliveries get 401 and start nothing; a
//! manual run through the API and its history; the API token; concurrency policies;
//! cancel through the API reaching the emulator's run; a seconds-level schedule firing
//! once per tick, also across a restart, with the missed-tick policies; a new dataset
//! starting its pipeline once; an invalid pipeline reported while the others serve, and
//! reloads; kill -9 of the service mid-run, restart, and each job invoked once.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dwflow::emulator::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_DATABRICKS_TOKEN, DEFAULT_SUBSCRIPTION_KEY,
    DEFAULT_WORKSPACE_ID, GATEWAY_PREFIX,
};
use dwflow::service::auth::sign;
use serde_json::{Value, json};

const SECRET: &str = "webhook-secret-for-tests";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dwflow")
}

// ---- HTTP ----

struct Resp {
    status: u16,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn request(method: &str, url: &str, headers: &[(&str, String)], body: Option<Vec<u8>>) -> Resp {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut req = client.request(method.parse().unwrap(), url);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.expect("the server answers");
        Resp {
            status: resp.status().as_u16(),
            body: resp.text().await.unwrap(),
        }
    })
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- the workspace and the service ----

const SUM_JOB: &str = r#"
name: Sum
parameters:
  InputDataset: {description: Readings to sum.}
  ResultDatasetName: {description: Where to write.}
sql:
  inputs: ["{{ InputDataset }}"]
  output: "{{ ResultDatasetName }}"
  query: SELECT turbine, sum(value) AS total FROM "{{ InputDataset }}" GROUP BY turbine ORDER BY turbine
"#;

const SLEEP_JOB: &str = r#"
name: Sleep
parameters:
  Seconds: {default: "300"}
command:
  argv: ["sh", "-c", "sleep $Seconds"]
"#;

/// A temporary directory with `ws/` (a workspace), `pipelines/`, the history and the
/// journals.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        let dir = tempfile::tempdir().unwrap();
        for d in ["ws/datasets", "ws/jobs", "pipelines"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(
            dir.path().join("ws/datasets/readings.csv"),
            "turbine,value\nT1,10\nT1,20\nT2,5\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("ws/jobs/Sum.yaml"), SUM_JOB).unwrap();
        std::fs::write(dir.path().join("ws/jobs/Sleep.yaml"), SLEEP_JOB).unwrap();
        Dir { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn pipeline(&self, file: &str, text: &str) {
        std::fs::write(self.path().join("pipelines").join(file), text).unwrap();
    }
}

struct Service {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Service {
    /// `dwflow serve` on 127.0.0.1:0 over `dir`, local target on `dir/ws` unless
    /// `args` say otherwise.
    fn start(dir: &Dir, env: &[(&str, &str)], args: &[&str]) -> Service {
        let log = dir.path().join(format!(
            "serve-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--pipelines"])
            .arg(dir.path().join("pipelines"))
            .arg("--db")
            .arg(dir.path().join("service.sqlite"))
            .args(["--dataset-poll", "200ms"])
            .args(args)
            .current_dir(dir.path())
            .env("DWFLOW_WORKSPACE", dir.path().join("ws"))
            .env("DWFLOW_WEBHOOK_SECRET", SECRET)
            .env_remove("DWFLOW_API_TOKEN")
            .env_remove("DWFLOW_CONFIG")
            .env_remove("DWFLOW_TARGET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(dir.path().join("runs"));
        }
        let mut child = cmd.spawn().expect("dwflow serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        // Its stderr goes on to a file, read to the end so that it never blocks.
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log_path).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                use std::io::Write as _;
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.strip_prefix("dwflow serve listening on ") {
                    let _ = tx.send(rest.trim().to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "dwflow serve did not start; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Service { child, base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    fn get(&self, path: &str) -> Resp {
        request("GET", &self.url(path), &[], None)
    }
    fn post(&self, path: &str, body: Value) -> Resp {
        request(
            "POST",
            &self.url(path),
            &[],
            Some(body.to_string().into_bytes()),
        )
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn runs(&self) -> Vec<Value> {
        let r = self.get("/api/runs?limit=1000");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["runs"].as_array().unwrap().clone()
    }
    fn runs_of(&self, pipeline: &str) -> Vec<Value> {
        self.runs()
            .into_iter()
            .filter(|r| r["pipeline"] == pipeline)
            .collect()
    }
    fn run(&self, id: &str) -> Value {
        let r = self.get(&format!("/api/runs/{id}"));
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
    /// Waits for a run to end; returns it.
    fn wait_run(&self, id: &str, limit: Duration) -> Value {
        wait_until(&format!("run {id} to end"), limit, || {
            let r = self.run(id);
            let s = r["state"].as_str().unwrap_or_default().to_string();
            (!["running", "queued"].contains(&s.as_str())).then_some(r)
        })
    }
    /// Posts a signed event.
    fn event(&self, body: &Value, timestamp: i64, secret: &str) -> Resp {
        let bytes = body.to_string().into_bytes();
        let sig = sign(secret, timestamp, &bytes);
        request(
            "POST",
            &self.url("/api/events"),
            &[
                ("x-dwflow-timestamp", timestamp.to_string()),
                ("x-dwflow-signature", sig),
            ],
            Some(bytes),
        )
    }
}

fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

// ---- events ----

const INGEST: &str = r#"
name: ingest
params:
  source: {type: string}
  site: {type: string, default: none}
  key: {type: string, secret: true, default: none}
on:
  event:
    - type: upload
      filter: {site: lhb}
      params:
        source: "{{ event.dataset }}"
        site: "{{ event.site }}"
        key: "{{ event.key }}"
steps:
  - id: total
    job: Sum
    params:
      InputDataset: "{{ params.source }}"
      ResultDatasetName: "total-{{ params.source }}"
"#;

const OTHER: &str = r#"
name: other
on:
  event:
    - type: something-else
steps:
  - id: nap
    job: Sleep
    params: {Seconds: "0"}
"#;

#[test]
fn signed_events_start_the_matching_pipeline_and_bad_ones_start_nothing() {
    let dir = Dir::new();
    dir.pipeline("ingest.yaml", INGEST);
    dir.pipeline("other.yaml", OTHER);
    let svc = Service::start(&dir, &[], &[]);
    let event =
        json!({"type": "upload", "site": "lhb", "dataset": "readings", "key": "k3y-in-the-event"});

    // Refused: unsigned, wrong secret, tampered body, stale timestamp.
    let unsigned = request(
        "POST",
        &svc.url("/api/events"),
        &[],
        Some(event.to_string().into_bytes()),
    );
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    assert_eq!(svc.event(&event, now_secs(), "wrong").status, 401);
    let ts = now_secs();
    let tampered = request(
        "POST",
        &svc.url("/api/events"),
        &[
            ("x-dwflow-timestamp", ts.to_string()),
            (
                "x-dwflow-signature",
                sign(SECRET, ts, event.to_string().as_bytes()),
            ),
        ],
        Some(
            json!({"type": "upload", "site": "lhb", "dataset": "other"})
                .to_string()
                .into_bytes(),
        ),
    );
    assert_eq!(tampered.status, 401, "{}", tampered.body);
    let stale = svc.event(&event, now_secs() - 3600, SECRET);
    assert_eq!(stale.status, 401);
    assert!(stale.body.contains("timestamp"), "{}", stale.body);
    assert!(svc.runs().is_empty(), "a refused event started a run");

    // Accepted: the matching pipeline starts with the event's values.
    let ts = now_secs();
    let ok = svc.event(&event, ts, SECRET);
    assert_eq!(ok.status, 202, "{}", ok.body);
    let started = ok.json()["runs"].as_array().unwrap().clone();
    assert_eq!(started.len(), 1, "{}", ok.body);
    assert_eq!(started[0]["pipeline"], "ingest");
    let id = started[0]["run_id"].as_str().unwrap().to_string();
    let run = svc.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["trigger"], "event");
    assert_eq!(run["params"]["source"], "readings");
    assert_eq!(run["params"]["site"], "lhb");
    assert_eq!(run["event"]["dataset"], "readings");
    // A secret parameter's value is masked in the history, the event included.
    assert_eq!(run["params"]["key"], "***");
    assert_eq!(run["event"]["key"], "***");
    assert!(
        !svc.get(&format!("/api/runs/{id}"))
            .body
            .contains("k3y-in-the-event")
    );
    let step = &run["steps"][0];
    assert_eq!(step["params"]["InputDataset"], "readings");
    assert_eq!(step["outputs"]["ResultDatasetName"], "total-readings");
    assert_eq!(step["remote_run_ids"].as_array().unwrap().len(), 1);

    // The same delivery again is a replay.
    let bytes = event.to_string().into_bytes();
    let replay = request(
        "POST",
        &svc.url("/api/events"),
        &[
            ("x-dwflow-timestamp", ts.to_string()),
            ("x-dwflow-signature", sign(SECRET, ts, &bytes)),
        ],
        Some(bytes),
    );
    assert_eq!(replay.status, 401, "{}", replay.body);
    assert!(replay.body.contains("replay"), "{}", replay.body);

    // A filter that does not match, and an event without a type.
    let miss = svc.event(
        &json!({"type": "upload", "site": "elsewhere", "dataset": "readings"}),
        now_secs(),
        SECRET,
    );
    assert_eq!(miss.status, 202);
    assert!(miss.json()["runs"].as_array().unwrap().is_empty());
    assert_eq!(
        svc.event(&json!({"dataset": "x"}), now_secs(), SECRET)
            .status,
        400
    );
    // Parameters an event renders are type-checked like any others.
    let runs = svc.runs();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    let m = svc.get("/metrics").body;
    assert!(
        m.contains("dwflow_events_total{result=\"unauthorized\"} 4"),
        "{m}"
    );
    assert!(
        m.contains("dwflow_events_total{result=\"replay\"} 1"),
        "{m}"
    );
    assert!(m.contains("dwflow_trigger_firings_total{pipeline=\"ingest\",trigger=\"event\",result=\"started\"} 1"), "{m}");
}

// ---- manual runs, the API token ----

const TWO_STEPS: &str = r#"
name: totals
params:
  input: {type: string, default: readings}
  copies: {type: integer, default: 1}
steps:
  - id: first
    job: Sum
    params:
      InputDataset: "{{ params.input }}"
      ResultDatasetName: "first-{{ params.copies }}"
  - id: second
    job: Sum
    params:
      InputDataset: "{{ params.input }}"
      ResultDatasetName: "second-{{ steps.first.outputs.ResultDatasetName }}"
"#;

#[test]
fn a_manual_run_through_the_api_and_its_history() {
    let dir = Dir::new();
    dir.pipeline("totals.yaml", TWO_STEPS);
    let svc = Service::start(&dir, &[], &[]);
    assert_eq!(svc.get("/healthz").json()["status"], "ok");

    let bad = svc.post(
        "/api/pipelines/totals/runs",
        json!({"params": {"copies": "many", "nope": "1"}}),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let problems = bad.json()["problems"].to_string();
    assert!(
        problems.contains("copies") && problems.contains("nope"),
        "{problems}"
    );
    assert_eq!(
        svc.post("/api/pipelines/missing/runs", json!({})).status,
        404
    );
    assert!(svc.runs().is_empty());

    let ok = svc.post(
        "/api/pipelines/totals/runs",
        json!({"params": {"copies": 2}}),
    );
    assert_eq!(ok.status, 201, "{}", ok.body);
    let id = ok.json()["run_id"].as_str().unwrap().to_string();
    let run = svc.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["trigger"], "manual");
    assert_eq!(run["params"]["copies"], 2);
    let ids: Vec<&str> = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["first", "second"]);
    assert_eq!(run["steps"][1]["needs"], json!(["first"]));
    assert_eq!(
        run["steps"][1]["outputs"]["ResultDatasetName"],
        "second-first-2"
    );
    for s in run["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "succeeded");
        assert_eq!(s["attempts"], 1);
        assert!(s["duration_ms"].as_u64().is_some());
    }
    assert_eq!(run["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(run["source_sha256"].as_str().unwrap().len(), 64);
    // The history and the metrics agree.
    assert_eq!(svc.runs().len(), 1);
    let m = svc.get("/metrics").body;
    assert!(m.contains("dwflow_runs{state=\"succeeded\"} 1"), "{m}");
    assert!(
        m.contains("dwflow_remote_calls_total{op=\"invoke\",result=\"ok\"} 2"),
        "{m}"
    );
    assert!(
        m.contains(
            "dwflow_step_duration_seconds_count{pipeline=\"totals\",outcome=\"succeeded\"} 2"
        ),
        "{m}"
    );
    // The page is served.
    let page = svc.get(&format!("/runs/{id}"));
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<script"), "{}", page.body);
}

#[test]
fn the_api_token_guards_the_api_and_a_public_address_needs_one() {
    let dir = Dir::new();
    dir.pipeline("totals.yaml", TWO_STEPS);
    let out = Command::new(bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--pipelines"])
        .arg(dir.path().join("pipelines"))
        .env_remove("DWFLOW_API_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DWFLOW_API_TOKEN"));

    let svc = Service::start(&dir, &[("DWFLOW_API_TOKEN", "t0ken-for-tests")], &[]);
    for path in ["/api/pipelines", "/api/runs", "/metrics"] {
        assert_eq!(svc.get(path).status, 401, "{path}");
        let wrong = request(
            "GET",
            &svc.url(path),
            &[("authorization", "Bearer nope".into())],
            None,
        );
        assert_eq!(wrong.status, 401, "{path}");
        let right = request(
            "GET",
            &svc.url(path),
            &[("authorization", "Bearer t0ken-for-tests".into())],
            None,
        );
        assert_eq!(right.status, 200, "{path}: {}", right.body);
    }
    assert_eq!(
        svc.post("/api/pipelines/totals/runs", json!({})).status,
        401
    );
    assert_eq!(svc.get("/healthz").status, 200);
    assert!(!svc.log().contains("t0ken-for-tests"));
    assert!(!svc.log().contains(SECRET));
}

// ---- concurrency policies ----

fn sleeper(name: &str, policy: &str, seconds: &str) -> String {
    format!(
        "name: {name}\non:\n  concurrency: {policy}\nsteps:\n  - id: nap\n    job: Sleep\n    params: {{Seconds: \"{seconds}\"}}\n"
    )
}

#[test]
fn concurrency_policies_queue_skip_and_cancel_previous() {
    let dir = Dir::new();
    dir.pipeline("q.yaml", &sleeper("q", "queue", "1"));
    dir.pipeline("s.yaml", &sleeper("s", "skip", "30"));
    dir.pipeline("c.yaml", &sleeper("c", "cancel_previous", "30"));
    let svc = Service::start(&dir, &[], &[]);
    let start = |p: &str| svc.post(&format!("/api/pipelines/{p}/runs"), json!({}));

    // queue: the second waits for the first.
    let q1 = start("q").json();
    let q2 = start("q");
    assert_eq!(q2.status, 201);
    assert_eq!(q2.json()["state"], "queued");
    let q2 = q2.json()["run_id"].as_str().unwrap().to_string();
    let first = svc.wait_run(q1["run_id"].as_str().unwrap(), Duration::from_secs(30));
    let second = svc.wait_run(&q2, Duration::from_secs(30));
    assert_eq!(first["state"], "succeeded");
    assert_eq!(second["state"], "succeeded");
    assert!(
        second["started_at"].as_str().unwrap() >= first["finished_at"].as_str().unwrap(),
        "the queued run started before the first ended"
    );

    // skip: the second is refused while the first runs.
    let s1 = start("s").json();
    let s2 = start("s");
    assert_eq!(s2.status, 409, "{}", s2.body);
    assert_eq!(s2.json()["state"], "skipped");

    // cancel_previous: the first is cancelled, the second runs.
    let c1 = start("c").json();
    let c1 = c1["run_id"].as_str().unwrap().to_string();
    wait_until("the first run to invoke", Duration::from_secs(20), || {
        (!svc.run(&c1)["steps"][0]["remote_run_ids"]
            .as_array()?
            .is_empty())
        .then_some(())
    });
    let c2 = start("c").json();
    let c2 = c2["run_id"].as_str().unwrap().to_string();
    let ended = svc.wait_run(&c1, Duration::from_secs(30));
    assert_eq!(ended["state"], "canceled", "{ended:#}");
    wait_until("the second run to start", Duration::from_secs(20), || {
        (svc.run(&c2)["state"] == "running").then_some(())
    });
    // Cancel what still runs, through the API.
    for id in [s1["run_id"].as_str().unwrap(), c2.as_str()] {
        let r = svc.post(&format!("/api/runs/{id}/cancel"), json!({}));
        assert_eq!(r.status, 202, "{}", r.body);
        assert_eq!(
            svc.wait_run(id, Duration::from_secs(30))["state"],
            "canceled"
        );
        assert_eq!(
            svc.post(&format!("/api/runs/{id}/cancel"), json!({}))
                .status,
            409
        );
    }
}

// ---- schedules ----

#[test]
fn a_schedule_fires_once_per_tick_and_missed_ticks_follow_their_policy() {
    let dir = Dir::new();
    let every2 = |name: &str, missed: &str| {
        format!(
            "name: {name}\non:\n  concurrency: allow\n  schedule:\n    - cron: \"*/2 * * * * *\"\n      missed: {missed}\nsteps:\n  - id: nap\n    job: Sleep\n    params: {{Seconds: \"0\"}}\n"
        )
    };
    dir.pipeline("once.yaml", &every2("once", "run_once"));
    dir.pipeline("skip.yaml", &every2("skip", "skip"));
    // Two triggers with one expression and different parameters both fire.
    dir.pipeline(
        "twins.yaml",
        "name: twins\nparams:\n  who: {type: string}\non:\n  concurrency: allow\n  schedule:\n    - cron: \"*/2 * * * * *\"\n      params: {who: a}\n    - cron: \"*/2 * * * * *\"\n      params: {who: b}\nsteps:\n  - id: nap\n    job: Sleep\n    params: {Seconds: \"0\"}\n",
    );
    let details = |svc: &Service, p: &str| -> Vec<String> {
        svc.runs_of(p)
            .iter()
            .map(|r| r["trigger_detail"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    {
        let svc = Service::start(&dir, &[], &[]);
        std::thread::sleep(Duration::from_millis(6500));
        for p in ["once", "skip"] {
            let d = details(&svc, p);
            // Ticks at most 2 s apart over 6.5 s: 2 to 4 of them, each run once.
            assert!((2..=4).contains(&d.len()), "{p}: {d:#?}\n{}", svc.log());
            let unique: BTreeSet<&String> = d.iter().collect();
            assert_eq!(unique.len(), d.len(), "{p}: a tick ran twice: {d:#?}");
            for r in svc.runs_of(p) {
                assert_eq!(r["trigger"], "schedule");
            }
        }
        let who: BTreeSet<String> = svc
            .runs_of("twins")
            .iter()
            .map(|r| r["params"]["who"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(who, BTreeSet::from(["a".into(), "b".into()]));
    }
    // Down for several ticks: `run_once` runs one run for them, `skip` none.
    std::thread::sleep(Duration::from_millis(5000));
    let svc = Service::start(&dir, &[], &[]);
    std::thread::sleep(Duration::from_millis(500));
    let missed = |p: &str| {
        details(&svc, p)
            .iter()
            .filter(|d| d.contains("missed"))
            .count()
    };
    assert_eq!(missed("once"), 1, "{:#?}", details(&svc, "once"));
    assert_eq!(missed("skip"), 0, "{:#?}", details(&svc, "skip"));
    std::thread::sleep(Duration::from_millis(3000));
    for p in ["once", "skip"] {
        let d = details(&svc, p);
        let unique: BTreeSet<&String> = d.iter().collect();
        assert_eq!(unique.len(), d.len(), "{p}: a tick ran twice: {d:#?}");
    }
}

// ---- dataset arrivals ----

const ON_UPLOAD: &str = r#"
name: on-upload
params:
  source: {type: string}
on:
  dataset:
    - pattern: "upload-*"
      params:
        source: "{{ event.dataset }}"
steps:
  - id: total
    job: Sum
    params:
      InputDataset: "{{ params.source }}"
      ResultDatasetName: "total-of-{{ params.source }}"
"#;

#[test]
fn a_new_dataset_starts_its_pipeline_once() {
    let dir = Dir::new();
    dir.pipeline("on-upload.yaml", ON_UPLOAD);
    // Present before the service first watched: not new.
    std::fs::write(
        dir.path().join("ws/datasets/upload-old.csv"),
        "turbine,value\nT1,1\n",
    )
    .unwrap();
    {
        let svc = Service::start(&dir, &[], &[]);
        std::thread::sleep(Duration::from_millis(800));
        std::fs::write(
            dir.path().join("ws/datasets/upload-1.csv"),
            "turbine,value\nT9,4\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("ws/datasets/unrelated.csv"),
            "turbine,value\nT9,4\n",
        )
        .unwrap();
        let run = wait_until("a run for upload-1", Duration::from_secs(20), || {
            svc.runs_of("on-upload").into_iter().next()
        });
        assert_eq!(run["params"]["source"], "upload-1");
        assert_eq!(run["trigger"], "dataset");
        let id = run["run_id"].as_str().unwrap().to_string();
        let run = svc.wait_run(&id, Duration::from_secs(30));
        assert_eq!(run["state"], "succeeded", "{run:#}");
        // Several more polls (and the run's own output dataset) start nothing more.
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(svc.runs().len(), 1, "{:#?}", svc.runs());
    }
    // What was seen is remembered across a restart.
    let svc = Service::start(&dir, &[], &[]);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(svc.runs().len(), 1);
    std::fs::write(
        dir.path().join("ws/datasets/upload-2.csv"),
        "turbine,value\nT9,5\n",
    )
    .unwrap();
    wait_until("a run for upload-2", Duration::from_secs(20), || {
        (svc.runs().len() == 2).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1000));
    let sources: BTreeSet<String> = svc
        .runs()
        .iter()
        .map(|r| r["params"]["source"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        sources,
        BTreeSet::from(["upload-1".into(), "upload-2".into()])
    );
}

// ---- invalid pipelines and reloads ----

#[test]
fn an_invalid_pipeline_is_reported_and_the_others_keep_working() {
    let dir = Dir::new();
    dir.pipeline("totals.yaml", TWO_STEPS);
    dir.pipeline(
        "broken.yaml",
        "name: broken\nsteps:\n  - id: a\n    job: Sum\n    neeeds: []\n",
    );
    let svc = Service::start(&dir, &[], &[]);
    let list = svc.get("/api/pipelines").json();
    let broken = list["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["file"].as_str().unwrap().ends_with("broken.yaml"))
        .unwrap()
        .clone();
    assert_eq!(broken["valid"], false);
    assert_eq!(broken["name"], "broken");
    assert_eq!(broken["problems"][0]["code"], "unknown-key");
    assert_eq!(broken["problems"][0]["line"], 5);
    assert!(svc.log().contains("broken.yaml:5:5"), "{}", svc.log());
    assert_eq!(
        svc.post("/api/pipelines/broken/runs", json!({})).status,
        404
    );
    let ok = svc.post("/api/pipelines/totals/runs", json!({}));
    assert_eq!(ok.status, 201);
    let id = ok.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(
        svc.wait_run(&id, Duration::from_secs(60))["state"],
        "succeeded"
    );

    // Fixed on disk: the watcher reloads it.
    dir.pipeline(
        "broken.yaml",
        "name: broken\nsteps:\n  - id: a\n    job: Sum\n    params: {InputDataset: readings, ResultDatasetName: fixed}\n",
    );
    wait_until("the watcher to reload", Duration::from_secs(20), || {
        let l = svc.get("/api/pipelines").json();
        l["pipelines"]
            .as_array()?
            .iter()
            .all(|p| p["valid"] == true)
            .then_some(())
    });
    // Broken again, then an explicit reload reports it.
    dir.pipeline("totals.yaml", "name: totals\nsteps: 5\n");
    let r = svc.post("/api/reload", json!({}));
    assert_eq!(r.status, 200);
    let r = r.json();
    assert_eq!(r["pipelines"], 1, "{r:#}");
    assert!(
        r["invalid"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("totals.yaml")
    );
    // The finished run keeps the definition it ran with.
    let run = svc.run(&id);
    assert_eq!(run["steps"].as_array().unwrap().len(), 2);
}

// ---- the service over the emulator: cancel and kill -9 ----

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

impl Emulator {
    fn start(dir: &Dir) -> Emulator {
        let mut child = Command::new(bin())
            .args(["emulator", "--listen", "127.0.0.1:0", "--workspace"])
            .arg(dir.path().join("ws"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap();
        let base = line
            .strip_prefix("emulator listening on ")
            .unwrap()
            .trim()
            .to_string();
        std::fs::write(
            dir.path().join("dwflow.yaml"),
            format!(
                "targets:\n  wb:\n    backend: workbench\n    base_url: {base}{GATEWAY_PREFIX}\n    token_url: {base}/oauth2/token\n    workspace_id: {DEFAULT_WORKSPACE_ID}\n"
            ),
        )
        .unwrap();
        Emulator { child, base }
    }

    fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("DW_CLIENT_ID", DEFAULT_CLIENT_ID),
            ("DW_CLIENT_SECRET", DEFAULT_CLIENT_SECRET),
            ("DW_SUBSCRIPTION_KEY", DEFAULT_SUBSCRIPTION_KEY),
            ("DWFLOW_TARGET", "wb"),
        ]
    }

    fn stats(&self) -> Value {
        request("GET", &format!("{}/_emulator/stats", self.base), &[], None).json()
    }

    /// A run as the Databricks side of the emulator describes it.
    fn remote_run(&self, run_id: &str) -> Value {
        request(
            "GET",
            &format!("{}/api/2.1/jobs/runs/get?run_id={run_id}", self.base),
            &[(
                "authorization",
                format!("Bearer {DEFAULT_DATABRICKS_TOKEN}"),
            )],
            None,
        )
        .json()
    }
}

fn serve_on(dir: &Dir, emu: &Emulator) -> Service {
    let mut env = emu.env();
    let config = dir.path().join("dwflow.yaml");
    let config = config.to_str().unwrap().to_string();
    let config: &'static str = Box::leak(config.into_boxed_str());
    env.push(("DWFLOW_CONFIG", config));
    Service::start(dir, &env, &["--poll-cap", "1s"])
}

#[test]
fn cancel_through_the_api_reaches_the_remote_run() {
    let dir = Dir::new();
    dir.pipeline("long.yaml", &sleeper("long", "allow", "300"));
    let emu = Emulator::start(&dir);
    let svc = serve_on(&dir, &emu);
    let r = svc.post("/api/pipelines/long/runs", json!({}));
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["run_id"].as_str().unwrap().to_string();
    let remote = wait_until("the remote run id", Duration::from_secs(30), || {
        svc.run(&id)["steps"][0]["remote_run_ids"][0]
            .as_str()
            .map(str::to_string)
    });
    assert_eq!(
        svc.post(&format!("/api/runs/{id}/cancel"), json!({}))
            .status,
        202
    );
    let run = svc.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "canceled", "{run:#}");
    let state = emu.remote_run(&remote);
    assert_eq!(
        state["state"]["life_cycle_state"], "TERMINATED",
        "{state:#}"
    );
    assert_eq!(state["state"]["result_state"], "CANCELED", "{state:#}");
}

#[test]
fn kill_9_mid_run_then_restart_completes_with_each_job_invoked_once() {
    let dir = Dir::new();
    dir.pipeline(
        "chain.yaml",
        "name: chain\nsteps:\n  - id: one\n    job: Sleep\n    params: {Seconds: \"3\"}\n  - id: two\n    job: Sum\n    params: {InputDataset: readings, ResultDatasetName: chained}\n",
    );
    let emu = Emulator::start(&dir);
    let id;
    {
        let mut svc = serve_on(&dir, &emu);
        let r = svc.post("/api/pipelines/chain/runs", json!({}));
        assert_eq!(r.status, 201, "{}", r.body);
        id = r.json()["run_id"].as_str().unwrap().to_string();
        wait_until("the first remote run", Duration::from_secs(30), || {
            svc.run(&id)["steps"][0]["remote_run_ids"][0]
                .as_str()
                .map(str::to_string)
        });
        // kill -9: no chance to clean up.
        svc.child.kill().unwrap();
        svc.child.wait().unwrap();
    }
    let svc = serve_on(&dir, &emu);
    let run = svc.wait_run(&id, Duration::from_secs(60));
    assert_eq!(run["state"], "succeeded", "{run:#}\n{}", svc.log());
    assert!(
        svc.log().contains("resuming a run left in flight"),
        "{}",
        svc.log()
    );
    let stats = emu.stats();
    let per_job = &stats["invocations"]["per_job"];
    let total: u64 = per_job
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 2, "each job invoked once: {stats:#}");
    for s in run["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "succeeded");
        assert_eq!(s["remote_run_ids"].as_array().unwrap().len(), 1, "{s:#}");
    }
    assert_eq!(svc.runs().len(), 1);
}

// ---- what a browser on another site cannot do ----

#[test]
fn cross_site_requests_are_refused() {
    let dir = Dir::new();
    dir.pipeline("totals.yaml", TWO_STEPS);
    let svc = Service::start(&dir, &[], &[]);
    let url = svc.url("/api/pipelines/totals/runs");
    // A cross-site form posts text/plain without a preflight.
    let form = request("POST", &url, &[("content-type", "text/plain".into())], None);
    assert_eq!(form.status, 415, "{}", form.body);
    let cancel = request("POST", &svc.url("/api/runs/x/cancel"), &[], None);
    assert_eq!(cancel.status, 415, "{}", cancel.body);
    let foreign = request(
        "POST",
        &url,
        &[("origin", "http://evil.example".into())],
        Some(b"{}".to_vec()),
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    // A DNS name rebound to 127.0.0.1 is not this service's name.
    let rebound = request(
        "GET",
        &svc.url("/api/runs"),
        &[("host", "attacker.example".into())],
        None,
    );
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    assert!(svc.runs().is_empty());
    // The page's own requests pass.
    let port = svc.base.rsplit(':').next().unwrap();
    let own = request(
        "POST",
        &url,
        &[("origin", format!("http://127.0.0.1:{port}"))],
        Some(b"{}".to_vec()),
    );
    assert_eq!(own.status, 201, "{}", own.body);
}

// ---- restarts that must not run anything twice ----

/// Local runs the workspace recorded (one per job invocation).
fn local_invocations(dir: &Dir) -> usize {
    std::fs::read_dir(dir.path().join("ws/.dwflow/local-runs"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_restart_without_the_journal_does_not_start_invoked_jobs_again() {
    let dir = Dir::new();
    dir.pipeline("long.yaml", &sleeper("long", "allow", "300"));
    let id;
    {
        let mut svc = Service::start(&dir, &[], &[]);
        let r = svc.post("/api/pipelines/long/runs", json!({}));
        id = r.json()["run_id"].as_str().unwrap().to_string();
        wait_until("the invocation", Duration::from_secs(30), || {
            svc.run(&id)["steps"][0]["remote_run_ids"][0]
                .as_str()
                .map(str::to_string)
        });
        svc.child.kill().unwrap();
        svc.child.wait().unwrap();
    }
    assert_eq!(local_invocations(&dir), 1);
    let other = dir.path().join("elsewhere");
    let svc = Service::start(&dir, &[], &["--state-dir", other.to_str().unwrap()]);
    let run = svc.wait_run(&id, Duration::from_secs(10));
    assert_eq!(run["state"], "interrupted", "{run:#}");
    assert!(
        run["error"].as_str().unwrap().contains("journal"),
        "{run:#}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(local_invocations(&dir), 1, "a job was invoked again");
}

#[test]
fn shutting_down_with_cancel_starts_no_queued_run() {
    let dir = Dir::new();
    dir.pipeline("q.yaml", &sleeper("q", "queue", "300"));
    let mut svc = Service::start(&dir, &[], &["--cancel-on-shutdown"]);
    let first = svc.post("/api/pipelines/q/runs", json!({})).json();
    let second = svc.post("/api/pipelines/q/runs", json!({})).json();
    assert_eq!(second["state"], "queued");
    let first = first["run_id"].as_str().unwrap().to_string();
    wait_until("the first invocation", Duration::from_secs(30), || {
        svc.run(&first)["steps"][0]["remote_run_ids"][0]
            .as_str()
            .map(str::to_string)
    });
    // SIGTERM: the run in flight is cancelled, the queued one waits for the next start.
    unsafe {
        libc::kill(svc.child.id() as i32, libc::SIGTERM);
    }
    let status = wait_until("the service to exit", Duration::from_secs(60), || {
        svc.child.try_wait().unwrap()
    });
    assert!(status.success(), "{status:?}\n{}", svc.log());
    assert_eq!(local_invocations(&dir), 1, "{}", svc.log());
    drop(svc);
    let svc = Service::start(&dir, &[], &[]);
    assert_eq!(svc.run(&first)["state"], "canceled");
    let second = second["run_id"].as_str().unwrap();
    wait_until(
        "the queued run to start after the restart",
        Duration::from_secs(30),
        || (svc.run(second)["state"] == "running").then_some(()),
    );
    assert_eq!(
        svc.post(&format!("/api/runs/{second}/cancel"), json!({}))
            .status,
        202
    );
}
