//! The configuration file: named targets (analytics environments) and which one is the
//! default. `dwflow.yaml` in the current directory when present, or the file named by
//! `--config` / `DWFLOW_CONFIG`.
//!
//! ```yaml
//! default_target: dev
//! targets:
//!   local:
//!     backend: local
//!     workspace: examples/workspace
//!   dev:
//!     backend: workbench
//!     workspace_id: 6e3a0f27-0c4f-4b0e-9d1c-2a8f7b5e4d10
//!     client_id_env: DW_CLIENT_ID          # defaults shown
//!     client_secret_env: DW_CLIENT_SECRET
//!     subscription_key_env: DW_SUBSCRIPTION_KEY
//!   dbx:
//!     backend: databricks
//!     host: https://adb-1234567890123456.7.azuredatabricks.net
//!     token_env: DATABRICKS_TOKEN
//! ```
//!
//! Secrets never live in this file: a key that would hold one (`client_secret`, `token`,
//! `subscription_key`, `password`, ...) is an error that points to the `_env` (or
//! `_file`) form. Plain `http://` is accepted for loopback hosts only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use reqwest::Url;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_saphyr::Spanned;

use crate::backend::workbench::{
    CancelMethod, DEFAULT_BASE_URL, DEFAULT_RESOURCE, DEFAULT_TOKEN_URL,
};

/// The file looked for in the current directory.
pub const DEFAULT_FILE: &str = "dwflow.yaml";
/// Configuration files are small; anything bigger is a mistake.
const MAX_BYTES: u64 = 1024 * 1024;

/// A problem with the configuration file: `file:line:col: message`, and a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: u32,
    pub col: u32,
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file,
                self.line,
                self.col.max(1),
                self.message
            )?;
        } else {
            write!(f, "{}: {}", self.file, self.message)?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  = hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Where a secret comes from: an environment variable, or a file (a mounted secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// The value, trimmed; `Ok(None)` when the variable is unset or empty.
    pub fn read(&self) -> Result<Option<String>, String> {
        match self {
            SecretSource::Env(var) => Ok(std::env::var(var)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())),
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(s) => Ok(Some(s.trim().to_string()).filter(|v| !v.is_empty())),
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            },
        }
    }

    /// "the environment variable DW_CLIENT_SECRET", "the file /run/secrets/x".
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(v) => format!("the environment variable {v}"),
            SecretSource::File(p) => format!("the file {}", p.display()),
        }
    }

    /// Short form for lists: "$DW_CLIENT_SECRET", "/run/secrets/x".
    pub fn short(&self) -> String {
        match self {
            SecretSource::Env(v) => format!("${v}"),
            SecretSource::File(p) => p.display().to_string(),
        }
    }
}

/// A Veracity Data Workbench target.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkbenchTarget {
    pub base_url: Url,
    pub workspace_id: String,
    pub token_url: Url,
    pub resource: String,
    pub client_id: SecretSource,
    pub client_secret: SecretSource,
    pub subscription_key: SecretSource,
    /// A static bearer token instead of client credentials.
    pub token: Option<SecretSource>,
    pub cancel_method: CancelMethod,
    pub request_timeout: Duration,
    /// How long one request may be retried (5xx, 429, connection errors).
    pub retry_budget: Duration,
}

/// How a Databricks target authenticates.
#[derive(Debug, Clone, PartialEq)]
pub enum DatabricksAuthSource {
    /// A personal access token.
    Token(SecretSource),
    /// OAuth M2M client credentials.
    OAuth {
        client_id: SecretSource,
        client_secret: SecretSource,
    },
    /// Nothing configured: `DATABRICKS_TOKEN` if set, else `DATABRICKS_CLIENT_ID` and
    /// `DATABRICKS_CLIENT_SECRET`.
    Default,
}

/// A Databricks workspace target.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabricksTarget {
    pub host: Url,
    pub auth: DatabricksAuthSource,
    pub request_timeout: Duration,
    /// How long one request may be retried (5xx, 429, connection errors).
    pub retry_budget: Duration,
}

/// What a target is.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetSpec {
    Local { workspace: PathBuf },
    Workbench(Box<WorkbenchTarget>),
    Databricks(DatabricksTarget),
}

impl TargetSpec {
    pub fn backend_name(&self) -> &'static str {
        match self {
            TargetSpec::Local { .. } => "local",
            TargetSpec::Workbench(_) => "workbench",
            TargetSpec::Databricks(_) => "databricks",
        }
    }
}

/// A loaded configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub default_target: Option<String>,
    pub targets: IndexMap<String, TargetSpec>,
}

// ---- the file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    default_target: Option<Spanned<String>>,
    #[serde(default)]
    targets: Option<IndexMap<String, Spanned<TargetDoc>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetDoc {
    backend: Option<Spanned<String>>,
    // local
    workspace: Option<Spanned<String>>,
    // workbench
    base_url: Option<Spanned<String>>,
    workspace_id: Option<Spanned<String>>,
    token_url: Option<Spanned<String>>,
    resource: Option<Spanned<String>>,
    subscription_key_env: Option<Spanned<String>>,
    subscription_key_file: Option<Spanned<String>>,
    cancel_method: Option<Spanned<String>>,
    // databricks
    host: Option<Spanned<String>>,
    // both remote ones
    client_id_env: Option<Spanned<String>>,
    client_secret_env: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    request_timeout: Option<Spanned<String>>,
    retry_budget: Option<Spanned<String>>,
    // Keys that would put a secret in the file: refused with a pointer to `_env`.
    client_secret: Option<Spanned<IgnoredAny>>,
    token: Option<Spanned<IgnoredAny>>,
    subscription_key: Option<Spanned<IgnoredAny>>,
    password: Option<Spanned<IgnoredAny>>,
    access_token: Option<Spanned<IgnoredAny>>,
    api_key: Option<Spanned<IgnoredAny>>,
    secret: Option<Spanned<IgnoredAny>>,
    client_id: Option<Spanned<IgnoredAny>>,
}

const FIELDS: &[&str] = &[
    "backend",
    "workspace",
    "base_url",
    "workspace_id",
    "token_url",
    "resource",
    "subscription_key_env",
    "subscription_key_file",
    "cancel_method",
    "host",
    "client_id_env",
    "client_secret_env",
    "client_secret_file",
    "token_env",
    "token_file",
    "request_timeout",
    "retry_budget",
];

const LOCAL_FIELDS: &[&str] = &["backend", "workspace"];
const WORKBENCH_FIELDS: &[&str] = &[
    "backend",
    "base_url",
    "workspace_id",
    "token_url",
    "resource",
    "client_id_env",
    "client_secret_env",
    "client_secret_file",
    "subscription_key_env",
    "subscription_key_file",
    "token_env",
    "token_file",
    "cancel_method",
    "request_timeout",
    "retry_budget",
];
const DATABRICKS_FIELDS: &[&str] = &[
    "backend",
    "host",
    "token_env",
    "token_file",
    "client_id_env",
    "client_secret_env",
    "client_secret_file",
    "request_timeout",
    "retry_budget",
];

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        // Never print the source line: it might hold a secret someone pasted in.
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_depth: 16,
            max_nodes: 20_000,
            max_events: 40_000,
            max_aliases: 50,
            max_anchors: 50,
            max_documents: 1,
        },
    };
    options.alias_limits.max_total_replayed_events = 5_000;
    options.alias_limits.max_replay_stack_depth = 8;
    options.alias_limits.max_alias_expansions_per_anchor = 50;
    options
}

struct Ctx<'a> {
    file: &'a str,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn err<T>(
        &self,
        at: &Spanned<T>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_string(),
            line: at.referenced.line() as u32,
            col: at.referenced.column() as u32,
            message: message.into(),
            hint,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let whole = |message: String, hint: Option<&str>| ConfigError {
            file: file.clone(),
            line: 0,
            col: 0,
            message,
            hint: hint.map(str::to_string),
        };
        let meta = std::fs::metadata(path).map_err(|e| {
            whole(
                format!("cannot read the configuration file: {e}"),
                Some("check the path given with --config or DWFLOW_CONFIG"),
            )
        })?;
        if meta.len() > MAX_BYTES {
            return Err(whole(
                format!("{} bytes is too large for a configuration file", meta.len()),
                None,
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            whole(
                format!("cannot read the configuration file: {e}"),
                Some("save it as UTF-8"),
            )
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::parse(&file, dir, &text).map(|mut c| {
            c.path = path.to_path_buf();
            c
        })
    }

    /// Parses configuration text; `file` names it in messages and `dir` anchors
    /// relative paths.
    pub fn parse(file: &str, dir: &Path, text: &str) -> Result<Config, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let empty = text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'));
        let doc: Doc = if empty {
            Doc {
                default_target: None,
                targets: None,
            }
        } else {
            serde_saphyr::from_str_with_options(text, yaml_options())
                .map_err(|e| yaml_error(file, &e))?
        };
        let cx = Ctx { file, dir };
        let mut targets = IndexMap::new();
        for (name, t) in doc.targets.unwrap_or_default() {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(cx.err(
                    &t,
                    format!("`{name}` is not a valid target name"),
                    Some("use letters, digits, `-`, `_` and `.`".into()),
                ));
            }
            let spec = target_spec(&cx, &name, &t)?;
            targets.insert(name, spec);
        }
        let default_target = match doc.default_target {
            Some(d) => {
                let name = d.value.trim().to_string();
                if !targets.contains_key(&name) && name != "local" {
                    let hint =
                        crate::diagnostic::did_you_mean(&name, targets.keys().map(String::as_str))
                            .unwrap_or_else(|| {
                                format!("targets in this file: {}", list_or_none(targets.keys()))
                            });
                    return Err(cx.err(
                        &d,
                        format!("`default_target: {name}` names no target of this file"),
                        Some(hint),
                    ));
                }
                Some(name)
            }
            None => None,
        };
        Ok(Config {
            path: PathBuf::from(file),
            default_target,
            targets,
        })
    }
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = names.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The fields given in a target section, with their positions.
fn given(t: &TargetDoc) -> Vec<(&'static str, &Spanned<String>)> {
    let all: [(&'static str, &Option<Spanned<String>>); 16] = [
        ("workspace", &t.workspace),
        ("base_url", &t.base_url),
        ("workspace_id", &t.workspace_id),
        ("token_url", &t.token_url),
        ("resource", &t.resource),
        ("subscription_key_env", &t.subscription_key_env),
        ("subscription_key_file", &t.subscription_key_file),
        ("cancel_method", &t.cancel_method),
        ("host", &t.host),
        ("client_id_env", &t.client_id_env),
        ("client_secret_env", &t.client_secret_env),
        ("client_secret_file", &t.client_secret_file),
        ("token_env", &t.token_env),
        ("token_file", &t.token_file),
        ("request_timeout", &t.request_timeout),
        ("retry_budget", &t.retry_budget),
    ];
    all.into_iter()
        .filter_map(|(n, v)| v.as_ref().map(|v| (n, v)))
        .collect()
}

fn target_spec(cx: &Ctx, name: &str, t: &Spanned<TargetDoc>) -> Result<TargetSpec, ConfigError> {
    let doc = &t.value;
    // Secrets in the file.
    let secret_keys: [(&str, &Option<Spanned<IgnoredAny>>, &str); 8] = [
        (
            "client_secret",
            &doc.client_secret,
            "client_secret_env: DW_CLIENT_SECRET (or client_secret_file: PATH)",
        ),
        (
            "token",
            &doc.token,
            "token_env: VARIABLE (or token_file: PATH)",
        ),
        (
            "subscription_key",
            &doc.subscription_key,
            "subscription_key_env: DW_SUBSCRIPTION_KEY (or subscription_key_file: PATH)",
        ),
        (
            "password",
            &doc.password,
            "the `_env` setting of the credential it is (client_secret_env, token_env)",
        ),
        (
            "access_token",
            &doc.access_token,
            "token_env: VARIABLE (or token_file: PATH)",
        ),
        ("api_key", &doc.api_key, "subscription_key_env: VARIABLE"),
        ("secret", &doc.secret, "client_secret_env: VARIABLE"),
        (
            "client_id",
            &doc.client_id,
            "client_id_env: DW_CLIENT_ID (client ids come from the environment like the secrets they go with)",
        ),
    ];
    for (key, v, instead) in secret_keys {
        if let Some(v) = v {
            let message = if key == "client_id" {
                format!("target `{name}`: `client_id` is not read from the file")
            } else {
                format!(
                    "target `{name}`: `{key}` would put a secret in the configuration file, which is checked into git; secrets come only from the environment or a file"
                )
            };
            return Err(cx.err(
                v,
                message,
                Some(format!("remove the value and write `{instead}`")),
            ));
        }
    }
    let Some(backend) = &doc.backend else {
        return Err(cx.err(
            t,
            format!("target `{name}` has no `backend`"),
            Some("add `backend: local`, `backend: workbench` or `backend: databricks`".into()),
        ));
    };
    let allowed = match backend.value.as_str() {
        "local" => LOCAL_FIELDS,
        "workbench" => WORKBENCH_FIELDS,
        "databricks" => DATABRICKS_FIELDS,
        other => {
            let hint = crate::diagnostic::did_you_mean(other, ["local", "workbench", "databricks"])
                .unwrap_or_else(|| "use local, workbench or databricks".into());
            return Err(cx.err(
                backend,
                format!("target `{name}`: unknown backend `{other}`"),
                Some(hint),
            ));
        }
    };
    for (field, v) in given(doc) {
        if !allowed.contains(&field) {
            return Err(cx.err(
                v,
                format!(
                    "target `{name}`: `{field}` is not a setting of a {} target",
                    backend.value
                ),
                Some(format!("its settings are: {}", allowed[1..].join(", "))),
            ));
        }
    }
    // Names of environment variables, checked (and never echoed: a value that is not a
    // variable name may be the secret itself).
    let env_var = |v: &Option<Spanned<String>>,
                   field: &str,
                   default: &str|
     -> Result<String, ConfigError> {
        match v {
            None => Ok(default.to_string()),
            Some(s) => {
                let n = s.value.trim();
                let ok = !n.is_empty()
                    && n.len() <= 128
                    && n.chars()
                        .next()
                        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if ok {
                    Ok(n.to_string())
                } else {
                    Err(cx.err(
                        s,
                        format!("target `{name}`: `{field}` must be the name of an environment variable (letters, digits and `_`); the value given is not one (it is not shown, in case it is a secret)"),
                        Some(format!("write e.g. `{field}: {}` and put the secret in that variable", if default.is_empty() { "MY_VARIABLE" } else { default })),
                    ))
                }
            }
        }
    };
    let source = |env: &Option<Spanned<String>>,
                  file: &Option<Spanned<String>>,
                  env_field: &str,
                  default: &str|
     -> Result<Option<SecretSource>, ConfigError> {
        match (env, file) {
            (Some(_), Some(f)) => Err(cx.err(
                f,
                format!(
                    "target `{name}`: give `{env_field}` or `{}`, not both",
                    env_field.replace("_env", "_file")
                ),
                None,
            )),
            (None, Some(f)) => Ok(Some(SecretSource::File(cx.path(f.value.trim())))),
            (Some(_), None) => Ok(Some(SecretSource::Env(env_var(env, env_field, default)?))),
            (None, None) if default.is_empty() => Ok(None),
            (None, None) => Ok(Some(SecretSource::Env(default.to_string()))),
        }
    };
    let timeout = match &doc.request_timeout {
        None => Duration::from_secs(60),
        Some(s) => match crate::duration::parse_duration(&s.value) {
            Some(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(3600) => d,
            _ => {
                return Err(cx.err(
                    s,
                    format!("target `{name}`: `request_timeout: {}` is not a duration between 1s and 1h", s.value),
                    Some("write e.g. `request_timeout: 60s` or `2m`".into()),
                ));
            }
        },
    };
    let retry_budget = match &doc.retry_budget {
        None => Duration::from_secs(120),
        Some(s) => match crate::duration::parse_duration(&s.value) {
            Some(d) if d <= Duration::from_secs(3600) => d,
            _ => {
                return Err(cx.err(
                    s,
                    format!(
                        "target `{name}`: `retry_budget: {}` is not a duration of at most 1h",
                        s.value
                    ),
                    Some("write e.g. `retry_budget: 2m` (0s: no retries)".into()),
                ));
            }
        },
    };
    match backend.value.as_str() {
        "local" => {
            let Some(ws) = &doc.workspace else {
                return Err(cx.err(
                    t,
                    format!("target `{name}` (local) has no `workspace`"),
                    Some("add `workspace: DIR`, a directory with datasets/ and jobs/ (relative to this file)".into()),
                ));
            };
            Ok(TargetSpec::Local {
                workspace: cx.path(ws.value.trim()),
            })
        }
        "workbench" => {
            let base_url = url_field(
                cx,
                name,
                "base_url",
                doc.base_url.as_ref(),
                DEFAULT_BASE_URL,
                false,
            )?;
            let token_url = url_field(
                cx,
                name,
                "token_url",
                doc.token_url.as_ref(),
                DEFAULT_TOKEN_URL,
                false,
            )?;
            let Some(ws) = &doc.workspace_id else {
                return Err(cx.err(
                    t,
                    format!("target `{name}` (workbench) has no `workspace_id`"),
                    Some(
                        "add `workspace_id: UUID`: the id in the workspace's URL in Data Workbench"
                            .into(),
                    ),
                ));
            };
            if uuid::Uuid::parse_str(ws.value.trim()).is_err() {
                return Err(cx.err(
                    ws,
                    format!("target `{name}`: `workspace_id: {}` is not a UUID", ws.value),
                    Some("Data Workbench workspace ids look like 6e3a0f27-0c4f-4b0e-9d1c-2a8f7b5e4d10".into()),
                ));
            }
            let cancel_method = match &doc.cancel_method {
                None => CancelMethod::Get,
                Some(m) => {
                    match m.value.trim().to_ascii_lowercase().as_str() {
                        "get" => CancelMethod::Get,
                        "post" => CancelMethod::Post,
                        other => {
                            return Err(cx.err(
                            m,
                            format!("target `{name}`: `cancel_method: {other}` is neither get nor post"),
                            Some("the gateway documents GET; `post` is for gateways that want POST".into()),
                        ));
                        }
                    }
                }
            };
            let resource = doc
                .resource
                .as_ref()
                .map(|r| r.value.trim().to_string())
                .unwrap_or_else(|| DEFAULT_RESOURCE.to_string());
            let token = source(&doc.token_env, &doc.token_file, "token_env", "")?;
            Ok(TargetSpec::Workbench(Box::new(WorkbenchTarget {
                base_url,
                workspace_id: ws.value.trim().to_string(),
                token_url,
                resource,
                client_id: SecretSource::Env(env_var(
                    &doc.client_id_env,
                    "client_id_env",
                    "DW_CLIENT_ID",
                )?),
                client_secret: source(
                    &doc.client_secret_env,
                    &doc.client_secret_file,
                    "client_secret_env",
                    "DW_CLIENT_SECRET",
                )?
                .unwrap_or_else(|| SecretSource::Env("DW_CLIENT_SECRET".into())),
                subscription_key: source(
                    &doc.subscription_key_env,
                    &doc.subscription_key_file,
                    "subscription_key_env",
                    "DW_SUBSCRIPTION_KEY",
                )?
                .unwrap_or_else(|| SecretSource::Env("DW_SUBSCRIPTION_KEY".into())),
                token,
                cancel_method,
                request_timeout: timeout,
                retry_budget,
            })))
        }
        _ => {
            let Some(h) = &doc.host else {
                return Err(cx.err(
                    t,
                    format!("target `{name}` (databricks) has no `host`"),
                    Some(
                        "add `host: https://adb-....azuredatabricks.net` (the workspace URL)"
                            .into(),
                    ),
                ));
            };
            let host = url_field(cx, name, "host", Some(h), "", true)?;
            let token = source(&doc.token_env, &doc.token_file, "token_env", "")?;
            let oauth_given = doc.client_id_env.is_some()
                || doc.client_secret_env.is_some()
                || doc.client_secret_file.is_some();
            let auth = match (token, oauth_given) {
                (Some(_), true) => {
                    let at = doc
                        .client_id_env
                        .as_ref()
                        .or(doc.client_secret_env.as_ref())
                        .or(doc.client_secret_file.as_ref())
                        .unwrap_or(h);
                    return Err(cx.err(
                        at,
                        format!("target `{name}`: give a token (`token_env`/`token_file`) or OAuth client credentials (`client_id_env` and `client_secret_env`), not both"),
                        None,
                    ));
                }
                (Some(t), false) => DatabricksAuthSource::Token(t),
                (None, true) => DatabricksAuthSource::OAuth {
                    client_id: SecretSource::Env(env_var(
                        &doc.client_id_env,
                        "client_id_env",
                        "DATABRICKS_CLIENT_ID",
                    )?),
                    client_secret: source(
                        &doc.client_secret_env,
                        &doc.client_secret_file,
                        "client_secret_env",
                        "DATABRICKS_CLIENT_SECRET",
                    )?
                    .unwrap_or_else(|| SecretSource::Env("DATABRICKS_CLIENT_SECRET".into())),
                },
                (None, false) => DatabricksAuthSource::Default,
            };
            Ok(TargetSpec::Databricks(DatabricksTarget {
                host,
                auth,
                request_timeout: timeout,
                retry_budget,
            }))
        }
    }
}

fn url_field(
    cx: &Ctx,
    name: &str,
    field: &str,
    v: Option<&Spanned<String>>,
    default: &str,
    bare_host_ok: bool,
) -> Result<Url, ConfigError> {
    let Some(v) = v else {
        return Url::parse(default).map_err(|e| ConfigError {
            file: cx.file.to_string(),
            line: 0,
            col: 0,
            message: format!("internal: bad default {field}: {e}"),
            hint: None,
        });
    };
    let mut text = v.value.trim().to_string();
    if bare_host_ok && !text.contains("://") {
        text = format!("https://{text}");
    }
    let url = Url::parse(&text).map_err(|e| {
        cx.err(
            v,
            format!("target `{name}`: `{field}` is not a URL ({e})"),
            Some("write a full URL, e.g. https://host/path".into()),
        )
    })?;
    crate::backend::http::check_url(&url, &format!("target `{name}`: `{field}`")).map_err(|m| {
        cx.err(
            v,
            m,
            Some("plain http:// is only for the emulator or a proxy on this machine".into()),
        )
    })?;
    Ok(url)
}

fn yaml_error(file: &str, err: &serde_saphyr::Error) -> ConfigError {
    let full = err.to_string();
    let mut first = full.lines().next().unwrap_or("invalid YAML").trim();
    first = first.strip_prefix("error:").unwrap_or(first).trim_start();
    if first.starts_with("line ")
        && let Some(i) = first.find(": ")
    {
        first = &first[i + 2..];
    }
    let mut message = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    }
    .trim_end_matches(':')
    .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    let hint;
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some(end) = rest.find('`')
    {
        let field = rest[..end].to_string();
        let top = message.contains("`default_target`");
        let candidates: &[&str] = if top {
            &["default_target", "targets"]
        } else {
            FIELDS
        };
        message = format!("unknown setting `{field}`");
        hint = Some(
            crate::diagnostic::did_you_mean(&field, candidates.iter().copied())
                .unwrap_or_else(|| format!("settings here: {}", candidates.join(", "))),
        );
    } else if message.contains("duplicate") {
        hint = Some("each key may appear once in a mapping".into());
    } else if message.contains("invalid type") {
        hint = Some("check the value's type (a target is a mapping of settings; URLs and names are strings)".into());
    } else {
        hint =
            Some("check indentation, quoting and `:` after keys; see examples/dwflow.yaml".into());
    }
    let (line, col) = match err.location() {
        Some(loc) if loc.line() > 0 => (loc.line() as u32, loc.column().max(1) as u32),
        _ => (0, 0),
    };
    ConfigError {
        file: file.to_string(),
        line,
        col,
        message,
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("dwflow.yaml", Path::new("/cfg"), text)
    }

    #[test]
    fn full_example() {
        let c = parse(
            "default_target: dev\n\
             targets:\n\
             \x20 local:\n\
             \x20   backend: local\n\
             \x20   workspace: ws\n\
             \x20 dev:\n\
             \x20   backend: workbench\n\
             \x20   workspace_id: 00000000-0000-4000-8000-000000000001\n\
             \x20   cancel_method: post\n\
             \x20   request_timeout: 30s\n\
             \x20 emu:\n\
             \x20   backend: workbench\n\
             \x20   base_url: http://127.0.0.1:8787/veracity/dw/gateway/api/v2\n\
             \x20   token_url: http://127.0.0.1:8787/oauth2/token\n\
             \x20   workspace_id: 00000000-0000-4000-8000-000000000001\n\
             \x20   client_secret_file: secret.txt\n\
             \x20   token_env: MY_TOKEN\n\
             \x20 dbx:\n\
             \x20   backend: databricks\n\
             \x20   host: adb-1.2.azuredatabricks.net\n\
             \x20 dbx2:\n\
             \x20   backend: databricks\n\
             \x20   host: http://localhost:8787\n\
             \x20   client_id_env: CID\n",
        )
        .unwrap();
        assert_eq!(c.default_target.as_deref(), Some("dev"));
        assert_eq!(
            c.targets["local"],
            TargetSpec::Local {
                workspace: PathBuf::from("/cfg/ws")
            }
        );
        let TargetSpec::Workbench(dev) = &c.targets["dev"] else {
            panic!()
        };
        assert_eq!(dev.base_url.as_str(), DEFAULT_BASE_URL);
        assert_eq!(dev.token_url.as_str(), DEFAULT_TOKEN_URL);
        assert_eq!(dev.resource, DEFAULT_RESOURCE);
        assert_eq!(dev.client_id, SecretSource::Env("DW_CLIENT_ID".into()));
        assert_eq!(
            dev.client_secret,
            SecretSource::Env("DW_CLIENT_SECRET".into())
        );
        assert_eq!(
            dev.subscription_key,
            SecretSource::Env("DW_SUBSCRIPTION_KEY".into())
        );
        assert_eq!(dev.token, None);
        assert_eq!(dev.cancel_method, CancelMethod::Post);
        assert_eq!(dev.request_timeout, Duration::from_secs(30));
        let TargetSpec::Workbench(emu) = &c.targets["emu"] else {
            panic!()
        };
        assert_eq!(
            emu.client_secret,
            SecretSource::File(PathBuf::from("/cfg/secret.txt"))
        );
        assert_eq!(emu.token, Some(SecretSource::Env("MY_TOKEN".into())));
        let TargetSpec::Databricks(dbx) = &c.targets["dbx"] else {
            panic!()
        };
        assert_eq!(dbx.host.as_str(), "https://adb-1.2.azuredatabricks.net/");
        assert_eq!(dbx.auth, DatabricksAuthSource::Default);
        let TargetSpec::Databricks(dbx2) = &c.targets["dbx2"] else {
            panic!()
        };
        assert_eq!(
            dbx2.auth,
            DatabricksAuthSource::OAuth {
                client_id: SecretSource::Env("CID".into()),
                client_secret: SecretSource::Env("DATABRICKS_CLIENT_SECRET".into())
            }
        );
    }

    #[test]
    fn empty_file_is_no_targets() {
        let c = parse("# nothing yet\n").unwrap();
        assert!(c.targets.is_empty());
        assert_eq!(c.default_target, None);
    }

    fn err(text: &str) -> ConfigError {
        parse(text).unwrap_err()
    }

    #[test]
    fn secrets_in_the_file_are_refused_without_echo() {
        let e = err(
            "targets:\n  dev:\n    backend: workbench\n    workspace_id: 00000000-0000-4000-8000-000000000001\n    client_secret: hunter2-very-secret\n",
        );
        assert_eq!((e.line, e.col), (5, 20), "{e}");
        let text = e.to_string();
        assert!(text.contains("client_secret_env"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        for key in ["token", "subscription_key", "password"] {
            let e = err(&format!(
                "targets:\n  d:\n    backend: databricks\n    host: https://h\n    {key}: s3cr3t-value\n"
            ));
            assert_eq!(e.line, 5, "{key}: {e}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
            assert!(e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn secret_pasted_into_an_env_setting_is_not_echoed() {
        let e = err(
            "targets:\n  d:\n    backend: databricks\n    host: https://h\n    token_env: dapi0123456789abcdef-xyz\n",
        );
        assert_eq!(e.line, 5);
        assert!(!e.to_string().contains("dapi0123"), "{e}");
        assert!(e.to_string().contains("environment variable"), "{e}");
    }

    #[test]
    fn positions_and_hints() {
        let e = err(
            "targets:\n  dev:\n    backend: workbench\n    workspace_id: 00000000-0000-4000-8000-000000000001\n    base_ulr: https://x\n",
        );
        assert_eq!(e.line, 5, "{e}");
        assert!(e.message.contains("unknown setting `base_ulr`"), "{e}");
        assert_eq!(e.hint.as_deref(), Some("did you mean `base_url`?"));

        let e = err("targets:\n  d:\n    backend: databrick\n");
        assert_eq!((e.line, e.col), (3, 14), "{e}");
        assert_eq!(e.hint.as_deref(), Some("did you mean `databricks`?"));

        let e = err("targets:\n  d:\n    backend: local\n    host: https://x\n");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("not a setting of a local target"), "{e}");

        let e =
            err("default_target: prod\ntargets:\n  dev:\n    backend: local\n    workspace: w\n");
        assert_eq!((e.line, e.col), (1, 17), "{e}");

        let e = err("targets:\n  dev:\n    backend: workbench\n    workspace_id: nope\n");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("not a UUID"), "{e}");

        let e = err("targets:\n  dev:\n    backend: workbench\n");
        assert!(e.message.contains("no `workspace_id`"), "{e}");

        let e = err("targets:\n  dev:\n    backend: local\n    workspace: a\n    workspace: b\n");
        assert_eq!(e.line, 5, "{e}");

        let e = err(
            "targets:\n  dev:\n    backend: databricks\n    host: https://h\n    request_timeout: forever\n",
        );
        assert_eq!(e.line, 5);
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let e = err("targets:\n  d:\n    backend: databricks\n    host: http://example.com\n");
        assert_eq!(e.line, 4);
        assert!(e.message.contains("not loopback"), "{e}");
        let e = err(
            "targets:\n  d:\n    backend: workbench\n    workspace_id: 00000000-0000-4000-8000-000000000001\n    token_url: http://10.1.2.3/token\n",
        );
        assert_eq!(e.line, 5);
        for ok in [
            "http://127.0.0.1:8787",
            "http://[::1]:8787",
            "http://localhost:1",
        ] {
            parse(&format!(
                "targets:\n  d:\n    backend: databricks\n    host: {ok}\n"
            ))
            .unwrap();
        }
    }

    #[test]
    fn strict_booleans_and_types() {
        // `yes` is not a backend, nor a boolean.
        let e = err("targets:\n  d:\n    backend: yes\n");
        assert!(e.message.contains("unknown backend `yes`"), "{e}");
        let e = err("targets: [1, 2]\n");
        assert!(e.line >= 1, "{e}");
    }

    #[test]
    fn token_and_oauth_are_exclusive_on_databricks() {
        let e = err(
            "targets:\n  d:\n    backend: databricks\n    host: https://h\n    token_env: T\n    client_id_env: C\n",
        );
        assert!(e.message.contains("not both"), "{e}");
    }
}
