//! End-to-end tests of the remote backends through the real binaries: `dwflow emulator`
//! runs as a process on `127.0.0.1:0` over a temporary copy of `examples/workspace` (its
//! jobs really run), and `dwflow` runs real pipelines against it over loopback HTTP,
//! through a temporary `dwflow.yaml` with a Data Workbench target (`wb`: gateway v2,
//! client credentials; `wb-token`: a static token) and a Databricks target (`db`: a
//! personal access token; `db-oauth`: OAuth M2M). Covered, on both backends:
//!
//! - `pipelines/turbine-assessment.yaml` gives the same datasets as the local run, each
//!   job invoked exactly once per run;
//! - a job whose SQL fails: exit 1 with SQLite's message;
//! - Ctrl-C during a long remote run: exit 130, the remote run cancelled;
//! - kill -9 with remote runs in flight, then `dwflow resume`: the pipeline completes and
//!   no job (nor, on Databricks, any idempotency token) is invoked twice; kill -9 after an
//!   invocation was sent but before its answer: Databricks re-sends it with the same
//!   token, the gateway (no idempotency key) fails the step saying the run may or may
//!   not have started, and a second resume runs it as a new attempt;
//! - a job name defined twice in the emulator's workspace;
//! - wrong or expired credentials: exit 3, a clear message, no secret in any output or
//!   journal;
//! - `validate --remote`: unknown jobs, missing and unknown parameters;
//! - soaks under injected faults (5xx, 429, responses lost after the action, 3 s tokens):
//!   50 runs on Databricks (every one succeeds with the right results, exactly one run
//!   per job per pipeline run, no idempotency token used twice) and 20 on the gateway
//!   (each succeeds with the right results or fails saying the run may or may not have
//!   started, since the gateway's invoke has no idempotency key; never a wrong result,
//!   never a job invoked twice in one run).
//!
//! Reference results come from one local run of the same pipelines, shared by the tests.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};
use std::time::{Duration, Instant};

use dwflow::emulator::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_DATABRICKS_TOKEN, DEFAULT_SUBSCRIPTION_KEY,
    DEFAULT_WORKSPACE_ID, FIRST_RUN_ID, GATEWAY_PREFIX, WORKBENCH_RESOURCE,
};
use serde_json::Value;

// ---- processes and files ----

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dwflow")
}

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A pipeline of the repository, by absolute path.
fn repo_pipeline(name: &str) -> String {
    manifest()
        .join("pipelines")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

/// Variables of the caller's environment that would change what dwflow does.
const VARS: &[&str] = &[
    "DWFLOW_TARGET",
    "DWFLOW_CONFIG",
    "DWFLOW_WORKSPACE",
    "DWFLOW_STATE_DIR",
    "DW_CLIENT_ID",
    "DW_CLIENT_SECRET",
    "DW_SUBSCRIPTION_KEY",
    "DW_TOKEN",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
    "RUST_LOG",
];

/// `dwflow` with none of the variables above.
fn dwflow() -> Command {
    let mut c = Command::new(bin());
    for v in VARS {
        c.env_remove(v);
    }
    c
}

/// Copies a directory tree, leaving out `.dwflow` state (imports, runs, datasets).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == ".dwflow" {
            continue;
        }
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

fn copy_example_workspace(to: &Path) {
    copy_dir(&manifest().join("examples/workspace"), to);
}

/// A finished command.
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn output(cmd: &mut Command) -> Out {
    let out = cmd.output().expect("dwflow runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `dwflow datasets show NAME --format csv` on `ws` as a local workspace.
fn local_csv(ws: &Path, name: &str) -> String {
    let out = output(
        dwflow()
            .args(["datasets", "show", name, "--format", "csv"])
            .env("DWFLOW_WORKSPACE", ws)
            .current_dir(ws),
    );
    assert_eq!(out.code, 0, "datasets show {name}: {out}");
    out.stdout
}

/// Lines of a child's stderr, read on a thread.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits until a line containing each needle was seen (a generous limit guards against
/// a hang; it is not a speed check). Returns the matching lines, in needle order.
fn wait_for_lines(
    rx: &mpsc::Receiver<String>,
    needles: &[&str],
    seen: &mut Vec<String>,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut found: Vec<Option<String>> = vec![None; needles.len()];
    while found.iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "never saw all of {needles:?}; saw:\n{}",
            seen.join("\n")
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
            for (i, n) in needles.iter().enumerate() {
                if found[i].is_none() && line.contains(n) {
                    found[i] = Some(line.clone());
                }
            }
            seen.push(line);
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dwflow did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `run 700000000004 started` -> 700000000004.
fn remote_run_id(line: &str) -> u64 {
    line.split_whitespace()
        .skip_while(|w| *w != "run")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no remote run id in `{line}`"))
}

/// `starting run 20261203T220544Z-a2d773b5 of ...` -> the pipeline run id.
fn pipeline_run_id(lines: &[String]) -> String {
    lines
        .iter()
        .find_map(|l| {
            let rest = &l[l.find("starting run ")? + "starting run ".len()..];
            rest.split_whitespace().next().map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no `starting run` line in:\n{}", lines.join("\n")))
}

/// Every file under `dir`, as bytes (journals, the pipeline copy, the history database).
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path, bytes));
        }
    }
    out
}

fn contains_bytes(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

// ---- HTTP to the emulator (stats, run states, tokens) ----

fn http(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
    form: Option<&[(&str, &str)]>,
) -> (u16, String) {
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
        let mut req = client.request(method, url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(f) = form {
            req = req.form(f);
        }
        let resp = req.send().await.expect("the emulator answers");
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

// ---- the emulator ----

/// `dwflow emulator` on 127.0.0.1:0 over a temporary copy of the example workspace, with
/// a `dwflow.yaml` naming it; killed on drop.
struct Emulator {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Emulator {
    fn start(flags: &[&str]) -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        copy_example_workspace(&dir.path().join("ws"));
        let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
        let mut child = dwflow()
            .args(["emulator", "--listen", "127.0.0.1:0", "--workspace"])
            .arg(dir.path().join("ws"))
            .args(flags)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the emulator starts");
        // Its stdout is read to the end on a thread, so that it never blocks on a pipe.
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!(
                    "the emulator did not say where it listens; its log:\n{}",
                    std::fs::read_to_string(dir.path().join("emulator.log")).unwrap_or_default()
                )
            });
        let base = line
            .strip_prefix("emulator listening on ")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .trim()
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        let gateway = format!("{base}{GATEWAY_PREFIX}");
        let config = format!(
            "targets:
  wb:
    backend: workbench
    base_url: {gateway}
    token_url: {base}/oauth2/token
    workspace_id: {DEFAULT_WORKSPACE_ID}
  wb-token:
    backend: workbench
    base_url: {gateway}
    workspace_id: {DEFAULT_WORKSPACE_ID}
    token_env: DW_TOKEN
  db:
    backend: databricks
    host: {base}
    token_env: DATABRICKS_TOKEN
  db-oauth:
    backend: databricks
    host: {base}
    client_id_env: DATABRICKS_CLIENT_ID
    client_secret_env: DATABRICKS_CLIENT_SECRET
"
        );
        std::fs::write(dir.path().join("dwflow.yaml"), config).unwrap();
        Emulator { child, base, dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The workspace the emulator serves.
    fn ws(&self) -> PathBuf {
        self.root().join("ws")
    }

    /// `dwflow` pointed at this emulator's configuration, with the emulator's (right)
    /// credentials and `state` as the journal directory.
    fn dwflow(&self, args: &[&str]) -> Command {
        let mut c = dwflow();
        c.args(args)
            .current_dir(self.root())
            .env("DWFLOW_CONFIG", self.root().join("dwflow.yaml"))
            .env("DWFLOW_STATE_DIR", self.root().join("state"))
            .env("DW_CLIENT_ID", DEFAULT_CLIENT_ID)
            .env("DW_CLIENT_SECRET", DEFAULT_CLIENT_SECRET)
            .env("DW_SUBSCRIPTION_KEY", DEFAULT_SUBSCRIPTION_KEY)
            .env("DATABRICKS_TOKEN", DEFAULT_DATABRICKS_TOKEN)
            .env("DATABRICKS_CLIENT_ID", DEFAULT_CLIENT_ID)
            .env("DATABRICKS_CLIENT_SECRET", DEFAULT_CLIENT_SECRET);
        c
    }

    fn run(&self, args: &[&str]) -> Out {
        output(&mut self.dwflow(args))
    }

    /// Writes a file beside the workspace (a pipeline), returning its path.
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.root().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    fn add_job(&self, file: &str, text: &str) {
        std::fs::write(self.ws().join("jobs").join(file), text).unwrap();
    }

    fn stats(&self) -> Value {
        let (status, body) = http(
            reqwest::Method::GET,
            &format!("{}/_emulator/stats", self.base),
            &[],
            None,
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A run as the Databricks API describes it (run ids are shared by both APIs).
    fn databricks_run(&self, run_id: u64) -> Value {
        let auth = format!("Bearer {DEFAULT_DATABRICKS_TOKEN}");
        let (status, body) = http(
            reqwest::Method::GET,
            &format!("{}/api/2.1/jobs/runs/get?run_id={run_id}", self.base),
            &[("authorization", auth.as_str())],
            None,
        );
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A gateway token from the emulator's Azure AD v1 endpoint.
    fn gateway_token(&self) -> String {
        let (status, body) = http(
            reqwest::Method::POST,
            &format!("{}/oauth2/token", self.base),
            &[],
            Some(&[
                ("grant_type", "client_credentials"),
                ("client_id", DEFAULT_CLIENT_ID),
                ("client_secret", DEFAULT_CLIENT_SECRET),
                ("resource", WORKBENCH_RESOURCE),
            ]),
        );
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// A dataset of the emulator's workspace, read as a local workspace.
    fn csv(&self, name: &str) -> String {
        local_csv(&self.ws(), name)
    }

    /// Removes a dataset written by a job, so that the next run must write it again.
    fn remove_dataset(&self, name: &str) {
        let dir = self.ws().join(".dwflow/datasets");
        for file in [format!("{name}.csv"), format!("{name}.schema.yaml")] {
            match std::fs::remove_file(dir.join(file)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
                _ => {}
            }
        }
    }

    /// The local environment's record of every run the emulator started.
    fn records(&self) -> Vec<Value> {
        let dir = self.ws().join(".dwflow/local-runs");
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            // Records are written atomically (a hidden temporary file, renamed).
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(e.path()) {
                out.push(serde_json::from_str(&text).unwrap());
            }
        }
        out
    }

    /// Pipeline runs of a state directory (`runs list --json`).
    fn runs_list(&self, state_dir: &Path) -> Vec<Value> {
        let out = self.run(&[
            "runs",
            "list",
            "--json",
            "--state-dir",
            state_dir.to_str().unwrap(),
        ]);
        assert_eq!(out.code, 0, "{out}");
        serde_json::from_str::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }
}

fn count(stats: &Value, section: &str, key: &str) -> u64 {
    stats["invocations"][section][key].as_u64().unwrap_or(0)
}

/// Runs started per job since `before`.
fn job_delta(before: &Value, after: &Value, job: &str) -> u64 {
    count(after, "per_job", job) - count(before, "per_job", job)
}

/// Idempotency tokens first used since `before`, with their invocation counts.
fn new_tokens(before: &Value, after: &Value) -> BTreeMap<String, u64> {
    let empty = serde_json::Map::new();
    let old = before["invocations"]["per_idempotency_token"]
        .as_object()
        .unwrap_or(&empty);
    after["invocations"]["per_idempotency_token"]
        .as_object()
        .unwrap_or(&empty)
        .iter()
        .filter(|(k, _)| !old.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

/// Requests to endpoints whose route contains `part`, since `before`.
fn request_delta(before: &Value, after: &Value, part: &str) -> u64 {
    let sum = |s: &Value| -> u64 {
        s["requests"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.contains(part))
                    .map(|(_, v)| v.as_u64().unwrap())
                    .sum()
            })
            .unwrap_or(0)
    };
    sum(after) - sum(before)
}

// ---- reference results: the same pipelines on the local environment ----

/// The years the soaks run in parallel lanes (dataset names include the year). The data
/// covers 2014 and 2015 (UTC); 2013 and 2016 give valid, empty datasets.
const YEARS: [&str; 4] = ["2014", "2015", "2013", "2016"];

/// Datasets written by local runs of `turbine-assessment.yaml` (for each of [`YEARS`])
/// and of `fleet-comparison.yaml`, as `datasets show --format csv` prints them.
fn reference() -> &'static HashMap<String, String> {
    static REFERENCE: OnceLock<HashMap<String, String>> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        copy_example_workspace(&ws);
        let run = |pipeline: &str, params: &[&str]| {
            let out = output(
                dwflow()
                    .args(["run", &repo_pipeline(pipeline), "--progress", "plain"])
                    .args(params)
                    .env("DWFLOW_WORKSPACE", &ws)
                    .env("DWFLOW_STATE_DIR", dir.path().join("state"))
                    .current_dir(dir.path()),
            );
            assert_eq!(out.code, 0, "local run of {pipeline}: {out}");
        };
        let mut csv = HashMap::new();
        for year in YEARS {
            run("turbine-assessment.yaml", &["-p", &format!("year={year}")]);
            for name in [format!("lhb-daily-{year}"), format!("lhb-ranking-{year}")] {
                csv.insert(name.clone(), local_csv(&ws, &name));
            }
        }
        run("fleet-comparison.yaml", &[]);
        for name in ["lhb-ranking-2014", "lhb-ranking-2015"] {
            assert_eq!(local_csv(&ws, name), csv[name], "{name} is deterministic");
        }
        let name = "lhb-comparison-2014-2015";
        csv.insert(name.to_string(), local_csv(&ws, name));
        // Real results: one row per turbine per day, four ranked turbines.
        assert_eq!(csv["lhb-daily-2014"].lines().count(), 1 + 4 * 365);
        assert_eq!(csv["lhb-ranking-2015"].lines().count(), 1 + 4);
        assert_eq!(csv[name].lines().count(), 1 + 4);
        assert_eq!(csv["lhb-ranking-2016"].lines().count(), 1, "only a header");
        csv
    })
}

const BACKENDS: [&str; 2] = ["wb", "db"];

// ---- 1. success, same results as the local run ----

#[test]
fn remote_runs_give_the_local_results_invoking_each_job_once() {
    let reference = reference();
    let emu = Emulator::start(&[]);
    let pipeline = repo_pipeline("turbine-assessment.yaml");
    for target in BACKENDS {
        for name in ["lhb-daily-2014", "lhb-ranking-2014"] {
            emu.remove_dataset(name);
        }
        let before = emu.stats();
        let out = emu.run(&["run", &pipeline, "--target", target, "--progress", "plain"]);
        assert_eq!(out.code, 0, "{target}: {out}");
        assert!(out.stdout.contains("succeeded"), "{target}: {out}");
        // The run ids shown are the emulator's.
        assert!(
            out.stdout.contains(&FIRST_RUN_ID.to_string()[..6]),
            "{target}: {out}"
        );
        let after = emu.stats();
        assert_eq!(
            job_delta(&before, &after, "Assessment"),
            1,
            "{target}: {after}"
        );
        assert_eq!(
            job_delta(&before, &after, "TurbineRanking"),
            1,
            "{target}: {after}"
        );
        let tokens = new_tokens(&before, &after);
        if target == "db" {
            assert_eq!(tokens.len(), 2, "one idempotency token per step: {after}");
            assert!(tokens.values().all(|n| *n == 1), "{after}");
        } else {
            assert!(tokens.is_empty(), "the gateway has no idempotency key");
        }
        for name in ["lhb-daily-2014", "lhb-ranking-2014"] {
            assert_eq!(emu.csv(name), reference[name], "{target}: {name}");
        }
    }
    // The gateway serves the same rows as the workspace holds.
    let out = emu.run(&[
        "datasets",
        "show",
        "lhb-ranking-2014",
        "--format",
        "csv",
        "--target",
        "wb",
    ]);
    assert_eq!(out.code, 0, "{out}");
    assert_eq!(out.stdout, reference["lhb-ranking-2014"]);
}

// ---- 2. a failing job ----

const BROKEN_JOB: &str = r#"
name: Broken
parameters:
  ResultDatasetName: {default: broken-out}
sql:
  inputs: [la-haute-borne-assets]
  output: "{{ ResultDatasetName }}"
  query: SELECT Wind_turbine_name, no_such_column FROM "la-haute-borne-assets"
"#;

#[test]
fn a_failing_remote_job_exits_1_with_the_sqlite_message() {
    let emu = Emulator::start(&[]);
    emu.add_job("Broken.yaml", BROKEN_JOB);
    let p = emu.file(
        "broken.yaml",
        "name: broken\nsteps:\n  - id: bad\n    job: Broken\n  - id: after\n    job: TurbineRanking\n    params: {InputDataset: broken-out, ResultDatasetName: never}\n",
    );
    for target in BACKENDS {
        let before = emu.stats();
        let out = emu.run(&["run", &p, "--target", target, "--progress", "plain"]);
        assert_eq!(out.code, 1, "{target}: {out}");
        assert!(
            out.stdout.contains("no such column: no_such_column"),
            "{target}: the remote error is shown: {out}"
        );
        assert!(out.stdout.contains("not_run"), "{target}: {out}");
        let after = emu.stats();
        assert_eq!(job_delta(&before, &after, "Broken"), 1, "{target}");
        assert_eq!(
            job_delta(&before, &after, "TurbineRanking"),
            0,
            "{target}: nothing after the failed step starts"
        );
    }
}

// ---- 3. Ctrl-C cancels the remote run ----

const SLEEP_JOB: &str = r#"
name: Sleep
parameters:
  Seconds: {default: "300"}
command:
  argv: ["sh", "-c", "sleep $Seconds"]
"#;

#[test]
fn ctrl_c_cancels_the_remote_run_and_exits_130() {
    let emu = Emulator::start(&[]);
    emu.add_job("Sleep.yaml", SLEEP_JOB);
    let p = emu.file(
        "long.yaml",
        "name: long\nsteps:\n  - id: nap\n    job: Sleep\n  - id: after\n    job: Sleep\n",
    );
    for target in BACKENDS {
        let before = emu.stats();
        let mut child = emu
            .dwflow(&["run", &p, "--target", target, "--progress", "plain"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = stderr_lines(&mut child);
        let mut seen = Vec::new();
        let found = wait_for_lines(&rx, &["nap: run ", "nap: running"], &mut seen);
        let run_id = remote_run_id(&found[0]);
        let pipeline_run = pipeline_run_id(&seen);
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let code = wait_exit(&mut child);
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        seen.extend(rx.try_iter());
        assert_eq!(code, 130, "{target}: {stdout}\n{}", seen.join("\n"));
        assert!(stdout.contains("canceled"), "{target}: {stdout}");

        let after = emu.stats();
        let cancel_route = match target {
            "wb" => "/runs/{runId}/cancel",
            _ => "POST /api/2.1/jobs/runs/cancel",
        };
        assert!(
            request_delta(&before, &after, cancel_route) >= 1,
            "{target}: the cancel endpoint was called: {after}"
        );
        assert_eq!(
            job_delta(&before, &after, "Sleep"),
            1,
            "{target}: the second step never started"
        );
        // The remote run really ended cancelled.
        let run = emu.databricks_run(run_id);
        assert_eq!(run["state"]["life_cycle_state"], "TERMINATED", "{run}");
        assert_eq!(run["state"]["result_state"], "CANCELED", "{run}");
        let runs = emu.runs_list(&emu.root().join("state"));
        let mine = runs
            .iter()
            .find(|r| r["run_id"] == pipeline_run.as_str())
            .expect("the run is listed");
        assert_eq!(mine["state"], "canceled", "{mine}");
    }
    // The local processes of both runs were stopped, not left sleeping.
    let records = emu.records();
    assert_eq!(records.len(), 2);
    for r in records {
        assert_eq!(r["result"], "canceled", "{r}");
    }
}

// ---- 4. kill -9 with runs in flight, then resume ----

#[test]
fn kill_9_with_remote_runs_in_flight_then_resume_invokes_nothing_twice() {
    let reference = reference();
    // Runs are held (QUEUED, then PENDING) for a second: both first steps are still in
    // flight when dwflow is killed.
    let emu = Emulator::start(&["--queued-secs", "1"]);
    let pipeline = repo_pipeline("fleet-comparison.yaml");
    let datasets = [
        "lhb-daily-2014",
        "lhb-daily-2015",
        "lhb-ranking-2014",
        "lhb-ranking-2015",
        "lhb-comparison-2014-2015",
    ];
    for target in BACKENDS {
        for name in datasets {
            emu.remove_dataset(name);
        }
        let state = emu.root().join(format!("state-kill-{target}"));
        let before = emu.stats();
        let mut child = emu
            .dwflow(&["run", &pipeline, "--target", target, "--progress", "plain"])
            .env("DWFLOW_STATE_DIR", &state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = stderr_lines(&mut child);
        let mut seen = Vec::new();
        wait_for_lines(
            &rx,
            &["assess_baseline: run ", "assess_current: run "],
            &mut seen,
        );
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let run_id = pipeline_run_id(&seen);
        let runs = emu.runs_list(&state);
        assert_eq!(runs[0]["run_id"], run_id.as_str());
        assert_eq!(runs[0]["state"], "interrupted", "{target}: {runs:?}");

        let out = output(
            emu.dwflow(&["resume", &run_id, "--progress", "plain"])
                .env("DWFLOW_STATE_DIR", &state),
        );
        assert_eq!(out.code, 0, "{target}: {out}");
        let after = emu.stats();
        for (job, n) in [
            ("Assessment", 2),
            ("TurbineRanking", 2),
            ("CompareYears", 1),
            ("QualityReport", 1),
        ] {
            assert_eq!(
                job_delta(&before, &after, job),
                n,
                "{target}: {job} invoked once per step: {after}\n{out}"
            );
        }
        let tokens = new_tokens(&before, &after);
        if target == "db" {
            assert_eq!(tokens.len(), 6, "{after}");
            assert!(
                tokens.values().all(|n| *n == 1),
                "no idempotency token invoked twice: {tokens:?}"
            );
        }
        for name in datasets {
            assert_eq!(emu.csv(name), reference[name], "{target}: {name}");
        }
        assert_eq!(emu.runs_list(&state)[0]["state"], "succeeded");
    }
}

/// The journal of a pipeline run, one JSON value per record.
fn journal(state: &Path, run_id: &str) -> Vec<Value> {
    std::fs::read_to_string(state.join(run_id).join("journal.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn kill_9_while_an_invocation_is_unanswered_then_resume() {
    let reference = reference();
    // Every answer takes a second: dwflow is killed after it journaled the invocation
    // and sent it, before any answer.
    let emu = Emulator::start(&["--latency-ms", "1000"]);
    let pipeline = repo_pipeline("turbine-assessment.yaml");
    for target in BACKENDS {
        for name in ["lhb-daily-2014", "lhb-ranking-2014"] {
            emu.remove_dataset(name);
        }
        let state = emu.root().join(format!("state-invoking-{target}"));
        let before = emu.stats();
        let mut child = emu
            .dwflow(&["run", &pipeline, "--target", target, "--progress", "plain"])
            .env("DWFLOW_STATE_DIR", &state)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let rx = stderr_lines(&mut child);
        let mut seen = Vec::new();
        wait_for_lines(&rx, &["aggregate: invoking Assessment"], &mut seen);
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let run_id = pipeline_run_id(&seen);
        let records = journal(&state, &run_id);
        let last = records.last().unwrap();
        assert_eq!(
            last["type"], "invoking",
            "{target}: killed before the answer: {records:?}"
        );
        let key = last["idempotency_key"].as_str().unwrap().to_string();
        let resume = |args: &[&str]| {
            output(
                emu.dwflow(&[&["resume", run_id.as_str(), "--progress", "plain"], args].concat())
                    .env("DWFLOW_STATE_DIR", &state),
            )
        };
        if target == "db" {
            // Databricks: the invocation is sent again with the journaled token.
            let out = resume(&[]);
            assert_eq!(out.code, 0, "{target}: {out}");
            let after = emu.stats();
            assert_eq!(job_delta(&before, &after, "Assessment"), 1, "{after}");
            assert_eq!(job_delta(&before, &after, "TurbineRanking"), 1, "{after}");
            let tokens = new_tokens(&before, &after);
            assert_eq!(tokens.get(&key), Some(&1), "the same token: {tokens:?}");
            assert_eq!(tokens.len(), 2, "{tokens:?}");
        } else {
            // The gateway: no idempotency key, so the step fails, saying so, rather
            // than risk a second run.
            let out = resume(&[]);
            assert_eq!(out.code, 1, "{target}: {out}");
            assert!(
                out.stdout.contains("was being invoked when dwflow stopped")
                    && out.stdout.contains("may or may not have started"),
                "{target}: {out}"
            );
            let middle = emu.stats();
            assert!(job_delta(&before, &middle, "Assessment") <= 1, "{middle}");
            assert_eq!(job_delta(&before, &middle, "TurbineRanking"), 0);
            // Once checked, resuming again runs the step as a new attempt.
            let out = resume(&[]);
            assert_eq!(out.code, 0, "{target}: {out}");
            assert!(out.stderr.contains("attempt 2"), "{target}: {out}");
            let after = emu.stats();
            assert_eq!(job_delta(&middle, &after, "Assessment"), 1, "{after}");
            assert_eq!(job_delta(&middle, &after, "TurbineRanking"), 1, "{after}");
        }
        for name in ["lhb-daily-2014", "lhb-ranking-2014"] {
            assert_eq!(emu.csv(name), reference[name], "{target}: {name}");
        }
    }
}

// ---- 5. a job name defined twice ----

#[test]
fn a_job_defined_twice_is_a_clear_error_naming_both_definitions() {
    // The local environment (and so the emulator) refuses two jobs of one name: a job's
    // file is named after it, so the only way is `Twice.yaml` beside `Twice.yml`, and
    // then the emulator's job list is an error naming both files. (Two jobs sharing a
    // name, which Databricks allows, cannot be served by the emulator.)
    let emu = Emulator::start(&[]);
    let job = BROKEN_JOB.replace("name: Broken", "name: Twice");
    emu.add_job("Twice.yaml", &job);
    emu.add_job("Twice.yml", &job);
    let p = emu.file(
        "twice.yaml",
        "name: twice\nsteps:\n  - id: t\n    job: Twice\n",
    );
    for target in BACKENDS {
        let out = emu.run(&["run", &p, "--target", target, "--progress", "plain"]);
        // What the code does: a job that cannot be resolved fails its step (exit 1),
        // as an unknown or ambiguous job name does at run time.
        assert_eq!(out.code, 1, "{target}: {out}");
        assert!(
            out.stdout.contains("cannot resolve job `Twice`")
                && out.stdout.contains("jobs/Twice.yml")
                && out.stdout.contains("jobs/Twice.yaml"),
            "{target}: {out}"
        );
        let out = emu.run(&[
            "validate", "--remote", &p, "--target", target, "--format", "json",
        ]);
        assert_eq!(out.code, 2, "{target}: {out}");
        let diags: Value = serde_json::from_str(&out.stdout).unwrap();
        let d = &diags[0];
        assert_eq!(d["code"], "remote-unknown-job", "{target}: {out}");
        let message = d["message"].as_str().unwrap();
        assert!(
            message.contains("jobs/Twice.yml") && message.contains("jobs/Twice.yaml"),
            "{target}: {message}"
        );
        // `jobs list` on that workspace: a 400 from the target, reported as invalid.
        let out = emu.run(&["jobs", "list", "--target", target]);
        assert_eq!(out.code, 2, "{target}: {out}");
        assert!(out.stderr.contains("already defined"), "{target}: {out}");
    }
    assert!(
        emu.stats()["invocations"]["per_job"]
            .as_object()
            .unwrap()
            .is_empty(),
        "nothing ran"
    );
}

// ---- 6. wrong credentials ----

#[test]
fn wrong_or_expired_credentials_exit_3_and_never_show_a_secret() {
    // Tokens live 1 s here, so that one can expire.
    let emu = Emulator::start(&["--token-ttl", "1"]);
    let expired = emu.gateway_token();
    std::thread::sleep(Duration::from_millis(1500));
    let pipeline = repo_pipeline("turbine-assessment.yaml");
    // (target, variable, wrong value, what the message says)
    let cases = [
        (
            "wb",
            "DW_CLIENT_SECRET",
            "wrong-client-secret-7c1e",
            "invalid_client",
        ),
        (
            "wb",
            "DW_SUBSCRIPTION_KEY",
            "wrong-subscription-key-4b2d",
            "invalid subscription key",
        ),
        (
            "wb-token",
            "DW_TOKEN",
            "wrong-static-token-9f3a",
            "the access token is invalid",
        ),
        (
            "wb-token",
            "DW_TOKEN",
            expired.as_str(),
            "the access token has expired",
        ),
        (
            "db",
            "DATABRICKS_TOKEN",
            "dapi-wrong-token-1d8e",
            "Invalid access token",
        ),
        (
            "db-oauth",
            "DATABRICKS_CLIENT_SECRET",
            "wrong-dbx-secret-5a6c",
            "invalid_client",
        ),
    ];
    for (i, (target, var, value, says)) in cases.into_iter().enumerate() {
        let state = emu.root().join(format!("state-cred-{i}"));
        let commands: [&[&str]; 3] = [
            &["run", &pipeline, "--progress", "plain"],
            &["jobs", "list"],
            &["validate", "--remote", &pipeline],
        ];
        for args in commands {
            let out = output(
                emu.dwflow(args)
                    .args(["--target", target])
                    .env("DWFLOW_STATE_DIR", &state)
                    .env(var, value),
            );
            assert_eq!(out.code, 3, "{target} {var} {args:?}: {out}");
            assert!(out.all().contains(says), "{target} {var} {args:?}: {out}");
            assert!(
                out.all().contains(&format!("${var}")),
                "{target} {var} {args:?}: the message names where the credential comes from: {out}"
            );
            // Neither the wrong value nor any of the right secrets shows.
            for secret in [
                value,
                DEFAULT_CLIENT_SECRET,
                DEFAULT_SUBSCRIPTION_KEY,
                DEFAULT_DATABRICKS_TOKEN,
            ] {
                assert!(
                    !out.all().contains(secret),
                    "{target} {var} {args:?}: `{secret}` shown: {out}"
                );
            }
        }
        let files = files_under(&state);
        assert!(!files.is_empty(), "the run has a journal");
        for (path, bytes) in files {
            for secret in [
                value,
                DEFAULT_CLIENT_SECRET,
                DEFAULT_SUBSCRIPTION_KEY,
                DEFAULT_DATABRICKS_TOKEN,
            ] {
                assert!(
                    !contains_bytes(&bytes, secret),
                    "`{secret}` in {}",
                    path.display()
                );
            }
        }
    }
    assert!(
        emu.stats()["invocations"]["per_job"]
            .as_object()
            .unwrap()
            .is_empty(),
        "nothing ran"
    );
}

// ---- 7. soaks under faults ----

const FAULTS: &[&str] = &[
    "--fault-5xx",
    "0.2",
    "--fault-429",
    "0.1",
    "--lost-response-rate",
    "0.05",
    "--token-ttl",
    "3",
    "--retry-after",
    "0",
];

fn faulty_emulator(seed: &str) -> Emulator {
    let mut flags = FAULTS.to_vec();
    flags.extend(["--seed", seed]);
    Emulator::start(&flags)
}

/// One run of the example pipeline for `year`, with its own state directory.
fn soak_run(emu: &Emulator, target: &str, year: &str) -> Out {
    let state = emu.root().join(format!("state-soak-{target}-{year}"));
    output(
        emu.dwflow(&[
            "run",
            &repo_pipeline("turbine-assessment.yaml"),
            "-p",
            &format!("year={year}"),
            "--target",
            target,
            "--progress",
            "plain",
            "--poll-cap",
            "1s",
        ])
        .env("DWFLOW_STATE_DIR", state),
    )
}

fn assert_results(emu: &Emulator, year: &str, what: &str) {
    let reference = reference();
    for name in [format!("lhb-daily-{year}"), format!("lhb-ranking-{year}")] {
        assert_eq!(emu.csv(&name), reference[&name], "{what}: {name}");
    }
}

fn faults_injected(stats: &Value) -> (u64, u64, u64) {
    let f = &stats["faults"];
    (
        f["5xx"].as_u64().unwrap(),
        f["429"].as_u64().unwrap(),
        f["lost"].as_u64().unwrap(),
    )
}

/// Splits `total` runs over the lanes of [`YEARS`].
fn runs_of_lane(total: usize, lane: usize) -> usize {
    total / YEARS.len() + usize::from(lane < total % YEARS.len())
}

#[test]
fn soak_databricks_under_faults_every_run_succeeds_exactly_once() {
    reference();
    let emu = faulty_emulator("20261203");
    const RUNS: usize = 50;
    let started = Instant::now();
    // One lane per year, in parallel; half of them use the personal access token, half
    // OAuth M2M tokens that live 3 s.
    std::thread::scope(|s| {
        for (lane, year) in YEARS.into_iter().enumerate() {
            let target = if lane % 2 == 0 { "db" } else { "db-oauth" };
            let emu = &emu;
            s.spawn(move || {
                for i in 0..runs_of_lane(RUNS, lane) {
                    // Each run must write its results anew.
                    emu.remove_dataset(&format!("lhb-daily-{year}"));
                    emu.remove_dataset(&format!("lhb-ranking-{year}"));
                    let out = soak_run(emu, target, year);
                    let what = format!("{target} {year} run {i}");
                    assert_eq!(out.code, 0, "{what}: {out}");
                    assert_results(emu, year, &what);
                }
            });
        }
    });
    let stats = emu.stats();
    eprintln!(
        "databricks soak: {RUNS} runs in {:.1}s; faults (5xx, 429, lost): {:?}; tokens issued: {}",
        started.elapsed().as_secs_f64(),
        faults_injected(&stats),
        stats["tokens_issued"]
    );
    let (e5xx, e429, lost) = faults_injected(&stats);
    assert!(
        e5xx > 0 && e429 > 0 && lost > 0,
        "faults were injected: {stats}"
    );
    let runs = RUNS as u64;
    // Invocations were sent again (after 5xx, 429 and lost answers) with their tokens.
    assert!(
        request_delta(&Value::Null, &stats, "POST /api/2.1/jobs/run-now") > 2 * runs,
        "some run-now calls were retried: {stats}"
    );
    assert_eq!(count(&stats, "per_job", "Assessment"), runs, "{stats}");
    assert_eq!(count(&stats, "per_job", "TurbineRanking"), runs, "{stats}");
    let tokens = stats["invocations"]["per_idempotency_token"]
        .as_object()
        .unwrap();
    assert_eq!(tokens.len() as u64, 2 * runs, "one token per step per run");
    assert!(
        tokens.values().all(|n| n.as_u64() == Some(1)),
        "no idempotency token invoked more than once: {stats}"
    );
}

/// Records of one soak lane's runs (by the dataset they write).
fn lane_records(emu: &Emulator, year: &str) -> Vec<Value> {
    let names = [format!("lhb-daily-{year}"), format!("lhb-ranking-{year}")];
    emu.records()
        .into_iter()
        .filter(|r| {
            r["params"]["ResultDatasetName"]
                .as_str()
                .is_some_and(|n| names.iter().any(|x| x == n))
        })
        .collect()
}

/// Waits until every run of a lane has ended in the emulator (a run whose invocation
/// answer was lost keeps going after dwflow gave up on it).
fn wait_lane_idle(emu: &Emulator, year: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while lane_records(emu, year)
        .iter()
        .any(|r| r["result"].is_null())
    {
        assert!(Instant::now() < deadline, "runs of {year} never ended");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn soak_workbench_under_faults_never_reports_a_wrong_success() {
    reference();
    let emu = faulty_emulator("7");
    const RUNS: usize = 20;
    let started = Instant::now();
    let outcomes: Vec<(usize, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = YEARS
            .into_iter()
            .enumerate()
            .map(|(lane, year)| {
                let emu = &emu;
                s.spawn(move || {
                    let (mut ok, mut uncertain) = (0, 0);
                    for i in 0..runs_of_lane(RUNS, lane) {
                        let what = format!("wb {year} run {i}");
                        wait_lane_idle(emu, year);
                        emu.remove_dataset(&format!("lhb-daily-{year}"));
                        emu.remove_dataset(&format!("lhb-ranking-{year}"));
                        let before: Vec<Value> = lane_records(emu, year)
                            .into_iter()
                            .map(|r| r["run_id"].clone())
                            .collect();
                        let out = soak_run(emu, "wb", year);
                        // The emulator's runs this pipeline run started.
                        let new: Vec<Value> = lane_records(emu, year)
                            .into_iter()
                            .filter(|r| !before.contains(&r["run_id"]))
                            .collect();
                        for job in ["Assessment", "TurbineRanking"] {
                            let n = new.iter().filter(|r| r["job"] == job).count();
                            assert!(n <= 1, "{what}: {job} invoked {n} times: {out}");
                            if out.code == 0 {
                                assert_eq!(n, 1, "{what}: {job} did not run: {out}");
                            }
                        }
                        match out.code {
                            0 => {
                                ok += 1;
                                assert_results(emu, year, &what);
                            }
                            1 => {
                                uncertain += 1;
                                assert!(
                                    out.all().contains("may or may not have started"),
                                    "{what}: a failure other than an uncertain invocation: {out}"
                                );
                            }
                            _ => panic!("{what}: {out}"),
                        }
                    }
                    (ok, uncertain)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let stats = emu.stats();
    eprintln!(
        "workbench soak: {} runs in {:.1}s, (succeeded, uncertain) per lane: {outcomes:?}; faults (5xx, 429, lost): {:?}; tokens issued: {}",
        RUNS,
        started.elapsed().as_secs_f64(),
        faults_injected(&stats),
        stats["tokens_issued"]
    );
    let (e5xx, _, lost) = faults_injected(&stats);
    assert!(e5xx > 0 && lost > 0, "faults were injected: {stats}");
    assert!(
        outcomes.iter().any(|(ok, _)| *ok > 0),
        "some runs got through: {outcomes:?}"
    );
    // The stats agree with the runs counted per pipeline run above.
    let records = emu.records();
    for job in ["Assessment", "TurbineRanking"] {
        let n = records.iter().filter(|r| r["job"] == job).count() as u64;
        assert_eq!(count(&stats, "per_job", job), n, "{stats}");
    }
}

// ---- 8. validate --remote ----

#[test]
fn validate_remote_checks_jobs_and_parameters_against_the_emulator() {
    let emu = Emulator::start(&[]);
    let good = repo_pipeline("turbine-assessment.yaml");
    let bad = emu.file(
        "bad.yaml",
        "name: bad\nsteps:\n  - id: a\n    job: Assessment\n    params:\n      Yearr: \"2014\"\n  - id: b\n    job: NoSuchJob\n",
    );
    for target in BACKENDS {
        let out = emu.run(&["validate", "--remote", &good, "--target", target]);
        assert_eq!(out.code, 0, "{target}: {out}");
        let out = emu.run(&[
            "validate", "--remote", &bad, "--target", target, "--format", "json",
        ]);
        assert_eq!(out.code, 2, "{target}: {out}");
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        let codes: Vec<(String, u64, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["code"].as_str().unwrap().to_string(),
                    d["line"].as_u64().unwrap(),
                    d["column"].as_u64().unwrap(),
                )
            })
            .collect();
        let unknown_job = ("remote-unknown-job".to_string(), 8, 10);
        if target == "db" {
            assert_eq!(
                codes,
                [
                    ("remote-missing-param".to_string(), 5, 5),
                    ("remote-unknown-param".to_string(), 6, 7),
                    unknown_job,
                ],
                "{out}"
            );
            assert!(out.stdout.contains("ResultDatasetName"), "{out}");
            assert!(out.stdout.contains("did you mean `Year`"), "{out}");
        } else {
            // The gateway's job list has no parameters: names only, and a note says so.
            assert_eq!(codes, [unknown_job], "{out}");
            assert!(out.stderr.contains("parameters were not"), "{out}");
        }
    }
    assert!(
        emu.stats()["invocations"]["per_job"]
            .as_object()
            .unwrap()
            .is_empty(),
        "validation runs nothing"
    );
}
