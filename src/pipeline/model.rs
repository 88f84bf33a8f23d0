//! The pipeline file's types. They are the single source of truth for the JSON Schema
//! (`dwflow schema`): doc comments here become the schema's descriptions, so they are
//! written for the person editing a pipeline file.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A dwflow pipeline: a sequence or DAG of analytics job invocations.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dwflow pipeline")]
pub struct Pipeline {
    /// Name of the pipeline, unique among the pipelines of a repository.
    #[schemars(length(min = 1))]
    pub name: String,
    /// What the pipeline does, for people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Typed inputs of the pipeline, referenced in templates as `params.<name>`.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, ParamSpec>,
    /// Settings applied to every step that does not set them itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<StepDefaults>,
    /// Maximum number of job runs in flight at once for this pipeline run (default: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallel: Option<u32>,
    /// Time limit for the whole pipeline run, e.g. `2h` or `90m`. When it fires, every
    /// running job is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)?([0-9]+(ms|s|m|h|d))*$"))]
    pub timeout: Option<String>,
    /// On a step failure, start nothing new and cancel running jobs (`true`, the default),
    /// or keep running every step whose trigger rule still allows it (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_fast: Option<bool>,
    /// Triggers that make `dwflow serve` start this pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Triggers>,
    /// The job invocations. Without `needs`, a step runs after the step listed before it.
    #[schemars(length(min = 1))]
    pub steps: Vec<Step>,
}

/// Type of a pipeline parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Text, passed as is.
    String,
    /// A whole number (64-bit).
    Integer,
    /// A decimal number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        }
    }
}

/// A typed pipeline input.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// The parameter's type; values given on the command line or by a trigger are
    /// converted to it explicitly.
    #[serde(rename = "type", default = "default_param_type")]
    pub kind: ParamType,
    /// Value used when none is given. Without a default the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<serde_json::Value>,
    /// What the parameter means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Mark values as secret: they are shown as `***` in plans, logs, journals and reports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secret: bool,
}

fn default_param_type() -> ParamType {
    ParamType::String
}

/// One job invocation (or a fan-out of several with `for_each`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique id of the step: lowercase letters, digits, `_` and `-`. Templates refer to
    /// its outputs as `steps.<id>.outputs.<name>`.
    #[schemars(regex(pattern = r"^[a-z0-9_-]+$"))]
    pub id: String,
    /// What the step does, for people reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Name of the job to invoke; resolved to exactly one job id in the target.
    /// Give exactly one of `job` and `job_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub job: Option<String>,
    /// Numeric id of the job to invoke (may exceed 32 bits).
    /// Give exactly one of `job` and `job_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub job_id: Option<u64>,
    /// Job parameters: name -> template string. Every value is sent to the job as a string.
    /// A step's rendered parameters are also its outputs.
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub params: IndexMap<String, String>,
    /// Ids of the steps this one waits for. Omitted: the step listed before it.
    /// `[]`: none, it starts at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<Vec<String>>,
    /// A condition (a template expression such as `params.year > 2014`); when false the
    /// step is skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Which outcomes of the needed steps let this step run (default `all_success`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_if: Option<RunIf>,
    /// Retry policy for failed attempts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Time limit per attempt, e.g. `30m`; the remote run is cancelled when it fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)?([0-9]+(ms|s|m|h|d))*$"))]
    pub timeout: Option<String>,
    /// Run the step once per item of a list; the item is `item` in templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_each: Option<ForEach>,
    /// Checks made after the job succeeds; a failed check fails the step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Expect>,
}

/// Settings shared by every step unless the step sets its own.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepDefaults {
    /// Default trigger rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_if: Option<RunIf>,
    /// Default retry policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Default time limit per attempt, e.g. `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)?([0-9]+(ms|s|m|h|d))*$"))]
    pub timeout: Option<String>,
}

/// Trigger rule: which outcomes of the needed steps let a step run (the six rules of
/// Databricks jobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunIf {
    /// Every needed step succeeded.
    #[default]
    AllSuccess,
    /// Every needed step finished, whatever its outcome.
    AllDone,
    /// No needed step failed (succeeded or skipped).
    NoneFailed,
    /// At least one needed step succeeded.
    AtLeastOneSuccess,
    /// Every needed step failed.
    AllFailed,
    /// At least one needed step failed.
    AtLeastOneFailed,
}

impl RunIf {
    pub fn as_str(self) -> &'static str {
        match self {
            RunIf::AllSuccess => "all_success",
            RunIf::AllDone => "all_done",
            RunIf::NoneFailed => "none_failed",
            RunIf::AtLeastOneSuccess => "at_least_one_success",
            RunIf::AllFailed => "all_failed",
            RunIf::AtLeastOneFailed => "at_least_one_failed",
        }
    }
}

/// Retry policy: attempts with exponential backoff and jitter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Total number of attempts, the first included (1 = no retry).
    #[schemars(range(min = 1, max = 100))]
    pub attempts: u32,
    /// Delay before the first retry, e.g. `10s` (default `10s`); doubled after each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)?([0-9]+(ms|s|m|h|d))*$"))]
    pub delay: Option<String>,
    /// Upper bound of the delay between attempts, e.g. `5m` (default `5m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h|d)?([0-9]+(ms|s|m|h|d))*$"))]
    pub max_delay: Option<String>,
    /// Which failures are retried (default: `transient` and `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<Vec<RetryOn>>,
}

/// A kind of failure that a retry policy can retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// Failures the backend marks as retryable (internal errors, cloud failures,
    /// throttling, a run lost with a crashed process).
    Transient,
    /// The attempt exceeded its `timeout`.
    Timeout,
    /// Any failure, including failures of the job's own code.
    Failure,
}

/// Fan-out: run the step once per item. Give exactly one of `items` and `expr`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForEach {
    /// A literal list of items (each a template string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<String>>,
    /// A template expression that evaluates to a list, e.g. `params.turbines | split(",")`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<String>,
    /// Maximum number of items running at once (default: unlimited within `max_parallel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallel: Option<u32>,
}

/// Checks made after a job succeeds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Datasets (template strings, e.g. `{{ outputs.ResultDatasetName }}`) that must exist
    /// in the target after the job succeeds. `outputs` is this step's rendered parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub datasets: Vec<String>,
}

/// Triggers that make `dwflow serve` start the pipeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Cron schedules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedule: Vec<ScheduleTrigger>,
    /// Events posted to `POST /api/events`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event: Vec<EventTrigger>,
    /// New datasets appearing in the target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dataset: Vec<DatasetTrigger>,
    /// What to do when a trigger fires while a run of this pipeline is in flight
    /// (default `queue`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

/// A cron schedule.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTrigger {
    /// Cron expression (5 fields, or 6 with seconds first), e.g. `0 6 * * *`.
    pub cron: String,
    /// IANA time zone of the expression, e.g. `Europe/Oslo` (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// What to do with ticks missed while the service was down (default `skip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed: Option<MissedTicks>,
    /// Parameter values for the runs this schedule starts (template strings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// Policy for schedule ticks missed during downtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MissedTicks {
    /// Run once at start-up for the missed ticks.
    RunOnce,
    /// Do not run for missed ticks.
    Skip,
}

/// An event trigger.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    /// The event `type` that starts the pipeline.
    #[serde(rename = "type")]
    #[schemars(length(min = 1))]
    pub kind: String,
    /// Fields the event must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filter: BTreeMap<String, String>,
    /// Parameter values for the runs this trigger starts (template strings; the event is
    /// `event` in their context).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// A dataset-arrival trigger.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetTrigger {
    /// Glob pattern (`*` and `?`) that a new dataset's name must match.
    #[schemars(length(min = 1))]
    pub pattern: String,
    /// Parameter values for the runs this trigger starts (template strings; the dataset's
    /// name is `event.dataset` in their context).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, String>,
}

/// Concurrency policy when a trigger fires while a run is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// Start another run alongside.
    Allow,
    /// Start it when the run in flight ends.
    Queue,
    /// Drop the new trigger.
    Skip,
    /// Cancel the run in flight, then start the new one.
    CancelPrevious,
}
