//! Keeping secrets out of text: the values of parameters marked `secret` are replaced
//! by `***` in everything dwflow writes (journals, events, reports, errors).

use indexmap::IndexMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::pipeline::model::Pipeline;
use crate::plan::MASK;

/// The text values of the pipeline's secret parameters (empty values are skipped: they
/// would mask everything).
pub fn secret_values(p: &Pipeline, params: &IndexMap<String, Value>) -> Vec<String> {
    let mut out: Vec<String> = p
        .params
        .iter()
        .filter(|(_, spec)| spec.secret)
        .filter_map(|(name, _)| params.get(name))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    // Longest first, so a secret containing another is masked whole.
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out
}

/// Replaces every occurrence of each secret in `text` with `***`.
pub fn mask(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_longest_first() {
        let secrets = vec!["abcdef".to_string(), "abc".to_string()];
        assert_eq!(mask("x=abcdef y=abc", &secrets), "x=*** y=***");
    }
}
