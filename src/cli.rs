//! The command line: argument parsing and one function per command. Commands print
//! their results and return an [`Exit`]; they hold no logic the library does not.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

use crate::diagnostic::{self, FileReport};
use crate::exit::Exit;
use crate::pipeline::load::{CheckedPipeline, load_file};
use crate::pipeline::schema;
use crate::plan;

#[derive(Parser, Debug)]
#[command(
    name = "dwflow",
    version,
    about = "Runs declarative pipelines of analytics jobs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check pipeline files (schema and semantics), offline; exit 2 on any error.
    Validate(ValidateArgs),
    /// Pipelines whose files, or the local job definitions they use, changed since a git
    /// ref (for CI).
    Changed(crate::changed::ChangedArgs),
    /// Show what a run would do: waves, rendered parameters, placeholders. No side effects.
    Plan(PlanArgs),
    /// Print the step graph as Mermaid or Graphviz DOT.
    Graph(GraphArgs),
    /// Print the JSON Schema of pipeline files.
    Schema,
    /// Run pipelines against a target, with live progress and a summary.
    Run(RunArgs),
    /// Continue an interrupted pipeline run from its journal, without invoking any job
    /// that already ran or is still running.
    Resume(ResumeArgs),
    /// Pipeline runs recorded in the state directory.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Datasets of the target.
    #[command(subcommand)]
    Datasets(DatasetsCommand),
    /// Jobs of the target.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Serve the Data Workbench gateway API and the Databricks Jobs API over a local
    /// workspace, with fault injection, for tests and demos.
    Emulator(crate::emulator::EmulatorArgs),
    /// Run the service: start pipelines on events, schedules, new datasets and by hand,
    /// with an HTTP API, a durable history and a web page.
    Serve(crate::service::ServeArgs),
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Pipeline files, run one after the other.
    #[arg(required = true)]
    pub pipelines: Vec<PathBuf>,
    /// A pipeline parameter, NAME=VALUE (repeatable).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub target: crate::target::TargetArgs,
    #[command(flatten)]
    pub engine: crate::runner::EngineArgs,
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// The pipeline run id (see `dwflow runs list`).
    pub run_id: String,
    /// Values of secret parameters (never journaled), NAME=VALUE.
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    #[command(flatten)]
    pub target: crate::target::TargetArgs,
    #[command(flatten)]
    pub engine: crate::runner::EngineArgs,
}

#[derive(Subcommand, Debug)]
pub enum RunsCommand {
    /// List pipeline runs, newest first.
    List {
        #[arg(long, env = "DWFLOW_STATE_DIR", default_value = ".dwflow/runs")]
        state_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the journal of one pipeline run.
    Show {
        run_id: String,
        #[arg(long, env = "DWFLOW_STATE_DIR", default_value = ".dwflow/runs")]
        state_dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum DatasetsCommand {
    /// List the target's datasets.
    List {
        #[command(flatten)]
        target: crate::target::TargetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a dataset's rows.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t = crate::inspect::RowsFormat::Table)]
        format: crate::inspect::RowsFormat,
        /// At most this many rows (0: all). The table format shows 100 by default.
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        target: crate::target::TargetArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// List the target's jobs: id, name, creator, created.
    List {
        #[command(flatten)]
        target: crate::target::TargetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one job with its parameters, defaults and descriptions.
    Describe {
        /// The job's name, or its numeric id.
        job: String,
        #[command(flatten)]
        target: crate::target::TargetArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// Files or directories (walked for *.yaml and *.yml).
    #[arg(default_value = "pipelines")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ValidateFormat::Human)]
    pub format: ValidateFormat,
    /// Fail (exit 2) on warnings too.
    #[arg(long)]
    pub deny_warnings: bool,
    /// Also check every step's job and parameters against the target (network).
    #[arg(long)]
    pub remote: bool,
    #[command(flatten)]
    pub target: crate::target::TargetArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidateFormat {
    Human,
    Json,
    Github,
}

#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// A pipeline parameter, NAME=VALUE (repeatable).
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = PlanFormat::Human)]
    pub format: PlanFormat,
    /// Look each step's job up in the target and show its parameters' descriptions.
    #[arg(long)]
    pub remote: bool,
    #[command(flatten)]
    pub target: crate::target::TargetArgs,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanFormat {
    Human,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct GraphArgs {
    /// The pipeline file.
    pub pipeline: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Mermaid)]
    pub format: GraphFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

/// Parses arguments, runs the command, and returns the exit status.
pub fn run(cli: Cli) -> Exit {
    match cli.command {
        Command::Validate(args) => validate(args),
        Command::Changed(args) => crate::changed::run(&args),
        Command::Plan(args) => plan_cmd(args),
        Command::Graph(args) => graph(args),
        Command::Schema => {
            print!("{}", schema::pipeline_schema_text());
            Exit::Success
        }
        Command::Run(a) => crate::runner::run(&a.pipelines, &a.params, &a.target, &a.engine),
        Command::Resume(a) => crate::runner::resume(&a.run_id, &a.params, &a.target, &a.engine),
        Command::Runs(RunsCommand::List { state_dir, json }) => {
            crate::runner::runs_list(&state_dir, json)
        }
        Command::Runs(RunsCommand::Show { run_id, state_dir }) => {
            crate::runner::runs_show(&state_dir, &run_id)
        }
        Command::Datasets(DatasetsCommand::List { target, json }) => {
            crate::inspect::datasets_list(&target, json)
        }
        Command::Datasets(DatasetsCommand::Show {
            name,
            format,
            limit,
            target,
        }) => crate::inspect::datasets_show(&target, &name, format, limit),
        Command::Jobs(JobsCommand::List { target, json }) => {
            crate::inspect::jobs_list(&target, json)
        }
        Command::Jobs(JobsCommand::Describe { job, target, json }) => {
            crate::inspect::jobs_describe(&target, &job, json)
        }
        Command::Emulator(a) => crate::emulator::cli::run(&a),
        Command::Serve(a) => crate::service::run(&a),
    }
}

/// Files named by `paths`: files as given, directories walked (sorted, hidden entries
/// skipped) for `*.yaml` / `*.yml`.
pub fn collect_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<FileReport>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            let before = files.len();
            walk(path, &mut files);
            if files.len() == before {
                problems.push(io_report(
                    path,
                    "no *.yaml or *.yml files in this directory",
                ));
            }
        } else if path.exists() {
            files.push(path.clone());
        } else {
            problems.push(io_report(path, "no such file or directory"));
        }
    }
    (files, problems)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

fn io_report(path: &Path, message: &str) -> FileReport {
    FileReport {
        path: path.display().to_string(),
        source: None,
        diagnostics: vec![
            diagnostic::Diagnostic::error(
                "io",
                crate::pipeline::yaml::Pos {
                    line: 1,
                    col: 1,
                    ..Default::default()
                },
                message.to_string(),
            )
            .with_hint("pass pipeline files or directories that contain them"),
        ],
    }
}

/// Validates files in parallel across the machine's cores; reports keep input order.
pub fn validate_files(files: &[PathBuf]) -> Vec<FileReport> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len().max(1));
    if threads <= 1 {
        return files.iter().map(|f| load_file(f).report).collect();
    }
    let chunk = files.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(|f| load_file(f).report).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

fn validate(args: ValidateArgs) -> Exit {
    let (files, mut reports) = collect_files(&args.paths);
    if args.remote {
        match crate::remote_check::validate_remote(&files, &args.target) {
            Ok(r) => reports.extend(r),
            Err(exit) => return exit,
        }
    } else {
        reports.extend(validate_files(&files));
    }
    let errors: usize = reports.iter().map(FileReport::errors).sum();
    let warnings: usize = reports.iter().map(FileReport::warnings).sum();
    let mut out = String::new();
    match args.format {
        ValidateFormat::Human => reports
            .iter()
            .for_each(|r| diagnostic::render_human(r, &mut out)),
        ValidateFormat::Github => reports
            .iter()
            .for_each(|r| diagnostic::render_github(r, &mut out)),
        ValidateFormat::Json => {
            out =
                serde_json::to_string_pretty(&diagnostic::json_list(&reports)).unwrap_or_default();
            out.push('\n');
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    if args.format == ValidateFormat::Human {
        eprintln!(
            "{} file{} checked: {} error{}, {} warning{}",
            files.len(),
            plural(files.len()),
            errors,
            plural(errors),
            warnings,
            plural(warnings)
        );
    }
    if errors > 0 || (args.deny_warnings && warnings > 0) {
        Exit::Invalid
    } else {
        Exit::Success
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Loads one pipeline for a command that needs a valid one; prints findings to stderr.
pub fn load_checked(path: &Path) -> Result<CheckedPipeline, Exit> {
    let loaded = load_file(path);
    if !loaded.report.diagnostics.is_empty() {
        let mut out = String::new();
        diagnostic::render_human(&loaded.report, &mut out);
        eprint!("{out}");
    }
    loaded.checked.ok_or_else(|| {
        eprintln!(
            "error: {} is not a valid pipeline (see above)",
            path.display()
        );
        Exit::Invalid
    })
}

fn plan_cmd(args: PlanArgs) -> Exit {
    let checked = match load_checked(&args.pipeline) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let params = match plan::parse_assignments(&args.params)
        .and_then(|given| plan::resolve_params(&checked.pipeline, &given))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Invalid;
        }
    };
    let mut plan = plan::plan(&checked, &params);
    if args.remote
        && let Err(exit) =
            crate::remote_check::describe_plan_jobs(&checked, &mut plan, &args.target)
    {
        return exit;
    }
    match args.format {
        PlanFormat::Json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&plan).unwrap_or_default()
            );
        }
        PlanFormat::Human => print!("{}", render_plan(&plan)),
    }
    Exit::Success
}

fn render_plan(plan: &plan::Plan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "pipeline: {}", plan.pipeline);
    if !plan.params.is_empty() {
        let _ = writeln!(out, "params:");
        for (k, v) in &plan.params {
            let _ = writeln!(
                out,
                "  {k} = {}",
                crate::pipeline::analyze::canonical_text(v)
            );
        }
    }
    let mut wave = usize::MAX;
    for s in &plan.steps {
        if s.wave != wave {
            wave = s.wave;
            let _ = writeln!(out, "\nwave {wave}:");
        }
        let job = match (&s.job, s.job_id) {
            (Some(j), _) => format!("job {j}"),
            (None, Some(id)) => format!("job_id {id}"),
            _ => "no job".into(),
        };
        let needs = if s.needs.is_empty() {
            String::new()
        } else {
            format!("  (needs {})", s.needs.join(", "))
        };
        let _ = writeln!(out, "  {}  {job}{needs}", s.id);
        if let Some(skip) = &s.skip {
            let _ = writeln!(out, "    skipped: {skip}");
        }
        if let Some(items) = &s.for_each {
            let _ = writeln!(
                out,
                "    for each of {} item(s): {}",
                items.len(),
                items.join(", ")
            );
        }
        render_params(s, &mut out);
        for n in &s.notes {
            let _ = writeln!(out, "    note: {n}");
        }
    }
    out
}

/// A step's parameters; with `--remote`, each one's description beside it, and the job's
/// parameters the step leaves to their defaults.
fn render_params(s: &plan::PlannedStep, out: &mut String) {
    use std::fmt::Write as _;
    let job_params = s.remote.as_ref().and_then(|r| r.parameters.as_ref());
    let defaulted: Vec<&crate::backend::JobParam> = job_params
        .map(|ps| {
            ps.iter()
                .filter(|p| p.default.is_some() && !s.params.contains_key(&p.name))
                .collect()
        })
        .unwrap_or_default();
    let width = s
        .params
        .keys()
        .map(String::len)
        .chain(defaulted.iter().map(|p| p.name.len()))
        .max()
        .unwrap_or(0);
    let describe = |name: &str| -> Option<&str> {
        job_params?
            .iter()
            .find(|p| p.name == name)?
            .description
            .as_deref()
    };
    // Descriptions line up after values of ordinary length.
    let vw = s
        .params
        .values()
        .map(|v| v.chars().count())
        .chain(
            defaulted
                .iter()
                .map(|p| p.default.as_deref().unwrap_or_default().chars().count()),
        )
        .filter(|n| *n <= 40)
        .max()
        .unwrap_or(0);
    for (k, v) in &s.params {
        match describe(k) {
            Some(d) => {
                let _ = writeln!(out, "    {k:width$} = {v:vw$}  # {d}");
            }
            None => {
                let _ = writeln!(out, "    {k:width$} = {v}");
            }
        }
    }
    for p in defaulted {
        let d = p.default.as_deref().unwrap_or_default();
        let desc = p
            .description
            .as_deref()
            .map(|x| format!("; {x}"))
            .unwrap_or_default();
        let _ = writeln!(out, "    {:width$} = {d:vw$}  # job default{desc}", p.name);
    }
    if let Some(r) = &s.remote {
        match (&r.problem, r.job_id, &r.parameters) {
            (Some(p), _, _) => {
                let _ = writeln!(out, "    remote: {p}");
            }
            (None, Some(id), None) => {
                let _ = writeln!(
                    out,
                    "    remote: job id {id}; the target does not say which parameters the job takes"
                );
            }
            (None, Some(id), Some(_)) => {
                let _ = writeln!(out, "    remote: job id {id}");
            }
            _ => {}
        }
    }
}

fn graph(args: GraphArgs) -> Exit {
    let checked = match load_checked(&args.pipeline) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let ids = checked.step_ids();
    let labels: Vec<String> = checked
        .pipeline
        .steps
        .iter()
        .map(|s| {
            let job = s
                .job
                .clone()
                .or_else(|| s.job_id.map(|j| j.to_string()))
                .unwrap_or_default();
            let fan = if s.for_each.is_some() {
                " (for each)"
            } else {
                ""
            };
            format!("{}\n{job}{fan}", s.id)
        })
        .collect();
    let text = match args.format {
        GraphFormat::Mermaid => checked.graph.mermaid(&ids, &labels),
        GraphFormat::Dot => checked.graph.dot(&checked.pipeline.name, &ids, &labels),
    };
    print!("{text}");
    Exit::Success
}
