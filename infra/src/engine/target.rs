//! The one seam of `up`, `down`, `rollback` and `plan --refresh`: [`open`]
//! gives every target's engine as a [`TargetEngine`], so each command has
//! one path whatever the platform.
//!
//! The resource engines ([`Engine`]: AWS, GCP, and the kubectl, fly,
//! railway and az CLIs) share one lifecycle, written once here
//! ([`up_resources`], [`down_resources`]): the plan, apply-and-prune with
//! the state saved after each resource, the release, and `doctor --online`
//! as the smoke test. Compose (processes it supervises, or containers) and
//! Pulumi (its own CLI and state) are engines of their own behind the same
//! trait. What differs between families is listed in [`Family`].

use std::path::{Path, PathBuf};

use kit_checks::platform::Platform;

use crate::CommandError;
use crate::config::Engine as EngineKind;
use crate::deployment::Deployment;
use crate::engine::owner::Owner;
use crate::engine::{DestroyOptions, Engine, Progress, State, apply_and_prune, kind};
use crate::releases::{Release, RollbackError, RolledBack};

/// How engines read the environment (tests pass their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What `up` gives a target's engine beyond the config: its flags and the
/// artifact it built.
#[derive(Debug, Clone)]
pub struct UpRequest {
    /// Go on despite the offline doctor's errors.
    pub force: bool,
    /// Take over existing resources deploy-kit did not make (`--adopt`).
    pub adopt: bool,
    /// A prebuilt service binary (`--kit-service`): compose replicas, the
    /// Azure Functions package.
    pub kit_service: Option<PathBuf>,
    /// The Lambda package `up` built or was given (AWS targets).
    pub package: Option<Vec<u8>>,
    /// The package file a CLI engine deploys as it is (the Azure Functions
    /// zip `up` built or was given with `--package`).
    pub package_file: Option<PathBuf>,
    /// Compose: processes or containers.
    pub runtime: crate::engine::compose::Runtime,
    /// Compose: the nginx binary in front of the replicas.
    pub nginx: Option<PathBuf>,
    /// Compose: nginx's port (0 keeps the recorded one or picks one).
    pub port: u16,
    /// Compose: stay in the foreground until Ctrl-C.
    pub wait: bool,
    /// Set by `rollback`: the release this `up` returns to.
    pub returns_to: Option<u64>,
    /// Where paths in the plan are shown from.
    pub cwd: PathBuf,
}

impl UpRequest {
    /// A request with no flags set, from `cwd`.
    pub fn new(cwd: &Path) -> UpRequest {
        UpRequest {
            force: false,
            adopt: false,
            kit_service: None,
            package: None,
            package_file: None,
            runtime: crate::engine::compose::Runtime::Processes,
            nginx: None,
            port: 0,
            wait: false,
            returns_to: None,
            cwd: cwd.to_path_buf(),
        }
    }
}

/// Every target's engine, as `up`, `down`, `rollback` and `plan --refresh`
/// drive it.
pub trait TargetEngine {
    /// The name recorded in the state file: `aws`, `gcp`, `kubernetes`,
    /// `fly`, `railway`, `azure`, `compose`, `pulumi`.
    fn name(&self) -> &'static str;
    /// What the target needs, from the config alone (no network): what
    /// `plan` diffs against the state. `code_sha256` is the Lambda
    /// package's hash when one was built or given.
    fn desired(
        &self,
        code_sha256: Option<&str>,
        env: Env,
    ) -> Result<Vec<crate::engine::Resource>, CommandError>;
    /// Fails, with the install hint, when a tool the engine drives is
    /// missing: `up` checks it before a build that may take minutes.
    fn preflight(&self) -> Result<(), CommandError> {
        Ok(())
    }
    /// Provisions the target (`up` has run the offline doctor gate and the
    /// build); returns `doctor --online`'s exit code.
    fn up(&self, request: &UpRequest, env: Env) -> Result<u8, CommandError>;
    /// Removes what the state records (`delete_data`: buckets with objects too).
    fn down(&self, delete_data: bool, env: Env) -> Result<u8, CommandError>;
    /// Returns traffic to `chosen`, recorded in `state`. The default: not
    /// supported on this platform.
    fn rollback(
        &self,
        state: State,
        chosen: &Release,
        nginx: Option<PathBuf>,
        env: Env,
    ) -> Result<RolledBack, CommandError> {
        let _ = (state, chosen, nginx, env);
        let (target, platform) = self.names();
        Err(RollbackError::Unsupported {
            target: target.to_string(),
            platform: platform.to_string(),
        }
        .into())
    }
    /// The resource engine that reads live resources back (`plan --refresh`).
    fn reader(&self, env: Env) -> Result<Box<dyn Engine>, CommandError> {
        let _ = env;
        let (target, platform) = self.names();
        Err(CommandError::new(
            format!(
                "`plan --refresh` reads live resources of AWS targets; target `{target}` (`{platform}`) cannot be read back yet"
            ),
            "run `plan` without `--refresh`; `doctor --online` checks the live bucket lifecycle and CORS (STO004, STO005, STO007)",
            2,
        ))
    }
    /// The target's name and platform, for messages.
    fn names(&self) -> (&str, &str);
}

/// [`TargetEngine::names`] of a deployment.
fn names_of(deployment: &Deployment) -> (&str, &str) {
    (&deployment.target_name, deployment.target.platform.name())
}

fn unsupported_rollback(deployment: &Deployment) -> CommandError {
    RollbackError::Unsupported {
        target: deployment.target_name.clone(),
        platform: deployment.target.platform.name().to_string(),
    }
    .into()
}

/// The engine of `deployment`'s target: Pulumi when `engine: pulumi`, else
/// the one for its platform. Fails for platforms no engine provisions.
pub fn open(deployment: &Deployment) -> Result<Box<dyn TargetEngine + '_>, CommandError> {
    if deployment.target.engine == EngineKind::Pulumi {
        return Ok(Box::new(Pulumi { deployment }));
    }
    open_native(deployment)
}

/// The engine of `deployment`'s platform, whatever `engine:` says (Pulumi
/// plans the resources the platform's engine would make).
fn open_native(deployment: &Deployment) -> Result<Box<dyn TargetEngine + '_>, CommandError> {
    let platform = deployment.target.platform;
    if crate::engine::compose::handles(platform) {
        return Ok(Box::new(Compose { deployment }));
    }
    let family = if crate::engine::cli::handles(platform) {
        Family::Cli
    } else if crate::engine::gcp::handles(platform) {
        Family::Gcp
    } else if crate::engine::aws::handles(platform) {
        Family::Aws
    } else {
        return Err(CommandError::new(
            format!(
                "target `{}`: the native engine does not provision `{}` yet",
                deployment.target_name,
                platform.name()
            ),
            format!(
                "set `engine: pulumi` under `targets.{}` to deploy the rendered Pulumi program",
                deployment.target_name
            ),
            2,
        ));
    };
    Ok(Box::new(Resources { deployment, family }))
}

/// The resource engines, and where their lifecycles differ:
/// - the engine is made from different inputs (AWS: the Lambda package;
///   CLI: the CLI on `PATH` and the previous state; GCP: the environment's
///   endpoints and credentials);
/// - CLI engines deploy the rendered files, so a render error stops `up`;
///   AWS and GCP call APIs and only warn;
/// - the release `up` records: the Lambda version the alias `live` serves
///   (AWS), the image by digest (the others);
/// - rollback: AWS moves the alias back; Fly and Kubernetes deploy the
///   release's image again; the others cannot yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Aws,
    Gcp,
    Cli,
}

/// A target whose engine is a resource [`Engine`].
pub struct Resources<'a> {
    pub deployment: &'a Deployment,
    pub family: Family,
}

impl Resources<'_> {
    /// The resource engine, made for `up` (with the packages and the
    /// previous state) or for `down` and `rollback`; `owner` is whose
    /// resources it may take over and delete.
    pub fn engine(
        &self,
        package: Option<Vec<u8>>,
        package_file: Option<&Path>,
        previous: Option<State>,
        owner: Option<Owner>,
        env: Env,
    ) -> Result<Box<dyn Engine>, CommandError> {
        let deployment = self.deployment;
        match self.family {
            Family::Cli => {
                crate::engine::cli::engine_for(deployment, previous, package_file, owner)
            }
            Family::Gcp => gcp_engine(deployment, owner, env),
            Family::Aws => aws_engine(deployment, package, owner, env),
        }
    }

    fn expected_engine(&self) -> &'static str {
        match self.family {
            Family::Cli => crate::engine::cli::engine_name(self.deployment.target.platform),
            Family::Gcp => "gcp",
            Family::Aws => "aws",
        }
    }
}

#[cfg(feature = "gcp")]
fn gcp_engine(
    deployment: &Deployment,
    owner: Option<Owner>,
    env: Env,
) -> Result<Box<dyn Engine>, CommandError> {
    let settings = crate::engine::gcp::GcpSettings::resolve(
        &deployment.config,
        &deployment.target_name,
        &deployment.target,
    )?;
    Ok(Box::new(
        crate::engine::gcp::apply::GcpEngine::new(settings, env)?.owned_by(owner),
    ))
}

#[cfg(not(feature = "gcp"))]
fn gcp_engine(
    deployment: &Deployment,
    _owner: Option<Owner>,
    _env: Env,
) -> Result<Box<dyn Engine>, CommandError> {
    Err(CommandError::new(
        format!(
            "target `{}` runs on Google Cloud, and this deploy-kit was built without the `gcp` feature",
            deployment.target_name
        ),
        format!("rebuild with `{}`", crate::GCP_REBUILD),
        2,
    ))
}

#[cfg(feature = "aws")]
fn aws_engine(
    deployment: &Deployment,
    package: Option<Vec<u8>>,
    owner: Option<Owner>,
    env: Env,
) -> Result<Box<dyn Engine>, CommandError> {
    let settings = crate::engine::aws::AwsSettings::resolve(
        &deployment.config,
        &deployment.target_name,
        &deployment.target,
        env,
    )?;
    Ok(Box::new(
        crate::engine::aws::apply::AwsEngine::new(settings, package)?.owned_by(owner),
    ))
}

#[cfg(not(feature = "aws"))]
fn aws_engine(
    deployment: &Deployment,
    _package: Option<Vec<u8>>,
    _owner: Option<Owner>,
    _env: Env,
) -> Result<Box<dyn Engine>, CommandError> {
    Err(CommandError::new(
        format!(
            "target `{}` runs on AWS, and this deploy-kit was built without the `aws` feature",
            deployment.target_name
        ),
        format!("rebuild with `{}`", crate::AWS_REBUILD),
        2,
    ))
}

impl TargetEngine for Resources<'_> {
    fn name(&self) -> &'static str {
        self.expected_engine()
    }

    fn desired(
        &self,
        code_sha256: Option<&str>,
        env: Env,
    ) -> Result<Vec<crate::engine::Resource>, CommandError> {
        let deployment = self.deployment;
        match self.family {
            Family::Aws => {
                let settings = crate::engine::aws::AwsSettings::resolve(
                    &deployment.config,
                    &deployment.target_name,
                    &deployment.target,
                    env,
                )?;
                Ok(settings.desired(code_sha256))
            }
            Family::Cli => crate::engine::cli::desired(deployment),
            Family::Gcp => Ok(crate::engine::gcp::GcpSettings::resolve(
                &deployment.config,
                &deployment.target_name,
                &deployment.target,
            )?
            .desired()),
        }
    }

    fn names(&self) -> (&str, &str) {
        names_of(self.deployment)
    }

    fn preflight(&self) -> Result<(), CommandError> {
        if self.family == Family::Cli {
            crate::engine::cli::require_cli(self.deployment)?;
        }
        Ok(())
    }

    fn up(&self, request: &UpRequest, env: Env) -> Result<u8, CommandError> {
        self.preflight()?;
        up_resources(self, request, env, &mut Progress::stderr())
    }

    fn down(&self, delete_data: bool, env: Env) -> Result<u8, CommandError> {
        down_resources(self, delete_data, env, &mut Progress::stderr())
    }

    fn rollback(
        &self,
        state: State,
        chosen: &Release,
        _nginx: Option<PathBuf>,
        env: Env,
    ) -> Result<RolledBack, CommandError> {
        let platform = self.deployment.target.platform;
        match self.family {
            Family::Aws => {
                let engine = self.engine(None, None, None, None, env)?;
                crate::releases::engine_rollback(
                    self.deployment,
                    engine.as_ref(),
                    state,
                    chosen,
                    env,
                )
            }
            Family::Cli
                if matches!(platform, Platform::Fly | Platform::Kubernetes)
                    && chosen.artifact.kind == crate::releases::artifact_kind::IMAGE =>
            {
                crate::releases::image_rollback(self, chosen, env)
            }
            _ => Err(unsupported_rollback(self.deployment)),
        }
    }

    fn reader(&self, env: Env) -> Result<Box<dyn Engine>, CommandError> {
        if self.family == Family::Aws {
            return self.engine(None, None, None, None, env);
        }
        Err(CommandError::new(
            format!(
                "`plan --refresh` reads live resources of AWS targets; target `{}` (`{}`) cannot be read back yet",
                self.deployment.target_name,
                self.deployment.target.platform.name()
            ),
            "run `plan` without `--refresh`; `doctor --online` checks the live bucket lifecycle and CORS (STO004, STO005, STO007)",
            2,
        ))
    }
}

/// The state recorded for `deployment`, refused when another engine wrote it.
fn recorded_state(deployment: &Deployment, engine: &str) -> Result<Option<State>, CommandError> {
    let state_path = deployment.state_path();
    let state = State::load(&state_path)?;
    if let Some(state) = &state
        && state.engine != engine
    {
        return Err(CommandError::new(
            format!(
                "the state of target `{}` (`{}`) was made by the `{}` engine, not `{engine}`",
                deployment.target_name,
                state_path.display(),
                state.engine
            ),
            format!(
                "check `platform:` of `targets.{}`, or run `deploy-kit down {}` with the build that made it first",
                deployment.target_name, deployment.target_name
            ),
            2,
        ));
    }
    Ok(state)
}

/// `up` of a resource engine (after the offline doctor gate): the plan,
/// every resource applied (the state saved after each), what the config
/// no longer asks for pruned, the release recorded, then `doctor --online`,
/// whose exit code it returns.
pub fn up_resources(
    target: &Resources<'_>,
    request: &UpRequest,
    env: Env,
    progress: &mut Progress,
) -> Result<u8, CommandError> {
    let deployment = target.deployment;
    let (document, desired) =
        crate::plan::compute(deployment, request.package.as_deref(), &request.cwd, env)?;
    if let Some(error) = &document.render_error {
        if target.family == Family::Cli {
            return Err(CommandError::new(
                format!(
                    "target `{}` deploys its rendered files, and rendering failed: {error}",
                    deployment.target_name
                ),
                "run `deploy-kit render target` to see what fails",
                1,
            ));
        }
        progress.note(&format!(
            "warning: rendering failed; the {} engine does not need the files: {error}",
            target.expected_engine()
        ));
    }
    progress.note(crate::plan::render_text(&document).trim_end());
    let state_path = deployment.state_path();
    let previous = recorded_state(deployment, target.expected_engine())?;
    let mut state = previous.clone().unwrap_or_else(|| {
        State::new(
            target.expected_engine(),
            &deployment.config.service.environment,
            &deployment.target_name,
        )
    });
    if state.id.is_empty() {
        // A state from before ownership tags: its resources get them now.
        state.id = crate::engine::owner::new_state_id();
    }
    let owner = Owner::new(&deployment.config.service.name, &state, request.adopt);
    let engine = target.engine(
        request.package.clone(),
        request.package_file.as_deref(),
        previous,
        Some(owner),
        env,
    )?;
    progress.note(&format!(
        "up: target `{}` ({} engine), {} planned change(s)",
        deployment.target_name,
        engine.name(),
        document.changes.len()
    ));
    // Resources the config no longer asks for go, as the plan said.
    let kept = match apply_and_prune(engine.as_ref(), &desired, &mut state, &state_path, progress) {
        Ok(kept) => kept,
        Err(error) => {
            // What serves now is not known: the engine may have moved
            // traffic before the step that failed.
            if let Some(live) = state.live_release {
                state.live_uncertain = true;
                state.save(&state_path)?;
                progress.note(&format!(
                    "up: failed part-way; the new artifact may already serve: `deploy-kit rollback {}` returns to release {live}, the last one known to serve",
                    deployment.target_name
                ));
            }
            return Err(error);
        }
    };
    for left in kept {
        progress.note(&format!(
            "kept: {}; remove it with `{}`",
            left.reason, left.command
        ));
    }
    if let Some((id, what)) = record_release(deployment, target.family, request, &mut state) {
        state.save(&state_path)?;
        progress.note(&format!("up: release {id}{what} is live"));
    }
    progress.note(&format!(
        "up: done in {:.1} s, state in `{}`",
        progress.elapsed_seconds(),
        state_path.display()
    ));
    if deployment.target.platform == Platform::CloudFunctions {
        progress.note("note: storage and the signing key are ready; deploy the function itself with `gcloud functions deploy` (deploy-kit does not build function sources)");
    }
    if let Some(url) = state.url() {
        crate::output::human(&format!("url: {url}\n"));
    }
    let output = deployment.doctor(kit_checks::Mode::Online, env)?;
    crate::output::human(&output.text);
    Ok(output.exit_code)
}

/// Records what `up` made live: the Lambda version the alias `live` serves
/// (AWS), else `service.image` (by digest after `deploy-kit build`).
/// Returns the release id and how to name what it runs; `None` when an
/// AWS function has no published version to return to.
fn record_release(
    deployment: &Deployment,
    family: Family,
    request: &UpRequest,
    state: &mut State,
) -> Option<(u64, String)> {
    use crate::releases::{Artifact, Live, artifact_kind, restore};
    if family == Family::Aws {
        let function = state.resources.iter().find(|r| r.kind == kind::FUNCTION)?;
        let (Some(version), Some(code_sha256)) = (
            function.outputs.get("version").cloned(),
            function.outputs.get("code_sha256").cloned(),
        ) else {
            return None;
        };
        let live = Live {
            artifact: Artifact {
                kind: artifact_kind::LAMBDA_ZIP.into(),
                digest: code_sha256,
            },
            restore: [(restore::LAMBDA_VERSION.to_string(), version.clone())].into(),
            returns_to: request.returns_to,
        };
        let (id, _) = crate::releases::record(state, deployment, live);
        return Some((id, format!(" (version {version})")));
    }
    let live = Live {
        artifact: Artifact {
            kind: artifact_kind::IMAGE.into(),
            digest: deployment.config.service.image(),
        },
        restore: Default::default(),
        returns_to: request.returns_to,
    };
    let (id, _) = crate::releases::record(state, deployment, live);
    Some((id, String::new()))
}

/// `down` of a resource engine: what the state records, newest first.
pub fn down_resources(
    target: &Resources<'_>,
    delete_data: bool,
    env: Env,
    progress: &mut Progress,
) -> Result<u8, CommandError> {
    let deployment = target.deployment;
    let state_path = deployment.state_path();
    let Some(state) = recorded_state(deployment, target.expected_engine())? else {
        progress.note(&format!(
            "down: nothing recorded for target `{}` (no `{}`)",
            deployment.target_name,
            state_path.display()
        ));
        return Ok(0);
    };
    let owner = Owner::new(&deployment.config.service.name, &state, false);
    let engine = target.engine(None, None, Some(state.clone()), Some(owner), env)?;
    progress.note(&format!(
        "down: target `{}` ({} engine)",
        deployment.target_name,
        engine.name()
    ));
    let kept = crate::engine::destroy_and_forget(
        engine.as_ref(),
        state,
        &state_path,
        DestroyOptions { delete_data },
        progress,
    )?;
    for left in &kept {
        progress.note(&format!(
            "kept: {}; remove it with `{}`",
            left.reason, left.command
        ));
    }
    Ok(0)
}

/// `service.platform: compose`: processes deploy-kit supervises, or containers.
struct Compose<'a> {
    deployment: &'a Deployment,
}

impl TargetEngine for Compose<'_> {
    fn name(&self) -> &'static str {
        crate::engine::compose::ENGINE
    }

    fn desired(
        &self,
        _code_sha256: Option<&str>,
        _env: Env,
    ) -> Result<Vec<crate::engine::Resource>, CommandError> {
        Ok(crate::engine::compose::ComposeSettings::resolve(self.deployment)?.desired())
    }

    fn names(&self) -> (&str, &str) {
        names_of(self.deployment)
    }

    fn up(&self, request: &UpRequest, env: Env) -> Result<u8, CommandError> {
        let options = crate::engine::compose::UpOptions {
            runtime: request.runtime,
            kit_service: request.kit_service.clone(),
            nginx: request.nginx.clone(),
            port: request.port,
            wait: request.wait,
            returns_to: request.returns_to,
        };
        crate::engine::compose::up(self.deployment, &options, env)
    }

    fn down(&self, delete_data: bool, _env: Env) -> Result<u8, CommandError> {
        let deployment = self.deployment;
        let state_path = deployment.state_path();
        let Some(state) = recorded_state(deployment, crate::engine::compose::ENGINE)? else {
            eprintln!(
                "down: nothing recorded for target `{}` (no `{}`)",
                deployment.target_name,
                state_path.display()
            );
            return Ok(0);
        };
        crate::engine::compose::down(deployment, state, delete_data)
    }

    fn rollback(
        &self,
        _state: State,
        chosen: &Release,
        nginx: Option<PathBuf>,
        env: Env,
    ) -> Result<RolledBack, CommandError> {
        crate::engine::compose::rollback(self.deployment, chosen, nginx, env)
    }
}

/// `deploy-kit up local`: the service built and run here on the embedded
/// defaults ([`crate::up_local`]), with or without a config; nothing is
/// provisioned, so there is nothing for `down` to remove.
pub struct Local;

/// The engine of `deploy-kit up local`.
pub fn open_local() -> Box<dyn TargetEngine> {
    Box::new(Local)
}

impl TargetEngine for Local {
    fn name(&self) -> &'static str {
        crate::up_local::LOCAL_TARGET
    }

    fn desired(
        &self,
        _code_sha256: Option<&str>,
        _env: Env,
    ) -> Result<Vec<crate::engine::Resource>, CommandError> {
        Ok(Vec::new())
    }

    fn names(&self) -> (&str, &str) {
        (crate::up_local::LOCAL_TARGET, "local")
    }

    fn up(&self, request: &UpRequest, _env: Env) -> Result<u8, CommandError> {
        crate::up_local::run(&crate::up_local::UpLocalRequest {
            kit_service: request.kit_service.clone(),
            port: request.port,
            wait: request.wait,
        })
        .map_err(|error| CommandError::new(error.to_string(), error.hint(), error.exit_code()))
    }

    fn down(&self, _delete_data: bool, _env: Env) -> Result<u8, CommandError> {
        eprintln!(
            "down: `up local` provisions nothing; its service stops with Ctrl-C (or when `--no-wait` returns)"
        );
        Ok(0)
    }
}

/// `engine: pulumi`: the user's Pulumi CLI on the rendered program.
struct Pulumi<'a> {
    deployment: &'a Deployment,
}

impl TargetEngine for Pulumi<'_> {
    fn name(&self) -> &'static str {
        "pulumi"
    }

    /// What the platform's own engine would make: the program renders the
    /// same resources.
    fn desired(
        &self,
        code_sha256: Option<&str>,
        env: Env,
    ) -> Result<Vec<crate::engine::Resource>, CommandError> {
        open_native(self.deployment)?.desired(code_sha256, env)
    }

    fn names(&self) -> (&str, &str) {
        names_of(self.deployment)
    }

    fn preflight(&self) -> Result<(), CommandError> {
        crate::engine::pulumi::find_pulumi(std::env::var_os("PATH").as_deref()).map(|_| ())
    }

    fn up(&self, _request: &UpRequest, _env: Env) -> Result<u8, CommandError> {
        self.preflight()?;
        crate::engine::pulumi::up(self.deployment)
    }

    fn down(&self, _delete_data: bool, _env: Env) -> Result<u8, CommandError> {
        crate::engine::pulumi::down(self.deployment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DeployConfig;

    fn deployment(platform: Platform, engine: &str) -> Deployment {
        let dir = std::env::temp_dir().join(format!("deploy-kit-seam-{}", std::process::id()));
        let path = dir.join("deploy-kit.yaml");
        let region = match platform {
            Platform::CloudRun | Platform::CloudFunctions => "europe-west1",
            Platform::AzureFunctions => "westeurope",
            _ => "eu-west-1",
        };
        let text = format!(
            "version: 1\nservice: {{name: svc, environment: test, package: svc, image: ghcr.io/acme/svc:1}}\ntargets:\n  t: {{platform: {}, region: {region}, engine: {engine}}}\n",
            platform.name()
        );
        let config = DeployConfig::parse(&text, &path).unwrap();
        Deployment::from_config(config, &path, "t").unwrap()
    }

    /// Every platform but Cloudflare Workers opens the engine whose name
    /// its state records; `engine: pulumi` always opens Pulumi.
    #[test]
    fn every_platform_opens_one_engine() {
        for &platform in Platform::ALL {
            let native = deployment(platform, "native");
            let expected = match platform {
                Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl => Some("aws"),
                Platform::CloudRun | Platform::CloudFunctions => Some("gcp"),
                Platform::Compose => Some(crate::engine::compose::ENGINE),
                Platform::CloudflareWorkers => None,
                other => Some(crate::engine::cli::engine_name(other)),
            };
            match (open(&native), expected) {
                (Ok(engine), Some(name)) => assert_eq!(engine.name(), name, "{platform:?}"),
                (Err(error), None) => {
                    assert!(
                        error.message.contains("does not provision"),
                        "{}",
                        error.message
                    );
                    assert!(error.hint.contains("engine: pulumi"), "{}", error.hint);
                }
                (Ok(engine), None) => panic!("{platform:?} opened `{}`", engine.name()),
                (Err(error), Some(_)) => panic!("{platform:?}: {}", error.message),
            }
            let pulumi = deployment(platform, "pulumi");
            assert_eq!(open(&pulumi).unwrap().name(), "pulumi", "{platform:?}");
        }
    }

    /// Rollback is refused, before anything runs, where no engine can do it.
    #[test]
    fn rollback_is_refused_where_the_engine_has_none() {
        let deployment = deployment(Platform::Railway, "native");
        let state = State::new("railway", "test", "t");
        let release = Release {
            id: 1,
            time: 0,
            who: "dev".into(),
            command: "up".into(),
            returns_to: None,
            artifact: crate::releases::Artifact {
                kind: crate::releases::artifact_kind::IMAGE.into(),
                digest: "ghcr.io/acme/svc@sha256:00".into(),
            },
            config_hash: String::new(),
            settings: Default::default(),
            restore: Default::default(),
        };
        let error = open(&deployment)
            .unwrap()
            .rollback(state, &release, None, &|_| None)
            .unwrap_err();
        assert_eq!(
            error.exit_code,
            crate::releases::REFUSED_EXIT_CODE,
            "{}",
            error.message
        );
    }
}
