//! SQL tasks: the rendered query runs in SQLite over the cached input datasets (each
//! visible as a TEMP VIEW named like the dataset); its rows are written atomically to
//! `.dwflow/datasets/OUTPUT.csv` (with the column types beside it) and cached.

use std::fmt::Write as _;
use std::io::BufWriter;

use indexmap::IndexMap;
use rusqlite::ErrorCode;
use rusqlite::types::ValueRef;

use super::cache::{CacheError, ColType, SchemaFile, ident};
use super::datasets::{self, Located};
use super::record::write_atomic;
use super::{Inner, Outcome, RunHandle};

fn cache_failure(e: CacheError) -> Outcome {
    match e {
        CacheError::Canceled => Outcome::Canceled,
        CacheError::Data(m) | CacheError::Internal(m) => Outcome::failed(m),
    }
}

/// Turns an SQLite error of the job's query into a message, with a hint where one helps.
fn query_error(inner: &Inner, e: &rusqlite::Error, inputs: &[String]) -> String {
    let text = match e {
        rusqlite::Error::SqliteFailure(_, Some(m)) => m.clone(),
        rusqlite::Error::SqlInputError {
            msg, sql, offset, ..
        } => {
            let offset = usize::try_from(*offset).unwrap_or(0).min(sql.len());
            let before = sql.get(..offset).unwrap_or("");
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            let text = sql.lines().nth(line - 1).unwrap_or("").trim();
            return format!("SQL error: {msg} (query line {line}, column {column}: `{text}`)");
        }
        rusqlite::Error::MultipleStatement => {
            return "the query must be a single SQL statement".to_string();
        }
        other => other.to_string(),
    };
    let mut message = format!("SQL error: {text}");
    if let Some(table) = text.strip_prefix("no such table: ") {
        let table = table.trim().trim_start_matches("main.");
        if !inputs.iter().any(|i| i == table)
            && matches!(datasets::locate(&inner.paths, table), Ok(Some(_)))
        {
            let _ = write!(
                message,
                " (dataset `{table}` exists: list it in the job's `sql.inputs` to read it)"
            );
        }
    }
    message
}

/// What a column of the result held, to record its type.
#[derive(Default, Clone, Copy)]
struct Seen {
    integer: bool,
    real: bool,
    text: bool,
}

impl Seen {
    fn col_type(self) -> ColType {
        if self.text {
            ColType::Text
        } else if self.real {
            ColType::Real
        } else if self.integer {
            ColType::Integer
        } else {
            ColType::Text
        }
    }
}

pub(crate) fn run(
    inner: &Inner,
    handle: &RunHandle,
    query: &str,
    inputs: &[String],
    output: &str,
) -> Outcome {
    let canceled = || handle.cancel_requested();
    // The inputs, imported into the cache where needed.
    let mut tables: Vec<(String, String)> = Vec::new();
    for name in inputs {
        if tables.iter().any(|(n, _)| n == name) {
            continue;
        }
        let found = match datasets::locate(&inner.paths, name) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let known: Vec<String> = datasets::list(&inner.paths)
                    .map(|v| v.into_iter().map(|d| d.name).collect())
                    .unwrap_or_default();
                let hint = crate::diagnostic::did_you_mean(name, known.iter().map(String::as_str))
                    .map(|h| format!("; {h}"))
                    .unwrap_or_else(|| {
                        if known.is_empty() {
                            "; the workspace has no datasets".to_string()
                        } else {
                            format!("; datasets here: {}", known.join(", "))
                        }
                    });
                return Outcome::failed(format!("input dataset `{name}` not found{hint}"));
            }
            Err(e) => return Outcome::failed(e.message),
        };
        match inner.cache.ensure(&inner.paths, &found, &canceled) {
            Ok(t) => tables.push((name.clone(), t.table)),
            Err(e) => return cache_failure(e),
        }
    }
    if canceled() {
        return Outcome::Canceled;
    }

    let started = std::time::Instant::now();
    let conn = match inner.cache.open_ro() {
        Ok(c) => c,
        Err(e) => return cache_failure(e),
    };
    handle.set_interrupt(conn.get_interrupt_handle());
    for (name, table) in &tables {
        if let Err(e) = conn.execute_batch(&format!(
            "CREATE TEMP VIEW {} AS SELECT * FROM main.{}",
            ident(name),
            ident(table)
        )) {
            return Outcome::failed(format!(
                "cannot make dataset `{name}` visible to the query: {e}"
            ));
        }
    }
    let mut stmt = match conn.prepare(query) {
        Ok(s) => s,
        Err(e) => return Outcome::failed(query_error(inner, &e, inputs)),
    };
    if !stmt.readonly() || stmt.column_count() == 0 {
        return Outcome::failed(
            "the query must be one read-only statement that returns rows (a SELECT)".to_string(),
        );
    }
    let columns: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    for (i, c) in columns.iter().enumerate() {
        if columns[..i].contains(c) {
            return Outcome::failed(format!(
                "the query returns two columns named `{c}`: give each column its own name (`AS ...`)"
            ));
        }
    }

    // Rows to a temporary file beside the final one.
    let final_path = inner.paths.generated.join(format!("{output}.csv"));
    let tmp_path = inner.paths.generated.join(format!(
        ".{output}.csv.tmp-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let written = (|| -> Result<(u64, Vec<Seen>), Outcome> {
        let io =
            |e: std::io::Error| Outcome::failed(format!("cannot write dataset `{output}`: {e}"));
        let file = std::fs::File::create(&tmp_path).map_err(io)?;
        let mut wtr = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(BufWriter::with_capacity(1 << 20, file));
        wtr.write_record(&columns)
            .map_err(|e| Outcome::failed(format!("cannot write dataset `{output}`: {e}")))?;
        let mut seen = vec![Seen::default(); columns.len()];
        let mut rows = stmt
            .query([])
            .map_err(|e| Outcome::failed(query_error(inner, &e, inputs)))?;
        let mut n: u64 = 0;
        let mut field = String::new();
        loop {
            let row = match rows.next() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    if canceled()
                        || matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::OperationInterrupted)
                    {
                        return Err(Outcome::Canceled);
                    }
                    return Err(Outcome::failed(query_error(inner, &e, inputs)));
                }
            };
            for (i, s) in seen.iter_mut().enumerate() {
                field.clear();
                match row.get_ref(i) {
                    Ok(ValueRef::Null) => {}
                    Ok(ValueRef::Integer(v)) => {
                        s.integer = true;
                        let _ = write!(field, "{v}");
                    }
                    Ok(ValueRef::Real(v)) => {
                        s.real = true;
                        if v.is_infinite() {
                            field.push_str(if v > 0.0 { "1e999" } else { "-1e999" });
                        } else {
                            // Debug keeps a `.` or an exponent, so 2.0 stays a real.
                            let _ = write!(field, "{v:?}");
                        }
                    }
                    Ok(ValueRef::Text(t)) => {
                        s.text = true;
                        field.push_str(&String::from_utf8_lossy(t));
                    }
                    Ok(ValueRef::Blob(b)) => {
                        s.text = true;
                        for byte in b {
                            let _ = write!(field, "{byte:02x}");
                        }
                    }
                    Err(e) => return Err(Outcome::failed(query_error(inner, &e, inputs))),
                }
                wtr.write_field(field.as_bytes()).map_err(|e| {
                    Outcome::failed(format!("cannot write dataset `{output}`: {e}"))
                })?;
            }
            wtr.write_record(None::<&[u8]>)
                .map_err(|e| Outcome::failed(format!("cannot write dataset `{output}`: {e}")))?;
            n += 1;
        }
        let buf = wtr
            .into_inner()
            .map_err(|e| Outcome::failed(format!("cannot write dataset `{output}`: {e}")))?;
        let file = buf
            .into_inner()
            .map_err(|e| Outcome::failed(format!("cannot write dataset `{output}`: {e}")))?;
        file.sync_all().map_err(io)?;
        Ok((n, seen))
    })();
    drop(stmt);
    drop(conn);
    tracing::debug!("query for `{output}` ran in {:?}", started.elapsed());
    let (rows, seen) = match written {
        Ok(v) => v,
        Err(outcome) => {
            let _ = std::fs::remove_file(&tmp_path);
            return if canceled() {
                Outcome::Canceled
            } else {
                outcome
            };
        }
    };
    if canceled() {
        let _ = std::fs::remove_file(&tmp_path);
        return Outcome::Canceled;
    }

    // The column types beside the data, then the data itself.
    let schema = SchemaFile {
        columns: columns
            .iter()
            .cloned()
            .zip(seen.iter().map(|s| s.col_type()))
            .collect::<IndexMap<_, _>>(),
    };
    let mut text = format!("# Column types of {output}.csv, written by dwflow.\n");
    text.push_str(&serde_json::to_string_pretty(&schema).unwrap_or_default());
    text.push('\n');
    let schema_path = inner.paths.generated.join(format!("{output}.schema.yaml"));
    if let Err(e) = write_atomic(&schema_path, text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp_path, &final_path))
    {
        let _ = std::fs::remove_file(&tmp_path);
        return Outcome::failed(format!("cannot write dataset `{output}`: {e}"));
    }

    // The result is a dataset now: cache it for the jobs downstream.
    let located = Located {
        name: output.to_string(),
        path: final_path,
        gz: false,
        schema: Some(schema_path),
    };
    if let Err(e) = inner.cache.ensure(&inner.paths, &located, &|| false) {
        return Outcome::failed(format!(
            "dataset `{output}` was written but not cached: {e}"
        ));
    }
    Outcome::Success {
        outputs: IndexMap::from([
            ("output_dataset".to_string(), output.to_string()),
            ("output_rows".to_string(), rows.to_string()),
        ]),
    }
}
