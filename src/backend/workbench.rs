//! The Veracity Data Workbench backend: the gateway API v2 in front of the workspace's
//! Databricks jobs (`/workspaces/{ws}/jobs`, `.../jobs/{id}/invoke`,
//! `.../runs/{id}/status`, `.../runs/{id}/cancel`, `.../datasets/query`).
//!
//! What the gateway does not document is read tolerantly (see `wire` and `run_state`):
//! the invoke answer, the status shape and vocabulary, pagination of the job list. The
//! invoke POST has no idempotency key, so it is never sent twice once it may have
//! reached the gateway.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use reqwest::{Method, Url};
use serde_json::{Value, json};

use super::http::{
    ApiClient, Body, Call, ClientAuth, ClientCredentials, Failure, Redactor, RetryPolicy, Safety,
    Secret, StaticToken, TokenProvider, join,
};
use super::wire::{self, get_ci};
use super::{
    Backend, BackendError, DatasetInfo, ErrorKind, JobInfo, JobRef, Rows, RunId, RunStatus,
};

/// The public gateway.
pub const DEFAULT_BASE_URL: &str = "https://api.veracity.com/veracity/dw/gateway/api/v2";
/// Azure AD (v1) token endpoint of Veracity's tenant.
pub const DEFAULT_TOKEN_URL: &str =
    "https://login.microsoftonline.com/dnvglb2cprod.onmicrosoft.com/oauth2/token";
/// The gateway's resource id for client-credentials tokens.
pub const DEFAULT_RESOURCE: &str =
    "https://dnvglb2cprod.onmicrosoft.com/83054ebf-1d7b-43f5-82ad-b2bde84d7b75";

/// How `runs/{id}/cancel` is called: documented as GET; Databricks itself uses POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CancelMethod {
    #[default]
    Get,
    Post,
}

/// How the backend gets its bearer token.
#[derive(Debug, Clone)]
pub enum WorkbenchAuth {
    /// Service-account client credentials (Azure AD v1 form with `resource`).
    ClientCredentials {
        token_url: Url,
        resource: String,
        client_id: String,
        client_secret: Secret,
    },
    /// A bearer token obtained elsewhere.
    Token(Secret),
}

/// Everything the backend needs, resolved (secrets read from the environment).
#[derive(Debug, Clone)]
pub struct WorkbenchSettings {
    pub base_url: Url,
    pub workspace_id: String,
    pub auth: WorkbenchAuth,
    pub subscription_key: Secret,
    pub cancel_method: CancelMethod,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Refresh a token this long before it expires (at most half its life).
    pub refresh_before: Duration,
    /// Said when the credentials are refused: which variables hold them.
    pub credential_hint: String,
}

impl WorkbenchSettings {
    /// Settings with the documented defaults for everything but the essentials.
    pub fn new(
        base_url: Url,
        workspace_id: impl Into<String>,
        auth: WorkbenchAuth,
        subscription_key: Secret,
    ) -> Self {
        WorkbenchSettings {
            base_url,
            workspace_id: workspace_id.into(),
            auth,
            subscription_key,
            cancel_method: CancelMethod::Get,
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            refresh_before: Duration::from_secs(300),
            credential_hint: default_hint(),
        }
    }
}

fn default_hint() -> String {
    "The service-account credentials (client id and secret) or the subscription key are wrong or expired: Veracity secrets expire two years after they are made; get new ones from the workspace's API management page in Data Workbench".to_string()
}

/// The Veracity Data Workbench gateway v2.
pub struct WorkbenchBackend {
    api: ApiClient,
    base: Url,
    workspace_id: String,
    cancel_method: CancelMethod,
}

/// Pages read at most when listing (a guard against a server that never stops).
const MAX_PAGES: u32 = 10_000;
const PAGE_SIZE: u64 = 100;

impl WorkbenchBackend {
    pub fn new(s: WorkbenchSettings) -> Result<Self, BackendError> {
        super::http::check_url(&s.base_url, "the workbench base_url")
            .map_err(|m| BackendError::new(ErrorKind::Invalid, m))?;
        if s.workspace_id.trim().is_empty() {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                "the workbench target needs a `workspace_id`",
            ));
        }
        let redactor = Redactor::default();
        redactor.add(s.subscription_key.expose());
        let tokens: Arc<dyn TokenProvider> = match s.auth {
            WorkbenchAuth::Token(t) => {
                redactor.add(t.expose());
                Arc::new(StaticToken(t))
            }
            WorkbenchAuth::ClientCredentials {
                token_url,
                resource,
                client_id,
                client_secret,
            } => Arc::new(ClientCredentials::new(
                token_url,
                ClientAuth::Form {
                    client_id,
                    client_secret,
                },
                vec![("resource".into(), resource)],
                s.refresh_before,
                s.request_timeout,
                s.retry.clone(),
                redactor.clone(),
                s.credential_hint.clone(),
            )?),
        };
        let api = ApiClient::new(
            "the Data Workbench gateway",
            &s.base_url,
            tokens,
            vec![("ocp-apim-subscription-key", s.subscription_key)],
            s.request_timeout,
            s.retry,
            redactor,
            s.credential_hint,
        )?;
        Ok(WorkbenchBackend {
            api,
            base: s.base_url,
            workspace_id: s.workspace_id,
            cancel_method: s.cancel_method,
        })
    }

    fn url(&self, rest: &[&str]) -> Url {
        let mut segs = vec!["workspaces", self.workspace_id.as_str()];
        segs.extend_from_slice(rest);
        join(&self.base, &segs)
    }

    async fn call(&self, call: Call) -> Result<Value, BackendError> {
        self.api
            .send(&call)
            .await
            .map(|a| a.body)
            .map_err(|e| e.into_backend())
    }

    /// One page of `datasets/query`.
    async fn dataset_page(
        &self,
        name: Option<&str>,
        created_after: Option<&str>,
        page: u64,
    ) -> Result<(Vec<DatasetInfo>, Option<u64>), BackendError> {
        let mut body = json!({"pageIndex": page, "pageSize": PAGE_SIZE});
        if let Some(n) = name {
            body["datasetName"] = json!(n);
        }
        if let Some(t) = created_after {
            body["createdAfter"] = json!(t);
        }
        let v = self
            .call(Call::post(
                self.url(&["datasets", "query"]),
                body,
                Safety::Idempotent,
            ))
            .await?;
        let items = wire::list_of(&v, &["result", "data", "items", "value", "datasets"])
            .ok_or_else(|| unexpected("datasets/query", &v))?;
        let total_pages = v
            .as_object()
            .and_then(|o| get_ci(o, &["totalPages"]))
            .and_then(wire::as_u64);
        Ok((
            items.iter().filter_map(wire::dataset_of).collect(),
            total_pages,
        ))
    }

    /// Pages through `datasets/query` (with a name filter, whose exactness is not
    /// documented: callers compare names themselves).
    async fn datasets(
        &self,
        name: Option<&str>,
        created_after: Option<&str>,
    ) -> Result<Vec<DatasetInfo>, BackendError> {
        let mut out: Vec<DatasetInfo> = Vec::new();
        let mut page = 1u64;
        loop {
            let (items, total_pages) = self.dataset_page(name, created_after, page).await?;
            let n = items.len() as u64;
            let before = out.len();
            for d in items {
                if !out.iter().any(|o| o.id == d.id) {
                    out.push(d);
                }
            }
            let more = match total_pages {
                Some(t) => page < t,
                // Without a page count: go on while pages come back full.
                None => n >= PAGE_SIZE,
            };
            // A server that ignores pageIndex returns the same page again: stop.
            if !more || n == 0 || out.len() == before || page >= u64::from(MAX_PAGES) {
                break;
            }
            page += 1;
        }
        Ok(out)
    }

    async fn dataset_by_name(&self, name: &str) -> Result<Option<DatasetInfo>, BackendError> {
        let mut found: Vec<DatasetInfo> = self
            .datasets(Some(name), None)
            .await?
            .into_iter()
            .filter(|d| d.name == name)
            .collect();
        // Names need not be unique: the newest one is the one a job just wrote.
        found.sort_by(|a, b| a.created.cmp(&b.created));
        Ok(found.pop())
    }
}

fn unexpected(what: &str, v: &Value) -> BackendError {
    BackendError {
        kind: ErrorKind::Unavailable,
        message: format!(
            "the Data Workbench gateway answered {what} with something dwflow cannot read: {}",
            super::http::truncate(&v.to_string(), 200)
        ),
        retryable: false,
    }
}

fn run_path_id(run: &RunId) -> Result<&str, BackendError> {
    let id = run.0.trim();
    if id.is_empty() || id.len() > 128 || id.contains(['/', '?', '#']) {
        return Err(BackendError::new(
            ErrorKind::NotFound,
            format!("`{}` is not a Data Workbench run id", run.0),
        ));
    }
    Ok(id)
}

/// A scalar cell; nested values become their JSON text.
fn cell(v: &Value) -> Value {
    match v {
        Value::Array(_) | Value::Object(_) => Value::String(v.to_string()),
        other => other.clone(),
    }
}

#[async_trait::async_trait]
impl Backend for WorkbenchBackend {
    fn kind(&self) -> &'static str {
        "workbench"
    }

    /// The gateway's invoke has no idempotency key.
    fn idempotent_invoke(&self) -> bool {
        false
    }

    async fn list_jobs(&self) -> Result<Vec<JobInfo>, BackendError> {
        let v = self.call(Call::get(self.url(&["jobs"]))).await?;
        let items = wire::list_of(&v, &["jobs", "result", "data", "items", "value"])
            .ok_or_else(|| unexpected("the job list", &v))?;
        let mut jobs = Vec::with_capacity(items.len());
        for item in items {
            match wire::job_of(item, false) {
                Some(j) => jobs.push(j),
                None => {
                    tracing::warn!(entry = %super::http::truncate(&item.to_string(), 200), "a job without an id in the gateway's job list; skipped")
                }
            }
        }
        if let Some(o) = v.as_object()
            && get_ci(
                o,
                &["totalPages", "nextPageToken", "next_page_token", "hasMore"],
            )
            .is_some()
        {
            tracing::warn!(
                "the gateway's job list looks paginated; dwflow reads the first page only"
            );
        }
        Ok(jobs)
    }

    async fn describe_job(&self, job: &JobRef) -> Result<JobInfo, BackendError> {
        let jobs = self.list_jobs().await?;
        let id = match job {
            JobRef::Id(id) => *id,
            JobRef::Name(name) => super::resolve_in(self.kind(), name, &jobs)?,
        };
        jobs.into_iter().find(|j| j.id == id).ok_or_else(|| {
            BackendError::new(
                ErrorKind::NotFound,
                format!("no job with id {id} in the workbench workspace"),
            )
        })
    }

    async fn invoke(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        _idempotency_key: &str,
    ) -> Result<RunId, BackendError> {
        let body: serde_json::Map<String, Value> = params
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let call = Call::post(
            self.url(&["jobs", &job_id.to_string(), "invoke"]),
            Value::Object(body),
            Safety::NotIdempotent,
        );
        let answer = match self.api.send(&call).await {
            Ok(a) => a,
            Err(e) if e.uncertain() => {
                return Err(BackendError {
                    kind: ErrorKind::Unavailable,
                    message: format!(
                        "{}. The run may or may not have started: the gateway's invoke has no idempotency key, so dwflow does not send it again. Check the job's runs in the Data Workbench UI (Analytics) or in the linked Databricks workspace before running the step again",
                        e.message
                    ),
                    retryable: false,
                });
            }
            Err(e) => return Err(e.into_backend()),
        };
        match wire::run_id_of(&answer.body) {
            Some(id) => Ok(RunId(id)),
            None => Err(BackendError {
                kind: ErrorKind::Unavailable,
                message: format!(
                    "the gateway accepted the invocation of job {job_id} (HTTP {}) but its answer has no run id dwflow can read ({}); the run has probably started: check the Data Workbench UI before running the step again",
                    answer.status,
                    super::http::truncate(&answer.body.to_string(), 200)
                ),
                retryable: false,
            }),
        }
    }

    async fn status(&self, run: &RunId) -> Result<RunStatus, BackendError> {
        let id = run_path_id(run)?;
        let v = self
            .call(Call::get(self.url(&["runs", id, "status"])))
            .await?;
        Ok(super::run_state::parse_run_status(&v))
    }

    async fn cancel(&self, run: &RunId) -> Result<(), BackendError> {
        let id = run_path_id(run)?;
        let url = self.url(&["runs", id, "cancel"]);
        let (first, second) = match self.cancel_method {
            CancelMethod::Get => (Method::GET, Method::POST),
            CancelMethod::Post => (Method::POST, Method::GET),
        };
        let make = |m: Method| Call {
            method: m,
            url: url.clone(),
            body: Body::Empty,
            safety: Safety::Idempotent,
        };
        match self.api.send(&make(first)).await {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.failure, Failure::Status(404 | 405)) => {
                match self.api.send(&make(second)).await {
                    Ok(_) => Ok(()),
                    // The other method is not it either: the first answer says more.
                    Err(e2) if matches!(e2.failure, Failure::Status(404 | 405)) => {
                        Err(e.into_backend())
                    }
                    Err(e2) => Err(e2.into_backend()),
                }
            }
            Err(e) => Err(e.into_backend()),
        }
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, BackendError> {
        let mut all = self.datasets(None, None).await?;
        all.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(all)
    }

    async fn list_datasets_created_after(
        &self,
        after: Option<&str>,
    ) -> Result<Vec<DatasetInfo>, BackendError> {
        self.datasets(None, after).await
    }

    async fn find_dataset(&self, name: &str) -> Result<Option<DatasetInfo>, BackendError> {
        self.dataset_by_name(name).await
    }

    async fn read_dataset(&self, name: &str, limit: Option<usize>) -> Result<Rows, BackendError> {
        let Some(ds) = self.dataset_by_name(name).await? else {
            return Err(BackendError::new(
                ErrorKind::NotFound,
                format!("no dataset named `{name}` in the workbench workspace"),
            ));
        };
        let mut columns: Vec<String> = ds.columns.clone();
        let mut objects: Vec<serde_json::Map<String, Value>> = Vec::new();
        let want = limit.unwrap_or(usize::MAX);
        let page_size = want.clamp(1, 1000) as u64;
        let mut page = 1u64;
        while objects.len() < want {
            let v = self
                .call(Call::post(
                    self.url(&["datasets", &ds.id, "query"]),
                    json!({"pageIndex": page, "pageSize": page_size}),
                    Safety::Idempotent,
                ))
                .await?;
            let rows = wire::list_of(&v, &["data", "result", "rows", "items"])
                .ok_or_else(|| unexpected("the dataset query", &v))?;
            let n = rows.len() as u64;
            for r in rows {
                if objects.len() >= want {
                    break;
                }
                if let Value::Object(o) = r {
                    objects.push(o.clone());
                }
            }
            let pagination = v
                .as_object()
                .and_then(|o| get_ci(o, &["pagination"]))
                .and_then(Value::as_object)
                .or_else(|| v.as_object());
            let total_pages = pagination
                .and_then(|p| get_ci(p, &["totalPages"]))
                .and_then(wire::as_u64);
            let more = match total_pages {
                Some(t) => page < t,
                None => n >= page_size,
            };
            if !more || n == 0 || page >= u64::from(MAX_PAGES) {
                break;
            }
            page += 1;
        }
        if !objects.is_empty() {
            // Metadata names that no row uses (display names) would only add empty columns.
            columns.retain(|c| objects.iter().any(|o| o.contains_key(c)));
        }
        for o in &objects {
            for k in o.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        let rows = objects
            .iter()
            .map(|o| {
                columns
                    .iter()
                    .map(|c| o.get(c).map(cell).unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        Ok(Rows { columns, rows })
    }
}
