//! Command tasks: a process in its own process group, with the run's parameters in its
//! environment. Cancel (and the end of the run) stop the whole group: SIGTERM, then
//! SIGKILL after a grace period.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indexmap::IndexMap;

use super::process::{group_alive, signal_group, start_ticks};
use super::{Inner, Outcome, RunHandle};

/// Time a process group gets between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// How much of stdout and stderr a run keeps (the end of each).
pub const TAIL_BYTES: usize = 64 * 1024;

/// How much of stderr goes into a failure message.
const MESSAGE_STDERR_CHARS: usize = 2000;

/// The last `cap` bytes written to a stream.
#[derive(Default)]
struct Tail {
    buf: VecDeque<u8>,
    cap: usize,
}

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend(bytes);
        if self.buf.len() > self.cap {
            let excess = self.buf.len() - self.cap;
            self.buf.drain(..excess);
        }
    }
    fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }
}

/// Reads a pipe to its end into a tail buffer (on its own thread).
fn drain<R: Read + Send + 'static>(
    mut r: R,
    tail: Arc<Mutex<Tail>>,
) -> std::sync::mpsc::Receiver<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => tail
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(&buf[..n]),
            }
        }
        let _ = tx.send(());
    });
    rx
}

/// Checks a task's working directory: relative to the workspace and inside it.
pub(crate) fn check_cwd(cwd: &str) -> Result<(), String> {
    let p = Path::new(cwd);
    if p.is_absolute() {
        return Err(format!(
            "`command.cwd` is `{cwd}`: it must be relative to the workspace"
        ));
    }
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "`command.cwd` is `{cwd}`: it must stay inside the workspace (no `..`)"
        ));
    }
    Ok(())
}

/// The values of the last non-empty line of stdout, when it is a JSON object of strings
/// and numbers.
pub(crate) fn reported_outputs(stdout: &str) -> IndexMap<String, String> {
    let Some(last) = stdout.lines().rev().map(str::trim).find(|l| !l.is_empty()) else {
        return IndexMap::new();
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(last) else {
        return IndexMap::new();
    };
    let mut out = IndexMap::new();
    for (k, v) in map {
        match v {
            serde_json::Value::String(s) => {
                out.insert(k, s);
            }
            serde_json::Value::Number(n) => {
                out.insert(k, n.to_string());
            }
            _ => return IndexMap::new(),
        }
    }
    out
}

fn last_chars(s: &str, n: usize) -> &str {
    let count = s.chars().count();
    if count <= n {
        return s;
    }
    let skip = s.char_indices().nth(count - n).map(|(i, _)| i).unwrap_or(0);
    &s[skip..]
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Stops what is left of a process group: SIGTERM, SIGKILL after the grace period,
/// then waits (bounded) until no member is left.
fn stop_group(pgid: u32, already_termed_at: Option<Instant>) {
    if !group_alive(pgid) {
        return;
    }
    let termed = already_termed_at.unwrap_or_else(|| {
        signal_group(pgid, libc::SIGTERM);
        Instant::now()
    });
    while termed.elapsed() < GRACE {
        if !group_alive(pgid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while group_alive(pgid) && Instant::now() < deadline {
        signal_group(pgid, libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) struct CommandSpec<'a> {
    pub argv: &'a [String],
    pub env: &'a IndexMap<String, String>,
    pub cwd: Option<&'a str>,
    pub params: &'a IndexMap<String, String>,
    pub job: &'a str,
    pub run_id: &'a str,
}

pub(crate) fn run(inner: &Inner, handle: &RunHandle, spec: CommandSpec<'_>) -> Outcome {
    let root = &inner.paths.root;
    let dir = match spec.cwd {
        Some(cwd) => {
            if let Err(m) = check_cwd(cwd) {
                return Outcome::failed(m);
            }
            root.join(cwd)
        }
        None => root.clone(),
    };
    if !dir.is_dir() {
        return Outcome::failed(format!(
            "the working directory `{}` does not exist in the workspace",
            spec.cwd.unwrap_or(".")
        ));
    }
    let program = &spec.argv[0];
    let program_path = if program.contains('/') && !Path::new(program).is_absolute() {
        dir.join(program).into_os_string()
    } else {
        program.into()
    };
    let mut cmd = Command::new(&program_path);
    cmd.args(&spec.argv[1..])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .env("DWFLOW_WORKSPACE", root)
        .env("DWFLOW_DATASETS_DIR", &inner.paths.datasets)
        .env("DWFLOW_OUTPUT_DIR", &inner.paths.generated)
        .env("DWFLOW_RUN_ID", spec.run_id)
        .env("DWFLOW_JOB", spec.job);
    for (k, v) in spec.params {
        cmd.env(format!("DWFLOW_PARAM_{k}"), v).env(k, v);
    }
    for (k, v) in spec.env {
        cmd.env(k, v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::failed(format!("cannot start `{program}`: {e}")),
    };
    let pgid = child.id();
    handle.set_process_group(inner, pgid, start_ticks(pgid));

    let out_tail = Arc::new(Mutex::new(Tail {
        cap: TAIL_BYTES,
        ..Tail::default()
    }));
    let err_tail = Arc::new(Mutex::new(Tail {
        cap: TAIL_BYTES,
        ..Tail::default()
    }));
    let out_done = child.stdout.take().map(|s| drain(s, Arc::clone(&out_tail)));
    let err_done = child.stderr.take().map(|s| drain(s, Arc::clone(&err_tail)));

    let mut termed_at: Option<Instant> = None;
    let mut killed = false;
    let mut pause = Duration::from_millis(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        if handle.cancel_requested() {
            match termed_at {
                None => {
                    signal_group(pgid, libc::SIGTERM);
                    termed_at = Some(Instant::now());
                }
                Some(t) if t.elapsed() >= GRACE && !killed => {
                    signal_group(pgid, libc::SIGKILL);
                    killed = true;
                }
                _ => {}
            }
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    // The leader is gone and reaped; anything left in its group goes too.
    stop_group(pgid, termed_at);
    for done in [out_done, err_done].into_iter().flatten() {
        // A process outside the group may still hold the pipe: do not wait for ever.
        let _ = done.recv_timeout(Duration::from_secs(2));
    }
    let stdout = out_tail.lock().unwrap_or_else(|p| p.into_inner()).text();
    let stderr = err_tail.lock().unwrap_or_else(|p| p.into_inner()).text();
    handle.set_output_tails(stdout.clone(), stderr.clone());

    if handle.cancel_requested() {
        return Outcome::Canceled;
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("waiting for `{program}` failed: {e}")),
    };
    if status.success() {
        return Outcome::Success {
            outputs: reported_outputs(&stdout),
        };
    }
    let what = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig} ({})", signal_name(sig)),
        _ => "the process failed".to_string(),
    };
    let err = stderr.trim();
    if err.is_empty() {
        Outcome::failed(format!("{what} (no stderr output)"))
    } else {
        Outcome::failed(format!(
            "{what}; stderr: {}",
            last_chars(err, MESSAGE_STDERR_CHARS)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_from_last_line() {
        let o = reported_outputs("hello\n{\"rows\": 12, \"name\": \"x\"}\n\n");
        assert_eq!(o["rows"], "12");
        assert_eq!(o["name"], "x");
        assert!(reported_outputs("{\"a\": [1]}\n").is_empty());
        assert!(reported_outputs("{\"a\": 1}\nthe end\n").is_empty());
        assert!(reported_outputs("").is_empty());
    }

    #[test]
    fn cwd_stays_inside() {
        assert!(check_cwd("scripts").is_ok());
        assert!(check_cwd("./a/b").is_ok());
        assert!(check_cwd("../x").is_err());
        assert!(check_cwd("/tmp").is_err());
        assert!(check_cwd("a/../../b").is_err());
    }

    #[test]
    fn tail_keeps_the_end() {
        let mut t = Tail {
            cap: 4,
            ..Tail::default()
        };
        t.push(b"abc");
        t.push(b"defg");
        assert_eq!(t.text(), "defg");
    }
}
