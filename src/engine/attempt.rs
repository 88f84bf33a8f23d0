//! The life of a step: its fan-out instances, and for each instance the attempts:
//! invoke -> poll with an adaptive interval -> outcome, with the per-attempt timeout
//! (which cancels the remote run), retries with exponential backoff and jitter, the
//! `expect` checks, and cancellation that waits for the remote run to stop.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use indexmap::IndexMap;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::events::{Event, InstanceId, Outcome};
use super::journal::{self, Record};
use super::resume::{InstanceResume, Phase, StepResume};
use super::{RunShared, StepResult};
use crate::backend::{ErrorKind, Lifecycle, RunId, RunStatus};
use crate::duration::parse_duration;
use crate::pipeline::model::{RetryOn, Step, StepDefaults};

/// How often a run's status is checked.
///
/// Without history: at once after the invocation (a run that fails instantly is seen
/// instantly), then after `first`, growing by `factor` up to `cap`, so status calls grow
/// with the logarithm of the run's length until the cap.
///
/// With an expected duration `E` (from earlier successful runs of the same job on the
/// same target, see [`super::history`]): at once, then halfway to `E` each time (at
/// least `cap` apart, at most `far_cap`), then just after `E`, then at intervals that
/// grow with the overrun up to `cap`. A run that ends around or after `E` is therefore
/// noticed within `cap`, with a handful of calls whatever its length; one that ends well
/// before `E` is noticed within the interval then in force (at most `far_cap`).
#[derive(Debug, Clone)]
pub struct PollPolicy {
    pub first: Duration,
    pub factor: f64,
    /// The longest interval near and after a run's expected end, and without history:
    /// the bound on detection latency for runs that end as expected.
    pub cap: Duration,
    /// The longest interval far from a run's expected end.
    pub far_cap: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            first: Duration::from_millis(500),
            factor: 2.0,
            cap: Duration::from_secs(10),
            far_cap: Duration::from_secs(120),
        }
    }
}

impl PollPolicy {
    /// The delay before check number `n` (0-based) without history.
    pub fn delay(&self, n: u32) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let secs = self.first.as_secs_f64() * self.factor.powi(n.min(64) as i32 - 1);
        Duration::from_secs_f64(secs.min(self.cap.as_secs_f64()))
    }

    /// The delay before check number `n`, `elapsed` after the run started, when runs
    /// of this job took about `expected`.
    pub fn delay_expecting(
        &self,
        n: u32,
        elapsed: Duration,
        expected: Option<Duration>,
    ) -> Duration {
        let Some(expected) = expected else {
            return self.delay(n);
        };
        if n == 0 {
            return Duration::ZERO;
        }
        let cap = self.cap.as_secs_f64();
        let e = expected.as_secs_f64();
        let t = elapsed.as_secs_f64();
        // How far past the expected end the first check after it lands: small against
        // the run's length and the latency bound, so the end is seen soon after it.
        let margin = (cap / 4.0).min(e / 10.0).max(0.001);
        let secs = if t >= e {
            // Overrunning: intervals grow with the overrun, up to the bound.
            (t - e).max(margin).min(cap)
        } else {
            let remaining = e - t;
            if remaining > 2.0 * cap {
                (remaining / 2.0).clamp(cap, self.far_cap.as_secs_f64().max(cap))
            } else {
                remaining + margin
            }
        };
        Duration::from_secs_f64(secs)
    }
}

/// One invocation unit of a step: the step itself, or one `for_each` item.
#[derive(Debug, Clone)]
pub(crate) struct InstancePlan {
    pub item: Option<usize>,
    pub params: IndexMap<String, String>,
}

struct InstanceResult {
    outcome: Outcome,
    message: Option<String>,
    reported: IndexMap<String, String>,
    remote_run_ids: Vec<String>,
    attempts: u32,
    environment_error: Option<String>,
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_step(
    shared: Arc<RunShared>,
    step: Step,
    defaults: Option<StepDefaults>,
    job_id: u64,
    job_label: String,
    instances: Vec<InstancePlan>,
    cancel: CancellationToken,
    resume: Option<StepResume>,
) -> StepResult {
    let step = Arc::new(step);
    let per_step = step
        .for_each
        .as_ref()
        .and_then(|f| f.max_parallel)
        .map(|n| Arc::new(Semaphore::new(n as usize)));
    let single = instances.len() == 1 && instances[0].item.is_none();
    let single_params = instances
        .first()
        .map(|i| i.params.clone())
        .unwrap_or_default();
    let mut set = JoinSet::new();
    for plan in instances {
        let shared = shared.clone();
        let step = step.clone();
        let defaults = defaults.clone();
        let per_step = per_step.clone();
        let cancel = cancel.clone();
        let job_label = job_label.clone();
        let resume = resume
            .as_ref()
            .and_then(|r| r.instances.get(&plan.item).cloned());
        set.spawn(async move {
            let _slot = match &per_step {
                Some(s) => s.clone().acquire_owned().await.ok(),
                None => None,
            };
            let item = plan.item;
            let r = run_instance(
                &shared,
                &step,
                defaults.as_ref(),
                job_id,
                &job_label,
                plan,
                &cancel,
                resume,
            )
            .await;
            (item, r)
        });
    }
    let mut results: Vec<(Option<usize>, InstanceResult)> = Vec::new();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(r) => results.push(r),
            Err(e) => results.push((
                None,
                InstanceResult {
                    outcome: Outcome::Failed,
                    message: Some(format!("internal error: {e}")),
                    reported: IndexMap::new(),
                    remote_run_ids: Vec::new(),
                    attempts: 0,
                    environment_error: None,
                },
            )),
        }
    }
    results.sort_by_key(|(item, _)| *item);
    aggregate(single, single_params, results)
}

/// Folds instance results into the step's: success only if every instance succeeded.
fn aggregate(
    single: bool,
    params: IndexMap<String, String>,
    results: Vec<(Option<usize>, InstanceResult)>,
) -> StepResult {
    let worst = results
        .iter()
        .map(|(_, r)| r.outcome)
        .max_by_key(|o| match o {
            Outcome::Succeeded => 0,
            Outcome::Skipped => 1,
            Outcome::NotRun => 2,
            Outcome::Canceled => 3,
            Outcome::TimedOut => 4,
            Outcome::Failed => 5,
        })
        .unwrap_or(Outcome::Succeeded);
    let message = results
        .iter()
        .filter_map(|(item, r)| {
            r.message.as_ref().map(|m| match item {
                Some(i) if !single => format!("item {i}: {m}"),
                _ => m.clone(),
            })
        })
        .collect::<Vec<_>>();
    let mut outputs = IndexMap::new();
    if single {
        // A step's rendered parameters are its outputs, then what the job reported.
        outputs.extend(params);
        if let Some((_, r)) = results.first() {
            outputs.extend(r.reported.clone());
        }
    } else {
        outputs.insert("count".to_string(), results.len().to_string());
    }
    StepResult {
        outcome: worst,
        message: (!message.is_empty()).then(|| message.join("; ")),
        outputs,
        remote_run_ids: results
            .iter()
            .flat_map(|(_, r)| r.remote_run_ids.clone())
            .collect(),
        attempts: results.iter().map(|(_, r)| r.attempts).max().unwrap_or(0),
        environment_error: results
            .iter()
            .find_map(|(_, r)| r.environment_error.clone()),
    }
}

/// How one attempt ended.
enum AttemptEnd {
    Succeeded(IndexMap<String, String>),
    Failed {
        message: String,
        retryable: bool,
        kind: RetryOn,
    },
    /// The remote run ended `canceled` without this process asking (someone else, or
    /// an earlier dwflow process that was interrupted).
    CanceledRemotely(String),
    Canceled(String),
    /// The environment itself failed (credentials): no retry helps.
    Environment(String),
}

#[allow(clippy::too_many_arguments)]
async fn run_instance(
    shared: &Arc<RunShared>,
    step: &Step,
    defaults: Option<&StepDefaults>,
    job_id: u64,
    job_label: &str,
    plan: InstancePlan,
    cancel: &CancellationToken,
    resume: Option<InstanceResume>,
) -> InstanceResult {
    let id = InstanceId {
        step: step.id.clone(),
        item: plan.item,
    };
    let retry = step
        .retry
        .clone()
        .or_else(|| defaults.and_then(|d| d.retry.clone()));
    let max_attempts = retry.as_ref().map_or(1, |r| r.attempts.max(1));
    let retry_on = retry
        .as_ref()
        .and_then(|r| r.on.clone())
        .unwrap_or_else(|| vec![RetryOn::Transient, RetryOn::Timeout]);
    let mut backoff = backon::ExponentialBuilder::default()
        .with_min_delay(
            retry
                .as_ref()
                .and_then(|r| r.delay.as_deref())
                .and_then(parse_duration)
                .unwrap_or(Duration::from_secs(10)),
        )
        .with_max_delay(
            retry
                .as_ref()
                .and_then(|r| r.max_delay.as_deref())
                .and_then(parse_duration)
                .unwrap_or(Duration::from_secs(300)),
        )
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    let timeout = step
        .timeout
        .as_deref()
        .or_else(|| defaults.and_then(|d| d.timeout.as_deref()))
        .and_then(parse_duration);

    let mut attempt = resume.as_ref().map_or(1, |r| r.attempt);
    let mut phase = resume.map(|r| r.phase);
    let mut extra_attempts = 0;
    let mut run_ids = Vec::new();
    loop {
        let resumed_in_flight = matches!(phase, Some(Phase::Started { .. }));
        let end = match phase.take() {
            Some(Phase::Started { remote_run_id }) => {
                shared.emit(Event::Reattached {
                    instance: id.clone(),
                    attempt,
                    remote_run_id: remote_run_id.clone(),
                });
                run_ids.push(remote_run_id.clone());
                // The run's start is unknown here: poll without expectations, and
                // do not learn its duration.
                watch(
                    shared,
                    &id,
                    step,
                    None,
                    &RunId(remote_run_id),
                    timeout,
                    cancel,
                    &plan.params,
                )
                .await
            }
            Some(Phase::Invoking { .. }) if !shared.backend.idempotent_invoke() => {
                // The previous process sent this invocation and stopped before hearing
                // the answer; this environment has no idempotency key, so sending it
                // again could start the job twice.
                AttemptEnd::Failed {
                    message: format!(
                        "attempt {attempt} was being invoked when dwflow stopped: the run may or may not have started; \
                         check the job's runs in the {} environment, then run the pipeline again",
                        shared.backend.kind()
                    ),
                    retryable: false,
                    kind: RetryOn::Failure,
                }
            }
            Some(Phase::Invoking {
                idempotency_key,
                params,
            }) => {
                invoke_and_watch(
                    shared,
                    &id,
                    step,
                    job_id,
                    job_label,
                    attempt,
                    &idempotency_key,
                    &params,
                    timeout,
                    cancel,
                    &mut run_ids,
                )
                .await
            }
            Some(Phase::Retry) | None => {
                if cancel.is_cancelled() {
                    AttemptEnd::Canceled("cancelled before it started".into())
                } else {
                    let key = idempotency_key(&shared.run_id, &step.id, plan.item, attempt);
                    invoke_and_watch(
                        shared,
                        &id,
                        step,
                        job_id,
                        job_label,
                        attempt,
                        &key,
                        &plan.params,
                        timeout,
                        cancel,
                        &mut run_ids,
                    )
                    .await
                }
            }
        };
        // A remote cancellation we did not ask for is a failure; when resuming, it is
        // most likely the previous process's own cancellation on interruption, and
        // the work is still wanted: it gets a new attempt, like an interrupted run.
        let end = match end {
            AttemptEnd::CanceledRemotely(message) => AttemptEnd::Failed {
                message,
                retryable: resumed_in_flight,
                kind: if resumed_in_flight {
                    RetryOn::Transient
                } else {
                    RetryOn::Failure
                },
            },
            other => other,
        };
        let (outcome, message, retryable) = match &end {
            AttemptEnd::Succeeded(_) => (Outcome::Succeeded, None, false),
            AttemptEnd::Failed {
                message,
                retryable,
                kind,
            } => (
                if *kind == RetryOn::Timeout {
                    Outcome::TimedOut
                } else {
                    Outcome::Failed
                },
                Some(message.clone()),
                *retryable,
            ),
            AttemptEnd::Canceled(m) | AttemptEnd::CanceledRemotely(m) => {
                (Outcome::Canceled, Some(m.clone()), false)
            }
            AttemptEnd::Environment(m) => (Outcome::Failed, Some(m.clone()), false),
        };
        shared.record_lazy(Record::AttemptFinished {
            step: step.id.clone(),
            item: plan.item,
            attempt,
            outcome,
            message: message.as_deref().map(|m| shared.mask(m)),
            retryable,
            at: journal::now(),
        });
        match end {
            AttemptEnd::Succeeded(reported) => {
                shared.emit(Event::InstanceFinished {
                    instance: id.clone(),
                    outcome,
                    remote_run_id: run_ids.last().cloned(),
                    message: None,
                });
                return InstanceResult {
                    outcome,
                    message: None,
                    reported,
                    remote_run_ids: run_ids,
                    attempts: attempt,
                    environment_error: None,
                };
            }
            AttemptEnd::Failed {
                message,
                retryable,
                kind,
            } => {
                // A run cut off by a crash of dwflow is not the job's fault: it gets one
                // more attempt whatever the retry policy says.
                if resumed_in_flight && retryable && extra_attempts == 0 {
                    extra_attempts = 1;
                }
                let allowed = match kind {
                    RetryOn::Timeout => {
                        retry_on.contains(&RetryOn::Timeout) || retry_on.contains(&RetryOn::Failure)
                    }
                    _ if retryable => {
                        retry_on.contains(&RetryOn::Transient)
                            || retry_on.contains(&RetryOn::Failure)
                            || extra_attempts > 0
                    }
                    _ => retry_on.contains(&RetryOn::Failure),
                };
                if allowed && attempt < max_attempts + extra_attempts && !cancel.is_cancelled() {
                    let delay = if resumed_in_flight {
                        Duration::ZERO
                    } else {
                        backoff.next().unwrap_or(Duration::from_secs(10))
                    };
                    shared.emit(Event::Retrying {
                        instance: id.clone(),
                        attempt: attempt + 1,
                        delay,
                        reason: shared.mask(&message),
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = cancel.cancelled() => {}
                    }
                    if !cancel.is_cancelled() {
                        attempt += 1;
                        phase = Some(Phase::Retry);
                        continue;
                    }
                }
                shared.emit(Event::InstanceFinished {
                    instance: id.clone(),
                    outcome,
                    remote_run_id: run_ids.last().cloned(),
                    message: Some(shared.mask(&message)),
                });
                return InstanceResult {
                    outcome,
                    message: Some(message),
                    reported: IndexMap::new(),
                    remote_run_ids: run_ids,
                    attempts: attempt,
                    environment_error: None,
                };
            }
            AttemptEnd::Canceled(message)
            | AttemptEnd::CanceledRemotely(message)
            | AttemptEnd::Environment(message) => {
                let env = (outcome == Outcome::Failed).then(|| message.clone());
                shared.emit(Event::InstanceFinished {
                    instance: id.clone(),
                    outcome,
                    remote_run_id: run_ids.last().cloned(),
                    message: Some(shared.mask(&message)),
                });
                return InstanceResult {
                    outcome,
                    message: Some(message),
                    reported: IndexMap::new(),
                    remote_run_ids: run_ids,
                    attempts: attempt,
                    environment_error: env,
                };
            }
        }
    }
}

/// The idempotency key of one attempt: stable across processes, at most 64 characters
/// (the Databricks limit).
pub fn idempotency_key(run_id: &str, step: &str, item: Option<usize>, attempt: u32) -> String {
    let text = format!(
        "{run_id}\u{1f}{step}\u{1f}{}\u{1f}{attempt}",
        item.map_or(-1, |i| i as i64)
    );
    let hex = crate::secrets::sha256_hex(text.as_bytes());
    format!("dwflow-{}", &hex[..48])
}

#[allow(clippy::too_many_arguments)]
async fn invoke_and_watch(
    shared: &Arc<RunShared>,
    id: &InstanceId,
    step: &Step,
    job_id: u64,
    job_label: &str,
    attempt: u32,
    key: &str,
    params: &IndexMap<String, String>,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    run_ids: &mut Vec<String>,
) -> AttemptEnd {
    // Hold a pipeline-wide slot while the job runs (`max_parallel`).
    let _slot = match &shared.parallel {
        Some(s) => tokio::select! {
            permit = s.clone().acquire_owned() => permit.ok(),
            _ = cancel.cancelled() => return AttemptEnd::Canceled("cancelled before it started".into()),
        },
        None => None,
    };
    let masked: IndexMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.clone(), shared.mask(v)))
        .collect();
    if let Err(e) = shared
        .record(Record::Invoking {
            step: step.id.clone(),
            item: id.item,
            attempt,
            job_id,
            idempotency_key: key.to_string(),
            params: masked.clone(),
            at: journal::now(),
        })
        .await
    {
        // Without the journal a crash could start the job twice: do not invoke.
        return AttemptEnd::Environment(format!("cannot write the run journal: {e}"));
    }
    shared.emit(Event::Invoking {
        instance: id.clone(),
        job: job_label.to_string(),
        attempt,
        params: masked,
    });
    let remote = match shared
        .backend
        .invoke_with_secrets(job_id, params, key, &shared.secrets)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let message = format!("invoking job {job_label} failed: {}", e.message);
            return match e.kind {
                ErrorKind::Auth => AttemptEnd::Environment(message),
                _ => AttemptEnd::Failed {
                    message,
                    retryable: e.retryable,
                    kind: if e.retryable {
                        RetryOn::Transient
                    } else {
                        RetryOn::Failure
                    },
                },
            };
        }
    };
    run_ids.push(remote.0.clone());
    // Recorded before the first poll: a crash from here on reattaches to this run.
    if let Err(e) = shared
        .record(Record::Started {
            step: step.id.clone(),
            item: id.item,
            attempt,
            remote_run_id: remote.0.clone(),
            at: journal::now(),
        })
        .await
    {
        shared.emit(Event::Warning {
            message: format!("journal: {e}"),
        });
    }
    shared.emit(Event::Started {
        instance: id.clone(),
        attempt,
        remote_run_id: remote.0.clone(),
    });
    watch(
        shared,
        id,
        step,
        Some(job_id),
        &remote,
        timeout,
        cancel,
        params,
    )
    .await
}

enum Stop {
    Cancel,
    Timeout,
}

/// Polls a run until it ends, the attempt times out, or the pipeline cancels it.
#[allow(clippy::too_many_arguments)]
async fn watch(
    shared: &Arc<RunShared>,
    id: &InstanceId,
    step: &Step,
    learn_job: Option<u64>,
    remote: &RunId,
    timeout: Option<Duration>,
    cancel: &CancellationToken,
    params: &IndexMap<String, String>,
) -> AttemptEnd {
    let begun = tokio::time::Instant::now();
    let deadline = timeout.map(|t| begun + t);
    let expected = learn_job.and_then(|job| shared.expected_duration(job));
    let mut last_check = begun;
    let mut n = 0u32;
    let mut last: Option<Lifecycle> = None;
    let mut warned_unknown = false;
    let mut consecutive_errors = 0u32;
    let stop = loop {
        let delay = shared.poll.delay_expecting(n, begun.elapsed(), expected);
        n += 1;
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = cancel.cancelled() => break Stop::Cancel,
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => break Stop::Timeout,
        }
        let checked_at = tokio::time::Instant::now();
        match shared.backend.status(remote).await {
            Ok(status) => {
                consecutive_errors = 0;
                if last.as_ref() != Some(&status.lifecycle) {
                    if let Lifecycle::Unknown(s) = &status.lifecycle
                        && !warned_unknown
                    {
                        warned_unknown = true;
                        tracing::warn!(run = %remote, state = %s, "unknown run state; treating it as not finished");
                        shared.emit(Event::Warning {
                            message: format!("run {remote} of step {id} reports an unknown state `{s}`; treating it as still running"),
                        });
                    }
                    shared.emit(Event::StateChanged {
                        instance: id.clone(),
                        state: lifecycle_name(&status.lifecycle),
                    });
                    last = Some(status.lifecycle.clone());
                }
                if status.is_terminal() {
                    if let Some(job) = learn_job
                        && status.is_success()
                    {
                        // The run ended between the last two checks: take the middle.
                        let ended = last_check + (checked_at - last_check) / 2;
                        shared.learn_duration(job, ended - begun);
                    }
                    return finished(shared, step, status, params).await;
                }
                last_check = checked_at;
            }
            Err(e) if e.kind == ErrorKind::Auth => {
                return AttemptEnd::Environment(format!(
                    "checking run {remote} failed: {}",
                    e.message
                ));
            }
            Err(e) => {
                consecutive_errors += 1;
                if consecutive_errors == 1 || consecutive_errors.is_multiple_of(10) {
                    shared.emit(Event::Warning {
                        message: format!("checking run {remote} of step {id} failed ({consecutive_errors} in a row): {}", e.message),
                    });
                }
                if !e.retryable && consecutive_errors >= 5 {
                    return AttemptEnd::Failed {
                        message: format!("cannot check run {remote}: {}", e.message),
                        retryable: false,
                        kind: RetryOn::Failure,
                    };
                }
            }
        }
    };
    // Cancel the remote run and wait until it is really over.
    let why = match stop {
        Stop::Cancel => "cancelled",
        Stop::Timeout => "timed out",
    };
    let final_status = cancel_and_wait(shared, remote).await;
    if let Some(status) = &final_status
        && status.is_success()
    {
        // The run had already succeeded when the cancellation reached it: its work is
        // done, and reporting it as cancelled would make a resume run it again.
        return finished(shared, step, status.clone(), params).await;
    }
    let detail = match &final_status {
        Some(s) => format!("run {remote} {}", describe_terminal(s)),
        None => format!(
            "run {remote} did not confirm cancellation within {}s",
            shared.cancel_wait.as_secs()
        ),
    };
    match stop {
        Stop::Cancel => AttemptEnd::Canceled(format!("{why}; {detail}")),
        Stop::Timeout => AttemptEnd::Failed {
            message: format!(
                "attempt {why} after {}; {detail}",
                crate::duration::format_duration(timeout.unwrap_or_default())
            ),
            retryable: true,
            kind: RetryOn::Timeout,
        },
    }
}

/// Asks the backend to cancel and polls until the run is terminal, within the bound.
pub(crate) async fn cancel_and_wait(shared: &RunShared, remote: &RunId) -> Option<RunStatus> {
    if let Err(e) = shared.backend.cancel(remote).await {
        shared.emit(Event::Warning {
            message: format!("cancelling run {remote} failed: {}", e.message),
        });
    }
    let until = tokio::time::Instant::now() + shared.cancel_wait;
    let mut delay = Duration::from_millis(100);
    while tokio::time::Instant::now() < until {
        if let Ok(s) = shared.backend.status(remote).await
            && s.is_terminal()
        {
            return Some(s);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    shared.emit(Event::Warning {
        message: format!(
            "run {remote} is still not terminal {}s after it was cancelled",
            shared.cancel_wait.as_secs()
        ),
    });
    None
}

async fn finished(
    shared: &RunShared,
    step: &Step,
    status: RunStatus,
    params: &IndexMap<String, String>,
) -> AttemptEnd {
    if !status.is_success() {
        let message = describe_terminal(&status);
        if status.result == Some(crate::backend::RunResult::Canceled) {
            return AttemptEnd::CanceledRemotely(message);
        }
        return AttemptEnd::Failed {
            message,
            retryable: status.retryable,
            kind: if status.retryable {
                RetryOn::Transient
            } else {
                RetryOn::Failure
            },
        };
    }
    // `expect`: datasets that must exist after success (where the environment has any).
    if let Some(expect) = &step.expect
        && !expect.datasets.is_empty()
        && !shared.backend.has_datasets()
    {
        shared.emit(Event::Warning {
            message: format!(
                "step {}: `expect` not checked: the {} target has no datasets",
                step.id,
                shared.backend.kind()
            ),
        });
        return AttemptEnd::Succeeded(status.outputs);
    }
    if let Some(expect) = &step.expect {
        let mut outputs = params.clone();
        outputs.extend(status.outputs.clone());
        for t in &expect.datasets {
            let name = match super::context::RunContext::render_with_outputs(t, &outputs) {
                Ok(n) => n,
                Err(e) => {
                    return AttemptEnd::Failed {
                        message: format!("cannot render `expect` dataset `{t}`: {e}"),
                        retryable: false,
                        kind: RetryOn::Failure,
                    };
                }
            };
            match shared.backend.find_dataset(&name).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return AttemptEnd::Failed {
                        message: format!(
                            "the job succeeded but the expected dataset `{name}` does not exist"
                        ),
                        retryable: false,
                        kind: RetryOn::Failure,
                    };
                }
                Err(e) => {
                    return AttemptEnd::Failed {
                        message: format!(
                            "cannot check the expected dataset `{name}`: {}",
                            e.message
                        ),
                        retryable: e.retryable,
                        kind: if e.retryable {
                            RetryOn::Transient
                        } else {
                            RetryOn::Failure
                        },
                    };
                }
            }
        }
    }
    AttemptEnd::Succeeded(status.outputs)
}

fn lifecycle_name(l: &Lifecycle) -> String {
    match l {
        Lifecycle::Queued => "queued".into(),
        Lifecycle::Pending => "pending".into(),
        Lifecycle::Running => "running".into(),
        Lifecycle::Terminating => "terminating".into(),
        Lifecycle::Terminated => "terminated".into(),
        Lifecycle::Unknown(s) => format!("unknown ({s})"),
    }
}

fn describe_terminal(s: &RunStatus) -> String {
    let result = match &s.result {
        Some(r) => format!("{r:?}").to_lowercase(),
        None => "ended without a result".into(),
    };
    match &s.message {
        Some(m) if !m.is_empty() => format!("{result}: {m}"),
        _ => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks made and detection latency for a run that ends after `run_secs`.
    fn simulate(policy: &PollPolicy, run_secs: f64, expected: Option<f64>) -> (u32, f64) {
        let expected = expected.map(Duration::from_secs_f64);
        let mut t = 0.0;
        let mut n = 0;
        loop {
            t += policy
                .delay_expecting(n, Duration::from_secs_f64(t), expected)
                .as_secs_f64();
            n += 1;
            if t >= run_secs {
                return (n, t - run_secs);
            }
        }
    }

    #[test]
    fn without_history_checks_grow_to_the_cap() {
        let p = PollPolicy::default();
        let delays: Vec<f64> = (0..8).map(|n| p.delay(n).as_secs_f64()).collect();
        assert_eq!(delays, [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
        let (calls, latency) = simulate(&p, 60.0, None);
        assert_eq!(calls, 11);
        assert!(latency <= 10.0);
    }

    #[test]
    fn with_history_a_run_ending_as_expected_takes_few_checks_within_the_cap() {
        let p = PollPolicy::default();
        for (secs, most_calls) in [(60.0, 5), (1800.0, 22), (7200.0, 70)] {
            let (calls, latency) = simulate(&p, secs, Some(secs));
            assert!(calls <= most_calls, "{secs}s: {calls} calls");
            assert!(latency <= 10.0, "{secs}s: {latency}s late");
            let (without, _) = simulate(&p, secs, None);
            assert!(calls < without);
        }
    }

    #[test]
    fn with_history_overruns_and_early_ends_stay_bounded() {
        let p = PollPolicy::default();
        // Longer than expected: noticed within the cap.
        for actual in [61.0, 75.0, 300.0, 2000.0] {
            let (_, latency) = simulate(&p, actual, Some(60.0));
            assert!(latency <= 10.0, "{actual}s: {latency}s late");
        }
        // Much shorter than expected: noticed within the far cap.
        for actual in [1.0, 100.0, 900.0] {
            let (_, latency) = simulate(&p, actual, Some(1800.0));
            assert!(latency <= 120.0, "{actual}s: {latency}s late");
        }
        // Short expected runs are checked at about their length, not after the cap.
        let (calls, latency) = simulate(&p, 2.0, Some(2.0));
        assert!(
            calls <= 2 && latency <= 0.5,
            "{calls} calls, {latency}s late"
        );
    }

    #[test]
    fn idempotency_keys_are_stable_and_fit_databricks() {
        let a = idempotency_key("r1", "s", None, 1);
        assert_eq!(a, idempotency_key("r1", "s", None, 1));
        assert_ne!(a, idempotency_key("r1", "s", Some(0), 1));
        assert_ne!(a, idempotency_key("r1", "s", None, 2));
        assert!(a.len() <= 64);
    }
}
