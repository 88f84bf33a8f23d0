//! Thin access to a target: `dwflow datasets` (list, show). Output for people as a
//! table, for machines as CSV or JSON.

use crate::backend::Rows;
use crate::exit::Exit;
use crate::target::{self, TargetArgs};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowsFormat {
    Table,
    Csv,
    Json,
}

fn block_on<F: std::future::Future<Output = Exit>>(f: F) -> Exit {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            Exit::Environment
        }
    }
}

fn open(args: &TargetArgs) -> Result<target::Target, Exit> {
    target::open(args).map_err(|e| {
        eprintln!("error: {e}");
        e.exit()
    })
}

fn backend_exit(e: &crate::backend::BackendError) -> Exit {
    use crate::backend::ErrorKind;
    match e.kind {
        ErrorKind::Invalid | ErrorKind::NotFound | ErrorKind::Ambiguous => Exit::Invalid,
        _ => Exit::Environment,
    }
}

pub fn datasets_list(args: &TargetArgs, json: bool) -> Exit {
    block_on(async {
        let t = match open(args) {
            Ok(t) => t,
            Err(e) => return e,
        };
        match t.backend.list_datasets().await {
            Ok(list) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&list).unwrap_or_default()
                    );
                } else {
                    println!("{:<36}  {:>9}  {:<25}  COLUMNS", "NAME", "ROWS", "CREATED");
                    for d in list {
                        println!(
                            "{:<36}  {:>9}  {:<25}  {}",
                            d.name,
                            d.rows.map_or_else(|| "-".to_string(), |r| r.to_string()),
                            d.created.unwrap_or_else(|| "-".into()),
                            d.columns.join(", ")
                        );
                    }
                }
                Exit::Success
            }
            Err(e) => {
                eprintln!("error: {}", e.message);
                backend_exit(&e)
            }
        }
    })
}

pub fn datasets_show(
    args: &TargetArgs,
    name: &str,
    format: RowsFormat,
    limit: Option<usize>,
) -> Exit {
    block_on(async {
        let t = match open(args) {
            Ok(t) => t,
            Err(e) => return e,
        };
        // A table is for reading: show the first rows unless asked for more. CSV and
        // JSON are for programs: everything.
        const TABLE_ROWS: usize = 100;
        let effective = match (format, limit) {
            (_, Some(0)) => None,
            (RowsFormat::Table, None) => Some(TABLE_ROWS + 1),
            (_, l) => l,
        };
        match t.backend.read_dataset(name, effective).await {
            Ok(mut rows) => {
                let cut =
                    format == RowsFormat::Table && limit.is_none() && rows.rows.len() > TABLE_ROWS;
                rows.rows
                    .truncate(if cut { TABLE_ROWS } else { rows.rows.len() });
                print!("{}", render_rows(&rows, format));
                if cut {
                    eprintln!("(first {TABLE_ROWS} rows; --limit N for more, --limit 0 for all)");
                }
                Exit::Success
            }
            Err(e) => {
                eprintln!("error: {}", e.message);
                backend_exit(&e)
            }
        }
    })
}

/// Renders rows as an aligned table, CSV, or a JSON array of objects.
pub fn render_rows(rows: &Rows, format: RowsFormat) -> String {
    let cell = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match format {
        RowsFormat::Json => {
            let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
                .rows
                .iter()
                .map(|r| {
                    rows.columns
                        .iter()
                        .cloned()
                        .zip(r.iter().cloned())
                        .collect()
                })
                .collect();
            let mut s = serde_json::to_string_pretty(&objects).unwrap_or_default();
            s.push('\n');
            s
        }
        RowsFormat::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(&rows.columns);
            for r in &rows.rows {
                let _ = w.write_record(r.iter().map(cell));
            }
            String::from_utf8(w.into_inner().unwrap_or_default()).unwrap_or_default()
        }
        RowsFormat::Table => {
            let cells: Vec<Vec<String>> = rows
                .rows
                .iter()
                .map(|r| r.iter().map(cell).collect())
                .collect();
            let mut widths: Vec<usize> = rows.columns.iter().map(|c| c.chars().count()).collect();
            for r in &cells {
                for (w, c) in widths.iter_mut().zip(r) {
                    *w = (*w).max(c.chars().count());
                }
            }
            let mut out = String::new();
            let line = |vals: &[String], out: &mut String| {
                let l: Vec<String> = vals
                    .iter()
                    .zip(&widths)
                    .map(|(v, w)| format!("{v:<w$}"))
                    .collect();
                out.push_str(l.join("  ").trim_end());
                out.push('\n');
            };
            line(&rows.columns, &mut out);
            for r in &cells {
                line(r, &mut out);
            }
            out
        }
    }
}

/// `dwflow jobs list`.
pub fn jobs_list(args: &TargetArgs, json: bool) -> Exit {
    block_on(async {
        let t = match open(args) {
            Ok(t) => t,
            Err(e) => return e,
        };
        match t.backend.list_jobs().await {
            Ok(mut jobs) => {
                jobs.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&jobs).unwrap_or_default()
                    );
                } else if jobs.is_empty() {
                    println!("no jobs in target {}", t.name);
                } else {
                    let w = jobs
                        .iter()
                        .map(|j| j.name.chars().count())
                        .max()
                        .unwrap_or(4)
                        .max(4);
                    println!("{:<18}  {:<w$}  {:<30}  CREATED", "ID", "NAME", "CREATOR");
                    for j in jobs {
                        println!(
                            "{:<18}  {:<w$}  {:<30}  {}",
                            j.id,
                            j.name,
                            j.creator.as_deref().unwrap_or("-"),
                            j.created.as_deref().unwrap_or("-")
                        );
                    }
                }
                Exit::Success
            }
            Err(e) => {
                eprintln!("error: {}", e.message);
                backend_exit(&e)
            }
        }
    })
}

/// `dwflow jobs describe NAME|ID`.
pub fn jobs_describe(args: &TargetArgs, job: &str, json: bool) -> Exit {
    let job_ref = match job.trim().parse::<u64>() {
        Ok(id) => crate::backend::JobRef::Id(id),
        Err(_) => crate::backend::JobRef::Name(job.to_string()),
    };
    block_on(async {
        let t = match open(args) {
            Ok(t) => t,
            Err(e) => return e,
        };
        match t.backend.describe_job(&job_ref).await {
            Ok(info) => {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&info).unwrap_or_default()
                    );
                } else {
                    print!("{}", describe_text(&info, t.backend.kind()));
                }
                Exit::Success
            }
            Err(e) => {
                eprintln!("error: {}", e.message);
                backend_exit(&e)
            }
        }
    })
}

/// A job for people: id, name, creator, created, and its parameters.
pub fn describe_text(info: &crate::backend::JobInfo, kind: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "name:     {}", info.name);
    let _ = writeln!(out, "id:       {}", info.id);
    let _ = writeln!(out, "creator:  {}", info.creator.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "created:  {}", info.created.as_deref().unwrap_or("-"));
    match &info.parameters {
        None if kind == "workbench" => {
            let _ = writeln!(
                out,
                "parameters: not known: the Data Workbench gateway does not return a job's parameters; see the job in Data Workbench (Analytics) or in its Databricks workspace"
            );
        }
        None => {
            let _ = writeln!(out, "parameters: not known: the {kind} target does not say");
        }
        Some(ps) if ps.is_empty() => {
            let _ = writeln!(out, "parameters: none");
        }
        Some(ps) => {
            let _ = writeln!(out, "parameters:");
            let w = ps.iter().map(|p| p.name.chars().count()).max().unwrap_or(0);
            let defaults: Vec<String> = ps
                .iter()
                .map(|p| match &p.default {
                    Some(d) => format!("default {d}"),
                    None => "required".to_string(),
                })
                .collect();
            let dw = defaults
                .iter()
                .map(|d| d.chars().count())
                .max()
                .unwrap_or(0);
            for (p, d) in ps.iter().zip(&defaults) {
                let line = format!(
                    "  {:<w$}  {:<dw$}  {}",
                    p.name,
                    d,
                    p.description.as_deref().unwrap_or("")
                );
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
    }
    out
}
