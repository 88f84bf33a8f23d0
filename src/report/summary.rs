//! The end-of-run summary: per step its job, remote run ids, state, duration and
//! outputs, as a table for people or JSON for machines.

use std::fmt::Write as _;

use crate::engine::RunReport;

pub fn table(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nrun {} of {}: {} in {}",
        r.run_id,
        r.pipeline,
        r.state.as_str(),
        crate::duration::format_duration(std::time::Duration::from_millis(r.duration_ms))
    );
    let rows: Vec<[String; 6]> = r
        .steps
        .iter()
        .map(|s| {
            [
                s.id.clone(),
                s.job.clone(),
                // The latest run (the one that decided the outcome) and how many others.
                match s.remote_run_ids.as_slice() {
                    [] => "-".into(),
                    [one] => one.clone(),
                    [rest @ .., last] => format!("{last} (+{} more)", rest.len()),
                },
                if s.attempts > 1 {
                    format!("{} ({} attempts)", s.outcome.as_str(), s.attempts)
                } else {
                    s.outcome.as_str().to_string()
                },
                s.duration_ms
                    .map(|d| crate::duration::format_duration(std::time::Duration::from_millis(d)))
                    .unwrap_or_else(|| "-".into()),
                if s.outputs.is_empty() {
                    "-".into()
                } else {
                    s.outputs
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                },
            ]
        })
        .collect();
    let header = ["STEP", "JOB", "RUN ID", "STATE", "DURATION", "OUTPUTS"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row.iter()).take(5) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i < 5 {
                let _ = write!(l, "{:<w$}  ", c, w = widths[i]);
            } else {
                l.push_str(c);
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header));
    for row in &rows {
        let _ = writeln!(
            out,
            "{}",
            line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]])
        );
    }
    for s in &r.steps {
        if let Some(m) = &s.message
            && s.outcome != crate::engine::events::Outcome::Succeeded
        {
            let _ = writeln!(out, "  {}: {m}", s.id);
        }
    }
    if let Some(e) = &r.environment_error {
        let _ = writeln!(out, "environment error: {e}");
    }
    out
}
