//! Token endpoints (Azure AD client credentials for the gateway, Databricks OAuth M2M) and
//! the checks of bearer tokens and subscription keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::errors::{DbError, GwError, oauth_error};
use super::{Emu, WORKBENCH_RESOURCE};

/// Who a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    Workbench,
    Databricks,
}

/// Issued tokens and when they expire.
#[derive(Default)]
pub(crate) struct Tokens {
    map: Mutex<HashMap<String, (Audience, Instant)>>,
}

/// Why a token was refused.
pub(crate) enum Refused {
    Missing,
    Unknown,
    Expired,
}

/// Expired tokens are remembered this long (to say "expired" rather than "invalid").
const REMEMBER_EXPIRED: Duration = Duration::from_secs(3600);

impl Tokens {
    fn issue(&self, audience: Audience, ttl: Duration) -> String {
        let token = format!(
            "emu.{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, (_, exp)| *exp + REMEMBER_EXPIRED > now);
        map.insert(token.clone(), (audience, now + ttl));
        token
    }

    fn check(&self, audience: Audience, token: &str) -> Result<(), Refused> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(token) {
            Some((aud, _)) if *aud != audience => Err(Refused::Unknown),
            Some((_, exp)) if Instant::now() >= *exp => Err(Refused::Expired),
            Some(_) => Ok(()),
            None => Err(Refused::Unknown),
        }
    }
}

/// The bearer token of a request, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Constant-time comparison of a secret.
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn form_fields(
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> HashMap<String, String> {
    form.map(|Form(f)| f).unwrap_or_default()
}

/// A refused token request.
pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: &str) -> Self {
        OAuthError {
            status,
            error,
            description: description.to_string(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        oauth_error(self.status, self.error, &self.description)
    }
}

/// Checks `grant_type` and the client's credentials.
fn check_client(
    emu: &Emu,
    grant_type: Option<&str>,
    client_id: Option<&str>,
    client_secret: Option<&str>,
) -> Result<(), OAuthError> {
    match grant_type {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("the grant type `{other}` is not supported; use client_credentials"),
            ));
        }
        None => {
            return Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body must contain grant_type=client_credentials",
            ));
        }
    }
    let (Some(id), Some(secret)) = (client_id, client_secret) else {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request must carry client_id and client_secret",
        ));
    };
    if !(same(id, &emu.config.client_id) && same(secret, &emu.config.client_secret)) {
        return Err(OAuthError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "invalid client credentials: the client id or the client secret is wrong (or the secret expired)",
        ));
    }
    Ok(())
}

/// `POST /oauth2/token`: Azure AD v1 client credentials.
pub(crate) async fn azure_v1(
    State(emu): State<Arc<Emu>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let get = |k: &str| f.get(k).map(String::as_str);
    if let Err(resp) = check_client(
        &emu,
        get("grant_type"),
        get("client_id"),
        get("client_secret"),
    ) {
        return resp.into_response();
    }
    match get("resource") {
        Some(r) if r == WORKBENCH_RESOURCE => {}
        Some(r) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_resource",
                &format!("the resource `{r}` is not known; use {WORKBENCH_RESOURCE}"),
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body must contain the `resource` parameter",
            );
        }
    }
    let ttl = emu.config.token_ttl;
    let token = emu.tokens.issue(Audience::Workbench, ttl);
    emu.stats().tokens_issued += 1;
    let now = unix_now();
    let secs = ttl.as_secs().to_string();
    let body = json!({
        "token_type": "Bearer",
        "expires_in": secs,
        "ext_expires_in": secs,
        "expires_on": (now + ttl.as_secs()).to_string(),
        "not_before": now.to_string(),
        "resource": WORKBENCH_RESOURCE,
        "access_token": token,
    });
    axum::Json(body).into_response()
}

/// `POST /oauth2/v2.0/token`: Azure AD v2.0 client credentials (`scope=<resource>/.default`).
pub(crate) async fn azure_v2(
    State(emu): State<Arc<Emu>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let get = |k: &str| f.get(k).map(String::as_str);
    if let Err(resp) = check_client(
        &emu,
        get("grant_type"),
        get("client_id"),
        get("client_secret"),
    ) {
        return resp.into_response();
    }
    let want = format!("{WORKBENCH_RESOURCE}/.default");
    if get("scope") != Some(want.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("the scope must be {want}"),
        );
    }
    let ttl = emu.config.token_ttl;
    let token = emu.tokens.issue(Audience::Workbench, ttl);
    emu.stats().tokens_issued += 1;
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "ext_expires_in": ttl.as_secs(),
        "access_token": token,
    }))
    .into_response()
}

/// `POST /oidc/v1/token`: Databricks OAuth machine-to-machine.
pub(crate) async fn databricks_token(
    State(emu): State<Arc<Emu>>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    let f = form_fields(form);
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest.trim())
        })
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            Some((id.to_string(), secret.to_string()))
        });
    let (id, secret) = match &basic {
        Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
        None => (
            f.get("client_id").map(String::as_str),
            f.get("client_secret").map(String::as_str),
        ),
    };
    if let Err(resp) = check_client(&emu, f.get("grant_type").map(String::as_str), id, secret) {
        return resp.into_response();
    }
    let scope = f.get("scope").map(String::as_str).unwrap_or("");
    if !scope.split(' ').any(|s| s == "all-apis") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "the scope must be all-apis",
        );
    }
    let ttl = emu.config.token_ttl;
    let token = emu.tokens.issue(Audience::Databricks, ttl);
    emu.stats().tokens_issued += 1;
    axum::Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": ttl.as_secs(),
        "scope": "all-apis",
    }))
    .into_response()
}

/// The gateway's checks: subscription key, then bearer token.
pub(crate) fn check_gateway(emu: &Emu, headers: &HeaderMap) -> Result<(), GwError> {
    match headers
        .get("ocp-apim-subscription-key")
        .and_then(|v| v.to_str().ok())
    {
        None => {
            return Err(GwError::unauthorized(
                "Access denied due to missing subscription key. Make sure to include the subscription key (Ocp-Apim-Subscription-Key) when making requests to an API.",
            ));
        }
        Some(k) if !same(k, &emu.config.subscription_key) => {
            return Err(GwError::unauthorized(
                "Access denied due to invalid subscription key. Make sure to provide a valid key for an active subscription.",
            ));
        }
        Some(_) => {}
    }
    let Some(token) = bearer(headers) else {
        return Err(GwError::unauthorized(
            "Unauthorized: the Authorization header with a Bearer token is missing",
        ));
    };
    emu.tokens
        .check(Audience::Workbench, token)
        .map_err(|r| match r {
            Refused::Expired => GwError::unauthorized("Unauthorized: the access token has expired"),
            Refused::Missing | Refused::Unknown => {
                GwError::unauthorized("Unauthorized: the access token is invalid")
            }
        })
}

/// The Databricks check: the PAT or a Databricks OAuth token.
pub(crate) fn check_databricks(emu: &Emu, headers: &HeaderMap) -> Result<(), DbError> {
    let token = bearer(headers).ok_or(Refused::Missing);
    let result = token.and_then(|t| {
        if same(t, &emu.config.databricks_token) {
            Ok(())
        } else {
            emu.tokens.check(Audience::Databricks, t)
        }
    });
    result.map_err(|r| match r {
        Refused::Missing => DbError::unauthenticated(
            "Credential was not sent or was of an unsupported type for this API.",
        ),
        Refused::Unknown => DbError::unauthenticated("Invalid access token."),
        Refused::Expired => DbError::unauthenticated("Token is expired."),
    })
}
