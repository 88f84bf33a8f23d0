//! The remote backends' HTTP behaviour against small stub servers on 127.0.0.1:0: token
//! caching and refresh, 429 with Retry-After, 5xx retries, no retry of 400, the gateway's
//! invoke never sent twice, Databricks run-now repeated with the same idempotency token,
//! jobs/list pagination, get-output outputs, plain http refused off loopback, and no
//! secret in any error text.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use dwflow::backend::databricks::{DatabricksAuth, DatabricksBackend, DatabricksSettings};
use dwflow::backend::http::{RetryPolicy, Secret};
use dwflow::backend::workbench::{
    CancelMethod, WorkbenchAuth, WorkbenchBackend, WorkbenchSettings,
};
use dwflow::backend::{Backend, BackendError, ErrorKind, JobRef, RunId};
use indexmap::IndexMap;
use reqwest::Url;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENT_SECRET: &str = "cs-Very~Secret+Value/42=";
const SUBSCRIPTION_KEY: &str = "sk-0123456789abcdef0123";
const PAT: &str = "dapi-personal-access-token-0123";
const WS: &str = "00000000-0000-4000-8000-000000000001";

/// One scripted answer.
#[derive(Clone)]
struct Reply {
    status: u16,
    body: Value,
    retry_after: Option<&'static str>,
}

fn ok(body: Value) -> Reply {
    Reply {
        status: 200,
        body,
        retry_after: None,
    }
}

fn status(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        retry_after: None,
    }
}

/// A request the stub saw.
#[derive(Clone, Debug)]
#[allow(dead_code)]
struct Seen {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    key: Option<String>,
    body: String,
    at: Instant,
}

#[derive(Default)]
struct Stub {
    /// "METHOD /path" -> replies, used in order; the last one repeats.
    script: Mutex<HashMap<String, VecDeque<Reply>>>,
    seen: Mutex<Vec<Seen>>,
    tokens_issued: AtomicU32,
    /// Tokens the API accepts (issued ones, until revoked).
    valid: Mutex<HashSet<String>>,
    /// `expires_in` of issued tokens.
    expires_in: Mutex<Option<Value>>,
    /// Echo the request (headers and body) in error answers, like a careless server.
    echo: bool,
    /// Accept this static bearer token too.
    static_token: Option<String>,
}

impl Stub {
    fn on(&self, route: &str, replies: Vec<Reply>) {
        self.script
            .lock()
            .unwrap()
            .insert(route.to_string(), replies.into());
    }
    fn count(&self, route: &str) -> usize {
        let (m, p) = route.split_once(' ').unwrap();
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == m && s.path == p)
            .count()
    }
    fn requests(&self, route: &str) -> Vec<Seen> {
        let (m, p) = route.split_once(' ').unwrap();
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == m && s.path == p)
            .cloned()
            .collect()
    }
    fn revoke_all(&self) {
        self.valid.lock().unwrap().clear();
    }
}

async fn handle(
    State(stub): State<Arc<Stub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let path = uri.path().to_string();
    let body_text = String::from_utf8_lossy(&body).to_string();
    stub.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: uri.query().unwrap_or("").to_string(),
        auth: header("authorization"),
        key: header("ocp-apim-subscription-key"),
        body: body_text.clone(),
        at: Instant::now(),
    });
    let echo = format!(
        "request had authorization={:?} key={:?} body={body_text}",
        header("authorization"),
        header("ocp-apim-subscription-key")
    );
    // Token endpoints.
    if path.ends_with("/oauth2/token") || path == "/oidc/v1/token" {
        let form_secret_ok = body_text.contains(&format!(
            "client_secret={}",
            url::form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect::<String>()
        ));
        let basic_ok = header("authorization").is_some_and(|a| a.starts_with("Basic "));
        if !(form_secret_ok || basic_ok) || body_text.contains("client_id=wrong") {
            let mut desc = "AADSTS7000215: Invalid client secret provided.".to_string();
            if stub.echo {
                desc.push(' ');
                desc.push_str(&echo);
            }
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "invalid_client", "error_description": desc})),
            )
                .into_response();
        }
        let n = stub.tokens_issued.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("issued-token-{n}-abcdefgh");
        stub.valid.lock().unwrap().insert(token.clone());
        let expires = stub
            .expires_in
            .lock()
            .unwrap()
            .clone()
            .unwrap_or(json!("3599"));
        return axum::Json(
            json!({"token_type": "Bearer", "access_token": token, "expires_in": expires}),
        )
        .into_response();
    }
    // API: bearer check.
    let bearer = header("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
        .unwrap_or_default();
    let authorised = stub.valid.lock().unwrap().contains(&bearer)
        || stub.static_token.as_deref() == Some(bearer.as_str());
    if !authorised {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"statusCode": 401, "message": "Access denied due to invalid token.", "traceId": "trace-401"})),
        )
            .into_response();
    }
    let route = format!("{method} {path}");
    let reply = {
        let mut script = stub.script.lock().unwrap();
        match script.get_mut(&route) {
            Some(q) if q.len() > 1 => q.pop_front(),
            Some(q) => q.front().cloned(),
            None => None,
        }
    };
    let Some(mut reply) = reply else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"message": format!("no route {route}"), "traceId": "trace-404"})),
        )
            .into_response();
    };
    if stub.echo && reply.status >= 400 {
        reply.body = json!({"message": echo, "traceId": "trace-echo"});
    }
    let mut resp = (
        StatusCode::from_u16(reply.status).unwrap(),
        axum::Json(reply.body),
    )
        .into_response();
    if let Some(ra) = reply.retry_after {
        resp.headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    resp
}

async fn start(stub: Arc<Stub>) -> String {
    let app = Router::new().fallback(handle).with_state(stub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        budget: Duration::from_secs(10),
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

fn workbench_settings(base: &str, auth: WorkbenchAuth) -> WorkbenchSettings {
    let mut s = WorkbenchSettings::new(
        Url::parse(&format!("{base}/veracity/dw/gateway/api/v2")).unwrap(),
        WS,
        auth,
        Secret::new(SUBSCRIPTION_KEY),
    );
    s.retry = fast_retries();
    s.request_timeout = Duration::from_secs(5);
    s
}

fn client_credentials(base: &str) -> WorkbenchAuth {
    WorkbenchAuth::ClientCredentials {
        token_url: Url::parse(&format!("{base}/oauth2/token")).unwrap(),
        resource: "https://resource".into(),
        client_id: "svc-client".into(),
        client_secret: Secret::new(CLIENT_SECRET),
    }
}

fn workbench(base: &str) -> WorkbenchBackend {
    WorkbenchBackend::new(workbench_settings(base, client_credentials(base))).unwrap()
}

fn databricks(base: &str, auth: DatabricksAuth) -> DatabricksBackend {
    let mut s = DatabricksSettings::new(Url::parse(base).unwrap(), auth);
    s.retry = fast_retries();
    s.request_timeout = Duration::from_secs(5);
    DatabricksBackend::new(s).unwrap()
}

const JOBS: &str =
    "GET /veracity/dw/gateway/api/v2/workspaces/00000000-0000-4000-8000-000000000001/jobs";

fn gw(rest: &str) -> String {
    format!("/veracity/dw/gateway/api/v2/workspaces/{WS}/{rest}")
}

fn jobs_body() -> Value {
    json!([
        {"jobId": 364946379282376u64, "jobName": "Assessment", "creatorUserName": "svc@dnv.com", "createdTime": 1700000000000u64},
        {"jobId": "364946379282377", "jobName": "TurbineRanking", "creatorUserName": "svc@dnv.com", "createdTime": "2024-01-02T03:04:05Z"},
        {"jobId": 5, "jobName": "Twin", "createdTime": 1},
        {"jobId": 6, "jobName": "Twin", "createdTime": 1}
    ])
}

#[tokio::test]
async fn token_is_cached_sent_with_the_subscription_key_and_refreshed_after_a_401() {
    let stub = Arc::new(Stub::default());
    stub.on(JOBS, vec![ok(jobs_body())]);
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    let jobs = wb.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 4);
    assert_eq!(jobs[0].id, 364946379282376);
    assert_eq!(jobs[0].parameters, None);
    assert_eq!(jobs[1].id, 364946379282377);
    wb.list_jobs().await.unwrap();
    assert_eq!(
        stub.tokens_issued.load(Ordering::SeqCst),
        1,
        "the token is cached"
    );
    for s in stub.requests(JOBS) {
        assert_eq!(s.key.as_deref(), Some(SUBSCRIPTION_KEY));
        assert_eq!(s.auth.as_deref(), Some("Bearer issued-token-1-abcdefgh"));
    }
    let token_req = &stub.requests("POST /oauth2/token")[0];
    assert!(token_req.body.contains("grant_type=client_credentials"));
    assert!(token_req.body.contains("client_id=svc-client"));
    assert!(token_req.body.contains("resource=https%3A%2F%2Fresource"));

    // The server forgets the token: one 401, one refresh, success.
    stub.revoke_all();
    wb.list_jobs().await.unwrap();
    assert_eq!(stub.tokens_issued.load(Ordering::SeqCst), 2);
    assert_eq!(stub.count(JOBS), 4);

    // Resolution: absence and ambiguity list candidates.
    assert_eq!(
        wb.resolve_job(&JobRef::Name("Assessment".into()))
            .await
            .unwrap(),
        364946379282376
    );
    let e = wb
        .resolve_job(&JobRef::Name("Twin".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Ambiguous);
    assert!(e.message.contains("5, 6"), "{}", e.message);
    let e = wb
        .resolve_job(&JobRef::Name("Assesment".into()))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.contains("did you mean `Assessment`?"),
        "{}",
        e.message
    );
    // The gateway does not list parameters: describe says None, not "none".
    let d = wb.describe_job(&JobRef::Id(5)).await.unwrap();
    assert_eq!(d.parameters, None);
}

#[tokio::test]
async fn tokens_are_refreshed_before_they_expire() {
    let stub = Arc::new(Stub::default());
    *stub.expires_in.lock().unwrap() = Some(json!("2"));
    stub.on(JOBS, vec![ok(json!([]))]);
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    wb.list_jobs().await.unwrap();
    wb.list_jobs().await.unwrap();
    assert_eq!(stub.tokens_issued.load(Ordering::SeqCst), 1);
    // Half of a 2 s life: refreshed after 1 s, before the server would refuse it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    wb.list_jobs().await.unwrap();
    assert_eq!(stub.tokens_issued.load(Ordering::SeqCst), 2);
    // No request ever got a 401.
    assert_eq!(stub.count(JOBS), 3);
}

#[tokio::test]
async fn a_401_after_a_refresh_is_an_auth_error_that_says_what_to_do() {
    let stub = Arc::new(Stub::default());
    stub.on(
        JOBS,
        vec![status(
            401,
            json!({"message": "Access denied due to invalid subscription key.", "traceId": "t-1"}),
        )],
    );
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    let e = wb.list_jobs().await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert!(!e.retryable);
    assert_eq!(stub.count(JOBS), 2, "one refresh, then give up");
    assert_eq!(stub.tokens_issued.load(Ordering::SeqCst), 2);
    assert!(e.message.contains("401"), "{}", e.message);
    assert!(e.message.contains("t-1"), "{}", e.message);
    assert!(e.message.contains("wrong or expired"), "{}", e.message);
    assert!(e.message.contains("two years"), "{}", e.message);

    // Wrong client credentials at the token endpoint: Auth, not retried.
    let mut s = workbench_settings(&base, client_credentials(&base));
    if let WorkbenchAuth::ClientCredentials { client_id, .. } = &mut s.auth {
        *client_id = "wrong".into();
    }
    let before = stub.count("POST /oauth2/token");
    let e = WorkbenchBackend::new(s)
        .unwrap()
        .list_jobs()
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(stub.count("POST /oauth2/token"), before + 1);
    assert!(e.message.contains("AADSTS7000215"), "{}", e.message);
    assert!(e.message.contains("expired"), "{}", e.message);
}

#[tokio::test]
async fn status_429_waits_for_retry_after() {
    let stub = Arc::new(Stub::default());
    stub.on(
        JOBS,
        vec![
            Reply {
                status: 429,
                body: json!({"statusCode": 429, "message": "Rate limit is exceeded."}),
                retry_after: Some("1"),
            },
            ok(json!([])),
        ],
    );
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    wb.list_jobs().await.unwrap();
    let seen = stub.requests(JOBS);
    assert_eq!(seen.len(), 2);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed_and_400_is_not_retried() {
    let stub = Arc::new(Stub::default());
    stub.on(
        JOBS,
        vec![
            status(500, json!({"message": "boom"})),
            status(502, json!({"message": "bad gateway"})),
            status(503, json!({"message": "busy"})),
            ok(jobs_body()),
        ],
    );
    let status_route = format!("GET {}", gw("runs/77/status"));
    stub.on(
        &status_route,
        vec![status(
            400,
            json!({"message": "Run id is malformed", "traceId": "0HN-trace-400"}),
        )],
    );
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    assert_eq!(wb.list_jobs().await.unwrap().len(), 4);
    assert_eq!(stub.count(JOBS), 4);
    let e = wb.status(&RunId("77".into())).await.unwrap_err();
    assert_eq!(stub.count(&status_route), 1, "400 is not retried");
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(!e.retryable);
    assert!(e.message.contains("400"), "{}", e.message);
    assert!(e.message.contains("0HN-trace-400"), "{}", e.message);
    assert!(e.message.contains("Run id is malformed"), "{}", e.message);

    // 404 and 403: not retried either.
    let r404 = format!("GET {}", gw("runs/78/status"));
    stub.on(&r404, vec![status(404, json!({"message": "no such run"}))]);
    let e = wb.status(&RunId("78".into())).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert_eq!(stub.count(&r404), 1);
    let r403 = format!("GET {}", gw("runs/79/status"));
    stub.on(&r403, vec![status(403, json!({"message": "forbidden"}))]);
    let e = wb.status(&RunId("79".into())).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(stub.count(&r403), 1);
}

#[tokio::test]
async fn retries_stop_at_the_budget() {
    let stub = Arc::new(Stub::default());
    stub.on(JOBS, vec![status(503, json!({"message": "down"}))]);
    let base = start(stub.clone()).await;
    let mut s = workbench_settings(&base, client_credentials(&base));
    s.retry.budget = Duration::from_millis(400);
    let wb = WorkbenchBackend::new(s).unwrap();
    let t0 = Instant::now();
    let e = wb.list_jobs().await.unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.retryable);
    assert!(e.message.contains("gave up after"), "{}", e.message);
    assert!(stub.count(JOBS) >= 3);
}

#[tokio::test]
async fn gateway_status_shapes_and_cancel_fallback() {
    let stub = Arc::new(Stub::default());
    stub.on(
        &format!("GET {}", gw("runs/1/status")),
        vec![ok(json!("Completed"))],
    );
    stub.on(
        &format!("GET {}", gw("runs/2/status")),
        vec![ok(json!({"state": {"lifeCycleState": "RUNNING"}}))],
    );
    stub.on(&format!("GET {}", gw("runs/3/status")), vec![ok(json!({"status": {"state": "TERMINATED", "termination_details": {"code": "DRIVER_ERROR", "type": "CLOUD_FAILURE", "message": "driver lost"}}}))]);
    stub.on(
        &format!("GET {}", gw("runs/4/status")),
        vec![ok(json!({"life_cycle_state": "WAITING_FOR_CAPACITY"}))],
    );
    stub.on(
        &format!("GET {}", gw("runs/1/cancel")),
        vec![status(405, json!({"message": "use POST"}))],
    );
    stub.on(
        &format!("POST {}", gw("runs/1/cancel")),
        vec![ok(json!({}))],
    );
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    assert!(wb.status(&RunId("1".into())).await.unwrap().is_success());
    let s = wb.status(&RunId("2".into())).await.unwrap();
    assert!(!s.is_terminal());
    let s = wb.status(&RunId("3".into())).await.unwrap();
    assert!(s.is_terminal() && !s.is_success() && s.retryable);
    assert_eq!(s.message.as_deref(), Some("driver lost"));
    let s = wb.status(&RunId("4".into())).await.unwrap();
    assert!(!s.is_terminal() && !s.is_success());
    wb.cancel(&RunId("1".into())).await.unwrap();
    assert_eq!(stub.count(&format!("GET {}", gw("runs/1/cancel"))), 1);
    assert_eq!(stub.count(&format!("POST {}", gw("runs/1/cancel"))), 1);

    // cancel_method: post goes straight to POST.
    let mut s = workbench_settings(&base, client_credentials(&base));
    s.cancel_method = CancelMethod::Post;
    WorkbenchBackend::new(s)
        .unwrap()
        .cancel(&RunId("1".into()))
        .await
        .unwrap();
    assert_eq!(stub.count(&format!("GET {}", gw("runs/1/cancel"))), 1);
    assert_eq!(stub.count(&format!("POST {}", gw("runs/1/cancel"))), 2);
}

#[tokio::test]
async fn invoke_sends_flat_strings_and_reads_every_run_id_shape() {
    let stub = Arc::new(Stub::default());
    let route = format!("POST {}", gw("jobs/42/invoke"));
    stub.on(
        &route,
        vec![
            ok(json!(700000000001u64)),
            ok(json!("700000000002")),
            ok(json!({"runId": 700000000003u64})),
            ok(json!({"run_id": "700000000004"})),
            ok(json!({"id": 700000000005u64})),
        ],
    );
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    let mut params = IndexMap::new();
    params.insert("InputDataset".to_string(), "turbinedata2023".to_string());
    params.insert("Year".to_string(), "2014".to_string());
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(wb.invoke(42, &params, "key").await.unwrap().0);
    }
    assert_eq!(
        ids,
        [
            "700000000001",
            "700000000002",
            "700000000003",
            "700000000004",
            "700000000005"
        ]
    );
    let body: Value = serde_json::from_str(&stub.requests(&route)[0].body).unwrap();
    assert_eq!(
        body,
        json!({"InputDataset": "turbinedata2023", "Year": "2014"})
    );
}

#[tokio::test]
async fn gateway_invoke_is_not_repeated_after_a_5xx() {
    let stub = Arc::new(Stub::default());
    let route = format!("POST {}", gw("jobs/42/invoke"));
    stub.on(
        &route,
        vec![status(
            502,
            json!({"message": "Bad Gateway", "traceId": "tr-502"}),
        )],
    );
    let base = start(stub.clone()).await;
    let e = workbench(&base)
        .invoke(42, &IndexMap::new(), "k")
        .await
        .unwrap_err();
    assert_eq!(stub.count(&route), 1);
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(!e.retryable);
    assert!(
        e.message.contains("may or may not have started"),
        "{}",
        e.message
    );
    assert!(e.message.contains("tr-502"), "{}", e.message);

    // A 429 means it was refused: retried.
    stub.on(
        &route,
        vec![
            Reply {
                status: 429,
                body: json!({"message": "slow down"}),
                retry_after: Some("0"),
            },
            ok(json!(9)),
        ],
    );
    let id = workbench(&base)
        .invoke(42, &IndexMap::new(), "k")
        .await
        .unwrap();
    assert_eq!(id.0, "9");
}

/// A raw HTTP/1.1 server: answers each request with what `answer` returns, or closes the
/// connection without a word when it returns `None` (a dropped connection after the
/// request arrived).
async fn raw_server<F>(answer: F) -> (String, Arc<Mutex<Vec<String>>>)
where
    F: Fn(&str, &str) -> Option<(u16, String)> + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let answer = Arc::new(answer);
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let answer = answer.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                loop {
                    // Read one request: headers, then Content-Length bytes.
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string();
                    let request_line = head.lines().next().unwrap_or("").to_string();
                    log.lock().unwrap().push(format!("{request_line} {body}"));
                    match answer(&request_line, &body) {
                        None => {
                            let _ = sock.shutdown().await;
                            return;
                        }
                        Some((code, text)) => {
                            let resp = format!(
                                "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                                text.len()
                            );
                            if sock.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (format!("http://{addr}"), log)
}

#[tokio::test]
async fn gateway_invoke_is_not_repeated_after_a_dropped_connection() {
    let (base, log) = raw_server(|line, _| {
        if line.contains("/invoke") {
            None
        } else {
            Some((200, "[]".into()))
        }
    })
    .await;
    let wb = WorkbenchBackend::new(workbench_settings(
        &base,
        WorkbenchAuth::Token(Secret::new("static-token-value")),
    ))
    .unwrap();
    assert!(!wb.idempotent_invoke());
    let e = wb.invoke(42, &IndexMap::new(), "k").await.unwrap_err();
    let invokes = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("/invoke"))
        .count();
    assert_eq!(invokes, 1, "the invoke POST was sent once");
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(!e.retryable);
    assert!(
        e.message.contains("may or may not have started"),
        "{}",
        e.message
    );
    assert!(e.message.contains("Data Workbench UI"), "{}", e.message);
}

#[tokio::test]
async fn gateway_invoke_is_retried_when_the_connection_was_refused() {
    // Bind, learn the port, close: nothing listens there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let base = format!("http://127.0.0.1:{port}");
    let mut s = workbench_settings(
        &base,
        WorkbenchAuth::Token(Secret::new("static-token-value")),
    );
    s.retry.budget = Duration::from_millis(300);
    let e = WorkbenchBackend::new(s)
        .unwrap()
        .invoke(42, &IndexMap::new(), "k")
        .await
        .unwrap_err();
    // Certainly not sent: retried until the budget, and safe to try again later.
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.retryable, "{}", e.message);
    assert!(e.message.contains("could not connect"), "{}", e.message);
    assert!(e.message.contains("gave up after"), "{}", e.message);
    assert!(!e.message.contains("may or may not"), "{}", e.message);
}

#[tokio::test]
async fn databricks_run_now_is_repeated_with_the_same_idempotency_token() {
    let calls = Arc::new(AtomicU32::new(0));
    let c2 = calls.clone();
    let (base, log) = raw_server(move |line, _body| {
        if line.contains("/run-now") {
            // The first answer is lost after the run was started.
            if c2.fetch_add(1, Ordering::SeqCst) == 0 {
                return None;
            }
            return Some((200, r#"{"run_id": 455644833, "number_in_job": 1}"#.into()));
        }
        Some((404, "{}".into()))
    })
    .await;
    let db = databricks(&base, DatabricksAuth::Token(Secret::new(PAT)));
    assert!(db.idempotent_invoke());
    let mut params = IndexMap::new();
    params.insert("Year".to_string(), "2014".to_string());
    let key = "dwflow-0123456789abcdef0123456789abcdef0123456789abcdef";
    let run = db.invoke(11223344, &params, key).await.unwrap();
    assert_eq!(run.0, "455644833");
    let bodies: Vec<Value> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("/run-now"))
        .map(|l| serde_json::from_str(&l[l.find('{').unwrap()..]).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2);
    for b in &bodies {
        assert_eq!(b["idempotency_token"], json!(key));
        assert_eq!(b["job_id"], json!(11223344));
        assert_eq!(b["job_parameters"], json!({"Year": "2014"}));
    }
}

#[tokio::test]
async fn databricks_jobs_list_follows_next_page_token() {
    let stub = Arc::new(Stub {
        static_token: Some(PAT.into()),
        ..Stub::default()
    });
    let page = |from: u64, n: u64, next: Option<&str>| {
        let jobs: Vec<Value> = (from..from + n)
            .map(|i| json!({"job_id": 1_000_000_000_000u64 + i, "creator_user_name": "a@b.c", "created_time": 1601370337343u64, "settings": {"name": format!("job-{i}")}}))
            .collect();
        let mut v = json!({"jobs": jobs});
        if let Some(t) = next {
            v["next_page_token"] = json!(t);
        }
        v
    };
    // No `has_more` anywhere (2.2 dropped it); the token alone says there is more.
    stub.on(
        "GET /api/2.1/jobs/list",
        vec![
            ok(page(0, 100, Some("p2"))),
            ok(page(100, 100, Some("p3"))),
            ok(page(200, 50, None)),
        ],
    );
    let base = start(stub.clone()).await;
    let db = databricks(&base, DatabricksAuth::Token(Secret::new(PAT)));
    let jobs = db.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 250);
    assert_eq!(jobs[249].name, "job-249");
    assert_eq!(jobs[0].created.as_deref(), Some("2020-09-29T09:05:37Z"));
    let seen = stub.requests("GET /api/2.1/jobs/list");
    assert_eq!(seen.len(), 3);
    assert!(seen[0].query.contains("limit=100"), "{}", seen[0].query);
    assert!(!seen[0].query.contains("page_token"));
    assert!(seen[1].query.contains("page_token=p2"));
    assert!(seen[2].query.contains("page_token=p3"));
    assert_eq!(seen[0].auth.as_deref(), Some(&*format!("Bearer {PAT}")));
}

#[tokio::test]
async fn databricks_describe_reads_parameters_defaults_and_tag_descriptions() {
    let stub = Arc::new(Stub {
        static_token: Some(PAT.into()),
        ..Stub::default()
    });
    stub.on(
        "GET /api/2.1/jobs/list",
        vec![ok(
            json!({"jobs": [{"job_id": 7, "settings": {"name": "Assessment"}}]}),
        )],
    );
    stub.on(
        "GET /api/2.1/jobs/get",
        vec![ok(json!({"job_id": 7, "creator_user_name": "a@b.c", "created_time": 1601370337343u64,
            "settings": {"name": "Assessment",
                "parameters": [{"name": "Year", "default": "2014"}, {"name": "InputDataset", "default": ""}],
                "tags": {"Year": "Year of SCADA data to assess.", "InputDataset": "The SCADA dataset."}}}))],
    );
    let base = start(stub.clone()).await;
    let db = databricks(&base, DatabricksAuth::Token(Secret::new(PAT)));
    let j = db
        .describe_job(&JobRef::Name("Assessment".into()))
        .await
        .unwrap();
    assert_eq!(j.id, 7);
    let p = j.parameters.unwrap();
    assert_eq!(p[0].name, "Year");
    assert_eq!(p[0].default.as_deref(), Some("2014"));
    assert_eq!(
        p[0].description.as_deref(),
        Some("Year of SCADA data to assess.")
    );
    assert_eq!(p[1].default, None, "an empty default makes it required");
    assert!(
        stub.requests("GET /api/2.1/jobs/list")[0]
            .query
            .contains("name=Assessment")
    );
    assert!(
        stub.requests("GET /api/2.1/jobs/get")[0]
            .query
            .contains("job_id=7")
    );
}

#[tokio::test]
async fn databricks_outputs_and_errors_come_from_get_output_of_the_task_runs() {
    let stub = Arc::new(Stub {
        static_token: Some(PAT.into()),
        ..Stub::default()
    });
    let base = start(stub.clone()).await;
    let db = databricks(&base, DatabricksAuth::Token(Secret::new(PAT)));
    // Success: outputs from the notebook result.
    stub.on(
        "GET /api/2.1/jobs/runs/get",
        vec![ok(json!({"run_id": 100, "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"},
            "status": {"state": "TERMINATED", "termination_details": {"code": "SUCCESS", "type": "SUCCESS"}},
            "tasks": [{"run_id": 1100, "task_key": "main", "state": {"life_cycle_state": "TERMINATED", "result_state": "SUCCESS"}}]}))],
    );
    stub.on(
        "GET /api/2.1/jobs/runs/get-output",
        vec![ok(json!({"notebook_output": {"result": "{\"ResultDatasetName\": \"lhb-daily-2014\", \"rows\": 365, \"nested\": {\"a\": 1}}", "truncated": false}}))],
    );
    let s = db.status(&RunId("100".into())).await.unwrap();
    assert!(s.is_success());
    assert_eq!(
        s.outputs.get("ResultDatasetName").map(String::as_str),
        Some("lhb-daily-2014")
    );
    assert_eq!(s.outputs.get("rows").map(String::as_str), Some("365"));
    assert!(!s.outputs.contains_key("nested"));
    assert!(
        stub.requests("GET /api/2.1/jobs/runs/get-output")[0]
            .query
            .contains("run_id=1100")
    );

    // Failure: the task's error in the message, with the run page.
    stub.on(
        "GET /api/2.1/jobs/runs/get",
        vec![ok(json!({"run_id": 101, "run_page_url": "https://h/#job/7/run/101",
            "state": {"life_cycle_state": "TERMINATED", "result_state": "FAILED", "state_message": "Task main failed"},
            "status": {"state": "TERMINATED", "termination_details": {"code": "RUN_EXECUTION_ERROR", "type": "CLIENT_ERROR", "message": "Task main failed"}},
            "tasks": [{"run_id": 1101, "task_key": "main", "state": {"life_cycle_state": "TERMINATED", "result_state": "FAILED"}}]}))],
    );
    stub.on(
        "GET /api/2.1/jobs/runs/get-output",
        vec![ok(json!({"error": "ZeroDivisionError: division by zero", "error_trace": "Traceback...\n  line 3\nZeroDivisionError: division by zero\n"}))],
    );
    let s = db.status(&RunId("101".into())).await.unwrap();
    assert!(s.is_terminal() && !s.is_success() && !s.retryable);
    let m = s.message.unwrap();
    assert!(m.contains("Task main failed"), "{m}");
    assert!(
        m.contains("task `main`: ZeroDivisionError: division by zero"),
        "{m}"
    );
    assert!(m.contains("https://h/#job/7/run/101"), "{m}");

    // Cancel is a POST with the numeric run id.
    stub.on("POST /api/2.1/jobs/runs/cancel", vec![ok(json!({}))]);
    db.cancel(&RunId("101".into())).await.unwrap();
    let c = &stub.requests("POST /api/2.1/jobs/runs/cancel")[0];
    assert_eq!(
        serde_json::from_str::<Value>(&c.body).unwrap(),
        json!({"run_id": 101})
    );

    // Datasets are not part of the Jobs API.
    let e = db.find_dataset("x").await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("use a workbench target"));
}

#[tokio::test]
async fn databricks_oauth_m2m_uses_basic_auth_and_scope() {
    let stub = Arc::new(Stub::default());
    stub.on("GET /api/2.1/jobs/list", vec![ok(json!({"jobs": []}))]);
    let base = start(stub.clone()).await;
    let db = databricks(
        &base,
        DatabricksAuth::OAuth {
            client_id: "sp-id".into(),
            client_secret: Secret::new(CLIENT_SECRET),
        },
    );
    assert!(db.list_jobs().await.unwrap().is_empty());
    db.list_jobs().await.unwrap();
    let t = stub.requests("POST /oidc/v1/token");
    assert_eq!(t.len(), 1);
    assert!(t[0].auth.as_deref().unwrap().starts_with("Basic "));
    assert!(t[0].body.contains("grant_type=client_credentials"));
    assert!(t[0].body.contains("scope=all-apis"));
    assert!(
        !t[0].body.contains("client_secret"),
        "the secret goes in the Basic header"
    );
}

#[tokio::test]
async fn workbench_datasets_are_found_by_exact_name_across_pages() {
    let stub = Arc::new(Stub::default());
    let ds = |i: u32, name: &str| json!({"id": format!("id-{i}"), "name": name, "workspaceId": WS, "createdOn": format!("2024-05-0{}T00:00:00Z", i % 9 + 1), "lastModifiedOn": "x", "tags": {}, "columns": [{"name": "a"}]});
    // A substring filter: the exact name is on page 2.
    stub.on(
        &format!("POST {}", gw("datasets/query")),
        vec![
            ok(json!({"result": [ds(1, "lhb-daily-2014-old"), ds(2, "x-lhb-daily-2014")], "pageIndex": 1, "pageSize": 2, "totalCount": 3, "totalPages": 2})),
            ok(json!({"result": [ds(3, "lhb-daily-2014")], "pageIndex": 2, "pageSize": 2, "totalCount": 3, "totalPages": 2})),
        ],
    );
    stub.on(
        &format!("POST {}", gw("datasets/id-3/query")),
        vec![ok(json!({"data": [{"a": 1, "b": "x"}, {"a": 2, "b": null}], "pagination": {"pageIndex": 1, "pageSize": 1000, "totalCount": 2, "totalPages": 1}}))],
    );
    let base = start(stub.clone()).await;
    let wb = workbench(&base);
    let d = wb.find_dataset("lhb-daily-2014").await.unwrap().unwrap();
    assert_eq!(d.id, "id-3");
    let q = stub.requests(&format!("POST {}", gw("datasets/query")));
    let first: Value = serde_json::from_str(&q[0].body).unwrap();
    assert_eq!(first["datasetName"], json!("lhb-daily-2014"));
    assert_eq!(first["pageIndex"], json!(1));
    let second: Value = serde_json::from_str(&q[1].body).unwrap();
    assert_eq!(second["pageIndex"], json!(2));
    let rows = wb.read_dataset("lhb-daily-2014", None).await.unwrap();
    assert_eq!(rows.columns, vec!["a", "b"]);
    assert_eq!(
        rows.rows,
        vec![vec![json!(1), json!("x")], vec![json!(2), Value::Null]]
    );
}

#[test]
fn plain_http_is_refused_off_loopback() {
    let http = |u: &str| Url::parse(u).unwrap();
    let token = || WorkbenchAuth::Token(Secret::new("t-123456"));
    let wb = |base: &str, auth: WorkbenchAuth| {
        WorkbenchBackend::new(WorkbenchSettings::new(
            http(base),
            WS,
            auth,
            Secret::new(SUBSCRIPTION_KEY),
        ))
    };
    let e = wb("http://api.example.com/v2", token()).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Invalid);
    assert!(e.message.contains("not loopback"), "{}", e.message);
    assert!(wb("http://192.168.1.10/v2", token()).is_err());
    let e = wb(
        "https://api.example.com/v2",
        WorkbenchAuth::ClientCredentials {
            token_url: http("http://login.example.com/oauth2/token"),
            resource: "r".into(),
            client_id: "c".into(),
            client_secret: Secret::new(CLIENT_SECRET),
        },
    )
    .err()
    .unwrap();
    assert!(e.message.contains("token URL"), "{}", e.message);
    assert!(wb("http://127.0.0.1:1/v2", token()).is_ok());
    assert!(wb("http://localhost:1/v2", token()).is_ok());
    assert!(wb("http://[::1]:1/v2", token()).is_ok());
    assert!(wb("https://api.example.com/v2", token()).is_ok());
    let db = |host: &str| {
        DatabricksBackend::new(DatabricksSettings::new(
            http(host),
            DatabricksAuth::Token(Secret::new(PAT)),
        ))
    };
    assert!(db("http://adb-1.azuredatabricks.net").is_err());
    assert!(db("http://10.0.0.1").is_err());
    assert!(db("https://adb-1.azuredatabricks.net").is_ok());
    assert!(db("http://127.0.0.1:8787").is_ok());
}

/// Every error text of many failures, for the secret check.
async fn collect_errors(base: &str, stub: &Arc<Stub>) -> Vec<BackendError> {
    let mut errors = Vec::new();
    let wb = workbench(base);
    stub.on(JOBS, vec![status(400, json!({}))]);
    errors.push(wb.list_jobs().await.unwrap_err());
    stub.on(JOBS, vec![status(500, json!({}))]);
    let mut s = workbench_settings(base, client_credentials(base));
    s.retry.budget = Duration::from_millis(100);
    errors.push(
        WorkbenchBackend::new(s)
            .unwrap()
            .list_jobs()
            .await
            .unwrap_err(),
    );
    stub.on(
        &format!("POST {}", gw("jobs/1/invoke")),
        vec![status(503, json!({}))],
    );
    errors.push(wb.invoke(1, &IndexMap::new(), "k").await.unwrap_err());
    stub.on(JOBS, vec![status(401, json!({}))]);
    errors.push(wb.list_jobs().await.unwrap_err());
    stub.on(
        &format!("GET {}", gw("runs/5/status")),
        vec![status(403, json!({}))],
    );
    errors.push(wb.status(&RunId("5".into())).await.unwrap_err());
    // The token endpoint refusing the client (and echoing the request).
    let mut s = workbench_settings(base, client_credentials(base));
    if let WorkbenchAuth::ClientCredentials { client_id, .. } = &mut s.auth {
        *client_id = "wrong".into();
    }
    errors.push(
        WorkbenchBackend::new(s)
            .unwrap()
            .list_jobs()
            .await
            .unwrap_err(),
    );
    // Databricks with a PAT and with OAuth.
    let db = databricks(base, DatabricksAuth::Token(Secret::new(PAT)));
    errors.push(db.list_jobs().await.unwrap_err());
    let db = databricks(
        base,
        DatabricksAuth::OAuth {
            client_id: "sp".into(),
            client_secret: Secret::new(CLIENT_SECRET),
        },
    );
    stub.on("POST /api/2.1/jobs/run-now", vec![status(400, json!({}))]);
    errors.push(db.invoke(1, &IndexMap::new(), "k").await.unwrap_err());
    // A server that is not there.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let mut s = workbench_settings(&gone, client_credentials(&gone));
    s.retry.budget = Duration::from_millis(100);
    errors.push(
        WorkbenchBackend::new(s)
            .unwrap()
            .list_jobs()
            .await
            .unwrap_err(),
    );
    errors
}

#[tokio::test]
async fn no_secret_in_any_error_text() {
    // A careless server that echoes the request's headers and body into its errors.
    let stub = Arc::new(Stub {
        echo: true,
        ..Stub::default()
    });
    let base = start(stub.clone()).await;
    let errors = collect_errors(&base, &stub).await;
    assert!(errors.len() >= 9);
    // The echo really happened (so the test would catch a leak).
    assert!(
        errors
            .iter()
            .any(|e| e.message.contains("request had authorization")),
        "{errors:#?}"
    );
    let mut secrets: Vec<String> = vec![
        CLIENT_SECRET.into(),
        url::form_urlencoded::byte_serialize(CLIENT_SECRET.as_bytes()).collect(),
        SUBSCRIPTION_KEY.into(),
        PAT.into(),
    ];
    for n in 1..=stub.tokens_issued.load(Ordering::SeqCst) {
        secrets.push(format!("issued-token-{n}-abcdefgh"));
    }
    for e in &errors {
        let text = format!("{} {:?}", e.message, e);
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "secret {s:?} in error text: {text}"
            );
        }
    }
}
