//! Live progress of a pipeline run on stderr: a spinner line per running step on a
//! terminal, or one plain line per event (CI logs, `--progress plain`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::duration::format_duration;
use crate::engine::events::{Event, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// Live view on a terminal, plain lines otherwise.
    Auto,
    /// One line per event.
    Plain,
    /// Nothing.
    None,
}

/// Drains events until the channel closes, drawing progress; returns every event.
pub async fn report(mut rx: UnboundedReceiver<Event>, mode: ProgressMode) -> Vec<Event> {
    let live = mode == ProgressMode::Auto && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut view = if live {
        View::Live(Live::new())
    } else {
        View::Plain(Instant::now(), mode == ProgressMode::None)
    };
    let mut all = Vec::new();
    while let Some(e) = rx.recv().await {
        view.on(&e);
        all.push(e);
    }
    if let View::Live(l) = &view {
        l.multi.clear().ok();
    }
    all
}

enum View {
    Live(Live),
    Plain(Instant, bool),
}

impl View {
    fn on(&mut self, e: &Event) {
        match self {
            View::Live(l) => l.on(e),
            View::Plain(start, quiet) => {
                if *quiet {
                    return;
                }
                if let Some(line) = plain_line(e) {
                    eprintln!(
                        "[{:>7}] {line}",
                        format!("{:.1}s", start.elapsed().as_secs_f64())
                    );
                }
            }
        }
    }
}

/// The plain-text line for an event (`None` for events not worth a line).
pub fn plain_line(e: &Event) -> Option<String> {
    Some(match e {
        Event::RunStarted {
            run_id,
            pipeline,
            steps,
            resumed,
        } => format!(
            "{} run {run_id} of {pipeline} ({} step{})",
            if *resumed { "resuming" } else { "starting" },
            steps.len(),
            if steps.len() == 1 { "" } else { "s" }
        ),
        Event::Invoking {
            instance,
            job,
            attempt,
            ..
        } => {
            if *attempt > 1 {
                format!("{instance}: invoking {job} (attempt {attempt})")
            } else {
                format!("{instance}: invoking {job}")
            }
        }
        Event::Started {
            instance,
            remote_run_id,
            ..
        } => format!("{instance}: run {remote_run_id} started"),
        Event::Reattached {
            instance,
            remote_run_id,
            ..
        } => format!("{instance}: reattached to run {remote_run_id}"),
        Event::StateChanged { instance, state } => format!("{instance}: {state}"),
        Event::Retrying {
            instance,
            attempt,
            delay,
            reason,
        } => {
            format!(
                "{instance}: retrying in {} as attempt {attempt}: {reason}",
                format_duration(*delay)
            )
        }
        Event::InstanceFinished { .. } => return None,
        Event::StepFinished {
            step,
            outcome,
            duration,
            message,
            ..
        } => match message {
            Some(m) if *outcome != Outcome::Succeeded => format!(
                "{step}: {} after {}: {m}",
                outcome.as_str(),
                format_duration(*duration)
            ),
            _ => format!(
                "{step}: {} in {}",
                outcome.as_str(),
                format_duration(*duration)
            ),
        },
        Event::Warning { message } => format!("warning: {message}"),
        Event::RunFinished { state, duration } => {
            format!("run {} in {}", state.as_str(), format_duration(*duration))
        }
    })
}

struct Live {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
}

impl Live {
    fn new() -> Self {
        Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: HashMap::new(),
        }
    }

    fn bar(&mut self, key: &str) -> &ProgressBar {
        let multi = &self.multi;
        self.bars.entry(key.to_string()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new_spinner());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<24} {wide_msg} {elapsed:>6}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b.set_prefix(key.to_string());
            b.enable_steady_tick(Duration::from_millis(120));
            b
        })
    }

    fn on(&mut self, e: &Event) {
        match e {
            Event::Invoking {
                instance,
                job,
                attempt,
                ..
            } => {
                let msg = if *attempt > 1 {
                    format!("invoking {job} (attempt {attempt})")
                } else {
                    format!("invoking {job}")
                };
                self.bar(&instance.to_string()).set_message(msg);
            }
            Event::Started {
                instance,
                remote_run_id,
                ..
            }
            | Event::Reattached {
                instance,
                remote_run_id,
                ..
            } => {
                self.bar(&instance.to_string())
                    .set_message(format!("run {remote_run_id}"));
            }
            Event::StateChanged { instance, state } => {
                let b = self.bar(&instance.to_string());
                let msg = b.message();
                let base = msg.split(" · ").next().unwrap_or("").to_string();
                b.set_message(format!("{base} · {state}"));
            }
            Event::Retrying {
                instance,
                attempt,
                delay,
                ..
            } => {
                self.bar(&instance.to_string()).set_message(format!(
                    "retrying in {} (attempt {attempt})",
                    format_duration(*delay)
                ));
            }
            Event::InstanceFinished {
                instance, outcome, ..
            } if instance.item.is_some() => {
                if let Some(b) = self.bars.remove(&instance.to_string()) {
                    b.finish_and_clear();
                }
                let _ = outcome;
            }
            Event::StepFinished {
                step,
                outcome,
                duration,
                message,
                ..
            } => {
                if let Some(b) = self.bars.remove(step) {
                    b.finish_and_clear();
                }
                let mark = match outcome {
                    Outcome::Succeeded => "✔",
                    Outcome::Skipped | Outcome::NotRun => "-",
                    _ => "✘",
                };
                let tail = match message {
                    Some(m) if *outcome != Outcome::Succeeded => format!(": {m}"),
                    _ => String::new(),
                };
                self.multi
                    .println(format!(
                        "{mark} {step:<24} {} in {}{tail}",
                        outcome.as_str(),
                        format_duration(*duration)
                    ))
                    .ok();
            }
            Event::Warning { message } => {
                self.multi.println(format!("warning: {message}")).ok();
            }
            _ => {}
        }
    }
}
