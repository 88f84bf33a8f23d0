//! Error answers in each API's own shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::backend::{BackendError, ErrorKind};

/// A gateway error: `{"statusCode","message","traceId"}`.
#[derive(Debug)]
pub(crate) struct GwError {
    pub status: StatusCode,
    pub message: String,
}

impl GwError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        GwError {
            status,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }
}

pub(crate) fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Auth => StatusCode::UNAUTHORIZED,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Ambiguous | ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<BackendError> for GwError {
    fn from(e: BackendError) -> Self {
        GwError::new(status_of(e.kind), e.message)
    }
}

impl IntoResponse for GwError {
    fn into_response(self) -> Response {
        gateway_body(self.status, &self.message)
    }
}

/// The gateway's error body, with a fresh trace id.
pub(crate) fn gateway_body(status: StatusCode, message: &str) -> Response {
    let body = json!({
        "statusCode": status.as_u16(),
        "message": message,
        "traceId": uuid::Uuid::new_v4().to_string(),
    });
    (status, axum::Json(body)).into_response()
}

/// A Databricks error: `{"error_code","message"}`.
#[derive(Debug)]
pub(crate) struct DbError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl DbError {
    pub fn invalid(message: impl Into<String>) -> Self {
        DbError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_PARAMETER_VALUE",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        DbError {
            status: StatusCode::NOT_FOUND,
            code: "RESOURCE_DOES_NOT_EXIST",
            message: message.into(),
        }
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        DbError {
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHENTICATED",
            message: message.into(),
        }
    }
}

/// The Databricks error code of a status.
pub(crate) fn databricks_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "INVALID_PARAMETER_VALUE",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "RESOURCE_DOES_NOT_EXIST",
        429 => "REQUEST_LIMIT_EXCEEDED",
        502 | 503 => "TEMPORARILY_UNAVAILABLE",
        _ => "INTERNAL_ERROR",
    }
}

impl From<BackendError> for DbError {
    fn from(e: BackendError) -> Self {
        let status = status_of(e.kind);
        DbError {
            status,
            code: databricks_code(status),
            message: e.message,
        }
    }
}

impl IntoResponse for DbError {
    fn into_response(self) -> Response {
        databricks_body(self.status, self.code, &self.message)
    }
}

pub(crate) fn databricks_body(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error_code": code, "message": message})),
    )
        .into_response()
}

/// An OAuth error: `{"error","error_description"}`.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut resp = (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Any path the emulator does not serve: a 404 in the shape of the API it is under.
pub(crate) async fn fallback(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let message = format!("no such endpoint: {path}");
    if path.starts_with(super::GATEWAY_PREFIX) {
        gateway_body(StatusCode::NOT_FOUND, &message)
    } else if path.starts_with("/api/") {
        databricks_body(StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND", &message)
    } else {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not_found", "message": message})),
        )
            .into_response()
    }
}
