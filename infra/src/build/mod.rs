//! `deploy-kit build [--target T]`: the artifact a target runs, built,
//! checked and (for images) pushed, then recorded in
//! `.deploy-kit/<environment>/<target>/build.json` so `plan`, `render` and
//! `up` refer to it by digest without building again.
//!
//! - Lambda targets get a zip: `bootstrap` plus the binary, cross-linked by
//!   [`compile`] for glibc 2.34, checked by [`elf`] (architecture, newest
//!   GLIBC version, the `lambda` feature) and zipped reproducibly by [`lambda`].
//! - Azure Functions targets get a custom-handler zip ([`azure`]): the
//!   rendered `host.json` and `rpc/function.json` and the same binary.
//! - Container platforms get an OCI image: the same binary as one layer on
//!   `service.base_image`, pushed to `service.image`'s registry by [`image`]
//!   over the distribution API ([`registry`], credentials by [`credentials`]);
//!   with `build.engine: docker`, by the Docker CLI instead ([`docker`]).
//!
//! Invariants: nothing is pushed unless the binary compiled and passed
//! every check; blobs go up before the manifest that names them; the same
//! binary and base give the same digests, and a rebuild pushes 0 bytes.

pub mod azure;
pub mod cloud_login;
pub mod compile;
pub mod credentials;
pub mod docker;
pub mod elf;
pub mod image;
pub mod lambda;
pub mod registry;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use kit_checks::platform::Platform;
use serde::{Deserialize, Serialize};

use crate::CommandError;
use crate::artifact::{ArtifactError, Workspace};
use crate::config::{Architecture, BuildEngine, DEFAULT_BASE_IMAGE};
use crate::deployment::Deployment;
use credentials::CredentialError;
use elf::GlibcVersion;
use registry::{PushStats, Reference, RegistryError, Transport};

/// Schema id of `build.json` and `build --json`.
pub const BUILD_SCHEMA: &str = crate::output::BUILD;
/// The record's file name in the target's output directory.
pub const RECORD_FILE: &str = "build.json";
/// The Lambda package's file name beside it.
pub const PACKAGE_FILE: &str = "package.zip";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target to build for (default `default_target`, or the only target).
    #[arg(long, env = "DEPLOY_KIT_TARGET")]
    pub target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A prebuilt service binary: checked, packaged and pushed, not
    /// compiled. Repeat it for a target with several `architectures`, one
    /// binary each (matched by their ELF machine).
    #[arg(long, env = "DEPLOY_KIT_KIT_SERVICE", value_name = "PATH")]
    pub kit_service: Vec<PathBuf>,
    /// Print the `deploy-kit.build/v1` record on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Why a build failed. Each variant has its hint and exit code here, and
/// becomes a [`CommandError`] through `From`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(
        "the Rust target `{target}` is not installed, and target architecture `{architecture}` needs it"
    )]
    MissingRustTarget {
        target: String,
        architecture: String,
    },
    #[error("`cargo zigbuild` is not available: {message}")]
    NoZigbuild { message: String },
    #[error("failed to run `{tool}`: {message}")]
    Tool { tool: String, message: String },
    #[error("`{command}` failed ({status}); nothing was pushed")]
    Compile { command: String, status: String },
    #[error("`{binary}` is not a Linux executable: {message}")]
    NotElf { binary: PathBuf, message: String },
    #[error("`{binary}` is built for {found}, and the target runs on {wanted}")]
    WrongArchitecture {
        binary: PathBuf,
        found: String,
        wanted: String,
    },
    #[error(
        "`{binary}` needs glibc {needed}, newer than the {limit} of Lambda's `provided.al2023`"
    )]
    GlibcTooNew {
        binary: PathBuf,
        needed: GlibcVersion,
        limit: GlibcVersion,
    },
    #[error(
        "`{binary}` was built without the `lambda` feature (its `lambda` subcommand cannot serve invocations)"
    )]
    NoLambdaFeature { binary: PathBuf },
    #[error(
        "the Lambda package is {unzipped} bytes unzipped, over Lambda's limit of 250 MB unzipped ({limit} bytes)"
    )]
    PackageTooLarge { unzipped: u64, limit: u64 },
    #[error("failed to write {what}: {message}")]
    Io { what: String, message: String },
    #[error("`service.image` `{image}` names no registry to push to")]
    NoRegistry { image: String },
    #[error(
        "target `{target}` runs on `{platform}`, and `deploy-kit build` does not build for it yet"
    )]
    Unsupported { target: String, platform: String },
    #[error("target `{target}` lists {count} architectures, and a {artifact} runs on one")]
    SeveralArchitectures {
        target: String,
        count: usize,
        artifact: &'static str,
    },
    #[error(
        "no prebuilt binary for architecture `{architecture}` of target `{target}` among the {given} given with `--kit-service`"
    )]
    NoPrebuiltFor {
        target: String,
        architecture: String,
        given: usize,
    },
    #[error("`{first}` and `{second}` are both built for {architecture}")]
    TwoPrebuiltFor {
        first: PathBuf,
        second: PathBuf,
        architecture: String,
    },
    #[error("{0}")]
    Transport(String),
    #[error("base image `{base}`: {source}")]
    BaseImage {
        base: String,
        #[source]
        source: RegistryError,
    },
    #[error("pushing `{image}`: {source}")]
    Push {
        image: String,
        #[source]
        source: RegistryError,
    },
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    #[error("`build.engine: docker` needs a docker CLI, and `{program}` {message}")]
    NoDocker { program: String, message: String },
    #[error("`{command}` failed ({status}); nothing was recorded. Its output:\n{output}")]
    DockerFailed {
        command: String,
        status: String,
        output: String,
    },
    #[error("`{command}` pushed, and its digest could not be read back: {message}")]
    DockerDigest { command: String, message: String },
    #[error(
        "`{program}` has no `buildx`, and target `{target}` lists {count} architectures (an image index needs `docker buildx build`)"
    )]
    DockerSeveralArchitectures {
        program: String,
        target: String,
        count: usize,
    },
}

impl BuildError {
    /// The `hint:` line.
    pub fn hint(&self) -> String {
        match self {
            BuildError::Artifact(error) => error.hint(),
            BuildError::MissingRustTarget { target, .. } => format!(
                "run `rustup target add {target}` (or set `architecture:` of the target to one whose Rust target is installed)"
            ),
            BuildError::NoZigbuild { .. } => {
                "install it with `pip install cargo-zigbuild ziglang` (zig links for glibc 2.34 without a Docker daemon)".into()
            }
            BuildError::Tool { .. } => "install Rust (https://rustup.rs) and check `PATH`".into(),
            BuildError::Compile { .. } => "fix the errors cargo printed above, then run `deploy-kit build` again".into(),
            BuildError::NotElf { .. } => "pass a Linux binary to `--kit-service`, or leave it out to build `service.package`".into(),
            BuildError::WrongArchitecture { .. } => "build for the target's architecture (leave out `--kit-service` and `deploy-kit build` does), or set the target's `architecture:`".into(),
            BuildError::GlibcTooNew { .. } => format!(
                "link against glibc {} with `cargo zigbuild --target <arch>-unknown-linux-gnu.{}` (what `deploy-kit build` does without `--kit-service`)",
                GlibcVersion::LAMBDA,
                GlibcVersion::LAMBDA
            ),
            BuildError::NoLambdaFeature { .. } => "give the service package a `lambda = [\"kit-service/lambda\"]` feature; deploy-kit turns it on for Lambda targets".into(),
            BuildError::PackageTooLarge { .. } => "shrink the binary: `strip = true` and `opt-level = \"z\"` under `[profile.release]`, fewer features, or deploy as an image".into(),
            BuildError::Io { .. } => "check that the directory is writable".into(),
            BuildError::NoRegistry { .. } => "set `service.image` in deploy-kit.yaml to `REGISTRY/REPOSITORY[:TAG]` (like `ghcr.io/acme/sensor-rpc`)".into(),
            BuildError::Unsupported { .. } => "pass a prebuilt artifact to `up` (`--kit-service PATH`)".into(),
            BuildError::SeveralArchitectures { target, .. } => format!(
                "set one `architecture:` for target `{target}` (`architectures:` with several is for image targets)"
            ),
            BuildError::NoPrebuiltFor { architecture, .. } => format!(
                "pass one `--kit-service PATH` per architecture (add the {architecture} binary), or leave them out to compile every architecture"
            ),
            BuildError::TwoPrebuiltFor { .. } => "pass one binary per architecture".into(),
            BuildError::Transport(_) => "fix the variable, or unset it".into(),
            BuildError::BaseImage { source, .. } | BuildError::Push { source, .. } => registry_hint(self, source),
            BuildError::Credentials(CredentialError::UnknownHelper { helper, file, .. }) => format!(
                "install `docker-credential-{helper}` on `PATH`, or remove it from `credHelpers`/`credsStore` in `{}`",
                file.display()
            ),
            BuildError::Credentials(CredentialError::NoRegion { .. }) => {
                "set `region:` on the target, or export `AWS_REGION`".into()
            }
            BuildError::Credentials(CredentialError::Ecr { .. }) => "check the AWS credentials (`AWS_PROFILE` or `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`) and that they may call `ecr:GetAuthorizationToken`; or set `build.registry_auth: docker-config` and `docker login`".into(),
            BuildError::Credentials(CredentialError::ArtifactRegistry { .. }) => "run `gcloud auth application-default login` or set `GOOGLE_APPLICATION_CREDENTIALS`; or set `build.registry_auth: docker-config` and `docker login`".into(),
            BuildError::Credentials(CredentialError::NeedsFeature { feature, .. }) => format!(
                "rebuild with `cargo install --path infra --features {feature}`, or set `build.registry_auth: docker-config` and `docker login`"
            ),
            BuildError::Credentials(_) => "check the registry auth file (`docker login REGISTRY` rewrites it)".into(),
            BuildError::NoDocker { .. } => "install Docker (https://docs.docker.com/get-docker/) or podman and put it on `PATH`, or set `DOCKER` to its path; or switch back to the native engine, which needs no Docker: remove `build.engine: docker` (or set `build.engine: native`)".into(),
            BuildError::DockerFailed { .. } => "fix what the docker CLI says above, then run `deploy-kit build` again; or switch back to the native engine with `build.engine: native`".into(),
            BuildError::DockerDigest { .. } => "check that the docker CLI pushed to `service.image`'s registry; `build.engine: native` reads the digest itself".into(),
            BuildError::DockerSeveralArchitectures { .. } => "install the buildx plugin (https://docs.docker.com/build/install-buildx/), or use `build.engine: native`, which builds the image index itself".into(),
        }
    }

    /// The exit code: 1 for a build or push that ran and failed, 2 for
    /// what the config, the machine or the binary must fix.
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::Artifact(error) => error.exit_code(),
            BuildError::Compile { .. }
            | BuildError::Io { .. }
            | BuildError::DockerFailed { .. }
            | BuildError::DockerDigest { .. } => 1,
            BuildError::BaseImage { source, .. } | BuildError::Push { source, .. } => {
                match source {
                    RegistryError::Unreachable { .. } | RegistryError::Status { .. } => 1,
                    _ => 2,
                }
            }
            _ => 2,
        }
    }
}

fn registry_hint(error: &BuildError, source: &RegistryError) -> String {
    let base = matches!(error, BuildError::BaseImage { .. });
    match source {
        RegistryError::BadReference { .. } => if base {
            "set `service.base_image` to `REGISTRY/REPOSITORY[:TAG]`"
        } else {
            "set `service.image` to `REGISTRY/REPOSITORY[:TAG]`"
        }
        .into(),
        RegistryError::Unreachable { registry, .. } => format!(
            "check that `{registry}` is up and reachable; a registry without TLS must be listed in `DEPLOY_KIT_INSECURE_REGISTRIES`, one with a private CA needs `DEPLOY_KIT_REGISTRY_CA`"
        ),
        RegistryError::Unauthorized { registry, .. } | RegistryError::Denied { registry, .. } => format!(
            "log in with `docker login {registry}` (or `podman login`), or add the registry to `~/.docker/config.json`; the account needs {} access",
            if base { "pull" } else { "push" }
        ),
        RegistryError::NotFound { .. } => if base {
            "push the base image to its registry, or set `service.base_image` to an image that exists"
        } else {
            "check `service.image`"
        }
        .into(),
        RegistryError::Status { .. } | RegistryError::Protocol { .. } => {
            "check the registry's logs; run the build again once it is fixed (blobs already there are skipped)".into()
        }
    }
}

impl From<BuildError> for CommandError {
    fn from(error: BuildError) -> CommandError {
        let mut message = error.to_string();
        // The chain once, as `main` prints it: the registry's own words follow.
        let mut source = std::error::Error::source(&error);
        while let Some(inner) = source {
            if !message.contains(&inner.to_string()) {
                message.push_str(&format!(": {inner}"));
            }
            source = inner.source();
        }
        CommandError::new(message, error.hint(), error.exit_code())
    }
}

/// What a target's build makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArtifactKind {
    LambdaZip,
    /// The Functions custom-handler package (`host.json`, `rpc/function.json`, the binary).
    AzureFunctionsZip,
    Image,
}

impl ArtifactKind {
    /// The artifact `platform` runs, or `None` when build does not make one.
    pub fn of(platform: Platform) -> Option<ArtifactKind> {
        match platform {
            Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl => {
                Some(ArtifactKind::LambdaZip)
            }
            Platform::CloudRun
            | Platform::Fly
            | Platform::Railway
            | Platform::Kubernetes
            | Platform::Compose => Some(ArtifactKind::Image),
            Platform::AzureFunctions => Some(ArtifactKind::AzureFunctionsZip),
            Platform::CloudFunctions | Platform::CloudflareWorkers => None,
        }
    }
}

/// The binary as built and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryRecord {
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// The newest `GLIBC_x.y` it needs.
    pub glibc: Option<String>,
    pub lambda_feature: bool,
}

/// The Lambda package as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackageRecord {
    pub path: PathBuf,
    pub bytes: u64,
    pub unzipped_bytes: u64,
    /// Hex SHA-256 of the zip.
    pub sha256: String,
    /// Lambda's `CodeSha256` (base64 SHA-256), as `plan` compares it.
    pub code_sha256: String,
    /// Lambda only: inline, or through the artifact bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<lambda::Upload>,
}

/// The image as pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `registry/repository`.
    pub repository: String,
    pub tag: String,
    pub digest: String,
    /// `registry/repository@sha256:...`: what deploys refer to.
    pub reference: String,
    pub base: String,
    pub base_digest: String,
    /// Compressed size of every layer (of every architecture's image).
    pub bytes: u64,
    pub pushed: PushStats,
    /// With several architectures: each one's image under the index
    /// (`digest` is then the index's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub platforms: Vec<PlatformRecord>,
    /// `docker` when the Docker CLI built and pushed it (`build.engine:
    /// docker`: `base_digest`, `bytes` and `pushed` are then not measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// One architecture's image under an image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformRecord {
    pub architecture: String,
    /// The image manifest's digest.
    pub digest: String,
    pub base_digest: String,
    pub binary: BinaryRecord,
}

/// Seconds per phase (0 for a phase that did not run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub compile: f64,
    pub package: f64,
    pub push: f64,
}

/// `build.json`: what the last build of a target made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildRecord {
    pub schema: String,
    pub target: String,
    pub kind: ArtifactKind,
    /// The (first) architecture built.
    pub architecture: String,
    /// Every architecture, when there are several (an image index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// The (first architecture's) binary.
    pub binary: BinaryRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageRecord>,
    pub seconds: Timings,
}

impl BuildRecord {
    /// The record in `output_dir`, if a build wrote one (an unreadable one counts as none).
    pub fn load(output_dir: &Path) -> Option<BuildRecord> {
        let text = std::fs::read_to_string(output_dir.join(RECORD_FILE)).ok()?;
        serde_json::from_str(&text)
            .ok()
            .filter(|record: &BuildRecord| record.schema == BUILD_SCHEMA)
    }

    fn save(&self, output_dir: &Path) -> Result<(), BuildError> {
        let io = |error: std::io::Error| BuildError::Io {
            what: format!("`{}`", output_dir.join(RECORD_FILE).display()),
            message: error.to_string(),
        };
        std::fs::create_dir_all(output_dir).map_err(io)?;
        let temporary = output_dir.join(format!("{RECORD_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("the record serializes");
        std::fs::write(&temporary, text + "\n").map_err(io)?;
        std::fs::rename(&temporary, output_dir.join(RECORD_FILE)).map_err(io)
    }
}

/// Whether an image text names its registry (`host.tld/...`, `host:port/...`, `localhost/...`).
pub fn names_registry(image: &str) -> bool {
    image.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    })
}

/// What `up` and `build` pass in.
#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// Prebuilt binaries (`--kit-service`): checked and packaged, not
    /// compiled; one per architecture.
    pub prebuilt_binaries: Vec<PathBuf>,
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// Builds the target's artifact, prints what it did and how long each
/// phase took (stderr), and records it in `build.json`.
pub fn build(
    deployment: &Deployment,
    options: &BuildOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<BuildRecord, CommandError> {
    let platform = deployment.target.platform;
    let Some(kind) = ArtifactKind::of(platform) else {
        return Err(BuildError::Unsupported {
            target: deployment.target_name.clone(),
            platform: platform.name().to_string(),
        }
        .into());
    };
    let artifact = deployment.artifact()?;
    let architectures = deployment.target.built_architectures();
    let architecture = architectures[0];
    if architectures.len() > 1 && kind != ArtifactKind::Image {
        return Err(BuildError::SeveralArchitectures {
            target: deployment.target_name.clone(),
            count: architectures.len(),
            artifact: match kind {
                ArtifactKind::LambdaZip => "Lambda function",
                _ => "function app",
            },
        }
        .into());
    }
    // What the push needs is checked before anything compiles: the docker
    // CLI (`build.engine: docker`), or the registry and its credentials.
    let docker = match (kind, deployment.config.build.engine) {
        (ArtifactKind::Image, BuildEngine::Docker) => Some(docker::DockerCli::find(env)?),
        _ => None,
    };
    let push = match kind {
        ArtifactKind::Image if docker.is_none() => Some(PushPlan::resolve(deployment, env)?),
        _ => None,
    };
    // The rendered files are checked before anything compiles too.
    let azure_files = match kind {
        ArtifactKind::AzureFunctionsZip => Some(azure::rendered_files(deployment)?),
        _ => None,
    };
    let inline_limit = lambda::inline_limit(env).map_err(BuildError::Transport)?;
    let features = deployment.features();
    let started = Instant::now();
    let prebuilt = !options.prebuilt_binaries.is_empty();
    let binary_paths: Vec<(Architecture, PathBuf)> = if prebuilt {
        let given = options
            .prebuilt_binaries
            .iter()
            .map(|path| crate::artifact::given_binary(path))
            .collect::<Result<Vec<_>, _>>()
            .map_err(BuildError::from)?;
        match_prebuilt(&deployment.target_name, &architectures, given)?
    } else {
        let workspace = Workspace::load(&artifact.workspace).map_err(BuildError::from)?;
        let required = crate::artifact::required_features(
            &deployment.config.service,
            platform,
            deployment.config.storage.as_ref(),
        );
        artifact
            .check(&workspace, &required, &deployment.config.service.workspace)
            .map_err(BuildError::from)?;
        // Every architecture's Rust target is there before anything compiles.
        for architecture in &architectures {
            compile::check_rust_target(&workspace.root, *architecture)?;
        }
        let mut paths = Vec::new();
        for architecture in &architectures {
            eprintln!(
                "build: {}",
                compile::command_line(artifact, &features, *architecture)
            );
            paths.push((
                *architecture,
                compile::compile(artifact, &workspace, &features, *architecture)?,
            ));
        }
        paths
    };
    let compile_seconds = if prebuilt {
        0.0
    } else {
        started.elapsed().as_secs_f64()
    };
    let mut binaries = Vec::new();
    for (architecture, binary_path) in binary_paths {
        let bytes = std::fs::read(&binary_path).map_err(|error| BuildError::Io {
            what: format!("`{}`", binary_path.display()),
            message: error.to_string(),
        })?;
        let binary = check_binary(&binary_path, &bytes, architecture, kind)?;
        eprintln!(
            "build: `{}` {} in {compile_seconds:.1} s: {}, glibc {} at most, lambda feature {}",
            binary_path.display(),
            megabytes(binary.bytes),
            architecture.name(),
            binary.glibc.as_deref().unwrap_or("none (static)"),
            if binary.lambda_feature { "on" } else { "off" },
        );
        binaries.push(Binary {
            architecture,
            bytes,
            record: binary,
        });
    }
    let bytes = binaries[0].bytes.clone();
    let mut record = BuildRecord {
        schema: BUILD_SCHEMA.to_string(),
        target: deployment.target_name.clone(),
        kind,
        architecture: architecture.name().to_string(),
        architectures: if architectures.len() > 1 {
            architectures.iter().map(|a| a.name().to_string()).collect()
        } else {
            Vec::new()
        },
        binary: binaries[0].record.clone(),
        package: None,
        image: None,
        seconds: Timings {
            compile: compile_seconds,
            ..Timings::default()
        },
    };
    if let Some(cli) = &docker {
        let started = Instant::now();
        let given: Vec<docker::DockerBinary<'_>> = binaries
            .iter()
            .map(|binary| docker::DockerBinary {
                architecture: binary.architecture,
                bytes: &binary.bytes,
                sha256: &binary.record.sha256,
            })
            .collect();
        let image = docker::build_and_push(cli, deployment, &artifact.binary, &given, env)?;
        record.seconds.push = started.elapsed().as_secs_f64();
        eprintln!(
            "build: built and pushed by `{}` in {:.1} s; image {}",
            cli.name, record.seconds.push, image.reference
        );
        record.image = Some(image);
        record.save(&deployment.output_dir)?;
        return Ok(record);
    }
    match push {
        None => {
            let started = Instant::now();
            let (zip, unzipped, path) = match &azure_files {
                Some((host_json, function_json)) => {
                    let (zip, unzipped) =
                        azure::package(host_json, function_json, &artifact.binary, &bytes)?;
                    (
                        zip,
                        unzipped,
                        deployment.output_dir.join(azure::PACKAGE_FILE),
                    )
                }
                None => {
                    let (zip, unzipped) = lambda::package(&artifact.binary, &bytes)?;
                    (zip, unzipped, deployment.output_dir.join(PACKAGE_FILE))
                }
            };
            std::fs::create_dir_all(path.parent().unwrap_or(&deployment.output_dir))
                .and_then(|()| std::fs::write(&path, &zip))
                .map_err(|error| BuildError::Io {
                    what: format!("`{}`", path.display()),
                    message: error.to_string(),
                })?;
            let package = PackageRecord {
                path,
                bytes: zip.len() as u64,
                unzipped_bytes: unzipped,
                sha256: registry::digest_of(&zip)
                    .trim_start_matches("sha256:")
                    .to_string(),
                code_sha256: crate::plan::package_hash(&zip),
                upload: (kind == ArtifactKind::LambdaZip)
                    .then(|| lambda::upload_for(zip.len() as u64, inline_limit)),
            };
            record.seconds.package = started.elapsed().as_secs_f64();
            eprintln!(
                "build: package `{}` {} ({} unzipped, {}) in {:.1} s, sha256 {}",
                package.path.display(),
                megabytes(package.bytes),
                megabytes(package.unzipped_bytes),
                match package.upload {
                    Some(lambda::Upload::Inline) => "inline upload",
                    Some(lambda::Upload::S3) => "S3 upload",
                    None => "zip deploy",
                },
                record.seconds.package,
                package.sha256
            );
            record.package = Some(package);
        }
        Some(plan) => {
            let started = Instant::now();
            let image = plan.run(deployment, &artifact.binary, &binaries, &mut record)?;
            record.seconds.push = started.elapsed().as_secs_f64() - record.seconds.package;
            eprintln!(
                "build: image layer and config in {:.1} s; pushed in {:.1} s: {} blobs ({}) uploaded, {} mounted, {} already there; image {}",
                record.seconds.package,
                record.seconds.push,
                image.pushed.blobs_pushed,
                megabytes(image.pushed.bytes_pushed),
                image.pushed.blobs_mounted,
                image.pushed.blobs_skipped,
                megabytes(image.bytes),
            );
            if !image.platforms.is_empty() {
                eprintln!(
                    "build: image index {} over {}",
                    image.digest,
                    image
                        .platforms
                        .iter()
                        .map(|p| format!("{} {}", p.architecture, p.digest))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            record.image = Some(image);
        }
    }
    record.save(&deployment.output_dir)?;
    Ok(record)
}

/// One architecture's binary, read and checked.
struct Binary {
    architecture: Architecture,
    bytes: Vec<u8>,
    record: BinaryRecord,
}

/// Pairs prebuilt binaries with the target's architectures by their ELF
/// machine. One binary for one architecture is paired as it is (the
/// checks then name a wrong machine).
fn match_prebuilt(
    target: &str,
    architectures: &[Architecture],
    given: Vec<PathBuf>,
) -> Result<Vec<(Architecture, PathBuf)>, BuildError> {
    if let ([architecture], [path]) = (architectures, given.as_slice()) {
        return Ok(vec![(*architecture, path.clone())]);
    }
    let mut found: Vec<(Architecture, PathBuf)> = Vec::new();
    for path in &given {
        let bytes = std::fs::read(path).map_err(|error| BuildError::Io {
            what: format!("`{}`", path.display()),
            message: error.to_string(),
        })?;
        let facts = elf::inspect(&bytes).map_err(|error| BuildError::NotElf {
            binary: path.clone(),
            message: error.to_string(),
        })?;
        let Some(architecture) = architectures
            .iter()
            .find(|a| elf::machine_of(**a) == facts.machine)
        else {
            return Err(BuildError::WrongArchitecture {
                binary: path.clone(),
                found: elf::machine_name(facts.machine),
                wanted: architectures
                    .iter()
                    .map(|a| elf::machine_name(elf::machine_of(*a)))
                    .collect::<Vec<_>>()
                    .join(" or "),
            });
        };
        if let Some((_, first)) = found.iter().find(|(a, _)| a == architecture) {
            return Err(BuildError::TwoPrebuiltFor {
                first: first.clone(),
                second: path.clone(),
                architecture: architecture.name().to_string(),
            });
        }
        found.push((*architecture, path.clone()));
    }
    architectures
        .iter()
        .map(|architecture| {
            found
                .iter()
                .find(|(a, _)| a == architecture)
                .cloned()
                .ok_or_else(|| BuildError::NoPrebuiltFor {
                    target: target.to_string(),
                    architecture: architecture.name().to_string(),
                    given: given.len(),
                })
        })
        .collect()
}

/// The checks every binary passes before it is packaged or pushed.
fn check_binary(
    path: &Path,
    bytes: &[u8],
    architecture: Architecture,
    kind: ArtifactKind,
) -> Result<BinaryRecord, BuildError> {
    let facts = elf::inspect(bytes).map_err(|error| BuildError::NotElf {
        binary: path.to_path_buf(),
        message: error.to_string(),
    })?;
    if facts.machine != elf::machine_of(architecture) {
        return Err(BuildError::WrongArchitecture {
            binary: path.to_path_buf(),
            found: elf::machine_name(facts.machine),
            wanted: elf::machine_name(elf::machine_of(architecture)),
        });
    }
    if let Some(needed) = facts.glibc
        && needed > GlibcVersion::LAMBDA
    {
        return Err(BuildError::GlibcTooNew {
            binary: path.to_path_buf(),
            needed,
            limit: GlibcVersion::LAMBDA,
        });
    }
    if kind == ArtifactKind::LambdaZip && !facts.lambda_feature {
        return Err(BuildError::NoLambdaFeature {
            binary: path.to_path_buf(),
        });
    }
    Ok(BinaryRecord {
        path: path.to_path_buf(),
        bytes: bytes.len() as u64,
        sha256: registry::digest_of(bytes)
            .trim_start_matches("sha256:")
            .to_string(),
        glibc: facts.glibc.map(|v| v.to_string()),
        lambda_feature: facts.lambda_feature,
    })
}

/// Where an image goes and what it stands on, resolved before compiling.
struct PushPlan {
    target: Reference,
    tag: String,
    base: Reference,
    transport: Transport,
    target_credential: Option<credentials::Credential>,
    base_credential: Option<credentials::Credential>,
}

impl PushPlan {
    fn resolve(
        deployment: &Deployment,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PushPlan, BuildError> {
        let service = &deployment.config.service;
        let image = service.image();
        if !names_registry(&image) {
            return Err(BuildError::NoRegistry { image });
        }
        let target = Reference::parse(&image).map_err(|source| BuildError::Push {
            image: image.clone(),
            source,
        })?;
        let base_text = service
            .base_image
            .clone()
            .unwrap_or_else(|| DEFAULT_BASE_IMAGE.to_string());
        let base = Reference::parse(&base_text).map_err(|source| BuildError::BaseImage {
            base: base_text.clone(),
            source,
        })?;
        let transport = Transport::from_env(env).map_err(BuildError::Transport)?;
        let auth = deployment.config.build.registry_auth;
        let region = deployment.target.region.as_deref();
        let target_credential = cloud_login::lookup(&target.registry, auth, region, env)?;
        // The base is read with the same login when it lives on the same registry.
        let base_credential = if base.registry == target.registry {
            target_credential.clone()
        } else {
            cloud_login::lookup(
                &base.registry,
                crate::config::RegistryAuth::Auto,
                region,
                env,
            )?
        };
        Ok(PushPlan {
            tag: target
                .tag
                .clone()
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
            target,
            base,
            transport,
            target_credential,
            base_credential,
        })
    }

    /// Pushes one image per binary; with several, each by digest only and
    /// then the index over them under the tag.
    fn run(
        self,
        deployment: &Deployment,
        binary_name: &str,
        binaries: &[Binary],
        record: &mut BuildRecord,
    ) -> Result<ImageRecord, BuildError> {
        let several = binaries.len() > 1;
        let image_text = self.target.to_string();
        let push_error = |source| match source {
            // A base layer that cannot be read is the base image's problem.
            RegistryError::NotFound { .. } => BuildError::BaseImage {
                base: self.base.to_string(),
                source,
            },
            source => BuildError::Push {
                image: image_text.clone(),
                source,
            },
        };
        let mut stats = PushStats::default();
        let mut image_bytes = 0;
        let mut entries = Vec::new();
        let mut platforms = Vec::new();
        record.seconds.package = 0.0;
        for binary in binaries {
            let started = Instant::now();
            let mut base = image::read_base(
                &self.base,
                &self.transport,
                self.base_credential.clone(),
                binary.architecture,
            )
            .map_err(|source| BuildError::BaseImage {
                base: self.base.to_string(),
                source,
            })?;
            let layer = image::binary_layer(binary_name, &binary.bytes).map_err(|error| {
                BuildError::Io {
                    what: "the image layer".into(),
                    message: error.to_string(),
                }
            })?;
            let settings = self.settings(deployment, binary_name, binary, &base.digest);
            let config = image::config(&base.config, &settings, &layer);
            record.seconds.package += started.elapsed().as_secs_f64();
            let pushed = image::push(
                &mut base,
                &layer,
                &config,
                &self.target,
                (!several).then_some(self.tag.as_str()),
                &self.transport,
                self.target_credential.clone(),
            )
            .map_err(push_error)?;
            stats.blobs_pushed += pushed.stats.blobs_pushed;
            stats.blobs_mounted += pushed.stats.blobs_mounted;
            stats.blobs_skipped += pushed.stats.blobs_skipped;
            stats.bytes_pushed += pushed.stats.bytes_pushed;
            image_bytes += pushed.image_bytes;
            entries.push(image::IndexEntry {
                digest: pushed.manifest_digest.clone(),
                size: pushed.manifest_size,
                architecture: binary.architecture,
            });
            platforms.push(PlatformRecord {
                architecture: binary.architecture.name().to_string(),
                digest: pushed.manifest_digest,
                base_digest: base.digest.clone(),
                binary: binary.record.clone(),
            });
        }
        let digest = if several {
            image::push_index(
                &entries,
                &self.target,
                &self.tag,
                &self.transport,
                self.target_credential.clone(),
            )
            .map_err(push_error)?
        } else {
            entries[0].digest.clone()
        };
        Ok(ImageRecord {
            repository: self.target.name(),
            tag: self.tag.clone(),
            reference: self.target.by_digest(&digest),
            digest,
            base: self.base.to_string(),
            base_digest: platforms[0].base_digest.clone(),
            bytes: image_bytes,
            pushed: stats,
            platforms: if several { platforms } else { Vec::new() },
            engine: None,
        })
    }

    /// The config settings of one architecture's image.
    fn settings(
        &self,
        deployment: &Deployment,
        binary_name: &str,
        binary: &Binary,
        base_digest: &str,
    ) -> image::ImageSettings {
        let service = &deployment.config.service;
        image::ImageSettings {
            binary: binary_name.to_string(),
            architecture: binary.architecture,
            env: vec![
                ("PORT".into(), image::PORT.to_string()),
                ("KIT_LOG_FORMAT".into(), "json".into()),
            ],
            labels: vec![
                (
                    "org.opencontainers.image.title".into(),
                    service.name.clone(),
                ),
                (
                    "org.opencontainers.image.base.name".into(),
                    self.base.to_string(),
                ),
                (
                    "org.opencontainers.image.base.digest".into(),
                    base_digest.to_string(),
                ),
                (
                    "dev.deploy-kit.binary.sha256".into(),
                    binary.record.sha256.clone(),
                ),
            ],
        }
    }
}

/// `deploy-kit build`.
pub fn run(args: Args) -> ExitCode {
    crate::output::set_json(args.json);
    let env = |name: &str| std::env::var(name).ok();
    match run_build(&args, &env) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

fn run_build(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<(), CommandError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let deployment = Deployment::load(args.config.as_deref(), args.target.as_deref(), &cwd)?;
    let record = build(
        &deployment,
        &BuildOptions {
            prebuilt_binaries: args.kit_service.clone(),
        },
        env,
    )?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&record).expect("the record serializes")
        );
    } else if let Some(image) = &record.image {
        println!("{}", image.reference);
    } else if let Some(package) = &record.package {
        println!("{}", package.path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_named_by_a_dot_a_port_or_localhost() {
        assert!(names_registry("ghcr.io/acme/x"));
        assert!(names_registry("127.0.0.1:5000/x:1"));
        assert!(names_registry("localhost/x"));
        assert!(!names_registry("sensor-rpc:0.1.0"));
        assert!(!names_registry("acme/sensor-rpc"));
    }

    #[test]
    fn every_error_has_a_hint_and_an_exit_code() {
        let compile = BuildError::Compile {
            command: "cargo zigbuild".into(),
            status: "exit status: 101".into(),
        };
        assert_eq!(compile.exit_code(), 1);
        assert!(compile.to_string().contains("nothing was pushed"));
        let missing = BuildError::MissingRustTarget {
            target: "aarch64-unknown-linux-gnu".into(),
            architecture: "arm64".into(),
        };
        assert_eq!(missing.exit_code(), 2);
        assert_eq!(
            missing.hint(),
            "run `rustup target add aarch64-unknown-linux-gnu` (or set `architecture:` of the target to one whose Rust target is installed)"
        );
        let down = CommandError::from(BuildError::Push {
            image: "127.0.0.1:1/x".into(),
            source: RegistryError::Unreachable {
                registry: "127.0.0.1:1".into(),
                message: "connection refused".into(),
            },
        });
        assert_eq!(down.exit_code, 1);
        assert!(
            down.message.contains("connection refused"),
            "{}",
            down.message
        );
        assert!(down.hint.contains("DEPLOY_KIT_INSECURE_REGISTRIES"));
    }
}
