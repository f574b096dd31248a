//! `deploy-kit down <target>`: removes what `up` recorded in the target's
//! state file, newest first (reverse dependency order), dropping each
//! resource from the state as it goes. A bucket that still holds objects is
//! kept, and reported with the command that removes it, unless
//! `--delete-data`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;
use crate::config::Engine as EngineKind;
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
    if deployment.target.engine == EngineKind::Pulumi {
        return crate::engine::pulumi::down(deployment);
    }
    if crate::engine::cli::handles(deployment.target.platform) {
        return crate::engine::cli::down(deployment, args.delete_data);
    }
    if crate::engine::gcp::handles(deployment.target.platform) {
        return crate::engine::gcp::down(
            &deployment.config,
            &deployment.config_path,
            &deployment.target_name,
            args.delete_data,
            env,
        );
    }
    let state_path = deployment.state_path();
    let Some(state) = State::load(&state_path)? else {
        eprintln!(
            "down: nothing recorded for target `{}` (no `{}`)",
            deployment.target_name,
            state_path.display()
        );
        return Ok(0);
    };
    if state.engine == crate::engine::compose::ENGINE {
        return crate::engine::compose::down(deployment, state, args.delete_data);
    }
    native_down(deployment, state, args.delete_data, env)
}

#[cfg(not(feature = "aws"))]
fn native_down(
    deployment: &Deployment,
    state: State,
    _delete_data: bool,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    Err(CommandError::new(
        format!(
            "target `{}` was made by the `{}` engine, and this deploy-kit was built without the `aws` feature",
            deployment.target_name, state.engine
        ),
        "rebuild with `cargo install --path infra --features aws` (or `cargo build --release -p deploy-kit --features aws`)",
        2,
    ))
}

#[cfg(feature = "aws")]
fn native_down(
    deployment: &Deployment,
    state: State,
    delete_data: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    use crate::engine::aws::AwsSettings;
    use crate::engine::aws::apply::AwsEngine;
    use crate::engine::{DestroyOptions, Progress};

    if state.engine != "aws" {
        return Err(CommandError::new(
            format!(
                "the state of target `{}` was made by the `{}` engine",
                deployment.target_name, state.engine
            ),
            "run `down` with the deploy-kit build that has that engine",
            2,
        ));
    }
    let settings = AwsSettings::resolve(
        &deployment.config,
        &deployment.target_name,
        &deployment.target,
        env,
    )?;
    let engine = AwsEngine::new(settings, None)?;
    let state_path = deployment.state_path();
    let mut progress = Progress::stderr();
    progress.note(&format!("down: target `{}`", deployment.target_name));
    let kept = crate::engine::destroy_and_forget(
        &engine,
        state,
        &state_path,
        DestroyOptions { delete_data },
        &mut progress,
    )?;
    for left in &kept {
        eprintln!("kept: {}; remove it with `{}`", left.reason, left.command);
    }
    Ok(0)
}
