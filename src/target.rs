//! Targets: which analytics environment a command talks to. `--target NAME` (or
//! `DWFLOW_TARGET`, or the configuration file's `default_target`) picks a target of the
//! configuration file (`--config FILE`, `DWFLOW_CONFIG`, or `./dwflow.yaml` when present);
//! without any of them the target is the embedded local environment on `--workspace`
//! (`DWFLOW_WORKSPACE`, default `examples/workspace`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::databricks::{DatabricksAuth, DatabricksBackend, DatabricksSettings};
use crate::backend::http::Secret;
use crate::backend::local::LocalBackend;
use crate::backend::workbench::{WorkbenchAuth, WorkbenchBackend, WorkbenchSettings};
use crate::config::{Config, DatabricksAuthSource, SecretSource, TargetSpec};
use crate::exit::Exit;

/// The local workspace used when nothing else is configured.
pub const DEFAULT_WORKSPACE: &str = "examples/workspace";

/// Target selection on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TargetArgs {
    /// The target (a name from the configuration file); default: the file's
    /// `default_target`, else the local environment.
    #[arg(long, env = "DWFLOW_TARGET", global = true)]
    pub target: Option<String>,
    /// The configuration file of targets [default: ./dwflow.yaml when it exists].
    #[arg(long, env = "DWFLOW_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Local workspace directory (datasets/ and jobs/) for a local target
    /// [default: examples/workspace].
    #[arg(long, env = "DWFLOW_WORKSPACE", global = true)]
    pub workspace: Option<PathBuf>,
}

/// An opened target.
pub struct Target {
    /// The target's name as journals record it: the configuration's name, or
    /// `local:DIR` for the implicit local target.
    pub name: String,
    pub backend: Arc<dyn Backend>,
}

/// Why a target could not be opened.
#[derive(Debug, Clone)]
pub struct TargetError {
    pub message: String,
    /// Invalid input (a bad configuration file, an unknown target name) rather than an
    /// environment failure (missing credentials, a missing workspace).
    pub invalid: bool,
}

impl TargetError {
    fn invalid(message: impl Into<String>) -> Self {
        TargetError {
            message: message.into(),
            invalid: true,
        }
    }
    fn environment(message: impl Into<String>) -> Self {
        TargetError {
            message: message.into(),
            invalid: false,
        }
    }
    /// The exit status this error ends a command with.
    pub fn exit(&self) -> Exit {
        if self.invalid {
            Exit::Invalid
        } else {
            Exit::Environment
        }
    }
}

impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Which target the arguments select, before anything is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    pub name: String,
    pub spec: TargetSpec,
    /// Whether it came from a configuration file (as opposed to the implicit local one).
    pub configured: bool,
}

/// The configuration file in force: the one named, or `./dwflow.yaml` when it exists.
pub fn load_config(args: &TargetArgs) -> Result<Option<Config>, TargetError> {
    let path = match &args.config {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(crate::config::DEFAULT_FILE);
            if !p.is_file() {
                return Ok(None);
            }
            p
        }
    };
    Config::load(&path)
        .map(Some)
        .map_err(|e| TargetError::invalid(e.to_string()))
}

/// Picks the target: `--target` / `DWFLOW_TARGET`, then `default_target`, then the
/// implicit local target. `--workspace` overrides a local target's directory.
pub fn select(args: &TargetArgs, config: Option<&Config>) -> Result<Selection, TargetError> {
    let implicit_local = || Selection {
        name: "local".into(),
        spec: TargetSpec::Local {
            workspace: args
                .workspace
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_WORKSPACE)),
        },
        configured: false,
    };
    let wanted = args
        .target
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .or_else(|| config.and_then(|c| c.default_target.clone()));
    let Some(name) = wanted else {
        return Ok(implicit_local());
    };
    match config.and_then(|c| c.targets.get(&name).map(|s| (c, s))) {
        Some((_, spec)) => {
            let spec = match (spec, &args.workspace) {
                (TargetSpec::Local { .. }, Some(dir)) => TargetSpec::Local {
                    workspace: dir.clone(),
                },
                (s, _) => s.clone(),
            };
            Ok(Selection {
                name,
                spec,
                configured: true,
            })
        }
        None if name == "local" => Ok(implicit_local()),
        None => Err(TargetError::invalid(match config {
            Some(c) => {
                let names: Vec<&str> = c.targets.keys().map(String::as_str).collect();
                let hint = crate::diagnostic::did_you_mean(&name, names.iter().copied())
                    .unwrap_or_else(|| {
                        format!(
                            "its targets: {}",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        )
                    });
                format!(
                    "no target `{name}` in {} (`local` is always available); {hint}",
                    c.path.display()
                )
            }
            None => format!(
                "no target `{name}`: there is no configuration file ({} in the current directory, --config FILE or DWFLOW_CONFIG); see examples/dwflow.yaml",
                crate::config::DEFAULT_FILE
            ),
        })),
    }
}

/// Opens the target named by the arguments.
pub fn open(args: &TargetArgs) -> Result<Target, TargetError> {
    let config = load_config(args)?;
    let selection = select(args, config.as_ref())?;
    open_selection(&selection)
}

/// Opens the target to resume a run on: the one given with `--target`, else the one the
/// run's journal names (`local:DIR` being the implicit local target on DIR).
pub fn open_for_resume(args: &TargetArgs, journaled: &str) -> Result<Target, TargetError> {
    if args.target.is_some() {
        return open(args);
    }
    match journaled.strip_prefix("local:") {
        Some(dir) => open_selection(&Selection {
            name: "local".into(),
            spec: TargetSpec::Local {
                workspace: args.workspace.clone().unwrap_or_else(|| PathBuf::from(dir)),
            },
            configured: false,
        }),
        None => {
            let mut args = args.clone();
            args.target = Some(journaled.to_string());
            open(&args)
        }
    }
}

/// Opens a selected target: reads its secrets from the environment and builds its
/// backend (no network traffic yet).
pub fn open_selection(sel: &Selection) -> Result<Target, TargetError> {
    let backend: Arc<dyn Backend> = match &sel.spec {
        TargetSpec::Local { workspace } => {
            if !workspace.is_dir() {
                // A path the user gave (or the default, from the wrong directory).
                return Err(TargetError::invalid(format!(
                    "the local workspace {} does not exist (give --workspace DIR with datasets/ and jobs/ in it)",
                    workspace.display()
                )));
            }
            let backend =
                LocalBackend::open(workspace).map_err(|e| TargetError::environment(e.message))?;
            Arc::new(backend)
        }
        TargetSpec::Workbench(w) => {
            let need =
                |src: &SecretSource, what: &str| need_secret(&sel.name, "workbench", src, what);
            let subscription_key =
                Secret::new(need(&w.subscription_key, "the subscription key (API key)")?);
            let (auth, hint_vars) = match &w.token {
                Some(t) => (
                    WorkbenchAuth::Token(Secret::new(need(t, "the bearer token")?)),
                    format!("{} or {}", t.short(), w.subscription_key.short()),
                ),
                None => (
                    WorkbenchAuth::ClientCredentials {
                        token_url: w.token_url.clone(),
                        resource: w.resource.clone(),
                        client_id: need(&w.client_id, "the service account's client id")?,
                        client_secret: Secret::new(need(
                            &w.client_secret,
                            "the service account's client secret",
                        )?),
                    },
                    format!(
                        "{}, {} or {}",
                        w.client_id.short(),
                        w.client_secret.short(),
                        w.subscription_key.short()
                    ),
                ),
            };
            let mut s = WorkbenchSettings::new(
                w.base_url.clone(),
                w.workspace_id.clone(),
                auth,
                subscription_key,
            );
            s.cancel_method = w.cancel_method;
            s.request_timeout = w.request_timeout;
            s.retry.budget = w.retry_budget;
            s.credential_hint = format!(
                "The credentials in {hint_vars} (target `{}`) are wrong or expired: Veracity service-account secrets expire two years after they are made; get new ones from the workspace's API management page in Data Workbench",
                sel.name
            );
            Arc::new(WorkbenchBackend::new(s).map_err(|e| TargetError::invalid(e.message))?)
        }
        TargetSpec::Databricks(d) => {
            let (auth, hint_vars) = databricks_auth(&sel.name, &d.auth)?;
            let mut s = DatabricksSettings::new(d.host.clone(), auth);
            s.request_timeout = d.request_timeout;
            s.retry.budget = d.retry_budget;
            s.credential_hint = format!(
                "The credentials in {hint_vars} (target `{}`) are wrong or expired; make a new token (User settings > Developer) or a new service-principal secret in the Databricks workspace",
                sel.name
            );
            Arc::new(DatabricksBackend::new(s).map_err(|e| TargetError::invalid(e.message))?)
        }
    };
    let name = match (&sel.spec, sel.configured) {
        (TargetSpec::Local { workspace }, false) => format!("local:{}", workspace.display()),
        _ => sel.name.clone(),
    };
    Ok(Target { name, backend })
}

fn need_secret(
    target: &str,
    kind: &str,
    src: &SecretSource,
    what: &str,
) -> Result<String, TargetError> {
    match src.read() {
        Ok(Some(v)) => Ok(v),
        Ok(None) => Err(TargetError::environment(format!(
            "the {kind} target `{target}` needs {what} in {}, which is not set (secrets come from the environment or a file, never from dwflow.yaml)",
            src.describe()
        ))),
        Err(e) => Err(TargetError::environment(format!(
            "the {kind} target `{target}` needs {what}: {e}"
        ))),
    }
}

fn databricks_auth(
    target: &str,
    auth: &DatabricksAuthSource,
) -> Result<(DatabricksAuth, String), TargetError> {
    let need = |src: &SecretSource, what: &str| need_secret(target, "databricks", src, what);
    let oauth = |id: &SecretSource,
                 secret: &SecretSource|
     -> Result<(DatabricksAuth, String), TargetError> {
        Ok((
            DatabricksAuth::OAuth {
                client_id: need(id, "the OAuth client id")?,
                client_secret: Secret::new(need(secret, "the OAuth client secret")?),
            },
            format!("{} / {}", id.short(), secret.short()),
        ))
    };
    match auth {
        DatabricksAuthSource::Token(t) => Ok((
            DatabricksAuth::Token(Secret::new(need(t, "a personal access token")?)),
            t.short(),
        )),
        DatabricksAuthSource::OAuth {
            client_id,
            client_secret,
        } => oauth(client_id, client_secret),
        DatabricksAuthSource::Default => {
            let token = SecretSource::Env("DATABRICKS_TOKEN".into());
            let id = SecretSource::Env("DATABRICKS_CLIENT_ID".into());
            let secret = SecretSource::Env("DATABRICKS_CLIENT_SECRET".into());
            if let Ok(Some(t)) = token.read() {
                return Ok((DatabricksAuth::Token(Secret::new(t)), token.short()));
            }
            if matches!(id.read(), Ok(Some(_))) || matches!(secret.read(), Ok(Some(_))) {
                return oauth(&id, &secret);
            }
            Err(TargetError::environment(format!(
                "the databricks target `{target}` needs credentials: set DATABRICKS_TOKEN (a personal access token), or DATABRICKS_CLIENT_ID and DATABRICKS_CLIENT_SECRET (OAuth for a service principal); or name other variables with `token_env` / `client_id_env` and `client_secret_env`"
            )))
        }
    }
}

/// The directory of a local target, if the selection is one (for messages).
pub fn local_workspace(sel: &Selection) -> Option<&Path> {
    match &sel.spec {
        TargetSpec::Local { workspace } => Some(workspace),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "dwflow.yaml",
            Path::new("/cfg"),
            "default_target: dev\ntargets:\n  dev:\n    backend: databricks\n    host: https://h\n  lab:\n    backend: local\n    workspace: lab\n",
        )
        .unwrap()
    }

    fn args(target: Option<&str>, workspace: Option<&str>) -> TargetArgs {
        TargetArgs {
            target: target.map(str::to_string),
            config: None,
            workspace: workspace.map(PathBuf::from),
        }
    }

    #[test]
    fn precedence() {
        let c = config();
        // The flag (or DWFLOW_TARGET, which clap folds into it) beats default_target.
        assert_eq!(
            select(&args(Some("lab"), None), Some(&c)).unwrap().name,
            "lab"
        );
        // default_target.
        assert_eq!(select(&args(None, None), Some(&c)).unwrap().name, "dev");
        // No configuration: the implicit local target on --workspace or the default.
        let s = select(&args(None, None), None).unwrap();
        assert_eq!(
            s.spec,
            TargetSpec::Local {
                workspace: PathBuf::from(DEFAULT_WORKSPACE)
            }
        );
        assert!(!s.configured);
        let s = select(&args(None, Some("w2")), None).unwrap();
        assert_eq!(
            s.spec,
            TargetSpec::Local {
                workspace: PathBuf::from("w2")
            }
        );
        // `local` is always there.
        let s = select(&args(Some("local"), None), Some(&c)).unwrap();
        assert!(!s.configured);
        // --workspace overrides a configured local target's directory.
        let s = select(&args(Some("lab"), Some("other")), Some(&c)).unwrap();
        assert_eq!(
            s.spec,
            TargetSpec::Local {
                workspace: PathBuf::from("other")
            }
        );
        // A configuration without default_target: local.
        let mut c2 = c.clone();
        c2.default_target = None;
        assert!(!select(&args(None, None), Some(&c2)).unwrap().configured);
    }

    #[test]
    fn unknown_targets() {
        let c = config();
        let e = select(&args(Some("deb"), None), Some(&c)).unwrap_err();
        assert!(e.invalid);
        assert!(e.message.contains("did you mean `dev`?"), "{}", e.message);
        let e = select(&args(Some("dev"), None), None).unwrap_err();
        assert!(e.message.contains("no configuration file"), "{}", e.message);
    }
}
