//! The command-line interface of `validate`, `plan`, `graph` and `schema`, through the
//! real binary.

use std::path::Path;
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

const SECRETS: &str = "tests/fixtures/cli/secret-and-placeholders.yaml";
const FAN: &str = "tests/fixtures/valid/fan-in-fan-out.yaml";
const TURBINE: &str = "pipelines/turbine-assessment.yaml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dwflow() -> Command {
    let mut cmd = Command::cargo_bin("dwflow").expect("the dwflow binary is built");
    cmd.current_dir(root());
    cmd
}

fn run(args: &[&str]) -> Output {
    dwflow().args(args).output().expect("dwflow runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ok_json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: exit {:?}\n{}",
        out.status.code(),
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}):\n{}", stdout(&out)))
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

// ---------------------------------------------------------------------------- plan

#[test]
fn plan_json_has_exactly_the_documented_shape() {
    let plan = ok_json(&["plan", "--format", "json", TURBINE]);
    assert_eq!(keys(&plan), ["pipeline", "params", "steps"]);
    assert_eq!(plan["pipeline"], "turbine-assessment");
    assert_eq!(plan["params"], serde_json::json!({"year": 2014}));
    let steps = plan["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    for s in steps {
        assert_eq!(keys(s), ["id", "job", "needs", "wave", "params"], "{s}");
        assert!(s["id"].is_string() && s["job"].is_string());
        assert!(s["needs"].is_array() && s["wave"].is_u64());
        assert!(
            s["params"]
                .as_object()
                .unwrap()
                .values()
                .all(Value::is_string),
            "values sent to jobs are strings: {s}"
        );
    }
    assert_eq!(steps[0]["id"], "aggregate");
    assert_eq!(steps[1]["needs"], serde_json::json!(["aggregate"]));
    assert_eq!(steps[1]["params"]["InputDataset"], "lhb-daily-2014");

    // `job_id` in place of `job`, as a JSON number even beyond 32 bits.
    let plan = ok_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/big-job-id.yaml",
    ]);
    for s in plan["steps"].as_array().unwrap() {
        assert_eq!(keys(s), ["id", "job_id", "needs", "wave", "params"], "{s}");
        assert!(s["job_id"].is_u64());
    }
}

#[test]
fn secret_params_are_masked_in_plans_and_never_shown() {
    let secret = "hunter2-S3cret";
    for format in ["human", "json"] {
        let out = run(&[
            "plan",
            SECRETS,
            "--format",
            format,
            "-p",
            &format!("token={secret}"),
            "-p",
            "year=2015",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let (o, e) = (stdout(&out), stderr(&out));
        assert!(
            !o.contains(secret) && !e.contains(secret),
            "secret leaked:\n{o}{e}"
        );
        assert!(!o.contains("4242"), "secret default leaked:\n{o}");
        assert!(o.contains("***"), "{o}");
        if format == "json" {
            let plan: Value = serde_json::from_str(&o).unwrap();
            assert_eq!(plan["params"]["token"], "***");
            assert_eq!(plan["params"]["pin"], "***");
            assert_eq!(plan["steps"][0]["params"]["Token"], "***");
            assert_eq!(plan["steps"][0]["params"]["Auth"], "Bearer ***");
            assert_eq!(plan["steps"][0]["params"]["Pin"], "***");
        } else {
            assert!(o.contains("token = ***"), "{o}");
            assert!(o.contains("Auth              = Bearer ***"), "{o}");
        }
    }
    // Nor in the error about a bad value of a secret parameter.
    let out = run(&[
        "plan",
        SECRETS,
        "-p",
        &format!("token={secret}"),
        "-p",
        "year=2015",
        "-p",
        "pin=12ab-not-a-number",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("`pin`") && e.contains("***"), "{e}");
    assert!(!e.contains("12ab") && !e.contains(secret), "{e}");
}

#[test]
fn missing_and_unknown_params_are_reported_together() {
    let out = run(&["plan", SECRETS, "-p", "yaer=2015", "-p", "token=t"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).is_empty(), "no plan on bad parameters");
    let e = stderr(&out);
    assert!(e.contains("unknown parameter `yaer`"), "{e}");
    assert!(e.contains("did you mean `year`?"), "{e}");
    assert!(e.contains("missing required parameter `year`"), "{e}");
    assert!(e.contains("-p year="), "{e}");
}

#[test]
fn a_param_of_the_wrong_type_is_refused() {
    let out = run(&["plan", SECRETS, "-p", "token=t", "-p", "year=abc"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("parameter `year`: `abc` is not an integer"),
        "{e}"
    );
    assert!(
        !e.contains("missing"),
        "a refused value is not also reported missing: {e}"
    );
    for bad in ["year=2015.5", "year=", "year=1e3"] {
        let out = run(&["plan", SECRETS, "-p", "token=t", "-p", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
    }
    let out = run(&["plan", SECRETS, "-p", "token=t", "-p", "year"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("not NAME=VALUE"));
}

#[test]
fn p_values_are_converted_to_the_param_type() {
    let plan = ok_json(&[
        "plan",
        SECRETS,
        "--format",
        "json",
        "-p",
        "token=t",
        "-p",
        "year=2015",
    ]);
    assert_eq!(plan["params"]["year"], 2015, "an integer, not text");
    let extract = &plan["steps"][0]["params"];
    assert_eq!(extract["Year"], "2015");
    assert_eq!(
        extract["NextYear"], "2016",
        "integer arithmetic in a template"
    );
    assert_eq!(extract["ResultDatasetName"], "lhb-raw-2015");
    // The default applies when no value is given.
    let plan = ok_json(&["plan", "--format", "json", TURBINE]);
    assert_eq!(plan["steps"][0]["params"]["Year"], "2014");
    let plan = ok_json(&["plan", "--format", "json", TURBINE, "-p", "year=2015"]);
    assert_eq!(
        plan["steps"][0]["params"]["ResultDatasetName"],
        "lhb-daily-2015"
    );
    assert_eq!(plan["steps"][1]["params"]["InputDataset"], "lhb-daily-2015");
}

#[test]
fn plan_shows_placeholders_for_run_time_values() {
    let plan = ok_json(&[
        "plan",
        SECRETS,
        "--format",
        "json",
        "-p",
        "token=t",
        "-p",
        "year=2015",
    ]);
    let load = &plan["steps"][1];
    assert_eq!(load["id"], "load");
    let params = &load["params"];
    // A rendered parameter of the upstream step is known before the run ...
    assert_eq!(params["InputDataset"], "lhb-raw-2015");
    // ... what the job reports, and its run id and status, are not.
    assert_eq!(
        params["RowCount"],
        "<run-time: steps.extract.outputs.RowCount>"
    );
    assert_eq!(params["ExtractRun"], "<run-time: steps.extract.run_id>");
    assert_eq!(params["ExtractStatus"], "<run-time: steps.extract.status>");

    let out = run(&["plan", FAN]);
    assert!(out.status.success());
    assert!(
        stdout(&out).contains("IngestRun = <run-time: steps.ingest.run_id>"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn plan_orders_a_fan_out_fan_in_dag_in_waves() {
    let plan = ok_json(&["plan", "--format", "json", FAN]);
    let steps = plan["steps"].as_array().unwrap();
    let got: Vec<(&str, u64, Vec<&str>)> = steps
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap(),
                s["wave"].as_u64().unwrap(),
                s["needs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|n| n.as_str().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("ingest", 0, vec![]),
            ("independent", 0, vec![]),
            ("energy", 1, vec!["ingest"]),
            ("wind", 1, vec!["ingest"]),
            ("availability", 1, vec!["ingest"]),
            ("report", 2, vec!["energy", "wind", "availability"]),
        ]
    );
    let report = &steps[5]["params"];
    assert_eq!(report["Energy"], "energy-2014");
    assert_eq!(
        report["Source"], "raw-2014",
        "a transitive upstream's output"
    );

    let human = stdout(&run(&["plan", FAN]));
    let wave = |n: usize| human.find(&format!("wave {n}:")).unwrap();
    assert!(wave(0) < wave(1) && wave(1) < wave(2), "{human}");
    assert!(human.contains("report  job Report  (needs energy, wind, availability)"));
}

#[test]
fn plan_and_graph_refuse_an_invalid_pipeline() {
    for args in [
        vec!["plan", "tests/fixtures/invalid/cycle-two-steps.yaml"],
        vec!["graph", "tests/fixtures/invalid/cycle-two-steps.yaml"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(stdout(&out).is_empty());
        let e = stderr(&out);
        assert!(
            e.contains("error[cycle]: dependency cycle: a -> b -> a"),
            "{e}"
        );
        assert!(e.contains("is not a valid pipeline"), "{e}");
    }
    let out = run(&["plan", "no/such/pipeline.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

// ---------------------------------------------------------------------------- graph

#[test]
fn graph_mermaid_and_dot_draw_every_edge() {
    let edges = [
        ("ingest", "energy"),
        ("ingest", "wind"),
        ("ingest", "availability"),
        ("energy", "report"),
        ("wind", "report"),
        ("availability", "report"),
    ];
    let out = run(&["graph", FAN, "--format", "mermaid"]);
    assert!(out.status.success());
    let mermaid = stdout(&out);
    assert!(mermaid.starts_with("flowchart TD\n"), "{mermaid}");
    for (a, b) in edges {
        assert!(
            mermaid.contains(&format!("    s_{a} --> s_{b}\n")),
            "{a}->{b}:\n{mermaid}"
        );
    }
    assert_eq!(mermaid.matches("-->").count(), edges.len());
    assert!(mermaid.contains("s_independent[\"independent<br/>Independent\"]"));

    let out = run(&["graph", FAN, "--format", "dot"]);
    assert!(out.status.success());
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph \"fan-in-fan-out\" {\n"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    for (a, b) in edges {
        assert!(
            dot.contains(&format!("    \"{a}\" -> \"{b}\";\n")),
            "{a}->{b}:\n{dot}"
        );
    }
    assert_eq!(dot.matches(" -> ").count(), edges.len());

    // Mermaid is the default; ids with `-` stay distinct node ids.
    let mermaid = stdout(&run(&[
        "graph",
        "tests/fixtures/valid/anchors-and-merge-keys.yaml",
    ]));
    assert!(
        mermaid.contains("s_aggregate --> s_aggregate__copy"),
        "{mermaid}"
    );
    assert!(
        mermaid.contains("s_aggregate__copy --> s_rank"),
        "{mermaid}"
    );
}

// ------------------------------------------------------------------------- validate

#[test]
fn validate_github_format_prints_workflow_commands() {
    let out = run(&[
        "validate",
        "--format",
        "github",
        "tests/fixtures/invalid/unknown-need.yaml",
        "tests/fixtures/invalid/cycle-two-steps.yaml",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let o = stdout(&out);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines.len(), 2, "{o}");
    assert!(
        lines[0]
            .starts_with("::error file=tests/fixtures/invalid/unknown-need.yaml,line=8,col=13,"),
        "{o}"
    );
    assert!(lines[0].contains("::[unknown-need] step `rank` needs `agregate`"));
    assert!(
        lines[0].contains("%0Ahint: did you mean `aggregate`?"),
        "multi-line data is escaped: {o}"
    );
    assert!(
        lines[1]
            .starts_with("::error file=tests/fixtures/invalid/cycle-two-steps.yaml,line=6,col=12,"),
        "{o}"
    );
    // Warnings are annotated as warnings.
    let out = run(&[
        "validate",
        "--format",
        "github",
        "tests/fixtures/cli/duplicate-need.yaml",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out)
            .starts_with("::warning file=tests/fixtures/cli/duplicate-need.yaml,line=7,col=16,")
    );
}

#[test]
fn deny_warnings_turns_a_warning_into_a_failure() {
    let file = "tests/fixtures/cli/duplicate-need.yaml";
    let out = run(&["validate", file]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let o = stdout(&out);
    assert!(
        o.contains(&format!("{file}:7:16: warning[duplicate-need]")),
        "{o}"
    );
    assert!(stderr(&out).contains("1 file checked: 0 errors, 1 warning"));

    let out = run(&["validate", "--deny-warnings", file]);
    assert_eq!(out.status.code(), Some(2));

    let out = run(&["validate", "--format", "json", file]);
    let diags: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diags[0]["severity"], "warning");
    assert_eq!(diags[0]["code"], "duplicate-need");
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A pipeline whose single error (an unknown need) names it, so the JSON output shows
/// which files were read.
fn broken(name: &str) -> String {
    format!("name: {name}\nsteps:\n  - id: a\n    job: A\n    needs: [{name}-missing]\n")
}

#[test]
fn validate_walks_directories_for_yaml_and_yml_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("a.yaml"), &broken("a"));
    write(&d.join("sub/b.yml"), &broken("b"));
    write(&d.join("sub/deeper/c.yaml"), &broken("c"));
    write(&d.join("sub/deeper/d.YAML.txt"), &broken("d"));
    write(&d.join("notes.txt"), "this: [is not yaml");
    write(&d.join("README.md"), "# not a pipeline");
    write(&d.join(".hidden/e.yaml"), &broken("e"));
    write(
        &d.join("ok.yaml"),
        "name: ok\nsteps:\n  - id: a\n    job: A\n",
    );

    let out = dwflow()
        .args(["validate", "--format", "json"])
        .arg(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let diags: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut files: Vec<String> = diags
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            Path::new(x["file"].as_str().unwrap())
                .strip_prefix(d)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    assert_eq!(files, ["a.yaml", "sub/b.yml", "sub/deeper/c.yaml"]);

    let out = dwflow().arg("validate").arg(d).output().unwrap();
    assert!(
        stderr(&out).contains("4 files checked: 3 errors, 0 warnings"),
        "{}",
        stderr(&out)
    );

    // A directory with no pipeline files is an error, not a silent success.
    let empty = tempfile::tempdir().unwrap();
    write(&empty.path().join("notes.txt"), "nothing here");
    let out = dwflow().arg("validate").arg(empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn validate_without_arguments_checks_pipelines_dir() {
    // In the repository: the checked-in pipelines are valid.
    let out = run(&["validate"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let count = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            matches!(p.extension().and_then(|x| x.to_str()), Some("yaml" | "yml"))
        })
        .count();
    assert!(count >= 1);
    assert!(
        stderr(&out).contains(&format!("{count} file")),
        "{}",
        stderr(&out)
    );

    // Elsewhere: it is `./pipelines` of the current directory that is read.
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("pipelines/x.yaml"), &broken("x"));
    let out = Command::cargo_bin("dwflow")
        .unwrap()
        .current_dir(dir.path())
        .args(["validate", "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let diags: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diags[0]["file"], "pipelines/x.yaml");
    assert_eq!(diags[0]["code"], "unknown-need");

    let empty = tempfile::tempdir().unwrap();
    let out = Command::cargo_bin("dwflow")
        .unwrap()
        .current_dir(empty.path())
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no pipelines/ directory");
}

#[test]
fn validate_a_missing_path_exits_2() {
    let out = run(&["validate", "--format", "json", "no/such/file.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let diags: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(diags[0]["file"], "no/such/file.yaml");
    assert_eq!(diags[0]["code"], "io");
    // Good files given alongside are still checked.
    let out = run(&["validate", TURBINE, "no/such/dir"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("no/such/dir:1:1: error[io]"));
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        vec!["validate", "--format", "xml"],
        vec!["plan"],
        vec!["graph", FAN, "--format", "png"],
        vec!["no-such-command"],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

// --------------------------------------------------------------------------- schema

/// Keeps the checked-in schema equal to the one generated from the Rust types.
#[test]
fn schema_output_equals_the_checked_in_schema() {
    let out = run(&["schema"]);
    assert!(out.status.success());
    let checked_in = std::fs::read(root().join("schemas/pipeline.schema.json"))
        .expect("schemas/pipeline.schema.json exists");
    assert!(
        out.stdout == checked_in,
        "schemas/pipeline.schema.json is out of date with the pipeline types; \
         regenerate it with `cargo run -- schema > schemas/pipeline.schema.json`"
    );
    let schema: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["name", "steps"]);
}
