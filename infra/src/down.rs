//! `deploy-kit down <target>`: removes what `up` recorded in the target's
//! state file, newest first. GCP targets go to [`crate::engine::gcp::down`];
//! a bucket that still holds objects is kept unless `--delete-data`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target (a name under `targets:` in deploy-kit.yaml).
    pub target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also empty and delete buckets that still hold objects.
    #[arg(long)]
    pub delete_data: bool,
}

pub fn run(args: Args) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    if let Some(target) = &args.target {
        match crate::up::load_target(args.config.as_deref(), target) {
            Err(error) => return error.report(),
            Ok((config, path)) => {
                if crate::engine::gcp::handles(config.targets[target].platform) {
                    return match crate::engine::gcp::down(
                        &config,
                        &path,
                        target,
                        args.delete_data,
                        &env,
                    ) {
                        Ok(code) => ExitCode::from(code),
                        Err(error) => error.report(),
                    };
                }
            }
        }
    }
    CommandError::new("`deploy-kit down` is not implemented yet", "", 2).report()
}
