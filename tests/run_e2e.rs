//! End-to-end tests of `dwflow run` / `resume` / `runs` / `datasets` through the real
//! binary, on a small local workspace built in a temporary directory.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dwflow"))
}

struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    fn new() -> Ws {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("ws/datasets")).unwrap();
        std::fs::create_dir_all(dir.path().join("ws/jobs")).unwrap();
        std::fs::write(
            dir.path().join("ws/datasets/readings.csv"),
            "turbine,value\nT1,10\nT1,20\nT2,5\nT2,\nT3,7\n",
        )
        .unwrap();
        Ws { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn job(&self, name: &str, body: &str) {
        std::fs::write(self.path().join(format!("ws/jobs/{name}.yaml")), body).unwrap();
    }
    fn pipeline(&self, body: &str) -> PathBuf {
        let p = self.path().join("pipeline.yaml");
        std::fs::write(&p, body).unwrap();
        p
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("DWFLOW_WORKSPACE", self.path().join("ws"))
            .env("DWFLOW_STATE_DIR", self.path().join("state"))
            .current_dir(self.path());
        c
    }
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cmd(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }
    /// Local run records, as JSON values.
    fn records(&self) -> Vec<serde_json::Value> {
        let dir = self.path().join("ws/.dwflow/local-runs");
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    let text = std::fs::read_to_string(e.path()).unwrap();
                    out.push(serde_json::from_str(&text).unwrap());
                }
            }
        }
        out
    }
}

const SUM_JOB: &str = r#"
name: Sum
parameters:
  InputDataset: {description: Readings.}
  ResultDatasetName: {description: Where to write.}
sql:
  inputs: ["{{ InputDataset }}"]
  output: "{{ ResultDatasetName }}"
  query: |
    SELECT turbine, COUNT(value) AS n, COALESCE(SUM(value), 0) AS total
    FROM "{{ InputDataset }}" GROUP BY turbine ORDER BY turbine
"#;

const RANK_JOB: &str = r#"
name: Rank
parameters:
  InputDataset: {}
  ResultDatasetName: {}
sql:
  inputs: ["{{ InputDataset }}"]
  output: "{{ ResultDatasetName }}"
  query: |
    SELECT turbine, total, RANK() OVER (ORDER BY total DESC) AS rank
    FROM "{{ InputDataset }}" ORDER BY rank
"#;

const TWO_STEPS: &str = r#"
name: two
params:
  tag: {type: string, default: t}
steps:
  - id: sum
    job: Sum
    params:
      InputDataset: readings
      ResultDatasetName: "sums-{{ params.tag }}"
  - id: rank
    job: Rank
    params:
      InputDataset: "{{ steps.sum.outputs.ResultDatasetName }}"
      ResultDatasetName: "ranks-{{ params.tag }}"
"#;

#[test]
fn two_step_pipeline_runs_and_results_are_readable() {
    let ws = Ws::new();
    ws.job("Sum", SUM_JOB);
    ws.job("Rank", RANK_JOB);
    let p = ws.pipeline(TWO_STEPS);
    let (code, stdout, stderr) = ws.run(&[
        "run",
        p.to_str().unwrap(),
        "--progress",
        "plain",
        "-p",
        "tag=x",
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(stdout.contains("sum") && stdout.contains("rank"));
    assert!(stdout.contains("ResultDatasetName=ranks-x"), "{stdout}");
    assert!(stderr.contains("sum: invoking Sum"), "{stderr}");
    let (code, csv, _) = ws.run(&["datasets", "show", "ranks-x", "--format", "csv"]);
    assert_eq!(code, 0);
    assert_eq!(csv, "turbine,total,rank\nT1,30,1\nT3,7,2\nT2,5,3\n");
    let (code, json, _) = ws.run(&["datasets", "show", "sums-x", "--format", "json"]);
    assert_eq!(code, 0);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(rows[1]["turbine"], "T2");
    assert_eq!(rows[1]["n"], 1, "an empty value is NULL, not 0");
    let (code, list, _) = ws.run(&["runs", "list"]);
    assert_eq!(code, 0);
    assert!(list.contains("two") && list.contains("succeeded"), "{list}");
}

#[test]
fn json_summary_lists_steps_and_outputs() {
    let ws = Ws::new();
    ws.job("Sum", SUM_JOB);
    ws.job("Rank", RANK_JOB);
    let p = ws.pipeline(TWO_STEPS);
    let (code, stdout, _) = ws.run(&[
        "run",
        p.to_str().unwrap(),
        "--progress",
        "none",
        "--format",
        "json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["state"], "succeeded");
    assert_eq!(v["steps"][1]["outputs"]["InputDataset"], "sums-t");
    assert!(
        v["steps"][0]["remote_run_ids"][0]
            .as_str()
            .unwrap()
            .starts_with("local-")
    );
}

#[test]
fn a_failing_sql_job_exits_1_with_the_engine_message() {
    let ws = Ws::new();
    ws.job(
        "Sum",
        &SUM_JOB.replace("COUNT(value)", "COUNT(no_such_column)"),
    );
    ws.job("Rank", RANK_JOB);
    let p = ws.pipeline(TWO_STEPS);
    let (code, stdout, stderr) = ws.run(&["run", p.to_str().unwrap(), "--progress", "plain"]);
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("no such column: no_such_column"),
        "{stdout}"
    );
    assert!(stdout.contains("not_run"), "rank must not run: {stdout}");
}

#[test]
fn a_command_job_reports_outputs_that_flow_downstream() {
    let ws = Ws::new();
    ws.job(
        "Count",
        r#"
name: Count
parameters:
  Label: {default: "x"}
command:
  argv: ["sh", "-c", "echo working; echo '{\"rows\": 42, \"label\": \"'$Label'\"}'"]
"#,
    );
    ws.job(
        "Echo",
        r#"
name: Echo
parameters:
  Rows: {}
command:
  argv: ["sh", "-c", "test \"$Rows\" = 42"]
"#,
    );
    let p = ws.pipeline(
        r#"
name: cmd
steps:
  - id: count
    job: Count
    params: {Label: hello}
  - id: check
    job: Echo
    params:
      Rows: "{{ steps.count.outputs.rows }}"
"#,
    );
    let (code, stdout, stderr) = ws.run(&["run", p.to_str().unwrap(), "--progress", "plain"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("rows=42") && stdout.contains("label=hello"),
        "{stdout}"
    );
}

#[test]
fn secret_values_reach_the_job_but_no_file_dwflow_or_the_workspace_writes() {
    let ws = Ws::new();
    ws.job(
        "Use",
        r#"
name: Use
parameters:
  Token: {}
  Label: {}
command:
  argv: ["sh", "-c", "test \"$(printf %s \"$Token\" | wc -c)\" -eq 17 && echo \"using $Token for $Label\" && echo \"$Token\" >&2"]
"#,
    );
    let p = ws.pipeline(
        r#"
name: secretive
params:
  token: {type: string, secret: true}
steps:
  - id: use
    job: Use
    params:
      Token: "{{ params.token }}"
      Label: "tok={{ params.token }}"
"#,
    );
    let (code, stdout, stderr) = ws.run(&[
        "run",
        p.to_str().unwrap(),
        "--progress",
        "plain",
        "-p",
        "token=Sup3rS3cret-value",
    ]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains("Sup3rS3cret") && !stderr.contains("Sup3rS3cret"));
    // Journals, run records, caches: nothing on disk holds the value.
    let mut files = 0;
    let mut stack = vec![ws.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = std::fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("Sup3rS3cret"),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }
    assert!(files > 3, "{files}");
    let records = ws.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["params"]["Token"], "***");
    assert_eq!(records[0]["params"]["Label"], "tok=***");
}

/// Reads a child's stderr lines on a thread.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
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

fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return;
            }
        }
    }
    panic!("never saw `{needle}`; saw:\n{}", seen.join("\n"));
}

fn wait_exit(child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dwflow did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

const SLEEP_JOB: &str = r#"
name: Sleep
parameters:
  Seconds: {default: "60"}
command:
  argv: ["sh", "-c", "sleep $Seconds & sleep $Seconds; wait"]
"#;

#[test]
fn ctrl_c_cancels_the_running_job_and_kills_its_process_group() {
    let ws = Ws::new();
    ws.job("Sleep", SLEEP_JOB);
    let p = ws.pipeline(
        "name: long\nsteps:\n  - id: nap\n    job: Sleep\n  - id: after\n    job: Sleep\n",
    );
    let mut child = ws
        .cmd(&["run", p.to_str().unwrap(), "--progress", "plain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_for_line(&rx, "nap: running", &mut seen);
    // The process group is recorded as soon as the command is spawned.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pgid = loop {
        let pgid = ws.records().first().and_then(|r| r["pgid"].as_u64());
        match pgid {
            Some(p) => break p as i32,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            None => panic!("no process group recorded: {:?}", ws.records()),
        }
    };
    assert!(alive(pgid));
    // SAFETY: sending SIGINT to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let code = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(code, 130);
    // SAFETY: signal 0 to the whole group only checks for existence. Orphaned members
    // are reaped by init asynchronously: allow a moment for that.
    let gone = (0..40).any(|_| {
        let gone = unsafe { libc::kill(-pgid, 0) } != 0;
        if !gone {
            std::thread::sleep(Duration::from_millis(50));
        }
        gone
    });
    assert!(gone, "the process group is gone");
    let record = &ws.records()[0];
    assert_eq!(record["result"], "canceled", "{record}");
    assert_eq!(ws.records().len(), 1, "nothing new was started");
    let (_, list, _) = ws.run(&["runs", "list"]);
    assert!(list.contains("canceled"), "{list}");
}

#[test]
fn kill_9_then_resume_completes_without_invoking_finished_steps_again() {
    let ws = Ws::new();
    ws.job("Sum", SUM_JOB);
    ws.job("Rank", RANK_JOB);
    ws.job("Sleep", SLEEP_JOB);
    let p = ws.pipeline(
        r#"
name: crash
steps:
  - id: sum
    job: Sum
    params: {InputDataset: readings, ResultDatasetName: sums}
  - id: nap
    job: Sleep
    params: {Seconds: "30"}
  - id: rank
    job: Rank
    params:
      InputDataset: "{{ steps.sum.outputs.ResultDatasetName }}"
      ResultDatasetName: ranks
"#,
    );
    let mut child = ws
        .cmd(&["run", p.to_str().unwrap(), "--progress", "plain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = lines_of(&mut child);
    let mut seen = Vec::new();
    wait_for_line(&rx, "nap: running", &mut seen);
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let (_, list, _) = ws.run(&["runs", "list", "--json"]);
    let runs: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(runs[0]["state"], "interrupted", "{list}");
    let run_id = runs[0]["run_id"].as_str().unwrap().to_string();

    // Make the retry short: the job file is read at invocation time.
    ws.job(
        "Sleep",
        &SLEEP_JOB.replace("sleep $Seconds & sleep $Seconds; wait", "sleep 1"),
    );
    let (code, stdout, stderr) = ws.run(&["resume", &run_id, "--progress", "plain"]);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let records = ws.records();
    let count = |job: &str| records.iter().filter(|r| r["job"] == job).count();
    assert_eq!(count("Sum"), 1, "a finished step was invoked again");
    assert_eq!(count("Rank"), 1);
    assert_eq!(
        count("Sleep"),
        2,
        "the interrupted run is retried as a new attempt"
    );
    let interrupted = records
        .iter()
        .find(|r| r["job"] == "Sleep" && r["result"] == "failed")
        .expect("the interrupted run");
    assert!(
        interrupted["message"]
            .as_str()
            .unwrap()
            .contains("interrupted"),
        "{interrupted}"
    );
    assert!(
        stderr.contains("attempt 2"),
        "the new attempt is visible: {stderr}"
    );
    let (_, list, _) = ws.run(&["runs", "list"]);
    assert!(list.contains("succeeded"), "{list}");
}
