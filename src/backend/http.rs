//! HTTP plumbing shared by the remote backends (the Veracity gateway and Databricks):
//! one reqwest client with timeouts, bearer tokens (client-credentials with caching and
//! early refresh, or a static token), retries with exponential backoff and jitter within
//! a total budget (backon), `Retry-After`, and the mapping of HTTP failures to
//! [`BackendError`]s whose text never holds a secret.
//!
//! The retry rules: connection failures that certainly happened before the request was
//! sent (refused, DNS, TLS handshake, connect timeout) and 429 are retried for every
//! request; timeouts, dropped connections, 5xx and 408 only for requests that are safe to
//! repeat ([`Safety::Idempotent`]). 400/403/404 are never retried; 401 gets one token
//! refresh, then fails as [`ErrorKind::Auth`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::{BackendError, ErrorKind};

/// A secret value: never printed by `Debug`, only read through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Replaces every known secret in texts built from remote answers and transport errors
/// (a server that echoes a header or a form field must not leak it into our messages).
#[derive(Clone, Default)]
pub struct Redactor {
    inner: Arc<Mutex<RedactorInner>>,
}

#[derive(Default)]
struct RedactorInner {
    /// Configured secrets (client secret, subscription key, static token).
    fixed: Vec<String>,
    /// Tokens fetched lately, newest last.
    tokens: std::collections::VecDeque<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor")
    }
}

/// Fetched tokens remembered for redaction.
const MAX_TOKENS: usize = 16;

impl Redactor {
    /// Adds a configured secret (and its URL-encoded form, as a form body carries it).
    pub fn add(&self, secret: &str) {
        if secret.len() < 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for s in [secret.to_string(), url_encode(secret)] {
            if !inner.fixed.contains(&s) {
                inner.fixed.push(s);
            }
        }
    }

    /// Adds a fetched token; only the last few are remembered.
    pub fn add_token(&self, token: &str) {
        if token.len() < 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !inner.tokens.iter().any(|t| t == token) {
            inner.tokens.push_back(token.to_string());
            if inner.tokens.len() > MAX_TOKENS {
                inner.tokens.pop_front();
            }
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<&String> = inner.fixed.iter().chain(inner.tokens.iter()).collect();
        // Longest first, so a secret containing another is replaced whole.
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut out = text.to_string();
        for s in all {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

fn url_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Whether a URL may be used: `https`, or `http` to a loopback host only (the emulator,
/// a local proxy). Tokens and keys never travel in clear text to another machine.
pub fn check_url(url: &Url, what: &str) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => {
            return Err(format!(
                "{what} `{url}` uses http:// to a host that is not loopback; credentials would travel unencrypted: use https:// (http:// is accepted for 127.0.0.0/8, ::1 and localhost only)"
            ));
        }
        other => {
            return Err(format!(
                "{what} `{url}` has the scheme `{other}`; use https://"
            ));
        }
    }
    if url.host().is_none() {
        return Err(format!("{what} `{url}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "{what} must not carry credentials in the URL; use the `_env` settings"
        ));
    }
    Ok(())
}

/// 127.0.0.0/8, ::1 (and IPv4-mapped loopback), or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => false,
    }
}

/// How long to keep retrying, and how.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total time for one logical request, its retries and the waits between them.
    pub budget: Duration,
    /// First backoff delay (doubled each time, with jitter).
    pub min_delay: Duration,
    /// Longest backoff delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            budget: Duration::from_secs(120),
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
        }
    }
}

/// Whether a request may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Safety {
    /// Reads, cancels, and POSTs with an idempotency key.
    Idempotent,
    /// A POST that starts something and has no idempotency key: retried only when it
    /// certainly did not reach the server.
    NotIdempotent,
}

/// What went wrong with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The request never left (refused, DNS, TLS handshake, connect timeout).
    NotSent,
    /// The request may have reached the server (timeout, dropped connection, a response
    /// that could not be read).
    MaybeSent,
    /// The server answered with this status.
    Status(u16),
    /// Credentials refused (401 after a refresh, or the token endpoint said no).
    Auth,
    /// The answer could not be understood.
    Decode,
    /// Something local (a bad URL, a body that could not be built).
    Local,
}

/// A failed request, with a message that is already free of secrets.
#[derive(Debug, Clone)]
pub struct HttpError {
    pub failure: Failure,
    pub message: String,
    /// The server's `Retry-After`, where it sent one.
    pub retry_after: Option<Duration>,
    /// The error comes from a nested retry loop (the token endpoint) that already spent
    /// its budget: do not retry it again.
    pub exhausted: bool,
    /// Attempts made, including the first.
    pub attempts: u32,
}

impl HttpError {
    fn new(failure: Failure, message: String) -> Self {
        HttpError {
            failure,
            message,
            retry_after: None,
            exhausted: false,
            attempts: 1,
        }
    }

    /// Whether a retry is worthwhile and safe.
    pub fn should_retry(&self, safety: Safety) -> bool {
        if self.exhausted {
            return false;
        }
        match self.failure {
            Failure::NotSent => true,
            Failure::Status(429) => true,
            Failure::MaybeSent | Failure::Status(408) => safety == Safety::Idempotent,
            Failure::Status(s) if (500..600).contains(&s) => safety == Safety::Idempotent,
            _ => false,
        }
    }

    /// Whether a non-idempotent request may have had its effect.
    pub fn uncertain(&self) -> bool {
        matches!(self.failure, Failure::MaybeSent)
            || matches!(self.failure, Failure::Status(s) if (500..600).contains(&s) || s == 408)
    }

    pub fn status(&self) -> Option<u16> {
        match self.failure {
            Failure::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The backend error this becomes.
    pub fn into_backend(self) -> BackendError {
        let (kind, retryable) = match self.failure {
            Failure::Auth | Failure::Status(401) | Failure::Status(403) => (ErrorKind::Auth, false),
            Failure::Status(404) | Failure::Status(410) => (ErrorKind::NotFound, false),
            Failure::Status(408) | Failure::Status(429) => (ErrorKind::Unavailable, true),
            Failure::Status(s) if (500..600).contains(&s) => (ErrorKind::Unavailable, true),
            Failure::Status(_) => (ErrorKind::Invalid, false),
            Failure::NotSent | Failure::MaybeSent => (ErrorKind::Unavailable, true),
            Failure::Decode => (ErrorKind::Unavailable, false),
            Failure::Local => (ErrorKind::Internal, false),
        };
        BackendError {
            kind,
            message: self.message,
            retryable,
        }
    }
}

/// `Retry-After`: integer seconds (what both APIs send) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(3600)));
    }
    if let Ok(secs) = v.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Some(Duration::from_secs_f64(secs.min(3600.0)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let now = chrono::Utc::now();
    let secs = (when.with_timezone(&chrono::Utc) - now).num_milliseconds();
    Some(Duration::from_millis(secs.clamp(0, 3_600_000) as u64))
}

/// A `Retry-After` wait with jitter added (never less than asked): many clients told to
/// come back in N seconds should not all come back at once.
pub fn jittered(wait: Duration) -> Duration {
    let spread = (wait / 5).clamp(Duration::from_millis(100), Duration::from_secs(5));
    wait + spread.mul_f64(fastrand::f64())
}

/// Runs `f` until it succeeds, fails in a way not worth retrying, or the budget is spent.
/// Backoff: exponential with jitter (backon); a `Retry-After` replaces the backoff delay.
pub async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    safety: Safety,
    f: F,
) -> Result<T, HttpError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, HttpError>>,
{
    let started = Instant::now();
    let deadline = started + policy.budget;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    let attempts = AtomicU32::new(1);
    // Milliseconds of the wait that did not fit the budget (u64::MAX: none).
    let beyond_budget = AtomicU64::new(u64::MAX);
    let builder = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .without_max_times();
    let result = f
        .retry(builder)
        .sleep(tokio::time::sleep)
        .when(|e: &HttpError| e.should_retry(safety))
        .adjust(|e: &HttpError, backoff| {
            let wait = match e.retry_after {
                Some(ra) => jittered(ra),
                None => backoff?,
            };
            if Instant::now() + wait > deadline {
                beyond_budget.store(wait.as_millis() as u64, Ordering::Relaxed);
                return None;
            }
            Some(wait)
        })
        .notify(|e: &HttpError, wait| {
            attempts.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e.message, wait_ms = wait.as_millis() as u64, "retrying");
        })
        .await;
    result.map_err(|mut e| {
        e.attempts = attempts.load(Ordering::Relaxed);
        if e.should_retry(safety) {
            // Gave up because of the budget.
            let spent = started.elapsed();
            let why = match (beyond_budget.load(Ordering::Relaxed), e.retry_after) {
                (w, Some(_)) if w != u64::MAX => format!(
                    "; the service asked to wait {}s more, beyond the retry budget",
                    w.div_ceil(1000)
                ),
                _ => String::new(),
            };
            e.message = format!(
                "{} (gave up after {} attempt{} in {}s{why})",
                e.message,
                e.attempts,
                if e.attempts == 1 { "" } else { "s" },
                spent.as_secs()
            );
            e.exhausted = true;
        } else if e.attempts > 1 {
            e.message = format!("{} (after {} attempts)", e.message, e.attempts);
        }
        e
    })
}

/// Builds a reqwest client for one service. `url` decides whether the client may speak
/// plain HTTP (loopback only) and whether to bypass proxies (loopback).
pub fn build_client(url: &Url, timeout: Duration) -> Result<reqwest::Client, BackendError> {
    check_url(url, "the URL").map_err(|m| BackendError::new(ErrorKind::Invalid, m))?;
    let loopback = is_loopback(url);
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(15)))
        .pool_idle_timeout(Duration::from_secs(50))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("dwflow/", env!("CARGO_PKG_VERSION")))
        .https_only(!loopback);
    if loopback {
        b = b.no_proxy();
    }
    b.build().map_err(|e| {
        BackendError::new(
            ErrorKind::Internal,
            format!("cannot set up the HTTP client: {e}"),
        )
    })
}

/// Text of an error and its sources, deduplicated ("error sending request: connection
/// refused").
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

fn transport_failure(e: &reqwest::Error, timeout: Duration) -> (Failure, String) {
    // The top level says "error sending request for url (...)": the caller names the
    // request already.
    let detail = match std::error::Error::source(e) {
        Some(src) => chain(src),
        None => chain(e),
    };
    if e.is_connect() {
        if e.is_timeout() {
            (
                Failure::NotSent,
                format!("could not connect within the connect timeout ({detail})"),
            )
        } else {
            (Failure::NotSent, format!("could not connect ({detail})"))
        }
    } else if e.is_builder() {
        (
            Failure::Local,
            format!("could not build the request ({detail})"),
        )
    } else if e.is_timeout() {
        (
            Failure::MaybeSent,
            format!("no answer within {}s ({detail})", timeout.as_secs()),
        )
    } else {
        (
            Failure::MaybeSent,
            format!("the connection failed after the request was sent ({detail})"),
        )
    }
}

/// The largest response body read (dataset pages can be large; anything beyond this is
/// not an answer these APIs give).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

/// A request body.
#[derive(Debug, Clone)]
pub enum Body {
    Empty,
    Json(Value),
}

/// Where bearer tokens come from.
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// A token valid for a while yet.
    async fn token(&self) -> Result<Secret, HttpError>;
    /// The server refused `rejected`: forget it so the next [`token`](Self::token) call
    /// gets a new one. Returns false when no new token can be had (a static token).
    async fn invalidate(&self, rejected: &Secret) -> bool;
}

/// A token given once (a Databricks PAT, or a token from the environment).
pub struct StaticToken(pub Secret);

#[async_trait::async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Result<Secret, HttpError> {
        Ok(self.0.clone())
    }
    async fn invalidate(&self, _rejected: &Secret) -> bool {
        false
    }
}

/// How a client-credentials request authenticates the client.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form (Azure AD / the Veracity gateway).
    Form {
        client_id: String,
        client_secret: Secret,
    },
    /// HTTP Basic `client_id:client_secret` (Databricks OAuth M2M).
    Basic {
        client_id: String,
        client_secret: Secret,
    },
}

/// OAuth 2 client credentials: fetched on first use, cached, refreshed ahead of expiry
/// (`refresh_before`, at most half the token's life) and after a 401.
pub struct ClientCredentials {
    http: reqwest::Client,
    token_url: Url,
    auth: ClientAuth,
    /// Extra form fields (`resource`, `scope`).
    extra: Vec<(String, String)>,
    refresh_before: Duration,
    policy: RetryPolicy,
    redactor: Redactor,
    /// What to tell the user when the credentials are refused.
    hint: String,
    timeout: Duration,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    token: Secret,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Tokens without an expiry in their answer are assumed to last this long.
const ASSUMED_LIFETIME: Duration = Duration::from_secs(3600);
/// A cached token is never used with less than this left (Databricks rejects tokens
/// with under about 30 s left).
const MIN_LEFT: Duration = Duration::from_secs(30);

impl ClientCredentials {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        token_url: Url,
        auth: ClientAuth,
        extra: Vec<(String, String)>,
        refresh_before: Duration,
        timeout: Duration,
        policy: RetryPolicy,
        redactor: Redactor,
        hint: String,
    ) -> Result<Self, BackendError> {
        check_url(&token_url, "the token URL")
            .map_err(|m| BackendError::new(ErrorKind::Invalid, m))?;
        let http = build_client(&token_url, timeout)?;
        match &auth {
            ClientAuth::Form { client_secret, .. } | ClientAuth::Basic { client_secret, .. } => {
                redactor.add(client_secret.expose())
            }
        }
        Ok(ClientCredentials {
            http,
            token_url,
            auth,
            extra,
            refresh_before,
            policy,
            redactor,
            hint,
            timeout,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    async fn fetch_once(&self) -> Result<(Secret, Duration), HttpError> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        let mut req = self.http.post(self.token_url.clone());
        match &self.auth {
            ClientAuth::Form {
                client_id,
                client_secret,
            } => {
                form.push(("client_id", client_id));
                form.push(("client_secret", client_secret.expose()));
            }
            ClientAuth::Basic {
                client_id,
                client_secret,
            } => {
                req = req.basic_auth(client_id, Some(client_secret.expose()));
            }
        }
        for (k, v) in &self.extra {
            form.push((k, v));
        }
        let what = format!("getting a token from {}", self.token_url);
        let resp = req
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| {
                let (f, m) = transport_failure(&e, self.timeout);
                HttpError::new(f, self.redactor.redact(&format!("{what}: {m}")))
            })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = read_body(resp)
            .await
            .map_err(|(f, m)| HttpError::new(f, self.redactor.redact(&format!("{what}: {m}"))))?;
        if !status.is_success() {
            let detail = remote_detail(&bytes, &headers);
            let mut e = HttpError::new(
                Failure::Status(status.as_u16()),
                self.redactor
                    .redact(&format!("{what}: HTTP {}{detail}", status_text(status))),
            );
            e.retry_after = retry_after_of(&headers);
            // The token endpoint refusing the client is a credentials problem.
            if matches!(status.as_u16(), 400 | 401 | 403) {
                e.failure = Failure::Auth;
                e.message = format!("{}. {}", e.message.trim_end_matches('.'), self.hint);
            }
            return Err(e);
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            HttpError::new(
                Failure::Decode,
                format!("{what}: the answer is not JSON (HTTP {status})"),
            )
        })?;
        let token = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                HttpError::new(
                    Failure::Decode,
                    format!("{what}: the answer has no `access_token`"),
                )
            })?;
        self.redactor.add_token(token);
        let lifetime = token_lifetime(&v).unwrap_or(ASSUMED_LIFETIME);
        Ok((Secret::new(token), lifetime))
    }
}

/// `expires_in` (seconds, a number or, in Azure AD v1, a string) or `expires_on` (epoch
/// seconds, also either).
pub fn token_lifetime(v: &Value) -> Option<Duration> {
    let num = |v: &Value| -> Option<f64> {
        match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        }
    };
    if let Some(secs) = v.get("expires_in").and_then(num)
        && secs.is_finite()
    {
        return Some(Duration::from_secs_f64(secs.clamp(0.0, 86_400.0 * 366.0)));
    }
    if let Some(on) = v.get("expires_on").and_then(num)
        && on.is_finite()
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        return Some(Duration::from_secs_f64(
            (on - now).clamp(0.0, 86_400.0 * 366.0),
        ));
    }
    None
}

#[async_trait::async_trait]
impl TokenProvider for ClientCredentials {
    async fn token(&self) -> Result<Secret, HttpError> {
        let mut cache = self.cache.lock().await;
        let now = Instant::now();
        if let Some(c) = cache.as_ref()
            && now < c.refresh_at
        {
            return Ok(c.token.clone());
        }
        match with_retries(&self.policy, Safety::Idempotent, || self.fetch_once()).await {
            Ok((token, lifetime)) => {
                let now = Instant::now();
                let margin = self.refresh_before.min(lifetime / 2);
                *cache = Some(Cached {
                    token: token.clone(),
                    refresh_at: now + lifetime.saturating_sub(margin),
                    expires_at: now + lifetime,
                });
                Ok(token)
            }
            Err(mut e) => {
                // A refresh ahead of time that failed for want of the service: the old
                // token still has a while to go.
                if e.failure != Failure::Auth
                    && let Some(c) = cache.as_ref()
                    && Instant::now() + MIN_LEFT < c.expires_at
                {
                    tracing::warn!(error = %e.message, "token refresh failed; using the current token");
                    return Ok(c.token.clone());
                }
                e.exhausted = true;
                Err(e)
            }
        }
    }

    async fn invalidate(&self, rejected: &Secret) -> bool {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| &c.token == rejected) {
            *cache = None;
        }
        true
    }
}

/// The client of one remote API: base URL, auth, fixed headers, retries.
pub struct ApiClient {
    http: reqwest::Client,
    /// For messages: "the Data Workbench gateway", "Databricks".
    service: String,
    tokens: Arc<dyn TokenProvider>,
    headers: HeaderMap,
    policy: RetryPolicy,
    redactor: Redactor,
    timeout: Duration,
    /// What to tell the user when credentials are refused.
    auth_hint: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    pub url: Url,
    pub body: Body,
    pub safety: Safety,
}

impl Call {
    pub fn get(url: Url) -> Self {
        Call {
            method: Method::GET,
            url,
            body: Body::Empty,
            safety: Safety::Idempotent,
        }
    }
    pub fn post(url: Url, body: Value, safety: Safety) -> Self {
        Call {
            method: Method::POST,
            url,
            body: Body::Json(body),
            safety,
        }
    }
}

impl ApiClient {
    /// `secret_headers` go on every request and are redacted from every message.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        service: impl Into<String>,
        base: &Url,
        tokens: Arc<dyn TokenProvider>,
        secret_headers: Vec<(&'static str, Secret)>,
        timeout: Duration,
        policy: RetryPolicy,
        redactor: Redactor,
        auth_hint: impl Into<String>,
    ) -> Result<Self, BackendError> {
        let http = build_client(base, timeout)?;
        let mut headers = HeaderMap::new();
        for (name, value) in secret_headers {
            redactor.add(value.expose());
            let mut v = HeaderValue::from_str(value.expose()).map_err(|_| {
                BackendError::new(
                    ErrorKind::Invalid,
                    format!("the value for the `{name}` header has characters a header cannot carry (check the variable it comes from)"),
                )
            })?;
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static(name), v);
        }
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        Ok(ApiClient {
            http,
            service: service.into(),
            tokens,
            headers,
            policy,
            redactor,
            timeout,
            auth_hint: auth_hint.into(),
        })
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// Sends a call with retries; a 2xx answer's JSON body (`null` when empty).
    pub async fn send(&self, call: &Call) -> Result<Answer, HttpError> {
        let refreshed = std::sync::atomic::AtomicBool::new(false);
        with_retries(&self.policy, call.safety, || self.attempt(call, &refreshed)).await
    }

    /// One attempt, plus one immediate repeat with a fresh token after a 401.
    async fn attempt(
        &self,
        call: &Call,
        refreshed: &std::sync::atomic::AtomicBool,
    ) -> Result<Answer, HttpError> {
        use std::sync::atomic::Ordering;
        loop {
            let token = self.tokens.token().await.map_err(|mut e| {
                e.message = self.redactor.redact(&e.message);
                e
            })?;
            match self.once(call, &token).await {
                Err(e)
                    if e.failure == Failure::Status(401)
                        && !refreshed.swap(true, Ordering::SeqCst) =>
                {
                    if !self.tokens.invalidate(&token).await {
                        return Err(self.auth_error(e));
                    }
                    tracing::debug!("401: refreshing the token once");
                }
                Err(e) if e.failure == Failure::Status(401) => return Err(self.auth_error(e)),
                other => return other,
            }
        }
    }

    fn auth_error(&self, e: HttpError) -> HttpError {
        HttpError {
            failure: Failure::Auth,
            message: format!("{}. {}", e.message.trim_end_matches('.'), self.auth_hint),
            ..e
        }
    }

    async fn once(&self, call: &Call, token: &Secret) -> Result<Answer, HttpError> {
        let path = call.url.path().to_string();
        let what = format!("{} {}", call.method, path);
        let mut req = self
            .http
            .request(call.method.clone(), call.url.clone())
            .headers(self.headers.clone());
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                HttpError::new(
                    Failure::Local,
                    "the token is not a valid header value".into(),
                )
            })?;
        auth.set_sensitive(true);
        req = req.header(reqwest::header::AUTHORIZATION, auth);
        if let Body::Json(v) = &call.body {
            req = req.json(v);
        }
        let resp = req.send().await.map_err(|e| {
            let (f, m) = transport_failure(&e, self.timeout);
            HttpError::new(
                f,
                self.redactor
                    .redact(&format!("{}: {what}: {m}", self.service)),
            )
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = read_body(resp).await.map_err(|(f, m)| {
            HttpError::new(
                f,
                self.redactor
                    .redact(&format!("{}: {what}: {m}", self.service)),
            )
        })?;
        if !status.is_success() {
            let detail = remote_detail(&bytes, &headers);
            let mut e = HttpError::new(
                Failure::Status(status.as_u16()),
                self.redactor.redact(&format!(
                    "{}: {what}: HTTP {}{detail}",
                    self.service,
                    status_text(status)
                )),
            );
            e.retry_after = retry_after_of(&headers);
            if status == StatusCode::FORBIDDEN {
                e.message.push_str(
                    "; the credentials were accepted but are not allowed to do this (an account limited to some datasets gets 403 on workspace-level calls)",
                );
            }
            return Err(e);
        }
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                // A bare word (a run id, a state) without JSON quotes.
                Err(_) => match std::str::from_utf8(&bytes) {
                    Ok(s) if s.trim().len() <= 256 && !s.trim_start().starts_with(['{', '[']) => {
                        Value::String(s.trim().trim_matches('"').to_string())
                    }
                    _ => {
                        return Err(HttpError::new(
                            Failure::Decode,
                            format!(
                                "{}: {what}: the answer (HTTP {}) is not JSON",
                                self.service,
                                status.as_u16()
                            ),
                        ));
                    }
                },
            }
        };
        Ok(Answer {
            status: status.as_u16(),
            body,
        })
    }
}

async fn read_body(mut resp: reqwest::Response) -> Result<Vec<u8>, (Failure, String)> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.len() + chunk.len() > MAX_BODY {
                    return Err((
                        Failure::Decode,
                        format!("the answer is larger than {} MiB", MAX_BODY >> 20),
                    ));
                }
                out.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err((
                    Failure::MaybeSent,
                    format!("the answer was cut off ({})", chain(&e)),
                ));
            }
        }
    }
}

fn status_text(s: StatusCode) -> String {
    match s.canonical_reason() {
        Some(r) => format!("{} {r}", s.as_u16()),
        None => s.as_u16().to_string(),
    }
}

fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
}

/// ", traceId T, error_code C: message" from an error answer: the gateway's `traceId`,
/// Databricks' `error_code`, OAuth's `error`/`error_description`, or a plain-text excerpt.
fn remote_detail(bytes: &[u8], headers: &HeaderMap) -> String {
    let mut ids = Vec::new();
    let mut message = None;
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        let obj = match &v {
            Value::Object(o) => Some(o),
            _ => None,
        };
        if let Some(o) = obj {
            use super::wire::get_ci;
            let inner = match get_ci(o, &["error"]) {
                Some(Value::Object(e)) => Some(e),
                _ => None,
            };
            let pick = |names: &[&str]| -> Option<String> {
                get_ci(o, names)
                    .or_else(|| inner.and_then(|e| get_ci(e, names)))
                    .and_then(|v| match v {
                        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                        Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
            };
            if let Some(t) = pick(&["traceId", "trace_id", "requestId", "request_id"]) {
                ids.push(format!("traceId {t}"));
            }
            if let Some(c) = pick(&["error_code", "errorCode", "code"]) {
                ids.push(format!("error_code {c}"));
            }
            let oauth = pick(&["error"]);
            message = pick(&[
                "message",
                "error_description",
                "detail",
                "title",
                "statusMessage",
                "errorMessage",
            ])
            .or(oauth.clone());
            if let (Some(o), Some(m)) = (&oauth, &message)
                && o != m
                && !m.contains(o.as_str())
            {
                message = Some(format!("{o}: {m}"));
            }
            if message.is_none()
                && let Some(Value::Array(errs)) = get_ci(o, &["errors"])
            {
                message = Some(
                    errs.iter()
                        .take(5)
                        .map(|e| match e {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
        } else if let Value::String(s) = &v {
            message = Some(s.clone());
        }
    } else if let Ok(s) = std::str::from_utf8(bytes) {
        let s = s.trim();
        if !s.is_empty() && !s.starts_with('<') {
            message = Some(s.to_string());
        }
    }
    if ids.iter().all(|i| !i.starts_with("traceId")) {
        for h in [
            "x-ms-request-id",
            "x-request-id",
            "request-id",
            "apim-request-id",
        ] {
            if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
                ids.push(format!("request id {v}"));
                break;
            }
        }
    }
    let mut out = String::new();
    if !ids.is_empty() {
        out.push_str(" (");
        out.push_str(&ids.join(", "));
        out.push(')');
    }
    if let Some(m) = message {
        let one_line: String = m.split_whitespace().collect::<Vec<_>>().join(" ");
        out.push_str(": ");
        out.push_str(&truncate(&one_line, 500));
    }
    out
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// Appends path segments to a base URL (percent-encoding each), keeping the base's path.
pub fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        for s in segments {
            path.push(s);
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("99999"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("soon"), None);
        let future = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = parse_retry_after(&future).unwrap();
        assert!(
            d <= Duration::from_secs(31) && d >= Duration::from_secs(25),
            "{d:?}"
        );
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
    }

    #[test]
    fn jitter_never_shortens() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2400));
        }
    }

    #[test]
    fn loopback_rule() {
        let ok = |s: &str| check_url(&Url::parse(s).unwrap(), "x").is_ok();
        assert!(ok("https://api.veracity.com/veracity/dw/gateway/api/v2"));
        assert!(ok("http://127.0.0.1:8787/x"));
        assert!(ok("http://127.9.9.9/"));
        assert!(ok("http://[::1]:80/"));
        assert!(ok("http://localhost:1/"));
        assert!(ok("http://LOCALHOST./"));
        assert!(!ok("http://example.com/"));
        assert!(!ok("http://10.0.0.1/"));
        assert!(!ok("http://128.0.0.1/"));
        assert!(!ok("http://localhost.example.com/"));
        assert!(!ok("ftp://127.0.0.1/"));
        assert!(!ok("https://user:pw@example.com/"));
    }

    #[test]
    fn token_lifetimes() {
        use serde_json::json;
        assert_eq!(
            token_lifetime(&json!({"expires_in": "3599"})),
            Some(Duration::from_secs(3599))
        );
        assert_eq!(
            token_lifetime(&json!({"expires_in": 60})),
            Some(Duration::from_secs(60))
        );
        let on = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 100;
        let d = token_lifetime(&json!({"expires_on": on.to_string()})).unwrap();
        assert!(d > Duration::from_secs(95) && d <= Duration::from_secs(100));
        assert_eq!(token_lifetime(&json!({})), None);
    }

    #[test]
    fn redaction_covers_encoded_forms() {
        let r = Redactor::default();
        r.add("s3cr+t/value=");
        let text = "echo s3cr+t/value= and s3cr%2Bt%2Fvalue%3D";
        assert_eq!(r.redact(text), "echo *** and ***");
    }

    #[test]
    fn remote_details() {
        let h = HeaderMap::new();
        let d = remote_detail(
            br#"{"message":"Workspace not found","traceId":"0HN7:0001"}"#,
            &h,
        );
        assert_eq!(d, " (traceId 0HN7:0001): Workspace not found");
        let d = remote_detail(
            br#"{"error_code":"INVALID_PARAMETER_VALUE","message":"Job 5 does not exist."}"#,
            &h,
        );
        assert_eq!(
            d,
            " (error_code INVALID_PARAMETER_VALUE): Job 5 does not exist."
        );
        let d = remote_detail(
            br#"{"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys are expired."}"#,
            &h,
        );
        assert!(d.contains("invalid_client: AADSTS7000222"), "{d}");
        let d = remote_detail(b"Service Unavailable", &h);
        assert_eq!(d, ": Service Unavailable");
    }

    #[test]
    fn join_keeps_base_path() {
        let base = Url::parse("http://127.0.0.1:8787/veracity/dw/gateway/api/v2/").unwrap();
        let u = join(&base, &["workspaces", "a b", "jobs"]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:8787/veracity/dw/gateway/api/v2/workspaces/a%20b/jobs"
        );
    }
}
