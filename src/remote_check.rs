//! Checks of pipelines against a target: `validate --remote` (every step's job exists
//! exactly once; where the target knows the job's parameters, none required is missing
//! and none unknown is sent) and the job details `plan --remote` shows beside each
//! parameter.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::backend::{Backend, BackendError, ErrorKind, JobInfo, JobRef};
use crate::diagnostic::{Diagnostic, FileReport, did_you_mean};
use crate::exit::Exit;
use crate::pipeline::load::{CheckedPipeline, load_file};
use crate::pipeline::yaml::{self, Node, Pos, pointer_escape};
use crate::plan::{Plan, RemoteJob};
use crate::target::{self, TargetArgs};

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            Exit::Environment
        })
}

/// Whether an error means the target itself failed (rather than the step being wrong).
fn environment_failure(e: &BackendError) -> bool {
    matches!(
        e.kind,
        ErrorKind::Auth | ErrorKind::Unavailable | ErrorKind::Internal
    )
}

fn job_ref(step: &crate::pipeline::model::Step) -> Option<JobRef> {
    match (&step.job, step.job_id) {
        (_, Some(id)) => Some(JobRef::Id(id)),
        (Some(n), None) => Some(JobRef::Name(n.clone())),
        _ => None,
    }
}

fn key_of(j: &JobRef) -> String {
    match j {
        JobRef::Name(n) => format!("name:{n}"),
        JobRef::Id(id) => format!("id:{id}"),
    }
}

/// Looks jobs up once each.
struct Lookup<'a> {
    backend: &'a dyn Backend,
    cache: HashMap<String, Result<JobInfo, BackendError>>,
}

impl Lookup<'_> {
    async fn get(&mut self, j: &JobRef) -> Result<JobInfo, BackendError> {
        let key = key_of(j);
        if let Some(r) = self.cache.get(&key) {
            return r.clone();
        }
        let r = self.backend.describe_job(j).await;
        self.cache.insert(key, r.clone());
        r
    }
}

/// `dwflow validate --remote`: the offline checks, then the remote ones, per file.
/// Err: the exit status when the target cannot be opened or reached.
pub fn validate_remote(files: &[PathBuf], args: &TargetArgs) -> Result<Vec<FileReport>, Exit> {
    let loaded: Vec<_> = files.iter().map(|f| load_file(f)).collect();
    let t = target::open(args).map_err(|e| {
        eprintln!("error: {e}");
        e.exit()
    })?;
    let rt = runtime()?;
    let mut reports = Vec::with_capacity(loaded.len());
    let mut unchecked_params = false;
    rt.block_on(async {
        let mut lookup = Lookup {
            backend: t.backend.as_ref(),
            cache: HashMap::new(),
        };
        for l in loaded {
            let mut report = l.report;
            if let Some(checked) = &l.checked {
                if report.source.is_none() {
                    report.source = Some(checked.source.clone());
                }
                let found = check_pipeline(checked, &mut lookup, &t.name).await?;
                unchecked_params |= found.params_unknown;
                report.diagnostics.extend(found.diagnostics);
                report.sort();
            }
            reports.push(report);
        }
        Ok::<(), Exit>(())
    })?;
    if unchecked_params {
        eprintln!(
            "note: the {} target does not say which parameters its jobs take (the Data Workbench gateway's job list has none); job names were checked, parameters were not",
            t.backend.kind()
        );
    }
    Ok(reports)
}

struct Found {
    diagnostics: Vec<Diagnostic>,
    params_unknown: bool,
}

fn pos_or_start(n: Option<&Node>) -> Pos {
    n.map(|n| n.pos).unwrap_or(Pos {
        line: 1,
        col: 1,
        ..Pos::default()
    })
}

async fn check_pipeline(
    checked: &CheckedPipeline,
    lookup: &mut Lookup<'_>,
    target_name: &str,
) -> Result<Found, Exit> {
    let tree = yaml::parse(checked.source.as_bytes()).ok();
    let src = checked.source.as_str();
    let at_key = |pointer: &str| -> Pos {
        pos_or_start(tree.as_ref().and_then(|t| t.lookup_key(pointer, src)))
    };
    let at_value =
        |pointer: &str| -> Pos { pos_or_start(tree.as_ref().and_then(|t| t.lookup(pointer, src))) };
    let mut out = Found {
        diagnostics: Vec::new(),
        params_unknown: false,
    };
    for (i, step) in checked.pipeline.steps.iter().enumerate() {
        let Some(job) = job_ref(step) else { continue };
        let job_ptr = match &job {
            JobRef::Name(_) => format!("/steps/{i}/job"),
            JobRef::Id(_) => format!("/steps/{i}/job_id"),
        };
        let info = match lookup.get(&job).await {
            Ok(info) => info,
            Err(e) if e.kind == ErrorKind::Ambiguous => {
                out.diagnostics.push(
                    Diagnostic::error(
                        "remote-ambiguous-job",
                        at_value(&job_ptr),
                        format!("step `{}`: {}", step.id, e.message),
                    )
                    .with_hint("give the job's numeric id as `job_id` instead of `job`"),
                );
                continue;
            }
            Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Invalid) => {
                out.diagnostics.push(
                    Diagnostic::error(
                        "remote-unknown-job",
                        at_value(&job_ptr),
                        format!("step `{}`: {} (target `{target_name}`)", step.id, e.message),
                    )
                    .with_hint("check the job's name in the target (`dwflow jobs list`)"),
                );
                continue;
            }
            Err(e) => {
                eprintln!(
                    "error: cannot check {job} against target `{target_name}`: {}",
                    e.message
                );
                return Err(if environment_failure(&e) {
                    Exit::Environment
                } else {
                    Exit::Invalid
                });
            }
        };
        let Some(params) = &info.parameters else {
            out.params_unknown = true;
            continue;
        };
        let params_ptr = format!("/steps/{i}/params");
        let has_params = tree
            .as_ref()
            .and_then(|t| t.lookup_key(&params_ptr, src))
            .is_some();
        for p in params {
            if p.default.is_none() && !step.params.contains_key(&p.name) {
                let pos = if has_params {
                    at_key(&params_ptr)
                } else {
                    at_key(&job_ptr)
                };
                let described = p
                    .description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default();
                out.diagnostics.push(
                    Diagnostic::error(
                        "remote-missing-param",
                        pos,
                        format!(
                            "step `{}`: job `{}` requires the parameter `{}`{described}, which the step does not give",
                            step.id, info.name, p.name
                        ),
                    )
                    .with_hint(format!("add `{}: ...` under the step's `params`", p.name)),
                );
            }
        }
        for name in step.params.keys() {
            if !params.iter().any(|p| &p.name == name) {
                let hint = did_you_mean(name, params.iter().map(|p| p.name.as_str()))
                    .unwrap_or_else(|| {
                        if params.is_empty() {
                            format!("job `{}` takes no parameters", info.name)
                        } else {
                            format!(
                                "job `{}` takes: {}",
                                info.name,
                                params
                                    .iter()
                                    .map(|p| p.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    });
                out.diagnostics.push(
                    Diagnostic::error(
                        "remote-unknown-param",
                        at_key(&format!("{params_ptr}/{}", pointer_escape(name))),
                        format!(
                            "step `{}`: job `{}` has no parameter `{name}`",
                            step.id, info.name
                        ),
                    )
                    .with_hint(hint),
                );
            }
        }
    }
    Ok(out)
}

/// `plan --remote`: each step's job as the target describes it (its id, its parameters
/// with defaults and descriptions), or why it could not be found.
pub fn describe_plan_jobs(
    checked: &CheckedPipeline,
    plan: &mut Plan,
    args: &TargetArgs,
) -> Result<(), Exit> {
    let t = target::open(args).map_err(|e| {
        eprintln!("error: {e}");
        e.exit()
    })?;
    let rt = runtime()?;
    rt.block_on(async {
        let mut lookup = Lookup {
            backend: t.backend.as_ref(),
            cache: HashMap::new(),
        };
        for ps in plan.steps.iter_mut() {
            let Some(step) = checked.pipeline.steps.iter().find(|s| s.id == ps.id) else {
                continue;
            };
            let Some(job) = job_ref(step) else { continue };
            ps.remote = Some(match lookup.get(&job).await {
                Ok(info) => RemoteJob {
                    job_id: Some(info.id),
                    parameters: info.parameters,
                    problem: None,
                },
                Err(e) if environment_failure(&e) => {
                    eprintln!(
                        "error: cannot describe {job} in target `{}`: {}",
                        t.name, e.message
                    );
                    return Err(Exit::Environment);
                }
                Err(e) => RemoteJob {
                    job_id: None,
                    parameters: None,
                    problem: Some(e.message),
                },
            });
        }
        Ok(())
    })
}
