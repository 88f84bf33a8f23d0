//! Targets: which analytics environment a command talks to. Without configuration the
//! target is the embedded local environment on `examples/workspace`.

use std::path::PathBuf;
use std::sync::Arc;

use crate::backend::Backend;
use crate::backend::local::LocalBackend;

/// Target selection on the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct TargetArgs {
    /// Local workspace directory (datasets/ and jobs/) for the local environment.
    #[arg(
        long,
        env = "DWFLOW_WORKSPACE",
        default_value = "examples/workspace",
        global = true
    )]
    pub workspace: PathBuf,
}

/// An opened target.
pub struct Target {
    pub name: String,
    pub backend: Arc<dyn Backend>,
}

/// Opens the target named by the arguments.
pub fn open(args: &TargetArgs) -> Result<Target, String> {
    if !args.workspace.is_dir() {
        return Err(format!(
            "the local workspace {} does not exist (give --workspace DIR with datasets/ and jobs/ in it)",
            args.workspace.display()
        ));
    }
    let backend = LocalBackend::open(&args.workspace).map_err(|e| e.message)?;
    Ok(Target {
        name: format!("local:{}", args.workspace.display()),
        backend: Arc::new(backend),
    })
}
