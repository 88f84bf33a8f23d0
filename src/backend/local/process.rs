//! Process bookkeeping: who owns a run (and whether that process is still alive), and
//! process groups of command runs.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// The process (and the `LocalBackend` instance in it) that runs a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (Linux), to tell a reused pid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_ticks: Option<u64>,
    /// The kernel's boot id (Linux): a record from before a reboot has a dead owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// The `LocalBackend` instance inside the process.
    #[serde(default)]
    pub instance: String,
}

fn live_instances() -> &'static Mutex<HashSet<String>> {
    static SET: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

pub(crate) fn register_instance(id: &str) {
    live_instances()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.to_string());
}

pub(crate) fn unregister_instance(id: &str) {
    live_instances()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(id);
}

fn boot_id() -> Option<String> {
    static ID: OnceLock<Option<String>> = OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    })
    .clone()
}

/// Fields of `/proc/<pid>/stat` after the command name: (state, pgrp, start ticks).
fn proc_stat(pid: u32) -> Option<(char, i64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); pgrp is field 5, starttime field 22.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, pgrp, start))
}

/// Start time of a process, where the system tells it.
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, _, s)| s)
}

/// This process as an owner, for the given backend instance.
pub(crate) fn current_owner(instance: &str) -> Owner {
    let pid = std::process::id();
    Owner {
        pid,
        start_ticks: start_ticks(pid),
        boot_id: boot_id(),
        instance: instance.to_string(),
    }
}

/// Whether a process exists (zombies count as gone).
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid as i32, 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    !matches!(proc_stat(pid), Some(('Z' | 'X', _, _)))
}

/// Whether the owner of a run is still running it.
pub(crate) fn owner_alive(owner: &Owner) -> bool {
    if let (Some(a), Some(b)) = (&owner.boot_id, boot_id())
        && *a != b
    {
        return false;
    }
    if owner.pid == std::process::id() {
        // Either us (then the instance tells), or an earlier process that had our pid.
        return live_instances()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&owner.instance);
    }
    if !process_alive(owner.pid) {
        return false;
    }
    match (owner.start_ticks, start_ticks(owner.pid)) {
        (Some(recorded), Some(now)) => recorded == now,
        _ => true,
    }
}

/// Whether any live (non-zombie) process is in the process group.
pub fn group_alive(pgid: u32) -> bool {
    if pgid <= 1 || pgid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: signal 0 to a group only checks for existence.
    let r = unsafe { libc::kill(-(pgid as i32), 0) };
    if r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    // kill() also finds zombies; where /proc exists, look for a member that is not one.
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((state, pgrp, _)) = proc_stat(pid)
            && pgrp == i64::from(pgid)
            && !matches!(state, 'Z' | 'X')
        {
            return true;
        }
    }
    false
}

/// Sends a signal to a whole process group.
pub(crate) fn signal_group(pgid: u32, signal: libc::c_int) {
    if pgid <= 1 || pgid > i32::MAX as u32 {
        return;
    }
    // SAFETY: plain kill(2) on a process group we started (pgid > 1, never our own).
    unsafe {
        libc::kill(-(pgid as i32), signal);
    }
}

/// After a crash: stops a command's process group that outlived its dwflow process,
/// when it is provably the one recorded (the leader's start time matches, or the
/// leader is gone and the group remains, so its id cannot have been reused).
pub(crate) fn kill_orphan_group(pgid: u32, leader_start: Option<u64>) -> bool {
    if !group_alive(pgid) {
        return false;
    }
    let ours = if process_alive(pgid) {
        matches!((leader_start, start_ticks(pgid)), (Some(a), Some(b)) if a == b)
    } else {
        true
    };
    if !ours {
        return false;
    }
    signal_group(pgid, libc::SIGTERM);
    std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + super::command::GRACE;
        while std::time::Instant::now() < deadline {
            if !group_alive(pgid) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        signal_group(pgid, libc::SIGKILL);
    });
    true
}
