//! The semantic analyzer: everything the schema cannot say. Step ids, job references,
//! dependencies and cycles, template syntax and references (a step may only read the
//! outputs of steps it depends on), parameter defaults. It collects every finding.

use std::collections::HashMap;

use serde_json::Value;

use super::model::{ParamType, Pipeline, Step};
use super::yaml::{Node, NodeValue, Pos, pointer_escape, scalar_display};
use crate::diagnostic::{Diagnostic, did_you_mean, with_article};
use crate::graph::{BitSet, StepGraph};
use crate::template::{self, TemplateRefs};

/// Fields of `steps.<id>` other than `outputs`.
pub const STEP_FIELDS: &[&str] = &["outputs", "run_id", "status", "duration", "attempts"];
/// Fields of `run`.
pub const RUN_FIELDS: &[&str] = &["id", "pipeline", "started_at", "trigger"];

/// The result of analysis: findings, and the resolved dependencies of each step
/// (`needs` by index, with the implicit "previous step" filled in).
pub struct Analysis {
    pub diagnostics: Vec<Diagnostic>,
    pub deps: Vec<Vec<usize>>,
}

pub fn analyze(p: &Pipeline, tree: &Node, source: &str) -> Analysis {
    let mut a = Analyzer {
        p,
        tree,
        source,
        out: Vec::new(),
        dashed: HashMap::new(),
        hint_budget: std::cell::Cell::new(HINT_BUDGET),
    };
    for (i, step) in p.steps.iter().enumerate() {
        if let Some((first, _)) = step.id.split_once('-') {
            a.dashed.entry(first).or_default().push(i);
        }
    }
    let index = a.check_ids();
    a.check_jobs();
    let deps = a.resolve_needs(&index);
    let graph = StepGraph::new(deps.clone());
    a.check_cycles(&graph);
    a.check_params();
    let ancestors = graph.ancestors();
    a.check_templates(&index, ancestors.as_deref());
    a.check_triggers();
    Analysis {
        diagnostics: a.out,
        deps,
    }
}

/// Where a template is, which names it may use.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// A step's params, `when`, `for_each`.
    Step { index: usize, item: bool },
    /// A step's `expect` checks: also `outputs` (the step's own).
    Expect { index: usize },
    /// Trigger parameter templates: only `event`.
    Trigger,
}

struct Analyzer<'a> {
    p: &'a Pipeline,
    tree: &'a Node,
    source: &'a str,
    out: Vec<Diagnostic>,
    /// Steps whose id has a `-`, by the part before the first `-` (`daily` for
    /// `daily-energy`), so a template is checked against those it may name only.
    dashed: HashMap<&'a str, Vec<usize>>,
    /// Comparisons left for "did you mean" hints among step ids and params: a big file
    /// with thousands of unknown ids would otherwise compare each with every step.
    hint_budget: std::cell::Cell<usize>,
}

impl<'a> Analyzer<'a> {
    fn pos(&self, pointer: &str) -> Pos {
        self.tree
            .lookup(pointer, self.source)
            .map_or(self.tree.pos, |n| n.pos)
    }

    fn node(&self, pointer: &str) -> Option<&'a Node> {
        self.tree.lookup(pointer, self.source)
    }

    /// `did_you_mean` among `count` candidates, while the hint budget lasts.
    fn suggest<'c>(
        &self,
        word: &str,
        count: usize,
        candidates: impl IntoIterator<Item = &'c str>,
    ) -> Option<String> {
        let left = self.hint_budget.get();
        if count > left {
            return None;
        }
        self.hint_budget.set(left - count);
        did_you_mean(word, candidates)
    }

    fn step_label(&self, i: usize) -> String {
        format!("step `{}`", self.p.steps[i].id)
    }

    fn check_ids(&mut self) -> HashMap<&'a str, usize> {
        let mut index: HashMap<&str, usize> = HashMap::with_capacity(self.p.steps.len());
        for (i, step) in self.p.steps.iter().enumerate() {
            if let Some(&first) = index.get(step.id.as_str()) {
                let first_line = self.pos(&format!("/steps/{first}/id")).line;
                self.out.push(
                    Diagnostic::error(
                        "duplicate-step-id",
                        self.pos(&format!("/steps/{i}/id")),
                        format!("step id `{}` is used twice", step.id),
                    )
                    .with_hint(format!(
                        "the first step with this id is on line {first_line}; step ids must be unique"
                    )),
                );
            } else {
                index.insert(step.id.as_str(), i);
            }
        }
        index
    }

    fn check_jobs(&mut self) {
        for (i, step) in self.p.steps.iter().enumerate() {
            match (&step.job, &step.job_id) {
                (Some(_), Some(_)) => self.out.push(
                    Diagnostic::error(
                        "job-conflict",
                        self.pos(&format!("/steps/{i}/job_id")),
                        format!("{} has both `job` and `job_id`", self.step_label(i)),
                    )
                    .with_hint("keep one: `job` (a name resolved in the target) or `job_id` (a numeric id)"),
                ),
                // A `job` or `job_id` the schema refused is reported already.
                (None, None)
                    if self.node(&format!("/steps/{i}/job")).is_some()
                        || self.node(&format!("/steps/{i}/job_id")).is_some() => {}
                (None, None) => self.out.push(
                    Diagnostic::error(
                        "job-missing",
                        self.pos(&format!("/steps/{i}")),
                        format!("{} names no job", self.step_label(i)),
                    )
                    .with_hint("add `job: <job name>` or `job_id: <numeric job id>`"),
                ),
                _ => {}
            }
        }
    }

    fn resolve_needs(&mut self, index: &HashMap<&str, usize>) -> Vec<Vec<usize>> {
        let ids: Vec<&str> = self.p.steps.iter().map(|s| s.id.as_str()).collect();
        let mut deps = Vec::with_capacity(self.p.steps.len());
        for (i, step) in self.p.steps.iter().enumerate() {
            let mut d: Vec<usize> = Vec::new();
            match &step.needs {
                None => {
                    if i > 0 {
                        d.push(i - 1);
                    }
                }
                Some(needs) => {
                    for (k, need) in needs.iter().enumerate() {
                        let ptr = format!("/steps/{i}/needs/{k}");
                        match index.get(need.as_str()) {
                            Some(&j) if j == i => self.out.push(
                                Diagnostic::error(
                                    "self-need",
                                    self.pos(&ptr),
                                    format!("{} needs itself", self.step_label(i)),
                                )
                                .with_hint("remove it from `needs`"),
                            ),
                            Some(&j) => {
                                if d.contains(&j) {
                                    self.out.push(
                                        Diagnostic::warning(
                                            "duplicate-need",
                                            self.pos(&ptr),
                                            format!("`{need}` is listed twice in `needs`"),
                                        )
                                        .with_hint("remove the repeated entry"),
                                    );
                                } else {
                                    d.push(j);
                                }
                            }
                            None => {
                                let hint = self
                                    .suggest(need, ids.len(), ids.iter().copied())
                                    .unwrap_or_else(|| {
                                        format!(
                                            "known steps: {}",
                                            preview(ids.iter().copied(), "steps")
                                        )
                                    });
                                self.out.push(
                                    Diagnostic::error(
                                        "unknown-need",
                                        self.pos(&ptr),
                                        format!(
                                            "{} needs `{need}`, but there is no such step",
                                            self.step_label(i)
                                        ),
                                    )
                                    .with_hint(hint),
                                );
                            }
                        }
                    }
                }
            }
            deps.push(d);
        }
        deps
    }

    fn check_cycles(&mut self, graph: &StepGraph) {
        for cycle in graph.cycles() {
            let mut names: Vec<&str> = cycle.iter().map(|&i| self.p.steps[i].id.as_str()).collect();
            names.push(names[0]);
            let first = cycle[0];
            let pos = if self.p.steps[first].needs.is_some() {
                self.pos(&format!("/steps/{first}/needs"))
            } else {
                self.pos(&format!("/steps/{first}"))
            };
            self.out.push(
                Diagnostic::error(
                    "cycle",
                    pos,
                    format!("dependency cycle: {}", names.join(" -> ")),
                )
                .with_hint("each arrow reads \"needs\"; remove one of these dependencies"),
            );
        }
    }

    fn check_params(&mut self) {
        for (name, spec) in &self.p.params {
            let base = format!("/params/{}", pointer_escape(name));
            if !is_identifier(name) {
                self.out.push(
                    Diagnostic::warning(
                        "param-name",
                        self.tree
                            .lookup_key(&base, self.source)
                            .map_or(self.tree.pos, |k| k.pos),
                        format!("parameter name `{name}` is not an identifier"),
                    )
                    .with_hint(format!(
                        "templates can only reach it as params[\"{name}\"]; prefer letters, digits and `_`"
                    )),
                );
            }
            let Some(default) = &spec.default else {
                continue;
            };
            let ptr = format!("{base}/default");
            let node = self.node(&ptr);
            if let Some(message) = default_mismatch(spec.kind, default, node, self.source) {
                let pos = node.map_or(self.tree.pos, |n| n.pos);
                let raw = node.and_then(|n| n.raw(self.source)).unwrap_or("");
                let (code, hint) = match (spec.kind, node.map(|n| &n.value)) {
                    (ParamType::String, Some(v))
                        if v.is_scalar() && !matches!(v, NodeValue::Str(_)) =>
                    {
                        (
                            "implicit-type",
                            format!("quote it to keep the text exactly: \"{raw}\""),
                        )
                    }
                    _ => (
                        "default-type",
                        format!(
                            "give {} default, or change `type`",
                            with_article(spec.kind.as_str())
                        ),
                    ),
                };
                self.out.push(
                    Diagnostic::error(
                        code,
                        pos,
                        format!("default of parameter `{name}` {message}"),
                    )
                    .with_hint(hint),
                );
            }
        }
    }

    fn check_templates(&mut self, index: &HashMap<&str, usize>, ancestors: Option<&[BitSet]>) {
        for (i, step) in self.p.steps.iter().enumerate() {
            let item = step.for_each.is_some();
            let scope = Scope::Step { index: i, item };
            for (k, v) in &step.params {
                let ptr = format!("/steps/{i}/params/{}", pointer_escape(k));
                self.template(v, &ptr, scope, index, ancestors);
            }
            if let Some(when) = &step.when {
                let ptr = format!("/steps/{i}/when");
                self.expression(
                    when,
                    &ptr,
                    Scope::Step {
                        index: i,
                        item: false,
                    },
                    index,
                    ancestors,
                );
            }
            self.check_for_each(i, step, index, ancestors);
            if let Some(expect) = &step.expect {
                for (k, d) in expect.datasets.iter().enumerate() {
                    let ptr = format!("/steps/{i}/expect/datasets/{k}");
                    self.template(d, &ptr, Scope::Expect { index: i }, index, ancestors);
                }
            }
            if step.run_if.is_some() && step.needs.as_ref().is_some_and(Vec::is_empty) {
                self.out.push(
                    Diagnostic::warning(
                        "run-if-without-needs",
                        self.pos(&format!("/steps/{i}/run_if")),
                        format!(
                            "{} has `run_if` but needs no step, so the rule has no effect",
                            self.step_label(i)
                        ),
                    )
                    .with_hint("remove `run_if`, or add `needs`"),
                );
            }
        }
    }

    fn check_for_each(
        &mut self,
        i: usize,
        step: &Step,
        index: &HashMap<&str, usize>,
        ancestors: Option<&[BitSet]>,
    ) {
        let Some(fe) = &step.for_each else { return };
        let scope = Scope::Step {
            index: i,
            item: false,
        };
        // Keys other than `max_parallel` without `items` or `expr`: a misspelt or
        // refused source, reported already.
        let source_reported = fe.items.is_none()
            && fe.expr.is_none()
            && self
                .node(&format!("/steps/{i}/for_each"))
                .is_some_and(|n| match &n.value {
                    NodeValue::Map(entries) => entries
                        .iter()
                        .any(|(k, _)| k.key_text(self.source) != "max_parallel"),
                    _ => false,
                });
        match (&fe.items, &fe.expr) {
            (None, None) if source_reported => {}
            (Some(_), Some(_)) | (None, None) => self.out.push(
                Diagnostic::error(
                    "for-each-source",
                    self.pos(&format!("/steps/{i}/for_each")),
                    format!(
                        "`for_each` of {} needs exactly one of `items` and `expr`",
                        self.step_label(i)
                    ),
                )
                .with_hint(
                    "`items: [a, b]` for a fixed list, or `expr: <expression>` for a computed one",
                ),
            ),
            _ => {}
        }
        if let Some(items) = &fe.items {
            if items.is_empty() {
                self.out.push(
                    Diagnostic::warning(
                        "for-each-empty",
                        self.pos(&format!("/steps/{i}/for_each/items")),
                        format!(
                            "`for_each.items` of {} is empty: the step never runs",
                            self.step_label(i)
                        ),
                    )
                    .with_hint("add items, or remove the step"),
                );
            }
            for (k, item) in items.iter().enumerate() {
                let ptr = format!("/steps/{i}/for_each/items/{k}");
                self.template(item, &ptr, scope, index, ancestors);
            }
        }
        if let Some(expr) = &fe.expr {
            let ptr = format!("/steps/{i}/for_each/expr");
            self.expression(expr, &ptr, scope, index, ancestors);
        }
    }

    fn check_triggers(&mut self) {
        let Some(on) = &self.p.on else { return };
        for (k, s) in on.schedule.iter().enumerate() {
            let fields = s.cron.split_whitespace().count();
            if !(5..=6).contains(&fields) {
                self.out.push(
                    Diagnostic::error(
                        "invalid-cron",
                        self.pos(&format!("/on/schedule/{k}/cron")),
                        format!("cron expression `{}` has {fields} fields", s.cron),
                    )
                    .with_hint(
                        "write 5 fields (minute hour day month weekday), or 6 with seconds first",
                    ),
                );
            } else if let Err(e) = <croner::Cron as std::str::FromStr>::from_str(&s.cron) {
                self.out.push(
                    Diagnostic::error(
                        "invalid-cron",
                        self.pos(&format!("/on/schedule/{k}/cron")),
                        format!("cron expression `{}`: {e}", s.cron),
                    )
                    .with_hint("fields: minute 0-59, hour 0-23, day 1-31, month 1-12, weekday 0-7"),
                );
            }
            if let Some(tz) = &s.timezone
                && tz.parse::<chrono_tz::Tz>().is_err()
            {
                let hint = crate::diagnostic::did_you_mean(
                    tz,
                    chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()),
                )
                .unwrap_or_else(|| {
                    "use an IANA time zone name, e.g. `Europe/Oslo` or `UTC`".into()
                });
                self.out.push(
                    Diagnostic::error(
                        "invalid-timezone",
                        self.pos(&format!("/on/schedule/{k}/timezone")),
                        format!("unknown time zone `{tz}`"),
                    )
                    .with_hint(hint),
                );
            }
            self.trigger_params(&format!("/on/schedule/{k}/params"), &s.params);
        }
        for (k, e) in on.event.iter().enumerate() {
            self.trigger_params(&format!("/on/event/{k}/params"), &e.params);
        }
        for (k, d) in on.dataset.iter().enumerate() {
            self.trigger_params(&format!("/on/dataset/{k}/params"), &d.params);
        }
    }

    fn trigger_params(&mut self, base: &str, params: &std::collections::BTreeMap<String, String>) {
        let empty = HashMap::new();
        for (name, value) in params {
            let ptr = format!("{base}/{}", pointer_escape(name));
            if !self.p.params.contains_key(name) {
                let hint = self
                    .suggest(
                        name,
                        self.p.params.len(),
                        self.p.params.keys().map(String::as_str),
                    )
                    .unwrap_or_else(|| "trigger params set the pipeline's `params`".to_string());
                self.out.push(
                    Diagnostic::error(
                        "undefined-param",
                        self.tree
                            .lookup_key(&ptr, self.source)
                            .map_or(self.tree.pos, |n| n.pos),
                        format!(
                            "trigger sets parameter `{name}`, which the pipeline does not declare"
                        ),
                    )
                    .with_hint(hint),
                );
            }
            self.template(value, &ptr, Scope::Trigger, &empty, None);
        }
    }

    fn template(
        &mut self,
        text: &str,
        ptr: &str,
        scope: Scope,
        index: &HashMap<&str, usize>,
        ancestors: Option<&[BitSet]>,
    ) {
        match template::analyze_template(text) {
            Ok(refs) => self.references(&refs, text, ptr, scope, index, ancestors),
            Err(e) => {
                let pos = self.pos_in_scalar(ptr, text, e.range.as_ref().map_or(0, |r| r.start));
                self.out.push(
                    Diagnostic::error(
                        "template-syntax",
                        pos,
                        format!("template syntax error: {}", e.message),
                    )
                    .with_hint("templates use minijinja (Jinja2) syntax: {{ params.name }}"),
                );
            }
        }
    }

    fn expression(
        &mut self,
        text: &str,
        ptr: &str,
        scope: Scope,
        index: &HashMap<&str, usize>,
        ancestors: Option<&[BitSet]>,
    ) {
        match template::analyze_expression(text) {
            Ok(refs) => self.references(&refs, text, ptr, scope, index, ancestors),
            Err(e) => {
                let pos = self.pos_in_scalar(ptr, text, e.range.as_ref().map_or(0, |r| r.start));
                let hint = if text.contains("{{") {
                    "this is an expression, not a template: write `params.x > 1`, without {{ }}"
                } else {
                    "expressions use minijinja (Jinja2) syntax, e.g. `params.year > 2014`"
                };
                self.out.push(
                    Diagnostic::error(
                        "template-syntax",
                        pos,
                        format!("expression syntax error: {}", e.message),
                    )
                    .with_hint(hint),
                );
            }
        }
    }

    fn references(
        &mut self,
        refs: &TemplateRefs,
        text: &str,
        ptr: &str,
        scope: Scope,
        index: &HashMap<&str, usize>,
        ancestors: Option<&[BitSet]>,
    ) {
        // `steps.daily-energy` reads as `steps.daily - energy`: one finding, not one per
        // part of the id.
        let mut covered: Vec<String> = Vec::new();
        if scope != Scope::Trigger {
            // Only the dashed steps whose first part a reference names (`steps.daily`):
            // scanning every step for every template is quadratic in big pipelines.
            let mut candidates: Vec<usize> = refs
                .variables
                .iter()
                .filter_map(|v| v.strip_prefix("steps.")?.split('.').next())
                .filter_map(|first| self.dashed.get(first))
                .flatten()
                .copied()
                .collect();
            candidates.sort_unstable();
            candidates.dedup();
            let steps = &self.p.steps;
            for step in candidates.into_iter().map(|i| &steps[i]) {
                let first = step.id.split('-').next().unwrap_or_default();
                let head = format!("steps.{first}");
                if !refs
                    .variables
                    .iter()
                    .any(|v| *v == head || v.starts_with(&format!("{head}.")))
                {
                    continue;
                }
                let dotted = format!("steps.{}", step.id);
                let Some(at) = text.match_indices(&dotted).map(|(at, _)| at).find(|&at| {
                    let end = at + dotted.len();
                    let before = text[..at].chars().next_back();
                    !text[end..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                        && !before
                            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                }) else {
                    continue;
                };
                self.out.push(
                    Diagnostic::error(
                        "unknown-step",
                        self.pos_in_scalar(ptr, text, at),
                        format!(
                            "`{dotted}` reads as a subtraction (`steps.{}`), not as step `{}`",
                            step.id.replace('-', " - "),
                            step.id
                        ),
                    )
                    .with_hint(format!(
                        "write a step id with `-` as a subscript: steps['{}']",
                        step.id
                    )),
                );
                covered.push(head);
                covered.extend(step.id.split('-').skip(1).map(str::to_string));
            }
        }
        for var in &refs.variables {
            if covered
                .iter()
                .any(|c| var == c || var.starts_with(&format!("{c}.")))
            {
                continue;
            }
            let at = text
                .find(var.as_str())
                .or_else(|| {
                    // A subscript reference: `steps['daily-energy']`.
                    let (root, rest) = var.split_once('.')?;
                    let key = rest.split('.').next()?;
                    text.find(&format!("{root}['{key}']"))
                        .or_else(|| text.find(&format!("{root}[\"{key}\"]")))
                })
                .unwrap_or(0);
            let pos = self.pos_in_scalar(ptr, text, at);
            if let Some(d) = self.reference(var, pos, scope, index, ancestors) {
                self.out.push(d);
            }
        }
        for f in &refs.filters {
            if !template::filter_exists(f) {
                let at = text.find(f.as_str()).unwrap_or(0);
                let known = KNOWN_FILTER_HINTS;
                let hint = did_you_mean(f, known.iter().copied())
                    .unwrap_or_else(|| "see the minijinja filter list in the README".to_string());
                self.out.push(
                    Diagnostic::error(
                        "unknown-filter",
                        self.pos_in_scalar(ptr, text, at),
                        format!("unknown filter `{f}`"),
                    )
                    .with_hint(hint),
                );
            }
        }
    }

    fn reference(
        &self,
        var: &str,
        pos: Pos,
        scope: Scope,
        index: &HashMap<&str, usize>,
        ancestors: Option<&[BitSet]>,
    ) -> Option<Diagnostic> {
        let parts: Vec<&str> = var.split('.').collect();
        let root = parts[0];
        let (step_index, item_ok, outputs_ok, trigger) = match scope {
            Scope::Step { index, item } => (Some(index), item, false, false),
            Scope::Expect { index } => (Some(index), false, true, false),
            Scope::Trigger => (None, false, false, true),
        };
        let roots: &[&str] = if trigger {
            &["event"]
        } else {
            &["params", "steps", "run", "event", "item", "outputs"]
        };
        match root {
            "event" => None,
            "params" if !trigger => {
                let name = parts.get(1)?;
                if self.p.params.contains_key(*name) {
                    return None;
                }
                let hint = self
                    .suggest(
                        name,
                        self.p.params.len(),
                        self.p.params.keys().map(String::as_str),
                    )
                    .unwrap_or_else(|| {
                        if self.p.params.is_empty() {
                            "declare it under `params:` at the top of the file".to_string()
                        } else {
                            // The first few only: one hint per finding, and a file
                            // can have thousands of each (gigabytes of hints).
                            let names = self.p.params.keys().map(String::as_str);
                            format!("declared params: {}", preview(names, "params"))
                        }
                    });
                Some(
                    Diagnostic::error(
                        "undefined-param",
                        pos,
                        format!("`params.{name}` is not a declared parameter"),
                    )
                    .with_hint(hint),
                )
            }
            "steps" if !trigger => {
                let id = parts.get(1)?;
                let Some(&target) = index.get(id) else {
                    let hint = self
                        .suggest(id, index.len(), index.keys().copied())
                        .unwrap_or_else(|| "refer to a step by its `id`".to_string());
                    return Some(
                        Diagnostic::error(
                            "unknown-step",
                            pos,
                            format!("`steps.{id}` refers to a step that does not exist"),
                        )
                        .with_hint(hint),
                    );
                };
                if let Some(field) = parts.get(2)
                    && !STEP_FIELDS.contains(field)
                {
                    let hint = did_you_mean(field, STEP_FIELDS.iter().copied())
                        .unwrap_or_else(|| format!("a step has: {}", STEP_FIELDS.join(", ")));
                    return Some(
                        Diagnostic::error(
                            "unknown-step-field",
                            pos,
                            format!("`steps.{id}.{field}` is not something a step has"),
                        )
                        .with_hint(hint),
                    );
                }
                let me = step_index?;
                if target == me {
                    return Some(
                        Diagnostic::error(
                            "self-reference",
                            pos,
                            format!("step `{id}` refers to its own `steps.{id}`"),
                        )
                        .with_hint(
                            "a step's values are not known before it runs; use a parameter instead",
                        ),
                    );
                }
                let upstream = ancestors.map(|a| a[me].contains(target));
                let downstream = ancestors.is_some_and(|a| a[target].contains(me));
                if upstream == Some(false) && downstream {
                    return Some(
                        Diagnostic::error(
                            "output-not-upstream",
                            pos,
                            format!(
                                "step `{}` uses `steps.{id}`, but step `{id}` runs after it (it depends on step `{}`)",
                                self.p.steps[me].id, self.p.steps[me].id
                            ),
                        )
                        .with_hint(format!(
                            "a step can only use the values of steps that run before it; move this reference into a step after `{id}`"
                        )),
                    );
                }
                if upstream == Some(false) {
                    return Some(
                        Diagnostic::error(
                            "output-not-upstream",
                            pos,
                            format!(
                                "step `{}` uses `steps.{id}` but does not depend on step `{id}`, so it may run before it",
                                self.p.steps[me].id
                            ),
                        )
                        .with_hint(format!("add `{id}` to the `needs` of step `{}`", self.p.steps[me].id)),
                    );
                }
                None
            }
            "run" if !trigger => {
                let field = parts.get(1)?;
                (!RUN_FIELDS.contains(field)).then(|| {
                    Diagnostic::error(
                        "undefined-variable",
                        pos,
                        format!("`run.{field}` does not exist"),
                    )
                    .with_hint(
                        did_you_mean(field, RUN_FIELDS.iter().copied())
                            .unwrap_or_else(|| format!("`run` has: {}", RUN_FIELDS.join(", "))),
                    )
                })
            }
            "item" if item_ok => None,
            "outputs" if outputs_ok => None,
            _ => {
                let hint = match root {
                    "item" => "`item` exists only in steps with `for_each`".to_string(),
                    "outputs" => {
                        "`outputs` exists only in `expect`; elsewhere use steps.<id>.outputs"
                            .to_string()
                    }
                    _ => did_you_mean(root, roots.iter().copied())
                        .unwrap_or_else(|| format!("templates can use: {}", roots.join(", "))),
                };
                Some(
                    Diagnostic::error(
                        "undefined-variable",
                        pos,
                        format!("`{root}` is not defined here"),
                    )
                    .with_hint(hint),
                )
            }
        }
    }

    /// The position of byte `at` of a scalar's text: exact on single-line scalars, the
    /// scalar's start otherwise.
    fn pos_in_scalar(&self, ptr: &str, text: &str, at: usize) -> Pos {
        let Some(node) = self.node(ptr) else {
            return self.tree.pos;
        };
        let raw = node.raw(self.source).unwrap_or("");
        if raw.contains('\n') || at == 0 {
            return node.pos;
        }
        let quoted = raw.starts_with('"') || raw.starts_with('\'');
        let prefix_chars = text.get(..at).map_or(0, |s| s.chars().count()) as u32;
        Pos {
            line: node.pos.line,
            col: node.pos.col + u32::from(quoted) + prefix_chars,
            offset: node.pos.offset + usize::from(quoted) + at,
            len: 0,
        }
    }
}

/// Step-id and parameter comparisons that "did you mean" hints may make in one file
/// (about 0.1 s): every hint in a file of hundreds of steps, the first hundreds in a
/// 10,000-step one.
const HINT_BUDGET: usize = 2_000_000;

/// Filters offered in "did you mean" hints.
const KNOWN_FILTER_HINTS: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "count",
    "default",
    "dictsort",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn preview<'s>(items: impl ExactSizeIterator<Item = &'s str>, noun: &str) -> String {
    let total = items.len();
    let first: Vec<&str> = items.take(8).collect();
    if total <= 8 {
        first.join(", ")
    } else {
        format!("{}, ... ({total} {noun})", first.join(", "))
    }
}

/// Why a default does not fit its declared type, or `None` when it fits. A plain YAML
/// number or boolean whose text is its canonical form fits a string parameter as that
/// text (`2014` is the text "2014"); one that is not (`1.10`) does not.
fn default_mismatch(
    kind: ParamType,
    v: &Value,
    node: Option<&Node>,
    source: &str,
) -> Option<String> {
    let found = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    };
    let ok = match kind {
        ParamType::String => match v {
            Value::String(_) => true,
            Value::Bool(_) | Value::Number(_) => node
                .and_then(|n| n.raw(source))
                .is_some_and(|raw| raw.trim() == canonical_text(v)),
            _ => false,
        },
        ParamType::Integer => v.as_i64().is_some(),
        ParamType::Number => v.is_number(),
        ParamType::Boolean => v.is_boolean(),
    };
    if ok {
        return None;
    }
    if kind == ParamType::String && (v.is_number() || v.is_boolean()) {
        let raw = node.and_then(|n| n.raw(source)).unwrap_or("");
        // Name what YAML read (`2.0` is a number even where JSON holds it as 2).
        let (read_as, read) = node.map_or_else(
            || (found.to_string(), canonical_text(v)),
            |n| (with_article(n.value.kind_name()), scalar_display(&n.value)),
        );
        return Some(format!(
            "is unquoted `{raw}`, which YAML reads as {read_as} ({read}), but the parameter is a string"
        ));
    }
    if kind == ParamType::Integer && v.as_u64().is_some() {
        return Some("is larger than a 64-bit signed integer".to_string());
    }
    Some(format!(
        "is {found}, but the parameter's type is {}",
        kind.as_str()
    ))
}

/// The canonical text of a JSON scalar: what it would print as.
pub fn canonical_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use crate::pipeline::load::load_bytes;

    /// Thousands of unknown `needs`, each compared with every step for a hint, took half
    /// a minute on a 10,000-step file: hints stop when the budget is spent, the errors
    /// do not.
    #[test]
    fn did_you_mean_hints_are_budgeted() {
        let n = 2_100;
        let mut text = String::from("name: many-unknown-needs\nsteps:\n");
        for i in 0..n {
            text.push_str(&format!(
                "  - id: step_{i:05}\n    job: J\n    needs: [stepp_{i:05}]\n"
            ));
        }
        let loaded = load_bytes("big.yaml", text.as_bytes());
        let unknown: Vec<_> = loaded
            .report
            .diagnostics
            .iter()
            .filter(|d| d.code == "unknown-need")
            .collect();
        assert_eq!(unknown.len(), n);
        let hinted = |d: &crate::diagnostic::Diagnostic| {
            d.hint
                .as_deref()
                .is_some_and(|h| h.starts_with("did you mean"))
        };
        assert!(hinted(unknown[0]), "{:?}", unknown[0]);
        assert!(!hinted(unknown[n - 1]), "{:?}", unknown[n - 1]);
        let budgeted = unknown.iter().filter(|d| hinted(d)).count();
        assert_eq!(budgeted, super::HINT_BUDGET / n);
    }

    /// Each undefined-param hint listed every declared param: 30,000 such references
    /// to a file of 10,000 params made gigabytes of hints.
    #[test]
    fn undefined_param_hints_list_a_few_params() {
        let mut text = String::from("name: many-params\nparams:\n");
        for i in 0..20 {
            text.push_str(&format!("  p{i:02}:\n    default: x\n"));
        }
        text.push_str("steps:\n  - id: a\n    job: J\n    params:\n      K: \"{{ params.zz }}\"\n");
        let loaded = load_bytes("params.yaml", text.as_bytes());
        let d = &loaded.report.diagnostics;
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].code, "undefined-param");
        assert_eq!(
            d[0].hint.as_deref(),
            Some("declared params: p00, p01, p02, p03, p04, p05, p06, p07, ... (20 params)")
        );
    }
}
