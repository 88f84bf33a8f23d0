//! Typed events: the engine's only output channel. Reporters (terminal progress, JSON
//! summary, the service) subscribe to them; the engine never prints.

use std::time::Duration;

use indexmap::IndexMap;
use serde::Serialize;

/// How a step (or one fan-out instance of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
    /// `when` was false, or the trigger rule over its needs was not met.
    Skipped,
    /// Never started: the pipeline stopped first (fail-fast, interruption).
    NotRun,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Canceled => "canceled",
            Outcome::Skipped => "skipped",
            Outcome::NotRun => "not_run",
        }
    }
    /// Counts as a failure for trigger rules and the exit status.
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failed | Outcome::TimedOut)
    }
}

/// How a pipeline run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Canceled,
    TimedOut,
    /// The process running it stopped before it finished; `dwflow resume` continues it.
    Interrupted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
            RunState::TimedOut => "timed_out",
            RunState::Interrupted => "interrupted",
        }
    }
}

/// Identifies one invocation unit: a step, and the fan-out item index if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct InstanceId {
    pub step: String,
    /// Index of the `for_each` item, `None` for a step without fan-out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.item {
            Some(i) => write!(f, "{}[{i}]", self.step),
            None => f.write_str(&self.step),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        pipeline: String,
        steps: Vec<String>,
        resumed: bool,
    },
    /// A job is being invoked (attempt counts from 1).
    Invoking {
        instance: InstanceId,
        job: String,
        attempt: u32,
        /// The rendered parameters sent, secrets masked.
        params: IndexMap<String, String>,
    },
    /// The environment accepted the invocation.
    Started {
        instance: InstanceId,
        attempt: u32,
        remote_run_id: String,
    },
    /// Reattached to a remote run started by an earlier process (resume).
    Reattached {
        instance: InstanceId,
        attempt: u32,
        remote_run_id: String,
    },
    /// The remote run's state changed.
    StateChanged {
        instance: InstanceId,
        state: String,
    },
    /// An attempt failed and another follows after `delay`.
    Retrying {
        instance: InstanceId,
        attempt: u32,
        delay: Duration,
        reason: String,
    },
    InstanceFinished {
        instance: InstanceId,
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        remote_run_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    StepFinished {
        step: String,
        outcome: Outcome,
        duration: Duration,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        outputs: IndexMap<String, String>,
    },
    /// Something worth a person's attention that is not a failure (an unknown remote
    /// state, a slow cancellation).
    Warning {
        message: String,
    },
    RunFinished {
        state: RunState,
        duration: Duration,
    },
}
