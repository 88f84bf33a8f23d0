//! Validation speed and memory, measured on generated pipelines (figures printed, not a
//! timed test): `cargo bench --bench validate`.
//!
//! Cases, each run as the release `dwflow` binary in a child process, several times:
//! - `validate` of one 10,000-step DAG (fan-in and fan-out, templated params reading
//!   upstream outputs, `when`, `retry`, `timeout`);
//! - `validate` of a directory of 500 typical pipelines (5-15 steps each);
//! - `plan` of the 10,000-step DAG;
//! - `validate` of the same DAG with an error in almost every step (exit 2), whose
//!   findings are all reported and printed.
//!
//! For each case it prints the median, best and worst wall time and the child's peak
//! resident memory (`ru_maxrss` from `wait4`), against the targets of the issue.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 5;
const BIG_STEPS: usize = 10_000;
const TYPICAL_FILES: usize = 500;

/// A tiny deterministic generator (PCG-style LCG), so every run sees the same files.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u32
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() as usize) % n
    }
    /// True with probability `num / den`.
    fn chance(&mut self, num: usize, den: usize) -> bool {
        self.below(den) < num
    }
}

const JOBS: &[&str] = &[
    "Assessment",
    "TurbineRanking",
    "PowerCurve",
    "Availability",
    "WakeLoss",
    "IcingDetection",
    "YawMisalignment",
    "DataQuality",
];

/// One 10,000-step DAG. Step `i` needs one to three earlier steps: usually recent ones,
/// sometimes one of a few early "hub" steps (wide fan-out), and about one step in ten
/// omits `needs` (so it waits for the step listed before it). Templates read `params.*`
/// and the outputs of direct and transitive dependencies only, so the file is valid.
fn big_dag(steps: usize, seed: u64) -> String {
    let mut rng = Lcg(seed);
    let mut deps: Vec<Vec<usize>> = Vec::with_capacity(steps);
    let mut out = String::with_capacity(steps * 400);
    out.push_str(
        "# yaml-language-server: $schema=../schemas/pipeline.schema.json\n\
         name: big-dag\n\
         description: A generated 10,000-step DAG for the validation benchmark.\n\
         params:\n  \
           year:\n    type: integer\n    default: 2014\n    description: Year of SCADA data.\n  \
           region:\n    type: string\n    default: eu-west\n  \
           threshold:\n    type: number\n    default: 0.75\n  \
           full:\n    type: boolean\n    default: false\n\
         defaults:\n  retry:\n    attempts: 2\n    delay: 10s\n  timeout: 2h\n\
         max_parallel: 16\n\
         steps:\n",
    );
    for i in 0..steps {
        let id = format!("s_{i:05}");
        let job = JOBS[rng.below(JOBS.len())];
        let _ = writeln!(out, "  - id: {id}");
        let _ = writeln!(out, "    job: {job}");
        if rng.chance(1, 4) {
            let _ = writeln!(
                out,
                "    description: Step {i} of the generated DAG ({job})."
            );
        }
        let mut d: Vec<usize> = Vec::new();
        if i == 0 {
            out.push_str("    needs: []\n");
        } else if rng.chance(1, 10) {
            d.push(i - 1); // implicit: the step listed before
        } else {
            let want = 1 + rng.below(3);
            for _ in 0..want {
                let j = if rng.chance(1, 5) {
                    rng.below(i.min(20)) // a hub among the first steps: fan-out
                } else {
                    i - 1 - rng.below(i.min(50)) // a recent step: fan-in
                };
                if !d.contains(&j) {
                    d.push(j);
                }
            }
            let names: Vec<String> = d.iter().map(|j| format!("s_{j:05}")).collect();
            let _ = writeln!(out, "    needs: [{}]", names.join(", "));
        }
        out.push_str("    params:\n");
        match d.first() {
            Some(&up) => {
                let _ = writeln!(
                    out,
                    "      InputDataset: \"{{{{ steps.s_{up:05}.outputs.ResultDatasetName }}}}\""
                );
            }
            None => out.push_str("      InputDataset: la-haute-borne-scada\n"),
        }
        // A transitive dependency: a dependency of the first dependency.
        if let Some(&up) = d.first()
            && let Some(&up2) = deps[up].first()
            && rng.chance(1, 2)
        {
            let _ = writeln!(
                out,
                "      ReferenceDataset: \"{{{{ steps.s_{up2:05}.outputs.ResultDatasetName }}}}\""
            );
        }
        out.push_str("      Year: \"{{ params.year }}\"\n");
        if rng.chance(1, 2) {
            out.push_str("      Region: \"{{ params.region | upper }}\"\n");
        } else {
            out.push_str("      Threshold: \"{{ params.threshold }}\"\n");
        }
        let _ = writeln!(
            out,
            "      ResultDatasetName: \"{job}-{i:05}-{{{{ params.region }}}}-{{{{ params.year }}}}\""
        );
        if rng.chance(1, 8) {
            out.push_str("    when: params.full or params.year >= 2010\n");
        }
        if rng.chance(1, 10) {
            out.push_str(
                "    retry:\n      attempts: 3\n      delay: 5s\n      max_delay: 1m\n      on: [transient, timeout]\n",
            );
        }
        if rng.chance(1, 6) {
            let _ = writeln!(out, "    timeout: {}m", 5 + rng.below(55));
        }
        if rng.chance(1, 20) {
            out.push_str("    run_if: all_done\n");
        }
        deps.push(d);
    }
    out
}

/// A typical pipeline of 5-15 steps, in the style of pipelines/turbine-assessment.yaml.
fn typical(n: usize, rng: &mut Lcg) -> String {
    let steps = 5 + rng.below(11);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# yaml-language-server: $schema=../schemas/pipeline.schema.json\n\
         name: assessment-{n:03}\n\
         description: Daily energy per turbine for one year of SCADA data, site {n}.\n\
         params:\n  \
           year:\n    type: integer\n    default: 2014\n    description: Year (UTC) of SCADA data to assess.\n  \
           site:\n    type: string\n    default: \"site-{n:03}\"\n    description: Site whose data is assessed."
    );
    if rng.chance(1, 3) {
        out.push_str("defaults:\n  retry:\n    attempts: 3\n    delay: 30s\n  timeout: 1h\n");
    }
    out.push_str("steps:\n");
    for i in 0..steps {
        let job = JOBS[rng.below(JOBS.len())];
        let _ = writeln!(out, "  - id: step_{i}");
        let _ = writeln!(
            out,
            "    description: Runs {job} over the output of the previous step."
        );
        let _ = writeln!(out, "    job: {job}");
        // Mostly a sequence; sometimes a step joins two earlier ones.
        let mut up = i.checked_sub(1);
        if i >= 2 && rng.chance(1, 4) {
            let other = rng.below(i - 1);
            let _ = writeln!(out, "    needs: [step_{}, step_{other}]", i - 1);
        } else if i >= 1 && rng.chance(1, 6) {
            let j = rng.below(i);
            let _ = writeln!(out, "    needs: [step_{j}]");
            up = Some(j);
        }
        out.push_str("    params:\n");
        match up {
            Some(u) => {
                let _ = writeln!(
                    out,
                    "      InputDataset: \"{{{{ steps.step_{u}.outputs.ResultDatasetName }}}}\""
                );
            }
            None => out.push_str("      InputDataset: \"{{ params.site }}-scada\"\n"),
        }
        out.push_str("      Year: \"{{ params.year }}\"\n");
        let _ = writeln!(
            out,
            "      ResultDatasetName: \"{{{{ params.site }}}}-{}-{{{{ params.year }}}}\"",
            job.to_lowercase()
        );
        if rng.chance(1, 3) {
            out.push_str("    expect:\n      datasets: [\"{{ outputs.ResultDatasetName }}\"]\n");
        }
        if rng.chance(1, 5) {
            out.push_str("    timeout: 30m\n");
        }
        if rng.chance(1, 8) {
            out.push_str("    when: params.year >= 2012\n");
        }
    }
    out
}

/// One run of the binary: wall time, peak RSS in bytes, exit code.
struct Sample {
    wall: Duration,
    max_rss: u64,
    code: i32,
}

fn run_once(bin: &Path, args: &[&str]) -> Sample {
    let start = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dwflow");
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own un-reaped child; wait4 reaps it, so `child` must not be
    // waited on afterwards (it is dropped without waiting).
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    assert_eq!(rc, pid, "wait4 failed: {}", std::io::Error::last_os_error());
    drop(child);
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -libc::WTERMSIG(status)
    };
    Sample {
        wall,
        // Linux reports ru_maxrss in KiB.
        max_rss: usage.ru_maxrss as u64 * 1024,
        code,
    }
}

/// Runs a case `RUNS` times; panics (with the command's output) if it does not exit
/// with `expect` (0: the generated pipelines are valid).
fn measure(bin: &Path, args: &[&str], expect: i32) -> Vec<Sample> {
    let samples: Vec<Sample> = (0..RUNS).map(|_| run_once(bin, args)).collect();
    if let Some(bad) = samples.iter().find(|s| s.code != expect) {
        let output = Command::new(bin).args(args).output().expect("rerun dwflow");
        let show = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(4000)]).into_owned();
        panic!(
            "`dwflow {}` exited {} (expected {expect})\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            bad.code,
            show(&output.stdout),
            show(&output.stderr)
        );
    }
    samples
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
}

struct Row {
    case: String,
    samples: Vec<Sample>,
    time_target: Option<Duration>,
    rss_target: Option<u64>,
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); nothing here needs them.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_dwflow"));
    // DWFLOW_BENCH_KEEP=1 keeps the generated inputs (for profiling) and prints where.
    let mut dir = tempfile::tempdir().expect("tempdir");
    if std::env::var_os("DWFLOW_BENCH_KEEP").is_some() {
        dir.disable_cleanup(true);
        println!("inputs kept in {}", dir.path().display());
    }

    let big = dir.path().join("big-dag.yaml");
    let text = big_dag(BIG_STEPS, 0x5eed_2026);
    std::fs::write(&big, &text).expect("write big DAG");
    let big_bytes = text.len();
    // The same DAG with an error in almost every step: each first `needs` entry names a
    // step that does not exist (so its outputs are read without a dependency, too).
    let bad = dir.path().join("big-dag-bad.yaml");
    std::fs::write(&bad, text.replace("needs: [s_", "needs: [x_")).expect("write bad DAG");

    let many = dir.path().join("pipelines");
    std::fs::create_dir(&many).expect("mkdir");
    let mut rng = Lcg(42);
    let mut many_bytes = 0;
    for n in 0..TYPICAL_FILES {
        let text = typical(n, &mut rng);
        many_bytes += text.len();
        std::fs::write(many.join(format!("assessment-{n:03}.yaml")), text).expect("write");
    }

    println!(
        "dwflow validate benchmark: {} run(s) per case, binary {}",
        RUNS,
        bin.display()
    );
    println!(
        "inputs: {BIG_STEPS}-step DAG ({:.2} MB); {TYPICAL_FILES} typical files ({:.2} MB in all)",
        big_bytes as f64 / 1e6,
        many_bytes as f64 / 1e6
    );

    let big_s = big.to_str().expect("utf-8 path");
    let many_s = many.to_str().expect("utf-8 path");
    let bad_s = bad.to_str().expect("utf-8 path");
    let mut rows = vec![
        Row {
            case: format!("validate {BIG_STEPS}-step DAG"),
            samples: measure(&bin, &["validate", big_s], 0),
            time_target: Some(Duration::from_secs(1)),
            rss_target: Some(200 * 1024 * 1024),
        },
        Row {
            case: format!("validate dir of {TYPICAL_FILES} files"),
            samples: measure(&bin, &["validate", many_s], 0),
            time_target: Some(Duration::from_secs(1)),
            rss_target: None,
        },
        Row {
            case: format!("plan {BIG_STEPS}-step DAG"),
            samples: measure(&bin, &["plan", big_s], 0),
            time_target: None,
            rss_target: None,
        },
        Row {
            case: format!("validate {BIG_STEPS} steps, all bad"),
            samples: measure(&bin, &["validate", bad_s], 2),
            time_target: None,
            rss_target: None,
        },
    ];

    println!();
    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>10}  {:<22} result",
        "case", "median", "best", "worst", "peak RSS", "target"
    );
    println!("{}", "-".repeat(108));
    let mut missed = 0;
    for row in &mut rows {
        let mut walls: Vec<Duration> = row.samples.iter().map(|s| s.wall).collect();
        walls.sort();
        let median = walls[walls.len() / 2];
        let rss = row.samples.iter().map(|s| s.max_rss).max().unwrap_or(0);
        let mut target = Vec::new();
        let mut ok = true;
        if let Some(t) = row.time_target {
            target.push(format!("< {} s", t.as_secs_f64()));
            ok &= median < t;
        }
        if let Some(r) = row.rss_target {
            target.push(format!("< {} MB", r / (1024 * 1024)));
            ok &= rss < r;
        }
        let result = if target.is_empty() {
            "-"
        } else if ok {
            "ok"
        } else {
            missed += 1;
            "MISSED"
        };
        println!(
            "{:<30} {:>10} {:>10} {:>10} {:>10}  {:<22} {result}",
            row.case,
            ms(median),
            ms(walls[0]),
            ms(walls[walls.len() - 1]),
            mb(rss),
            if target.is_empty() {
                "-".to_string()
            } else {
                target.join(", ")
            },
        );
        let runs: Vec<String> = row
            .samples
            .iter()
            .map(|s| format!("{} / {}", ms(s.wall), mb(s.max_rss)))
            .collect();
        println!("    runs: {}", runs.join("; "));
    }
    println!();
    if missed > 0 {
        println!("{missed} target(s) missed");
    } else {
        println!("all targets met");
    }
}
