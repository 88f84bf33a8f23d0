//! Snapshots of what people read: the human output of `dwflow validate` on representative
//! invalid files, and of `dwflow plan` on the example pipeline. Paths are relative to the
//! crate root, which is the current directory, so the output is stable.
//!
//! Review changes with `cargo insta review`, or `INSTA_UPDATE=always cargo test` and then
//! read the `.snap` files in `tests/snapshots/`.

use std::path::Path;

use assert_cmd::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::cargo_bin("dwflow")
        .expect("the dwflow binary is built")
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")))
        .args(args)
        .output()
        .expect("dwflow runs");
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("stdout is UTF-8"),
    )
}

/// `dwflow validate FILE` (human format): exit 2 and the snapshot of stdout.
fn validate_snapshot(name: &str, file: &str) {
    let (code, stdout) = run(&["validate", file]);
    assert_eq!(code, Some(2), "{file} must be invalid");
    insta::assert_snapshot!(name, stdout);
}

macro_rules! invalid_snapshots {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                validate_snapshot(
                    concat!("validate_", stringify!($test)),
                    concat!("tests/fixtures/invalid/", $file),
                );
            }
        )*
    };
}

invalid_snapshots! {
    yaml_unclosed_quote => "yaml-unclosed-quote.yaml",
    yaml_tab_indentation => "yaml-tab-indentation.yaml",
    duplicate_key_in_step => "duplicate-key-in-step.yaml",
    unknown_key_in_step => "unknown-key-in-step.yaml",
    wrong_type_needs_a_string => "wrong-type-needs-a-string.yaml",
    implicit_type_float_param_value => "implicit-type-float-param-value.yaml",
    unquoted_template => "unquoted-template.yaml",
    unknown_need => "unknown-need.yaml",
    cycle_three_steps => "cycle-three-steps.yaml",
    undefined_param => "undefined-param.yaml",
    output_not_upstream => "output-not-upstream.yaml",
    template_syntax_error => "template-syntax-error.yaml",
    invalid_utf8 => "invalid-utf8.yaml",
}

#[test]
fn several_faults() {
    validate_snapshot(
        "validate_several_faults",
        "tests/fixtures/multi/several-faults.yaml",
    );
}

#[test]
fn plan_turbine_assessment() {
    let (code, stdout) = run(&["plan", "pipelines/turbine-assessment.yaml"]);
    assert_eq!(code, Some(0));
    insta::assert_snapshot!("plan_turbine_assessment", stdout);
}
