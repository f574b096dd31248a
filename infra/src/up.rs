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
}

pub fn run(args: Args) -> ExitCode {
    if args.target == "local" {
        return up_local(args);
    }
    CommandError::new(
        format!("`deploy-kit up {}` is not implemented yet", args.target),
        "",
        2,
    )
    .report()
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
