//! The HTTP API (JSON) and the routes of the page. Every `/api/*` route and `/metrics`
//! require the API bearer token when one is configured; `/api/events` takes a signed
//! body instead (or the token); `/healthz` and the page's static files are open (they
//! carry no data).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{SIGNATURE_HEADER, TIMESTAMP_HEADER, TOLERANCE_SECS};
use super::catalog::{Entry, Problem};
use super::manager::{Admission, CancelOutcome};
use super::{Service, StartError, web};

type Shared = Arc<Service>;

/// Largest event or request body accepted.
const MAX_BODY: usize = 1 << 20;

pub fn router(service: Shared) -> Router {
    let api = Router::new()
        .route("/api/pipelines", get(pipelines))
        .route("/api/pipelines/{name}", get(pipeline))
        .route("/api/pipelines/{name}/runs", post(start_run))
        .route("/api/runs", get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/reload", post(reload))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&service),
            require_token,
        ));
    Router::new()
        .merge(api)
        .route("/api/events", post(events))
        .route("/healthz", get(healthz))
        .route("/", get(web::index))
        .route("/runs/{id}", get(web::index))
        .route("/assets/app.js", get(web::app_js))
        .route("/assets/style.css", get(web::style))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&service),
            same_origin,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(service)
}

/// Whether a `Host` (or `Origin` host) names this machine's loopback, by the same rule
/// as the HTTP clients' loopback check.
fn is_loopback_host(host: &str) -> bool {
    url::Url::parse(&format!("http://{host}/")).is_ok_and(|u| crate::backend::http::is_loopback(&u))
}

/// Guards against other web sites driving the API through a user's browser: a POST
/// must carry JSON (a cross-site form cannot, without a preflight this server never
/// answers), and a request from a page of another origin is refused. Without an API
/// token (loopback only) the Host must be loopback too, so that a rebound DNS name
/// cannot read the API.
async fn same_origin(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if s.auth.api_token.is_none() && !host.is_empty() && !is_loopback_host(&host) {
        return error(
            StatusCode::FORBIDDEN,
            "without an API token this service answers loopback host names only",
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin != "null" && !origin_host.eq_ignore_ascii_case(&host) {
            return error(StatusCode::FORBIDDEN, "cross-origin requests are refused");
        }
    }
    if req.method() == axum::http::Method::POST && req.uri().path() != "/api/events" {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            });
        if !json {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send `Content-Type: application/json` (with `{}` as the body if there is nothing to say)",
            );
        }
    }
    next.run(req).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn require_token(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match s.auth.check_api(authorization) {
        Ok(()) => next.run(req).await,
        Err(refusal) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"error": refusal.to_string()})),
        )
            .into_response(),
    }
}

async fn healthz(State(s): State<Shared>) -> Response {
    let c = s.catalog();
    axum::Json(json!({
        "status": "ok",
        "pipelines": c.by_name.len(),
        "invalid": c.invalid().count(),
        "runs_in_flight": s.manager.in_flight(),
    }))
    .into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    let by_state = s.store.count_by_state().unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(&by_state, s.manager.in_flight()),
    )
        .into_response()
}

fn entry_json(e: &Entry) -> Value {
    let problems: Vec<Problem> = e.diagnostics.iter().map(Problem::from).collect();
    let mut v = json!({
        "name": e.name,
        "file": e.file,
        "valid": e.checked.is_some(),
        "source_sha256": e.source_sha256,
        "problems": problems,
    });
    if let Some(c) = &e.checked {
        let p = &c.pipeline;
        v["description"] = json!(p.description);
        // A secret's default is a secret too.
        let mut params = json!(p.params);
        if let Some(map) = params.as_object_mut() {
            for (name, spec) in map.iter_mut() {
                if p.params.get(name).is_some_and(|s| s.secret) && !spec["default"].is_null() {
                    spec["default"] = json!(crate::plan::MASK);
                }
            }
        }
        v["params"] = params;
        v["triggers"] = json!(p.on);
        let steps: Vec<Value> = p
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let needs: Vec<&str> = c
                    .graph
                    .deps(i)
                    .iter()
                    .map(|d| p.steps[*d].id.as_str())
                    .collect();
                json!({
                    "id": s.id,
                    "job": s.job.clone().or_else(|| s.job_id.map(|id| format!("job_id {id}"))),
                    "needs": needs,
                })
            })
            .collect();
        v["steps"] = json!(steps);
    }
    v
}

async fn pipelines(State(s): State<Shared>) -> Response {
    let c = s.catalog();
    let list: Vec<Value> = c.entries.iter().map(entry_json).collect();
    axum::Json(json!({
        "commit": c.commit,
        "loaded_at": c.loaded_at,
        "pipelines": list,
    }))
    .into_response()
}

async fn pipeline(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    let c = s.catalog();
    // A valid pipeline of that name first; else an invalid file that declares it.
    let found = c
        .entries
        .iter()
        .filter(|e| e.name.as_deref() == Some(name.as_str()))
        .max_by_key(|e| e.checked.is_some());
    match found {
        Some(e) => axum::Json(entry_json(e)).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("no pipeline named `{name}`")),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    #[serde(default)]
    params: serde_json::Map<String, Value>,
}

async fn start_run(State(s): State<Shared>, Path(name): Path<String>, body: Bytes) -> Response {
    let body: StartBody = if body.iter().all(u8::is_ascii_whitespace) {
        StartBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    axum::Json(json!({
                        "error": "the body must be {\"params\": {NAME: VALUE}}",
                        "problems": [e.to_string()],
                    })),
                )
                    .into_response();
            }
        }
    };
    match s.start_manual(&name, &body.params) {
        Ok(a) => {
            let payload = json!({
                "run_id": a.run_id,
                "state": a.state,
                "url": format!("/runs/{}", a.run_id),
            });
            if a.state == Admission::Skipped {
                let mut p = payload;
                p["error"] = json!(
                    "a run of this pipeline is in flight and its concurrency policy is `skip`"
                );
                (StatusCode::CONFLICT, axum::Json(p)).into_response()
            } else {
                (StatusCode::CREATED, axum::Json(payload)).into_response()
            }
        }
        Err(StartError::NotFound(n)) => error(
            StatusCode::NOT_FOUND,
            format!("no valid pipeline named `{n}`"),
        ),
        Err(StartError::Invalid(problems)) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid parameters", "problems": problems})),
        )
            .into_response(),
        Err(e @ StartError::Store(_)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e @ StartError::ShuttingDown) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Deserialize)]
struct RunsQuery {
    pipeline: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

async fn runs(State(s): State<Shared>, Query(q): Query<RunsQuery>) -> Response {
    const STATES: &[&str] = &[
        "queued",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "timed_out",
        "interrupted",
        "skipped",
    ];
    if let Some(state) = q.state.as_deref()
        && !STATES.contains(&state)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("unknown state `{state}`; one of {}", STATES.join(", ")),
        );
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match s
        .store
        .runs(q.pipeline.as_deref(), q.state.as_deref(), limit)
    {
        Ok(rows) => axum::Json(json!({"runs": rows})).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn run(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    let row = match s.store.run(&id) {
        Ok(Some(r)) => r,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let steps = s.store.steps(&id).unwrap_or_default();
    let attempts = s.store.attempts(&id).unwrap_or_default();
    let mut v = serde_json::to_value(&row).unwrap_or_else(|_| json!({}));
    v["in_flight"] = json!(s.manager.is_in_flight(&id));
    v["steps"] = json!(steps);
    v["attempts"] = json!(attempts);
    axum::Json(v).into_response()
}

async fn cancel(State(s): State<Shared>, Path(id): Path<String>) -> Response {
    match s.manager.cancel(&id) {
        Ok(CancelOutcome::Canceling) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"run_id": id, "state": "canceling"})),
        )
            .into_response(),
        Ok(CancelOutcome::Canceled) => (
            StatusCode::ACCEPTED,
            axum::Json(json!({"run_id": id, "state": "canceled"})),
        )
            .into_response(),
        Ok(CancelOutcome::Finished(state)) => (
            StatusCode::CONFLICT,
            axum::Json(json!({"error": format!("run `{id}` already ended ({state})"), "run_id": id, "state": state})),
        )
            .into_response(),
        Ok(CancelOutcome::NotFound) => error(StatusCode::NOT_FOUND, format!("no run `{id}`")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn reload(State(s): State<Shared>) -> Response {
    let c = s.reload().await;
    let invalid: Vec<Value> = c
        .invalid()
        .map(|e| {
            let problems: Vec<Problem> = e.diagnostics.iter().map(Problem::from).collect();
            json!({"file": e.file, "problems": problems})
        })
        .collect();
    axum::Json(json!({
        "pipelines": c.by_name.len(),
        "invalid": invalid,
        "commit": c.commit,
    }))
    .into_response()
}

async fn events(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = chrono::Utc::now().timestamp();
    let signature = match s.auth.check_event(
        h(header::AUTHORIZATION.as_str()),
        h(TIMESTAMP_HEADER),
        h(SIGNATURE_HEADER),
        &body,
        now,
    ) {
        Ok(sig) => sig,
        Err(refusal) => {
            s.metrics.event("unauthorized");
            tracing::warn!("event refused: {refusal}");
            return error(StatusCode::UNAUTHORIZED, refusal.to_string());
        }
    };
    let event: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            s.metrics.event("invalid");
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be a JSON object with a `type`",
            );
        }
    };
    if event
        .get("type")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        s.metrics.event("invalid");
        return error(
            StatusCode::BAD_REQUEST,
            "the event has no `type` (a non-empty string)",
        );
    }
    // A delivery is remembered only once it was handled, so that a bad request can be
    // fixed and sent again, and one cut off by a crash can be sent again; its runs are
    // keyed by the signature, so handling it twice never starts them twice.
    if let Some(sig) = &signature {
        match s.store.delivery_seen(sig) {
            Ok(false) => {}
            Ok(true) => {
                s.metrics.event("replay");
                tracing::warn!("event refused: replayed signature");
                return error(
                    StatusCode::UNAUTHORIZED,
                    "this signed event was already delivered (replay)",
                );
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    s.metrics.event("accepted");
    let out = s.handle_event(&event, signature.as_deref());
    if let Some(sig) = &signature
        && let Err(e) = s.store.accept_delivery(sig, now, 2 * TOLERANCE_SECS)
    {
        tracing::error!("cannot record the delivery: {e}");
    }
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "event_type": event["type"],
            "runs": out.runs,
            "rejected": out.rejected,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:1",
            "LOCALHOST",
            "[::1]:80",
        ] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "attacker.example",
            "10.0.0.1:80",
            "localhost.example.com",
            "",
            "a b",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }
}
