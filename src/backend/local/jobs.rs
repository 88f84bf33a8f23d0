//! Job definitions of the local environment: one YAML file per job under `jobs/`.
//!
//! ```yaml
//! name: Assessment                 # must match the file name (jobs/Assessment.yaml)
//! description: Daily energy per turbine.
//! parameters:
//!   Year: {default: "2014", description: Year (UTC) to assess.}
//!   ResultDatasetName: {description: Dataset to write.}   # no default: required
//! sql:                             # or `command:` (exactly one task)
//!   inputs: ["{{ InputDataset }}"]
//!   output: "{{ ResultDatasetName }}"
//!   query: SELECT ... FROM "{{ InputDataset }}" WHERE ... {{ Year | int }}
//! ```
//!
//! Every string of the task is a minijinja template rendered with the job's parameters
//! (strict undefined); the filters `sql_string` and `sql_ident` quote a value as an SQL
//! string literal or identifier.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use indexmap::IndexMap;
use minijinja::{Environment, UndefinedBehavior};
use serde::Deserialize;

use super::names::check_name;
use crate::backend::{BackendError, ErrorKind, JobInfo, JobParam};

/// Job files larger than this are refused (a job definition is a few lines).
const MAX_JOB_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: String,
    /// Documentation of the job; not used by the environment itself.
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    parameters: IndexMap<String, ParamFile>,
    #[serde(default)]
    sql: Option<SqlTask>,
    #[serde(default)]
    command: Option<CommandTask>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFile {
    #[serde(default)]
    default: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// An SQL task: `query` is run by SQLite over the `inputs`; its rows become `output`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SqlTask {
    pub query: String,
    #[serde(default)]
    pub inputs: Vec<String>,
    pub output: String,
}

/// A command task: `argv` run as a process in its own process group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandTask {
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: IndexMap<String, String>,
    #[serde(default)]
    pub cwd: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) enum Task {
    Sql(SqlTask),
    Command(CommandTask),
}

/// A loaded, checked job definition.
#[derive(Debug, Clone)]
pub(crate) struct JobDef {
    pub id: u64,
    pub name: String,
    /// The file, relative to the workspace, for messages (`jobs/Assessment.yaml`).
    pub file: String,
    pub params: IndexMap<String, ParamDef>,
    pub task: Task,
    pub created: Option<String>,
}

/// A parameter of a loaded job.
#[derive(Debug, Clone)]
pub(crate) struct ParamDef {
    pub default: Option<String>,
    pub description: Option<String>,
}

/// A task with its templates rendered for one run.
#[derive(Debug, Clone)]
pub(crate) enum RenderedTask {
    Sql {
        query: String,
        inputs: Vec<String>,
        output: String,
    },
    Command {
        argv: Vec<String>,
        env: IndexMap<String, String>,
        cwd: Option<String>,
    },
}

/// The job id of a job name: FNV-1a (64 bit) of the name, kept to 53 bits so that it
/// survives JSON numbers, never 0. Stable across processes and machines.
pub fn job_id(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let id = hash & ((1u64 << 53) - 1);
    if id == 0 { 1 } else { id }
}

/// The template environment of job files.
fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.add_filter("sql_string", |v: String| -> String {
            format!("'{}'", v.replace('\'', "''"))
        });
        env.add_filter("sql_ident", |v: String| -> String {
            format!("\"{}\"", v.replace('"', "\"\""))
        });
        env
    })
}

/// Job files in `jobs/`, sorted by name: `(stem, path)`.
fn job_files(jobs_dir: &Path) -> Result<Vec<(String, PathBuf)>, BackendError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(jobs_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => {
            return Err(BackendError::new(
                ErrorKind::Internal,
                format!("cannot list {}: {e}", jobs_dir.display()),
            ));
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let stem = file_name
            .strip_suffix(".yaml")
            .or_else(|| file_name.strip_suffix(".yml"));
        if let Some(stem) = stem {
            out.push((stem.to_string(), path));
        }
    }
    out.sort();
    Ok(out)
}

/// Every job of the workspace: the good ones, and one message per bad file.
pub(crate) fn load_all(workspace: &Path) -> Result<(Vec<JobDef>, Vec<String>), BackendError> {
    let mut jobs: Vec<JobDef> = Vec::new();
    let mut errors = Vec::new();
    for (stem, path) in job_files(&workspace.join("jobs"))? {
        match load_file(&stem, &path) {
            Ok(job) => {
                if let Some(other) = jobs.iter().find(|j| j.name == job.name) {
                    errors.push(format!(
                        "{}: job `{}` is already defined by {}",
                        job.file, job.name, other.file
                    ));
                } else if let Some(other) = jobs.iter().find(|j| j.id == job.id) {
                    errors.push(format!(
                        "{}: the job id of `{}` ({}) collides with that of `{}`; rename one of them",
                        job.file, job.name, job.id, other.name
                    ));
                } else {
                    jobs.push(job);
                }
            }
            Err(message) => errors.push(message),
        }
    }
    Ok((jobs, errors))
}

/// Loads `jobs/<name>.yaml` (or `.yml`); `Ok(None)` when there is no such file.
pub(crate) fn load_by_name(workspace: &Path, name: &str) -> Result<Option<JobDef>, BackendError> {
    if check_name(name, "job name").is_err() {
        return Ok(None);
    }
    let dir = workspace.join("jobs");
    let candidates: Vec<PathBuf> = ["yaml", "yml"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .filter(|p| p.is_file())
        .collect();
    match candidates.as_slice() {
        [] => Ok(None),
        [one] => load_file(name, one)
            .map(Some)
            .map_err(|m| BackendError::new(ErrorKind::Invalid, m)),
        _ => Err(BackendError::new(
            ErrorKind::Invalid,
            format!("jobs/{name}.yaml and jobs/{name}.yml both exist: keep one"),
        )),
    }
}

fn load_file(stem: &str, path: &Path) -> Result<JobDef, String> {
    let file = format!(
        "jobs/{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or(stem)
    );
    let meta = std::fs::metadata(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    if meta.len() > MAX_JOB_FILE_BYTES {
        return Err(format!(
            "{file}: {} bytes is too large for a job definition (at most {MAX_JOB_FILE_BYTES})",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{file}: cannot read: {e}"))?;
    let created = meta.modified().ok().map(|t| {
        chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let mut job = parse(&file, &text)?;
    if job.name != stem {
        return Err(format!(
            "{file}: the job is named `{}` but its file is `{stem}`: a job's file is named after it (rename one of them)",
            job.name
        ));
    }
    job.created = created;
    Ok(job)
}

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_depth: 32,
            max_nodes: 100_000,
            max_events: 200_000,
            max_aliases: 100,
            max_anchors: 100,
            max_documents: 1,
        },
    };
    options.alias_limits.max_total_replayed_events = 10_000;
    options.alias_limits.max_replay_stack_depth = 8;
    options.alias_limits.max_alias_expansions_per_anchor = 100;
    options
}

/// Parses and checks the text of a job file; `file` names it in messages.
pub(crate) fn parse(file: &str, text: &str) -> Result<JobDef, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(format!(
            "{file}: the file is empty: a job needs `name` and a task (`sql` or `command`)"
        ));
    }
    let parsed: JobFile = serde_saphyr::from_str_with_options(text, yaml_options())
        .map_err(|e| yaml_error(file, &e))?;

    if let Err(m) = check_name(&parsed.name, "job name") {
        return Err(format!("{file}: {m}"));
    }
    let mut params = IndexMap::new();
    for (name, p) in &parsed.parameters {
        if !is_identifier(name) {
            return Err(format!(
                "{file}: invalid parameter name `{name}`: use letters, digits and `_`, not starting with a digit (it becomes a template variable and an environment variable)"
            ));
        }
        params.insert(
            name.clone(),
            ParamDef {
                default: p.default.clone(),
                description: p.description.clone(),
            },
        );
    }
    let task = match (parsed.sql, parsed.command) {
        (Some(sql), None) => {
            if sql.query.trim().is_empty() {
                return Err(format!("{file}: `sql.query` is empty"));
            }
            Task::Sql(sql)
        }
        (None, Some(cmd)) => {
            if cmd.argv.is_empty() {
                return Err(format!(
                    "{file}: `command.argv` is empty: give the program and its arguments"
                ));
            }
            for key in cmd.env.keys() {
                if !is_identifier(key) {
                    return Err(format!(
                        "{file}: invalid environment variable name `{key}` in `command.env`"
                    ));
                }
            }
            Task::Command(cmd)
        }
        (Some(_), Some(_)) => {
            return Err(format!(
                "{file}: a job has exactly one task: `sql` or `command`, not both"
            ));
        }
        (None, None) => {
            return Err(format!(
                "{file}: the job has no task: add `sql` (query, inputs, output) or `command` (argv)"
            ));
        }
    };
    let job = JobDef {
        id: job_id(&parsed.name),
        name: parsed.name,
        file: file.to_string(),
        params,
        task,
        created: None,
    };
    job.check_templates()?;
    Ok(job)
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= 128
}

fn yaml_error(file: &str, err: &serde_saphyr::Error) -> String {
    let full = err.to_string();
    let mut first = full.lines().next().unwrap_or("invalid YAML").trim();
    first = first.strip_prefix("error:").unwrap_or(first).trim_start();
    if first.starts_with("line ")
        && let Some(i) = first.find(": ")
    {
        first = &first[i + 2..];
    }
    let message = match first.rfind(" at line ") {
        Some(i) => &first[..i],
        None => first,
    }
    .trim_end_matches(':')
    .replace(", set DuplicateKeyPolicy in Options if acceptable", "");
    match err.location() {
        Some(loc) if loc.line() > 0 => {
            format!("{file}:{}:{}: {message}", loc.line(), loc.column().max(1))
        }
        _ => format!("{file}: {message}"),
    }
}

impl JobDef {
    /// The templates of the task, each with the key it comes from.
    fn templates(&self) -> Vec<(String, &str)> {
        match &self.task {
            Task::Sql(sql) => {
                let mut v = vec![
                    ("sql.query".to_string(), sql.query.as_str()),
                    ("sql.output".to_string(), sql.output.as_str()),
                ];
                for (i, input) in sql.inputs.iter().enumerate() {
                    v.push((format!("sql.inputs[{i}]"), input.as_str()));
                }
                v
            }
            Task::Command(cmd) => {
                let mut v: Vec<(String, &str)> = cmd
                    .argv
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("command.argv[{i}]"), a.as_str()))
                    .collect();
                for (k, val) in &cmd.env {
                    v.push((format!("command.env.{k}"), val.as_str()));
                }
                if let Some(cwd) = &cmd.cwd {
                    v.push(("command.cwd".to_string(), cwd.as_str()));
                }
                v
            }
        }
    }

    /// Every template compiles and refers only to the job's parameters.
    fn check_templates(&self) -> Result<(), String> {
        for (key, text) in self.templates() {
            let tmpl = env()
                .template_from_str(text)
                .map_err(|e| format!("{}: `{key}`: {}", self.file, template_message(&e)))?;
            let mut unknown: Vec<String> = tmpl
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !self.params.contains_key(v))
                .collect();
            unknown.sort();
            if let Some(first) = unknown.first() {
                let names: Vec<&str> = self.params.keys().map(String::as_str).collect();
                let hint = crate::diagnostic::did_you_mean(first, names.iter().copied())
                    .map(|h| format!(" ({h})"))
                    .unwrap_or_default();
                return Err(format!(
                    "{}: `{key}` refers to `{}`, which is not a parameter of this job{hint}; its parameters: {}",
                    self.file,
                    unknown.join("`, `"),
                    list_or_none(&names)
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn info(&self) -> JobInfo {
        JobInfo {
            id: self.id,
            name: self.name.clone(),
            creator: Some("local".to_string()),
            created: self.created.clone(),
            parameters: Some(
                self.params
                    .iter()
                    .map(|(name, p)| JobParam {
                        name: name.clone(),
                        default: p.default.clone(),
                        description: p.description.clone(),
                    })
                    .collect(),
            ),
        }
    }

    /// The parameters of a run: the given ones checked against the definition, defaults
    /// filling the rest, in the definition's order.
    pub(crate) fn resolve_params(
        &self,
        given: &IndexMap<String, String>,
    ) -> Result<IndexMap<String, String>, BackendError> {
        let names: Vec<&str> = self.params.keys().map(String::as_str).collect();
        let mut unknown: Vec<&str> = given
            .keys()
            .map(String::as_str)
            .filter(|k| !self.params.contains_key(*k))
            .collect();
        unknown.sort();
        if let Some(first) = unknown.first() {
            let hint = crate::diagnostic::did_you_mean(first, names.iter().copied())
                .map(|h| format!(" ({h})"))
                .unwrap_or_default();
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!(
                    "job `{}` has no parameter `{}`{hint}; its parameters: {}",
                    self.name,
                    unknown.join("`, `"),
                    list_or_none(&names)
                ),
            ));
        }
        let mut out = IndexMap::new();
        let mut missing = Vec::new();
        for (name, p) in &self.params {
            match given.get(name).or(p.default.as_ref()) {
                Some(v) => {
                    out.insert(name.clone(), v.clone());
                }
                None => missing.push(name.as_str()),
            }
        }
        if !missing.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!(
                    "job `{}` is missing required parameter{} `{}` (no default); its parameters: {}",
                    self.name,
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join("`, `"),
                    list_or_none(&names)
                ),
            ));
        }
        Ok(out)
    }

    /// Renders the task's templates with resolved parameters.
    pub(crate) fn render(
        &self,
        params: &IndexMap<String, String>,
    ) -> Result<RenderedTask, BackendError> {
        let render = |key: &str, text: &str| -> Result<String, BackendError> {
            env()
                .render_str(
                    text,
                    minijinja::Value::from_pairs(
                        params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    ),
                )
                .map_err(|e| {
                    BackendError::new(
                        ErrorKind::Invalid,
                        format!(
                            "job `{}` ({}): rendering `{key}` failed: {}",
                            self.name,
                            self.file,
                            template_message(&e)
                        ),
                    )
                })
        };
        Ok(match &self.task {
            Task::Sql(sql) => RenderedTask::Sql {
                query: render("sql.query", &sql.query)?,
                inputs: sql
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| render(&format!("sql.inputs[{i}]"), t))
                    .collect::<Result<_, _>>()?,
                output: render("sql.output", &sql.output)?,
            },
            Task::Command(cmd) => RenderedTask::Command {
                argv: cmd
                    .argv
                    .iter()
                    .enumerate()
                    .map(|(i, t)| render(&format!("command.argv[{i}]"), t))
                    .collect::<Result<_, _>>()?,
                env: cmd
                    .env
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), render(&format!("command.env.{k}"), t)?)))
                    .collect::<Result<_, BackendError>>()?,
                cwd: cmd
                    .cwd
                    .as_deref()
                    .map(|t| render("command.cwd", t))
                    .transpose()?,
            },
        })
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn template_message(e: &minijinja::Error) -> String {
    let mut m = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    if let Some(line) = e.line() {
        m = format!("{m} (template line {line})");
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: Daily
description: test
parameters:
  Year: {default: "2014", description: The year.}
  Out: {description: Output name.}
sql:
  inputs: [scada]
  output: "{{ Out }}"
  query: SELECT {{ Year | int }} AS y, {{ Out | sql_string }} AS o
"#;

    #[test]
    fn parses_and_renders() {
        let job = parse("jobs/Daily.yaml", GOOD).unwrap();
        assert_eq!(job.id, job_id("Daily"));
        let params = job
            .resolve_params(&IndexMap::from([("Out".to_string(), "it's".to_string())]))
            .unwrap();
        assert_eq!(params["Year"], "2014");
        match job.render(&params).unwrap() {
            RenderedTask::Sql { query, output, .. } => {
                assert_eq!(query, "SELECT 2014 AS y, 'it''s' AS o");
                assert_eq!(output, "it's");
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn parameter_errors() {
        let job = parse("jobs/Daily.yaml", GOOD).unwrap();
        let e = job
            .resolve_params(&IndexMap::from([("Yaer".to_string(), "1".to_string())]))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(
            e.message.contains("`Yaer`") && e.message.contains("Year, Out"),
            "{e}"
        );
        let e = job.resolve_params(&IndexMap::new()).unwrap_err();
        assert!(
            e.message.contains("missing required parameter `Out`"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_named() {
        let e = parse("jobs/X.yaml", "name: X\nsql:\n  qurey: x\n  output: y\n").unwrap_err();
        assert!(e.starts_with("jobs/X.yaml:3:"), "{e}");
        assert!(e.contains("qurey"), "{e}");
        let e = parse("jobs/X.yaml", "name: X\n").unwrap_err();
        assert!(e.contains("no task"), "{e}");
        let e = parse(
            "jobs/X.yaml",
            "name: X\nsql:\n  query: SELECT {{ Nope }}\n  output: y\n",
        )
        .unwrap_err();
        assert!(e.contains("`Nope`"), "{e}");
        let e = parse("jobs/X.yaml", "name: X\ncommand:\n  argv: []\n").unwrap_err();
        assert!(e.contains("argv"), "{e}");
        let e = parse("jobs/X.yaml", "").unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn ids_are_stable_and_small() {
        assert_eq!(job_id("Assessment"), job_id("Assessment"));
        assert_ne!(job_id("Assessment"), job_id("TurbineRanking"));
        for n in ["", "a", "Assessment"] {
            let id = job_id(n);
            assert!(id > 0 && id < (1 << 53));
        }
    }
}
