//! The Data Workbench gateway API v2: analytics (jobs, runs) and datasets.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use super::datasets::{by_id, dataset_json, pages};
use super::errors::GwError;
use super::runs::{self, Words, millis};
use super::{Emu, InvokeResponse, auth};
use crate::backend::Backend;

/// Largest page of datasets or rows.
const MAX_PAGE_SIZE: u64 = 1000;
const DEFAULT_PAGE_SIZE: u64 = 50;

/// Authentication, then the workspace id.
fn guard(emu: &Emu, headers: &HeaderMap, ws: &str) -> Result<(), GwError> {
    auth::check_gateway(emu, headers)?;
    if !ws.eq_ignore_ascii_case(&emu.config.workspace_id) {
        return Err(GwError::not_found(format!("Workspace {ws} was not found")));
    }
    Ok(())
}

fn parse_id(what: &str, text: &str) -> Result<u64, GwError> {
    text.parse()
        .map_err(|_| GwError::bad_request(format!("{what} must be an integer, not `{text}`")))
}

/// A JSON body: empty means `{}`.
fn json_body(body: &Bytes) -> Result<Map<String, Value>, GwError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(GwError::bad_request(
            "the request body must be a JSON object",
        )),
        Err(e) => Err(GwError::bad_request(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

/// `GET /workspaces/{ws}/jobs`
pub(crate) async fn list_jobs(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    Path(ws): Path<String>,
) -> Result<Response, GwError> {
    guard(&emu, &headers, &ws)?;
    let jobs = emu.backend.list_jobs().await?;
    let list: Vec<Value> = jobs
        .iter()
        .map(|j| {
            json!({
                "jobId": j.id,
                "jobName": j.name,
                "creatorUserName": j.creator.clone().unwrap_or_else(|| "local".into()),
                "createdTime": millis(j.created.as_deref()).unwrap_or(0),
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

/// `POST /workspaces/{ws}/jobs/{jobId}/invoke`
pub(crate) async fn invoke(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    Path((ws, job_id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, GwError> {
    guard(&emu, &headers, &ws)?;
    let job_id = parse_id("jobId", &job_id)?;
    let mut params = IndexMap::new();
    for (k, v) in json_body(&body)? {
        match v {
            Value::String(s) => {
                params.insert(k, s);
            }
            other => {
                return Err(GwError::bad_request(format!(
                    "job parameter `{k}` must be a string, not {other}"
                )));
            }
        }
    }
    let run_id = runs::invoke(&emu, job_id, params, None).await?;
    let body = match emu.config.invoke_response {
        InvokeResponse::Number => json!(run_id),
        InvokeResponse::String => json!(run_id.to_string()),
        InvokeResponse::Object => json!({"runId": run_id}),
    };
    Ok(axum::Json(body).into_response())
}

/// `GET /workspaces/{ws}/runs/{runId}/status`
pub(crate) async fn status(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    Path((ws, run_id)): Path<(String, String)>,
) -> Result<Response, GwError> {
    guard(&emu, &headers, &ws)?;
    let run_id = parse_id("runId", &run_id)?;
    let view = runs::view(&emu, run_id).await?;
    let mut words = Words::of(&view);
    if !view.is_terminal()
        && let Some(unknown) = emu.unknown_state()
    {
        words.replace_state(unknown);
    }
    Ok(axum::Json(json!({
        "runId": run_id,
        "jobId": view.job_id,
        "state": {
            "lifeCycleState": words.life_cycle,
            "resultState": words.result,
            "stateMessage": words.message,
        },
    }))
    .into_response())
}

/// `GET|POST /workspaces/{ws}/runs/{runId}/cancel`
pub(crate) async fn cancel(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    Path((ws, run_id)): Path<(String, String)>,
) -> Result<Response, GwError> {
    guard(&emu, &headers, &ws)?;
    let run_id = parse_id("runId", &run_id)?;
    runs::cancel(&emu, run_id).await?;
    Ok(axum::Json(json!({})).into_response())
}

/// Reads an optional positive integer field.
fn int_field(body: &Map<String, Value>, key: &str) -> Result<Option<u64>, GwError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .map(Some)
            .ok_or_else(|| GwError::bad_request(format!("`{key}` must be an integer, not {v}"))),
    }
}

fn str_field<'a>(body: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, GwError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(GwError::bad_request(format!(
            "`{key}` must be a string, not {v}"
        ))),
    }
}

/// `pageIndex` (1-based) and `pageSize` of a body.
fn paging(body: &Map<String, Value>) -> Result<(u64, u64), GwError> {
    let index = int_field(body, "pageIndex")?.unwrap_or(1);
    let size = int_field(body, "pageSize")?.unwrap_or(DEFAULT_PAGE_SIZE);
    if index < 1 {
        return Err(GwError::bad_request("`pageIndex` starts at 1"));
    }
    if !(1..=MAX_PAGE_SIZE).contains(&size) {
        return Err(GwError::bad_request(format!(
            "`pageSize` must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    Ok((index, size))
}

fn time_field(
    body: &Map<String, Value>,
    key: &str,
) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, GwError> {
    str_field(body, key)?
        .map(|s| {
            chrono::DateTime::parse_from_rfc3339(s).map_err(|e| {
                GwError::bad_request(format!("`{key}` must be an RFC 3339 time, not `{s}`: {e}"))
            })
        })
        .transpose()
}

/// `POST /workspaces/{ws}/datasets/query`
pub(crate) async fn query_datasets(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    Path(ws): Path<String>,
    body: Bytes,
) -> Result<Response, GwError> {
    guard(&emu, &headers, &ws)?;
    let body = json_body(&body)?;
    let (index, size) = paging(&body)?;
    let name = str_field(&body, "datasetName")?.map(str::to_lowercase);
    let after = time_field(&body, "createdAfter")?;
    let before = time_field(&body, "createdBefore")?;
    let all = emu.backend.list_datasets().await?;
    let matching: Vec<_> = all
        .iter()
        .filter(|d| {
            name.as_ref()
                .is_none_or(|n| d.name.to_lowercase().contains(n.as_str()))
        })
        .filter(|d| {
            let created = d
                .created
                .as_deref()
                .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok());
            after.is_none_or(|a| created.is_some_and(|c| c > a))
                && before.is_none_or(|b| created.is_some_and(|c| c < b))
        })
        .collect();
    let total = matching.len() as u64;
    let skip = usize::try_from((index - 1).saturating_mul(size)).unwrap_or(usize::MAX);
    let page: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(size as usize)
        .map(|d| dataset_json(d, &emu.config.workspace_id))
        .collect();
    Ok(axum::Json(json!({
        "result": page,
        "pageIndex": index,
        "pageSize": size,
        "totalCount": total,
        "totalPages": pages(total, size),
    }))
    .into_response())
}

/// `GET /workspaces/{ws}/datasets/{id}`
pub(crate) async fn get_dataset(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    Path((ws, id)): Path<(String, String)>,
) -> Result<Response, GwError> {
    guard(&emu, &headers, &ws)?;
    let info = by_id(&emu, &id)
        .await?
        .ok_or_else(|| GwError::not_found(format!("Dataset {id} was not found")))?;
    Ok(axum::Json(dataset_json(&info, &emu.config.workspace_id)).into_response())
}

/// `POST /workspaces/{ws}/datasets/{id}/query`
pub(crate) async fn query_rows(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    Path((ws, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, GwError> {
    guard(&emu, &headers, &ws)?;
    let body = json_body(&body)?;
    let (index, size) = paging(&body)?;
    let info = by_id(&emu, &id)
        .await?
        .ok_or_else(|| GwError::not_found(format!("Dataset {id} was not found")))?;
    let end = usize::try_from(index.saturating_mul(size)).unwrap_or(usize::MAX);
    let (rows, total) = match info.rows {
        Some(n) => (emu.backend.read_dataset(&info.name, Some(end)).await?, n),
        None => {
            let rows = emu.backend.read_dataset(&info.name, None).await?;
            let n = rows.rows.len() as u64;
            (rows, n)
        }
    };
    let skip = end.saturating_sub(size as usize);
    let data: Vec<Value> = rows
        .rows
        .iter()
        .skip(skip)
        .take(size as usize)
        .map(|row| {
            Value::Object(
                rows.columns
                    .iter()
                    .cloned()
                    .zip(row.iter().cloned())
                    .collect(),
            )
        })
        .collect();
    Ok(axum::Json(json!({
        "data": data,
        "pagination": {
            "pageIndex": index,
            "pageSize": size,
            "totalCount": total,
            "totalPages": pages(total, size),
        },
    }))
    .into_response())
}
