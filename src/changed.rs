//! `dwflow changed`: the pipelines a git change touches, for CI that runs what was merged
//! (`dwflow run $(dwflow changed --since origin/main)`).
//!
//! This module owns asking git what changed since a ref (commits since it, staged and
//! unstaged edits, untracked files), mapping git's repository-relative paths to and from
//! the user's paths, and deciding which pipelines are affected: those whose own file
//! changed, and those with a step that uses a job of the local workspace whose definition
//! file (`jobs/NAME.yaml`) changed. It neither validates nor runs anything: a changed
//! pipeline that is invalid is still listed, so that the run that follows fails loudly on
//! it instead of the change going unnoticed. A deleted pipeline is not listed: there is
//! nothing left to run.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Output, Stdio};

use clap::ValueEnum;
use serde::Serialize;

use crate::exit::Exit;
use crate::pipeline::yaml::{self, NodeValue};

/// Arguments of `dwflow changed`.
#[derive(clap::Args, Debug)]
pub struct ChangedArgs {
    /// The git ref (branch, tag or commit) to compare with, e.g. `origin/main`. Uncommitted
    /// and untracked files of the work tree count as changes too.
    #[arg(long, value_name = "REF")]
    pub since: String,
    /// Pipeline files or directories (walked for *.yaml and *.yml) [default:
    /// `pipelines/` of the current directory or the nearest parent in the repository].
    pub paths: Vec<PathBuf>,
    /// Local workspace whose `jobs/` definitions count: a pipeline using a changed job is
    /// listed [default: `examples/workspace` of the current directory or the nearest
    /// parent in the repository].
    #[arg(long, env = "DWFLOW_WORKSPACE", value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// Output format: `human` prints one path per line, for `dwflow run $(...)`.
    #[arg(long, value_enum, default_value_t = ChangedFormat::Human)]
    pub format: ChangedFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangedFormat {
    Human,
    Json,
}

/// A pipeline that the change affects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedPipeline {
    /// The file, relative to the current directory.
    pub path: String,
    /// The pipeline's `name`, when the file has one that can be read.
    pub pipeline: Option<String>,
    /// Why it is listed: `file changed`, or `job `X` changed (PATH)`.
    pub reasons: Vec<String>,
}

/// Why the command could not answer, and the exit status that says so.
#[derive(Debug)]
struct Failure {
    exit: Exit,
    message: String,
}

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Failure {
            exit: Exit::Invalid,
            message: message.into(),
        }
    }
    fn environment(message: impl Into<String>) -> Self {
        Failure {
            exit: Exit::Environment,
            message: message.into(),
        }
    }
}

/// Runs `dwflow changed`.
pub fn run(args: &ChangedArgs) -> Exit {
    let list = match changed(args) {
        Ok(list) => list,
        Err(f) => {
            eprintln!("error: {}", f.message);
            return f.exit;
        }
    };
    let mut out = String::new();
    match args.format {
        ChangedFormat::Human => {
            for p in &list {
                out.push_str(&p.path);
                out.push('\n');
            }
        }
        ChangedFormat::Json => {
            out = serde_json::to_string_pretty(&list).unwrap_or_default();
            out.push('\n');
        }
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
    if args.format == ChangedFormat::Human {
        // On stderr, so that `$(dwflow changed ...)` sees only the paths.
        eprintln!(
            "{} pipeline{} changed since {}",
            list.len(),
            if list.len() == 1 { "" } else { "s" },
            args.since
        );
    }
    Exit::Success
}

fn changed(args: &ChangedArgs) -> Result<Vec<ChangedPipeline>, Failure> {
    // Canonical, so that it compares equal to git's (canonical) top level.
    let cwd = std::env::current_dir()
        .and_then(std::fs::canonicalize)
        .map_err(|e| Failure::environment(format!("cannot read the current directory: {e}")))?;
    let repo = Repo::discover(&cwd)?;
    let commit = repo.resolve_commit(&args.since)?;
    let changed = repo.changed_paths(&commit)?;

    // Defaults are the repository's, so that the answer does not depend on the
    // directory CI happens to run in.
    let paths = if args.paths.is_empty() {
        vec![find_up(&cwd, &repo.top, "pipelines")]
    } else {
        args.paths.clone()
    };
    let files = pipeline_files(&paths, &cwd, &repo, &changed)?;
    let workspace = args
        .workspace
        .clone()
        .unwrap_or_else(|| find_up(&cwd, &repo.top, crate::target::DEFAULT_WORKSPACE));
    let jobs = changed_jobs(&workspace, args.workspace.is_some(), &cwd, &repo, &changed)?;

    // Keyed by the printed path: sorted, and a file named twice is listed once.
    let mut listed: BTreeMap<String, ChangedPipeline> = BTreeMap::new();
    for file in files {
        let abs = absolute(&cwd, &file);
        let file_changed = repo.relative(&abs).is_some_and(|r| changed.contains(&r));
        if !file_changed && jobs.is_empty() {
            continue; // nothing could make it affected: skip reading it
        }
        let (name, uses) = read_pipeline(&file);
        let mut reasons = Vec::new();
        if file_changed {
            reasons.push("file changed".to_string());
        }
        for used in &uses {
            let Some(job) = jobs.iter().find(|j| used.is(j)) else {
                continue;
            };
            let reason = format!("job `{}` changed ({})", job.name, job.file);
            if !reasons.contains(&reason) {
                reasons.push(reason);
            }
        }
        if reasons.is_empty() {
            continue;
        }
        let path = display(&relative_to(&abs, &cwd));
        listed.insert(
            path.clone(),
            ChangedPipeline {
                path,
                pipeline: name,
                reasons,
            },
        );
    }
    Ok(listed.into_values().collect())
}

/// The pipeline files named by `paths`, walked like `dwflow validate` walks them. A path
/// that does not exist is an error (a typo would otherwise list nothing, and CI would
/// run nothing), unless the change itself deleted it.
fn pipeline_files(
    paths: &[PathBuf],
    cwd: &Path,
    repo: &Repo,
    changed: &HashSet<PathBuf>,
) -> Result<Vec<PathBuf>, Failure> {
    let mut existing = Vec::new();
    for path in paths {
        if path.exists() {
            existing.push(path.clone());
            continue;
        }
        let deleted = repo
            .relative(&normalize(&cwd.join(path)))
            .is_some_and(|rel| changed.iter().any(|c| c.starts_with(&rel)));
        if !deleted {
            return Err(Failure::invalid(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
    }
    // The only problems left are directories without pipelines: nothing to run, which
    // for this command is an empty answer rather than a mistake.
    let (files, _empty_dirs) = crate::cli::collect_files(&existing);
    Ok(files)
}

/// A job definition file of the local workspace that changed.
#[derive(Debug)]
struct ChangedJob {
    /// The job's name: its file's name without `.yaml`/`.yml`. The local environment
    /// finds a job by that file name and refuses a file whose `name:` differs, so the
    /// file name is the name under which pipelines can use it, also for a file that was
    /// deleted or no longer parses.
    name: String,
    /// Its id in the local environment, for steps that give `job_id`.
    id: u64,
    /// The file, relative to the current directory, for the reason.
    file: String,
}

/// `rel` in the nearest directory from `cwd` up to the repository's top level that has
/// it (the project may live below the top level); `rel` itself when none has.
fn find_up(cwd: &Path, top: &Path, rel: &str) -> PathBuf {
    cwd.ancestors()
        .take_while(|d| d.starts_with(top))
        .map(|d| d.join(rel))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(rel))
}

/// The changed job files directly under `<workspace>/jobs/` (where the local environment
/// looks for them), sorted by name, one per name.
fn changed_jobs(
    workspace: &Path,
    explicit: bool,
    cwd: &Path,
    repo: &Repo,
    changed: &HashSet<PathBuf>,
) -> Result<Vec<ChangedJob>, Failure> {
    // A default workspace that does not exist is normal where pipelines run on a remote
    // target only; one asked for by name must exist, or CI would skip runs silently.
    let Ok(root) = std::fs::canonicalize(cwd.join(workspace)) else {
        if explicit {
            return Err(Failure::invalid(format!(
                "workspace {} does not exist (check --workspace / DWFLOW_WORKSPACE)",
                workspace.display()
            )));
        }
        return Ok(Vec::new());
    };
    let Some(jobs_dir) = repo.relative(&root.join("jobs")) else {
        if explicit {
            eprintln!(
                "warning: workspace {} is outside the git repository: job definitions are not compared",
                workspace.display()
            );
        }
        return Ok(Vec::new());
    };
    let mut jobs: Vec<ChangedJob> = changed
        .iter()
        .filter(|p| p.parent() == Some(jobs_dir.as_path()))
        .filter_map(|p| {
            let file_name = p.file_name()?.to_str()?;
            if file_name.starts_with('.') {
                return None; // hidden files are not jobs
            }
            let stem = file_name
                .strip_suffix(".yaml")
                .or_else(|| file_name.strip_suffix(".yml"))?;
            Some(ChangedJob {
                name: stem.to_string(),
                id: crate::backend::local::job_id(stem),
                file: display(&relative_to(&repo.top.join(p), cwd)),
            })
        })
        .collect();
    jobs.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.file.cmp(&b.file)));
    jobs.dedup_by(|a, b| a.name == b.name);
    Ok(jobs)
}

/// How a step names its job.
#[derive(Debug)]
enum UsedJob {
    Name(String),
    Id(u64),
}

impl UsedJob {
    fn is(&self, job: &ChangedJob) -> bool {
        match self {
            UsedJob::Name(n) => *n == job.name,
            UsedJob::Id(id) => *id == job.id,
        }
    }
}

/// The pipeline's name and the jobs its steps use, in step order. Read from the YAML
/// tree rather than the checked model, so that a pipeline with unrelated errors still
/// shows which jobs it uses; a file that cannot be read or parsed uses none.
fn read_pipeline(path: &Path) -> (Option<String>, Vec<UsedJob>) {
    // The parser refuses larger files anyway; do not read one into memory first.
    let fits = std::fs::metadata(path).is_ok_and(|m| m.len() <= yaml::MAX_FILE_BYTES as u64);
    let Some(Ok(bytes)) = fits.then(|| std::fs::read(path)) else {
        return (None, Vec::new());
    };
    let Ok(tree) = yaml::parse(&bytes) else {
        return (None, Vec::new());
    };
    // Spans index the text without a byte order mark (as in `pipeline::load`).
    let text = String::from_utf8_lossy(&bytes);
    let source = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let name = match tree.lookup("/name", source).map(|n| &n.value) {
        Some(NodeValue::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let mut uses = Vec::new();
    if let Some(NodeValue::Seq(steps)) = tree.lookup("/steps", source).map(|n| &n.value) {
        for step in steps {
            match step.lookup("/job", source).map(|n| &n.value) {
                Some(NodeValue::Str(s)) => uses.push(UsedJob::Name(s.clone())),
                _ => match step.lookup("/job_id", source).map(|n| &n.value) {
                    Some(NodeValue::UInt(id)) => uses.push(UsedJob::Id(*id)),
                    Some(NodeValue::Int(id)) => {
                        if let Ok(id) = u64::try_from(*id) {
                            uses.push(UsedJob::Id(id));
                        }
                    }
                    _ => {}
                },
            }
        }
    }
    (name, uses)
}

/// The git work tree that contains the current directory. Every git command runs at its
/// top level, so that the paths git prints are relative to `top` whatever the current
/// directory and whatever `diff.relative` says.
struct Repo {
    /// Canonical.
    top: PathBuf,
}

impl Repo {
    fn discover(cwd: &Path) -> Result<Repo, Failure> {
        let out = git(cwd, &["rev-parse", "--show-toplevel"])?;
        if !out.status.success() {
            return Err(Failure::invalid(format!(
                "{} is not in a git work tree: `dwflow changed` asks git what changed, so run it inside the repository ({})",
                cwd.display(),
                git_message(&out)
            )));
        }
        let stdout = out.stdout.strip_suffix(b"\n").unwrap_or(&out.stdout);
        let top = path_from_git(stdout);
        let top = std::fs::canonicalize(&top).map_err(|e| {
            Failure::environment(format!(
                "cannot read the repository's top level {}: {e}",
                top.display()
            ))
        })?;
        Ok(Repo { top })
    }

    /// The commit `rev` names, as a full object id.
    fn resolve_commit(&self, rev: &str) -> Result<String, Failure> {
        // git would read a leading `-` as an option, not a ref.
        if rev.trim().is_empty() || rev.starts_with('-') {
            return Err(Failure::invalid(format!(
                "`{rev}` is not a git ref: give a branch, tag or commit, e.g. `--since origin/main`"
            )));
        }
        let spec = format!("{rev}^{{commit}}");
        let out = git(&self.top, &["rev-parse", "--verify", "--quiet", &spec])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || id.is_empty() {
            return Err(Failure::invalid(format!(
                "unknown git ref `{rev}`: no commit of that name in {} (in a shallow clone, fetch the history first: `git fetch --unshallow`, or `fetch-depth: 0` with actions/checkout)",
                self.top.display()
            )));
        }
        Ok(id)
    }

    /// Repository-relative paths that differ between `commit` and the work tree
    /// (committed, staged or not, deleted included), and untracked files that are not
    /// ignored.
    fn changed_paths(&self, commit: &str) -> Result<HashSet<PathBuf>, Failure> {
        // `--no-renames`: a renamed file is its old path deleted and its new one added;
        // with rename detection only the new one would be named. `-z`: paths as they
        // are, unquoted.
        let diff = self.git_paths(&["diff", "--name-only", "--no-renames", "-z", commit, "--"])?;
        let untracked = self.git_paths(&["ls-files", "--others", "--exclude-standard", "-z"])?;
        Ok(diff.into_iter().chain(untracked).collect())
    }

    fn git_paths(&self, args: &[&str]) -> Result<Vec<PathBuf>, Failure> {
        let out = git(&self.top, args)?;
        if !out.status.success() {
            return Err(Failure::environment(format!(
                "`git {}` failed: {}",
                args.join(" "),
                git_message(&out)
            )));
        }
        Ok(out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(path_from_git)
            .collect())
    }

    /// `abs` relative to the top level; `None` outside the work tree.
    fn relative(&self, abs: &Path) -> Option<PathBuf> {
        abs.strip_prefix(&self.top).ok().map(Path::to_path_buf)
    }
}

/// Runs git in `dir`; only a git that cannot be started is an error here.
fn git(dir: &Path, args: &[&str]) -> Result<Output, Failure> {
    Command::new("git")
        .args(args)
        .current_dir(dir)
        // A read-only question: do not refresh (and lock) the index while answering it.
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            let why = if e.kind() == std::io::ErrorKind::NotFound {
                "git is not installed or not on PATH".to_string()
            } else {
                e.to_string()
            };
            Failure::environment(format!("cannot run git: {why} (`dwflow changed` needs it)"))
        })
}

/// git's own error message, on one line.
fn git_message(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        format!("git exited with {}", out.status)
    } else {
        format!("git: {text}")
    }
}

#[cfg(unix)]
fn path_from_git(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

#[cfg(not(unix))]
fn path_from_git(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// `path` made absolute with its directory canonicalized (so it compares with git's
/// canonical top level), but not the file itself: a symlinked pipeline is the link
/// that git tracks.
fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    let joined = cwd.join(path);
    match (joined.parent(), joined.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(joined),
        _ => joined,
    }
}

/// `.` and `..` resolved in the text, for a path that no longer exists on disk.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` relative to `base`, both absolute and canonical (so `..` means the parent on
/// disk too).
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let p: Vec<Component> = path.components().collect();
    let b: Vec<Component> = base.components().collect();
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out = PathBuf::new();
    for _ in common..b.len() {
        out.push("..");
    }
    out.extend(&p[common..]);
    out
}

/// A path as printed: one that starts with `-` gets `./`, so that `dwflow run $(...)`
/// does not read it as an option.
fn display(path: &Path) -> String {
    let text = path.display().to_string();
    if text.starts_with('-') {
        format!("./{text}")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_and_descend() {
        let r = |p: &str, b: &str| relative_to(Path::new(p), Path::new(b));
        assert_eq!(
            r("/r/pipelines/a.yaml", "/r"),
            Path::new("pipelines/a.yaml")
        );
        assert_eq!(
            r("/r/pipelines/a.yaml", "/r/sub"),
            Path::new("../pipelines/a.yaml")
        );
        assert_eq!(r("/r/a.yaml", "/r/x/y"), Path::new("../../a.yaml"));
    }

    #[test]
    fn normalize_resolves_dots() {
        assert_eq!(normalize(Path::new("/r/sub/../p/./a")), Path::new("/r/p/a"));
    }

    #[test]
    fn a_leading_dash_is_not_an_option() {
        assert_eq!(display(Path::new("-x.yaml")), "./-x.yaml");
        assert_eq!(display(Path::new("p/-x.yaml")), "p/-x.yaml");
    }
}
