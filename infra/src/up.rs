//! `deploy-kit up <target>`: `local` builds and runs the service here ([`crate::up_local`]);
//! a `compose` target runs nginx and its replicas here or in containers
//! ([`crate::engine::compose`]); every other target is provisioned by its engine: the offline doctor, the
//! plan (on stderr), create-or-update of every resource with one progress
//! line per step, the state file after each resource, then `doctor --online`
//! against what it made, whose exit code `up` returns.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::CommandError;
use crate::build::{ArtifactKind, BuildOptions};
use crate::config::Engine as EngineKind;
use crate::deployment::Deployment;
use crate::engine::target::UpRequest;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target to bring up: `local`, or a name under `targets:` in deploy-kit.yaml.
    pub target: String,
    /// A prebuilt service binary to run or package instead of building
    /// `service.package` (`local`: default `cargo build` in `service.workspace`;
    /// Lambda, Azure: default `service.binary` next to `deploy-kit`, then on `PATH`).
    #[arg(long, env = "DEPLOY_KIT_KIT_SERVICE", value_name = "PATH")]
    pub kit_service: Option<PathBuf>,
    /// An existing Lambda package (zip) to deploy instead of running
    /// `deploy-kit build` first.
    #[arg(long, env = "DEPLOY_KIT_PACKAGE", value_name = "ZIP")]
    pub package: Option<PathBuf>,
    /// An existing image (`registry/repository@sha256:...`) to deploy
    /// instead of running `deploy-kit build` first.
    #[arg(long, env = "DEPLOY_KIT_IMAGE", value_name = "REFERENCE")]
    pub image: Option<String>,
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
    /// Take over existing resources deploy-kit did not make (or another
    /// deployment's): they are tagged as this deployment's, and `down`
    /// deletes them.
    #[arg(long)]
    pub adopt: bool,
    #[command(flatten)]
    pub state: crate::state::StateArgs,
    /// Print the `deploy-kit.up/v1` document on stdout when done (the
    /// doctor's report goes to stderr).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> ExitCode {
    crate::output::set_json(args.json);
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
    // A given binary or package is not built here, so ART001 (the cargo
    // package exists) does not apply.
    deployment.prebuilt_binary = args.kit_service.clone().or_else(|| args.package.clone());
    // Locked for the whole run; the state is pushed back even when it fails.
    let session = args
        .state
        .begin(&deployment, &format!("up {}", args.target), env)?;
    let started = std::time::Instant::now();
    let result = up_locked(args, &mut deployment, &cwd, env);
    let finished = session.finish();
    let seconds = started.elapsed().as_secs_f64();
    let phases = crate::timings::summary();
    // On failure too (where the time went up to the error), unless it
    // failed before any phase began.
    if result.is_ok() || phases != crate::timings::Summary::default() {
        eprintln!("up: {seconds:.1} s in all: {}", phases.line());
    }
    let code = crate::state::with_session(result, finished)?;
    if crate::output::json() {
        crate::output::document(&crate::output::up_document(
            &deployment,
            code,
            seconds,
            phases,
        )?);
    }
    Ok(code)
}

fn up_locked(
    args: &Args,
    deployment: &mut Deployment,
    cwd: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    // A missing tool or a finding fails before a build that may take minutes.
    crate::engine::target::open(deployment)?.preflight()?;
    crate::plan::doctor_gate(deployment, args.force, env)?;
    prepare_image(deployment, args, env)?;
    let deployment = &*deployment;
    let engine = crate::engine::target::open(deployment)?;
    let request = UpRequest {
        force: args.force,
        adopt: args.adopt,
        kit_service: args.kit_service.clone(),
        package: match ArtifactKind::of(deployment.target.platform) {
            Some(ArtifactKind::LambdaZip) if deployment.target.engine == EngineKind::Native => {
                Some(lambda_package(deployment, args, env)?)
            }
            _ => None,
        },
        // Azure Functions deploys the zip `deploy-kit build` makes (or `--package`).
        package_file: match deployment.target.engine {
            EngineKind::Native => crate::build::azure::package_for_up(
                deployment,
                args.package.as_deref(),
                args.kit_service.as_deref(),
                |options| timed_build(deployment, options, env),
            )?,
            EngineKind::Pulumi => None,
        },
        runtime: args.runtime,
        nginx: args.nginx.clone(),
        port: args.port,
        wait: !args.no_wait,
        returns_to: None,
        cwd: cwd.to_path_buf(),
    };
    // The engine's `up`, counted as provisioning (less the post-`up`
    // doctor it runs, which counts as the smoke test).
    crate::timings::measure(crate::timings::Phase::Provision, || {
        engine.up(&request, env)
    })
}

/// `deploy-kit build` as a part of `up`, counted as build and push time.
fn timed_build(
    deployment: &Deployment,
    options: &BuildOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::build::BuildRecord, CommandError> {
    use crate::timings::{Phase, measure, reattribute};
    let record = measure(Phase::Build, || {
        crate::build::build(deployment, options, env)
    })?;
    reattribute(Phase::Build, Phase::Push, record.seconds.push);
    Ok(record)
}

/// The Lambda package `up` deploys: `--package`, else a fresh `deploy-kit build`.
fn lambda_package(
    deployment: &Deployment,
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<u8>, CommandError> {
    let path = match &args.package {
        Some(path) => path.clone(),
        None => {
            let options = BuildOptions {
                prebuilt_binaries: args.kit_service.clone().into_iter().collect(),
            };
            let record = timed_build(deployment, &options, env)?;
            record
                .package
                .expect("a Lambda target's build makes a package")
                .path
        }
    };
    std::fs::read(&path).map_err(|error| {
        CommandError::new(
            format!(
                "failed to read the Lambda package `{}`: {error}",
                path.display()
            ),
            "pass an existing zip to `--package`, or leave it out to build one",
            2,
        )
    })
}

/// For targets that run an image: `--image` as given, else a `deploy-kit
/// build` that pushes `service.image` when it names a registry; either way
/// `service.image` becomes the reference by digest the engine deploys.
fn prepare_image(
    deployment: &mut Deployment,
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CommandError> {
    if ArtifactKind::of(deployment.target.platform) != Some(ArtifactKind::Image)
        || crate::engine::compose::handles(deployment.target.platform)
    {
        return Ok(());
    }
    if let Some(image) = &args.image {
        if !image.contains("@sha256:") {
            eprintln!(
                "warning: `--image {image}` is a tag, not a digest; the platform deploys whatever it points at when it pulls"
            );
        }
        deployment.config.service.image = Some(image.clone());
        return Ok(());
    }
    let image = deployment.config.service.image();
    if !crate::build::names_registry(&image) {
        eprintln!(
            "note: `service.image` `{image}` names no registry, so `up` builds nothing and the platform must find that image; set `service.image: REGISTRY/REPOSITORY` to build and push it by digest"
        );
        return Ok(());
    }
    let options = BuildOptions {
        prebuilt_binaries: args.kit_service.clone().into_iter().collect(),
    };
    let record = timed_build(deployment, &options, env)?;
    if let Some(image) = &record.image {
        crate::deployment::deploy_by_digest(&mut deployment.config, image);
        deployment.built = Some(record);
    }
    Ok(())
}

/// `up local` through the same seam ([`crate::engine::target::Local`]):
/// no config needed, nothing provisioned.
fn up_local(args: Args) -> ExitCode {
    let mut request = UpRequest::new(&cwd());
    request.kit_service = args.kit_service;
    request.port = args.port;
    request.wait = !args.no_wait;
    let env = |name: &str| std::env::var(name).ok();
    match crate::engine::target::open_local().up(&request, &env) {
        Ok(code) => ExitCode::from(code),
        Err(error) => error.report(),
    }
}
