//! The Databricks Jobs API 2.1 subset: jobs list/get, run-now, runs get/cancel/get-output.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use super::errors::DbError;
use super::runs::{self, RunView, TASK_RUN_OFFSET, Words, millis};
use super::{Emu, auth};
use crate::backend::{Backend, BackendError, ErrorKind, JobRef};

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;
const MAX_IDEMPOTENCY_TOKEN: usize = 64;

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn query(q: Params) -> Result<HashMap<String, String>, DbError> {
    q.map(|Query(q)| q)
        .map_err(|e| DbError::invalid(format!("bad query string: {e}")))
}

/// A required numeric query parameter.
fn id_param(q: &HashMap<String, String>, key: &str) -> Result<u64, DbError> {
    let text = q
        .get(key)
        .ok_or_else(|| DbError::invalid(format!("Missing required field: {key}")))?;
    text.parse()
        .map_err(|_| DbError::invalid(format!("Invalid {key}: `{text}` is not an integer")))
}

/// A numeric field of a JSON body (a number, or a string of digits).
fn id_field(body: &Map<String, Value>, key: &str) -> Result<u64, DbError> {
    match body.get(key) {
        None | Some(Value::Null) => Err(DbError::invalid(format!("Missing required field: {key}"))),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| DbError::invalid(format!("Invalid {key}: {v} is not an integer"))),
    }
}

fn json_body(body: &Bytes) -> Result<Map<String, Value>, DbError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(DbError::invalid("the request body must be a JSON object")),
        Err(e) => Err(DbError::invalid(format!("Malformed request: {e}"))),
    }
}

fn job_not_found(job_id: u64) -> impl FnOnce(BackendError) -> DbError {
    move |e| {
        if e.kind == ErrorKind::NotFound {
            DbError::not_found(format!("Job {job_id} does not exist."))
        } else {
            e.into()
        }
    }
}

fn run_not_found(run_id: u64) -> impl FnOnce(BackendError) -> DbError {
    move |e| {
        if e.kind == ErrorKind::NotFound {
            DbError::not_found(format!("Run {run_id} does not exist."))
        } else {
            e.into()
        }
    }
}

fn encode_token(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_token(token: &str) -> Option<usize> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()?;
    String::from_utf8(bytes)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

/// `GET /api/2.1/jobs/list`
pub(crate) async fn list(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, DbError> {
    auth::check_databricks(&emu, &headers)?;
    let q = query(q)?;
    let limit = match q.get("limit").map(|s| s.parse::<usize>()) {
        None | Some(Ok(0)) => DEFAULT_LIMIT,
        Some(Ok(n)) if n <= MAX_LIMIT => n,
        Some(_) => {
            return Err(DbError::invalid(format!(
                "Invalid limit: must be an integer between 0 and {MAX_LIMIT}"
            )));
        }
    };
    let offset = match (q.get("page_token"), q.get("offset")) {
        (Some(t), _) if !t.is_empty() => {
            decode_token(t).ok_or_else(|| DbError::invalid(format!("Invalid page_token `{t}`")))?
        }
        (_, Some(o)) => o
            .parse()
            .map_err(|_| DbError::invalid(format!("Invalid offset `{o}`")))?,
        _ => 0,
    };
    let jobs = emu.backend.list_jobs().await?;
    let matching: Vec<_> = jobs
        .iter()
        .filter(|j| q.get("name").is_none_or(|n| &j.name == n))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(|j| {
            json!({
                "job_id": j.id,
                "creator_user_name": j.creator.clone().unwrap_or_else(|| "local".into()),
                "created_time": millis(j.created.as_deref()).unwrap_or(0),
                "settings": {"name": j.name},
            })
        })
        .collect();
    let next = offset.saturating_add(limit);
    let has_more = next < matching.len();
    let mut body = json!({"jobs": page, "has_more": has_more});
    if has_more {
        body["next_page_token"] = json!(encode_token(next));
    }
    Ok(axum::Json(body).into_response())
}

/// `GET /api/2.1/jobs/get`
pub(crate) async fn get(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, DbError> {
    auth::check_databricks(&emu, &headers)?;
    let q = query(q)?;
    let job_id = id_param(&q, "job_id")?;
    let job = emu
        .backend
        .describe_job(&JobRef::Id(job_id))
        .await
        .map_err(job_not_found(job_id))?;
    let params = job.parameters.clone().unwrap_or_default();
    let tags: Map<String, Value> = params
        .iter()
        .filter_map(|p| Some((p.name.clone(), json!(p.description.clone()?))))
        .collect();
    Ok(axum::Json(json!({
        "job_id": job.id,
        "creator_user_name": job.creator.clone().unwrap_or_else(|| "local".into()),
        "created_time": millis(job.created.as_deref()).unwrap_or(0),
        "settings": {
            "name": job.name,
            "parameters": params
                .iter()
                .map(|p| json!({"name": p.name, "default": p.default.clone().unwrap_or_default()}))
                .collect::<Vec<_>>(),
            "tags": tags,
            "tasks": [{"task_key": "main"}],
            "format": "MULTI_TASK",
            "max_concurrent_runs": 1000,
        },
    }))
    .into_response())
}

/// `POST /api/2.1/jobs/run-now`
pub(crate) async fn run_now(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DbError> {
    auth::check_databricks(&emu, &headers)?;
    let body = json_body(&body)?;
    let job_id = id_field(&body, "job_id")?;
    let mut params = IndexMap::new();
    match body.get("job_parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let Value::String(s) = v else {
                    return Err(DbError::invalid(format!(
                        "Invalid job_parameters: the value of `{k}` must be a string, not {v}"
                    )));
                };
                params.insert(k.clone(), s.clone());
            }
        }
        Some(v) => {
            return Err(DbError::invalid(format!(
                "Invalid job_parameters: expected an object of strings, not {v}"
            )));
        }
    }
    let token = match body.get("idempotency_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) if t.chars().count() <= MAX_IDEMPOTENCY_TOKEN => Some(t.as_str()),
        Some(Value::String(_)) => {
            return Err(DbError::invalid(format!(
                "Invalid idempotency_token: at most {MAX_IDEMPOTENCY_TOKEN} characters"
            )));
        }
        Some(v) => {
            return Err(DbError::invalid(format!(
                "Invalid idempotency_token: expected a string, not {v}"
            )));
        }
    };
    let run_id = runs::invoke(&emu, job_id, params, token)
        .await
        .map_err(job_not_found(job_id))?;
    Ok(axum::Json(json!({"run_id": run_id, "number_in_job": run_id})).into_response())
}

/// A run (or its task run) in the Jobs API's shape.
fn run_json(emu: &Emu, view: &RunView, as_task: bool) -> Value {
    let mut words = Words::of(view);
    if !view.is_terminal()
        && let Some(unknown) = emu.unknown_state()
    {
        words.replace_state(unknown);
    }
    let state = {
        let mut s = json!({
            "life_cycle_state": words.life_cycle,
            "state_message": words.message,
            "user_cancelled_or_timedout": matches!(
                words.result.as_deref(),
                Some("CANCELED" | "TIMEDOUT")
            ),
        });
        if let Some(r) = &words.result {
            s["result_state"] = json!(r);
        }
        s
    };
    let status = {
        let mut s = json!({"state": words.status_state});
        if let Some((code, ty)) = words.termination {
            s["termination_details"] = json!({
                "code": code,
                "type": ty,
                "message": words.message,
            });
        }
        s
    };
    let end = view.end_ms.unwrap_or(0);
    let task = json!({
        "run_id": view.task_run_id(),
        "task_key": "main",
        "state": state,
        "status": status,
        "start_time": view.start_ms,
        "end_time": end,
    });
    let mut run = json!({
        "job_id": view.job_id,
        "run_id": if as_task { view.task_run_id() } else { view.run_id },
        "number_in_job": view.run_id,
        "run_name": view.job_name,
        "creator_user_name": "local",
        "state": state,
        "status": status,
        "job_parameters": view
            .params
            .iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect::<Vec<_>>(),
        "start_time": view.start_ms,
        "end_time": end,
        "run_type": "JOB_RUN",
        "format": "MULTI_TASK",
    });
    if as_task {
        run["task_key"] = json!("main");
        run["parent_run_id"] = json!(view.run_id);
    } else {
        run["tasks"] = json!([task]);
    }
    run
}

/// A job run id, or the job run of a task run id: `(job run id, is a task run)`.
fn resolve_run(emu: &Emu, id: u64) -> (u64, bool) {
    if !emu.runs.exists(id)
        && let Some(parent) = id.checked_sub(TASK_RUN_OFFSET)
        && emu.runs.exists(parent)
    {
        return (parent, true);
    }
    (id, false)
}

/// `GET /api/2.1/jobs/runs/get`
pub(crate) async fn runs_get(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, DbError> {
    auth::check_databricks(&emu, &headers)?;
    let q = query(q)?;
    let id = id_param(&q, "run_id")?;
    let (run_id, as_task) = resolve_run(&emu, id);
    let view = runs::view(&emu, run_id).await.map_err(run_not_found(id))?;
    Ok(axum::Json(run_json(&emu, &view, as_task)).into_response())
}

/// `POST /api/2.1/jobs/runs/cancel`
pub(crate) async fn runs_cancel(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, DbError> {
    auth::check_databricks(&emu, &headers)?;
    let body = json_body(&body)?;
    let id = id_field(&body, "run_id")?;
    let (run_id, _) = resolve_run(&emu, id);
    runs::cancel(&emu, run_id)
        .await
        .map_err(run_not_found(id))?;
    Ok(axum::Json(json!({})).into_response())
}

/// `GET /api/2.1/jobs/runs/get-output` (of a task run)
pub(crate) async fn get_output(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, DbError> {
    auth::check_databricks(&emu, &headers)?;
    let q = query(q)?;
    let id = id_param(&q, "run_id")?;
    if emu.runs.exists(id) {
        return Err(DbError::invalid(format!(
            "Retrieving the output of runs with multiple tasks is not supported. Please retrieve the output of each individual task run instead (task run id {}).",
            id + TASK_RUN_OFFSET
        )));
    }
    let (run_id, as_task) = resolve_run(&emu, id);
    if !as_task {
        return Err(DbError::not_found(format!("Run {id} does not exist.")));
    }
    let view = runs::view(&emu, run_id).await.map_err(run_not_found(id))?;
    let mut out = json!({"metadata": run_json(&emu, &view, true)});
    if view.is_terminal() {
        let result = serde_json::to_string(&view.outputs).unwrap_or_else(|_| "{}".into());
        out["notebook_output"] = json!({"result": result, "truncated": false});
        if !view.result.as_ref().is_some_and(|r| r.is_success()) {
            out["error"] = json!(
                view.message
                    .clone()
                    .unwrap_or_else(|| "the run failed".into())
            );
            if !view.stderr_tail.is_empty() {
                out["error_trace"] = json!(view.stderr_tail);
            }
        }
    }
    Ok(axum::Json(out).into_response())
}
