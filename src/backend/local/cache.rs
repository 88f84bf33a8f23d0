//! The import cache: `.dwflow/cache.sqlite` holds one table per imported dataset version,
//! keyed by the SHA-256 of the file's content (and of its declared schema), so each
//! version of a dataset is parsed once. A query reads the cached tables.

use std::cell::RefCell;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::Duration;

use indexmap::IndexMap;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Paths;
use super::datasets::Located;
use crate::backend::Rows;

/// Bumped when the import changes in a way that makes old tables wrong.
const IMPORT_VERSION: &str = "dwflow-import-1";

/// Rows between two checks of the cancel flag during an import.
const CANCEL_CHECK_ROWS: u64 = 4096;

/// Waiting for another writer of the cache (an import in another run or process).
const BUSY_TIMEOUT: Duration = Duration::from_secs(600);

/// A column type of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColType {
    Integer,
    Real,
    Text,
}

impl ColType {
    fn sql(self) -> &'static str {
        match self {
            ColType::Integer => "INTEGER",
            ColType::Real => "REAL",
            ColType::Text => "TEXT",
        }
    }
}

/// `NAME.schema.yaml`: declared column types.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SchemaFile {
    pub columns: IndexMap<String, ColType>,
}

/// A dataset version in the cache.
#[derive(Debug, Clone)]
pub(crate) struct CachedTable {
    pub table: String,
    pub columns: Vec<String>,
}

/// Why an import or a read did not happen.
#[derive(Debug)]
pub(crate) enum CacheError {
    Canceled,
    /// Bad data or a bad schema file: the message names the file.
    Data(String),
    /// I/O or SQLite trouble.
    Internal(String),
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Canceled => f.write_str("canceled"),
            CacheError::Data(m) | CacheError::Internal(m) => f.write_str(m),
        }
    }
}

fn sql_err(e: rusqlite::Error) -> CacheError {
    CacheError::Internal(format!("import cache: {e}"))
}

/// The cache of one workspace.
pub(crate) struct Cache {
    path: PathBuf,
    /// One import at a time in this process (other processes wait on SQLite's lock).
    import_lock: Mutex<()>,
}

/// Quotes an SQL identifier.
pub(crate) fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Reads a file through, feeding every raw byte to a shared hasher.
struct HashingReader<R> {
    inner: R,
    hasher: Rc<RefCell<Sha256>>,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Kind of one CSV field, for inference. Ordered: a column's type is the widest kind of
/// its values (`Empty` < `Integer` < `Real` < `Text`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Empty,
    Integer,
    Real,
    Text,
}

/// Classifies a field: an integer is `[+-]?digits` fitting i64 without a leading zero
/// (so codes such as `007` stay text); a real is a decimal number with an optional
/// exponent; everything else is text.
fn classify(b: &[u8]) -> Kind {
    if b.is_empty() {
        return Kind::Empty;
    }
    let body = match b[0] {
        b'+' | b'-' => &b[1..],
        _ => b,
    };
    let int_digits = body.iter().take_while(|c| c.is_ascii_digit()).count();
    if int_digits > 1 && body[0] == b'0' {
        return Kind::Text;
    }
    let rest = &body[int_digits..];
    if rest.is_empty() {
        if int_digits == 0 {
            return Kind::Text;
        }
        // Fits i64? (19 digits may or may not.)
        return if int_digits < 19
            || std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_some()
        {
            Kind::Integer
        } else {
            Kind::Text
        };
    }
    let mut rest = rest;
    let mut frac_digits = 0;
    if rest[0] == b'.' {
        rest = &rest[1..];
        frac_digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
        rest = &rest[frac_digits..];
    }
    if int_digits + frac_digits == 0 {
        return Kind::Text;
    }
    if !rest.is_empty() {
        if rest[0] != b'e' && rest[0] != b'E' {
            return Kind::Text;
        }
        rest = &rest[1..];
        if let Some(&(b'+' | b'-')) = rest.first() {
            rest = &rest[1..];
        }
        if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
            return Kind::Text;
        }
    }
    Kind::Real
}

impl Cache {
    pub fn new(paths: &Paths) -> Self {
        Cache {
            path: paths.cache.clone(),
            import_lock: Mutex::new(()),
        }
    }

    /// A connection that may write (imports, bookkeeping).
    fn open_rw(&self) -> Result<Connection, CacheError> {
        let conn = Connection::open(&self.path).map_err(sql_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA cache_size = -65536;
             CREATE TABLE IF NOT EXISTS dwflow_tables (
                 key TEXT PRIMARY KEY,
                 table_name TEXT NOT NULL,
                 content_sha256 TEXT NOT NULL,
                 columns TEXT NOT NULL,
                 types TEXT NOT NULL,
                 rows INTEGER NOT NULL,
                 imported TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS dwflow_sources (
                 name TEXT PRIMARY KEY,
                 key TEXT NOT NULL,
                 size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL
             );",
        )
        .map_err(sql_err)?;
        Ok(conn)
    }

    /// Creates the cache file and its bookkeeping tables.
    pub fn init(&self) -> Result<(), CacheError> {
        self.open_rw().map(drop)
    }

    /// A read-only connection for queries (a job's SQL cannot change the cache).
    pub fn open_ro(&self) -> Result<Connection, CacheError> {
        if !self.path.exists() {
            self.init()?;
        }
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql_err)?;
        Ok(conn)
    }

    /// The cache key of a dataset file: SHA-256 of the import version, the declared
    /// schema and the file's content. Returns `(key, content_sha256)`.
    fn key_of(
        &self,
        ds: &Located,
        canceled: &dyn Fn() -> bool,
    ) -> Result<(String, String), CacheError> {
        let file = std::fs::File::open(&ds.path)
            .map_err(|e| CacheError::Internal(format!("cannot read {}: {e}", ds.path.display())))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut content = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            if canceled() {
                return Err(CacheError::Canceled);
            }
            let n = reader.read(&mut buf).map_err(|e| {
                CacheError::Internal(format!("cannot read {}: {e}", ds.path.display()))
            })?;
            if n == 0 {
                break;
            }
            content.update(&buf[..n]);
        }
        let content = hex(&content.finalize());
        let mut key = Sha256::new();
        key.update(IMPORT_VERSION.as_bytes());
        key.update([0u8]);
        key.update(if ds.gz { b"gz" } else { b"--" });
        key.update(content.as_bytes());
        if let Some(schema) = &ds.schema {
            let text = std::fs::read(schema).map_err(|e| {
                CacheError::Internal(format!("cannot read {}: {e}", schema.display()))
            })?;
            key.update([1u8]);
            key.update(&text);
        }
        Ok((hex(&key.finalize()), content))
    }

    fn lookup(conn: &Connection, key: &str) -> Result<Option<CachedTable>, CacheError> {
        conn.query_row(
            "SELECT table_name, columns FROM dwflow_tables WHERE key = ?1",
            [key],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()
        .map_err(sql_err)?
        .map(|(table, columns)| {
            let columns: Vec<String> = serde_json::from_str(&columns)
                .map_err(|e| CacheError::Internal(format!("import cache: bad column list: {e}")))?;
            Ok(CachedTable { table, columns })
        })
        .transpose()
    }

    /// Records which version a dataset name points to (used to list row counts without
    /// hashing, and to drop versions nothing points to any more).
    fn note_source(conn: &Connection, ds: &Located, key: &str) -> Result<(), CacheError> {
        let (size, mtime_ns) = file_stamp(&ds.path);
        let current: Option<(String, i64, i64)> = conn
            .query_row(
                "SELECT key, size, mtime_ns FROM dwflow_sources WHERE name = ?1",
                [&ds.name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(sql_err)?;
        if current.as_ref() == Some(&(key.to_string(), size, mtime_ns)) {
            return Ok(());
        }
        conn.execute(
            "INSERT INTO dwflow_sources (name, key, size, mtime_ns) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(name) DO UPDATE SET key = excluded.key, size = excluded.size,
                 mtime_ns = excluded.mtime_ns",
            params![ds.name, key, size, mtime_ns],
        )
        .map_err(sql_err)?;
        Ok(())
    }

    /// Drops dataset versions no dataset name points to any more.
    fn collect_garbage(conn: &Connection) -> Result<(), CacheError> {
        let stale: Vec<(String, String)> = {
            let mut stmt = conn
                .prepare(
                    "SELECT key, table_name FROM dwflow_tables
                     WHERE key NOT IN (SELECT key FROM dwflow_sources)",
                )
                .map_err(sql_err)?;
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(sql_err)?
                .collect::<Result<_, _>>()
                .map_err(sql_err)?
        };
        for (key, table) in stale {
            conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", ident(&table)))
                .map_err(sql_err)?;
            conn.execute("DELETE FROM dwflow_tables WHERE key = ?1", [&key])
                .map_err(sql_err)?;
        }
        Ok(())
    }

    /// Row count of a dataset when the cache knows its current version without hashing
    /// (same size and modification time as when it was last imported).
    pub fn known_rows(&self, ds: &Located) -> Option<u64> {
        let conn =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
        let (size, mtime_ns) = file_stamp(&ds.path);
        conn.query_row(
            "SELECT t.rows FROM dwflow_sources s JOIN dwflow_tables t ON t.key = s.key
             WHERE s.name = ?1 AND s.size = ?2 AND s.mtime_ns = ?3",
            params![ds.name, size, mtime_ns],
            |r| r.get::<_, i64>(0),
        )
        .ok()
        .map(|n| n.max(0) as u64)
    }

    /// Imports the dataset unless this version of it is already cached.
    pub fn ensure(
        &self,
        paths: &Paths,
        ds: &Located,
        canceled: &dyn Fn() -> bool,
    ) -> Result<CachedTable, CacheError> {
        let started = std::time::Instant::now();
        let (key, content_sha) = self.key_of(ds, canceled)?;
        tracing::debug!("hashed {} in {:?}", ds.name, started.elapsed());
        let conn = self.open_rw()?;
        if let Some(found) = Self::lookup(&conn, &key)? {
            Self::note_source(&conn, ds, &key)?;
            return Ok(found);
        }
        let _guard = self.import_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = Self::lookup(&conn, &key)? {
            Self::note_source(&conn, ds, &key)?;
            return Ok(found);
        }
        let shown = ds.display(paths);
        let declared = match &ds.schema {
            Some(p) => read_schema(p, &paths.root)?,
            None => SchemaFile::default(),
        };
        // Pass 1: the header and the column types.
        let (columns, types) = infer(ds, &shown, &declared, &content_sha, canceled)?;
        tracing::debug!(
            "inferred the columns of {} at {:?}",
            ds.name,
            started.elapsed()
        );
        // Pass 2: the rows, in one transaction.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sql_err)?;
        let result = (|| {
            if let Some(found) = Self::lookup(&conn, &key)? {
                return Ok(found);
            }
            let table = format!("ds_{}", &key[..32]);
            let cols_sql: Vec<String> = columns
                .iter()
                .zip(&types)
                .map(|(c, t)| format!("{} {}", ident(c), t.sql()))
                .collect();
            conn.execute_batch(&format!(
                "DROP TABLE IF EXISTS {t}; CREATE TABLE {t} ({});",
                cols_sql.join(", "),
                t = ident(&table)
            ))
            .map_err(sql_err)?;
            let rows = insert_rows(&conn, &table, ds, &shown, &types, &content_sha, canceled)?;
            conn.execute(
                "INSERT INTO dwflow_tables (key, table_name, content_sha256, columns, types, rows, imported)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    key,
                    table,
                    content_sha,
                    serde_json::to_string(&columns).unwrap_or_default(),
                    serde_json::to_string(&types).unwrap_or_default(),
                    rows as i64,
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                ],
            )
            .map_err(sql_err)?;
            Self::note_source(&conn, ds, &key)?;
            Self::collect_garbage(&conn)?;
            Ok(CachedTable {
                table,
                columns: columns.clone(),
            })
        })();
        match result {
            Ok(t) => {
                tracing::debug!(
                    "inserted the rows of {} at {:?}",
                    ds.name,
                    started.elapsed()
                );
                conn.execute_batch("COMMIT").map_err(sql_err)?;
                tracing::debug!("imported {} in {:?}", ds.name, started.elapsed());
                Ok(t)
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Reads rows of a cached table, in file order.
    pub fn read(&self, table: &CachedTable, limit: Option<usize>) -> Result<Rows, CacheError> {
        let conn = self.open_ro()?;
        let limit = limit.map(|l| l.min(i64::MAX as usize) as i64).unwrap_or(-1);
        let mut stmt = conn
            .prepare(&format!(
                "SELECT * FROM {} ORDER BY rowid LIMIT ?1",
                ident(&table.table)
            ))
            .map_err(sql_err)?;
        let n = stmt.column_count();
        let mut rows = Vec::new();
        let mut q = stmt.query([limit]).map_err(sql_err)?;
        while let Some(row) = q.next().map_err(sql_err)? {
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(json_value(row.get_ref(i).map_err(sql_err)?));
            }
            rows.push(out);
        }
        Ok(Rows {
            columns: table.columns.clone(),
            rows,
        })
    }
}

/// A SQLite value as JSON: numbers as numbers, NULL as null.
pub(crate) fn json_value(v: rusqlite::types::ValueRef<'_>) -> serde_json::Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => serde_json::Value::from(i),
        ValueRef::Real(f) => serde_json::Number::from_f64(f)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        ValueRef::Text(t) => serde_json::Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => serde_json::Value::String(hex(b)),
    }
}

/// Size and modification time (ns since the epoch) of a file; zeros when unknown.
fn file_stamp(path: &Path) -> (i64, i64) {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
                .unwrap_or(0);
            (m.len().min(i64::MAX as u64) as i64, mtime)
        }
        Err(_) => (0, 0),
    }
}

/// Reads a `NAME.schema.yaml`.
pub(crate) fn read_schema(path: &Path, root: &Path) -> Result<SchemaFile, CacheError> {
    let shown = path
        .strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| CacheError::Internal(format!("cannot read {shown}: {e}")))?;
    if meta.len() > 1 << 20 {
        return Err(CacheError::Data(format!(
            "{shown}: too large for a schema file"
        )));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| CacheError::Internal(format!("cannot read {shown}: {e}")))?;
    let options = serde_saphyr::options! {
        strict_booleans: true,
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_depth: 8,
            max_nodes: 100_000,
            max_aliases: 0,
            max_anchors: 0,
            max_documents: 1,
        },
    };
    serde_saphyr::from_str_with_options::<SchemaFile>(&text, options).map_err(|e| {
        let first = e.to_string();
        let first = first.lines().next().unwrap_or("invalid YAML").to_string();
        CacheError::Data(format!(
            "{shown}: {first} (expected `columns: {{NAME: integer|real|text}}`)"
        ))
    })
}

/// Opens the dataset file for one CSV pass, hashing its raw bytes on the way.
fn open_csv(
    ds: &Located,
    shown: &str,
    hasher: &Rc<RefCell<Sha256>>,
) -> Result<csv::Reader<Box<dyn Read>>, CacheError> {
    let file = std::fs::File::open(&ds.path)
        .map_err(|e| CacheError::Internal(format!("cannot read {shown}: {e}")))?;
    let hashing = HashingReader {
        inner: file,
        hasher: Rc::clone(hasher),
    };
    let reader: Box<dyn Read> = if ds.gz {
        Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(
            1 << 20,
            hashing,
        )))
    } else {
        Box::new(hashing)
    };
    Ok(csv::ReaderBuilder::new()
        .has_headers(true)
        .buffer_capacity(1 << 20)
        .from_reader(reader))
}

fn csv_error(shown: &str, e: &csv::Error) -> CacheError {
    match e.kind() {
        csv::ErrorKind::Io(io) => CacheError::Internal(format!("cannot read {shown}: {io}")),
        csv::ErrorKind::UnequalLengths {
            pos,
            expected_len,
            len,
        } => CacheError::Data(format!(
            "{shown}: line {}: {len} fields where the header has {expected_len}",
            pos.as_ref().map(|p| p.line()).unwrap_or(0)
        )),
        _ => CacheError::Data(format!("{shown}: {e}")),
    }
}

/// Checks, after a full pass, that the bytes read are the version that was hashed.
fn check_unchanged(
    shown: &str,
    reader: csv::Reader<Box<dyn Read>>,
    hasher: &Rc<RefCell<Sha256>>,
    expected: &str,
) -> Result<(), CacheError> {
    let mut rest = reader.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink())
        .map_err(|e| CacheError::Internal(format!("cannot read {shown}: {e}")))?;
    drop(rest);
    let got = hex(&hasher.borrow().clone().finalize());
    if got != expected {
        return Err(CacheError::Internal(format!(
            "{shown} changed while it was being imported; run the job again"
        )));
    }
    Ok(())
}

/// Column names from a header line (an empty name becomes `column_N`).
fn header_names(shown: &str, header: &csv::ByteRecord) -> Result<Vec<String>, CacheError> {
    if header.is_empty() {
        return Err(CacheError::Data(format!(
            "{shown}: no header line: a dataset's first line names its columns"
        )));
    }
    let mut columns: Vec<String> = Vec::with_capacity(header.len());
    for (i, raw) in header.iter().enumerate() {
        let name = std::str::from_utf8(raw)
            .map_err(|_| CacheError::Data(format!("{shown}: the header is not UTF-8")))?;
        let name = if name.is_empty() {
            format!("column_{}", i + 1)
        } else {
            name.to_string()
        };
        if columns.contains(&name) {
            return Err(CacheError::Data(format!(
                "{shown}: the header names column `{name}` twice"
            )));
        }
        columns.push(name);
    }
    Ok(columns)
}

/// The column names of a dataset, from its first line.
pub(crate) fn read_header(ds: &Located, shown: &str) -> Result<Vec<String>, CacheError> {
    let hasher = Rc::new(RefCell::new(Sha256::new()));
    let mut rdr = open_csv(ds, shown, &hasher)?;
    let header = rdr
        .byte_headers()
        .map_err(|e| csv_error(shown, &e))?
        .clone();
    header_names(shown, &header)
}

/// Pass 1: column names and types (declared ones win, the rest inferred from values).
fn infer(
    ds: &Located,
    shown: &str,
    declared: &SchemaFile,
    content_sha: &str,
    canceled: &dyn Fn() -> bool,
) -> Result<(Vec<String>, Vec<ColType>), CacheError> {
    let hasher = Rc::new(RefCell::new(Sha256::new()));
    let mut rdr = open_csv(ds, shown, &hasher)?;
    let header = rdr
        .byte_headers()
        .map_err(|e| csv_error(shown, &e))?
        .clone();
    let columns = header_names(shown, &header)?;
    for name in declared.columns.keys() {
        if !columns.contains(name) {
            return Err(CacheError::Data(format!(
                "{shown}: its schema declares column `{name}`, which the file does not have (columns: {})",
                columns.join(", ")
            )));
        }
    }
    let fixed: Vec<Option<ColType>> = columns
        .iter()
        .map(|c| declared.columns.get(c).copied())
        .collect();
    let mut kinds: Vec<Kind> = fixed
        .iter()
        .map(|f| if f.is_some() { Kind::Text } else { Kind::Empty })
        .collect();
    let mut rec = csv::ByteRecord::new();
    let mut n: u64 = 0;
    // With every type declared there is nothing to infer (the insert pass still checks
    // each value and that the file did not change).
    let all_declared = fixed.iter().all(Option::is_some);
    while !all_declared
        && rdr
            .read_byte_record(&mut rec)
            .map_err(|e| csv_error(shown, &e))?
    {
        n += 1;
        if n.is_multiple_of(CANCEL_CHECK_ROWS) && canceled() {
            return Err(CacheError::Canceled);
        }
        for (kind, field) in kinds.iter_mut().zip(rec.iter()) {
            if *kind == Kind::Text {
                continue;
            }
            let k = classify(field);
            if k > *kind {
                *kind = k;
            }
        }
    }
    if !all_declared {
        check_unchanged(shown, rdr, &hasher, content_sha)?;
    }
    let types = fixed
        .iter()
        .zip(&kinds)
        .map(|(f, k)| {
            f.unwrap_or(match k {
                Kind::Integer => ColType::Integer,
                Kind::Real => ColType::Real,
                Kind::Empty | Kind::Text => ColType::Text,
            })
        })
        .collect();
    Ok((columns, types))
}

/// Pass 2: inserts every row with one prepared statement (inside the caller's
/// transaction). Returns the row count.
fn insert_rows(
    conn: &Connection,
    table: &str,
    ds: &Located,
    shown: &str,
    types: &[ColType],
    content_sha: &str,
    canceled: &dyn Fn() -> bool,
) -> Result<u64, CacheError> {
    let hasher = Rc::new(RefCell::new(Sha256::new()));
    let mut rdr = open_csv(ds, shown, &hasher)?;
    let header_len = rdr.byte_headers().map_err(|e| csv_error(shown, &e))?.len();
    if header_len != types.len() {
        return Err(CacheError::Internal(format!(
            "{shown} changed while it was being imported; run the job again"
        )));
    }
    let placeholders: Vec<String> = (1..=types.len()).map(|i| format!("?{i}")).collect();
    let mut stmt = conn
        .prepare(&format!(
            "INSERT INTO {} VALUES ({})",
            ident(table),
            placeholders.join(", ")
        ))
        .map_err(sql_err)?;
    let mut rec = csv::ByteRecord::new();
    let mut n: u64 = 0;
    let bad = |rec: &csv::ByteRecord, col: usize, what: &str| -> CacheError {
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        CacheError::Data(format!(
            "{shown}: line {line}, column {}: `{}` is not {what}",
            col + 1,
            String::from_utf8_lossy(&rec[col])
                .chars()
                .take(60)
                .collect::<String>()
        ))
    };
    while rdr
        .read_byte_record(&mut rec)
        .map_err(|e| csv_error(shown, &e))?
    {
        n += 1;
        if n.is_multiple_of(CANCEL_CHECK_ROWS) && canceled() {
            return Err(CacheError::Canceled);
        }
        for (i, (field, ty)) in rec.iter().zip(types).enumerate() {
            let idx = i + 1;
            if field.is_empty() {
                stmt.raw_bind_parameter(idx, rusqlite::types::Null)
                    .map_err(sql_err)?;
                continue;
            }
            let text = std::str::from_utf8(field).map_err(|_| bad(&rec, i, "UTF-8 text"))?;
            match ty {
                ColType::Integer => {
                    let v: i64 = text
                        .parse()
                        .map_err(|_| bad(&rec, i, "an integer (as the schema declares)"))?;
                    stmt.raw_bind_parameter(idx, v).map_err(sql_err)?;
                }
                ColType::Real => {
                    let v: f64 = match classify(field) {
                        Kind::Integer | Kind::Real => text.parse().ok(),
                        _ => None,
                    }
                    .ok_or_else(|| bad(&rec, i, "a number (as the schema declares)"))?;
                    stmt.raw_bind_parameter(idx, v).map_err(sql_err)?;
                }
                ColType::Text => {
                    stmt.raw_bind_parameter(idx, text).map_err(sql_err)?;
                }
            }
        }
        stmt.raw_execute().map_err(sql_err)?;
    }
    check_unchanged(shown, rdr, &hasher, content_sha)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_fields() {
        for (s, k) in [
            ("", Kind::Empty),
            ("0", Kind::Integer),
            ("-12", Kind::Integer),
            ("+7", Kind::Integer),
            ("007", Kind::Text),
            ("9223372036854775807", Kind::Integer),
            ("9223372036854775808", Kind::Text),
            ("1.5", Kind::Real),
            ("-0.5", Kind::Real),
            (".5", Kind::Real),
            ("1.", Kind::Real),
            ("1e5", Kind::Real),
            ("7.1199999e-05", Kind::Real),
            ("1e", Kind::Text),
            (".", Kind::Text),
            ("-", Kind::Text),
            ("inf", Kind::Text),
            ("NaN", Kind::Text),
            (" 1", Kind::Text),
            ("1 ", Kind::Text),
            ("R80711", Kind::Text),
            ("2014-01-01T01:00:00+01:00", Kind::Text),
        ] {
            assert_eq!(classify(s.as_bytes()), k, "{s:?}");
        }
    }
}
