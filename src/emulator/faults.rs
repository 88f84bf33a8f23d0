//! Fault injection (seeded), request counting, and the `/_emulator` endpoints.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::errors::{databricks_body, databricks_code, gateway_body};
use super::{Emu, GATEWAY_PREFIX};

/// The seeded source of every fault decision.
pub(crate) struct Dice {
    rng: Mutex<fastrand::Rng>,
}

impl Dice {
    pub fn new(seed: u64) -> Self {
        Dice {
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, fastrand::Rng> {
        self.rng.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True with probability `rate` (no draw at all when the rate is 0).
    pub fn roll(&self, rate: f64) -> bool {
        rate > 0.0 && (rate >= 1.0 || self.rng().f64() < rate)
    }

    /// One of `choices`, drawn.
    pub fn pick<T: Copy>(&self, choices: &[T]) -> T {
        choices[self.rng().usize(..choices.len())]
    }
}

/// Unknown state strings the emulator may report instead of a non-terminal state.
const UNKNOWN_STATES: &[&str] = &[
    "WAITING_FOR_CAPACITY",
    "PROVISIONING_COMPUTE",
    "AWAITING_RESOURCES",
];

impl Emu {
    /// The unknown state to report instead of a non-terminal one, when drawn.
    pub(crate) fn unknown_state(&self) -> Option<&'static str> {
        if !self.faults.roll(self.config.faults.unknown_state_rate) {
            return None;
        }
        self.stats().faults.unknown_state += 1;
        Some(self.faults.pick(UNKNOWN_STATES))
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct FaultCounts {
    #[serde(rename = "5xx")]
    pub server_errors: u64,
    #[serde(rename = "429")]
    pub throttled: u64,
    pub dropped: u64,
    pub lost: u64,
    pub unknown_state: u64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Invocations {
    pub per_job: BTreeMap<String, u64>,
    pub per_idempotency_token: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Stats {
    pub requests: BTreeMap<String, u64>,
    pub faults: FaultCounts,
    pub invocations: Invocations,
    pub tokens_issued: u64,
}

/// `GET /_emulator/stats`.
pub(crate) async fn stats(State(emu): State<Arc<Emu>>) -> Response {
    let stats = emu.stats().clone();
    axum::Json(stats).into_response()
}

/// `POST /_emulator/reset-stats`.
pub(crate) async fn reset_stats(State(emu): State<Arc<Emu>>) -> Response {
    *emu.stats() = Stats::default();
    axum::Json(serde_json::json!({})).into_response()
}

/// A response that is never sent: its body fails at once, so the server closes the
/// connection without answering.
fn abort() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other(
            "emulator fault: connection closed without a response",
        ))
    });
    Response::new(Body::from_stream(stream))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Gateway,
    Databricks,
    Other,
}

/// Counts every request, adds latency, and injects faults into the two APIs.
pub(crate) async fn layer(State(emu): State<Arc<Emu>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if path.starts_with("/_emulator/") {
        return next.run(req).await;
    }
    let api = if path.starts_with(GATEWAY_PREFIX) {
        Api::Gateway
    } else if path.starts_with("/api/") {
        Api::Databricks
    } else {
        Api::Other
    };
    let pattern = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "(unmatched)".to_string());
    *emu.stats()
        .requests
        .entry(format!("{} {pattern}", req.method()))
        .or_default() += 1;
    let f = &emu.config.faults;
    if !f.latency.is_zero() {
        tokio::time::sleep(f.latency).await;
    }
    if api == Api::Other {
        return next.run(req).await;
    }
    if emu.faults.roll(f.drop_rate) {
        emu.stats().faults.dropped += 1;
        return abort();
    }
    if emu.faults.roll(f.rate_5xx) {
        emu.stats().faults.server_errors += 1;
        let status = emu.faults.pick(&[
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ]);
        let message = format!(
            "emulated server error: {}",
            status.canonical_reason().unwrap_or("error")
        );
        return match api {
            Api::Gateway => gateway_body(status, &message),
            _ => databricks_body(status, databricks_code(status), &message),
        };
    }
    if emu.faults.roll(f.rate_429) {
        emu.stats().faults.throttled += 1;
        let secs = f.retry_after_secs;
        let message = format!("Rate limit is exceeded. Try again in {secs} seconds.");
        let mut resp = match api {
            Api::Gateway => gateway_body(StatusCode::TOO_MANY_REQUESTS, &message),
            _ => databricks_body(
                StatusCode::TOO_MANY_REQUESTS,
                "REQUEST_LIMIT_EXCEEDED",
                &message,
            ),
        };
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let resp = next.run(req).await;
    if emu.faults.roll(f.lost_response_rate) {
        emu.stats().faults.lost += 1;
        return abort();
    }
    resp
}
