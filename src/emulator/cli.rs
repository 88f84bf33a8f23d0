//! `dwflow emulator`: the command-line face of the emulator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_DATABRICKS_TOKEN, DEFAULT_SUBSCRIPTION_KEY,
    DEFAULT_WORKSPACE_ID, EmulatorConfig, Faults, InvokeResponse, check_rate,
};
use crate::exit::Exit;

fn rate(text: &str) -> Result<f64, String> {
    let r: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    check_rate("a rate", r)?;
    Ok(r)
}

fn seconds(text: &str) -> Result<f64, String> {
    let s: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if s.is_finite() && (0.0..=86_400.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!("{text} is not between 0 and 86400 seconds"))
    }
}

/// Serves the Data Workbench gateway API (and the Databricks Jobs API subset) over a
/// local workspace, with fault injection, for tests and demos.
#[derive(clap::Args, Debug)]
pub struct EmulatorArgs {
    /// Address to listen on, e.g. 127.0.0.1:8480 (port 0: any free port, printed).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// The local workspace directory whose jobs and datasets are served.
    #[arg(long, value_name = "DIR")]
    pub workspace: PathBuf,
    /// The Data Workbench workspace id that exists.
    #[arg(long, value_name = "UUID", default_value = DEFAULT_WORKSPACE_ID)]
    pub workspace_id: String,
    /// The client id accepted by the token endpoints.
    #[arg(long, value_name = "ID", default_value = DEFAULT_CLIENT_ID)]
    pub client_id: String,
    /// The client secret accepted by the token endpoints.
    #[arg(long, value_name = "SECRET", default_value = DEFAULT_CLIENT_SECRET)]
    pub client_secret: String,
    /// The gateway's subscription key (Ocp-Apim-Subscription-Key).
    #[arg(long, value_name = "KEY", default_value = DEFAULT_SUBSCRIPTION_KEY)]
    pub subscription_key: String,
    /// The Databricks personal access token accepted.
    #[arg(long, value_name = "TOKEN", default_value = DEFAULT_DATABRICKS_TOKEN)]
    pub databricks_token: String,
    /// Lifetime of issued OAuth tokens, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl: u64,
    /// Shape of the gateway's invoke response.
    #[arg(long, value_enum, default_value_t = InvokeResponse::Number)]
    pub invoke_response: InvokeResponse,
    /// Seed of the fault injection's random draws.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Rate of 500/502/503 answers, in [0, 1].
    #[arg(long = "fault-5xx", value_name = "RATE", default_value = "0", value_parser = rate)]
    pub fault_5xx: f64,
    /// Rate of 429 answers (with Retry-After), in [0, 1].
    #[arg(long = "fault-429", value_name = "RATE", default_value = "0", value_parser = rate)]
    pub fault_429: f64,
    /// The Retry-After of a 429, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1)]
    pub retry_after: u64,
    /// Latency added to every response, in milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub latency_ms: u64,
    /// Rate of connections closed without a response, before acting.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = rate)]
    pub drop_rate: f64,
    /// Rate of connections closed without a response after acting (the job was invoked,
    /// the run cancelled, but the client never hears it).
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = rate)]
    pub lost_response_rate: f64,
    /// New runs stay QUEUED, then PENDING, for this many seconds before they start.
    #[arg(long, value_name = "N", default_value = "0", value_parser = seconds)]
    pub queued_secs: f64,
    /// Rate of non-terminal states reported as an unknown state string.
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = rate)]
    pub unknown_state_rate: f64,
}

impl EmulatorArgs {
    pub fn config(&self) -> EmulatorConfig {
        EmulatorConfig {
            workspace: self.workspace.clone(),
            workspace_id: self.workspace_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            subscription_key: self.subscription_key.clone(),
            databricks_token: self.databricks_token.clone(),
            token_ttl: Duration::from_secs(self.token_ttl),
            invoke_response: self.invoke_response,
            faults: Faults {
                seed: self.seed,
                rate_5xx: self.fault_5xx,
                rate_429: self.fault_429,
                retry_after_secs: self.retry_after,
                latency: Duration::from_millis(self.latency_ms),
                drop_rate: self.drop_rate,
                lost_response_rate: self.lost_response_rate,
                queued: Duration::from_secs_f64(self.queued_secs),
                unknown_state_rate: self.unknown_state_rate,
            },
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// Runs `dwflow emulator` until Ctrl-C or SIGTERM.
pub fn run(args: &EmulatorArgs) -> Exit {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Environment;
        }
    };
    runtime.block_on(async {
        let config = args.config();
        let app = match super::router(config).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Invalid;
            }
        };
        if !args.listen.ip().is_loopback() {
            eprintln!(
                "warning: the emulator listens on {}, not on loopback: anyone who can reach it can run the workspace's jobs",
                args.listen
            );
        }
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return Exit::Environment;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: cannot read the listening address: {e}");
                return Exit::Environment;
            }
        };
        println!("emulator listening on http://{addr}");
        match axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
        {
            Ok(()) => Exit::Success,
            Err(e) => {
                eprintln!("error: emulator server: {e}");
                Exit::Environment
            }
        }
    })
}
