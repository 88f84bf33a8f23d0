//! The run journal: an append-only JSON-lines file per pipeline run, written durably
//! (fsync per record) so that a run interrupted at any point can be resumed without
//! invoking any job twice. The remote run id is recorded before the first poll.
//!
//! Layout: `<state dir>/<run id>/journal.jsonl`, plus `pipeline.yaml` (the exact
//! definition the run started with). Secrets never reach it: secret parameters are
//! stored as `***` and re-supplied on resume.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::events::{Outcome, RunState};

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    RunStarted {
        run_id: String,
        pipeline: String,
        /// The pipeline file as given when the run started.
        path: String,
        /// SHA-256 of the pipeline file's content.
        source_sha256: String,
        /// Parameter values, secrets masked.
        params: IndexMap<String, Value>,
        /// Names of secret parameters (their values must be given again to resume).
        #[serde(default)]
        secret_params: Vec<String>,
        target: String,
        started_at: String,
        pid: u32,
    },
    /// The process resuming the run.
    Resumed {
        at: String,
        pid: u32,
    },
    /// About to invoke: written before the call, so that a crash between the call and
    /// its answer is re-invoked with the same idempotency key.
    Invoking {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        attempt: u32,
        job_id: u64,
        idempotency_key: String,
        params: IndexMap<String, String>,
        at: String,
    },
    Started {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        attempt: u32,
        remote_run_id: String,
        at: String,
    },
    AttemptFinished {
        step: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        item: Option<usize>,
        attempt: u32,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default)]
        retryable: bool,
        at: String,
    },
    StepFinished {
        step: String,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        #[serde(default)]
        outputs: IndexMap<String, String>,
        at: String,
    },
    RunFinished {
        state: RunState,
        at: String,
    },
}

/// Appends records to one run's journal.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
}

impl Journal {
    /// Creates the journal of a new run.
    pub fn create(
        state_dir: &Path,
        run_id: &str,
        pipeline_source: &str,
    ) -> std::io::Result<Journal> {
        let dir = state_dir.join(run_id);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("pipeline.yaml"), pipeline_source)?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(dir.join("journal.jsonl"))?;
        Ok(Journal { dir, file })
    }

    /// Opens an existing run's journal for appending (resume).
    pub fn open(state_dir: &Path, run_id: &str) -> std::io::Result<Journal> {
        let dir = state_dir.join(run_id);
        let file = OpenOptions::new()
            .append(true)
            .open(dir.join("journal.jsonl"))?;
        Ok(Journal { dir, file })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record and syncs it to disk before returning.
    pub fn append(&mut self, record: &Record) -> std::io::Result<()> {
        self.append_all(&[record])
    }

    /// Appends records and syncs them (and anything written before) to disk with one
    /// flush.
    pub fn append_all(&mut self, records: &[&Record]) -> std::io::Result<()> {
        self.write_all(records)?;
        self.file.sync_data()
    }

    /// Appends records without flushing them to disk.
    pub fn write_all(&mut self, records: &[&Record]) -> std::io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        for record in records {
            buf.push_str(&serde_json::to_string(record).map_err(std::io::Error::other)?);
            buf.push('\n');
        }
        // One write call: a crash leaves at most a torn last line, which `read` ignores.
        self.file.write_all(buf.as_bytes())
    }
}

/// Reads a journal; a torn final line (crash mid-write) is ignored.
pub fn read(state_dir: &Path, run_id: &str) -> std::io::Result<Vec<Record>> {
    // A run id is a name, never a path: `../x` or `/tmp/x` must not reach the disk.
    if run_id.is_empty()
        || !run_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{run_id}` is not a run id (see `dwflow runs list`)"),
        ));
    }
    let path = state_dir.join(run_id).join("journal.jsonl");
    let file = File::open(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            std::io::Error::new(
                e.kind(),
                format!(
                    "no run {run_id} in {} (see `dwflow runs list`)",
                    state_dir.display()
                ),
            )
        } else {
            e
        }
    })?;
    let mut out = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Record>(&line) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
    }
    Ok(out)
}

/// A pipeline run as `dwflow runs list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub pipeline: String,
    pub started_at: String,
    pub state: RunState,
    pub target: String,
}

/// Every run under `state_dir`, newest first. A run without `run_finished` whose owner
/// process is gone is shown as interrupted.
pub fn list(state_dir: &Path) -> std::io::Result<Vec<RunSummary>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let run_id = entry.file_name().to_string_lossy().to_string();
        let Ok(records) = read(state_dir, &run_id) else {
            continue;
        };
        let Some(Record::RunStarted {
            pipeline,
            started_at,
            target,
            pid,
            ..
        }) = records.first().cloned()
        else {
            continue;
        };
        let mut owner = pid;
        let mut state = RunState::Running;
        for r in &records {
            match r {
                Record::Resumed { pid, .. } => owner = *pid,
                Record::RunFinished { state: s, .. } => state = *s,
                _ => {}
            }
        }
        if state == RunState::Running && !process_alive(owner) {
            state = RunState::Interrupted;
        }
        out.push(RunSummary {
            run_id,
            pipeline,
            started_at,
            state,
            target,
        });
    }
    out.sort_by(|a, b| {
        b.started_at
            .cmp(&a.started_at)
            .then(b.run_id.cmp(&a.run_id))
    });
    Ok(out)
}

/// Whether a process with this pid exists (signal 0 probes without signalling).
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 performs only the permission/existence check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "r1", "name: x").unwrap();
        j.append(&Record::RunFinished {
            state: RunState::Succeeded,
            at: now(),
        })
        .unwrap();
        let path = dir.path().join("r1/journal.jsonl");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"type\":\"run_fin").unwrap();
        let records = read(dir.path(), "r1").unwrap();
        assert_eq!(records.len(), 1);
    }
}
