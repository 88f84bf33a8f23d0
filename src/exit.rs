//! Process exit codes. They are part of the public interface: scripts and CI depend on
//! them, so they never change meaning.

/// How a dwflow command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything succeeded.
    Success = 0,
    /// The pipeline ran and a step failed.
    StepFailed = 1,
    /// Invalid input: usage, pipeline file or parameters.
    Invalid = 2,
    /// The environment failed: authentication, network, backend.
    Environment = 3,
    /// Interrupted (Ctrl-C / SIGTERM), after cancelling what was started.
    Interrupted = 130,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}
