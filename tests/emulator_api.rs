//! The emulator over HTTP, in-process on 127.0.0.1:0: tokens, the gateway v2 endpoints,
//! the Databricks Jobs API subset, fault injection and stats, with jobs that really run
//! in a temporary local workspace.

use std::path::Path;
use std::time::{Duration, Instant};

use dwflow::emulator::{
    self, DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_DATABRICKS_TOKEN,
    DEFAULT_SUBSCRIPTION_KEY, DEFAULT_WORKSPACE_ID, EmulatorConfig, FIRST_RUN_ID, GATEWAY_PREFIX,
    InvokeResponse, TASK_RUN_OFFSET, WORKBENCH_RESOURCE,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const READINGS: &str = "site,day,value\n\
a,2024-01-01,1.5\n\
a,2024-01-02,2.5\n\
b,2024-01-01,2.25\n";

/// A workspace with a dataset, a tiny SQL job, a failing one and a long one.
fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "datasets/readings.csv", READINGS);
    write(
        root,
        "jobs/Sum.yaml",
        r#"
name: Sum
parameters:
  Input: {default: readings, description: The readings to sum.}
  Out: {description: The dataset to write.}
sql:
  inputs: ["{{ Input }}"]
  output: "{{ Out }}"
  query: SELECT site, sum(value) AS total FROM {{ Input | sql_ident }} GROUP BY site ORDER BY site
"#,
    );
    write(
        root,
        "jobs/Bad.yaml",
        r#"
name: Bad
parameters:
  Out: {default: bad-out}
sql:
  inputs: [readings]
  output: "{{ Out }}"
  query: SELECT nope FROM readings
"#,
    );
    write(
        root,
        "jobs/Forever.yaml",
        r#"
name: Forever
parameters:
  Out: {default: forever}
sql:
  output: "{{ Out }}"
  query: |
    WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000000)
    SELECT count(*) AS n FROM c
"#,
    );
    dir
}

struct Server {
    base: String,
    http: reqwest::Client,
    _ws: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(tune: impl FnOnce(&mut EmulatorConfig)) -> Server {
    let ws = workspace();
    let mut config = EmulatorConfig {
        workspace: ws.path().to_path_buf(),
        ..EmulatorConfig::default()
    };
    tune(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        emulator::serve(listener, config).await.unwrap();
    });
    // No pooled connections: a connection the emulator drops is never reused or retried.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let server = Server {
        base: format!("http://{addr}"),
        http,
        _ws: ws,
        task,
    };
    // Ready once the stats answer (the workspace is opened before serving).
    let start = Instant::now();
    while server.stats().await.is_none() {
        assert!(start.elapsed() < Duration::from_secs(30), "emulator not up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn gw(&self, path: &str) -> String {
        format!(
            "{}{GATEWAY_PREFIX}/workspaces/{DEFAULT_WORKSPACE_ID}{path}",
            self.base
        )
    }

    fn dbx(&self, path: &str) -> String {
        format!("{}/api/2.1/jobs/{path}", self.base)
    }

    async fn stats(&self) -> Option<Value> {
        let resp = self
            .http
            .get(self.url("/_emulator/stats"))
            .send()
            .await
            .ok()?;
        resp.json().await.ok()
    }

    async fn token_response(&self, id: &str, secret: &str) -> reqwest::Response {
        self.http
            .post(self.url("/oauth2/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("resource", WORKBENCH_RESOURCE),
            ])
            .send()
            .await
            .unwrap()
    }

    async fn token(&self) -> String {
        let resp = self
            .token_response(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    fn authed(&self, req: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
        req.bearer_auth(token)
            .header("Ocp-Apim-Subscription-Key", DEFAULT_SUBSCRIPTION_KEY)
    }

    /// A gateway call that must succeed: its JSON.
    async fn gw_ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let token = self.token().await;
        let mut req = self.authed(self.http.request(method, self.gw(path)), &token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
        serde_json::from_str(&text).unwrap()
    }

    async fn job_id(&self, name: &str) -> u64 {
        let jobs = self.gw_ok(reqwest::Method::GET, "/jobs", None).await;
        jobs.as_array()
            .unwrap()
            .iter()
            .find(|j| j["jobName"] == name)
            .unwrap_or_else(|| panic!("no job {name} in {jobs}"))["jobId"]
            .as_u64()
            .unwrap()
    }

    async fn invoke(&self, job: &str, params: Value) -> u64 {
        let id = self.job_id(job).await;
        let run = self
            .gw_ok(
                reqwest::Method::POST,
                &format!("/jobs/{id}/invoke"),
                Some(params),
            )
            .await;
        run.as_u64().unwrap_or_else(|| panic!("run id: {run}"))
    }

    /// Polls the gateway status until terminal.
    async fn gw_wait(&self, run_id: u64) -> Value {
        let start = Instant::now();
        let token = self.token().await;
        loop {
            let s: Value = self
                .authed(
                    self.http.get(self.gw(&format!("/runs/{run_id}/status"))),
                    &token,
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let life = s["state"]["lifeCycleState"].as_str().unwrap().to_string();
            if ["TERMINATED", "SKIPPED", "INTERNAL_ERROR"].contains(&life.as_str()) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "run {run_id} not finished: {s}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn dbx_get(&self, path: &str) -> (StatusCode, Value) {
        let resp = self
            .http
            .get(self.dbx(path))
            .bearer_auth(DEFAULT_DATABRICKS_TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn dbx_post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(self.dbx(path))
            .bearer_auth(DEFAULT_DATABRICKS_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap())
    }

    async fn dbx_job_id(&self, name: &str) -> u64 {
        let (s, body) = self.dbx_get(&format!("list?name={name}")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        body["jobs"][0]["job_id"].as_u64().unwrap()
    }

    /// Waits until a run is RUNNING, and a little more (so that its query has started).
    async fn wait_running(&self, run_id: u64) {
        let start = Instant::now();
        loop {
            let (_, run) = self.dbx_get(&format!("runs/get?run_id={run_id}")).await;
            if run["state"]["life_cycle_state"] == "RUNNING" {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{run}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    async fn dbx_wait(&self, run_id: u64) -> Value {
        let start = Instant::now();
        loop {
            let (s, run) = self.dbx_get(&format!("runs/get?run_id={run_id}")).await;
            assert_eq!(s, StatusCode::OK, "{run}");
            if run["status"]["state"] == "TERMINATED" {
                return run;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "run {run_id} not finished: {run}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn assert_gateway_error(body: &Value, status: StatusCode) {
    assert_eq!(body["statusCode"], status.as_u16(), "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let trace = body["traceId"].as_str().expect("traceId");
    assert!(uuid::Uuid::parse_str(trace).is_ok(), "{trace}");
}

#[tokio::test]
async fn token_endpoint_checks_credentials_and_answers_like_azure_ad_v1() {
    let s = start(|_| {}).await;
    let resp = s
        .token_response(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(
        body["expires_in"], "3600",
        "a string, as Azure AD v1 sends it"
    );
    let on: u64 = body["expires_on"].as_str().unwrap().parse().unwrap();
    assert!(on > 1_700_000_000);
    assert_eq!(body["resource"], WORKBENCH_RESOURCE);
    assert!(body["access_token"].as_str().unwrap().len() > 20);

    let resp = s.token_response(DEFAULT_CLIENT_ID, "wrong-secret").await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("wrong-secret") && !text.contains(DEFAULT_CLIENT_SECRET));
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "invalid_client");
    assert!(body["error_description"].is_string());
    let resp = s.token_response("someone", DEFAULT_CLIENT_SECRET).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // The resource must be the Data Workbench one.
    let resp = s
        .http
        .post(s.url("/oauth2/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", DEFAULT_CLIENT_ID),
            ("client_secret", DEFAULT_CLIENT_SECRET),
            ("resource", "https://example.org"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // Databricks OAuth M2M: HTTP Basic, scope all-apis, expires_in a number.
    let resp = s
        .http
        .post(s.url("/oidc/v1/token"))
        .basic_auth(DEFAULT_CLIENT_ID, Some(DEFAULT_CLIENT_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let dbx_token = body["access_token"].as_str().unwrap().to_string();
    let resp = s
        .http
        .get(s.dbx("list"))
        .bearer_auth(&dbx_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = s
        .http
        .post(s.url("/oidc/v1/token"))
        .basic_auth(DEFAULT_CLIENT_ID, Some("nope"))
        .form(&[("grant_type", "client_credentials"), ("scope", "all-apis")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");

    // A gateway token is not a Databricks token, nor the other way round.
    let gw_token = s.token().await;
    let resp = s
        .http
        .get(s.dbx("list"))
        .bearer_auth(&gw_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = s
        .authed(s.http.get(s.gw("/jobs")), &dbx_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let stats = s.stats().await.unwrap();
    assert_eq!(stats["tokens_issued"], 3);
}

#[tokio::test]
async fn tokens_expire_after_the_ttl() {
    let s = start(|c| c.token_ttl = Duration::from_secs(1)).await;
    let body: Value = s
        .token_response(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["expires_in"], "1");
    let token = body["access_token"].as_str().unwrap().to_string();
    let resp = s
        .authed(s.http.get(s.gw("/jobs")), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let resp = s
        .authed(s.http.get(s.gw("/jobs")), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert_gateway_error(&body, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    // A new token works again.
    let token = s.token().await;
    let resp = s
        .authed(s.http.get(s.gw("/jobs")), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn gateway_requires_key_token_and_workspace() {
    let s = start(|_| {}).await;
    let token = s.token().await;
    // No subscription key.
    let resp = s
        .http
        .get(s.gw("/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_gateway_error(&resp.json().await.unwrap(), StatusCode::UNAUTHORIZED);
    // A wrong key.
    let resp = s
        .http
        .get(s.gw("/jobs"))
        .bearer_auth(&token)
        .header("Ocp-Apim-Subscription-Key", "wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // No token.
    let resp = s
        .http
        .get(s.gw("/jobs"))
        .header("Ocp-Apim-Subscription-Key", DEFAULT_SUBSCRIPTION_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_gateway_error(&resp.json().await.unwrap(), StatusCode::UNAUTHORIZED);
    // A made-up token.
    let resp = s
        .authed(s.http.get(s.gw("/jobs")), "made-up")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // An unknown workspace.
    let resp = s
        .authed(
            s.http.get(s.url(&format!(
                "{GATEWAY_PREFIX}/workspaces/11111111-1111-4111-8111-111111111111/jobs"
            ))),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_gateway_error(&resp.json().await.unwrap(), StatusCode::NOT_FOUND);
    // Databricks without a token, with a wrong one.
    let resp = s.http.get(s.dbx("list")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.unwrap();
    assert!(body["error_code"].is_string() && body["message"].is_string());
    let resp = s
        .http
        .get(s.dbx("list"))
        .bearer_auth("dapi-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn gateway_lists_jobs_with_large_ids() {
    let s = start(|_| {}).await;
    let jobs = s.gw_ok(reqwest::Method::GET, "/jobs", None).await;
    let jobs = jobs.as_array().expect("a bare array");
    let mut names: Vec<&str> = jobs
        .iter()
        .map(|j| j["jobName"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Bad", "Forever", "Sum"]);
    for j in jobs {
        let id = j["jobId"].as_u64().expect("a number");
        assert!(id > u64::from(u32::MAX), "{j}");
        assert_eq!(j["creatorUserName"], "local");
        assert!(
            j["createdTime"].as_i64().unwrap() > 1_600_000_000_000,
            "{j}"
        );
        let mut keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, ["createdTime", "creatorUserName", "jobId", "jobName"]);
    }
}

#[tokio::test]
async fn gateway_invoke_runs_the_job_to_success() {
    let s = start(|_| {}).await;
    let run = s.invoke("Sum", json!({"Out": "sums"})).await;
    assert!(run >= FIRST_RUN_ID);
    let status = s.gw_wait(run).await;
    assert_eq!(status["runId"], run);
    assert_eq!(status["state"]["lifeCycleState"], "TERMINATED");
    assert_eq!(status["state"]["resultState"], "SUCCESS");
    // The job really ran: its dataset exists, with its rows.
    let found = s
        .gw_ok(
            reqwest::Method::POST,
            "/datasets/query",
            Some(json!({"datasetName": "sums"})),
        )
        .await;
    assert_eq!(found["totalCount"], 1, "{found}");
    assert_eq!(found["result"][0]["name"], "sums");

    // A second run gets the next id.
    let run2 = s.invoke("Sum", json!({"Out": "sums2"})).await;
    assert_eq!(run2, run + 1);
    s.gw_wait(run2).await;
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["invocations"]["per_job"]["Sum"], 2);
}

#[tokio::test]
async fn gateway_invoke_refuses_bad_parameters() {
    let s = start(|_| {}).await;
    let id = s.job_id("Sum").await;
    let token = s.token().await;
    for (body, needle) in [
        (json!({}), "missing required parameter"),
        (json!({"Out": "x", "Nope": "1"}), "no parameter `Nope`"),
        (json!({"Out": 5}), "must be a string"),
    ] {
        let resp = s
            .authed(s.http.post(s.gw(&format!("/jobs/{id}/invoke"))), &token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_gateway_error(&err, StatusCode::BAD_REQUEST);
        assert!(err["message"].as_str().unwrap().contains(needle), "{err}");
    }
    // An unknown job.
    let resp = s
        .authed(s.http.post(s.gw("/jobs/12345/invoke")), &token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_gateway_error(&resp.json().await.unwrap(), StatusCode::NOT_FOUND);
    // An unknown run.
    let resp = s
        .authed(s.http.get(s.gw("/runs/42/status")), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["invocations"]["per_job"], json!({}));
}

#[tokio::test]
async fn gateway_invoke_response_forms() {
    for (form, check) in [
        (InvokeResponse::String, "string"),
        (InvokeResponse::Object, "object"),
    ] {
        let s = start(|c| c.invoke_response = form).await;
        let id = s.job_id("Sum").await;
        let body = s
            .gw_ok(
                reqwest::Method::POST,
                &format!("/jobs/{id}/invoke"),
                Some(json!({"Out": "x"})),
            )
            .await;
        let run = match check {
            "string" => body.as_str().unwrap().parse::<u64>().unwrap(),
            _ => body["runId"].as_u64().unwrap(),
        };
        assert_eq!(run, FIRST_RUN_ID, "{body}");
        s.gw_wait(run).await;
    }
}

#[tokio::test]
async fn gateway_failing_job_reports_the_sqlite_message() {
    let s = start(|_| {}).await;
    let run = s.invoke("Bad", json!({})).await;
    let status = s.gw_wait(run).await;
    assert_eq!(status["state"]["lifeCycleState"], "TERMINATED");
    assert_eq!(status["state"]["resultState"], "FAILED");
    let msg = status["state"]["stateMessage"].as_str().unwrap();
    assert!(msg.contains("no such column: nope"), "{msg}");
}

#[tokio::test]
async fn gateway_cancel_stops_the_run() {
    let s = start(|_| {}).await;
    let run = s.invoke("Forever", json!({})).await;
    s.wait_running(run).await;
    // Cancel by GET (as documented) and by POST (a no-op the second time).
    s.gw_ok(reqwest::Method::GET, &format!("/runs/{run}/cancel"), None)
        .await;
    let status = s.gw_wait(run).await;
    assert_eq!(status["state"]["lifeCycleState"], "TERMINATED");
    assert_eq!(status["state"]["resultState"], "CANCELED");
    let again = s
        .gw_ok(reqwest::Method::POST, &format!("/runs/{run}/cancel"), None)
        .await;
    assert_eq!(again, json!({}));
}

#[tokio::test]
async fn gateway_datasets_query_and_rows() {
    let s = start(|_| {}).await;
    let all = s
        .gw_ok(reqwest::Method::POST, "/datasets/query", None)
        .await;
    assert_eq!(all["totalCount"], 1, "{all}");
    assert_eq!(all["pageIndex"], 1);
    assert_eq!(all["totalPages"], 1);
    let ds = &all["result"][0];
    assert_eq!(ds["name"], "readings");
    assert_eq!(ds["workspaceId"], DEFAULT_WORKSPACE_ID);
    assert!(ds["createdOn"].as_str().unwrap().contains('T'));
    assert!(ds["lastModifiedOn"].is_string());
    assert_eq!(ds["tags"], json!({}));
    assert_eq!(
        ds["columns"],
        json!([{"name": "site"}, {"name": "day"}, {"name": "value"}])
    );
    let id = ds["id"].as_str().unwrap().to_string();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    // The id is stable and names the dataset.
    let again = s
        .gw_ok(
            reqwest::Method::POST,
            "/datasets/query",
            Some(json!({"datasetName": "READ", "pageIndex": 1, "pageSize": 10})),
        )
        .await;
    assert_eq!(again["result"][0]["id"], id.as_str());
    let one = s
        .gw_ok(reqwest::Method::GET, &format!("/datasets/{id}"), None)
        .await;
    assert_eq!(one["name"], "readings");
    let none = s
        .gw_ok(
            reqwest::Method::POST,
            "/datasets/query",
            Some(json!({"datasetName": "nothing-like-it"})),
        )
        .await;
    assert_eq!(none["totalCount"], 0);
    assert_eq!(none["result"], json!([]));

    // Rows, a page at a time.
    let page = s
        .gw_ok(
            reqwest::Method::POST,
            &format!("/datasets/{id}/query"),
            Some(json!({"pageIndex": 2, "pageSize": 2})),
        )
        .await;
    assert_eq!(
        page["data"],
        json!([{"site": "b", "day": "2024-01-01", "value": 2.25}])
    );
    assert_eq!(
        page["pagination"],
        json!({"pageIndex": 2, "pageSize": 2, "totalCount": 3, "totalPages": 2})
    );
    let first = s
        .gw_ok(
            reqwest::Method::POST,
            &format!("/datasets/{id}/query"),
            Some(json!({"pageIndex": 1, "pageSize": 2})),
        )
        .await;
    assert_eq!(
        first["data"][0],
        json!({"site": "a", "day": "2024-01-01", "value": 1.5})
    );

    // An unknown id.
    let token = s.token().await;
    let resp = s
        .authed(
            s.http
                .get(s.gw("/datasets/00000000-0000-8000-8000-000000000000")),
            &token,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn databricks_list_pages_and_filters_by_name() {
    let s = start(|_| {}).await;
    let mut names = Vec::new();
    let mut path = "list?limit=1".to_string();
    loop {
        let (status, body) = s.dbx_get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let jobs = body["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1, "{body}");
        let job = &jobs[0];
        assert!(job["job_id"].as_u64().unwrap() > u64::from(u32::MAX));
        assert_eq!(job["creator_user_name"], "local");
        assert!(job["created_time"].as_i64().unwrap() > 0);
        names.push(job["settings"]["name"].as_str().unwrap().to_string());
        match body["next_page_token"].as_str() {
            Some(t) => {
                assert_eq!(body["has_more"], true);
                path = format!("list?limit=1&page_token={t}");
            }
            None => {
                assert_eq!(body["has_more"], false);
                break;
            }
        }
    }
    names.sort();
    assert_eq!(names, ["Bad", "Forever", "Sum"]);

    let (_, body) = s.dbx_get("list?name=Sum").await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(body["jobs"][0]["settings"]["name"], "Sum");
    let (_, body) = s.dbx_get("list?name=Su").await;
    assert_eq!(body["jobs"], json!([]));
    let (status, body) = s.dbx_get("list?limit=101").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE");
    let (status, _) = s.dbx_get("list?page_token=garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn databricks_get_shows_parameters_and_tag_descriptions() {
    let s = start(|_| {}).await;
    let id = s.dbx_job_id("Sum").await;
    let (status, job) = s.dbx_get(&format!("get?job_id={id}")).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["job_id"], id);
    assert_eq!(job["settings"]["name"], "Sum");
    assert_eq!(
        job["settings"]["parameters"],
        json!([{"name": "Input", "default": "readings"}, {"name": "Out", "default": ""}])
    );
    assert_eq!(
        job["settings"]["tags"],
        json!({"Input": "The readings to sum.", "Out": "The dataset to write."})
    );
    assert_eq!(job["settings"]["tasks"], json!([{"task_key": "main"}]));
    let (status, body) = s.dbx_get("get?job_id=12345").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST");
    let (status, body) = s.dbx_get("get?job_id=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE");
}

#[tokio::test]
async fn databricks_run_now_honours_idempotency_tokens() {
    let s = start(|_| {}).await;
    let id = s.dbx_job_id("Sum").await;
    let body = json!({
        "job_id": id,
        "job_parameters": {"Out": "sums"},
        "idempotency_token": "pipeline-1/step-a/attempt-1",
    });
    let (status, first) = s.dbx_post("run-now", body.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let run_id = first["run_id"].as_u64().unwrap();
    assert!(first["number_in_job"].is_u64());
    let (_, second) = s.dbx_post("run-now", body).await;
    assert_eq!(second["run_id"], run_id);
    // Another token: another run.
    let (_, third) = s
        .dbx_post(
            "run-now",
            json!({"job_id": id, "job_parameters": {"Out": "sums-b"}, "idempotency_token": "t2"}),
        )
        .await;
    assert_ne!(third["run_id"], run_id);
    let stats = s.stats().await.unwrap();
    assert_eq!(
        stats["invocations"]["per_idempotency_token"],
        json!({"pipeline-1/step-a/attempt-1": 1, "t2": 1})
    );
    assert_eq!(stats["invocations"]["per_job"]["Sum"], 2);
    assert_eq!(stats["requests"]["POST /api/2.1/jobs/run-now"], 3);

    // Bad requests.
    let (status, body) = s
        .dbx_post(
            "run-now",
            json!({"job_id": id, "job_parameters": {"Out": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = s
        .dbx_post("run-now", json!({"job_id": id, "job_parameters": {}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"].as_str().unwrap().contains("Out"), "{body}");
    let (status, _) = s
        .dbx_post(
            "run-now",
            json!({"job_id": id, "job_parameters": {"Out": "x"}, "idempotency_token": "x".repeat(65)}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = s.dbx_post("run-now", json!({"job_id": 12345})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST");
}

#[tokio::test]
async fn databricks_runs_get_and_output() {
    let s = start(|_| {}).await;
    let id = s.dbx_job_id("Sum").await;
    let (_, started) = s
        .dbx_post(
            "run-now",
            json!({"job_id": id, "job_parameters": {"Out": "sums"}}),
        )
        .await;
    let run_id = started["run_id"].as_u64().unwrap();
    let run = s.dbx_wait(run_id).await;
    assert_eq!(run["run_id"], run_id);
    assert_eq!(run["job_id"], id);
    assert_eq!(run["state"]["life_cycle_state"], "TERMINATED");
    assert_eq!(run["state"]["result_state"], "SUCCESS");
    assert_eq!(
        run["status"]["termination_details"]["code"], "SUCCESS",
        "{run}"
    );
    assert_eq!(run["status"]["termination_details"]["type"], "SUCCESS");
    assert!(run["start_time"].as_i64().unwrap() > 0);
    assert!(run["end_time"].as_i64().unwrap() >= run["start_time"].as_i64().unwrap());
    let task_run = run["tasks"][0]["run_id"].as_u64().unwrap();
    assert_eq!(task_run, run_id + TASK_RUN_OFFSET);
    assert_eq!(run["tasks"][0]["task_key"], "main");

    let (status, out) = s
        .dbx_get(&format!("runs/get-output?run_id={task_run}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{out}");
    let result: Value =
        serde_json::from_str(out["notebook_output"]["result"].as_str().unwrap()).unwrap();
    assert_eq!(result["output_dataset"], "sums");
    assert_eq!(result["output_rows"], "2");
    assert_eq!(out["notebook_output"]["truncated"], false);
    assert!(out.get("error").is_none());
    assert_eq!(out["metadata"]["state"]["result_state"], "SUCCESS");
    // Output of the job run itself: refused, as on Databricks for multi-task runs.
    let (status, body) = s.dbx_get(&format!("runs/get-output?run_id={run_id}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error_code"], "INVALID_PARAMETER_VALUE");

    // A failing job: FAILED, a client error, the SQLite message in the output.
    let bad = s.dbx_job_id("Bad").await;
    let (_, started) = s.dbx_post("run-now", json!({"job_id": bad})).await;
    let run_id = started["run_id"].as_u64().unwrap();
    let run = s.dbx_wait(run_id).await;
    assert_eq!(run["state"]["life_cycle_state"], "TERMINATED");
    assert_eq!(run["state"]["result_state"], "FAILED");
    assert_eq!(
        run["status"]["termination_details"]["code"],
        "RUN_EXECUTION_ERROR"
    );
    assert_eq!(run["status"]["termination_details"]["type"], "CLIENT_ERROR");
    assert!(
        run["state"]["state_message"]
            .as_str()
            .unwrap()
            .contains("no such column: nope")
    );
    let task_run = run["tasks"][0]["run_id"].as_u64().unwrap();
    let (_, out) = s
        .dbx_get(&format!("runs/get-output?run_id={task_run}"))
        .await;
    assert!(
        out["error"]
            .as_str()
            .unwrap()
            .contains("no such column: nope"),
        "{out}"
    );

    // Unknown runs.
    let (status, body) = s.dbx_get("runs/get?run_id=1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error_code"], "RESOURCE_DOES_NOT_EXIST");
    let (status, _) = s.dbx_post("runs/cancel", json!({"run_id": 1})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn databricks_cancel() {
    let s = start(|_| {}).await;
    let id = s.dbx_job_id("Forever").await;
    let (_, started) = s.dbx_post("run-now", json!({"job_id": id})).await;
    let run_id = started["run_id"].as_u64().unwrap();
    s.wait_running(run_id).await;
    let (status, body) = s.dbx_post("runs/cancel", json!({"run_id": run_id})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({}));
    let run = s.dbx_wait(run_id).await;
    assert_eq!(run["state"]["result_state"], "CANCELED", "{run}");
    assert_eq!(run["status"]["termination_details"]["code"], "CANCELED");
    // A no-op on a finished run.
    let (status, _) = s.dbx_post("runs/cancel", json!({"run_id": run_id})).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn fault_5xx_and_429_answer_in_each_apis_shape() {
    let s = start(|c| {
        c.faults.rate_5xx = 1.0;
        c.faults.seed = 7;
    })
    .await;
    // Token endpoints are never faulted.
    let token = s.token().await;
    let resp = s
        .authed(s.http.get(s.gw("/jobs")), &token)
        .send()
        .await
        .unwrap();
    assert!(
        [500, 502, 503].contains(&resp.status().as_u16()),
        "{}",
        resp.status()
    );
    let status = resp.status();
    assert_gateway_error(&resp.json().await.unwrap(), status);
    let (status, body) = s.dbx_get("list").await;
    assert!(status.is_server_error());
    assert!(body["error_code"].is_string(), "{body}");
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["faults"]["5xx"], 2);
    drop(s);

    let s = start(|c| {
        c.faults.rate_429 = 1.0;
        c.faults.retry_after_secs = 7;
    })
    .await;
    let token = s.token().await;
    let resp = s
        .authed(s.http.get(s.gw("/jobs")), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    assert_gateway_error(&resp.json().await.unwrap(), StatusCode::TOO_MANY_REQUESTS);
    let resp = s
        .http
        .get(s.dbx("list"))
        .bearer_auth(DEFAULT_DATABRICKS_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error_code"], "REQUEST_LIMIT_EXCEEDED");
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["faults"]["429"], 2);
}

#[tokio::test]
async fn fault_drop_closes_the_connection_before_acting() {
    let s = start(|c| c.faults.drop_rate = 1.0).await;
    let token = s.token().await;
    let resp = s
        .authed(s.http.post(s.gw("/jobs/1/invoke")), &token)
        .json(&json!({}))
        .send()
        .await;
    assert!(resp.is_err(), "{resp:?}");
    let err = s
        .http
        .post(s.dbx("run-now"))
        .bearer_auth(DEFAULT_DATABRICKS_TOKEN)
        .json(&json!({"job_id": 1, "idempotency_token": "k"}))
        .send()
        .await;
    assert!(err.is_err());
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["faults"]["dropped"], 2);
    assert_eq!(stats["invocations"]["per_job"], json!({}));
    assert_eq!(stats["invocations"]["per_idempotency_token"], json!({}));
}

#[tokio::test]
async fn fault_lost_response_acts_then_closes_the_connection() {
    let s = start(|c| c.faults.lost_response_rate = 1.0).await;
    let id = {
        // Listing is faulted too: find the id without the API.
        dwflow::backend::local::job_id("Sum")
    };
    let token = s.token().await;
    let resp = s
        .authed(s.http.post(s.gw(&format!("/jobs/{id}/invoke"))), &token)
        .json(&json!({"Out": "sums"}))
        .send()
        .await;
    // No response at all: the connection closes before any status line.
    assert!(resp.is_err(), "{resp:?}");
    // The invocation happened all the same.
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["faults"]["lost"], 1);
    assert_eq!(stats["invocations"]["per_job"]["Sum"], 1);

    // Databricks: a retried run-now with the same token starts nothing new.
    let body = json!({"job_id": id, "job_parameters": {"Out": "s2"}, "idempotency_token": "tok"});
    for _ in 0..2 {
        let r = s
            .http
            .post(s.dbx("run-now"))
            .bearer_auth(DEFAULT_DATABRICKS_TOKEN)
            .json(&body)
            .send()
            .await;
        assert!(r.is_err(), "{r:?}");
    }
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["faults"]["lost"], 3);
    assert_eq!(stats["invocations"]["per_job"]["Sum"], 2);
    assert_eq!(stats["invocations"]["per_idempotency_token"]["tok"], 1);
}

#[tokio::test]
async fn latency_is_added_to_responses() {
    let s = start(|c| c.faults.latency = Duration::from_millis(300)).await;
    let t = Instant::now();
    let (status, _) = s.dbx_get("list").await;
    assert_eq!(status, StatusCode::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn queued_runs_and_unknown_states_never_hide_the_end() {
    let s = start(|c| {
        c.faults.queued = Duration::from_millis(1200);
        c.faults.unknown_state_rate = 1.0;
    })
    .await;
    let run = s.invoke("Sum", json!({"Out": "sums"})).await;
    // Held: every non-terminal state is replaced by an unknown one.
    let token = s.token().await;
    let status: Value = s
        .authed(s.http.get(s.gw(&format!("/runs/{run}/status"))), &token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let life = status["state"]["lifeCycleState"].as_str().unwrap();
    assert!(
        [
            "WAITING_FOR_CAPACITY",
            "PROVISIONING_COMPUTE",
            "AWAITING_RESOURCES"
        ]
        .contains(&life),
        "{status}"
    );
    assert!(status["state"]["resultState"].is_null());
    // The end is always shown as it is.
    let end = s.gw_wait(run).await;
    assert_eq!(end["state"]["lifeCycleState"], "TERMINATED");
    assert_eq!(end["state"]["resultState"], "SUCCESS");
    for _ in 0..5 {
        let again = s.gw_wait(run).await;
        assert_eq!(again["state"]["resultState"], "SUCCESS");
    }
    let (_, dbx_run) = s.dbx_get(&format!("runs/get?run_id={run}")).await;
    assert_eq!(dbx_run["state"]["life_cycle_state"], "TERMINATED");
    assert_eq!(dbx_run["status"]["state"], "TERMINATED");
    let stats = s.stats().await.unwrap();
    assert!(stats["faults"]["unknown_state"].as_u64().unwrap() >= 1);
}

#[tokio::test]
async fn queued_runs_report_queued_then_pending_and_can_be_cancelled_before_starting() {
    let s = start(|c| c.faults.queued = Duration::from_secs(3)).await;
    let id = s.dbx_job_id("Sum").await;
    let t0 = Instant::now();
    let (_, started) = s
        .dbx_post(
            "run-now",
            json!({"job_id": id, "job_parameters": {"Out": "sums"}}),
        )
        .await;
    let run_id = started["run_id"].as_u64().unwrap();
    let (_, run) = s.dbx_get(&format!("runs/get?run_id={run_id}")).await;
    assert_eq!(run["state"]["life_cycle_state"], "QUEUED", "{run}");
    assert_eq!(run["status"]["state"], "QUEUED");
    // QUEUED for the first half of the hold, PENDING for the second.
    tokio::time::sleep_until((t0 + Duration::from_millis(2000)).into()).await;
    let (_, run) = s.dbx_get(&format!("runs/get?run_id={run_id}")).await;
    assert_eq!(run["state"]["life_cycle_state"], "PENDING", "{run}");
    let run = s.dbx_wait(run_id).await;
    assert_eq!(run["state"]["result_state"], "SUCCESS");

    // Held runs still check their parameters at once.
    let (status, _) = s
        .dbx_post("run-now", json!({"job_id": id, "job_parameters": {}}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Cancelled while queued: it never starts.
    let (_, started) = s
        .dbx_post(
            "run-now",
            json!({"job_id": id, "job_parameters": {"Out": "never"}}),
        )
        .await;
    let run_id = started["run_id"].as_u64().unwrap();
    s.dbx_post("runs/cancel", json!({"run_id": run_id})).await;
    let run = s.dbx_wait(run_id).await;
    assert_eq!(run["state"]["result_state"], "CANCELED");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let (_, run) = s.dbx_get(&format!("runs/get?run_id={run_id}")).await;
    assert_eq!(run["state"]["result_state"], "CANCELED");
    let found = s
        .gw_ok(
            reqwest::Method::POST,
            "/datasets/query",
            Some(json!({"datasetName": "never"})),
        )
        .await;
    assert_eq!(found["totalCount"], 0);
}

#[tokio::test]
async fn seeded_faults_repeat() {
    async fn outcomes(seed: u64) -> Vec<u16> {
        let s = start(|c| {
            c.faults.seed = seed;
            c.faults.rate_5xx = 0.5;
        })
        .await;
        let mut out = Vec::new();
        for _ in 0..20 {
            let (status, _) = s.dbx_get("list").await;
            out.push(status.as_u16());
        }
        out
    }
    let a = outcomes(42).await;
    assert_eq!(a, outcomes(42).await);
    assert!(a.contains(&200) && a.iter().any(|s| *s >= 500), "{a:?}");
}

#[tokio::test]
async fn stats_count_requests_by_route_and_reset() {
    let s = start(|_| {}).await;
    let token = s.token().await;
    for _ in 0..2 {
        let resp = s
            .authed(s.http.get(s.gw("/jobs")), &token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    s.dbx_get("list").await;
    let resp = s.http.get(s.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let stats = s.stats().await.unwrap();
    let requests = &stats["requests"];
    assert_eq!(
        requests[format!("GET {GATEWAY_PREFIX}/workspaces/{{ws}}/jobs")],
        2,
        "{stats}"
    );
    assert_eq!(requests["GET /api/2.1/jobs/list"], 1);
    assert_eq!(requests["POST /oauth2/token"], 1);
    assert_eq!(requests["GET (unmatched)"], 1);
    assert_eq!(stats["tokens_issued"], 1);
    assert_eq!(
        stats["faults"],
        json!({"5xx": 0, "429": 0, "dropped": 0, "lost": 0, "unknown_state": 0})
    );
    let resp = s
        .http
        .post(s.url("/_emulator/reset-stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let stats = s.stats().await.unwrap();
    assert_eq!(stats["requests"], json!({}));
    assert_eq!(stats["tokens_issued"], 0);
}

#[test]
fn config_rejects_bad_rates_and_ids() {
    let mut c = EmulatorConfig::default();
    assert!(c.validate().is_ok());
    c.faults.rate_5xx = 1.5;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--fault-5xx")
    );
    let mut c = EmulatorConfig::default();
    c.faults.drop_rate = f64::NAN;
    assert!(c.validate().is_err());
    let c = EmulatorConfig {
        workspace_id: "not-a-uuid".into(),
        ..EmulatorConfig::default()
    };
    assert!(c.validate().is_err());
}

/// The binary: prints the listening line with the real port, serves, refuses bad rates.
#[test]
fn cli_prints_the_address_and_serves() {
    use std::io::BufRead as _;
    let ws = workspace();
    let exe = env!("CARGO_BIN_EXE_dwflow");
    let out = std::process::Command::new(exe)
        .args(["emulator", "--listen", "127.0.0.1:0", "--fault-5xx", "2"])
        .arg("--workspace")
        .arg(ws.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    let mut child = std::process::Command::new(exe)
        .args(["emulator", "--listen", "127.0.0.1:0", "--seed", "3"])
        .arg("--workspace")
        .arg(ws.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("emulator listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    assert!(
        base.starts_with("http://127.0.0.1:") && !base.ends_with(":0"),
        "{base}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats: Value = rt.block_on(async {
        reqwest::get(format!("{base}/_emulator/stats"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(stats["tokens_issued"], 0);
    // SIGTERM: a clean exit.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
