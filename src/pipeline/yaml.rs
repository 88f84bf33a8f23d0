//! The YAML layer: bytes -> a spanned YAML tree, parsed by serde-saphyr with strict
//! settings and resource budgets. Every node keeps its line, column and byte range, so
//! the schema pass (JSON pointers) and the analyzer can point back into the file, and the
//! exact source text of a scalar can be recovered (`1.10` stays `1.10`).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// Files larger than this are refused before parsing: pipelines are hand-written and a
/// 10,000-step generated DAG is about 2 MB.
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// Deepest nesting accepted; real pipelines nest about six levels.
pub const MAX_DEPTH: usize = 64;

/// Where a node starts in the source (1-based line and column, in characters) and the
/// byte range of its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
    pub offset: usize,
    pub len: usize,
}

/// One YAML node with its position.
#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub value: NodeValue,
}

/// The value of a node, typed the YAML 1.2 core-schema way (strict booleans, leading-zero
/// numbers kept as strings).
#[derive(Debug, Clone)]
pub enum NodeValue {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl NodeValue {
    /// The value's kind, as users read it in messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "boolean",
            NodeValue::Int(_) | NodeValue::UInt(_) => "integer",
            NodeValue::Float(_) => "number",
            NodeValue::Str(_) => "string",
            NodeValue::Seq(_) => "list",
            NodeValue::Map(_) => "mapping",
        }
    }

    pub fn is_scalar(&self) -> bool {
        !matches!(self, NodeValue::Seq(_) | NodeValue::Map(_))
    }
}

/// A parse failure, with the position serde-saphyr reported.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub kind: YamlErrorKind,
    pub message: String,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    Syntax,
    DuplicateKey,
    /// An alias, node, depth or size budget was exceeded (alias bombs, deep nesting).
    Budget,
    InvalidUtf8,
    Empty,
    TooLarge,
}

impl YamlErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            YamlErrorKind::Syntax => "yaml-syntax",
            YamlErrorKind::DuplicateKey => "duplicate-key",
            YamlErrorKind::Budget => "yaml-budget",
            YamlErrorKind::InvalidUtf8 => "invalid-utf8",
            YamlErrorKind::Empty => "empty-file",
            YamlErrorKind::TooLarge => "file-too-large",
        }
    }
}

/// Parses one YAML document into a spanned tree.
pub fn parse(bytes: &[u8]) -> Result<Node, YamlError> {
    if bytes.len() > MAX_FILE_BYTES {
        return Err(YamlError {
            kind: YamlErrorKind::TooLarge,
            message: format!(
                "the file is larger than the {} MiB limit for pipeline files",
                MAX_FILE_BYTES / (1024 * 1024)
            ),
            pos: Pos {
                line: 1,
                col: 1,
                ..Pos::default()
            },
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let valid = &bytes[..e.valid_up_to()];
        // The prefix is valid UTF-8 by construction, so this lossless view is exact.
        let prefix = String::from_utf8_lossy(valid);
        let line = prefix.matches('\n').count() as u32 + 1;
        let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) as u32 + 1;
        YamlError {
            kind: YamlErrorKind::InvalidUtf8,
            message: format!("invalid UTF-8 at byte {}", e.valid_up_to()),
            pos: Pos {
                line,
                col,
                offset: e.valid_up_to(),
                len: 1,
            },
        }
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(YamlError {
            kind: YamlErrorKind::Empty,
            message: "the file is empty: a pipeline needs at least `name` and `steps`".into(),
            pos: Pos {
                line: 1,
                col: 1,
                ..Pos::default()
            },
        });
    }
    let root: Spanned<NodeValue> =
        serde_saphyr::from_str_with_options(text, options()).map_err(convert_error)?;
    Ok(node_from(root))
}

fn options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        // We print our own snippet; keep the error unwrapped so its kind is visible.
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_depth: MAX_DEPTH,
            max_nodes: 2_000_000,
            max_events: 4_000_000,
            max_aliases: 10_000,
            max_anchors: 10_000,
            max_documents: 1,
        },
    };
    // Aliases are for sharing a block or two; an expansion past these is an alias bomb.
    options.alias_limits.max_total_replayed_events = 100_000;
    options.alias_limits.max_replay_stack_depth = 16;
    options.alias_limits.max_alias_expansions_per_anchor = 1_000;
    options
}

fn pos_of(loc: &serde_saphyr::Location) -> Pos {
    let span = loc.span();
    Pos {
        line: loc.line() as u32,
        col: loc.column() as u32,
        offset: span.byte_offset().unwrap_or(0) as usize,
        len: span.byte_len().unwrap_or(0) as usize,
    }
}

fn node_from(s: Spanned<NodeValue>) -> Node {
    Node {
        pos: pos_of(&s.referenced),
        value: s.value,
    }
}

fn convert_error(err: serde_saphyr::Error) -> YamlError {
    use serde_saphyr::Error as E;
    let kind = match &err {
        E::DuplicateMappingKey { .. } => YamlErrorKind::DuplicateKey,
        E::Budget { .. }
        | E::AliasReplayCounterOverflow { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => YamlErrorKind::Budget,
        // Nesting deeper than the budget surfaces as a recursion error.
        _ if err.to_string().contains("limit exceeded") => YamlErrorKind::Budget,
        _ => YamlErrorKind::Syntax,
    };
    let pos = err.location().map(|l| pos_of(&l)).unwrap_or(Pos {
        line: 1,
        col: 1,
        ..Pos::default()
    });
    let message = match &err {
        E::Budget { breach, .. } => budget_message(breach),
        _ => plain_message(&err),
    };
    YamlError {
        kind,
        message,
        pos: Pos {
            line: pos.line.max(1),
            col: pos.col.max(1),
            ..pos
        },
    }
}

/// A budget breach in words (serde-saphyr prints its debug form).
fn budget_message(breach: &serde_saphyr::budget::BudgetBreach) -> String {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Depth { .. } => format!("the YAML nests deeper than {MAX_DEPTH} levels"),
        B::Documents { documents } => format!(
            "the file holds {documents} or more YAML documents (separated by `---`); a pipeline file holds exactly one"
        ),
        B::Aliases { aliases } => format!("the file uses {aliases} or more aliases (`*name`)"),
        B::Anchors { anchors } => format!("the file defines {anchors} or more anchors (`&name`)"),
        B::Nodes { .. } | B::Events { .. } => "the file has too many YAML nodes".to_string(),
        other => format!("the file exceeds a YAML resource limit ({other:?})"),
    }
}

/// The error's message without the location suffix and snippet serde-saphyr appends
/// (we print positions ourselves).
fn plain_message(err: &serde_saphyr::Error) -> String {
    let full = err.to_string();
    let mut first = full.lines().next().unwrap_or("invalid YAML").trim();
    first = first.strip_prefix("error:").unwrap_or(first).trim_start();
    // Drop a leading "line L column C:" (we print positions ourselves).
    if first.starts_with("line ")
        && let Some(i) = first.find(": ")
    {
        first = &first[i + 2..];
    }
    // The first " at line": alias errors go on with "(defined at line ...)".
    let trimmed = match first.find(" at line ") {
        Some(i) => &first[..i],
        None => first,
    };
    trimmed
        .trim_end_matches(':')
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
}

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<NodeValue, E> {
        Ok(NodeValue::UInt(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<NodeValue, E> {
        Ok(NodeValue::Float(v as f64))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<NodeValue, E> {
        Ok(NodeValue::Float(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NodeValue, E> {
        Ok(NodeValue::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        NodeValue::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<NodeValue>>()? {
            items.push(node_from(item));
        }
        Ok(NodeValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<NodeValue>>()? {
            let value = map.next_value::<Spanned<NodeValue>>()?;
            entries.push((node_from(key), node_from(value)));
        }
        Ok(NodeValue::Map(entries))
    }
}

impl Node {
    /// The text of this node exactly as written in `source` (for scalars).
    pub fn raw<'s>(&self, source: &'s str) -> Option<&'s str> {
        if self.pos.len == 0 {
            return None;
        }
        source.get(self.pos.offset..self.pos.offset + self.pos.len)
    }

    /// A map key as text: strings as they are, other scalars as written.
    pub fn key_text(&self, source: &str) -> String {
        match &self.value {
            NodeValue::Str(s) => s.clone(),
            _ => self
                .raw(source)
                .map(str::to_string)
                .unwrap_or_else(|| scalar_display(&self.value)),
        }
    }

    /// Follows a JSON pointer (`/steps/0/needs`). Returns the value node.
    pub fn lookup(&self, pointer: &str, source: &str) -> Option<&Node> {
        let mut node = self;
        for token in pointer_tokens(pointer) {
            node = node.child(&token, source)?.1;
        }
        Some(node)
    }

    /// Follows a JSON pointer to a map entry and returns the entry's key node.
    pub fn lookup_key(&self, pointer: &str, source: &str) -> Option<&Node> {
        let tokens = pointer_tokens(pointer);
        let (last, parents) = tokens.split_last()?;
        let mut node = self;
        for token in parents {
            node = node.child(token, source)?.1;
        }
        node.child(last, source)?.0
    }

    fn child(&self, token: &str, source: &str) -> Option<(Option<&Node>, &Node)> {
        match &self.value {
            NodeValue::Map(entries) => entries
                .iter()
                .rev() // merged keys come first; the explicit key wins
                .find(|(k, _)| k.key_text(source) == token)
                .map(|(k, v)| (Some(k), v)),
            NodeValue::Seq(items) => token
                .parse::<usize>()
                .ok()
                .and_then(|i| items.get(i))
                .map(|v| (None, v)),
            _ => None,
        }
    }

    /// Converts to JSON for the schema pass.
    pub fn to_json(&self, source: &str) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            NodeValue::Null => J::Null,
            NodeValue::Bool(b) => J::Bool(*b),
            NodeValue::Int(i) => J::from(*i),
            NodeValue::UInt(u) => J::from(*u),
            // A whole number written as a float (`2.0`, `1e3`) is an integer to the
            // schema; give it to the typed parse as one too (unless it is out of range,
            // which the schema reports).
            NodeValue::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < u64::MAX as f64 => {
                J::from(*f as u64)
            }
            NodeValue::Float(f) if f.fract() == 0.0 && *f < 0.0 && *f >= i64::MIN as f64 => {
                J::from(*f as i64)
            }
            NodeValue::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(self.raw(source).unwrap_or("").to_string())),
            NodeValue::Str(s) => J::String(s.clone()),
            NodeValue::Seq(items) => J::Array(items.iter().map(|n| n.to_json(source)).collect()),
            NodeValue::Map(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (k, v) in entries {
                    // Later entries win, as with merge keys overridden by explicit ones.
                    map.insert(k.key_text(source), v.to_json(source));
                }
                J::Object(map)
            }
        }
    }
}

/// A scalar rendered the way YAML resolved it (for messages).
pub fn scalar_display(v: &NodeValue) -> String {
    match v {
        NodeValue::Null => "null".into(),
        NodeValue::Bool(b) => b.to_string(),
        NodeValue::Int(i) => i.to_string(),
        NodeValue::UInt(u) => u.to_string(),
        NodeValue::Float(f) => f.to_string(),
        NodeValue::Str(s) => s.clone(),
        NodeValue::Seq(_) => "[...]".into(),
        NodeValue::Map(_) => "{...}".into(),
    }
}

/// Splits a JSON pointer into unescaped tokens.
pub fn pointer_tokens(pointer: &str) -> Vec<String> {
    if pointer.is_empty() {
        return Vec::new();
    }
    pointer
        .trim_start_matches('/')
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// Escapes one JSON pointer token.
pub fn pointer_escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}
