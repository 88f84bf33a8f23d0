//! Run records: `.dwflow/local-runs/<run_id>.json`, one per run, rewritten atomically at
//! each change of state. They are what survives the process that ran the run.

use std::io::Write;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::process::Owner;
use crate::backend::{Lifecycle, RunResult, RunStatus};

/// Everything known about one local run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub job: String,
    #[serde(default)]
    pub job_id: u64,
    /// `sql` or `command`.
    #[serde(default)]
    pub task: String,
    #[serde(default)]
    pub params: IndexMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// RFC 3339 times.
    #[serde(default)]
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    pub state: Lifecycle,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RunResult>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub retryable: bool,
    /// Datasets an SQL task reads.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// The dataset an SQL task writes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_dataset: Option<String>,
    /// Values the run reported.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub outputs: IndexMap<String, String>,
    /// The last 64 KiB of a command's output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdout_tail: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// The dwflow process that runs it.
    pub owner: Owner,
    /// A command's process group (its pid), while it may be running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid: Option<u32>,
    /// The start time of that process, to recognise it after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pgid_start_ticks: Option<u64>,
    /// Values of secret pipeline parameters: masked wherever the record is written.
    #[serde(skip)]
    pub secrets: Vec<String>,
}

impl RunRecord {
    pub fn status(&self) -> RunStatus {
        RunStatus {
            lifecycle: self.state.clone(),
            result: self.result.clone(),
            message: self.message.clone(),
            retryable: self.retryable,
            outputs: self.outputs.clone(),
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub(crate) fn path_of(runs_dir: &Path, run_id: &str) -> PathBuf {
    runs_dir.join(format!("{run_id}.json"))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

pub(crate) fn write(runs_dir: &Path, record: &RunRecord) -> std::io::Result<()> {
    let mut bytes = if record.secrets.is_empty() {
        serde_json::to_vec_pretty(record)
    } else {
        // The running job has the real values in memory; the file never does.
        let mask = |t: &str| crate::secrets::mask(t, &record.secrets);
        let mut shown = record.clone();
        for v in shown.params.values_mut() {
            *v = mask(v);
        }
        for v in shown.outputs.values_mut() {
            *v = mask(v);
        }
        shown.message = shown.message.as_deref().map(mask);
        shown.stdout_tail = mask(&shown.stdout_tail);
        shown.stderr_tail = mask(&shown.stderr_tail);
        serde_json::to_vec_pretty(&shown)
    }
    .map_err(std::io::Error::other)?;
    bytes.push(b'\n');
    write_atomic(&path_of(runs_dir, &record.run_id), &bytes)
}

pub(crate) fn read(path: &Path) -> Result<RunRecord, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: not a run record: {e}", path.display()))
}
