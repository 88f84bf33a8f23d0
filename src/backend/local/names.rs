//! Names that become file names: dataset names and run ids. Everything that turns a name
//! into a path goes through these checks, so a job can never reach outside its workspace.

use crate::backend::{BackendError, ErrorKind};

/// Longest accepted dataset name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a dataset name: non-empty, at most 128 characters of `[A-Za-z0-9._-]`, not
/// starting with `.`, without `..`. Such a name has no path separator, cannot be absolute
/// and cannot leave the directory it is looked up in.
pub fn validate_dataset_name(name: &str) -> Result<(), BackendError> {
    check_name(name, "dataset name").map_err(|m| BackendError::new(ErrorKind::Invalid, m))
}

/// The same rule, returning the reason as text.
pub(crate) fn check_name(name: &str, what: &str) -> Result<(), String> {
    let shown = shown(name);
    if name.is_empty() {
        return Err(format!("invalid {what}: it is empty"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(format!(
            "invalid {what} `{shown}`: longer than {MAX_NAME_LEN} characters"
        ));
    }
    if name.contains('/') || name.contains('\\') {
        return Err(format!(
            "invalid {what} `{shown}`: it contains a path separator; a name is not a path"
        ));
    }
    if name.starts_with('.') {
        return Err(format!("invalid {what} `{shown}`: it starts with `.`"));
    }
    if name.contains("..") {
        return Err(format!("invalid {what} `{shown}`: it contains `..`"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid {what} `{shown}`: the character {bad:?} is not allowed (use letters, digits, `.`, `_` and `-`)"
        ));
    }
    Ok(())
}

/// A run id as this environment makes them (`local-<uuid>`); anything else is not a run
/// of ours, and must never become part of a path.
pub(crate) fn is_valid_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
}

/// A name cut short and stripped of control characters for an error message.
fn shown(name: &str) -> String {
    let mut s: String = name
        .chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if name.chars().count() > 80 {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["la-haute-borne-scada", "lhb_daily.2014", "A", "x-1.v2"] {
            assert!(validate_dataset_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_paths_and_oddities() {
        let long = "a".repeat(129);
        for bad in [
            "",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            ".hidden",
            "a..b",
            "a b",
            "é",
            "x\0",
            &long,
        ] {
            let err = validate_dataset_name(bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Invalid, "{bad}");
        }
    }

    #[test]
    fn run_ids() {
        assert!(is_valid_run_id(
            "local-0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        ));
        assert!(!is_valid_run_id("../x"));
        assert!(!is_valid_run_id("a.json"));
        assert!(!is_valid_run_id(""));
    }
}
