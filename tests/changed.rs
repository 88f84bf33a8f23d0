//! `dwflow changed`, through the real binary, on real git repositories in temporary
//! directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const PIPELINE_A: &str = "\
name: uses-assessment
steps:
  - id: aggregate
    job: Assessment
  - id: again
    job: Assessment
";

const PIPELINE_B: &str = "\
name: uses-ranking
steps:
  - id: rank
    job: TurbineRanking
";

const JOB_ASSESSMENT: &str = "\
name: Assessment
sql:
  output: out
  query: SELECT 1
";

const JOB_RANKING: &str = "\
name: TurbineRanking
sql:
  output: out
  query: SELECT 2
";

/// A repository with one commit: `pipelines/a.yaml` (uses Assessment), `pipelines/b.yaml`
/// (uses TurbineRanking) and both jobs under `examples/workspace/jobs/`, all below
/// `prefix` (the repository's top level, or a project in a subdirectory of it).
struct Repo {
    dir: tempfile::TempDir,
    /// Where the dwflow project lives inside the repository.
    project: PathBuf,
}

impl Repo {
    fn new(prefix: &str) -> Repo {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let project = dir.path().join(prefix);
        let repo = Repo { dir, project };
        repo.git(&["init", "-q"]);
        repo.write("pipelines/a.yaml", PIPELINE_A);
        repo.write("pipelines/b.yaml", PIPELINE_B);
        repo.write("examples/workspace/jobs/Assessment.yaml", JOB_ASSESSMENT);
        repo.write("examples/workspace/jobs/TurbineRanking.yaml", JOB_RANKING);
        repo.commit("initial");
        repo
    }

    fn top(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file of the project (parents created).
    fn write(&self, rel: &str, text: &str) {
        let path = self.project.join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.project.join(rel)).expect("remove");
    }

    fn commit(&self, message: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
    }

    fn git(&self, args: &[&str]) -> String {
        let out = git_command(self.top())
            .args(args)
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `dwflow changed ARGS` in the project directory.
    fn changed(&self, args: &[&str]) -> Output {
        self.changed_in(&self.project, args)
    }

    fn changed_in(&self, dir: &Path, args: &[&str]) -> Output {
        dwflow(dir, self.top())
            .arg("changed")
            .args(args)
            .output()
            .expect("dwflow runs")
    }

    /// The printed paths of a successful `dwflow changed ARGS` in the project directory.
    fn lines(&self, args: &[&str]) -> Vec<String> {
        lines(&ok(self.changed(args)))
    }
}

/// git with an identity and settings of its own, so that it works on a CI machine
/// without any git configuration and is not disturbed by the developer's.
fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .env("GIT_AUTHOR_NAME", "dwflow tests")
        .env("GIT_AUTHOR_EMAIL", "tests@dwflow.invalid")
        .env("GIT_COMMITTER_NAME", "dwflow tests")
        .env("GIT_COMMITTER_EMAIL", "tests@dwflow.invalid")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    cmd
}

/// The dwflow binary, run in `dir`, with git not looking above `ceiling`'s parent and not
/// reading the developer's configuration.
fn dwflow(dir: &Path, ceiling: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dwflow"));
    cmd.current_dir(dir)
        .env_remove("DWFLOW_WORKSPACE")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", ceiling)
        .env(
            "GIT_CEILING_DIRECTORIES",
            ceiling.parent().unwrap_or(ceiling),
        );
    cmd
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok(out: Output) -> Output {
    assert_eq!(
        out.status.code(),
        Some(0),
        "dwflow changed failed:\n{}",
        stderr(&out)
    );
    out
}

fn lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn an_unchanged_repository_lists_nothing() {
    let repo = Repo::new("");
    let out = ok(repo.changed(&["--since", "HEAD"]));
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr(&out).contains("0 pipelines changed since HEAD"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_modified_pipeline_is_listed() {
    let repo = Repo::new("");
    repo.write("pipelines/a.yaml", &format!("{PIPELINE_A}# edited\n"));
    // Uncommitted: the work tree counts.
    assert_eq!(repo.lines(&["--since", "HEAD"]), ["pipelines/a.yaml"]);
    // Committed: the same against the commit before.
    repo.commit("edit a");
    assert_eq!(repo.lines(&["--since", "HEAD~1"]), ["pipelines/a.yaml"]);
    assert!(repo.lines(&["--since", "HEAD"]).is_empty());
}

#[test]
fn a_pipeline_using_a_changed_job_is_listed_and_one_that_does_not_is_not() {
    let repo = Repo::new("");
    repo.write(
        "examples/workspace/jobs/Assessment.yaml",
        &JOB_ASSESSMENT.replace("SELECT 1", "SELECT 10"),
    );
    repo.commit("change the Assessment job");
    let out = ok(repo.changed(&["--since", "HEAD~1", "--format", "json"]));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        list,
        json!([{
            "path": "pipelines/a.yaml",
            "pipeline": "uses-assessment",
            "reasons": ["job `Assessment` changed (examples/workspace/jobs/Assessment.yaml)"]
        }])
    );
}

#[test]
fn a_job_is_matched_by_job_id_too_and_a_deleted_job_counts_as_changed() {
    let repo = Repo::new("");
    // The local environment's id of `TurbineRanking` (what `dwflow jobs list` shows).
    let id = dwflow::backend::local::job_id("TurbineRanking");
    repo.write(
        "pipelines/by-id.yaml",
        &format!("name: by-id\nsteps:\n  - id: rank\n    job_id: {id}\n"),
    );
    repo.commit("a pipeline by job id");
    repo.remove("examples/workspace/jobs/TurbineRanking.yaml");
    assert_eq!(
        repo.lines(&["--since", "HEAD"]),
        ["pipelines/b.yaml", "pipelines/by-id.yaml"]
    );
}

#[test]
fn an_untracked_pipeline_is_listed_and_a_deleted_one_is_not() {
    let repo = Repo::new("");
    repo.write(
        "pipelines/new/c.yml",
        "name: c\nsteps:\n  - id: x\n    job: Other\n",
    );
    repo.remove("pipelines/b.yaml");
    assert_eq!(repo.lines(&["--since", "HEAD"]), ["pipelines/new/c.yml"]);
    // An ignored file is not part of the change.
    repo.write(".gitignore", "scratch/\n");
    repo.write("pipelines/scratch/d.yaml", "name: d\nsteps: []\n");
    assert_eq!(repo.lines(&["--since", "HEAD"]), ["pipelines/new/c.yml"]);
}

#[test]
fn a_renamed_pipeline_is_listed_under_its_new_name() {
    let repo = Repo::new("");
    repo.git(&["mv", "pipelines/b.yaml", "pipelines/ranking.yaml"]);
    repo.commit("rename");
    assert_eq!(
        repo.lines(&["--since", "HEAD~1"]),
        ["pipelines/ranking.yaml"]
    );
}

#[test]
fn a_changed_pipeline_that_is_invalid_is_still_listed() {
    let repo = Repo::new("");
    repo.write("pipelines/a.yaml", "name: [unclosed\n");
    let out = ok(repo.changed(&["--since", "HEAD", "--format", "json"]));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        list,
        json!([{"path": "pipelines/a.yaml", "pipeline": null, "reasons": ["file changed"]}])
    );
}

#[test]
fn paths_work_from_a_subdirectory_and_in_a_project_below_the_top_level() {
    // The dwflow project is `analytics/` of a larger repository.
    let repo = Repo::new("analytics");
    repo.write("pipelines/a.yaml", &format!("{PIPELINE_A}# edited\n"));
    repo.write(
        "examples/workspace/jobs/TurbineRanking.yaml",
        &JOB_RANKING.replace("SELECT 2", "SELECT 20"),
    );
    assert_eq!(
        repo.lines(&["--since", "HEAD"]),
        ["pipelines/a.yaml", "pipelines/b.yaml"]
    );

    // From inside pipelines/, naming the directory and the workspace from there.
    let inside = repo.project.join("pipelines");
    let out = ok(repo.changed_in(
        &inside,
        &[
            "--since",
            "HEAD",
            ".",
            "--workspace",
            "../examples/workspace",
        ],
    ));
    assert_eq!(lines(&out), ["a.yaml", "b.yaml"]);

    // From a sibling directory, with the workspace in the environment: the paths climb.
    let sibling = repo.top().join("docs");
    std::fs::create_dir_all(&sibling).expect("mkdir");
    let out = ok(dwflow(&sibling, repo.top())
        .env("DWFLOW_WORKSPACE", "../analytics/examples/workspace")
        .args(["changed", "--since", "HEAD", "--format", "json"])
        .arg("../analytics/pipelines")
        .output()
        .expect("dwflow runs"));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list[0]["path"], "../analytics/pipelines/a.yaml");
    assert_eq!(list[1]["path"], "../analytics/pipelines/b.yaml");
    assert_eq!(
        list[1]["reasons"],
        json!([
            "job `TurbineRanking` changed (../analytics/examples/workspace/jobs/TurbineRanking.yaml)"
        ])
    );

    // With an absolute path, the output is still relative to the current directory, and
    // each printed path is a file there; the project's workspace is found from inside.
    let abs = repo.project.join("pipelines");
    let out = ok(repo.changed_in(
        &inside,
        &["--since", "HEAD", abs.to_str().expect("UTF-8 path")],
    ));
    assert_eq!(lines(&out), ["a.yaml", "b.yaml"]);
    for line in lines(&out) {
        assert!(inside.join(line).is_file());
    }
}

#[test]
fn an_unknown_ref_exits_2_naming_it() {
    let repo = Repo::new("");
    let out = repo.changed(&["--since", "no-such-branch"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert!(
        stderr(&out).contains("`no-such-branch`"),
        "{}",
        stderr(&out)
    );

    let out = repo.changed(&["--since=--output=x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!repo.project.join("x").exists());
}

#[test]
fn a_missing_path_exits_2_unless_the_change_deleted_it() {
    let repo = Repo::new("");
    let out = repo.changed(&["--since", "HEAD", "pipelnes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("pipelnes"), "{}", stderr(&out));

    repo.remove("pipelines/a.yaml");
    repo.remove("pipelines/b.yaml");
    std::fs::remove_dir(repo.project.join("pipelines")).expect("rmdir");
    assert!(repo.lines(&["--since", "HEAD"]).is_empty());
}

#[test]
fn outside_a_git_repository_exits_2() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir(dir.path().join("pipelines")).expect("mkdir");
    std::fs::write(dir.path().join("pipelines/a.yaml"), PIPELINE_A).expect("write");
    let out = dwflow(dir.path(), dir.path())
        .args(["changed", "--since", "HEAD"])
        .output()
        .expect("dwflow runs");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("git"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn without_git_exits_3() {
    let repo = Repo::new("");
    let empty = tempfile::tempdir().expect("a temporary directory");
    let out = dwflow(&repo.project, repo.top())
        .env("PATH", empty.path())
        .args(["changed", "--since", "HEAD"])
        .output()
        .expect("dwflow runs");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("git"), "{}", stderr(&out));
}

#[test]
fn json_lists_path_pipeline_and_reasons() {
    let repo = Repo::new("");
    repo.write("pipelines/a.yaml", &format!("{PIPELINE_A}# edited\n"));
    repo.write(
        "examples/workspace/jobs/Assessment.yaml",
        &JOB_ASSESSMENT.replace("SELECT 1", "SELECT 10"),
    );
    let out = ok(repo.changed(&["--since", "HEAD", "--format", "json"]));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        list,
        json!([{
            "path": "pipelines/a.yaml",
            "pipeline": "uses-assessment",
            "reasons": [
                "file changed",
                "job `Assessment` changed (examples/workspace/jobs/Assessment.yaml)"
            ]
        }])
    );
    // Nothing changed: an empty list, still JSON.
    let clean = Repo::new("");
    let out = ok(clean.changed(&["--since", "HEAD", "--format", "json"]));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list, json!([]));
}

#[test]
fn defaults_are_found_from_a_subdirectory_and_a_named_workspace_must_exist() {
    let repo = Repo::new("");
    repo.write(
        "examples/workspace/jobs/TurbineRanking.yaml",
        "name: TurbineRanking\nsql:\n  output: out\n  query: SELECT 3\n",
    );
    // From examples/: the project's pipelines/ and examples/workspace are the defaults.
    let sub = repo.top().join("examples");
    let out = ok(repo.changed_in(&sub, &["--since", "HEAD"]));
    assert_eq!(lines(&out), ["../pipelines/b.yaml"]);
    // A workspace asked for by name that is not there is an error, not a silent skip.
    let out = repo.changed(&["--since", "HEAD", "--workspace", "nonexistent/ws"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nonexistent/ws"), "{}", stderr(&out));
}
