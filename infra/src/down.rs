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
    /// Also delete the service's objects (only those under `storage.prefix`)
    /// and then buckets left empty.
    #[arg(long)]
    pub delete_data: bool,
    /// Delete without asking. Without it, `down` asks on a terminal and
    /// refuses elsewhere.
    #[arg(long, short = 'y')]
    pub yes: bool,
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
    let code = crate::state::with_session(result, finished)?;
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
    let engine = crate::engine::target::open(deployment)?;
    if !args.yes {
        let what = to_delete(deployment, engine.name())?;
        if !what.is_empty() {
            let stdin = std::io::stdin();
            let terminal = std::io::IsTerminal::is_terminal(&stdin);
            confirm(
                deployment,
                &what,
                args.delete_data,
                terminal,
                &mut stdin.lock(),
            )?;
        }
    }
    engine.down(args.delete_data, env)
}

/// What `down` would delete: the state's resources (or the Pulumi stack).
fn to_delete(deployment: &Deployment, engine: &str) -> Result<Vec<String>, CommandError> {
    if engine == "pulumi" {
        return Ok(vec![format!(
            "the Pulumi stack `{}` and everything in it",
            deployment.config.service.environment
        )]);
    }
    Ok(State::load(&deployment.state_path())?
        .map(|state| state.resources.iter().rev().map(|r| r.address()).collect())
        .unwrap_or_default())
}

/// Asks on a terminal whether to delete `what`; refuses elsewhere (`--yes`).
fn confirm(
    deployment: &Deployment,
    what: &[String],
    delete_data: bool,
    terminal: bool,
    input: &mut dyn std::io::BufRead,
) -> Result<(), CommandError> {
    let target = &deployment.target_name;
    let data = if delete_data {
        format!(
            ", with the service's objects{}",
            deployment
                .config
                .storage
                .as_ref()
                .map(|s| format!(" under `{}`", s.prefix))
                .unwrap_or_default()
        )
    } else {
        String::new()
    };
    if !terminal {
        return Err(CommandError::new(
            format!(
                "`down {target}` deletes {} resource(s){data} and there is no terminal to confirm on: {}",
                what.len(),
                what.join(", ")
            ),
            format!("pass `--yes` to delete them: `deploy-kit down {target} --yes`"),
            2,
        ));
    }
    eprintln!("down: target `{target}` deletes, newest first{data}:");
    for item in what {
        eprintln!("  - {item}");
    }
    eprint!("delete them? [y/N] ");
    let mut answer = String::new();
    let _ = input.read_line(&mut answer);
    if matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        return Ok(());
    }
    Err(CommandError::new(
        format!("`down {target}` cancelled: nothing was deleted"),
        "answer `y` to delete, or pass `--yes`",
        1,
    ))
}
