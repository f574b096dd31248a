//! `deploy-kit plan`: not implemented yet.

use std::process::ExitCode;

use crate::CommandError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target (a name under `targets:` in deploy-kit.yaml).
    pub target: Option<String>,
}

pub fn run(_args: Args) -> ExitCode {
    CommandError::new("`deploy-kit plan` is not implemented yet", "", 2).report()
}
