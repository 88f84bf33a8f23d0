//! `dwflow validate` on the fixture corpus, through the real binary.
//!
//! Every file in `tests/fixtures/invalid/` holds ONE fault and starts with a comment
//! `# expect: CODE LINE:COL` naming the single error it must produce (1-based line and
//! column). Files that cannot carry a comment (the empty file) are listed in
//! [`NO_HEADER`]. Every file in `tests/fixtures/valid/` must pass without any finding.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;

const INVALID: &str = "tests/fixtures/invalid";
const VALID: &str = "tests/fixtures/valid";
const MULTI: &str = "tests/fixtures/multi/several-faults.yaml";

/// Fixtures that cannot start with an `# expect:` comment, with their expectation.
const NO_HEADER: &[(&str, &str, u32, u32)] = &[("empty-file.yaml", "empty-file", 1, 1)];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The real binary, run from the crate root so that relative paths are stable.
fn dwflow() -> Command {
    let mut cmd = Command::cargo_bin("dwflow").expect("the dwflow binary is built");
    cmd.current_dir(root());
    cmd
}

fn run(args: &[&str]) -> Output {
    dwflow().args(args).output().expect("dwflow runs")
}

fn json_diagnostics(out: &Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str::<Value>(&stdout) {
        Ok(Value::Array(items)) => items,
        other => panic!(
            "validate --format json did not print a JSON list: {other:?}\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn errors(diags: &[Value]) -> Vec<&Value> {
    diags.iter().filter(|d| d["severity"] == "error").collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Expect {
    code: String,
    line: u32,
    column: u32,
}

impl std::fmt::Display for Expect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}:{}", self.code, self.line, self.column)
    }
}

fn parse_header(name: &str, bytes: &[u8]) -> Expect {
    if let Some((_, code, line, column)) = NO_HEADER.iter().find(|(n, ..)| *n == name) {
        return Expect {
            code: code.to_string(),
            line: *line,
            column: *column,
        };
    }
    let first = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let rest = first
        .strip_prefix("# expect: ")
        .unwrap_or_else(|| panic!("{name}: the first line must be `# expect: CODE LINE:COL`"));
    let (code, pos) = rest
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("{name}: malformed header `{first}`"));
    let (line, column) = pos
        .split_once(':')
        .unwrap_or_else(|| panic!("{name}: malformed position in `{first}`"));
    Expect {
        code: code.to_string(),
        line: line.parse().expect("line number"),
        column: column.parse().expect("column number"),
    }
}

/// (file name, relative path, expectation) for every invalid fixture, sorted.
fn invalid_fixtures() -> Vec<(String, String, Expect)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root().join(INVALID)).expect("invalid fixtures dir") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&path).expect("fixture readable");
        let expect = parse_header(&name, &bytes);
        out.push((name.clone(), format!("{INVALID}/{name}"), expect));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn describe(diags: &[Value]) -> String {
    diags
        .iter()
        .map(|d| {
            format!(
                "  {} {} {}:{} {}",
                d["severity"].as_str().unwrap_or("?"),
                d["code"].as_str().unwrap_or("?"),
                d["line"],
                d["column"],
                d["message"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn each_invalid_fixture_reports_exactly_its_one_error() {
    let fixtures = invalid_fixtures();
    let mut failures = Vec::new();
    for (name, rel, expect) in &fixtures {
        let out = run(&["validate", "--format", "json", rel]);
        let diags = json_diagnostics(&out);
        let errs = errors(&diags);
        let got: Vec<Expect> = errs
            .iter()
            .map(|d| Expect {
                code: d["code"].as_str().unwrap_or_default().to_string(),
                line: d["line"].as_u64().unwrap_or_default() as u32,
                column: d["column"].as_u64().unwrap_or_default() as u32,
            })
            .collect();
        if got != [expect.clone()] || out.status.code() != Some(2) {
            failures.push(format!(
                "{name}: expected exactly `{expect}` and exit 2, got exit {:?} and:\n{}",
                out.status.code(),
                describe(&diags)
            ));
        }
        for d in &errs {
            assert_eq!(d["file"], rel.as_str(), "{name}: file as given");
            assert!(
                !d["message"].as_str().unwrap_or_default().is_empty(),
                "{name}: empty message"
            );
            assert!(
                d["hint"].as_str().is_some_and(|h| !h.is_empty()),
                "{name}: every error in this corpus comes with a hint: {d}"
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_invalid_corpus_is_large_and_covers_every_kind_of_fault() {
    let fixtures = invalid_fixtures();
    assert!(
        fixtures.len() >= 45,
        "only {} invalid fixtures",
        fixtures.len()
    );
    let codes: BTreeSet<&str> = fixtures.iter().map(|(_, _, e)| e.code.as_str()).collect();
    for code in [
        "yaml-syntax",
        "duplicate-key",
        "unknown-key",
        "wrong-type",
        "implicit-type",
        "missing-key",
        "job-missing",
        "job-conflict",
        "duplicate-step-id",
        "invalid-id",
        "unknown-need",
        "self-need",
        "cycle",
        "template-syntax",
        "undefined-param",
        "unknown-step",
        "unknown-step-field",
        "output-not-upstream",
        "unknown-filter",
        "undefined-variable",
        "for-each-source",
        "invalid-value",
        "invalid-duration",
        "default-type",
        "invalid-cron",
        "invalid-timezone",
        "yaml-budget",
        "invalid-utf8",
        "empty-file",
    ] {
        assert!(codes.contains(code), "no fixture expects `{code}`");
    }
    // Several YAML syntax errors, duplicate keys at two levels, four unknown-key places.
    let count = |code: &str| fixtures.iter().filter(|(_, _, e)| e.code == code).count();
    assert!(count("yaml-syntax") >= 3);
    assert!(count("duplicate-key") >= 2);
    assert!(count("unknown-key") >= 4);
    assert!(count("implicit-type") >= 5);
    assert!(count("cycle") >= 2);
}

/// Messages and hints that matter to the person fixing the file.
#[test]
fn messages_and_hints_say_what_to_do() {
    let cases: &[(&str, &str, &str)] = &[
        // (fixture, substring of the message, substring of the hint)
        (
            "unknown-key-top-level.yaml",
            "`descripton`",
            "did you mean `description`?",
        ),
        (
            "unknown-key-in-step.yaml",
            "`timout`",
            "did you mean `timeout`?",
        ),
        (
            "unknown-key-in-params-spec.yaml",
            "`desciption`",
            "did you mean `description`?",
        ),
        (
            "unknown-key-in-retry.yaml",
            "`max_dealy`",
            "did you mean `max_delay`?",
        ),
        (
            "unknown-key-in-defaults.yaml",
            "`run-if`",
            "did you mean `run_if`?",
        ),
        (
            "unknown-need.yaml",
            "`agregate`",
            "did you mean `aggregate`?",
        ),
        (
            "undefined-param.yaml",
            "`params.yaer`",
            "did you mean `year`?",
        ),
        (
            "unknown-step-in-template.yaml",
            "`steps.agregate`",
            "did you mean `aggregate`?",
        ),
        (
            "unknown-filter.yaml",
            "`uppercase`",
            "did you mean `upper`?",
        ),
        (
            "invalid-run-if.yaml",
            "`all_succes`",
            "did you mean `all_success`?",
        ),
        ("cycle-two-steps.yaml", "a -> b -> a", "needs"),
        ("cycle-three-steps.yaml", "a -> c -> b -> a", "needs"),
        ("self-need.yaml", "needs itself", "remove"),
        (
            "unquoted-template.yaml",
            "must be a string",
            "must be quoted",
        ),
        ("implicit-type-float-param-value.yaml", "`1.10`", "\"1.10\""),
        ("implicit-type-hex-param-value.yaml", "`0x1F`", "\"0x1F\""),
        (
            "implicit-type-exponent-param-value.yaml",
            "`1e3`",
            "\"1e3\"",
        ),
        ("implicit-type-null-param-value.yaml", "null", "\"~\""),
        (
            "implicit-type-string-param-default.yaml",
            "`1.10`",
            "\"1.10\"",
        ),
        (
            "output-not-upstream.yaml",
            "does not depend on step `aggregate`",
            "needs",
        ),
        ("downstream-reference.yaml", "runs after it", "after `rank`"),
        ("item-outside-for-each.yaml", "`item`", "for_each"),
        ("duplicate-step-id.yaml", "`a`", "line 4"),
        (
            "dashed-step-id-dotted.yaml",
            "subtraction",
            "steps['daily-energy']",
        ),
        ("wrong-type-needs-a-string.yaml", "must be a list", "[a]"),
        (
            "wrong-type-job-id-quoted.yaml",
            "must be an integer",
            "integer",
        ),
        ("default-type-integer.yaml", "`year`", "integer"),
        ("invalid-cron.yaml", "4 fields", "5 fields"),
        ("two-documents.yaml", "more YAML documents", ""),
        (
            "nesting-past-the-depth-limit.yaml",
            "deeper than 64 levels",
            "nesting",
        ),
        ("alias-bomb.yaml", "alias", "aliases"),
        (
            "job-id-out-of-range.yaml",
            "18446744073709551616",
            "at most 18446744073709551615",
        ),
        (
            "max-parallel-out-of-range.yaml",
            "4294967296",
            "at most 4294967295",
        ),
        (
            "subscript-unknown-step.yaml",
            "`steps.daily-enrgy`",
            "did you mean `daily-energy`?",
        ),
        (
            "subscript-not-upstream.yaml",
            "`steps.daily-energy`",
            "needs",
        ),
        ("missing-step-id.yaml", "step #2", "`id`"),
    ];
    let mut failures = Vec::new();
    for (file, message, hint) in cases {
        let rel = format!("{INVALID}/{file}");
        let out = run(&["validate", "--format", "json", &rel]);
        let diags = json_diagnostics(&out);
        let Some(d) = errors(&diags).first().copied() else {
            failures.push(format!("{file}: no error"));
            continue;
        };
        let m = d["message"].as_str().unwrap_or_default();
        let h = d["hint"].as_str().unwrap_or_default();
        if !m.contains(message) || !h.contains(hint) {
            failures.push(format!(
                "{file}: wanted message ~ {message:?} and hint ~ {hint:?}, got {m:?} / {h:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_whole_directory_in_one_run_reports_every_file() {
    let out = run(&["validate", "--format", "json", INVALID]);
    assert_eq!(out.status.code(), Some(2));
    let diags = json_diagnostics(&out);
    let mut by_file: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for d in errors(&diags) {
        by_file
            .entry(d["file"].as_str().unwrap_or_default().to_string())
            .or_default()
            .push(d);
    }
    for (name, rel, expect) in invalid_fixtures() {
        let found = by_file.get(&rel).map(Vec::as_slice).unwrap_or_default();
        assert!(
            found.iter().any(|d| d["code"] == expect.code.as_str()
                && d["line"] == expect.line
                && d["column"] == expect.column),
            "{name}: `{expect}` missing from the directory run; found {found:?}"
        );
    }
    // The human summary counts every file.
    let out = run(&["validate", INVALID]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let n = invalid_fixtures().len();
    assert!(
        stderr.contains(&format!("{n} files checked: {n} errors")),
        "summary: {stderr}"
    );
}

#[test]
fn several_faults_in_one_file_are_all_reported_in_one_run() {
    let out = run(&["validate", "--format", "json", MULTI]);
    assert_eq!(out.status.code(), Some(2));
    let diags = json_diagnostics(&out);
    let got: BTreeSet<(String, u64)> = errors(&diags)
        .iter()
        .map(|d| {
            (
                d["code"].as_str().unwrap_or_default().to_string(),
                d["line"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let want: BTreeSet<(String, u64)> = [
        ("missing-key", 2),         // no `name`
        ("unknown-key", 7),         // `secrte` in a param spec
        ("cycle", 11),              // aggregate <-> rank
        ("unknown-key", 12),        // `timout` in a step
        ("undefined-param", 14),    // `params.yera`
        ("implicit-type", 15),      // Version: 1.10
        ("missing-key", 19),        // retry without `attempts`
        ("unknown-filter", 21),     // `uppercase`
        ("job-conflict", 24),       // job and job_id
        ("invalid-value", 25),      // run_if: sometimes
        ("undefined-variable", 27), // `item` outside for_each
    ]
    .into_iter()
    .map(|(c, l)| (c.to_string(), l))
    .collect();
    assert_eq!(got, want, "all diagnostics:\n{}", describe(&diags));
    let cycle = errors(&diags)
        .into_iter()
        .find(|d| d["code"] == "cycle")
        .unwrap();
    assert_eq!(
        cycle["message"], "dependency cycle: aggregate -> rank -> aggregate",
        "the message names the whole cycle"
    );
}

fn valid_fixtures() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(VALID))
        .expect("valid fixtures dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

#[test]
fn each_valid_fixture_passes_without_any_finding() {
    let files = valid_fixtures();
    assert!(files.len() >= 8, "only {} valid fixtures", files.len());
    for path in &files {
        let rel = path
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .to_string();
        let out = run(&["validate", "--format", "json", &rel]);
        let diags = json_diagnostics(&out);
        assert!(
            diags.is_empty() && out.status.success(),
            "{rel}: exit {:?}\n{}",
            out.status.code(),
            describe(&diags)
        );
        // A valid pipeline can be planned and drawn.
        for args in [
            vec!["plan", rel.as_str()],
            vec!["graph", rel.as_str(), "--format", "dot"],
        ] {
            let out = run(&args);
            assert!(
                out.status.success(),
                "{args:?}: exit {:?}\n{}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let out = run(&["validate", "--deny-warnings", VALID]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{} files checked: 0 errors, 0 warnings",
            files.len()
        )),
        "{stderr}"
    );
}

fn plan_json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: exit {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan --format json prints JSON")
}

/// Unquoted `no`, `on`, `0755`, `2014` and dates are kept as their exact text (no
/// YAML 1.1 retyping), both as step parameters and as string parameter defaults.
#[test]
fn yaml_1_1_traps_reach_the_job_as_the_written_text() {
    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/yaml-1-1-traps-kept-as-text.yaml",
    ]);
    let params = &plan["steps"][0]["params"];
    for (key, text) in [
        ("Flag", "no"),
        ("Switch", "on"),
        ("Yes", "yes"),
        ("Off", "OFF"),
        ("Mode", "0755"),
        ("Year", "2014"),
        ("Date", "2024-01-01"),
        ("Quoted", "1.10"),
        ("Negative", "-7"),
        ("Zero", "0"),
        ("Bool", "true"),
        ("Answer", "no"),
        ("ModeParam", "0755"),
        ("YearParam", "2014"),
    ] {
        assert_eq!(params[key], text, "{key}: {params}");
    }
    assert_eq!(plan["params"]["mode"], "0755");
    assert_eq!(plan["params"]["answer"], "no");
    assert_eq!(plan["params"]["year"], "2014");

    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/quoted-numbers.yaml",
    ]);
    assert_eq!(plan["params"]["version"], "1.10");
    let params = &plan["steps"][0]["params"];
    assert_eq!(params["Version"], "1.10");
    assert_eq!(params["Hex"], "0x1F");
    assert_eq!(params["Exponent"], "1e3");
    assert_eq!(params["Tilde"], "~");
    assert_eq!(params["Both"], "1.10/0755");
}

#[test]
fn anchors_block_scalars_and_unicode_come_through() {
    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/anchors-and-merge-keys.yaml",
    ]);
    let steps = plan["steps"].as_array().unwrap();
    let copy = steps.iter().find(|s| s["id"] == "aggregate-copy").unwrap();
    assert_eq!(copy["job"], "Assessment", "merged from the anchored step");
    assert_eq!(copy["params"]["InputDataset"], "la-haute-borne-scada");
    assert_eq!(copy["params"]["ResultDatasetName"], "lhb-daily-copy-2014");
    let rank = steps.iter().find(|s| s["id"] == "rank").unwrap();
    assert_eq!(rank["params"]["Copy"], "lhb-daily-copy-2014");

    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/block-scalars.yaml",
    ]);
    let params = &plan["steps"][0]["params"];
    assert_eq!(
        params["Query"],
        "SELECT *\nFROM \"lhb-daily\"\nWHERE energy > 0\n"
    );
    assert_eq!(params["Title"], "Daily report for LHB\n");

    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/unicode.yaml",
    ]);
    assert_eq!(plan["steps"][0]["params"]["Label"], "风电-Trøndelag-✅");
    assert_eq!(plan["steps"][1]["params"]["Input"], "风电-Trøndelag-✅");

    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/big-job-id.yaml",
    ]);
    let ids: Vec<u64> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["job_id"].as_u64().unwrap())
        .collect();
    assert!(ids.contains(&331_283_232_308_510));
    assert!(ids.contains(&u64::MAX));
    assert!(ids.contains(&4_294_967_296));
}

#[test]
fn for_each_and_when_are_planned() {
    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/for-each-and-when.yaml",
    ]);
    let step = |id: &str| {
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}"))
            .clone()
    };
    assert_eq!(
        step("per-turbine")["for_each"],
        serde_json::json!(["R80711", "R80721", "R80736", "R80790"])
    );
    assert_eq!(
        step("fixed-list")["for_each"],
        serde_json::json!(["R80711", "2014"])
    );
    assert!(
        step("detail")["skip"]
            .as_str()
            .unwrap()
            .contains("params.detailed")
    );
    assert!(
        step("recent")["skip"]
            .as_str()
            .unwrap()
            .contains("params.year > 2015")
    );
    let plan = plan_json(&[
        "plan",
        "--format",
        "json",
        "tests/fixtures/valid/for-each-and-when.yaml",
        "-p",
        "year=2016",
        "-p",
        "detailed=true",
    ]);
    for s in plan["steps"].as_array().unwrap() {
        assert!(s.get("skip").is_none(), "{s}");
    }
}

/// A file far over the size limit is refused from its size, before parsing. (No time is
/// asserted: that it completes at all is the point; speed belongs in benchmarks.)
#[test]
fn a_huge_file_is_refused_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.yaml");
    let mut text = String::from("name: huge\nsteps:\n");
    let step = "  - id: s\n    job: J\n    params:\n      Padding: \"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n";
    while text.len() < 30 * 1024 * 1024 {
        text.push_str(step);
    }
    std::fs::write(&path, &text).unwrap();
    let out = dwflow()
        .args(["validate", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let diags = json_diagnostics(&out);
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{}", describe(&diags));
    assert_eq!(errs[0]["code"], "file-too-large");
    assert_eq!(
        (errs[0]["line"].as_u64(), errs[0]["column"].as_u64()),
        (Some(1), Some(1))
    );
}
