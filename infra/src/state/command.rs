//! `deploy-kit state show | pull | push | unlock`: a target's state and lock,
//! wherever they are kept (see the module above).

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;
use crate::deployment::Deployment;

use super::{Backend, StateArgs, StateError};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub action: Action,
}

/// What to do with the state.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Where the state is, who holds its lock, and what it records.
    Show {
        #[command(flatten)]
        common: Common,
        /// Print the `deploy-kit.state-show/v1` document instead.
        #[arg(long)]
        json: bool,
    },
    /// Print the stored state (or write it to `--output`).
    Pull {
        #[command(flatten)]
        common: Common,
        /// File to write instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Upload a state file (e.g. a target kept locally so far), under the lock.
    Push {
        #[command(flatten)]
        common: Common,
        /// The state file; default the target's local `state.json`.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Break a lock left by a run that is gone; `ID` must name it.
    Unlock {
        #[command(flatten)]
        common: Common,
        /// The lock's id, as the lock error and `state show` print it.
        id: String,
    },
}

/// Target, config and state location.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Target (a name under `targets:` in deploy-kit.yaml).
    #[arg(long, env = "DEPLOY_KIT_TARGET")]
    pub target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
}

pub fn run(args: Args) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    match state(args, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

fn deployment(common: &Common) -> Result<Deployment, CommandError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    Deployment::load(common.config.as_deref(), common.target.as_deref(), &cwd)
}

fn state(args: Args, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CommandError> {
    match args.action {
        Action::Show { common, json } => {
            crate::output::set_json(json);
            let deployment = deployment(&common)?;
            let store = common.state.store(&deployment, env)?;
            let holder = store.holder()?;
            let state: Option<crate::engine::State> = store
                .pull()?
                .map(|bytes| serde_json::from_slice(&bytes).expect("pull checked it"));
            if json {
                crate::output::document(&serde_json::json!({
                    "schema": crate::output::STATE_SHOW,
                    "target": deployment.target_name,
                    "environment": deployment.config.service.environment,
                    "location": store.describe(),
                    "lock": holder,
                    "state": state,
                }));
                return Ok(());
            }
            println!("state: {}", store.describe());
            match holder {
                None => println!("lock: free"),
                Some(holder) => println!(
                    "lock: `{}` held by `{}` (`{}`, pid {}, {} s ago, deploy-kit {})",
                    holder.id,
                    holder.who,
                    holder.operation,
                    holder.pid,
                    holder.age().as_secs(),
                    holder.version
                ),
            }
            match state {
                None => println!("resources: none recorded"),
                Some(state) => {
                    println!(
                        "resources: {} (engine `{}`)",
                        state.resources.len(),
                        state.engine
                    );
                    for resource in &state.resources {
                        println!("  {}", resource.address());
                    }
                }
            }
            Ok(())
        }
        Action::Pull { common, output } => {
            let deployment = deployment(&common)?;
            let store = common.state.store(&deployment, env)?;
            let Some(bytes) = store.pull()? else {
                return Err(CommandError::new(
                    format!(
                        "no state for target `{}` at {}",
                        deployment.target_name,
                        store.describe()
                    ),
                    "nothing was deployed there yet, or it lives elsewhere (`--state`)",
                    1,
                ));
            };
            match output {
                None => {
                    use std::io::Write;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(|error| CommandError::new(error.to_string(), "", 1))?;
                }
                Some(path) => {
                    super::LocalBackend::new(path.parent().unwrap_or(std::path::Path::new(".")))
                        .put(
                            &path.file_name().unwrap_or_default().to_string_lossy(),
                            &bytes,
                        )?
                }
            }
            Ok(())
        }
        Action::Push { common, file } => {
            let deployment = deployment(&common)?;
            let store = common.state.store(&deployment, env)?;
            let path = file.unwrap_or_else(|| deployment.state_path());
            let bytes = std::fs::read(&path).map_err(|error| StateError::Unreachable {
                location: path.display().to_string(),
                reason: error.to_string(),
            })?;
            let lock = store.lock(
                &format!("state push {}", deployment.target_name),
                std::time::Duration::from_secs(common.state.lock_timeout),
            )?;
            let pushed = store.push(&bytes, &path.display().to_string());
            store.unlock(&lock.id)?;
            pushed?;
            eprintln!("state: pushed `{}` to {}", path.display(), store.describe());
            Ok(())
        }
        Action::Unlock { common, id } => {
            let deployment = deployment(&common)?;
            let store = common.state.store(&deployment, env)?;
            store.unlock(&id)?;
            eprintln!("state: lock `{id}` of `{}` broken", deployment.target_name);
            Ok(())
        }
    }
}
