//! The Databricks backend: the Jobs API 2.1 of a workspace, directly (`jobs/list`,
//! `jobs/get`, `jobs/run-now` with an idempotency token, `jobs/runs/get`,
//! `jobs/runs/cancel`, `jobs/runs/get-output`). Auth: a personal access token, or OAuth
//! machine-to-machine client credentials against the workspace's `/oidc/v1/token`.

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;
use reqwest::Url;
use serde_json::{Value, json};

use super::http::{
    ApiClient, Call, ClientAuth, ClientCredentials, Redactor, RetryPolicy, Safety, Secret,
    StaticToken, TokenProvider, join, truncate,
};
use super::wire::{self, text};
use super::{
    Backend, BackendError, DatasetInfo, ErrorKind, JobInfo, JobRef, Rows, RunId, RunStatus,
};

/// How the backend authenticates.
#[derive(Debug, Clone)]
pub enum DatabricksAuth {
    /// A personal access token (or any bearer token).
    Token(Secret),
    /// OAuth M2M: a service principal's client id and secret.
    OAuth {
        client_id: String,
        client_secret: Secret,
    },
}

/// Everything the backend needs, resolved.
#[derive(Debug, Clone)]
pub struct DatabricksSettings {
    /// The workspace URL, e.g. `https://adb-1234567890123456.7.azuredatabricks.net`.
    pub host: Url,
    pub auth: DatabricksAuth,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Refresh an OAuth token this long before it expires (at most half its life).
    pub refresh_before: Duration,
    /// Said when the credentials are refused.
    pub credential_hint: String,
}

impl DatabricksSettings {
    pub fn new(host: Url, auth: DatabricksAuth) -> Self {
        DatabricksSettings {
            host,
            auth,
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            refresh_before: Duration::from_secs(300),
            credential_hint: "The Databricks token or OAuth client id/secret are wrong or expired; make new ones in the workspace (User settings > Developer, or the service principal's secrets)".into(),
        }
    }
}

pub struct DatabricksBackend {
    api: ApiClient,
    host: Url,
}

const MAX_PAGES: usize = 10_000;
/// Task outputs read at most per run.
const MAX_TASK_OUTPUTS: usize = 50;

impl DatabricksBackend {
    pub fn new(s: DatabricksSettings) -> Result<Self, BackendError> {
        super::http::check_url(&s.host, "the databricks host")
            .map_err(|m| BackendError::new(ErrorKind::Invalid, m))?;
        let redactor = Redactor::default();
        let tokens: Arc<dyn TokenProvider> = match s.auth {
            DatabricksAuth::Token(t) => {
                redactor.add(t.expose());
                Arc::new(StaticToken(t))
            }
            DatabricksAuth::OAuth {
                client_id,
                client_secret,
            } => Arc::new(ClientCredentials::new(
                join(&s.host, &["oidc", "v1", "token"]),
                ClientAuth::Basic {
                    client_id,
                    client_secret,
                },
                vec![("scope".into(), "all-apis".into())],
                s.refresh_before,
                s.request_timeout,
                s.retry.clone(),
                redactor.clone(),
                s.credential_hint.clone(),
            )?),
        };
        let api = ApiClient::new(
            "Databricks",
            &s.host,
            tokens,
            Vec::new(),
            s.request_timeout,
            s.retry,
            redactor,
            s.credential_hint,
        )?;
        Ok(DatabricksBackend { api, host: s.host })
    }

    fn url(&self, path: &[&str], query: &[(&str, &str)]) -> Url {
        let mut segs = vec!["api", "2.1", "jobs"];
        segs.extend_from_slice(path);
        let mut url = join(&self.host, &segs);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn call(&self, call: Call) -> Result<Value, BackendError> {
        self.api
            .send(&call)
            .await
            .map(|a| a.body)
            .map_err(|e| e.into_backend())
    }

    /// `jobs/list`, following `next_page_token` (2.2 dropped `has_more`).
    async fn list(&self, name: Option<&str>) -> Result<Vec<JobInfo>, BackendError> {
        let mut jobs = Vec::new();
        let mut token: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..MAX_PAGES {
            let mut q: Vec<(&str, &str)> = vec![("limit", "100"), ("expand_tasks", "false")];
            if let Some(n) = name {
                q.push(("name", n));
            }
            if let Some(t) = &token {
                q.push(("page_token", t));
            }
            let v = self.call(Call::get(self.url(&["list"], &q))).await?;
            if let Some(items) = v.get("jobs").and_then(Value::as_array) {
                jobs.extend(items.iter().filter_map(|j| wire::job_of(j, false)));
            }
            match v.get("next_page_token").and_then(text) {
                Some(t) if seen.insert(t.clone()) => token = Some(t),
                _ => break,
            }
        }
        Ok(jobs)
    }

    /// Outputs and errors of the run's tasks (`runs/get-output` takes task run ids).
    async fn task_outputs(
        &self,
        run: &Value,
        run_id: u64,
        status: &mut RunStatus,
    ) -> Result<(), BackendError> {
        let success = status.is_success();
        let tasks: Vec<(u64, String, bool)> = match run.get("tasks").and_then(Value::as_array) {
            Some(tasks) if !tasks.is_empty() => tasks
                .iter()
                .filter_map(|t| {
                    let id = t.get("run_id").and_then(wire::as_u64)?;
                    let key = t.get("task_key").and_then(text).unwrap_or_default();
                    let ok = super::run_state::parse_run_status(t).is_success();
                    Some((id, key, ok))
                })
                .collect(),
            _ => vec![(run_id, String::new(), success)],
        };
        let mut errors = Vec::new();
        for (task_run, key, task_ok) in tasks.into_iter().take(MAX_TASK_OUTPUTS) {
            // On failure only the failed tasks have something to say.
            if !success && task_ok {
                continue;
            }
            let id = task_run.to_string();
            let out = match self
                .call(Call::get(
                    self.url(&["runs", "get-output"], &[("run_id", &id)]),
                ))
                .await
            {
                Ok(v) => v,
                // Task types without output, or outputs already expired.
                Err(e) if matches!(e.kind, ErrorKind::Invalid | ErrorKind::NotFound) => {
                    tracing::debug!(task_run = %id, error = %e.message, "no output");
                    continue;
                }
                // A successful run's outputs may be needed downstream: poll again.
                Err(e) if success => return Err(e),
                Err(e) => {
                    tracing::debug!(task_run = %id, error = %e.message, "cannot read the output of a failed task");
                    continue;
                }
            };
            if success {
                if let Some(result) = out
                    .get("notebook_output")
                    .and_then(|n| n.get("result"))
                    .and_then(Value::as_str)
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(result)
                {
                    for (k, v) in map {
                        let v = match v {
                            Value::String(s) => s,
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => continue,
                        };
                        status.outputs.insert(k, v);
                    }
                }
            } else {
                let error = out.get("error").and_then(text);
                let trace_tail = out
                    .get("error_trace")
                    .and_then(Value::as_str)
                    .and_then(|t| {
                        t.lines()
                            .rev()
                            .map(str::trim)
                            .find(|l| !l.is_empty())
                            .map(str::to_string)
                    });
                let what = match (error, trace_tail) {
                    (Some(e), Some(t)) if !e.contains(&t) && !t.contains(&e) => {
                        format!("{e} ({})", truncate(&t, 300))
                    }
                    (Some(e), _) => e,
                    (None, Some(t)) => t,
                    (None, None) => continue,
                };
                let what = truncate(&what, 1000);
                errors.push(if key.is_empty() {
                    what
                } else {
                    format!("task `{key}`: {what}")
                });
            }
        }
        if !errors.is_empty() {
            let mut parts: Vec<String> = status.message.take().into_iter().collect();
            parts.extend(errors);
            status.message = Some(parts.join("; "));
        }
        Ok(())
    }
}

fn numeric_run(run: &RunId) -> Result<u64, BackendError> {
    run.0.trim().parse().map_err(|_| {
        BackendError::new(
            ErrorKind::NotFound,
            format!("`{}` is not a Databricks run id (a number)", run.0),
        )
    })
}

/// Databricks caps idempotency tokens at 64 characters.
fn idempotency_token(key: &str) -> String {
    if key.len() <= 64 {
        key.to_string()
    } else {
        format!(
            "dwflow-{}",
            &crate::secrets::sha256_hex(key.as_bytes())[..57]
        )
    }
}

#[async_trait::async_trait]
impl Backend for DatabricksBackend {
    fn kind(&self) -> &'static str {
        "databricks"
    }

    async fn list_jobs(&self) -> Result<Vec<JobInfo>, BackendError> {
        self.list(None).await
    }

    async fn describe_job(&self, job: &JobRef) -> Result<JobInfo, BackendError> {
        let id = self.resolve_job(job).await?.to_string();
        let v = self
            .call(Call::get(self.url(&["get"], &[("job_id", &id)])))
            .await
            .map_err(|e| match e.kind {
                // Databricks answers an unknown job id with 400 INVALID_PARAMETER_VALUE.
                ErrorKind::Invalid | ErrorKind::NotFound => BackendError::new(
                    ErrorKind::NotFound,
                    format!(
                        "no job with id {id} in the Databricks workspace: {}",
                        e.message
                    ),
                ),
                _ => e,
            })?;
        wire::job_of(&v, true).ok_or_else(|| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "Databricks answered jobs/get for job {id} with something dwflow cannot read: {}",
                    truncate(&v.to_string(), 200)
                ),
            )
        })
    }

    async fn resolve_job(&self, job: &JobRef) -> Result<u64, BackendError> {
        match job {
            JobRef::Id(id) => Ok(*id),
            JobRef::Name(name) => {
                // The `name` filter is case-insensitive (and an emulator may ignore it):
                // compare exactly here.
                let filtered = self.list(Some(name)).await?;
                let exact: Vec<&JobInfo> = filtered.iter().filter(|j| &j.name == name).collect();
                if exact.is_empty() {
                    // Absent: list everything for the candidates in the message.
                    let all = self.list(None).await?;
                    super::resolve_in(self.kind(), name, &all)
                } else {
                    super::resolve_in(self.kind(), name, &filtered)
                }
            }
        }
    }

    async fn invoke(
        &self,
        job_id: u64,
        params: &IndexMap<String, String>,
        idempotency_key: &str,
    ) -> Result<RunId, BackendError> {
        let body = json!({
            "job_id": job_id,
            "job_parameters": params,
            "idempotency_token": idempotency_token(idempotency_key),
        });
        // Safe to repeat: Databricks starts at most one run per idempotency token.
        let v = self
            .call(Call::post(
                self.url(&["run-now"], &[]),
                body,
                Safety::Idempotent,
            ))
            .await?;
        wire::run_id_of(&v).map(RunId).ok_or_else(|| {
            BackendError::new(
                ErrorKind::Unavailable,
                format!(
                    "Databricks accepted run-now for job {job_id} but its answer has no run_id ({}); sending it again with the same idempotency token is safe",
                    truncate(&v.to_string(), 200)
                ),
            )
        })
    }

    async fn status(&self, run: &RunId) -> Result<RunStatus, BackendError> {
        let id = numeric_run(run)?;
        let v = self
            .call(Call::get(
                self.url(&["runs", "get"], &[("run_id", &id.to_string())]),
            ))
            .await?;
        let mut status = super::run_state::parse_run_status(&v);
        if status.is_terminal() {
            self.task_outputs(&v, id, &mut status).await?;
            if !status.is_success()
                && let Some(url) = v.get("run_page_url").and_then(text)
            {
                status.message = Some(match status.message.take() {
                    Some(m) => format!("{m} (see {url})"),
                    None => format!("see {url}"),
                });
            }
        }
        Ok(status)
    }

    async fn cancel(&self, run: &RunId) -> Result<(), BackendError> {
        let id = numeric_run(run)?;
        self.call(Call::post(
            self.url(&["runs", "cancel"], &[]),
            json!({"run_id": id}),
            Safety::Idempotent,
        ))
        .await
        .map(|_| ())
    }

    fn has_datasets(&self) -> bool {
        false
    }

    async fn list_datasets(&self) -> Result<Vec<DatasetInfo>, BackendError> {
        Err(no_datasets())
    }

    async fn find_dataset(&self, _name: &str) -> Result<Option<DatasetInfo>, BackendError> {
        Err(no_datasets())
    }

    async fn read_dataset(&self, _name: &str, _limit: Option<usize>) -> Result<Rows, BackendError> {
        Err(no_datasets())
    }
}

fn no_datasets() -> BackendError {
    BackendError::new(
        ErrorKind::Invalid,
        "the databricks backend has no datasets (they are not part of the Jobs API); use a workbench target",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_tokens_fit() {
        assert_eq!(idempotency_token("dwflow-abc"), "dwflow-abc");
        let long = "x".repeat(100);
        let t = idempotency_token(&long);
        assert_eq!(t.len(), 64);
        assert_eq!(t, idempotency_token(&long));
    }
}
