//! Figures for the local environment on the real La Haute Borne data (420,480 rows):
//! Assessment for 2014 with a cold cache (first import of the dataset included), the same
//! with a warm cache, and TurbineRanking. Run: `cargo bench --bench local_assessment`.
//! Targets (release build): cold under 3 s, warm under 1 s.

use std::path::Path;
use std::time::{Duration, Instant};

use dwflow::backend::local::LocalBackend;
use dwflow::backend::{Backend, JobRef, RunId};
use indexmap::IndexMap;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".dwflow" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

async fn run(b: &LocalBackend, job: &str, params: &[(&str, &str)]) -> Duration {
    let id = b.resolve_job(&JobRef::Name(job.into())).await.unwrap();
    let params: IndexMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let start = Instant::now();
    let run: RunId = b.invoke(id, &params, "").await.unwrap();
    loop {
        let s = b.status(&run).await.unwrap();
        if s.is_terminal() {
            assert!(s.is_success(), "{job}: {s:?}");
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it too: keep that short.
    let quick = !std::env::args().any(|a| a == "--bench");
    // RUST_LOG=dwflow=debug shows the phases of the import.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workspace");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&src, dir.path());
        let b = LocalBackend::open(dir.path()).unwrap();
        let year = [("Year", "2014"), ("ResultDatasetName", "lhb-daily-2014")];
        let cold = run(&b, "Assessment", &year).await;
        println!("local Assessment 2014, cold cache (import of 420,480 rows included): {cold:>8.3?}  (target < 3 s)");
        if quick {
            return;
        }
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(run(&b, "Assessment", &year).await);
        }
        warm.sort();
        println!(
            "local Assessment 2014, warm cache (median of 5):                   {:>8.3?}  (target < 1 s)",
            warm[2]
        );
        let rank = run(
            &b,
            "TurbineRanking",
            &[
                ("InputDataset", "lhb-daily-2014"),
                ("ResultDatasetName", "lhb-ranking-2014"),
            ],
        )
        .await;
        println!("local TurbineRanking 2014 (1,460 daily rows, first import included): {rank:>8.3?}");
        let both = [("Year", "2015"), ("ResultDatasetName", "lhb-daily-2015")];
        let y2015 = run(&b, "Assessment", &both).await;
        println!("local Assessment 2015, warm cache:                                {y2015:>8.3?}");
    });
}
