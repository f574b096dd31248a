//! `deploy-kit down <target>`: removes what `up` recorded in the target's
//! state file, newest first (reverse dependency order), dropping each
//! resource from the state as it goes. A bucket that still holds objects is
//! kept, and reported with the command that removes it, unless
//! `--delete-data`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::State;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target (a name under `targets:` in deploy-kit.yaml).
    #[arg(env = "DEPLOY_KIT_TARGET")]
    pub target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Also empty and delete buckets that still hold objects.
    #[arg(long)]
    pub delete_data: bool,
    #[command(flatten)]
    pub state: crate::state::StateArgs,
    /// Print the `deploy-kit.down/v1` document on stdout when done.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> ExitCode {
    crate::output::set_json(args.json);
    let env = |name: &str| std::env::var(name).ok();
    match down(&args, &env) {
        Ok(code) => ExitCode::from(code),
        Err(error) => error.report(),
    }
}

fn down(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<u8, CommandError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let deployment = Deployment::load(args.config.as_deref(), args.target.as_deref(), &cwd)?;
    let operation = format!("down {}", deployment.target_name);
    // Locked for the whole run; what is left is pushed back even on failure.
    let session = args.state.begin(&deployment, &operation, env)?;
    let before = State::load(&deployment.state_path());
    let result = down_locked(args, &deployment, env);
    let finished = session.finish();
    let code = result?;
    finished?;
    if crate::output::json() {
        crate::output::document(&crate::output::down_document(
            &deployment,
            before?.as_ref(),
            code,
        )?);
    }
    Ok(code)
}

fn down_locked(
    args: &Args,
    deployment: &Deployment,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    crate::engine::target::open(deployment)?.down(args.delete_data, env)
}
