//! `deploy-kit up <target>`: `local` runs kit-service here ([`crate::up_local`]);
//! every other target is provisioned by its engine.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target to bring up: `local`, or a name under `targets:` in deploy-kit.yaml.
    pub target: String,
    /// The `kit-service` binary (`local`); default: next to `deploy-kit`, then on `PATH`.
    #[arg(long, env = "DEPLOY_KIT_KIT_SERVICE", value_name = "PATH")]
    pub kit_service: Option<PathBuf>,
    /// Loopback port to serve on (`local`; 0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Stop the service after the doctor and exit with the doctor's code (`local`).
    #[arg(long)]
    pub no_wait: bool,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    if args.target == "local" {
        return up_local(args);
    }
    let env = |name: &str| std::env::var(name).ok();
    match load_target(args.config.as_deref(), &args.target) {
        Err(error) => return error.report(),
        Ok((config, path)) => {
            if crate::engine::gcp::handles(config.targets[&args.target].platform) {
                return match crate::engine::gcp::up(&config, &path, &args.target, &env) {
                    Ok(code) => ExitCode::from(code),
                    Err(error) => error.report(),
                };
            }
        }
    }
    CommandError::new(
        format!("`deploy-kit up {}` is not implemented yet", args.target),
        "",
        2,
    )
    .report()
}

/// The config (`--config`, else `./deploy-kit.yaml`) and its absolute path,
/// checked to have `target`.
pub fn load_target(
    config: Option<&std::path::Path>,
    target: &str,
) -> Result<(crate::config::DeployConfig, PathBuf), CommandError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let path = cwd.join(config.unwrap_or(std::path::Path::new(crate::config::DEFAULT_CONFIG_FILE)));
    let config = crate::config::DeployConfig::load(&path).map_err(|error| {
        CommandError::new(
            error.to_string(),
            "pass `--config FILE` or set `DEPLOY_KIT_CONFIG`; every key is described in the example `deploy-kit.yaml`",
            2,
        )
    })?;
    config
        .target(Some(target))
        .map_err(|message| CommandError::new(message, "name a target: `deploy-kit up NAME`", 2))?;
    Ok((config, path))
}

fn up_local(args: Args) -> ExitCode {
    match crate::up_local::run(&crate::up_local::UpLocalRequest {
        kit_service: args.kit_service,
        port: args.port,
        wait: !args.no_wait,
    }) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("hint: {}", error.hint());
            ExitCode::from(error.exit_code())
        }
    }
}
