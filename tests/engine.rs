//! Engine tests on the scripted backend, in paused tokio time: deterministic and fast.

use std::sync::Arc;
use std::time::Duration;

use dwflow::backend::RunResult;
use dwflow::backend::scripted::{AttemptScript, JobScript, ScriptedBackend};
use dwflow::engine::events::{Event, Outcome, RunState};
use dwflow::engine::{RunOptions, RunReport, run_pipeline};
use dwflow::pipeline::load::{CheckedPipeline, load_bytes};
use indexmap::IndexMap;

use tokio_util::sync::CancellationToken;

fn checked(yaml: &str) -> CheckedPipeline {
    let loaded = load_bytes("test.yaml", yaml.as_bytes());
    assert_eq!(loaded.report.errors(), 0, "{:?}", loaded.report.diagnostics);
    loaded.checked.expect("valid pipeline")
}

/// The id of the one run journalled in a state directory.
fn only_run(state_dir: &std::path::Path) -> String {
    let runs: Vec<String> = std::fs::read_dir(state_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

struct Ran {
    report: RunReport,
    events: Vec<Event>,
    backend: Arc<ScriptedBackend>,
    _dir: tempfile::TempDir,
}

async fn run_with(
    yaml: &str,
    backend: ScriptedBackend,
    given: &[(&str, &str)],
    cancel: CancellationToken,
) -> Ran {
    let c = checked(yaml);
    let given: Vec<(String, String)> = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let params = dwflow::plan::resolve_params(&c.pipeline, &given).expect("params");
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        state_dir: dir.path().to_path_buf(),
        inline_journal: true,
        ..RunOptions::default()
    };
    let backend = Arc::new(backend);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = run_pipeline(backend.clone(), &c, params, options, tx, cancel, None)
        .await
        .expect("run");
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    Ran {
        report,
        events,
        backend,
        _dir: dir,
    }
}

async fn run(yaml: &str, backend: ScriptedBackend) -> Ran {
    run_with(yaml, backend, &[], CancellationToken::new()).await
}

fn outcome(r: &Ran, step: &str) -> Outcome {
    r.report
        .steps
        .iter()
        .find(|s| s.id == step)
        .map(|s| s.outcome)
        .expect("step")
}

fn ok(d: u64) -> JobScript {
    JobScript {
        attempts: vec![AttemptScript::success(secs(d))],
    }
}

#[tokio::test(start_paused = true)]
async fn outputs_flow_downstream_and_steps_run_in_order() {
    let yaml = r#"
name: two
params:
  year: {type: integer, default: 2014}
steps:
  - id: aggregate
    job: Assessment
    params:
      ResultDatasetName: "lhb-daily-{{ params.year }}"
  - id: rank
    job: Ranking
    params:
      InputDataset: "{{ steps.aggregate.outputs.ResultDatasetName }}"
      Rows: "{{ steps.aggregate.outputs.rows }}"
      Upstream: "{{ steps.aggregate.run_id }}"
"#;
    let mut agg = AttemptScript::success(secs(30));
    agg.outputs.insert("rows".into(), "1460".into());
    let b = ScriptedBackend::new(AttemptScript::success(secs(1)))
        .job(
            "Assessment",
            JobScript {
                attempts: vec![agg],
            },
        )
        .job("Ranking", ok(5));
    let r = run_with(yaml, b, &[("year", "2015")], CancellationToken::new()).await;
    assert_eq!(r.report.state, RunState::Succeeded);
    let inv = r.backend.invocations();
    assert_eq!(inv.len(), 2);
    assert_eq!(inv[1].params["InputDataset"], "lhb-daily-2015");
    assert_eq!(inv[1].params["Rows"], "1460");
    assert_eq!(inv[1].params["Upstream"], inv[0].run_id);
    assert!(
        inv[1].at >= inv[0].ends,
        "rank started before aggregate finished"
    );
    let rank = r.report.steps.iter().find(|s| s.id == "rank").unwrap();
    assert_eq!(rank.outputs["InputDataset"], "lhb-daily-2015");
}

#[tokio::test(start_paused = true)]
async fn a_run_that_fails_instantly_is_a_failure() {
    let yaml = "name: x\nsteps:\n  - id: a\n    job: Boom\n  - id: b\n    job: Next\n";
    let b = ScriptedBackend::new(AttemptScript::success(secs(1))).job(
        "Boom",
        JobScript {
            attempts: vec![AttemptScript::failure(
                Duration::ZERO,
                "NameError: x",
                false,
            )],
        },
    );
    let r = run(yaml, b).await;
    assert_eq!(r.report.state, RunState::Failed);
    assert_eq!(outcome(&r, "a"), Outcome::Failed);
    assert!(
        r.report.steps[0]
            .message
            .as_deref()
            .unwrap()
            .contains("NameError")
    );
    assert_eq!(outcome(&r, "b"), Outcome::NotRun);
    assert_eq!(r.backend.invocations().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn canceled_and_timedout_results_are_never_success() {
    for result in [
        RunResult::Canceled,
        RunResult::TimedOut,
        RunResult::Skipped,
        RunResult::InternalError,
        RunResult::Other("SUCCESS_WITH_FAILURES".into()),
    ] {
        let mut a = AttemptScript::success(secs(3));
        a.result = result.clone();
        let b = ScriptedBackend::new(AttemptScript::success(secs(1)))
            .job("J", JobScript { attempts: vec![a] });
        let r = run("name: x\nsteps:\n  - id: a\n    job: J\n", b).await;
        assert_eq!(
            outcome(&r, "a"),
            Outcome::Failed,
            "{result:?} must not be success"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn unknown_states_are_still_running_and_logged_once() {
    let mut a = AttemptScript::success(secs(120));
    a.running_state = Some("HIBERNATING".into());
    let b = ScriptedBackend::new(AttemptScript::success(secs(1)))
        .job("J", JobScript { attempts: vec![a] });
    let r = run("name: x\nsteps:\n  - id: a\n    job: J\n", b).await;
    assert_eq!(outcome(&r, "a"), Outcome::Succeeded);
    let warnings = r
        .events
        .iter()
        .filter(|e| matches!(e, Event::Warning { message } if message.contains("HIBERNATING")))
        .count();
    assert_eq!(warnings, 1);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_cancels_running_steps_and_starts_nothing_new() {
    let yaml = r#"
name: ff
steps:
  - id: slow
    job: Slow
    needs: []
  - id: bad
    job: Bad
    needs: []
  - id: after
    job: Slow
    needs: [bad]
"#;
    let b = ScriptedBackend::new(AttemptScript::success(secs(1)))
        .job("Slow", ok(600))
        .job(
            "Bad",
            JobScript {
                attempts: vec![AttemptScript::failure(secs(10), "boom", false)],
            },
        );
    let r = run(yaml, b).await;
    assert_eq!(r.report.state, RunState::Failed);
    assert_eq!(outcome(&r, "bad"), Outcome::Failed);
    assert_eq!(outcome(&r, "slow"), Outcome::Canceled);
    assert_eq!(outcome(&r, "after"), Outcome::NotRun);
    let inv = r.backend.invocations();
    assert_eq!(inv.len(), 2);
    assert!(
        inv.iter().any(|i| i.job == "Slow" && i.canceled),
        "the running remote run was cancelled"
    );
}

#[tokio::test(start_paused = true)]
async fn without_fail_fast_trigger_rules_decide() {
    let yaml = r#"
name: rules
fail_fast: false
steps:
  - id: good
    job: Ok
    needs: []
  - id: bad
    job: Bad
    needs: []
  - id: all_success
    job: Ok
    needs: [good, bad]
  - id: all_done
    job: Ok
    needs: [good, bad]
    run_if: all_done
  - id: one_ok
    job: Ok
    needs: [good, bad]
    run_if: at_least_one_success
  - id: one_failed
    job: Ok
    needs: [good, bad]
    run_if: at_least_one_failed
  - id: all_failed
    job: Ok
    needs: [good, bad]
    run_if: all_failed
  - id: none_failed
    job: Ok
    needs: [good, bad]
    run_if: none_failed
  - id: cleanup
    job: Ok
    needs: [all_success]
    run_if: none_failed
"#;
    let b = ScriptedBackend::new(AttemptScript::success(secs(2))).job(
        "Bad",
        JobScript {
            attempts: vec![AttemptScript::failure(secs(1), "x", false)],
        },
    );
    let r = run(yaml, b).await;
    assert_eq!(r.report.state, RunState::Failed);
    assert_eq!(outcome(&r, "all_success"), Outcome::Skipped);
    assert_eq!(outcome(&r, "all_done"), Outcome::Succeeded);
    assert_eq!(outcome(&r, "one_ok"), Outcome::Succeeded);
    assert_eq!(outcome(&r, "one_failed"), Outcome::Succeeded);
    assert_eq!(outcome(&r, "all_failed"), Outcome::Skipped);
    assert_eq!(outcome(&r, "none_failed"), Outcome::Skipped);
    // Its only need was skipped, not failed.
    assert_eq!(outcome(&r, "cleanup"), Outcome::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn when_false_skips_and_downstream_follows_the_rule() {
    let yaml = r#"
name: when
params:
  full: {type: boolean, default: false}
steps:
  - id: a
    job: J
    when: params.full
  - id: b
    job: J
    run_if: none_failed
"#;
    let b = ScriptedBackend::new(AttemptScript::success(secs(1)));
    let r = run(yaml, b).await;
    assert_eq!(outcome(&r, "a"), Outcome::Skipped);
    assert_eq!(outcome(&r, "b"), Outcome::Succeeded);
    assert_eq!(r.report.state, RunState::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_backoff_and_code_failures_are_not() {
    let yaml = r#"
name: retry
steps:
  - id: flaky
    job: Flaky
    needs: []
    retry: {attempts: 3, delay: 10s}
  - id: broken
    job: Broken
    needs: []
    retry: {attempts: 3, delay: 10s}
"#;
    let b = ScriptedBackend::new(AttemptScript::success(secs(1)))
        .job(
            "Flaky",
            JobScript {
                attempts: vec![
                    AttemptScript::failure(secs(5), "CLOUD_FAILURE", true),
                    AttemptScript::failure(secs(5), "CLOUD_FAILURE", true),
                    AttemptScript::success(secs(5)),
                ],
            },
        )
        .job(
            "Broken",
            JobScript {
                attempts: vec![AttemptScript::failure(secs(5), "division by zero", false)],
            },
        );
    let mut yaml_ff = yaml.replace("name: retry", "name: retry\nfail_fast: false");
    yaml_ff.push('\n');
    let r = run(&yaml_ff, b).await;
    assert_eq!(outcome(&r, "flaky"), Outcome::Succeeded);
    let flaky = r.report.steps.iter().find(|s| s.id == "flaky").unwrap();
    assert_eq!(flaky.attempts, 3);
    assert_eq!(flaky.remote_run_ids.len(), 3);
    assert_eq!(outcome(&r, "broken"), Outcome::Failed);
    let inv = r.backend.invocations();
    assert_eq!(inv.iter().filter(|i| i.job == "Broken").count(), 1);
    let flaky_inv: Vec<_> = inv.iter().filter(|i| i.job == "Flaky").collect();
    // Backoff: at least the configured delay between the end of one and the next start.
    assert!(flaky_inv[1].at >= flaky_inv[0].ends + Duration::from_secs(5));
    // Each attempt has its own idempotency key.
    assert_ne!(flaky_inv[0].key, flaky_inv[1].key);
    let retries = r
        .events
        .iter()
        .filter(|e| matches!(e, Event::Retrying { .. }))
        .count();
    assert_eq!(retries, 2);
}

#[tokio::test(start_paused = true)]
async fn timeouts_cancel_the_remote_run_and_may_be_retried() {
    let yaml = r#"
name: timeout
steps:
  - id: a
    job: Slow
    timeout: 1m
    retry: {attempts: 2, delay: 1s}
"#;
    let b = ScriptedBackend::new(AttemptScript::success(secs(1))).job(
        "Slow",
        JobScript {
            attempts: vec![
                AttemptScript::success(secs(3600)),
                AttemptScript::success(secs(30)),
            ],
        },
    );
    let r = run(yaml, b).await;
    assert_eq!(outcome(&r, "a"), Outcome::Succeeded);
    let inv = r.backend.invocations();
    assert_eq!(inv.len(), 2);
    assert!(inv[0].canceled, "the timed-out remote run was cancelled");
    let b = ScriptedBackend::new(AttemptScript::success(secs(1))).job("Slow", ok(3600));
    let r = run(
        "name: t\nsteps:\n  - id: a\n    job: Slow\n    timeout: 30s\n",
        b,
    )
    .await;
    assert_eq!(outcome(&r, "a"), Outcome::TimedOut);
    assert_eq!(r.report.state, RunState::Failed);
}

#[tokio::test(start_paused = true)]
async fn fan_out_respects_its_cap_and_renders_items() {
    let yaml = r#"
name: fan
steps:
  - id: per_turbine
    job: J
    for_each:
      items: [R80711, R80721, R80736, R80790, R80800]
      max_parallel: 2
    params:
      Turbine: "{{ item }}"
"#;
    let b = ScriptedBackend::new(AttemptScript::success(secs(10)));
    let r = run(yaml, b).await;
    assert_eq!(outcome(&r, "per_turbine"), Outcome::Succeeded);
    let inv = r.backend.invocations();
    assert_eq!(inv.len(), 5);
    let mut turbines: Vec<_> = inv.iter().map(|i| i.params["Turbine"].clone()).collect();
    turbines.sort();
    assert_eq!(turbines, ["R80711", "R80721", "R80736", "R80790", "R80800"]);
    assert!(max_overlap(&inv) <= 2, "fan-out cap exceeded");
}

#[tokio::test(start_paused = true)]
async fn pipeline_max_parallel_is_never_exceeded() {
    let mut yaml = String::from("name: wide\nmax_parallel: 3\nsteps:\n");
    for i in 0..12 {
        yaml.push_str(&format!("  - id: s{i}\n    job: J\n    needs: []\n"));
    }
    let r = run(&yaml, ScriptedBackend::new(AttemptScript::success(secs(7)))).await;
    assert_eq!(r.report.state, RunState::Succeeded);
    assert_eq!(max_overlap(&r.backend.invocations()), 3);
}

#[tokio::test(start_paused = true)]
async fn cancellation_cancels_remote_runs_and_waits() {
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(secs(20)).await;
        c2.cancel();
    });
    let yaml = "name: c\nsteps:\n  - id: a\n    job: J\n    needs: []\n  - id: b\n    job: J\n    needs: []\n  - id: c\n    job: J\n";
    let r = run_with(
        yaml,
        ScriptedBackend::new(AttemptScript::success(secs(600))),
        &[],
        cancel,
    )
    .await;
    assert_eq!(r.report.state, RunState::Canceled);
    let inv = r.backend.invocations();
    assert_eq!(inv.len(), 2);
    assert!(inv.iter().all(|i| i.canceled));
    assert_eq!(outcome(&r, "a"), Outcome::Canceled);
    assert_eq!(outcome(&r, "c"), Outcome::NotRun);
}

#[tokio::test(start_paused = true)]
async fn status_calls_grow_logarithmically_up_to_the_cap() {
    let calls = |d: u64| async move {
        let b = ScriptedBackend::new(AttemptScript::success(secs(d)));
        let r = run("name: p\nsteps:\n  - id: a\n    job: J\n", b).await;
        r.backend.status_calls()
    };
    let short = calls(8).await;
    let medium = calls(60).await;
    // 0, 0.5, 1, 2, 4, 8 (+ one) ... then every 10 s.
    assert!(short <= 6, "{short}");
    assert!(medium <= 12, "{medium}");
}

/// The largest number of scripted runs alive at the same instant.
fn max_overlap(inv: &[dwflow::backend::scripted::Invocation]) -> usize {
    let mut points: Vec<(tokio::time::Instant, i32)> = Vec::new();
    for i in inv {
        points.push((i.at, 1));
        points.push((i.ends, -1));
    }
    points.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let (mut cur, mut max) = (0i32, 0i32);
    for (_, d) in points {
        cur += d;
        max = max.max(cur);
    }
    max as usize
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn dag_yaml(deps: &[Vec<usize>], max_parallel: usize) -> String {
        let mut y = format!("name: prop\nmax_parallel: {max_parallel}\nsteps:\n");
        for (i, ds) in deps.iter().enumerate() {
            let needs: Vec<String> = ds.iter().map(|d| format!("s{d}")).collect();
            y.push_str(&format!(
                "  - id: s{i}\n    job: J{i}\n    needs: [{}]\n",
                needs.join(", ")
            ));
        }
        y
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn no_step_starts_before_its_needs_finish_and_the_cap_holds(
            raw in prop::collection::vec((prop::collection::vec(0usize..1000, 0..4), 0u64..120), 1..25),
            max_parallel in 1usize..5,
        ) {
            let deps: Vec<Vec<usize>> = raw
                .iter()
                .enumerate()
                .map(|(i, (ds, _))| {
                    let mut v: Vec<usize> = if i == 0 { vec![] } else { ds.iter().map(|d| d % i).collect() };
                    v.sort();
                    v.dedup();
                    v
                })
                .collect();
            let mut backend = ScriptedBackend::new(AttemptScript::success(secs(1)));
            for (i, (_, d)) in raw.iter().enumerate() {
                backend = backend.job(&format!("J{i}"), ok(*d));
            }
            let yaml = dag_yaml(&deps, max_parallel);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
            let r = rt.block_on(run(&yaml, backend));
            prop_assert_eq!(r.report.state, RunState::Succeeded);
            let inv = r.backend.invocations();
            prop_assert_eq!(inv.len(), deps.len());
            let by_job: std::collections::HashMap<String, &dwflow::backend::scripted::Invocation> =
                inv.iter().map(|i| (i.job.clone(), i)).collect();
            for (i, ds) in deps.iter().enumerate() {
                let me = by_job[&format!("J{i}")];
                for d in ds {
                    let dep = by_job[&format!("J{d}")];
                    prop_assert!(me.at >= dep.ends, "s{} started before s{} finished", i, d);
                }
            }
            prop_assert!(max_overlap(&inv) <= max_parallel);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn resume_reattaches_to_runs_in_flight_and_never_invokes_twice() {
    let yaml =
        "name: r\nsteps:\n  - id: a\n    job: A\n  - id: b\n    job: B\n  - id: c\n    job: C\n";
    let c = checked(yaml);
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        state_dir: dir.path().to_path_buf(),
        inline_journal: true,
        ..RunOptions::default()
    };
    let backend = Arc::new(
        ScriptedBackend::new(AttemptScript::success(secs(1)))
            .job("A", ok(10))
            .job("B", ok(100))
            .job("C", ok(10)),
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    // "Crash" 40 s in: a has finished, b is running remotely.
    let first = tokio::time::timeout(
        secs(40),
        run_pipeline(
            backend.clone(),
            &c,
            IndexMap::new(),
            options.clone(),
            tx,
            CancellationToken::new(),
            None,
        ),
    )
    .await;
    assert!(first.is_err(), "the first process was cut off");
    let run_id = only_run(dir.path());
    let state = dwflow::engine::ResumeState::load(dir.path(), &run_id).unwrap();
    assert_eq!(
        state.finished_steps(),
        vec![("a".to_string(), Outcome::Succeeded)]
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let report = run_pipeline(
        backend.clone(),
        &c,
        IndexMap::new(),
        options,
        tx,
        CancellationToken::new(),
        Some(state),
    )
    .await
    .unwrap();
    assert_eq!(report.state, RunState::Succeeded);
    let inv = backend.invocations();
    for job in ["A", "B", "C"] {
        assert_eq!(
            inv.iter().filter(|i| i.job == job).count(),
            1,
            "{job} invoked once"
        );
    }
    let mut reattached = false;
    while let Ok(e) = rx.try_recv() {
        reattached |= matches!(e, Event::Reattached { .. });
    }
    assert!(reattached);
    assert_eq!(report.steps[1].remote_run_ids, vec![inv[1].run_id.clone()]);
}

#[tokio::test(start_paused = true)]
async fn resume_after_an_interrupted_cancellation_runs_the_cancelled_work_again() {
    // A first Ctrl-C cancels the remote runs; a second one kills dwflow before it
    // records the outcome. Resume must finish the pipeline, not report a failure.
    let yaml = "name: r\nsteps:\n  - id: a\n    job: A\n  - id: b\n    job: B\n";
    let c = checked(yaml);
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        state_dir: dir.path().to_path_buf(),
        inline_journal: true,
        ..RunOptions::default()
    };
    let backend = Arc::new(
        ScriptedBackend::new(AttemptScript::success(secs(60)))
            .job("A", ok(60))
            .job("B", ok(60)),
    );
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(secs(20)).await;
        c2.cancel();
    });
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let cut = tokio::time::timeout(
        Duration::from_millis(20_050),
        run_pipeline(
            backend.clone(),
            &c,
            IndexMap::new(),
            options.clone(),
            tx,
            cancel,
            None,
        ),
    )
    .await;
    assert!(cut.is_err(), "cut off while waiting for the cancellation");
    tokio::time::sleep(secs(5)).await;
    assert!(backend.invocations()[0].canceled);
    let run_id = only_run(dir.path());
    let state = dwflow::engine::ResumeState::load(dir.path(), &run_id).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let report = run_pipeline(
        backend.clone(),
        &c,
        IndexMap::new(),
        options,
        tx,
        CancellationToken::new(),
        Some(state),
    )
    .await
    .unwrap();
    assert_eq!(report.state, RunState::Succeeded, "{:?}", report.steps);
    let inv = backend.invocations();
    assert_eq!(
        inv.iter().filter(|i| i.job == "A").count(),
        2,
        "the cancelled run and one new attempt"
    );
    assert_eq!(inv.iter().filter(|i| i.job == "B").count(), 1);
}

#[tokio::test(start_paused = true)]
async fn resuming_a_failed_run_repairs_it() {
    let yaml =
        "name: r\nsteps:\n  - id: a\n    job: A\n  - id: b\n    job: B\n  - id: c\n    job: C\n";
    let c = checked(yaml);
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        state_dir: dir.path().to_path_buf(),
        inline_journal: true,
        ..RunOptions::default()
    };
    let backend = Arc::new(
        ScriptedBackend::new(AttemptScript::success(secs(5)))
            .job("A", ok(5))
            .job("C", ok(5))
            .job(
                "B",
                JobScript {
                    attempts: vec![
                        AttemptScript::failure(secs(5), "disk full", false),
                        AttemptScript::success(secs(5)),
                    ],
                },
            ),
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let first = run_pipeline(
        backend.clone(),
        &c,
        IndexMap::new(),
        options.clone(),
        tx,
        CancellationToken::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(first.state, RunState::Failed);
    let state = dwflow::engine::ResumeState::load(dir.path(), &first.run_id).unwrap();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let second = run_pipeline(
        backend.clone(),
        &c,
        IndexMap::new(),
        options,
        tx,
        CancellationToken::new(),
        Some(state),
    )
    .await
    .unwrap();
    assert_eq!(second.state, RunState::Succeeded);
    let inv = backend.invocations();
    let count = |j: &str| inv.iter().filter(|i| i.job == j).count();
    assert_eq!((count("A"), count("B"), count("C")), (1, 2, 1));
    assert_ne!(
        inv[1].key, inv[2].key,
        "the repair is a new attempt with its own key"
    );
}

#[tokio::test(start_paused = true)]
async fn later_runs_poll_by_the_duration_of_earlier_ones() {
    let c = checked("name: p\nsteps:\n  - id: a\n    job: Long\n");
    let dir = tempfile::tempdir().unwrap();
    let options = RunOptions {
        state_dir: dir.path().to_path_buf(),
        inline_journal: true,
        ..RunOptions::default()
    };
    let mut calls = Vec::new();
    for _ in 0..3 {
        let backend =
            Arc::new(ScriptedBackend::new(AttemptScript::success(secs(1))).job("Long", ok(1800)));
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let report = run_pipeline(
            backend.clone(),
            &c,
            IndexMap::new(),
            options.clone(),
            tx,
            CancellationToken::new(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(report.state, RunState::Succeeded);
        calls.push(backend.status_calls());
    }
    // The first run knows nothing: it checks every 10 s once the ramp is over. The
    // next ones expect 30 minutes and check sparsely until the end draws near.
    assert!(calls[0] >= 180, "{calls:?}");
    assert!(calls[1] <= 22 && calls[2] <= 22, "{calls:?}");
    // Without learning, every run polls as the first did.
    let backend =
        Arc::new(ScriptedBackend::new(AttemptScript::success(secs(1))).job("Long", ok(1800)));
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    run_pipeline(
        backend.clone(),
        &c,
        IndexMap::new(),
        RunOptions {
            learn_durations: false,
            ..options
        },
        tx,
        CancellationToken::new(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(backend.status_calls(), calls[0]);
}
