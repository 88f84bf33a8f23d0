//! Rebuilding a pipeline run's state from its journal, for `dwflow resume` and for the
//! service after a restart: which steps finished (accepted as they are), and for each
//! unfinished instance whether to reattach to a remote run, re-send an invocation with
//! its original idempotency key, or start its next attempt.

use std::collections::HashMap;
use std::path::Path;

use indexmap::IndexMap;
use serde_json::Value;

use super::StepResult;
use super::events::{Outcome, RunState};
use super::journal::{self, Record};

/// Where an unfinished instance stood.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// The invocation may or may not have reached the environment: send it again with
    /// the same idempotency key.
    Invoking {
        idempotency_key: String,
        params: IndexMap<String, String>,
    },
    /// A remote run exists: poll it (reattach), never invoke again.
    Started { remote_run_id: String },
    /// The last attempt failed before the process stopped: start the next attempt.
    Retry,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceResume {
    pub attempt: u32,
    pub phase: Phase,
}

#[derive(Debug, Clone, Default)]
pub struct StepResume {
    pub instances: HashMap<Option<usize>, InstanceResume>,
}

/// The state of a run as its journal tells it.
#[derive(Debug, Clone)]
pub struct ResumeState {
    pub run_id: String,
    pub pipeline: String,
    pub path: String,
    /// The pipeline definition the run started with.
    pub source: String,
    pub source_sha256: String,
    /// Parameter values (secret ones masked: they must be given again).
    pub params: IndexMap<String, Value>,
    pub secret_params: Vec<String>,
    pub target: String,
    /// Set when the journal says the run already ended.
    pub ended: Option<RunState>,
    pub(crate) finished: HashMap<String, StepResult>,
    steps: HashMap<String, StepResume>,
}

impl ResumeState {
    pub(crate) fn for_step(&self, step: &str) -> StepResume {
        self.steps.get(step).cloned().unwrap_or_default()
    }

    /// Steps already finished, with their outcomes.
    pub fn finished_steps(&self) -> Vec<(String, Outcome)> {
        let mut v: Vec<_> = self
            .finished
            .iter()
            .map(|(k, r)| (k.clone(), r.outcome))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Loads a run's state from `<state_dir>/<run_id>/`.
    pub fn load(state_dir: &Path, run_id: &str) -> Result<ResumeState, String> {
        let records = journal::read(state_dir, run_id).map_err(|e| e.to_string())?;
        let source = std::fs::read_to_string(state_dir.join(run_id).join("pipeline.yaml"))
            .map_err(|e| format!("cannot read the pipeline of run {run_id}: {e}"))?;
        let Some(Record::RunStarted {
            pipeline,
            path,
            source_sha256,
            params,
            secret_params,
            target,
            ..
        }) = records.first().cloned()
        else {
            return Err(format!(
                "the journal of run {run_id} does not start with a run_started record"
            ));
        };
        let mut state = ResumeState {
            run_id: run_id.to_string(),
            pipeline,
            path,
            source,
            source_sha256,
            params,
            secret_params,
            target,
            ended: None,
            finished: HashMap::new(),
            steps: HashMap::new(),
        };
        // Per instance: the latest attempt and what is known of it.
        let mut run_ids: HashMap<String, Vec<String>> = HashMap::new();
        let mut attempts: HashMap<String, u32> = HashMap::new();
        let mut last_started: HashMap<(String, Option<usize>), (u32, String)> = HashMap::new();
        for r in &records {
            match r {
                Record::Invoking {
                    step,
                    item,
                    attempt,
                    idempotency_key,
                    params,
                    ..
                } => {
                    attempts
                        .entry(step.clone())
                        .and_modify(|a| *a = (*a).max(*attempt))
                        .or_insert(*attempt);
                    state
                        .steps
                        .entry(step.clone())
                        .or_default()
                        .instances
                        .insert(
                            *item,
                            InstanceResume {
                                attempt: *attempt,
                                phase: Phase::Invoking {
                                    idempotency_key: idempotency_key.clone(),
                                    params: params.clone(),
                                },
                            },
                        );
                }
                Record::Started {
                    step,
                    item,
                    attempt,
                    remote_run_id,
                    ..
                } => {
                    run_ids
                        .entry(step.clone())
                        .or_default()
                        .push(remote_run_id.clone());
                    last_started.insert((step.clone(), *item), (*attempt, remote_run_id.clone()));
                    state
                        .steps
                        .entry(step.clone())
                        .or_default()
                        .instances
                        .insert(
                            *item,
                            InstanceResume {
                                attempt: *attempt,
                                phase: Phase::Started {
                                    remote_run_id: remote_run_id.clone(),
                                },
                            },
                        );
                }
                Record::AttemptFinished {
                    step,
                    item,
                    attempt,
                    outcome,
                    ..
                } => {
                    let phase = if *outcome == Outcome::Succeeded {
                        // Its outputs are re-read from the run, which is terminal.
                        match last_started.get(&(step.clone(), *item)) {
                            Some((a, id)) if a == attempt => Phase::Started {
                                remote_run_id: id.clone(),
                            },
                            _ => Phase::Retry,
                        }
                    } else {
                        Phase::Retry
                    };
                    let next = if phase == Phase::Retry {
                        attempt + 1
                    } else {
                        *attempt
                    };
                    state
                        .steps
                        .entry(step.clone())
                        .or_default()
                        .instances
                        .insert(
                            *item,
                            InstanceResume {
                                attempt: next,
                                phase,
                            },
                        );
                }
                Record::StepFinished {
                    step,
                    outcome,
                    message,
                    outputs,
                    ..
                } => {
                    state.finished.insert(
                        step.clone(),
                        StepResult {
                            outcome: *outcome,
                            message: message.clone(),
                            outputs: outputs.clone(),
                            remote_run_ids: run_ids.get(step).cloned().unwrap_or_default(),
                            attempts: attempts.get(step).copied().unwrap_or(0),
                            environment_error: None,
                        },
                    );
                    if *outcome != Outcome::Succeeded {
                        // Run again on resume, as new attempts (fresh idempotency keys):
                        // resuming a failed run repairs it.
                        if let Some(s) = state.steps.get_mut(step) {
                            for inst in s.instances.values_mut() {
                                if inst.phase != Phase::Retry {
                                    inst.attempt += 1;
                                    inst.phase = Phase::Retry;
                                }
                            }
                        }
                    } else {
                        state.steps.remove(step);
                    }
                }
                Record::RunFinished { state: s, .. } => state.ended = Some(*s),
                Record::RunStarted { .. } | Record::Resumed { .. } => {}
            }
        }
        // Only succeeded steps are accepted; the others (failed, cancelled, not run,
        // skipped because of them) run again.
        state
            .finished
            .retain(|_, r| r.outcome == Outcome::Succeeded);
        Ok(state)
    }
}
