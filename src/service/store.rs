//! The service's durable history: one SQLite database (`--db`, default
//! `.dwflow/service.sqlite`) holding pipeline runs, their steps and attempts with remote
//! run ids, trigger state (the last schedule tick handled, datasets seen) and the
//! signatures of accepted events (replay protection).
//!
//! The schema is versioned: `MIGRATIONS[i]` takes the database from version `i` to
//! `i + 1` inside one transaction, and `PRAGMA user_version` records where it stands.
//! The engine's journals stay the source of truth for resuming a run; this database is
//! what the API and the page show and what the service restarts from.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

/// Each entry migrates from its index to the next version. Never edit one that has
/// shipped: add another.
const MIGRATIONS: &[&str] = &[
    // 1: runs, steps, attempts, trigger state, event deliveries.
    "CREATE TABLE runs (
         run_id TEXT PRIMARY KEY,
         pipeline TEXT NOT NULL,
         file TEXT NOT NULL,
         source TEXT NOT NULL,
         source_sha256 TEXT NOT NULL,
         git_commit TEXT,
         target TEXT NOT NULL,
         state TEXT NOT NULL,
         trigger TEXT NOT NULL,
         trigger_detail TEXT,
         event TEXT NOT NULL,
         params TEXT NOT NULL,
         has_secrets INTEGER NOT NULL DEFAULT 0,
         created_at TEXT NOT NULL,
         started_at TEXT,
         finished_at TEXT,
         duration_ms INTEGER,
         error TEXT
     );
     CREATE INDEX runs_by_pipeline ON runs (pipeline, created_at);
     CREATE INDEX runs_by_state ON runs (state);
     CREATE TABLE steps (
         run_id TEXT NOT NULL REFERENCES runs (run_id),
         step TEXT NOT NULL,
         position INTEGER NOT NULL,
         job TEXT NOT NULL,
         needs TEXT NOT NULL,
         wave INTEGER NOT NULL,
         state TEXT NOT NULL,
         attempts INTEGER NOT NULL DEFAULT 0,
         remote_run_ids TEXT NOT NULL DEFAULT '[]',
         params TEXT NOT NULL DEFAULT '{}',
         outputs TEXT NOT NULL DEFAULT '{}',
         message TEXT,
         started_at TEXT,
         finished_at TEXT,
         duration_ms INTEGER,
         PRIMARY KEY (run_id, step)
     );
     CREATE TABLE attempts (
         run_id TEXT NOT NULL REFERENCES runs (run_id),
         instance TEXT NOT NULL,
         attempt INTEGER NOT NULL,
         remote_run_id TEXT,
         state TEXT NOT NULL,
         message TEXT,
         started_at TEXT NOT NULL,
         finished_at TEXT,
         PRIMARY KEY (run_id, instance, attempt)
     );
     CREATE TABLE schedule_ticks (
         pipeline TEXT NOT NULL,
         trigger_key TEXT NOT NULL,
         last_tick TEXT NOT NULL,
         PRIMARY KEY (pipeline, trigger_key)
     );
     CREATE TABLE seen_datasets (
         target TEXT NOT NULL,
         name TEXT NOT NULL,
         first_seen TEXT NOT NULL,
         PRIMARY KEY (target, name)
     );
     CREATE TABLE dataset_watch (
         target TEXT PRIMARY KEY,
         primed_at TEXT NOT NULL
     );
     CREATE TABLE event_deliveries (
         signature TEXT PRIMARY KEY,
         received_at INTEGER NOT NULL
     );",
    // 2: a cancel request survives a restart; the dataset watch keeps a high-water mark
    // so that each poll asks only for recent datasets.
    "ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE dataset_watch ADD COLUMN polled_at TEXT;",
    // 3: one run per trigger firing, so that a firing repeated after a crash (its claim
    // was not recorded yet) finds its run instead of starting another.
    "ALTER TABLE runs ADD COLUMN trigger_key TEXT;
     CREATE UNIQUE INDEX runs_by_trigger_key ON runs (trigger_key)
         WHERE trigger_key IS NOT NULL;",
];

/// The version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "history database {path} has schema version {found}, newer than this dwflow ({SCHEMA_VERSION}); use a newer dwflow or another --db"
    )]
    TooNew { path: String, found: usize },
    #[error("history database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// A pipeline run as the history keeps it.
#[derive(Debug, Clone, Serialize)]
pub struct RunRow {
    pub run_id: String,
    pub pipeline: String,
    pub file: String,
    pub source_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    pub target: String,
    pub state: String,
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_detail: Option<String>,
    pub event: Value,
    /// Parameter values, secrets masked.
    pub params: Value,
    #[serde(skip)]
    pub has_secrets: bool,
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a new run row needs.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    pub run_id: &'a str,
    pub pipeline: &'a str,
    pub file: &'a str,
    pub source: &'a str,
    pub source_sha256: &'a str,
    pub git_commit: Option<&'a str>,
    pub target: &'a str,
    pub state: &'a str,
    pub trigger: &'a str,
    pub trigger_detail: Option<&'a str>,
    pub trigger_key: Option<&'a str>,
    pub event: &'a Value,
    pub params: &'a Value,
    pub has_secrets: bool,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct StepRow {
    pub id: String,
    pub job: String,
    pub needs: Vec<String>,
    pub wave: i64,
    pub state: String,
    pub attempts: i64,
    pub remote_run_ids: Vec<String>,
    pub params: Value,
    pub outputs: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
}

/// One attempt of one step instance.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRow {
    pub instance: String,
    pub attempt: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_run_id: Option<String>,
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// The history database. One connection behind a mutex: writes are small and the
/// service's rate of them is bounded by its runs' events.
pub struct Store {
    conn: Mutex<Connection>,
}

fn now() -> String {
    crate::engine::journal::now()
}

fn json(v: &impl Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

const RUN_COLUMNS: &str = "run_id, pipeline, file, source_sha256, git_commit, target, state, trigger, \
     trigger_detail, event, params, has_secrets, created_at, started_at, finished_at, duration_ms, error";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        run_id: r.get(0)?,
        pipeline: r.get(1)?,
        file: r.get(2)?,
        source_sha256: r.get(3)?,
        git_commit: r.get(4)?,
        target: r.get(5)?,
        state: r.get(6)?,
        trigger: r.get(7)?,
        trigger_detail: r.get(8)?,
        event: parse(&r.get::<_, String>(9)?),
        params: parse(&r.get::<_, String>(10)?),
        has_secrets: r.get::<_, i64>(11)? != 0,
        created_at: r.get(12)?,
        started_at: r.get(13)?,
        finished_at: r.get(14)?,
        duration_ms: r.get(15)?,
        error: r.get(16)?,
    })
}

impl Store {
    /// Opens (creating and migrating as needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| StoreError::Open {
            path: shown.clone(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
            // WAL with NORMAL survives a killed process (what a service meets); the
            // journals, fsynced, are what resuming relies on.
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;",
        )
        .map_err(open_err)?;
        let version: usize = conn
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(open_err)?
            .try_into()
            .unwrap_or(0);
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: shown,
                found: version,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(open_err)?;
            tx.execute_batch(sql).map_err(open_err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(open_err)?;
            tx.commit().map_err(open_err)?;
        }
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version of the open database.
    pub fn version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))?)
    }

    /// Records a new run. When its trigger key is taken, records nothing and returns
    /// the run that has it.
    pub fn insert_run(&self, run: &NewRun<'_>) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        if let Some(key) = run.trigger_key {
            let existing: Option<String> = conn
                .query_row(
                    "SELECT run_id FROM runs WHERE trigger_key = ?1",
                    params![key],
                    |r| r.get(0),
                )
                .optional()?;
            if existing.is_some() {
                return Ok(existing);
            }
        }
        conn.execute(
            "INSERT INTO runs (run_id, pipeline, file, source, source_sha256, git_commit, target,
                 state, trigger, trigger_detail, event, params, has_secrets, created_at,
                 trigger_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            params![
                run.run_id,
                run.pipeline,
                run.file,
                run.source,
                run.source_sha256,
                run.git_commit,
                run.target,
                run.state,
                run.trigger,
                run.trigger_detail,
                json(run.event),
                json(run.params),
                run.has_secrets as i64,
                now(),
                run.trigger_key,
            ],
        )?;
        Ok(None)
    }

    /// Records the steps of a run about to start (their plan: job, needs, wave).
    pub fn insert_steps(
        &self,
        run_id: &str,
        steps: &[(String, String, Vec<String>, usize)],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (pos, (id, job, needs, wave)) in steps.iter().enumerate() {
            tx.execute(
                "INSERT OR IGNORE INTO steps (run_id, step, position, job, needs, wave, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'waiting')",
                params![run_id, id, pos as i64, job, json(needs), *wave as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn set_run_started(&self, run_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE runs SET state = 'running', started_at = coalesce(started_at, ?2)
             WHERE run_id = ?1",
            params![run_id, now()],
        )?;
        Ok(())
    }

    pub fn set_run_finished(
        &self,
        run_id: &str,
        state: &str,
        duration_ms: Option<u64>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            // The duration is the run's wall time from its first start, across the
            // restarts that resumed it (the engine only sees its own process's share).
            "UPDATE runs SET state = ?2, finished_at = ?3,
                 duration_ms = CASE WHEN started_at IS NOT NULL
                     THEN CAST(round((julianday(?3) - julianday(started_at)) * 86400000) AS INTEGER)
                     ELSE coalesce(?4, duration_ms) END,
                 error = coalesce(?5, error)
             WHERE run_id = ?1",
            params![run_id, state, now(), duration_ms.map(|d| d as i64), error],
        )?;
        Ok(())
    }

    /// Records that a cancel was asked for, before the cancel is acted on, so that a
    /// restart resumes the run already cancelling.
    pub fn request_cancel(&self, run_id: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE runs SET cancel_requested = 1 WHERE run_id = ?1",
            params![run_id],
        )?;
        Ok(())
    }

    pub fn cancel_requested(&self, run_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT cancel_requested FROM runs WHERE run_id = ?1",
                params![run_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .is_some_and(|v| v != 0))
    }

    /// Whether any job of the run was (or may have been) invoked.
    pub fn has_attempts(&self, run_id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM attempts WHERE run_id = ?1)",
            params![run_id],
            |r| r.get::<_, bool>(0),
        )?)
    }

    /// Marks what a run left unfinished (steps waiting or running, attempts in flight)
    /// with `state`, when the run ends without the engine's final word.
    pub fn close_unfinished(&self, run_id: &str, state: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE steps SET state = ?2 WHERE run_id = ?1 AND state IN ('waiting', 'running')",
            params![run_id, state],
        )?;
        tx.execute(
            "UPDATE attempts SET state = ?2, finished_at = coalesce(finished_at, ?3)
             WHERE run_id = ?1 AND finished_at IS NULL",
            params![run_id, state, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_run_state(&self, run_id: &str, state: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE runs SET state = ?2 WHERE run_id = ?1",
            params![run_id, state],
        )?;
        Ok(())
    }

    pub fn attempt_invoking(
        &self,
        run_id: &str,
        step: &str,
        instance: &str,
        attempt: u32,
        params: &Value,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = now();
        tx.execute(
            "INSERT INTO attempts (run_id, instance, attempt, state, started_at)
             VALUES (?1, ?2, ?3, 'invoking', ?4)
             ON CONFLICT (run_id, instance, attempt) DO UPDATE SET state = 'invoking'",
            params![run_id, instance, attempt as i64, at],
        )?;
        tx.execute(
            "UPDATE steps SET state = 'running', started_at = coalesce(started_at, ?3),
                 attempts = max(attempts, ?4), params = ?5
             WHERE run_id = ?1 AND step = ?2",
            params![run_id, step, at, attempt as i64, json(params)],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn attempt_started(
        &self,
        run_id: &str,
        step: &str,
        instance: &str,
        attempt: u32,
        remote_run_id: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO attempts (run_id, instance, attempt, remote_run_id, state, started_at)
             VALUES (?1, ?2, ?3, ?4, 'running', ?5)
             ON CONFLICT (run_id, instance, attempt)
             DO UPDATE SET remote_run_id = ?4, state = 'running'",
            params![run_id, instance, attempt as i64, remote_run_id, now()],
        )?;
        let ids: String = tx
            .query_row(
                "SELECT remote_run_ids FROM steps WHERE run_id = ?1 AND step = ?2",
                params![run_id, step],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or_else(|| "[]".into());
        let mut ids: Vec<String> = serde_json::from_str(&ids).unwrap_or_default();
        if !ids.iter().any(|i| i == remote_run_id) {
            ids.push(remote_run_id.to_string());
        }
        tx.execute(
            "UPDATE steps SET remote_run_ids = ?3, state = 'running',
                 attempts = max(attempts, ?4), started_at = coalesce(started_at, ?5)
             WHERE run_id = ?1 AND step = ?2",
            params![run_id, step, json(&ids), attempt as i64, now()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn attempt_state(
        &self,
        run_id: &str,
        instance: &str,
        state: &str,
        message: Option<&str>,
        finished: bool,
    ) -> Result<(), StoreError> {
        // The latest attempt of the instance is the one the event is about.
        self.conn().execute(
            "UPDATE attempts SET state = ?3, message = coalesce(?4, message),
                 finished_at = CASE WHEN ?5 THEN ?6 ELSE finished_at END
             WHERE run_id = ?1 AND instance = ?2 AND attempt =
                 (SELECT max(attempt) FROM attempts WHERE run_id = ?1 AND instance = ?2)",
            params![run_id, instance, state, message, finished, now()],
        )?;
        Ok(())
    }

    /// Records a step's end. With `only_open`, a step already recorded as ended is
    /// left as it is (the run's final report after the step's own event).
    #[allow(clippy::too_many_arguments)]
    pub fn step_finished(
        &self,
        run_id: &str,
        step: &str,
        state: &str,
        duration_ms: u64,
        message: Option<&str>,
        outputs: &Value,
        only_open: bool,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE steps SET state = ?3, duration_ms = ?4, message = ?5, outputs = ?6,
                 finished_at = ?7
             WHERE run_id = ?1 AND step = ?2
                 AND (NOT ?8 OR state IN ('waiting', 'running'))",
            params![
                run_id,
                step,
                state,
                duration_ms as i64,
                message,
                json(outputs),
                now(),
                only_open
            ],
        )?;
        Ok(())
    }

    pub fn run(&self, run_id: &str) -> Result<Option<RunRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"),
                params![run_id],
                run_row,
            )
            .optional()?)
    }

    /// The pipeline definition a run started with.
    pub fn run_source(&self, run_id: &str) -> Result<Option<(String, String)>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT file, source FROM runs WHERE run_id = ?1",
                params![run_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Runs, newest first, optionally of one pipeline and in one state.
    pub fn runs(
        &self,
        pipeline: Option<&str>,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE (?1 IS NULL OR pipeline = ?1) AND (?2 IS NULL OR state = ?2)
             ORDER BY created_at DESC, rowid DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![pipeline, state, limit as i64], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Runs in one of `states`, oldest first (what the service resumes at start-up).
    pub fn runs_in(&self, states: &[&str]) -> Result<Vec<RunRow>, StoreError> {
        let conn = self.conn();
        let wanted = serde_json::to_string(states).unwrap_or_else(|_| "[]".into());
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE state IN (SELECT value FROM json_each(?1)) ORDER BY created_at, rowid"
        ))?;
        let rows = stmt.query_map(params![wanted], run_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Run counts by state.
    pub fn count_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, count(*) FROM runs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn steps(&self, run_id: &str) -> Result<Vec<StepRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT step, job, needs, wave, state, attempts, remote_run_ids, params, outputs,
                 message, started_at, finished_at, duration_ms
             FROM steps WHERE run_id = ?1 ORDER BY position",
        )?;
        let rows = stmt.query_map(params![run_id], |r| {
            Ok(StepRow {
                id: r.get(0)?,
                job: r.get(1)?,
                needs: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                wave: r.get(3)?,
                state: r.get(4)?,
                attempts: r.get(5)?,
                remote_run_ids: serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or_default(),
                params: parse(&r.get::<_, String>(7)?),
                outputs: parse(&r.get::<_, String>(8)?),
                message: r.get(9)?,
                started_at: r.get(10)?,
                finished_at: r.get(11)?,
                duration_ms: r.get(12)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT instance, attempt, remote_run_id, state, message, started_at, finished_at
             FROM attempts WHERE run_id = ?1 ORDER BY started_at, instance, attempt",
        )?;
        let rows = stmt.query_map(params![run_id], |r| {
            Ok(AttemptRow {
                instance: r.get(0)?,
                attempt: r.get(1)?,
                remote_run_id: r.get(2)?,
                state: r.get(3)?,
                message: r.get(4)?,
                started_at: r.get(5)?,
                finished_at: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The last schedule tick handled for a pipeline's trigger.
    pub fn last_tick(&self, pipeline: &str, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT last_tick FROM schedule_ticks WHERE pipeline = ?1 AND trigger_key = ?2",
                params![pipeline, key],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Claims a tick: true when it is later than the last one handled (and records it),
    /// false when it was handled already. One statement, so two claims of one tick
    /// cannot both win.
    pub fn claim_tick(&self, pipeline: &str, key: &str, tick: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "INSERT INTO schedule_ticks (pipeline, trigger_key, last_tick) VALUES (?1, ?2, ?3)
             ON CONFLICT (pipeline, trigger_key) DO UPDATE SET last_tick = excluded.last_tick
             WHERE excluded.last_tick > schedule_ticks.last_tick",
            params![pipeline, key, tick],
        )?;
        Ok(changed > 0)
    }

    /// When the dataset watch of `target` last listed the target successfully (first:
    /// when it was primed); `None` before the first listing, when nothing counts as new.
    pub fn dataset_watermark(&self, target: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT coalesce(polled_at, primed_at) FROM dataset_watch WHERE target = ?1",
                params![target],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Moves the high-water mark to the start of a successful poll.
    pub fn set_dataset_watermark(&self, target: &str, at: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE dataset_watch SET polled_at = ?2 WHERE target = ?1",
            params![target, at],
        )?;
        Ok(())
    }

    /// Records the datasets present when the watch starts, without firing for them.
    pub fn prime_datasets(&self, target: &str, names: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let at = now();
        for n in names {
            tx.execute(
                "INSERT OR IGNORE INTO seen_datasets (target, name, first_seen) VALUES (?1, ?2, ?3)",
                params![target, n, at],
            )?;
        }
        tx.execute(
            "INSERT OR IGNORE INTO dataset_watch (target, primed_at) VALUES (?1, ?2)",
            params![target, at],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Whether a dataset name was seen before.
    pub fn dataset_seen(&self, target: &str, name: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM seen_datasets WHERE target = ?1 AND name = ?2)",
            params![target, name],
            |r| r.get::<_, bool>(0),
        )?)
    }

    /// Whether a signed event was delivered before.
    pub fn delivery_seen(&self, signature: &str) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM event_deliveries WHERE signature = ?1)",
            params![signature],
            |r| r.get::<_, bool>(0),
        )?)
    }

    /// Marks a dataset seen: true the first time.
    pub fn see_dataset(&self, target: &str, name: &str) -> Result<bool, StoreError> {
        let changed = self.conn().execute(
            "INSERT OR IGNORE INTO seen_datasets (target, name, first_seen) VALUES (?1, ?2, ?3)",
            params![target, name, now()],
        )?;
        Ok(changed > 0)
    }

    /// Records an accepted event's signature: false when it was seen before (a replay).
    /// Signatures older than `keep_secs` are pruned: their timestamps are refused anyway.
    pub fn accept_delivery(
        &self,
        signature: &str,
        now_secs: i64,
        keep_secs: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM event_deliveries WHERE received_at < ?1",
            params![now_secs.saturating_sub(keep_secs)],
        )?;
        let changed = tx.execute(
            "INSERT OR IGNORE INTO event_deliveries (signature, received_at) VALUES (?1, ?2)",
            params![signature, now_secs],
        )?;
        tx.commit()?;
        Ok(changed > 0)
    }
}

/// Holds `<db>.lock` locked for as long as it lives: one service per history.
pub struct DbLock {
    _file: std::fs::File,
}

/// Takes the history's lock, or says which process holds it.
pub fn lock_exclusive(db: &Path) -> Result<DbLock, String> {
    use std::io::{Read as _, Seek as _, Write as _};
    use std::os::fd::AsRawFd as _;
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut path = db.as_os_str().to_owned();
    path.push(".lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", Path::new(&path).display()))?;
    // SAFETY: flock on a descriptor this function owns; non-blocking.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(format!(
            "the history {} is in use by another dwflow serve (pid {}); give each service its own --db",
            db.display(),
            holder.trim()
        ));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    Ok(DbLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        let s = Store::open(&path).unwrap();
        assert_eq!(s.version().unwrap(), SCHEMA_VERSION as i64);
        drop(s);
        // Reopening applies nothing again.
        let s = Store::open(&path).unwrap();
        s.conn().pragma_update(None, "user_version", 99i64).unwrap();
        drop(s);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn one_service_per_history() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.sqlite");
        let held = lock_exclusive(&db).unwrap();
        let err = lock_exclusive(&db).err().unwrap();
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(held);
        assert!(lock_exclusive(&db).is_ok());
    }

    #[test]
    fn one_run_per_trigger_key() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("h.sqlite")).unwrap();
        let run = |id: &'static str, key: Option<&'static str>| NewRun {
            run_id: id,
            pipeline: "p",
            file: "p.yaml",
            source: "name: p",
            source_sha256: "x",
            git_commit: None,
            target: "local",
            state: "running",
            trigger: "schedule",
            trigger_detail: None,
            trigger_key: key,
            event: &Value::Null,
            params: &Value::Null,
            has_secrets: false,
        };
        assert_eq!(s.insert_run(&run("a", Some("tick-1"))).unwrap(), None);
        assert_eq!(
            s.insert_run(&run("b", Some("tick-1"))).unwrap(),
            Some("a".to_string())
        );
        assert!(s.run("b").unwrap().is_none());
        assert_eq!(s.insert_run(&run("c", None)).unwrap(), None);
        assert_eq!(s.insert_run(&run("d", None)).unwrap(), None);
    }

    #[test]
    fn a_tick_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("h.sqlite")).unwrap();
        assert!(s.claim_tick("p", "k", "2026-01-01T00:00:00Z").unwrap());
        assert!(!s.claim_tick("p", "k", "2026-01-01T00:00:00Z").unwrap());
        assert!(!s.claim_tick("p", "k", "2025-12-31T00:00:00Z").unwrap());
        assert!(s.claim_tick("p", "k", "2026-01-01T00:01:00Z").unwrap());
    }

    #[test]
    fn deliveries_and_datasets_are_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("h.sqlite")).unwrap();
        assert!(s.accept_delivery("sig", 1000, 600).unwrap());
        assert!(!s.accept_delivery("sig", 1001, 600).unwrap());
        s.prime_datasets("t", &["a".into()]).unwrap();
        assert!(!s.see_dataset("t", "a").unwrap());
        assert!(s.see_dataset("t", "b").unwrap());
        assert!(!s.see_dataset("t", "b").unwrap());
    }
}
