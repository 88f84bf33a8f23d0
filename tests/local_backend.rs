//! The embedded local environment on real files: SQL and command jobs, errors, cancel,
//! crash recovery, and the example Assessment job on the real La Haute Borne data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dwflow::backend::local::{LocalBackend, process_alive};
use dwflow::backend::{Backend, ErrorKind, JobRef, Lifecycle, RunId, RunResult, RunStatus};
use indexmap::IndexMap;
use serde_json::Value;

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const READINGS: &str = "site,day,value,count,note\n\
a,2024-01-01,1.5,3,x\n\
a,2024-01-02,,4,\n\
b,2024-01-01,2.25,5,hello\n";

const SUM_JOB: &str = r#"
name: Sum
description: Sums readings per site.
parameters:
  Input: {default: readings, description: The readings.}
  Out: {description: Where to write.}
sql:
  inputs: ["{{ Input }}"]
  output: "{{ Out }}"
  query: |
    SELECT site, sum(value) AS total, sum("count") AS n, count(note) AS notes,
           2.0 AS two, NULL AS missing
    FROM {{ Input | sql_ident }}
    GROUP BY site ORDER BY site
"#;

/// A workspace with a small dataset and a few jobs.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "datasets/readings.csv", READINGS);
    write(root, "jobs/Sum.yaml", SUM_JOB);
    write(
        root,
        "jobs/Bad.yaml",
        r#"
name: Bad
parameters:
  Out: {default: bad-out}
sql:
  inputs: [readings]
  output: "{{ Out }}"
  query: SELECT nope FROM readings
"#,
    );
    write(
        root,
        "jobs/Copy.yaml",
        r#"
name: Copy
parameters:
  In: {description: Input dataset.}
  Out: {description: Output dataset.}
sql:
  inputs: ["{{ In }}"]
  output: "{{ Out }}"
  query: SELECT * FROM {{ In | sql_ident }}
"#,
    );
    write(
        root,
        "jobs/Forever.yaml",
        r#"
name: Forever
parameters:
  Out: {default: forever}
sql:
  output: "{{ Out }}"
  query: |
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000000)
    SELECT count(*) AS n FROM c
"#,
    );
    write(
        root,
        "jobs/Shell.yaml",
        r#"
name: Shell
description: Runs a shell snippet.
parameters:
  Script: {description: The snippet.}
  Name: {default: world}
command:
  argv: [sh, -c, "{{ Script }}"]
  env:
    GREETING: "hello {{ Name }}"
"#,
    );
    dir
}

async fn id_of(b: &LocalBackend, name: &str) -> u64 {
    b.resolve_job(&JobRef::Name(name.to_string()))
        .await
        .unwrap()
}

fn params(pairs: &[(&str, &str)]) -> IndexMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Polls until the run is terminal (generous timeout: this is not a timing test).
async fn wait(b: &LocalBackend, run: &RunId, timeout: Duration) -> RunStatus {
    let start = Instant::now();
    loop {
        let s = b.status(run).await.unwrap();
        if s.is_terminal() {
            return s;
        }
        assert!(
            start.elapsed() < timeout,
            "run {run} not finished after {timeout:?}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn run_job(b: &LocalBackend, job: &str, p: &[(&str, &str)]) -> (RunId, RunStatus) {
    let id = id_of(b, job).await;
    let run = b.invoke(id, &params(p), "").await.unwrap();
    let status = wait(b, &run, Duration::from_secs(120)).await;
    (run, status)
}

#[tokio::test]
async fn sql_job_writes_a_typed_dataset() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let (run, status) = run_job(&b, "Sum", &[("Out", "sums")]).await;
    assert!(status.is_success(), "{status:?}");
    assert_eq!(status.outputs["output_dataset"], "sums");
    assert_eq!(status.outputs["output_rows"], "2");

    let rows = b.read_dataset("sums", None).await.unwrap();
    assert_eq!(
        rows.columns,
        ["site", "total", "n", "notes", "two", "missing"]
    );
    assert_eq!(rows.rows.len(), 2);
    let a = &rows.rows[0];
    assert_eq!(a[0], Value::from("a"));
    assert_eq!(a[1].as_f64(), Some(1.5));
    assert!(a[2].is_i64() && a[2] == 7, "{a:?}");
    assert_eq!(a[3], Value::from(1));
    assert!(a[4].is_f64() && a[4].as_f64() == Some(2.0), "{a:?}");
    assert_eq!(a[5], Value::Null);
    assert_eq!(rows.rows[1][1].as_f64(), Some(2.25));

    // Limit, and the source dataset itself: empty fields are NULL, types inferred.
    let src = b.read_dataset("readings", Some(2)).await.unwrap();
    assert_eq!(src.rows.len(), 2);
    assert_eq!(src.rows[1][2], Value::Null);
    assert_eq!(src.rows[1][4], Value::Null);
    assert_eq!(src.rows[0][3], Value::from(3));
    assert_eq!(src.rows[0][1], Value::from("2024-01-01"));

    // Listed and found, with columns; the generated dataset lives under .dwflow.
    let all = b.list_datasets().await.unwrap();
    let names: Vec<&str> = all.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["readings", "sums"]);
    assert_eq!(all[0].columns, ["site", "day", "value", "count", "note"]);
    let found = b.find_dataset("sums").await.unwrap().unwrap();
    assert_eq!(found.rows, Some(2));
    assert!(found.created.is_some());
    assert!(b.find_dataset("nothing-here").await.unwrap().is_none());
    assert!(ws.path().join(".dwflow/datasets/sums.csv").is_file());

    // The run left a record.
    let rec = b.run_record(&run).unwrap();
    assert_eq!(rec.job, "Sum");
    assert_eq!(rec.params["Input"], "readings");
    assert_eq!(rec.output_dataset.as_deref(), Some("sums"));
    assert_eq!(rec.result, Some(RunResult::Success));
    assert!(rec.started.is_some() && rec.ended.is_some());
    let on_disk = ws.path().join(format!(".dwflow/local-runs/{run}.json"));
    assert!(on_disk.is_file());

    // A downstream job reads the generated dataset (from the cache).
    let (_, status) = run_job(&b, "Copy", &[("In", "sums"), ("Out", "sums-copy")]).await;
    assert!(status.is_success(), "{status:?}");
    let copy = b.read_dataset("sums-copy", None).await.unwrap();
    assert_eq!(copy, rows);
}

#[tokio::test]
async fn a_changed_dataset_is_imported_again() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let first = b.read_dataset("readings", None).await.unwrap();
    assert_eq!(first.rows.len(), 3);
    write(
        ws.path(),
        "datasets/readings.csv",
        &format!("{READINGS}c,2024-01-03,9.5,1,late\n"),
    );
    let second = b.read_dataset("readings", None).await.unwrap();
    assert_eq!(second.rows.len(), 4);
}

#[tokio::test]
async fn declared_column_types_win() {
    let ws = workspace();
    write(ws.path(), "datasets/codes.csv", "code,n\n007,1\n010,2\n");
    write(
        ws.path(),
        "datasets/codes.schema.yaml",
        "columns:\n  code: text\n  n: real\n",
    );
    write(ws.path(), "datasets/wrong.csv", "n\n1\nx\n");
    write(
        ws.path(),
        "datasets/wrong.schema.yaml",
        "columns: {n: integer}\n",
    );
    let b = LocalBackend::open(ws.path()).unwrap();
    let rows = b.read_dataset("codes", None).await.unwrap();
    assert_eq!(rows.rows[0][0], Value::from("007"));
    assert!(rows.rows[1][1].is_f64());
    let err = b.read_dataset("wrong", None).await.unwrap_err();
    assert!(
        err.message.contains("datasets/wrong.csv") && err.message.contains("line 3"),
        "{err}"
    );
}

#[tokio::test]
async fn failing_sql_reports_the_sqlite_error() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let (_, status) = run_job(&b, "Bad", &[]).await;
    assert_eq!(status.lifecycle, Lifecycle::Terminated);
    assert_eq!(status.result, Some(RunResult::Failed));
    assert!(!status.is_success());
    let msg = status.message.unwrap();
    assert!(msg.contains("no such column: nope"), "{msg}");
    assert!(!ws.path().join(".dwflow/datasets/bad-out.csv").exists());
}

#[tokio::test]
async fn a_query_must_only_read() {
    let ws = workspace();
    write(
        ws.path(),
        "jobs/Attach.yaml",
        "name: Attach\nsql:\n  output: x\n  query: ATTACH DATABASE 'evil.db' AS evil\n",
    );
    write(
        ws.path(),
        "jobs/Undeclared.yaml",
        "name: Undeclared\nsql:\n  output: y\n  query: SELECT * FROM readings\n",
    );
    let b = LocalBackend::open(ws.path()).unwrap();
    let (_, status) = run_job(&b, "Attach", &[]).await;
    assert_eq!(status.result, Some(RunResult::Failed));
    assert!(status.message.unwrap().contains("read-only"));
    assert!(!ws.path().join("evil.db").exists());
    let (_, status) = run_job(&b, "Undeclared", &[]).await;
    let msg = status.message.unwrap();
    assert!(
        msg.contains("no such table: readings") && msg.contains("sql.inputs"),
        "{msg}"
    );
}

#[tokio::test]
async fn parameters_are_checked() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let id = id_of(&b, "Sum").await;

    let err = b
        .invoke(id, &params(&[("Out", "x"), ("Inptu", "y")]), "")
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.message.contains("`Inptu`"), "{err}");
    assert!(err.message.contains("Input, Out"), "{err}");

    let err = b.invoke(id, &params(&[]), "").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(
        err.message.contains("missing required parameter `Out`"),
        "{err}"
    );

    let err = b.invoke(12345, &params(&[]), "").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);

    // Jobs describe their parameters, defaults and descriptions.
    let info = b
        .describe_job(&JobRef::Name("Sum".to_string()))
        .await
        .unwrap();
    assert_eq!(info.id, id);
    assert_eq!(info.creator.as_deref(), Some("local"));
    assert!(info.created.is_some());
    let p = info.parameters.unwrap();
    assert_eq!(p[0].name, "Input");
    assert_eq!(p[0].default.as_deref(), Some("readings"));
    assert_eq!(p[1].default, None);
    assert_eq!(p[1].description.as_deref(), Some("Where to write."));
    let jobs = b.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 5);
}

#[tokio::test]
async fn bad_job_files_are_named() {
    let ws = workspace();
    write(
        ws.path(),
        "jobs/Typo.yaml",
        "name: Typo\nsql:\n  qurey: SELECT 1\n  output: x\n",
    );
    let b = LocalBackend::open(ws.path()).unwrap();
    let err = b.list_jobs().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.message.contains("jobs/Typo.yaml:3:"), "{err}");
    assert!(err.message.contains("qurey"), "{err}");
    // The other jobs still work.
    let info = b
        .describe_job(&JobRef::Name("Sum".to_string()))
        .await
        .unwrap();
    let run = b
        .invoke(info.id, &params(&[("Out", "ok")]), "")
        .await
        .unwrap();
    let status = wait(&b, &run, Duration::from_secs(60)).await;
    assert!(status.is_success(), "{status:?}");
}

#[tokio::test]
async fn idempotency_key_returns_the_same_run() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let id = id_of(&b, "Sum").await;
    let p = params(&[("Out", "once")]);
    let r1 = b.invoke(id, &p, "pipeline-1/aggregate/1").await.unwrap();
    let r2 = b.invoke(id, &p, "pipeline-1/aggregate/1").await.unwrap();
    assert_eq!(r1, r2);
    let r3 = b.invoke(id, &p, "pipeline-1/aggregate/2").await.unwrap();
    assert_ne!(r1, r3);
    wait(&b, &r1, Duration::from_secs(60)).await;
    wait(&b, &r3, Duration::from_secs(60)).await;
    // Also from another instance (another process would see the same files).
    let again = LocalBackend::open(ws.path()).unwrap();
    let r4 = again
        .invoke(id, &p, "pipeline-1/aggregate/1")
        .await
        .unwrap();
    assert_eq!(r1, r4);
    let runs = std::fs::read_dir(ws.path().join(".dwflow/local-runs"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(runs, 2);
}

#[tokio::test]
async fn dataset_names_cannot_leave_the_workspace() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let copy = id_of(&b, "Copy").await;
    for bad in ["../x", "/etc/passwd", "a/b", "..", "", ".dwflow", "x\\y"] {
        let err = b
            .invoke(copy, &params(&[("In", bad), ("Out", "fine")]), "")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "input {bad:?}: {err}");
        assert!(err.message.contains("input"), "{err}");
        let err = b
            .invoke(copy, &params(&[("In", "readings"), ("Out", bad)]), "")
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "output {bad:?}: {err}");
        assert!(err.message.contains("output"), "{err}");
        let err = b.read_dataset(bad, None).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "read {bad:?}: {err}");
        let err = b.find_dataset(bad).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Invalid, "find {bad:?}: {err}");
    }
    // A job may not overwrite a source dataset.
    let err = b
        .invoke(
            copy,
            &params(&[("In", "readings"), ("Out", "readings")]),
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Invalid);
    assert!(err.message.contains("source dataset"), "{err}");
    // Run ids are not paths either.
    let err = b
        .status(&RunId("../../etc/passwd".into()))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(!ws.path().parent().unwrap().join("x.csv").exists());
}

#[tokio::test]
async fn command_job_reports_outputs() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let script = r#"echo "$GREETING from $DWFLOW_JOB"; echo "{\"rows\": 42, \"name\": \"$DWFLOW_PARAM_Name\", \"plain\": \"$Name\"}""#;
    let (run, status) = run_job(&b, "Shell", &[("Script", script), ("Name", "Lyon")]).await;
    assert!(status.is_success(), "{status:?}");
    assert_eq!(status.outputs["rows"], "42");
    assert_eq!(status.outputs["name"], "Lyon");
    assert_eq!(status.outputs["plain"], "Lyon");
    let rec = b.run_record(&run).unwrap();
    assert!(
        rec.stdout_tail.starts_with("hello Lyon from Shell\n"),
        "{rec:?}"
    );
}

#[tokio::test]
async fn command_job_failure_keeps_stderr() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let (run, status) = run_job(
        &b,
        "Shell",
        &[("Script", "echo doing; echo boom >&2; exit 3")],
    )
    .await;
    assert_eq!(status.result, Some(RunResult::Failed));
    let msg = status.message.unwrap();
    assert!(msg.contains("exit code 3") && msg.contains("boom"), "{msg}");
    assert!(status.outputs.is_empty());
    let rec = b.run_record(&run).unwrap();
    assert_eq!(rec.stderr_tail, "boom\n");
    assert_eq!(rec.stdout_tail, "doing\n");

    let (_, status) = run_job(&b, "Shell", &[("Script", "kill -9 $$")]).await;
    assert!(status.message.unwrap().contains("SIGKILL"));
}

#[tokio::test]
async fn a_finished_command_leaves_no_process_behind() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let (_, status) = run_job(
        &b,
        "Shell",
        &[(
            "Script",
            "sleep 30 & echo $! > child.pid; echo '{\"ok\": 1}'",
        )],
    )
    .await;
    assert!(status.is_success(), "{status:?}");
    assert_eq!(status.outputs["ok"], "1");
    let child = read_pid(&ws.path().join("child.pid")).await;
    assert_gone(child).await;
}

async fn read_pid(path: &Path) -> u32 {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{path:?} never appeared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_gone(pid: u32) {
    let start = Instant::now();
    while process_alive(pid) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "process {pid} still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn cancel_command(script: &str) {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let id = id_of(&b, "Shell").await;
    let run = b
        .invoke(id, &params(&[("Script", script)]), "")
        .await
        .unwrap();
    let leader = read_pid(&ws.path().join("leader.pid")).await;
    let child = read_pid(&ws.path().join("child.pid")).await;
    assert!(process_alive(leader) && process_alive(child));
    assert_eq!(b.status(&run).await.unwrap().lifecycle, Lifecycle::Running);
    b.cancel(&run).await.unwrap();
    let after = b.status(&run).await.unwrap();
    assert!(
        matches!(
            after.lifecycle,
            Lifecycle::Terminating | Lifecycle::Terminated
        ),
        "{after:?}"
    );
    let status = wait(&b, &run, Duration::from_secs(60)).await;
    assert_eq!(status.result, Some(RunResult::Canceled), "{status:?}");
    // Once terminated, the whole process group is gone (the test only reaps nothing:
    // the leader is dwflow's child, the child is the leader's).
    assert!(!process_alive(leader), "leader {leader} survived");
    assert_gone(child).await;
    let rec = b.run_record(&run).unwrap();
    assert_eq!(rec.result, Some(RunResult::Canceled));
    // Cancelling again is harmless.
    b.cancel(&run).await.unwrap();
}

#[tokio::test]
async fn cancel_stops_the_whole_process_group() {
    cancel_command("sleep 30 & echo $! > child.pid; echo $$ > leader.pid; wait").await;
}

#[tokio::test]
async fn cancel_kills_a_group_that_ignores_sigterm() {
    // The child ignores SIGTERM: SIGKILL after the grace period ends it.
    cancel_command("trap '' TERM; sleep 30 & echo $! > child.pid; echo $$ > leader.pid; wait")
        .await;
}

#[tokio::test]
async fn cancel_interrupts_a_long_query() {
    let ws = workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let id = id_of(&b, "Forever").await;
    let run = b.invoke(id, &params(&[]), "").await.unwrap();
    let start = Instant::now();
    while b.status(&run).await.unwrap().lifecycle != Lifecycle::Running {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let asked = Instant::now();
    b.cancel(&run).await.unwrap();
    let status = wait(&b, &run, Duration::from_secs(30)).await;
    assert_eq!(status.result, Some(RunResult::Canceled), "{status:?}");
    assert!(asked.elapsed() < Duration::from_secs(10));
    assert!(!ws.path().join(".dwflow/datasets/forever.csv").exists());
}

#[tokio::test]
async fn a_run_whose_process_died_is_failed_and_retryable() {
    let ws = workspace();
    let runs = ws.path().join(".dwflow/local-runs");
    std::fs::create_dir_all(&runs).unwrap();

    // A dead dwflow process, whose command left a process group behind.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let mut leader = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .args(["-c", "sleep 30 >/dev/null 2>&1 & echo $!"])
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let mut out = String::new();
    std::io::Read::read_to_string(leader.stdout.as_mut().unwrap(), &mut out).unwrap();
    let orphan: u32 = out.trim().parse().unwrap();
    let pgid = leader.id();
    leader.wait().unwrap();
    assert!(process_alive(orphan));

    let record = |id: &str, pid: u32, extra: &str| {
        format!(
            r#"{{"run_id": "{id}", "job": "Shell", "state": "running",
                 "created": "2026-01-01T00:00:00Z",
                 "owner": {{"pid": {pid}, "instance": "gone"}}{extra}}}"#
        )
    };
    write(
        &runs,
        "local-crashed.json",
        &record("local-crashed", dead_pid, &format!(", \"pgid\": {pgid}")),
    );
    // Our own pid, but another (earlier) process: after a restart pids repeat.
    write(
        &runs,
        "local-restarted.json",
        &record("local-restarted", std::process::id(), ""),
    );
    write(
        &runs,
        "local-finished.json",
        r#"{"run_id": "local-finished", "job": "Sum", "state": "terminated", "result": "success",
            "owner": {"pid": 1, "instance": "x"}}"#,
    );

    write(
        &runs,
        "local-canceling.json",
        &record("local-canceling", dead_pid, "").replace("running", "terminating"),
    );

    let b = LocalBackend::open(ws.path()).unwrap();
    let s = b.status(&RunId("local-canceling".into())).await.unwrap();
    assert_eq!(s.result, Some(RunResult::Canceled));
    assert!(!s.retryable);
    for id in ["local-crashed", "local-restarted"] {
        let s = b.status(&RunId(id.into())).await.unwrap();
        assert_eq!(s.lifecycle, Lifecycle::Terminated, "{id}");
        assert_eq!(s.result, Some(RunResult::Failed), "{id}");
        assert!(s.retryable, "{id}");
        assert!(s.message.unwrap().contains("interrupted"), "{id}");
    }
    let s = b.status(&RunId("local-finished".into())).await.unwrap();
    assert!(s.is_success());
    // The record on disk says so too, and the orphaned group was stopped.
    let text = std::fs::read_to_string(runs.join("local-crashed.json")).unwrap();
    assert!(text.contains("interrupted"), "{text}");
    assert_gone(orphan).await;
    let err = b.status(&RunId("local-nope".into())).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
}

// ---------------------------------------------------------------------------------------
// The example workspace on the real La Haute Borne data.

fn example_workspace() -> (tempfile::TempDir, PathBuf) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workspace");
    let dir = tempfile::tempdir().unwrap();
    for sub in ["datasets", "jobs", "scripts"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(src.join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(sub).join(entry.file_name())).unwrap();
        }
    }
    let scada = src.join("datasets/la-haute-borne-scada.csv.gz");
    (dir, scada)
}

#[derive(Default, Debug)]
struct Day {
    rows: u32,
    records: u32,
    energy_kwh: f64,
    wind_sum: f64,
    wind_n: u32,
    max_power: Option<f64>,
}

/// The daily figures computed independently: chrono for the UTC day, plain sums.
fn expected_days(scada: &Path, year: i32) -> BTreeMap<(String, String), Day> {
    use chrono::Datelike;
    let file = std::fs::File::open(scada).unwrap();
    let mut rdr = csv::Reader::from_reader(flate2::read::GzDecoder::new(file));
    let headers = rdr.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let (t, d, p, w) = (
        col("Wind_turbine_name"),
        col("Date_time"),
        col("P_avg"),
        col("Ws_avg"),
    );
    let mut days: BTreeMap<(String, String), Day> = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let utc = chrono::DateTime::parse_from_rfc3339(&rec[d])
            .unwrap()
            .with_timezone(&chrono::Utc);
        if utc.year() != year {
            continue;
        }
        let day = days
            .entry((rec[t].to_string(), utc.format("%Y-%m-%d").to_string()))
            .or_default();
        day.rows += 1;
        if !rec[p].is_empty() {
            let power: f64 = rec[p].parse().unwrap();
            day.records += 1;
            day.energy_kwh += power * 10.0 / 60.0;
            day.max_power = Some(day.max_power.map_or(power, |m: f64| m.max(power)));
        }
        if !rec[w].is_empty() {
            day.wind_sum += rec[w].parse::<f64>().unwrap();
            day.wind_n += 1;
        }
    }
    days
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[tokio::test]
async fn assessment_on_the_real_data() {
    let (ws, scada) = example_workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let jobs: Vec<String> = b
        .list_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.name)
        .collect();
    assert_eq!(
        jobs,
        [
            "Assessment",
            "CompareYears",
            "QualityReport",
            "TurbineMonthly",
            "TurbineRanking"
        ]
    );

    let (_, status) = run_job(
        &b,
        "Assessment",
        &[
            ("InputDataset", "la-haute-borne-scada"),
            ("Year", "2014"),
            ("ResultDatasetName", "lhb-daily-2014"),
        ],
    )
    .await;
    assert!(status.is_success(), "{status:?}");
    let got = b.read_dataset("lhb-daily-2014", None).await.unwrap();
    assert_eq!(
        got.columns,
        [
            "turbine",
            "day",
            "records",
            "energy_kwh",
            "mean_wind_speed_ms",
            "max_power_kw"
        ]
    );
    let expected = expected_days(&scada, 2014);
    assert_eq!(got.rows.len(), expected.len());
    assert_eq!(got.rows.len(), 4 * 365);

    // Every row, in order (turbine, day), against the independent figures.
    let mut per_turbine: BTreeMap<String, usize> = BTreeMap::new();
    for (row, ((turbine, day), want)) in got.rows.iter().zip(&expected) {
        assert_eq!(row[0].as_str(), Some(turbine.as_str()));
        assert_eq!(row[1].as_str(), Some(day.as_str()));
        assert_eq!(
            row[2].as_u64(),
            Some(u64::from(want.records)),
            "{turbine} {day}"
        );
        assert!(
            close(row[3].as_f64().unwrap(), want.energy_kwh),
            "{turbine} {day}: {} vs {}",
            row[3],
            want.energy_kwh
        );
        match want.max_power {
            Some(m) => assert!(close(row[5].as_f64().unwrap(), m)),
            None => {
                assert_eq!(row[5], Value::Null);
                assert_eq!(row[3].as_f64(), Some(0.0), "an empty day's energy is 0");
            }
        }
        if want.wind_n > 0 {
            let mean = want.wind_sum / f64::from(want.wind_n);
            assert!(close(row[4].as_f64().unwrap(), mean));
        } else {
            assert_eq!(row[4], Value::Null);
        }
        *per_turbine.entry(turbine.clone()).or_default() += 1;
    }
    assert_eq!(per_turbine.len(), 4);
    assert!(per_turbine.values().all(|&n| n == 365));

    // Spot checks, one winter and one summer day, the last UTC day of the year (which
    // takes its last hour from rows stamped 2015-01-01 local time), and both DST changes.
    // The real data repeats six timestamps (03:00-03:50+02:00) on the spring change and
    // lacks six (02:00-02:50+02:00) on the autumn one: the UTC days have 150 and 138 rows.
    for (day, rows) in [
        ("2014-01-15", 144),
        ("2014-07-15", 144),
        ("2014-12-31", 144),
        ("2014-03-30", 150),
        ("2014-10-26", 138),
    ] {
        let want = &expected[&("R80711".to_string(), day.to_string())];
        assert_eq!(want.rows, rows, "{day}");
        let row = got
            .rows
            .iter()
            .find(|r| r[0] == "R80711" && r[1] == day)
            .unwrap();
        assert!(close(row[3].as_f64().unwrap(), want.energy_kwh), "{day}");
    }

    // The ranking.
    let (_, status) = run_job(
        &b,
        "TurbineRanking",
        &[
            ("InputDataset", "lhb-daily-2014"),
            ("AssetDataset", "la-haute-borne-assets"),
            ("ResultDatasetName", "lhb-ranking-2014"),
        ],
    )
    .await;
    assert!(status.is_success(), "{status:?}");
    let ranking = b.read_dataset("lhb-ranking-2014", None).await.unwrap();
    assert_eq!(
        ranking.columns,
        ["turbine", "energy_mwh", "days", "capacity_factor", "rank"]
    );
    let mut energy: BTreeMap<&str, f64> = BTreeMap::new();
    for ((turbine, _), d) in &expected {
        *energy.entry(turbine.as_str()).or_default() += d.energy_kwh;
    }
    let mut order: Vec<(&str, f64)> = energy.iter().map(|(t, e)| (*t, *e)).collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1));
    assert_eq!(ranking.rows.len(), 4);
    for (i, (row, (turbine, kwh))) in ranking.rows.iter().zip(&order).enumerate() {
        assert_eq!(row[0].as_str(), Some(*turbine));
        assert!(close(row[1].as_f64().unwrap(), kwh / 1000.0));
        assert_eq!(row[2].as_u64(), Some(365));
        // All four are 2,050 kW turbines; 2014 has 8,760 hours.
        assert!(close(row[3].as_f64().unwrap(), kwh / (2050.0 * 8760.0)));
        assert_eq!(row[4].as_u64(), Some(i as u64 + 1));
    }

    // The command job of the example counts the rows of the daily dataset.
    let (_, status) = run_job(&b, "QualityReport", &[("InputDataset", "lhb-daily-2014")]).await;
    assert!(status.is_success(), "{status:?}");
    assert_eq!(status.outputs["rows"], "1460");
}

#[tokio::test]
async fn assessment_2015_counts_the_2016_local_rows_in_2015() {
    let (ws, _) = example_workspace();
    let b = LocalBackend::open(ws.path()).unwrap();
    let (_, status) = run_job(
        &b,
        "Assessment",
        &[("Year", "2015"), ("ResultDatasetName", "lhb-daily-2015")],
    )
    .await;
    assert!(status.is_success(), "{status:?}");
    let got = b.read_dataset("lhb-daily-2015", None).await.unwrap();
    assert_eq!(got.rows.len(), 4 * 365);
    assert!(
        got.rows
            .iter()
            .all(|r| r[1].as_str().unwrap().starts_with("2015-"))
    );
    // 2015-12-31 UTC ends at 2016-01-01T00:50+01:00: a full day of 144 rows at most.
    let last = got
        .rows
        .iter()
        .filter(|r| r[1] == "2015-12-31")
        .map(|r| r[2].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(last > 138 && last <= 144, "{last}");
    let bad = b
        .invoke(
            id_of(&b, "Assessment").await,
            &params(&[("Year", "2015; DROP"), ("ResultDatasetName", "x")]),
            "",
        )
        .await
        .unwrap_err();
    assert_eq!(bad.kind, ErrorKind::Invalid, "{bad}");
}

#[tokio::test]
async fn syntax_errors_point_into_the_query() {
    let ws = workspace();
    write(
        ws.path(),
        "jobs/Syntax.yaml",
        "name: Syntax\nsql:\n  output: s\n  query: |\n    SELECT 1 AS a,\n      2 AS FROM\n",
    );
    let b = LocalBackend::open(ws.path()).unwrap();
    let (_, status) = run_job(&b, "Syntax", &[]).await;
    let msg = status.message.unwrap();
    assert!(
        msg.contains("syntax error") && msg.contains("query line 2"),
        "{msg}"
    );
}
