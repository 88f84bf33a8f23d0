//! Reading the JSON of the remote APIs tolerantly: keys compared case-insensitively and
//! without underscores (`jobId` = `job_id`), ids as numbers or numeric strings, times as
//! epoch milliseconds, epoch seconds or text. Shared by the workbench and databricks
//! backends.

use serde_json::{Map, Value};

use super::{DatasetInfo, JobInfo, JobParam};

/// `lifeCycleState`, `life_cycle_state` and `LifeCycleState` all become `lifecyclestate`.
pub fn norm_key(k: &str) -> String {
    k.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The value of the first of `names` present (compared by [`norm_key`]) and not null.
pub fn get_ci<'a>(obj: &'a Map<String, Value>, names: &[&str]) -> Option<&'a Value> {
    for name in names {
        let want = norm_key(name);
        if let Some((_, v)) = obj.iter().find(|(k, _)| norm_key(k) == want)
            && !v.is_null()
        {
            return Some(v);
        }
    }
    None
}

/// A scalar as text (trimmed, non-empty).
pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// An id: a non-negative integer, as a number or a numeric string.
pub fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.0e15)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A time: epoch milliseconds (numbers above 10^11) or seconds, as a number or numeric
/// string, becomes RFC 3339; other text is kept as it is.
pub fn time_text(v: &Value) -> Option<String> {
    let from_epoch = |n: f64| -> Option<String> {
        let millis = if n.abs() >= 1e11 { n } else { n * 1000.0 };
        chrono::DateTime::from_timestamp_millis(millis as i64)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
    };
    match v {
        Value::Number(n) => n.as_f64().and_then(from_epoch),
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                None
            } else if let Ok(n) = s.parse::<f64>() {
                from_epoch(n)
            } else {
                Some(s.to_string())
            }
        }
        _ => None,
    }
}

/// A run id from an invoke / run-now answer: a bare number, a numeric string, or an
/// object with `runId` / `run_id` / `id` (possibly under `run` or `data`).
pub fn run_id_of(v: &Value) -> Option<String> {
    match v {
        Value::Number(_) => as_u64(v).map(|n| n.to_string()),
        Value::String(s) => {
            let s = s.trim().trim_matches('"');
            (!s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .then(|| s.to_string())
        }
        Value::Object(o) => {
            if let Some(id) = get_ci(o, &["runId", "id"]) {
                return run_id_of(id);
            }
            for wrapper in ["run", "data", "result"] {
                if let Some(inner) = get_ci(o, &[wrapper])
                    && let Some(id) = run_id_of(inner)
                {
                    return Some(id);
                }
            }
            None
        }
        _ => None,
    }
}

/// A job from either API: the gateway's `{jobId, jobName, creatorUserName, createdTime}`
/// or Databricks' `{job_id, creator_user_name, created_time, settings: {name,
/// parameters, tags}}`. Parameters are `None` unless the answer carries them;
/// `params_known` says that an absent list means "no parameters" (Databricks `jobs/get`).
pub fn job_of(v: &Value, params_known: bool) -> Option<JobInfo> {
    let o = v.as_object()?;
    let settings = get_ci(o, &["settings"]).and_then(Value::as_object);
    let id = get_ci(o, &["jobId", "id"]).and_then(as_u64)?;
    let name = get_ci(o, &["jobName", "name"])
        .or_else(|| settings.and_then(|s| get_ci(s, &["name"])))
        .and_then(text)
        .unwrap_or_else(|| format!("Untitled ({id})"));
    let creator = get_ci(
        o,
        &["creatorUserName", "creator", "createdBy", "creatorName"],
    )
    .and_then(text);
    let created =
        get_ci(o, &["createdTime", "createdOn", "created", "createdAt"]).and_then(time_text);
    let tags = get_ci(o, &["tags"])
        .or_else(|| settings.and_then(|s| get_ci(s, &["tags"])))
        .and_then(Value::as_object);
    let raw_params = get_ci(o, &["parameters", "jobParameters"])
        .or_else(|| settings.and_then(|s| get_ci(s, &["parameters", "jobParameters"])));
    let parameters = match raw_params {
        Some(p) => Some(params_of(p, tags)),
        None if params_known => Some(Vec::new()),
        None => None,
    };
    Some(JobInfo {
        id,
        name,
        creator,
        created,
        parameters,
    })
}

/// `[{name, default}]` (Databricks), or `{name: default}`. A missing or empty default
/// makes the parameter required. A tag with the parameter's key describes it (the
/// Veracity convention); a `description` field, where present, wins.
fn params_of(v: &Value, tags: Option<&Map<String, Value>>) -> Vec<JobParam> {
    let describe = |name: &str, own: Option<String>| {
        own.or_else(|| tags.and_then(|t| t.get(name)).and_then(text))
    };
    let default_of = |v: Option<&Value>| v.and_then(text).filter(|d| !d.is_empty());
    match v {
        Value::Array(items) => items
            .iter()
            .filter_map(|p| {
                let o = p.as_object()?;
                let name = get_ci(o, &["name", "key"]).and_then(text)?;
                let default = default_of(get_ci(o, &["default", "defaultValue", "value"]));
                let description = describe(&name, get_ci(o, &["description"]).and_then(text));
                Some(JobParam {
                    name,
                    default,
                    description,
                })
            })
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(name, d)| JobParam {
                name: name.clone(),
                default: default_of(Some(d)),
                description: describe(name, None),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The list in an answer that may be a bare array or wrap it (`{result: [...]}`,
/// `{jobs: [...]}`, `{data: [...]}`, `{items: [...]}`, `{value: [...]}`).
pub fn list_of<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Object(o) => keys
            .iter()
            .find_map(|k| get_ci(o, &[k]).and_then(Value::as_array)),
        _ => None,
    }
}

/// A dataset entry of the gateway's `datasets/query`.
pub fn dataset_of(v: &Value) -> Option<DatasetInfo> {
    let o = v.as_object()?;
    let name = get_ci(o, &["name", "datasetName"]).and_then(text)?;
    let id = get_ci(o, &["id", "datasetId"])
        .and_then(text)
        .unwrap_or_else(|| name.clone());
    let created = get_ci(o, &["createdOn", "createdTime", "created"]).and_then(time_text);
    let columns = get_ci(o, &["columns", "schema"])
        .and_then(Value::as_array)
        .map(|cols| cols.iter().filter_map(column_name).collect())
        .unwrap_or_default();
    let rows = get_ci(o, &["rowCount", "rowsCount", "numberOfRows", "rows"]).and_then(as_u64);
    Some(DatasetInfo {
        name,
        id,
        created,
        columns,
        rows,
    })
}

fn column_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => get_ci(o, &["name", "columnName", "displayName", "key"]).and_then(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gateway_job() {
        let j = job_of(
            &json!({"jobId": 364946379282376u64, "jobName": "Assessment", "creatorUserName": "svc@dnv.com", "createdTime": 1700000000000u64}),
            false,
        )
        .unwrap();
        assert_eq!(j.id, 364946379282376);
        assert_eq!(j.name, "Assessment");
        assert_eq!(j.creator.as_deref(), Some("svc@dnv.com"));
        assert_eq!(j.created.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(j.parameters, None);
        let j = job_of(
            &json!({"jobId": "364946379282376", "jobName": "A", "createdTime": "2024-01-02T03:04:05Z"}),
            false,
        )
        .unwrap();
        assert_eq!(j.id, 364946379282376);
        assert_eq!(j.created.as_deref(), Some("2024-01-02T03:04:05Z"));
        let j = job_of(
            &json!({"jobId": 1, "jobName": "A", "createdTime": "1700000000000"}),
            false,
        )
        .unwrap();
        assert_eq!(j.created.as_deref(), Some("2023-11-14T22:13:20Z"));
    }

    #[test]
    fn databricks_job_with_parameters_and_tags() {
        let j = job_of(
            &json!({
                "job_id": 11223344, "creator_user_name": "a@b.c", "created_time": 1601370337343u64,
                "settings": {
                    "name": "Assessment",
                    "parameters": [{"name": "Year", "default": "2014"}, {"name": "InputDataset", "default": ""}, {"name": "Out"}],
                    "tags": {"Year": "Year of SCADA data", "team": "x"}
                }
            }),
            true,
        )
        .unwrap();
        assert_eq!(j.name, "Assessment");
        let p = j.parameters.unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].default.as_deref(), Some("2014"));
        assert_eq!(p[0].description.as_deref(), Some("Year of SCADA data"));
        assert_eq!(p[1].default, None);
        assert_eq!(p[2].default, None);
        let j = job_of(&json!({"job_id": 5, "settings": {"name": "X"}}), true).unwrap();
        assert_eq!(j.parameters, Some(vec![]));
    }

    #[test]
    fn run_ids() {
        assert_eq!(run_id_of(&json!(123)).as_deref(), Some("123"));
        assert_eq!(run_id_of(&json!("456")).as_deref(), Some("456"));
        assert_eq!(run_id_of(&json!({"runId": 7})).as_deref(), Some("7"));
        assert_eq!(run_id_of(&json!({"run_id": "8"})).as_deref(), Some("8"));
        assert_eq!(run_id_of(&json!({"id": 9})).as_deref(), Some("9"));
        assert_eq!(
            run_id_of(&json!({"run_id": 10, "number_in_job": 3})).as_deref(),
            Some("10")
        );
        assert_eq!(
            run_id_of(&json!({"data": {"runId": 11}})).as_deref(),
            Some("11")
        );
        assert_eq!(run_id_of(&json!({"foo": 1})), None);
        assert_eq!(run_id_of(&json!(null)), None);
        assert_eq!(run_id_of(&json!("")), None);
    }

    #[test]
    fn datasets() {
        let d = dataset_of(&json!({"id": "6f1c", "name": "lhb", "workspaceId": "w", "createdOn": "2024-05-01T00:00:00Z", "columns": [{"name": "a"}, "b"]})).unwrap();
        assert_eq!(d.name, "lhb");
        assert_eq!(d.id, "6f1c");
        assert_eq!(d.columns, vec!["a", "b"]);
        assert_eq!(
            list_of(&json!({"result": [1]}), &["result"]).unwrap().len(),
            1
        );
        assert_eq!(list_of(&json!([1, 2]), &["result"]).unwrap().len(), 2);
    }
}
