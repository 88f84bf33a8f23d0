//! Reading a remote run's state. The Veracity gateway's `runs/{id}/status` answer is not
//! documented, so this parser accepts every plausible form (API-NOTES.md): the Databricks
//! run state passed through in camelCase or snake_case, with or without the `state`
//! wrapper; the newer `status.state` with `termination_details`; and the gateway's
//! ingest-style words (`"Running"`, `"Completed"`, `"Failed"`), bare or as `{"status": ..}`.
//! Keys and values are compared case-insensitively. Nothing unknown is ever success: an
//! unknown life cycle is [`Lifecycle::Unknown`] (not finished), an unknown result is
//! [`RunResult::Other`].

use serde_json::{Map, Value};

use super::wire::{get_ci, text};
use super::{Lifecycle, RunResult, RunStatus};

/// `Waiting for retry`, `waiting-for-retry` and `WAITING_FOR_RETRY` all become
/// `WAITING_FOR_RETRY`.
fn norm_word(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| {
            if c == ' ' || c == '-' {
                '_'
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect()
}

/// What one source of state information says.
#[derive(Debug, Default)]
struct Reading {
    /// The life cycle word as found, and what it maps to.
    lifecycle: Option<(String, Lifecycle)>,
    /// A result implied by the life cycle word (SKIPPED, INTERNAL_ERROR, "Completed").
    implied: Option<RunResult>,
    result: Option<RunResult>,
    messages: Vec<String>,
    retryable: bool,
}

/// Maps a life cycle word. The ingest-style words (`Completed`, `Failed`) imply a result.
fn lifecycle_word(raw: &str) -> (Lifecycle, Option<RunResult>, bool) {
    match norm_word(raw).as_str() {
        "QUEUED" | "BLOCKED" | "NOTSTARTED" | "NOT_STARTED" | "CREATED" | "SUBMITTED"
        | "ACCEPTED" => (Lifecycle::Queued, None, false),
        "PENDING" | "WAITING" | "WAITING_FOR_RETRY" | "STARTING" => {
            (Lifecycle::Pending, None, false)
        }
        "RUNNING" | "INPROGRESS" | "IN_PROGRESS" | "STARTED" | "PROCESSING" => {
            (Lifecycle::Running, None, false)
        }
        "TERMINATING" | "CANCELING" | "CANCELLING" => (Lifecycle::Terminating, None, false),
        "TERMINATED" => (Lifecycle::Terminated, None, false),
        "SKIPPED" => (Lifecycle::Terminated, Some(RunResult::Skipped), false),
        "INTERNAL_ERROR" => (Lifecycle::Terminated, Some(RunResult::InternalError), true),
        // Ingest-style words of the gateway.
        "COMPLETED" | "SUCCEEDED" => (Lifecycle::Terminated, Some(RunResult::Success), false),
        "FAILED" | "ERROR" => (Lifecycle::Terminated, Some(RunResult::Failed), false),
        "CANCELED" | "CANCELLED" => (Lifecycle::Terminated, Some(RunResult::Canceled), false),
        "TIMEDOUT" | "TIMED_OUT" => (Lifecycle::Terminated, Some(RunResult::TimedOut), false),
        _ => (Lifecycle::Unknown(raw.trim().to_string()), None, false),
    }
}

/// Maps a result word (`result_state` or a termination code).
fn result_word(raw: &str) -> (RunResult, bool) {
    match norm_word(raw).as_str() {
        "SUCCESS" | "SUCCEEDED" | "COMPLETED" => (RunResult::Success, false),
        "FAILED" | "FAILURE" | "ERROR" | "RUN_EXECUTION_ERROR" | "DRIVER_ERROR" => {
            (RunResult::Failed, false)
        }
        "TIMEDOUT" | "TIMED_OUT" | "TIMEOUT" | "RUN_TIMED_OUT" => (RunResult::TimedOut, false),
        "CANCELED" | "CANCELLED" | "USER_CANCELED" | "USER_CANCELLED" => {
            (RunResult::Canceled, false)
        }
        "SKIPPED" => (RunResult::Skipped, false),
        "INTERNAL_ERROR" => (RunResult::InternalError, true),
        // Hitting the job's concurrency limit is transient by nature.
        "MAXIMUM_CONCURRENT_RUNS_REACHED" | "MAX_CONCURRENT_RUNS_EXCEEDED" => {
            (RunResult::Other(norm_word(raw)), true)
        }
        "CLOUD_FAILURE" => (RunResult::Other(norm_word(raw)), true),
        // SUCCESS_WITH_FAILURES, EXCLUDED, UPSTREAM_FAILED, DISABLED, ...: never success.
        _ => (RunResult::Other(norm_word(raw)), false),
    }
}

/// Reads the Databricks-style fields of one object (the `state` object, or the top level
/// when there is no wrapper).
fn read_state_fields(obj: &Map<String, Value>, r: &mut Reading) {
    if let Some(lc) = get_ci(obj, &["lifeCycleState", "lifecycle"]).and_then(text) {
        let (l, implied, retry) = lifecycle_word(&lc);
        r.lifecycle = Some((lc, l));
        r.implied = implied;
        r.retryable |= retry;
    }
    if let Some(rs) = get_ci(obj, &["resultState", "result"]).and_then(text) {
        let (res, retry) = result_word(&rs);
        r.result = Some(res);
        r.retryable |= retry;
    }
    if let Some(m) = get_ci(obj, &["stateMessage", "message", "errorMessage"]).and_then(text) {
        r.messages.push(m);
    }
}

/// Reads the newer `status` object: `{state, termination_details: {code, type, message}}`.
fn read_status_object(obj: &Map<String, Value>, r: &mut Reading) {
    if let Some(s) = get_ci(obj, &["state", "status"]).and_then(text) {
        let (l, implied, retry) = lifecycle_word(&s);
        r.lifecycle = Some((s, l));
        r.implied = implied;
        r.retryable |= retry;
    }
    // Ingest style may carry its own message beside the word.
    if let Some(m) = get_ci(obj, &["message", "stateMessage", "errorMessage"]).and_then(text) {
        r.messages.push(m);
    }
    if let Some(Value::Object(td)) = get_ci(obj, &["terminationDetails"]) {
        if let Some(code) = get_ci(td, &["code"]).and_then(text) {
            let (res, retry) = result_word(&code);
            r.result = Some(res);
            r.retryable |= retry;
        }
        if let Some(t) = get_ci(td, &["type"]).and_then(text) {
            match norm_word(&t).as_str() {
                "INTERNAL_ERROR" | "CLOUD_FAILURE" => r.retryable = true,
                // A client error is the job's or the caller's own: not worth retrying.
                _ => {}
            }
            // A termination type that is not SUCCESS never lets the run count as one.
            if norm_word(&t) != "SUCCESS" && r.result == Some(RunResult::Success) {
                r.result = Some(RunResult::Other(norm_word(&t)));
            }
        }
        if let Some(m) = get_ci(td, &["message"]).and_then(text) {
            r.messages.push(m);
        }
    }
    if let Some(Value::Object(qd)) = get_ci(obj, &["queueDetails"])
        && let Some(m) = get_ci(qd, &["message"]).and_then(text)
    {
        r.messages.push(m);
    }
}

fn reading_of(v: &Value) -> Reading {
    let mut r = Reading::default();
    match v {
        Value::String(s) => {
            let (l, implied, retry) = lifecycle_word(s);
            r.lifecycle = Some((s.clone(), l));
            r.implied = implied;
            r.retryable = retry;
        }
        Value::Object(obj) => {
            let state = get_ci(obj, &["state"]);
            let status = get_ci(obj, &["status"]);
            let mut readings = Vec::new();
            // `state`: the Databricks state object, or a bare word.
            match state {
                Some(Value::Object(inner)) => {
                    let mut s = Reading::default();
                    read_state_fields(inner, &mut s);
                    readings.push(s);
                }
                Some(other) if text(other).is_some() => {
                    let mut s = Reading::default();
                    read_status_object(obj, &mut s);
                    readings.push(s);
                }
                _ => {}
            }
            // `status`: the newer status object, or an ingest-style word.
            match status {
                Some(Value::Object(inner)) => {
                    let mut s = Reading::default();
                    read_status_object(inner, &mut s);
                    readings.push(s);
                }
                Some(other)
                    if text(other).is_some() && !matches!(state, Some(s) if text(s).is_some()) =>
                {
                    let mut s = Reading::default();
                    read_status_object(obj, &mut s);
                    readings.push(s);
                }
                _ => {}
            }
            // Top-level fields without a wrapper.
            let mut top = Reading::default();
            read_state_fields(obj, &mut top);
            if top.lifecycle.is_some() || top.result.is_some() {
                readings.push(top);
            } else if readings.is_empty()
                && let Some(m) = get_ci(obj, &["message", "stateMessage"]).and_then(text)
            {
                r.messages.push(m);
            }
            for s in readings {
                merge(&mut r, s);
            }
        }
        _ => {}
    }
    r
}

/// Combines two readings conservatively: the run is finished only if every reading that
/// names a life cycle says so, and successful only if no reading says otherwise.
fn merge(into: &mut Reading, other: Reading) {
    into.lifecycle = match (into.lifecycle.take(), other.lifecycle) {
        (None, b) => b,
        (a, None) => a,
        (Some(a), Some(b)) => {
            if a.1.is_terminal() && !b.1.is_terminal() {
                Some(b)
            } else {
                Some(a)
            }
        }
    };
    into.implied = worse(into.implied.take(), other.implied);
    into.result = worse(into.result.take(), other.result);
    into.retryable |= other.retryable;
    for m in other.messages {
        if !into.messages.contains(&m) {
            into.messages.push(m);
        }
    }
}

fn worse(a: Option<RunResult>, b: Option<RunResult>) -> Option<RunResult> {
    match (a, b) {
        (None, b) => b,
        (a, None) => a,
        (Some(RunResult::Success), Some(b)) => Some(b),
        (Some(a), Some(_)) => Some(a),
    }
}

/// Parses a run status answer of any accepted shape.
pub fn parse_run_status(v: &Value) -> RunStatus {
    let r = reading_of(v);
    let (lifecycle, result) = match (r.lifecycle, r.result, r.implied) {
        (Some((_, l)), result, implied) if l.is_terminal() => {
            let res = worse(implied, result)
                .unwrap_or_else(|| RunResult::Other("NO_RESULT_REPORTED".into()));
            (l, Some(res))
        }
        (Some((_, l)), _, _) => (l, None),
        // A result without a life cycle: the run is over.
        (None, Some(res), implied) => (
            Lifecycle::Terminated,
            worse(implied, Some(res)).or(Some(RunResult::Other("NO_RESULT_REPORTED".into()))),
        ),
        (None, None, _) => {
            let shown = excerpt(v);
            (
                Lifecycle::Unknown(format!("unrecognised answer {shown}")),
                None,
            )
        }
    };
    let retryable = lifecycle.is_terminal()
        && (r.retryable || matches!(result, Some(RunResult::InternalError)))
        && !matches!(result, Some(RunResult::Success));
    RunStatus {
        lifecycle,
        result,
        message: if r.messages.is_empty() {
            None
        } else {
            Some(r.messages.join("; "))
        },
        retryable,
        outputs: Default::default(),
    }
}

fn excerpt(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 120 {
        format!("{}…", s.chars().take(120).collect::<String>())
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> RunStatus {
        parse_run_status(&v)
    }

    #[test]
    fn databricks_camel_case_success() {
        let s = parse(
            json!({"state": {"lifeCycleState": "TERMINATED", "resultState": "SUCCESS", "stateMessage": ""}}),
        );
        assert!(s.is_success());
        assert_eq!(s.result, Some(RunResult::Success));
        assert!(!s.retryable);
        assert_eq!(s.message, None);
    }

    #[test]
    fn databricks_snake_case_failure_with_message() {
        let s = parse(
            json!({"state": {"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": "Task failed with error"}}),
        );
        assert!(s.is_terminal());
        assert!(!s.is_success());
        assert_eq!(s.result, Some(RunResult::Failed));
        assert_eq!(s.message.as_deref(), Some("Task failed with error"));
        assert!(!s.retryable);
    }

    #[test]
    fn top_level_fields_without_state_wrapper() {
        let s = parse(json!({"lifeCycleState": "RUNNING", "stateMessage": "In run"}));
        assert_eq!(s.lifecycle, Lifecycle::Running);
        let s = parse(json!({"life_cycle_state": "terminated", "result_state": "success"}));
        assert!(s.is_success());
        let s = parse(json!({"LifeCycleState": "Terminated", "ResultState": "Canceled"}));
        assert_eq!(s.result, Some(RunResult::Canceled));
    }

    #[test]
    fn not_finished_states() {
        for w in [
            "QUEUED",
            "PENDING",
            "BLOCKED",
            "WAITING_FOR_RETRY",
            "WAITING",
            "RUNNING",
            "TERMINATING",
        ] {
            let s = parse(json!({"state": {"life_cycle_state": w}}));
            assert!(!s.is_terminal(), "{w}");
            assert!(!matches!(s.lifecycle, Lifecycle::Unknown(_)), "{w}");
            assert!(!s.is_success());
        }
    }

    #[test]
    fn terminal_life_cycles_are_not_success() {
        let s = parse(json!({"state": {"life_cycle_state": "SKIPPED"}}));
        assert!(s.is_terminal());
        assert_eq!(s.result, Some(RunResult::Skipped));
        assert!(!s.retryable);
        let s = parse(
            json!({"state": {"life_cycle_state": "INTERNAL_ERROR", "state_message": "boom"}}),
        );
        assert!(s.is_terminal());
        assert_eq!(s.result, Some(RunResult::InternalError));
        assert!(s.retryable);
        assert!(!s.is_success());
    }

    #[test]
    fn result_vocabulary() {
        for (w, success) in [
            ("SUCCESS", true),
            ("FAILED", false),
            ("TIMEDOUT", false),
            ("CANCELED", false),
            ("MAXIMUM_CONCURRENT_RUNS_REACHED", false),
            ("EXCLUDED", false),
            ("SUCCESS_WITH_FAILURES", false),
            ("UPSTREAM_FAILED", false),
            ("UPSTREAM_CANCELED", false),
            ("DISABLED", false),
            ("SOMETHING_NEW", false),
        ] {
            let s = parse(json!({"state": {"life_cycle_state": "TERMINATED", "result_state": w}}));
            assert!(s.is_terminal(), "{w}");
            assert_eq!(s.is_success(), success, "{w}");
        }
        let s =
            parse(json!({"state": {"life_cycle_state": "TERMINATED", "result_state": "TIMEDOUT"}}));
        assert_eq!(s.result, Some(RunResult::TimedOut));
        let s = parse(
            json!({"state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS_WITH_FAILURES"}}),
        );
        assert_eq!(
            s.result,
            Some(RunResult::Other("SUCCESS_WITH_FAILURES".into()))
        );
    }

    #[test]
    fn terminated_without_result_is_not_success() {
        let s = parse(json!({"state": {"life_cycle_state": "TERMINATED"}}));
        assert!(s.is_terminal());
        assert!(!s.is_success());
    }

    #[test]
    fn newer_status_with_termination_details() {
        let s = parse(
            json!({"status": {"state": "TERMINATED", "termination_details": {"code": "SUCCESS", "type": "SUCCESS", "message": ""}}}),
        );
        assert!(s.is_success());
        let s = parse(
            json!({"status": {"state": "TERMINATED", "termination_details": {"code": "DRIVER_ERROR", "type": "CLOUD_FAILURE", "message": "The driver was lost"}}}),
        );
        assert!(s.is_terminal());
        assert!(!s.is_success());
        assert!(s.retryable);
        assert_eq!(s.message.as_deref(), Some("The driver was lost"));
        let s = parse(
            json!({"status": {"state": "TERMINATED", "termination_details": {"code": "RUN_EXECUTION_ERROR", "type": "CLIENT_ERROR", "message": "ZeroDivisionError"}}}),
        );
        assert_eq!(s.result, Some(RunResult::Failed));
        assert!(!s.retryable);
        let s = parse(
            json!({"status": {"state": "TERMINATED", "termination_details": {"code": "INTERNAL_ERROR", "type": "INTERNAL_ERROR"}}}),
        );
        assert!(s.retryable);
        assert_eq!(s.result, Some(RunResult::InternalError));
        let s = parse(json!({"status": {"state": "WAITING"}}));
        assert_eq!(s.lifecycle, Lifecycle::Pending);
        let s = parse(
            json!({"status": {"state": "QUEUED", "queue_details": {"code": "ACTIVE_RUNS_LIMIT_REACHED", "message": "queued behind 3 runs"}}}),
        );
        assert_eq!(s.lifecycle, Lifecycle::Queued);
        assert_eq!(s.message.as_deref(), Some("queued behind 3 runs"));
    }

    #[test]
    fn success_code_with_failing_type_is_not_success() {
        let s = parse(
            json!({"status": {"state": "TERMINATED", "termination_details": {"code": "SUCCESS", "type": "CLIENT_ERROR"}}}),
        );
        assert!(!s.is_success());
    }

    #[test]
    fn both_state_and_status_must_agree_on_success() {
        let s = parse(json!({
            "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
            "status": {"state": "TERMINATED", "termination_details": {"code": "CANCELED", "type": "SUCCESS"}}
        }));
        assert!(!s.is_success());
        assert_eq!(s.result, Some(RunResult::Canceled));
        // One says running: not finished yet.
        let s = parse(json!({
            "state": {"life_cycle_state": "RUNNING"},
            "status": {"state": "TERMINATED", "termination_details": {"code": "SUCCESS", "type": "SUCCESS"}}
        }));
        assert!(!s.is_terminal());
    }

    #[test]
    fn ingest_style_words() {
        let s = parse(json!("Running"));
        assert_eq!(s.lifecycle, Lifecycle::Running);
        let s = parse(json!("Completed"));
        assert!(s.is_success());
        let s = parse(json!("Failed"));
        assert!(s.is_terminal());
        assert_eq!(s.result, Some(RunResult::Failed));
        let s = parse(json!({"status": "Completed"}));
        assert!(s.is_success());
        let s = parse(json!({"status": "failed", "message": "bad input"}));
        assert_eq!(s.result, Some(RunResult::Failed));
        assert_eq!(s.message.as_deref(), Some("bad input"));
        let s = parse(json!({"status": "Running"}));
        assert_eq!(s.lifecycle, Lifecycle::Running);
        let s = parse(json!({"state": "Completed"}));
        assert!(s.is_success());
        let s = parse(json!({"state": "PENDING"}));
        assert_eq!(s.lifecycle, Lifecycle::Pending);
    }

    #[test]
    fn unknown_words_are_not_finished_and_never_success() {
        let s = parse(json!({"state": {"life_cycle_state": "HIBERNATING"}}));
        assert_eq!(s.lifecycle, Lifecycle::Unknown("HIBERNATING".into()));
        assert!(!s.is_terminal());
        assert!(!s.is_success());
        let s = parse(json!("Sleeping"));
        assert_eq!(s.lifecycle, Lifecycle::Unknown("Sleeping".into()));
        let s = parse(json!({"foo": 1}));
        assert!(matches!(s.lifecycle, Lifecycle::Unknown(_)));
        let s = parse(json!(42));
        assert!(matches!(s.lifecycle, Lifecycle::Unknown(_)));
        let s = parse(json!(null));
        assert!(matches!(s.lifecycle, Lifecycle::Unknown(_)));
    }

    #[test]
    fn result_without_life_cycle_means_finished() {
        let s = parse(json!({"resultState": "SUCCESS"}));
        assert!(s.is_success());
        let s = parse(json!({"result_state": "FAILED"}));
        assert!(s.is_terminal() && !s.is_success());
    }

    #[test]
    fn databricks_runs_get_shape() {
        let s = parse(json!({
            "job_id": 11223344,
            "run_id": 455644833,
            "number_in_job": 455644833,
            "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS", "state_message": "", "user_cancelled_or_timedout": false},
            "status": {"state": "TERMINATED", "termination_details": {"code": "SUCCESS", "type": "SUCCESS", "message": ""}},
            "tasks": [{"run_id": 2112892, "task_key": "Orders_Ingest", "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"}}]
        }));
        assert!(s.is_success());
    }
}
