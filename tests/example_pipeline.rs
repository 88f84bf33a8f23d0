//! The README's main job: `dwflow run pipelines/turbine-assessment.yaml` on a copy of the
//! example workspace, its 2014 results checked against values computed here, directly
//! from the raw SCADA file (not from anything dwflow wrote).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let (src, dst) = (e.path(), to.join(&name));
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// Per turbine for UTC year 2014: energy (kWh) over rows with a power value, and the
/// number of UTC days that have any row.
fn expected_2014(workspace: &Path) -> BTreeMap<String, (f64, usize)> {
    let file = std::fs::File::open(workspace.join("datasets/la-haute-borne-scada.csv.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut text)
        .unwrap();
    let mut rdr = csv::Reader::from_reader(text.as_bytes());
    let headers = rdr.headers().unwrap().clone();
    let col = |n: &str| headers.iter().position(|h| h == n).unwrap();
    let (t, ts, p) = (col("Wind_turbine_name"), col("Date_time"), col("P_avg"));
    let mut energy: BTreeMap<String, f64> = BTreeMap::new();
    let mut days: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for rec in rdr.records() {
        let rec = rec.unwrap();
        let utc = chrono::DateTime::parse_from_rfc3339(&rec[ts])
            .unwrap()
            .with_timezone(&chrono::Utc);
        if utc.format("%Y").to_string() != "2014" {
            continue;
        }
        let turbine = rec[t].to_string();
        days.entry(turbine.clone())
            .or_default()
            .insert(utc.format("%Y-%m-%d").to_string());
        if !rec[p].is_empty() {
            *energy.entry(turbine).or_default() += rec[p].parse::<f64>().unwrap() * 10.0 / 60.0;
        }
    }
    energy
        .into_iter()
        .map(|(k, e)| {
            let d = days[&k].len();
            (k, (e, d))
        })
        .collect()
}

#[test]
fn the_example_pipeline_ranks_the_turbines_correctly_for_2014() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("workspace");
    copy_dir(&repo.join("examples/workspace"), &ws);
    let out = Command::new(env!("CARGO_BIN_EXE_dwflow"))
        .args([
            "run",
            "pipelines/turbine-assessment.yaml",
            "--progress",
            "plain",
            "--format",
            "json",
        ])
        .env("DWFLOW_WORKSPACE", &ws)
        .env("DWFLOW_STATE_DIR", dir.path().join("state"))
        .current_dir(&repo)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["state"], "succeeded");
    assert_eq!(
        summary["steps"][1]["outputs"]["InputDataset"],
        "lhb-daily-2014"
    );

    let shown = Command::new(env!("CARGO_BIN_EXE_dwflow"))
        .args(["datasets", "show", "lhb-ranking-2014", "--format", "json"])
        .env("DWFLOW_WORKSPACE", &ws)
        .output()
        .unwrap();
    assert!(shown.status.success());
    let ranking: Vec<serde_json::Value> = serde_json::from_slice(&shown.stdout).unwrap();
    let expected = expected_2014(&ws);
    assert_eq!(ranking.len(), 4);
    let mut by_energy: Vec<(&String, &(f64, usize))> = expected.iter().collect();
    by_energy.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    for (i, row) in ranking.iter().enumerate() {
        let turbine = row["turbine"].as_str().unwrap();
        let (kwh, days) = expected[turbine];
        let mwh = row["energy_mwh"].as_f64().unwrap();
        assert!(
            (mwh - kwh / 1000.0).abs() < 1e-6 * mwh.abs().max(1.0),
            "{turbine}: {mwh} vs {}",
            kwh / 1000.0
        );
        assert_eq!(row["days"].as_u64().unwrap() as usize, days, "{turbine}");
        let cf = row["capacity_factor"].as_f64().unwrap();
        // Rated power 2,050 kW (the asset table), 8,760 hours in 2014.
        assert!(
            (cf - kwh / (2050.0 * 8760.0)).abs() < 1e-9,
            "{turbine}: {cf}"
        );
        assert_eq!(row["rank"].as_u64().unwrap() as usize, i + 1);
        assert_eq!(by_energy[i].0, turbine, "rank order");
    }
}
