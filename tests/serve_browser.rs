//! End-to-end test of `dwflow serve` and its web page in a real browser: starts the
//! binary on a free port with the repository's `pipelines/turbine-assessment.yaml` and a
//! copy of `examples/workspace`, then runs `tests/browser/ui.mjs` (playwright-core driving
//! the system Chromium), which starts the pipeline from the page and waits for every step
//! of the run page's DAG to turn green.
//!
//! Needs Node.js, `npm ci` in `tests/browser` and Chromium (`apt-get install chromium`, or
//! env `CHROMIUM` pointing at a binary). Without them the test prints why it is skipped
//! and passes, unless env `CI` is set, where it fails instead.
//! The final page is saved as a screenshot (env `SCREENSHOT`, default
//! `target/tmp/serve_browser.png`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// ui.mjs gives up by itself after 150 s; this is only a backstop.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(200);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running `dwflow serve`, stopped when dropped (also when the test panics).
struct Server {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn log(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first: the service shuts down gracefully; then make sure.
        // SAFETY: kill(2) on the pid of a child we own and have not reaped yet.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the browser test needs beyond Rust, or why it cannot run.
fn missing_prerequisites() -> Vec<String> {
    let mut missing = Vec::new();
    let node_ok = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        missing.push(
            "Node.js 20 or newer (`node` on PATH), e.g. `apt-get install nodejs npm`".to_string(),
        );
    }
    let pw = repo().join("tests/browser/node_modules/playwright-core");
    if !pw.is_dir() {
        missing.push(format!("{} (run `npm ci` in tests/browser)", pw.display()));
    }
    let chromium = chromium();
    if !chromium.is_file() {
        missing.push(format!(
            "Chromium at {} (`apt-get install chromium`, or set CHROMIUM to a Chromium binary)",
            chromium.display()
        ));
    }
    missing
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Copies a directory tree, leaving out `.dwflow/` (run state and the dataset cache).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".dwflow" {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&src, &dst);
        } else if kind.is_file() {
            std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copying {}: {e}", src.display()));
        }
    }
}

fn start_server(tmp: &Path) -> (Server, u16) {
    let pipelines = tmp.join("pipelines");
    std::fs::create_dir_all(&pipelines).unwrap();
    std::fs::copy(
        repo().join("pipelines/turbine-assessment.yaml"),
        pipelines.join("turbine-assessment.yaml"),
    )
    .unwrap();
    let workspace = tmp.join("workspace");
    copy_tree(&repo().join("examples/workspace"), &workspace);

    let mut child = Command::new(env!("CARGO_BIN_EXE_dwflow"))
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--pipelines")
        .arg(&pipelines)
        .arg("--db")
        .arg(tmp.join("service.sqlite"))
        .arg("--state-dir")
        .arg(tmp.join("runs"))
        .arg("--workspace")
        .arg(&workspace)
        .current_dir(tmp)
        // Hermetic: no token (the page then needs none), no outside configuration.
        .env_remove("DWFLOW_API_TOKEN")
        .env_remove("DWFLOW_WEBHOOK_SECRET")
        .env_remove("DWFLOW_TARGET")
        .env_remove("DWFLOW_CONFIG")
        .env_remove("DWFLOW_WORKSPACE")
        .env_remove("DWFLOW_DB")
        .env_remove("DWFLOW_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting dwflow serve");

    // Read stderr for the whole life of the server: the first `listening` line gives the
    // port, everything is kept for the failure report.
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel::<u16>();
    let pipe = child.stderr.take().unwrap();
    let log = Arc::clone(&stderr);
    std::thread::spawn(move || {
        const PREFIX: &str = "dwflow serve listening on http://";
        let mut tx = Some(tx);
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.trim().strip_prefix(PREFIX)
                && let Some(port) = rest
                    .trim_end_matches('/')
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(port);
            }
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let mut server = Server { child, stderr };

    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(port) => return (server, port),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "dwflow serve ended without saying where it listens ({:?}); its stderr:\n{}",
                    server.child.try_wait(),
                    server.log()
                );
            }
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            std::thread::sleep(Duration::from_millis(100));
            panic!(
                "dwflow serve exited ({status}) at start; its stderr:\n{}",
                server.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "dwflow serve did not print `dwflow serve listening on http://...` within {STARTUP_TIMEOUT:?}; its stderr:\n{}",
            server.log()
        );
    }
}

/// Runs a command to its end (or kills it after `timeout`): exit code, stdout, stderr.
fn run_with_timeout(mut cmd: Command, timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting node");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + timeout;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        code,
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    )
}

#[test]
fn web_page_runs_a_pipeline_and_its_steps_turn_green() {
    let missing = missing_prerequisites();
    if !missing.is_empty() {
        let what = missing.join("; ");
        if std::env::var_os("CI").is_some() {
            panic!("the browser test cannot run; install: {what}");
        }
        eprintln!("skipped: serve_browser needs {what}");
        return;
    }

    let tmp = tempfile::tempdir().unwrap();
    let (server, port) = start_server(tmp.path());
    let url = format!("http://127.0.0.1:{port}");
    eprintln!("dwflow serve at {url}");

    let screenshot = std::env::var_os("SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("serve_browser.png"));
    let mut node = Command::new("node");
    node.arg(repo().join("tests/browser/ui.mjs"))
        .arg(&url)
        .current_dir(repo().join("tests/browser"))
        .env("SCREENSHOT", &screenshot)
        .env("CHROMIUM", chromium());
    let (code, stdout, stderr) = run_with_timeout(node, BROWSER_TIMEOUT);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert_eq!(
        code,
        Some(0),
        "the browser test failed (exit {code:?}).\n--- ui.mjs stdout:\n{stdout}\n--- ui.mjs stderr:\n{stderr}\n--- dwflow serve stderr:\n{}",
        server.log()
    );
    eprintln!("screenshot: {}", screenshot.display());
    drop(server);
}
