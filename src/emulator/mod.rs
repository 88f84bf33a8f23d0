//! The emulator: serves the Veracity Data Workbench gateway API (v2) and a subset of the
//! Databricks Jobs API 2.1 on loopback, over the local environment of a workspace
//! directory, whose jobs really run through [`LocalBackend`]. Tests and demos point the
//! real HTTP clients at it; fault injection (seeded) makes it misbehave the way real
//! networks and real APIs do.
//!
//! Where `API-NOTES.md` marks a fact about the real APIs as unknown, the emulator picks one
//! form, listed here. Clients must tolerate the other plausible forms too.
//!
//! # Defaults
//!
//! | what | default | flag |
//! |---|---|---|
//! | workspace id | `00000000-0000-4000-8000-000000000001` | `--workspace-id` |
//! | client id (both token endpoints) | `dwflow-emulator` | `--client-id` |
//! | client secret | `emulator-secret` | `--client-secret` |
//! | subscription key | `emulator-key` | `--subscription-key` |
//! | Databricks personal access token | `dapi-emulator` | `--databricks-token` |
//! | token lifetime | 3600 s | `--token-ttl` |
//!
//! # Tokens
//!
//! - `POST /oauth2/token` (also `/{tenant}/oauth2/token`, as on
//!   `login.microsoftonline.com`): Azure AD v1 client credentials, form-encoded
//!   `grant_type=client_credentials`, `client_id`, `client_secret`, `resource` (must be
//!   [`WORKBENCH_RESOURCE`]). Success:
//!   `{"token_type":"Bearer","access_token":"…","expires_in":"3600","ext_expires_in":"3600",
//!   "expires_on":"<unix seconds>","not_before":"<unix seconds>","resource":"…"}`: the
//!   numbers are **strings**, as Azure AD v1 sends them. Wrong credentials: 401
//!   `{"error":"invalid_client","error_description":"…"}`; another grant type: 400
//!   `unsupported_grant_type`; another resource: 400 `invalid_resource`.
//! - `POST /oauth2/v2.0/token` (and `/{tenant}/oauth2/v2.0/token`): the v2.0 form, with
//!   `scope=<resource>/.default` instead of `resource`; `expires_in` is a number there.
//! - `POST /oidc/v1/token`: Databricks OAuth M2M, HTTP Basic `client_id:client_secret`
//!   (form fields `client_id`/`client_secret` are accepted too), form
//!   `grant_type=client_credentials&scope=all-apis` ->
//!   `{"access_token","token_type":"Bearer","expires_in":<number>,"scope":"all-apis"}`.
//!
//! Gateway tokens are accepted only by the gateway, Databricks OAuth tokens and the PAT
//! only by the Databricks API. An expired token gets a 401 that says it expired.
//!
//! # Gateway, under [`GATEWAY_PREFIX`]
//!
//! Every call needs `Ocp-Apim-Subscription-Key` and `Authorization: Bearer <token>` (401
//! otherwise), and the emulator's workspace id (404 otherwise, compared
//! case-insensitively). Every error body is `{"statusCode":N,"message":"…","traceId":"<uuid>"}`.
//!
//! - `GET /workspaces/{ws}/jobs` -> a bare array
//!   `[{"jobId":<u64>,"jobName","creatorUserName":"local","createdTime":<epoch ms>}]`; no
//!   parameters, no pagination. Job ids are the local environment's (53-bit, well past
//!   32 bits).
//! - `POST /workspaces/{ws}/jobs/{jobId}/invoke`, body a flat JSON object of strings (an
//!   empty body is `{}`; a non-string value is a 400). Missing parameters fall back to the
//!   job's defaults; a required one missing, or an unknown one, is a 400 with the local
//!   environment's message. The response is the run id as a bare JSON number
//!   (`--invoke-response string` sends `"700000000000"`, `object` sends
//!   `{"runId":700000000000}`). No idempotency key: every call starts a run.
//! - `GET /workspaces/{ws}/runs/{runId}/status` ->
//!   `{"runId":N,"jobId":N,"state":{"lifeCycleState","resultState"|null,"stateMessage"}}`:
//!   the Databricks vocabulary in camelCase (see the mapping below).
//! - `GET` or `POST /workspaces/{ws}/runs/{runId}/cancel` -> `{}`; a no-op on a finished
//!   run.
//! - `POST /workspaces/{ws}/datasets/query`, optional body `{"datasetName","pageIndex"
//!   (1-based, default 1),"pageSize" (1..=1000, default 50),"createdAfter","createdBefore"}`
//!   (other fields ignored) -> `{"result":[dataset],"pageIndex","pageSize","totalCount",
//!   "totalPages"}`. `datasetName` is a case-insensitive **substring** filter. A dataset is
//!   `{"id","name","workspaceId","createdOn","lastModifiedOn","tags":{},"columns":[{"name"}]}`;
//!   its id is a stable UUID-shaped value derived from the name (SHA-256, version 8), and
//!   both times are the file's modification time.
//! - `GET /workspaces/{ws}/datasets/{id}` -> one dataset.
//! - `POST /workspaces/{ws}/datasets/{id}/query` `{"pageIndex","pageSize"}` ->
//!   `{"data":[{column: value}],"pagination":{"pageIndex","pageSize","totalCount","totalPages"}}`.
//!
//! # Databricks Jobs API 2.1, under `/api/2.1/jobs`
//!
//! `Authorization: Bearer <PAT or OAuth token>`; without a valid one, 401
//! `{"error_code":"UNAUTHENTICATED","message"}`. Other errors:
//! `{"error_code","message"}` with 400 `INVALID_PARAMETER_VALUE`, 404
//! `RESOURCE_DOES_NOT_EXIST`, 429 `REQUEST_LIMIT_EXCEEDED`, 500 `INTERNAL_ERROR`, 502/503
//! `TEMPORARILY_UNAVAILABLE`.
//!
//! - `GET list?limit=&page_token=&name=`: `limit` 1..=100 (0 or absent: 20), `name` an
//!   exact filter; `{"jobs":[{"job_id","creator_user_name","created_time","settings":{"name"}}],
//!   "has_more":bool,"next_page_token"?}` (an opaque token).
//! - `GET get?job_id=` -> `{"job_id","creator_user_name","created_time","settings":{"name",
//!   "parameters":[{"name","default"}],"tags":{param: description},"tasks":[{"task_key":"main"}],
//!   "format":"MULTI_TASK"}}`; a required parameter has `"default":""`.
//! - `POST run-now {"job_id","job_parameters":{str:str},"idempotency_token"?}` ->
//!   `{"run_id","number_in_job"}`; a token already used returns its run and starts nothing
//!   (at most 64 characters).
//! - `GET runs/get?run_id=` -> `{"run_id","job_id","number_in_job","run_name",
//!   "creator_user_name","state":{"life_cycle_state","result_state"?,"state_message",
//!   "user_cancelled_or_timedout"},"status":{"state","termination_details"?:{"code","type",
//!   "message"}},"tasks":[{"run_id":<task run id>,"task_key":"main","state",…}],
//!   "job_parameters":[{"name","value"}],"start_time","end_time"}` (`end_time` 0 until the
//!   end). A task's run id is the job run id plus [`TASK_RUN_OFFSET`]; `runs/get` also
//!   answers for a task run id.
//! - `POST runs/cancel {"run_id"}` -> `{}`.
//! - `GET runs/get-output?run_id=<task run id>` -> `{"metadata":<the task run>,
//!   "notebook_output":{"result":"<JSON object of the run's outputs>","truncated":false},
//!   "error"?,"error_trace"?}`; `notebook_output` once terminal, `error` on failure,
//!   `error_trace` the tail of a command's stderr. A job run id (not a task run id) is a 400,
//!   as on Databricks for multi-task runs.
//!
//! # Run ids and states
//!
//! Run ids start at [`FIRST_RUN_ID`] and increment, shared by both APIs. The mapping of a
//! local run's status:
//!
//! | local | life cycle | result | `status.state` | termination code / type |
//! |---|---|---|---|---|
//! | queued / pending / running / terminating | same, upper case | — | same | — |
//! | success | TERMINATED | SUCCESS | TERMINATED | SUCCESS / SUCCESS |
//! | failed by the job | TERMINATED | FAILED | TERMINATED | RUN_EXECUTION_ERROR / CLIENT_ERROR |
//! | failed, retryable (interrupted) | INTERNAL_ERROR | FAILED | TERMINATED | INTERNAL_ERROR / INTERNAL_ERROR |
//! | canceled | TERMINATED | CANCELED | TERMINATED | CANCELED / CLIENT_ERROR |
//! | timed out | TERMINATED | TIMEDOUT | TERMINATED | RUN_EXECUTION_ERROR / CLIENT_ERROR |
//!
//! The state message is the local run's message (the SQLite error, on failure), else "".
//! Cancel is asynchronous as on Databricks (TERMINATING, then TERMINATED/CANCELED); while a
//! cancelled run has not ended, each status look repeats the cancel to the local run.
//! Runs live in the emulator's memory: a restarted emulator knows none of the runs of the
//! previous one (their local records stay in the workspace).
//!
//! # Faults (seeded, `--seed`)
//!
//! Drawn from one xorshift-family PRNG ([`fastrand`]) in request order, applied to the
//! gateway and Databricks endpoints only (never to the token endpoints or `/_emulator`):
//! `--latency-ms` is added to every response (token endpoints included); then a dropped
//! connection (`--drop-rate`, nothing done, no response), a 5xx (`--fault-5xx`: 500, 502
//! or 503 with the API's error body), a 429 (`--fault-429`, `Retry-After:
//! <--retry-after>`), each drawn in that order; after the request was handled, a lost
//! response (`--lost-response-rate`: the action was taken, the connection is closed
//! without a response). `--queued-secs N` holds a new run for N seconds before it really
//! starts: QUEUED for the first half, PENDING for the second (a cancel then ends it
//! without starting it). `--unknown-state-rate` replaces a non-terminal state (never a
//! terminal one) in a status answer with a state no client knows, such as
//! `WAITING_FOR_CAPACITY`.
//!
//! # Stats
//!
//! `GET /_emulator/stats` (no auth) -> `{"requests":{"<METHOD> <route pattern>":n},
//! "faults":{"5xx","429","dropped","lost","unknown_state"},"invocations":{"per_job":
//! {name:n},"per_idempotency_token":{token:n}},"tokens_issued":n}`; invocations count runs
//! really started. `POST /_emulator/reset-stats` zeroes them (the idempotency tokens stay
//! remembered).

mod auth;
pub mod cli;
mod databricks;
mod datasets;
mod errors;
mod faults;
mod gateway;
mod runs;

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::backend::BackendError;
use crate::backend::local::LocalBackend;

pub use self::cli::EmulatorArgs;
pub use self::runs::{FIRST_RUN_ID, TASK_RUN_OFFSET};

/// The path prefix of the gateway API v2, as on `api.veracity.com`.
pub const GATEWAY_PREFIX: &str = "/veracity/dw/gateway/api/v2";

/// The resource the Azure AD v1 token request must name.
pub const WORKBENCH_RESOURCE: &str =
    "https://dnvglb2cprod.onmicrosoft.com/83054ebf-1d7b-43f5-82ad-b2bde84d7b75";

pub const DEFAULT_WORKSPACE_ID: &str = "00000000-0000-4000-8000-000000000001";
pub const DEFAULT_CLIENT_ID: &str = "dwflow-emulator";
pub const DEFAULT_CLIENT_SECRET: &str = "emulator-secret";
pub const DEFAULT_SUBSCRIPTION_KEY: &str = "emulator-key";
pub const DEFAULT_DATABRICKS_TOKEN: &str = "dapi-emulator";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The shape of the gateway's invoke response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum InvokeResponse {
    /// `700000000000`
    #[default]
    Number,
    /// `"700000000000"`
    String,
    /// `{"runId":700000000000}`
    Object,
}

/// Fault injection. Rates are probabilities in `[0, 1]`; all zero by default.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Seed of the PRNG all draws come from.
    pub seed: u64,
    /// Rate of 500/502/503 answers.
    pub rate_5xx: f64,
    /// Rate of 429 answers.
    pub rate_429: f64,
    /// The `Retry-After` of a 429, in seconds.
    pub retry_after_secs: u64,
    /// Added to every response.
    pub latency: Duration,
    /// Rate of connections closed without a response, before acting.
    pub drop_rate: f64,
    /// Rate of connections closed without a response, after acting.
    pub lost_response_rate: f64,
    /// How long a new run stays QUEUED, then PENDING, before it really starts.
    pub queued: Duration,
    /// Rate of non-terminal states replaced by an unknown state string.
    pub unknown_state_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            seed: 0,
            rate_5xx: 0.0,
            rate_429: 0.0,
            retry_after_secs: 1,
            latency: Duration::ZERO,
            drop_rate: 0.0,
            lost_response_rate: 0.0,
            queued: Duration::ZERO,
            unknown_state_rate: 0.0,
        }
    }
}

/// Everything the emulator serves with.
#[derive(Debug, Clone, PartialEq)]
pub struct EmulatorConfig {
    /// The local workspace whose jobs and datasets are served.
    pub workspace: PathBuf,
    /// The one Data Workbench workspace id that exists.
    pub workspace_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub subscription_key: String,
    /// The Databricks personal access token accepted (never expires).
    pub databricks_token: String,
    /// Lifetime of issued OAuth tokens.
    pub token_ttl: Duration,
    pub invoke_response: InvokeResponse,
    pub faults: Faults,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            workspace: PathBuf::from("examples/workspace"),
            workspace_id: DEFAULT_WORKSPACE_ID.to_string(),
            client_id: DEFAULT_CLIENT_ID.to_string(),
            client_secret: DEFAULT_CLIENT_SECRET.to_string(),
            subscription_key: DEFAULT_SUBSCRIPTION_KEY.to_string(),
            databricks_token: DEFAULT_DATABRICKS_TOKEN.to_string(),
            token_ttl: DEFAULT_TOKEN_TTL,
            invoke_response: InvokeResponse::Number,
            faults: Faults::default(),
        }
    }
}

/// Checks a rate: a finite number in `[0, 1]`.
pub fn check_rate(name: &str, rate: f64) -> Result<(), String> {
    if rate.is_finite() && (0.0..=1.0).contains(&rate) {
        Ok(())
    } else {
        Err(format!("{name} must be a number in [0, 1], not {rate}"))
    }
}

impl EmulatorConfig {
    /// Refuses rates outside `[0, 1]`, empty credentials, a zero token lifetime, and a
    /// workspace id that is not a UUID.
    pub fn validate(&self) -> Result<(), EmulatorError> {
        let f = &self.faults;
        for (name, rate) in [
            ("--fault-5xx", f.rate_5xx),
            ("--fault-429", f.rate_429),
            ("--drop-rate", f.drop_rate),
            ("--lost-response-rate", f.lost_response_rate),
            ("--unknown-state-rate", f.unknown_state_rate),
        ] {
            check_rate(name, rate).map_err(EmulatorError::Config)?;
        }
        if uuid::Uuid::parse_str(&self.workspace_id).is_err() {
            return Err(EmulatorError::Config(format!(
                "--workspace-id must be a UUID, not `{}`",
                self.workspace_id
            )));
        }
        for (name, value) in [
            ("--client-id", &self.client_id),
            ("--client-secret", &self.client_secret),
            ("--subscription-key", &self.subscription_key),
            ("--databricks-token", &self.databricks_token),
        ] {
            if value.is_empty() {
                return Err(EmulatorError::Config(format!("{name} must not be empty")));
            }
        }
        if self.token_ttl.is_zero() {
            return Err(EmulatorError::Config(
                "--token-ttl must be at least 1 second".to_string(),
            ));
        }
        Ok(())
    }
}

/// Why the emulator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Workspace(BackendError),
    #[error("emulator server: {0}")]
    Io(#[from] std::io::Error),
}

/// The state every handler shares.
pub(crate) struct Emu {
    pub config: EmulatorConfig,
    pub backend: LocalBackend,
    pub tokens: auth::Tokens,
    pub runs: runs::Runs,
    pub faults: faults::Dice,
    pub stats: Mutex<faults::Stats>,
}

impl Emu {
    pub(crate) fn stats(&self) -> std::sync::MutexGuard<'_, faults::Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Builds the emulator's router: validates the configuration and opens the workspace.
pub async fn router(config: EmulatorConfig) -> Result<Router, EmulatorError> {
    config.validate()?;
    let dir = config.workspace.clone();
    let backend = tokio::task::spawn_blocking(move || LocalBackend::open(&dir))
        .await
        .map_err(|e| EmulatorError::Config(format!("cannot open the workspace: {e}")))?
        .map_err(EmulatorError::Workspace)?;
    let emu = Arc::new(Emu {
        faults: faults::Dice::new(config.faults.seed),
        config,
        backend,
        tokens: auth::Tokens::default(),
        runs: runs::Runs::default(),
        stats: Mutex::new(faults::Stats::default()),
    });
    Ok(build(emu))
}

fn build(emu: Arc<Emu>) -> Router {
    let gw = Router::new()
        .route("/workspaces/{ws}/jobs", get(gateway::list_jobs))
        .route(
            "/workspaces/{ws}/jobs/{jobId}/invoke",
            post(gateway::invoke),
        )
        .route("/workspaces/{ws}/runs/{runId}/status", get(gateway::status))
        .route(
            "/workspaces/{ws}/runs/{runId}/cancel",
            get(gateway::cancel).post(gateway::cancel),
        )
        .route(
            "/workspaces/{ws}/datasets/query",
            post(gateway::query_datasets),
        )
        .route("/workspaces/{ws}/datasets/{id}", get(gateway::get_dataset))
        .route(
            "/workspaces/{ws}/datasets/{id}/query",
            post(gateway::query_rows),
        );
    let dbx = Router::new()
        .route("/list", get(databricks::list))
        .route("/get", get(databricks::get))
        .route("/run-now", post(databricks::run_now))
        .route("/runs/get", get(databricks::runs_get))
        .route("/runs/cancel", post(databricks::runs_cancel))
        .route("/runs/get-output", get(databricks::get_output));
    Router::new()
        .route("/oauth2/token", post(auth::azure_v1))
        .route("/{tenant}/oauth2/token", post(auth::azure_v1))
        .route("/oauth2/v2.0/token", post(auth::azure_v2))
        .route("/{tenant}/oauth2/v2.0/token", post(auth::azure_v2))
        .route("/oidc/v1/token", post(auth::databricks_token))
        .route("/_emulator/stats", get(faults::stats))
        .route("/_emulator/reset-stats", post(faults::reset_stats))
        .nest(GATEWAY_PREFIX, gw)
        .nest("/api/2.1/jobs", dbx)
        .fallback(errors::fallback)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&emu),
            faults::layer,
        ))
        .with_state(emu)
}

/// Serves until the task is dropped or the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: EmulatorConfig,
) -> Result<(), EmulatorError> {
    serve_with_shutdown(listener, config, std::future::pending()).await
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve_with_shutdown<F>(
    listener: tokio::net::TcpListener,
    config: EmulatorConfig,
    shutdown: F,
) -> Result<(), EmulatorError>
where
    F: Future<Output = ()> + Send + 'static,
{
    let app = router(config).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
