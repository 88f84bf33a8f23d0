//! The loader never panics, whatever the bytes, and every diagnostic it gives points
//! inside the file (line >= 1, column >= 1, line <= number of lines + 1).

use std::path::Path;
use std::sync::OnceLock;

use dwflow::diagnostic::Severity;
use dwflow::pipeline::load::{Loaded, load_bytes};
use proptest::prelude::*;

/// The valid fixtures and the example pipelines: the seeds that get mutated.
fn corpus() -> &'static [(String, Vec<u8>)] {
    static CORPUS: OnceLock<Vec<(String, Vec<u8>)>> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["tests/fixtures/valid", "pipelines"] {
            for entry in std::fs::read_dir(root.join(dir)).expect("corpus dir") {
                let path = entry.expect("dir entry").path();
                if matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("yaml" | "yml")
                ) {
                    let bytes = std::fs::read(&path).expect("readable");
                    files.push((path.display().to_string(), bytes));
                }
            }
        }
        files.sort();
        assert!(files.len() >= 9, "corpus too small: {}", files.len());
        files
    })
}

/// Characters with a meaning in YAML (or in templates).
const SIGNIFICANT: &[u8] = b":{}[]&*!|>'\"#-%@`,? \t\n";

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit { at: usize, bit: u8 },
    Delete { at: usize, len: usize },
    DuplicateLine { line: usize },
    DeleteLine { line: usize },
    Insert { at: usize, byte: u8 },
    Indent { line: usize, delta: i8 },
    InsertText { at: usize, text: &'static str },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        any::<usize>().prop_map(|line| Mutation::DeleteLine { line }),
        (any::<usize>(), prop::sample::select(SIGNIFICANT))
            .prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (any::<usize>(), -4i8..=4).prop_map(|(line, delta)| Mutation::Indent { line, delta }),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "{{",
                "}}",
                "{%",
                "&a ",
                "*a",
                "<<: *a\n",
                "---\n",
                "~",
                "1.10",
                "0x1F",
                "needs: [",
                "- id: ",
                "\u{feff}",
                "ø",
                "🌬",
                "\r\n",
                "!!binary ",
                "? ",
            ])
        )
            .prop_map(|(at, text)| Mutation::InsertText { at, text }),
    ]
}

/// Byte offsets where lines start.
fn line_starts(bytes: &[u8]) -> Vec<usize> {
    std::iter::once(0)
        .chain(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .map(|(i, _)| i + 1),
        )
        .collect()
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let n = bytes.len();
    match *m {
        Mutation::FlipBit { at, bit } if n > 0 => bytes[at % n] ^= 1 << bit,
        Mutation::Delete { at, len } if n > 0 => {
            let at = at % n;
            bytes.drain(at..(at + len).min(n));
        }
        Mutation::Insert { at, byte } => bytes.insert(at % (n + 1), byte),
        Mutation::InsertText { at, text } => {
            let at = at % (n + 1);
            bytes.splice(at..at, text.bytes());
        }
        Mutation::DuplicateLine { line } | Mutation::DeleteLine { line } => {
            let starts = line_starts(bytes);
            let i = line % starts.len();
            let start = starts[i];
            let end = starts.get(i + 1).copied().unwrap_or(n);
            let text: Vec<u8> = bytes[start..end].to_vec();
            if matches!(m, Mutation::DuplicateLine { .. }) {
                bytes.splice(end..end, text);
            } else {
                bytes.drain(start..end);
            }
        }
        Mutation::Indent { line, delta } => {
            let starts = line_starts(bytes);
            let start = starts[line % starts.len()];
            if delta >= 0 {
                bytes.splice(start..start, std::iter::repeat_n(b' ', delta as usize));
            } else {
                let spaces = bytes[start..]
                    .iter()
                    .take((-delta) as usize)
                    .take_while(|b| **b == b' ')
                    .count();
                bytes.drain(start..start + spaces);
            }
        }
        _ => {}
    }
}

/// Positions inside the file, and a checked pipeline exactly when there is no error.
fn check_invariants(bytes: &[u8], loaded: &Loaded) -> Result<(), TestCaseError> {
    let lines = bytes.split(|b| *b == b'\n').count() as u32;
    for d in &loaded.report.diagnostics {
        prop_assert!(d.line >= 1, "line 0: {d:?}");
        prop_assert!(d.column >= 1, "column 0: {d:?}");
        prop_assert!(
            d.line <= lines + 1,
            "line {} beyond the {lines} lines of the file: {d:?}",
            d.line
        );
        prop_assert!(!d.message.is_empty(), "empty message: {d:?}");
    }
    let errors = loaded
        .report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    prop_assert_eq!(
        loaded.checked.is_some(),
        errors == 0,
        "a checked pipeline exactly when there is no error: {:?}",
        loaded.report.diagnostics
    );
    // Rendering the report never panics either.
    let mut out = String::new();
    dwflow::diagnostic::render_human(&loaded.report, &mut out);
    dwflow::diagnostic::render_github(&loaded.report, &mut out);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // `PROPTEST_CASES=100000 cargo test --test proptest_loader` for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let loaded = load_bytes("fuzz.yaml", &bytes);
        check_invariants(&bytes, &loaded)?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[ -~\t\n\u{a0}-\u{2ff}]{0,2048}") {
        let loaded = load_bytes("fuzz.yaml", text.as_bytes());
        check_invariants(text.as_bytes(), &loaded)?;
    }

    #[test]
    fn mutated_pipelines_never_panic_and_point_inside_the_file(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let (name, original) = seed.get(corpus());
        let mut bytes = original.clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let loaded = load_bytes(name, &bytes);
        check_invariants(&bytes, &loaded)?;
    }
}

/// The seeds themselves load cleanly, so the mutations start from valid pipelines.
#[test]
fn the_corpus_is_valid() {
    for (name, bytes) in corpus() {
        let loaded = load_bytes(name, bytes);
        assert!(
            loaded.checked.is_some() && loaded.report.diagnostics.is_empty(),
            "{name}: {:?}",
            loaded.report.diagnostics
        );
    }
}
