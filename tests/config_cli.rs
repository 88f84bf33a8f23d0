//! The configuration file and target selection through the real binary: precedence of
//! `--target` / `DWFLOW_TARGET` / `default_target` and of `--config` / `DWFLOW_CONFIG` /
//! `./dwflow.yaml`, errors with positions, secrets refused in the file, missing
//! credentials and unreachable targets (exit 3).

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;

const VARS: &[&str] = &[
    "DWFLOW_TARGET",
    "DWFLOW_CONFIG",
    "DWFLOW_WORKSPACE",
    "DW_CLIENT_ID",
    "DW_CLIENT_SECRET",
    "DW_SUBSCRIPTION_KEY",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_ID",
    "DATABRICKS_CLIENT_SECRET",
];

fn dwflow(dir: &Path) -> Command {
    let mut cmd = Command::cargo_bin("dwflow").expect("the dwflow binary is built");
    cmd.current_dir(dir);
    for v in VARS {
        cmd.env_remove(v);
    }
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write(root: &Path, rel: &str, body: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn job(name: &str) -> String {
    format!(
        "name: {name}\nparameters:\n  Out: {{description: Where to write.}}\nsql:\n  inputs: []\n  output: \"{{{{ Out }}}}\"\n  query: SELECT 1 AS x\n"
    )
}

/// A directory with two local workspaces (job JobA in `wa`, JobB in `wb`) and two
/// configuration files choosing between them.
fn setup() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    write(root, "wa/jobs/JobA.yaml", &job("JobA"));
    write(root, "wb/jobs/JobB.yaml", &job("JobB"));
    std::fs::create_dir_all(root.join("wa/datasets")).unwrap();
    std::fs::create_dir_all(root.join("wb/datasets")).unwrap();
    let targets = "targets:\n  a:\n    backend: local\n    workspace: wa\n  b:\n    backend: local\n    workspace: wb\n";
    write(
        root,
        "dwflow.yaml",
        &format!("default_target: a\n{targets}"),
    );
    write(root, "other.yaml", &format!("default_target: b\n{targets}"));
    d
}

/// Which job the selected target lists.
fn listed(cmd: &mut Command, extra: &[&str]) -> String {
    let out = cmd.args(["jobs", "list"]).args(extra).output().unwrap();
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    if o.contains("JobA") {
        "a".into()
    } else if o.contains("JobB") {
        "b".into()
    } else {
        panic!("neither job listed: {o}")
    }
}

#[test]
fn target_selection_precedence() {
    let d = setup();
    let root = d.path();
    // default_target of ./dwflow.yaml.
    assert_eq!(listed(&mut dwflow(root), &[]), "a");
    // DWFLOW_TARGET beats default_target; --target beats DWFLOW_TARGET.
    assert_eq!(listed(dwflow(root).env("DWFLOW_TARGET", "b"), &[]), "b");
    assert_eq!(
        listed(dwflow(root).env("DWFLOW_TARGET", "b"), &["--target", "a"]),
        "a"
    );
    // DWFLOW_CONFIG beats ./dwflow.yaml; --config beats DWFLOW_CONFIG.
    assert_eq!(
        listed(dwflow(root).env("DWFLOW_CONFIG", "other.yaml"), &[]),
        "b"
    );
    assert_eq!(
        listed(
            dwflow(root).env("DWFLOW_CONFIG", "other.yaml"),
            &["--config", "dwflow.yaml"]
        ),
        "a"
    );
    // `local` is the implicit local target on --workspace.
    assert_eq!(
        listed(
            &mut dwflow(root),
            &["--target", "local", "--workspace", "wb"]
        ),
        "b"
    );
    // --workspace overrides a configured local target's directory.
    assert_eq!(listed(&mut dwflow(root), &["--workspace", "wb"]), "b");
}

#[test]
fn without_a_configuration_the_target_is_local() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "w/jobs/JobA.yaml", &job("JobA"));
    std::fs::create_dir_all(d.path().join("w/datasets")).unwrap();
    assert_eq!(
        listed(dwflow(d.path()).env("DWFLOW_WORKSPACE", "w"), &[]),
        "a"
    );
    // The default examples/workspace, which this directory lacks: a usage error, exit 2.
    let out = dwflow(d.path()).args(["jobs", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("examples/workspace does not exist"));
    // A named target without any configuration file: exit 2.
    let out = dwflow(d.path())
        .args(["jobs", "list", "--target", "dev"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("no configuration file"),
        "{}",
        text(&out).1
    );
}

#[test]
fn configuration_errors_have_positions_and_hints() {
    let d = setup();
    write(
        d.path(),
        "dwflow.yaml",
        "targets:\n  dev:\n    backend: workbench\n    workspace_id: 00000000-0000-4000-8000-000000000001\n    base_ulr: https://x\n",
    );
    let out = dwflow(d.path()).args(["jobs", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out).1;
    assert!(
        e.contains("dwflow.yaml:5:5: unknown setting `base_ulr`"),
        "{e}"
    );
    assert!(e.contains("hint: did you mean `base_url`?"), "{e}");

    let out = dwflow(d.path())
        .args(["jobs", "list", "--target", "deb"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    // An unknown target name.
    write(
        d.path(),
        "dwflow.yaml",
        "targets:\n  dev:\n    backend: local\n    workspace: wa\n",
    );
    let out = dwflow(d.path())
        .args(["jobs", "list", "--target", "deb"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("did you mean `dev`?"),
        "{}",
        text(&out).1
    );
}

#[test]
fn a_secret_in_the_file_is_refused_and_not_repeated() {
    let d = setup();
    write(
        d.path(),
        "dwflow.yaml",
        "default_target: dev\ntargets:\n  dev:\n    backend: workbench\n    workspace_id: 00000000-0000-4000-8000-000000000001\n    client_secret: Zq8~pasted-secret-value\n",
    );
    for args in [
        &["jobs", "list"][..],
        &["validate", "--remote", "x.yaml"][..],
    ] {
        let out = dwflow(d.path()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let (o, e) = text(&out);
        assert!(e.contains("dwflow.yaml:6:"), "{e}");
        assert!(e.contains("client_secret_env"), "{e}");
        assert!(
            !o.contains("pasted-secret") && !e.contains("pasted-secret"),
            "{o}{e}"
        );
    }
}

#[test]
fn missing_credentials_and_unreachable_targets_exit_3() {
    let d = setup();
    // Nothing listens on this port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    write(
        d.path(),
        "dwflow.yaml",
        &format!(
            "targets:\n  wb:\n    backend: workbench\n    base_url: http://127.0.0.1:{port}/v2\n    token_url: http://127.0.0.1:{port}/oauth2/token\n    workspace_id: 00000000-0000-4000-8000-000000000001\n    retry_budget: 0s\n  db:\n    backend: databricks\n    host: http://127.0.0.1:{port}\n    retry_budget: 1s\n"
        ),
    );
    write(
        d.path(),
        "p.yaml",
        "name: p\nsteps:\n  - id: a\n    job: JobA\n    params: {Out: x}\n",
    );
    // No credentials in the environment: the message names the variable.
    let out = dwflow(d.path())
        .args(["jobs", "list", "--target", "wb"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("DW_SUBSCRIPTION_KEY"),
        "{}",
        text(&out).1
    );
    let out = dwflow(d.path())
        .args(["jobs", "list", "--target", "db"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out).1.contains("DATABRICKS_TOKEN"),
        "{}",
        text(&out).1
    );
    // Credentials, but nobody answers.
    let secret = "cs-secret-never-shown";
    for target in ["wb", "db"] {
        let out = dwflow(d.path())
            .env("DW_CLIENT_ID", "id")
            .env("DW_CLIENT_SECRET", secret)
            .env("DW_SUBSCRIPTION_KEY", "sk-never-shown")
            .env("DATABRICKS_TOKEN", "dapi-never-shown")
            .args(["validate", "--remote", "p.yaml", "--target", target])
            .output()
            .unwrap();
        let (o, e) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{target}: {o}{e}");
        assert!(e.contains("could not connect"), "{e}");
        for s in [secret, "sk-never-shown", "dapi-never-shown"] {
            assert!(!o.contains(s) && !e.contains(s), "{o}{e}");
        }
    }
}

#[test]
fn validate_remote_reports_jobs_and_parameters_on_a_local_target() {
    let d = setup();
    write(
        d.path(),
        "p.yaml",
        "name: p\nsteps:\n  - id: a\n    job: JobA\n    params:\n      Outt: x\n  - id: b\n    job: JobZ\n",
    );
    let out = dwflow(d.path())
        .args(["validate", "--remote", "p.yaml", "--format", "json"])
        .output()
        .unwrap();
    let (o, e) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{o}{e}");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let codes: Vec<(String, u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap().to_string(),
                d["line"].as_u64().unwrap(),
                d["column"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("remote-missing-param".to_string(), 5, 5),
            ("remote-unknown-param".to_string(), 6, 7),
            ("remote-unknown-job".to_string(), 8, 10),
        ],
        "{o}"
    );
    // Offline, the same file is valid.
    let out = dwflow(d.path())
        .args(["validate", "p.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn the_sample_configuration_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let c = dwflow::config::Config::load(&root.join("examples/dwflow.yaml")).unwrap();
    for t in [
        "local",
        "dev",
        "dbx",
        "emulator-workbench",
        "emulator-databricks",
    ] {
        assert!(c.targets.contains_key(t), "{t}");
    }
    assert_eq!(c.default_target.as_deref(), Some("local"));
}
