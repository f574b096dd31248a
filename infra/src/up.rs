//! `deploy-kit up <target>`: `local` builds and runs the service here ([`crate::up_local`]);
//! a `compose` target runs nginx and its replicas here or in containers
//! ([`crate::engine::compose`]); every other target is provisioned by its engine: the offline doctor, the
//! plan (on stderr), create-or-update of every resource with one progress
//! line per step, the state file after each resource, then `doctor --online`
//! against what it made, whose exit code `up` returns.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;
use crate::config::Engine as EngineKind;
use crate::deployment::{Deployment, find_service_binary, lambda_build_command, lambda_package};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target to bring up: `local`, or a name under `targets:` in deploy-kit.yaml.
    pub target: String,
    /// A prebuilt service binary to run or package instead of building
    /// `service.package` (`local`: default `cargo build` in `service.workspace`;
    /// Lambda, Azure: default `service.binary` next to `deploy-kit`, then on `PATH`).
    #[arg(long, env = "DEPLOY_KIT_KIT_SERVICE", value_name = "PATH")]
    pub kit_service: Option<PathBuf>,
    /// Loopback port to serve on (`local`: the service; compose: nginx; 0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Return after the doctor with its exit code (`local` stops the service
    /// first; a compose target keeps running until `deploy-kit down`).
    #[arg(long)]
    pub no_wait: bool,
    /// How a compose target runs: `processes` (nginx and the replicas on
    /// 127.0.0.1; the default) or `container` (`docker compose` / `podman compose`).
    #[arg(
        long,
        value_enum,
        env = "DEPLOY_KIT_RUNTIME",
        default_value = "processes"
    )]
    pub runtime: crate::engine::compose::Runtime,
    /// The `nginx` binary (compose, `processes`); default on `PATH`, then `/usr/sbin`.
    #[arg(long, env = "DEPLOY_KIT_NGINX", value_name = "PATH")]
    pub nginx: Option<PathBuf>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Go on even when the offline doctor reports errors.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub state: crate::state::StateArgs,
}

pub fn run(args: Args) -> ExitCode {
    if args.target == "local" {
        return up_local(args);
    }
    let env = |name: &str| std::env::var(name).ok();
    match up_target(&args, &env) {
        Ok(code) => ExitCode::from(code),
        Err(error) => error.report(),
    }
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

fn up_target(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<u8, CommandError> {
    let cwd = cwd();
    let mut deployment = Deployment::load(args.config.as_deref(), Some(&args.target), &cwd)?;
    deployment.prebuilt_binary = args.kit_service.clone();
    // Locked for the whole run; the state is pushed back even when it fails.
    let session = args
        .state
        .begin(&deployment, &format!("up {}", args.target), env)?;
    let result = up_locked(args, &deployment, &cwd, env);
    let finished = session.finish();
    let code = result?;
    finished?;
    Ok(code)
}

fn up_locked(
    args: &Args,
    deployment: &Deployment,
    cwd: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    let cwd = cwd.to_path_buf();
    if deployment.target.engine == EngineKind::Pulumi {
        crate::engine::pulumi::find_pulumi(std::env::var_os("PATH").as_deref())?;
        crate::plan::doctor_gate(deployment, args.force, env)?;
        return crate::engine::pulumi::up(deployment);
    }
    if crate::engine::cli::handles(deployment.target.platform) {
        let kit_service = args.kit_service.as_deref();
        return crate::engine::cli::up(deployment, args.force, kit_service, &cwd, env);
    }
    crate::plan::doctor_gate(deployment, args.force, env)?;
    if crate::engine::compose::handles(deployment.target.platform) {
        return crate::engine::compose::up(
            deployment,
            &crate::engine::compose::UpOptions {
                runtime: args.runtime,
                kit_service: args.kit_service.clone(),
                nginx: args.nginx.clone(),
                port: args.port,
                wait: !args.no_wait,
            },
            env,
        );
    }
    if crate::engine::gcp::handles(deployment.target.platform) {
        return crate::engine::gcp::up(
            &deployment.config,
            &deployment.config_path,
            &deployment.target_name,
            env,
        );
    }
    // Fails early, with the hint, for platforms no native engine handles.
    deployment.desired(None, env)?;
    let artifact = deployment.artifact()?;
    let build = lambda_build_command(artifact, &deployment.features());
    let binary = find_service_binary(args.kit_service.as_deref(), artifact, &build)?;
    let package = lambda_package(&binary, artifact, &build)?;
    let (document, desired) = crate::plan::compute(deployment, Some(&package), &cwd, env)?;
    if let Some(error) = &document.render_error {
        eprintln!("warning: rendering failed; the native engine does not need the files: {error}");
    }
    eprint!("{}", crate::plan::render_text(&document));
    native_up(deployment, desired, package, env)
}

#[cfg(not(feature = "aws"))]
fn native_up(
    deployment: &Deployment,
    _desired: Vec<crate::engine::Resource>,
    _package: Vec<u8>,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    Err(CommandError::new(
        format!(
            "target `{}` runs on AWS, and this deploy-kit was built without the `aws` feature",
            deployment.target_name
        ),
        "rebuild with `cargo install --path infra --features aws` (or `cargo build --release -p deploy-kit --features aws`)",
        2,
    ))
}

#[cfg(feature = "aws")]
fn native_up(
    deployment: &Deployment,
    desired: Vec<crate::engine::Resource>,
    package: Vec<u8>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    use crate::engine::aws::AwsSettings;
    use crate::engine::aws::apply::AwsEngine;
    use crate::engine::{Engine, Progress, State, apply_and_prune, kind};

    let settings = AwsSettings::resolve(
        &deployment.config,
        &deployment.target_name,
        &deployment.target,
        env,
    )?;
    let engine = AwsEngine::new(settings, Some(package))?;
    let state_path = deployment.state_path();
    let previous = State::load(&state_path)?;
    let mut state = previous.clone().unwrap_or_else(|| {
        State::new(
            engine.name(),
            &deployment.config.service.environment,
            &deployment.target_name,
        )
    });
    let mut progress = Progress::stderr();
    progress.note(&format!("up: target `{}`", deployment.target_name));
    // Resources the config no longer asks for go, as the plan said.
    let kept = apply_and_prune(&engine, &desired, &mut state, &state_path, &mut progress)?;
    for left in kept {
        eprintln!("kept: {}; remove it with `{}`", left.reason, left.command);
    }
    progress.note(&format!(
        "up: done in {:.1} s, state in `{}`",
        progress.elapsed_seconds(),
        state_path.display()
    ));
    if let Some(url) = state
        .resources
        .iter()
        .find(|r| r.kind == kind::ENDPOINT)
        .and_then(|r| r.outputs.get("url"))
    {
        println!("url: {url}");
    }
    let output = deployment.doctor(kit_checks::Mode::Online, env)?;
    print!("{}", output.text);
    Ok(output.exit_code)
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
