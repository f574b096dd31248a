//! `deploy-kit render <what>`: templates in `templates/` rendered with
//! minijinja (strict undefined). Not implemented yet; the API below is what
//! `plan` and `up` build on.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;
use crate::config::DeployConfig;

/// One rendered file, relative to the target's output directory
/// (`.deploy-kit/<environment>/<target>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: PathBuf,
    pub contents: String,
}

/// Everything a target deploys from: the Pulumi YAML program and its stack
/// config, the Dockerfile, and the platform's manifests.
pub fn render_target(
    _config: &DeployConfig,
    target: &str,
) -> Result<Vec<RenderedFile>, CommandError> {
    Err(CommandError::new(
        format!("rendering target `{target}` is not implemented yet"),
        "",
        1,
    ))
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to render.
    pub what: Option<String>,
}

pub fn run(_args: Args) -> ExitCode {
    CommandError::new("`deploy-kit render` is not implemented yet", "", 2).report()
}
