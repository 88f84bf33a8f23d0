//! Where a dataset's file is: `datasets/NAME.csv` or `datasets/NAME.csv.gz` (source
//! datasets, read-only to jobs) or `.dwflow/datasets/NAME.csv` (written by jobs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Paths;
use super::names::{check_name, validate_dataset_name};
use crate::backend::{BackendError, ErrorKind};

/// A dataset file found in the workspace.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    pub name: String,
    pub path: PathBuf,
    pub gz: bool,
    /// `NAME.schema.yaml` beside the data, when it exists.
    pub schema: Option<PathBuf>,
}

impl Located {
    /// The path relative to the workspace, for messages.
    pub fn display(&self, paths: &Paths) -> String {
        self.path
            .strip_prefix(&paths.root)
            .unwrap_or(&self.path)
            .display()
            .to_string()
    }
}

fn internal(e: std::io::Error, what: &Path) -> BackendError {
    BackendError::new(
        ErrorKind::Internal,
        format!("cannot read {}: {e}", what.display()),
    )
}

fn schema_beside(dir: &Path, name: &str) -> Option<PathBuf> {
    let p = dir.join(format!("{name}.schema.yaml"));
    p.is_file().then_some(p)
}

/// The source dataset `name`, if any (an error when both `.csv` and `.csv.gz` exist).
pub(crate) fn locate_source(paths: &Paths, name: &str) -> Result<Option<Located>, BackendError> {
    validate_dataset_name(name)?;
    let plain = paths.datasets.join(format!("{name}.csv"));
    let gz = paths.datasets.join(format!("{name}.csv.gz"));
    let found = match (plain.is_file(), gz.is_file()) {
        (true, true) => {
            return Err(BackendError::new(
                ErrorKind::Invalid,
                format!(
                    "dataset `{name}` exists twice, as datasets/{name}.csv and datasets/{name}.csv.gz: keep one"
                ),
            ));
        }
        (true, false) => Some((plain, false)),
        (false, true) => Some((gz, true)),
        (false, false) => None,
    };
    Ok(found.map(|(path, gz)| Located {
        name: name.to_string(),
        path,
        gz,
        schema: schema_beside(&paths.datasets, name),
    }))
}

/// The dataset `name`: a source dataset, else one written by a job.
pub(crate) fn locate(paths: &Paths, name: &str) -> Result<Option<Located>, BackendError> {
    if let Some(found) = locate_source(paths, name)? {
        return Ok(Some(found));
    }
    let path = paths.generated.join(format!("{name}.csv"));
    Ok(path.is_file().then(|| Located {
        name: name.to_string(),
        path,
        gz: false,
        schema: schema_beside(&paths.generated, name),
    }))
}

/// Dataset names in a directory, with the suffixes given.
fn names_in(dir: &Path, suffixes: &[&str]) -> Result<Vec<String>, BackendError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(internal(e, dir)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| internal(e, dir))?;
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let Some(name) = suffixes.iter().find_map(|s| file_name.strip_suffix(s)) else {
            continue;
        };
        if let Err(m) = check_name(name, "dataset name") {
            tracing::warn!("ignoring {}: {m}", dir.join(&file_name).display());
            continue;
        }
        out.push(name.to_string());
    }
    Ok(out)
}

/// Every dataset of the workspace, by name (source datasets shadow generated ones).
pub(crate) fn list(paths: &Paths) -> Result<Vec<Located>, BackendError> {
    let mut by_name: BTreeMap<String, Located> = BTreeMap::new();
    for name in names_in(&paths.datasets, &[".csv.gz", ".csv"])? {
        if by_name.contains_key(&name) {
            continue;
        }
        if let Some(found) = locate_source(paths, &name)? {
            by_name.insert(name, found);
        }
    }
    for name in names_in(&paths.generated, &[".csv"])? {
        if by_name.contains_key(&name) {
            continue;
        }
        if let Some(found) = locate(paths, &name)? {
            by_name.insert(name, found);
        }
    }
    Ok(by_name.into_values().collect())
}
