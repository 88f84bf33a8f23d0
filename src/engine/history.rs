//! How long each job's runs took before, per target, kept in `history.sqlite` in the
//! state directory: the expected duration that lets polling stay sparse far from a
//! run's likely end and dense near it ([`super::PollPolicy::delay_expecting`]).
//!
//! Only successful attempts that dwflow watched from their invocation are recorded:
//! failures end early for reasons of their own, and a reattached run's start is unknown.
//! The estimate is the shortest of the last few durations, so that polling is dense by
//! the time the quickest plausible run ends. The history is an optimisation: when it
//! cannot be read or written, polling falls back to the policy without history.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, params};

/// Durations kept per job and target; older ones are pruned.
const KEEP: i64 = 20;
/// Durations the estimate looks at.
const RECENT: i64 = 5;

pub struct DurationHistory {
    conn: Mutex<Connection>,
}

impl DurationHistory {
    /// Opens (creating if needed) the history in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("cannot create {}: {e}", state_dir.display()))?;
        let path = state_dir.join("history.sqlite");
        let conn =
            Connection::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        // Several dwflow processes may share a state directory.
        conn.busy_timeout(Duration::from_secs(5))
            .and_then(|()| {
                conn.execute_batch(
                    "PRAGMA journal_mode=WAL;
                     PRAGMA synchronous=NORMAL;
                     CREATE TABLE IF NOT EXISTS run_durations (
                         target TEXT NOT NULL,
                         job_id INTEGER NOT NULL,
                         finished_at_ms INTEGER NOT NULL,
                         duration_ms INTEGER NOT NULL
                     );
                     CREATE INDEX IF NOT EXISTS run_durations_by_job
                         ON run_durations (target, job_id);",
                )
            })
            .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        Ok(DurationHistory {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The expected duration of a run of `job_id` on `target`, if any is known.
    pub fn expected(&self, target: &str, job_id: u64) -> Option<Duration> {
        let conn = self.conn();
        let ms: Option<i64> = conn
            .query_row(
                "SELECT min(duration_ms) FROM (
                     SELECT duration_ms FROM run_durations
                     WHERE target = ?1 AND job_id = ?2
                     ORDER BY rowid DESC LIMIT ?3)",
                params![target, job_id as i64, RECENT],
                |row| row.get(0),
            )
            .ok()
            .flatten();
        ms.and_then(|ms| u64::try_from(ms).ok())
            .map(Duration::from_millis)
    }

    /// Records a successful run's duration and prunes old ones.
    pub fn record(&self, target: &str, job_id: u64, duration: Duration) -> Result<(), String> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let conn = self.conn();
        conn.execute(
            "INSERT INTO run_durations (target, job_id, finished_at_ms, duration_ms)
             VALUES (?1, ?2, ?3, ?4)",
            params![target, job_id as i64, now, ms],
        )
        .and_then(|_| {
            conn.execute(
                "DELETE FROM run_durations WHERE target = ?1 AND job_id = ?2 AND rowid NOT IN (
                     SELECT rowid FROM run_durations WHERE target = ?1 AND job_id = ?2
                     ORDER BY rowid DESC LIMIT ?3)",
                params![target, job_id as i64, KEEP],
            )
        })
        .map(|_| ())
        .map_err(|e| format!("cannot record a run duration: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_is_the_shortest_recent_duration_per_target_and_job() {
        let dir = tempfile::tempdir().unwrap();
        let h = DurationHistory::open(dir.path()).unwrap();
        assert_eq!(h.expected("t", 1), None);
        for s in [70, 60, 65] {
            h.record("t", 1, Duration::from_secs(s)).unwrap();
        }
        h.record("other", 1, Duration::from_secs(5)).unwrap();
        h.record("t", 2, Duration::from_secs(1)).unwrap();
        assert_eq!(h.expected("t", 1), Some(Duration::from_secs(60)));
        // Reopened by another process: the history persists.
        drop(h);
        let h = DurationHistory::open(dir.path()).unwrap();
        assert_eq!(h.expected("t", 1), Some(Duration::from_secs(60)));
        assert_eq!(h.expected("other", 1), Some(Duration::from_secs(5)));
    }

    #[test]
    fn old_durations_are_pruned_and_stop_counting() {
        let dir = tempfile::tempdir().unwrap();
        let h = DurationHistory::open(dir.path()).unwrap();
        h.record("t", 1, Duration::from_secs(1)).unwrap();
        for _ in 0..KEEP {
            h.record("t", 1, Duration::from_secs(100)).unwrap();
        }
        assert_eq!(h.expected("t", 1), Some(Duration::from_secs(100)));
        let n: i64 = h
            .conn()
            .query_row("SELECT count(*) FROM run_durations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, KEEP);
    }
}
