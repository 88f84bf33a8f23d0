//! What the service's triggers decide, without I/O: which pipelines an event starts and
//! with which parameters, when a cron schedule is next due (and which ticks were
//! missed), and whether a dataset name matches a pattern. The loops that act on these
//! live in [`super::Service`].

use std::str::FromStr;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use indexmap::IndexMap;
use serde_json::Value;

use crate::pipeline::load::CheckedPipeline;
use crate::pipeline::model::ScheduleTrigger;

/// A parsed schedule trigger.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: Tz,
    /// Identifies the trigger in the history (`index:cron@timezone`).
    pub key: String,
}

impl Schedule {
    /// Parses the `index`-th schedule trigger of a pipeline.
    pub fn parse(t: &ScheduleTrigger, index: usize) -> Result<Schedule, String> {
        let cron =
            Cron::from_str(&t.cron).map_err(|e| format!("cron expression `{}`: {e}", t.cron))?;
        let tz_name = t.timezone.as_deref().unwrap_or("UTC");
        let tz = Tz::from_str(tz_name).map_err(|_| format!("unknown time zone `{tz_name}`"))?;
        Ok(Schedule {
            cron,
            tz,
            // Two triggers may share an expression (with other parameters).
            key: format!("{index}:{}@{}", t.cron.trim(), tz_name),
        })
    }

    /// The first tick strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // In the hour a daylight-saving change repeats, croner can answer a time before
        // `t`: search again from further on until the answer is in the future.
        let mut from = t;
        for _ in 0..8 {
            let next = self
                .cron
                .find_next_occurrence(&from.with_timezone(&self.tz), false)
                .ok()?
                .with_timezone(&Utc);
            if next > t {
                return Some(next);
            }
            from = from.max(next) + chrono::Duration::minutes(15);
        }
        None
    }

    /// The latest tick at or before `t`.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Ticks are whole seconds; croner returns a matching `t` itself, fraction and all.
        let t = t.with_nanosecond(0).unwrap_or(t);
        self.cron
            .find_previous_occurrence(&t.with_timezone(&self.tz), true)
            .ok()
            .map(|d| d.with_timezone(&Utc))
            .filter(|d| *d <= t)
    }
}

/// Ticks are stored as RFC 3339 text in UTC with fixed width, so that text order is
/// time order.
pub fn tick_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Looks up a dotted path (`data.dataset`) in an event.
fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(event, |v, k| v.get(k))
}

/// The text a filter compares: strings as they are, other scalars as JSON.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// Whether an event matches a trigger's type and every filter.
pub fn event_matches(
    kind: &str,
    filter: &std::collections::BTreeMap<String, String>,
    event: &Value,
) -> bool {
    event.get("type").and_then(Value::as_str) == Some(kind)
        && filter
            .iter()
            .all(|(k, want)| lookup(event, k).and_then(scalar_text).as_deref() == Some(want))
}

/// Renders a trigger's parameter templates with `event` in the context, then resolves
/// and type-checks them against the pipeline's declared parameters.
pub fn trigger_params(
    checked: &CheckedPipeline,
    templates: &std::collections::BTreeMap<String, String>,
    event: &Value,
) -> Result<IndexMap<String, Value>, Vec<String>> {
    let env = crate::template::environment();
    let ctx =
        minijinja::context! { event => minijinja::Value::from(minijinja::value::Serde(event)) };
    let mut given = Vec::new();
    let mut problems = Vec::new();
    for (name, template) in templates {
        match env.render_str(template, &ctx) {
            Ok(text) => given.push((name.clone(), text)),
            Err(e) if e.kind() == minijinja::ErrorKind::UndefinedError => problems.push(format!(
                "parameter `{name}`: `{template}` refers to a field the event does not have"
            )),
            Err(e) => problems.push(format!("parameter `{name}`: `{template}`: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    crate::plan::resolve_params(&checked.pipeline, &given).map_err(|e| e.problems)
}

/// Glob match with `*` (any run of characters) and `?` (one character).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("lhb-*", "lhb-2016"));
        assert!(glob_match("*-raw-??", "a-raw-01"));
        assert!(!glob_match("*-raw-??", "a-raw-1"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "acbd"));
        assert!(glob_match("a*b*c", "axxbyyc"));
    }

    #[test]
    fn filters_compare_text_and_nested_fields() {
        let f = [("data.site".to_string(), "lhb".to_string())].into();
        assert!(event_matches(
            "upload",
            &f,
            &json!({"type": "upload", "data": {"site": "lhb"}})
        ));
        assert!(!event_matches(
            "upload",
            &f,
            &json!({"type": "upload", "data": {"site": "x"}})
        ));
        assert!(!event_matches(
            "upload",
            &f,
            &json!({"type": "other", "data": {"site": "lhb"}})
        ));
        let n = [("year".to_string(), "2015".to_string())].into();
        assert!(event_matches("e", &n, &json!({"type": "e", "year": 2015})));
    }

    #[test]
    fn schedules_in_a_time_zone() {
        let s = Schedule::parse(
            &ScheduleTrigger {
                cron: "0 6 * * *".into(),
                timezone: Some("Europe/Oslo".into()),
                missed: None,
                params: Default::default(),
            },
            0,
        )
        .unwrap();
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 0).unwrap();
        // 06:00 in Oslo in summer is 04:00 UTC.
        assert_eq!(
            s.next_after(t).unwrap(),
            Utc.with_ymd_and_hms(2026, 7, 2, 4, 0, 0).unwrap()
        );
        assert_eq!(
            s.latest_at_or_before(t).unwrap(),
            Utc.with_ymd_and_hms(2026, 7, 1, 4, 0, 0).unwrap()
        );
        let bad = ScheduleTrigger {
            cron: "0 6 * * *".into(),
            timezone: Some("Mars/Olympus".into()),
            missed: None,
            params: Default::default(),
        };
        assert!(
            Schedule::parse(&bad, 0)
                .unwrap_err()
                .contains("Mars/Olympus")
        );
        // Seconds-level: a tick is a whole second, however late the clock is read.
        let s = Schedule::parse(
            &ScheduleTrigger {
                cron: "*/2 * * * * *".into(),
                timezone: None,
                missed: None,
                params: Default::default(),
            },
            0,
        )
        .unwrap();
        let t = Utc.with_ymd_and_hms(2026, 7, 1, 12, 0, 4).unwrap();
        assert_eq!(s.next_after(t), Some(t + chrono::Duration::seconds(2)));
        assert_eq!(
            s.latest_at_or_before(t + chrono::Duration::milliseconds(2005)),
            Some(t + chrono::Duration::seconds(2))
        );
    }

    #[test]
    fn the_repeated_hour_of_a_dst_change_never_yields_a_past_tick() {
        let s = Schedule::parse(
            &ScheduleTrigger {
                cron: "*/15 * * * *".into(),
                timezone: Some("Europe/Oslo".into()),
                missed: None,
                params: Default::default(),
            },
            0,
        )
        .unwrap();
        // Oslo falls back from 03:00 CEST to 02:00 CET on 2026-10-25 (01:00 UTC).
        let mut t = Utc.with_ymd_and_hms(2026, 10, 24, 23, 50, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 10, 25, 3, 0, 0).unwrap();
        let mut ticks = 0;
        while t < end {
            let n = s.next_after(t).expect("a next tick");
            assert!(n > t, "{n} is not after {t}");
            assert!(n - t <= chrono::Duration::minutes(75), "{t} -> {n}");
            t = n;
            ticks += 1;
        }
        // Local times of the repeated hour happen twice and fire once (croner's rule),
        // so that hour adds no ticks: 3 h 10 min of 15-minute ticks, one hour fewer.
        assert!((8..=9).contains(&ticks), "{ticks}");
    }
}
