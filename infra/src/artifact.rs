//! The service's build artifact: the cargo package, bin target and features
//! that every template and engine builds and runs, resolved once from
//! `service.package`, `service.binary`, `service.features` and
//! `service.workspace`.
//!
//! With `package` set nothing here runs cargo, so `render` works offline.
//! Without it, the package is the workspace's only package with exactly one
//! bin target, found with `cargo metadata --no-deps` at the workspace root
//! (the way `cargo run` picks a binary). `plan` and `doctor` check the names
//! against `cargo metadata` as check ART001, whose words
//! ([`ArtifactFacts::problem`]) are also the errors of `up local`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kit_checks::facts::{
    ArtifactFacts, CargoPackage, CargoWorkspace, RequiredFeature, StorageProvider,
};
use kit_checks::platform::Platform;

use crate::CommandError;
use crate::config::{DeployConfig, ServiceConfig, StorageConfig};

/// What deploy-kit builds and runs: `cargo build -p <package> --bin <binary>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub package: String,
    pub binary: String,
    /// `service.features` (the platform's own come from [`platform_features`]).
    pub features: Vec<String>,
    /// The cargo workspace root: `service.workspace` under the config's directory.
    pub workspace: PathBuf,
}

/// A cargo workspace as `cargo metadata --no-deps` reports it.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub root: PathBuf,
    /// Where cargo puts builds (`CARGO_TARGET_DIR` and config respected).
    pub target_directory: PathBuf,
    pub packages: Vec<CargoPackage>,
}

/// Why the artifact could not be resolved or checked. Every variant is a
/// usage or config error (exit 2): the fix is in `deploy-kit.yaml`, the
/// workspace or the machine, never a retry.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("no `Cargo.toml` in `{0}` (`service.workspace`)")]
    NoManifest(PathBuf),
    #[error("failed to run `{cargo} metadata`: {source}")]
    NoCargo {
        cargo: String,
        source: std::io::Error,
    },
    #[error("`cargo metadata` failed in `{workspace}`: {message}")]
    Metadata { workspace: PathBuf, message: String },
    /// A name that is not in the workspace: the message names it and lists
    /// what exists ([`ArtifactFacts::problem`]).
    #[error("{0}")]
    NotInWorkspace(String),
    #[error("service binary `{0}` does not exist")]
    BinaryMissing(PathBuf),
    #[error("`{command}` failed in `{workspace}` ({status})")]
    Build {
        command: String,
        workspace: PathBuf,
        status: String,
    },
}

impl ArtifactError {
    /// The `hint:` line.
    pub fn hint(&self) -> String {
        match self {
            ArtifactError::NoManifest(_) => "set `service.workspace` in deploy-kit.yaml to the cargo workspace root (relative to the config file), or pass a prebuilt binary with `--kit-service PATH`".into(),
            ArtifactError::NoCargo { .. } => "install Rust (https://rustup.rs), or set `CARGO` to cargo's path".into(),
            ArtifactError::Metadata { workspace, .. } => format!(
                "run `cargo metadata --no-deps --format-version 1` in `{}` and fix what it reports",
                workspace.display()
            ),
            ArtifactError::NotInWorkspace(_) => kit_checks::registry::find("ART001")
                .expect("registered")
                .hint
                .to_string(),
            ArtifactError::BinaryMissing(_) => "pass the path of a built service binary to `--kit-service`, or leave it out to build `service.package` with cargo".into(),
            ArtifactError::Build { .. } => {
                "fix the build errors above, or pass a prebuilt binary with `--kit-service PATH`".into()
            }
        }
    }

    /// The exit code of this error, in one place: 2 (usage or config), and
    /// 1 for a build that ran and failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            ArtifactError::Build { .. } => 1,
            _ => 2,
        }
    }
}

impl From<ArtifactError> for CommandError {
    fn from(error: ArtifactError) -> CommandError {
        CommandError::new(error.to_string(), error.hint(), error.exit_code())
    }
}

/// The cargo binary: `CARGO` (set when deploy-kit runs under cargo), else `cargo`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO")
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "cargo".into())
}

impl Workspace {
    /// Runs `cargo metadata --format-version 1 --no-deps` in `root`.
    pub fn load(root: &Path) -> Result<Workspace, ArtifactError> {
        if !root.join("Cargo.toml").is_file() {
            return Err(ArtifactError::NoManifest(root.to_path_buf()));
        }
        let cargo = cargo();
        let output = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ArtifactError::NoCargo {
                cargo: cargo.to_string_lossy().into_owned(),
                source,
            })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let message = stderr
                .lines()
                .find(|line| line.starts_with("error"))
                .unwrap_or(stderr.trim())
                .trim_start_matches("error: ")
                .to_string();
            return Err(ArtifactError::Metadata {
                workspace: root.to_path_buf(),
                message,
            });
        }
        Workspace::parse(root, &String::from_utf8_lossy(&output.stdout))
    }

    /// Reads `cargo metadata` JSON: each package's bin targets and features.
    pub fn parse(root: &Path, json: &str) -> Result<Workspace, ArtifactError> {
        let bad = |message: &str| ArtifactError::Metadata {
            workspace: root.to_path_buf(),
            message: message.to_string(),
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| bad(&format!("unreadable output: {e}")))?;
        let packages = value["packages"]
            .as_array()
            .ok_or_else(|| bad("no `packages` in its output"))?
            .iter()
            .map(|package| {
                let strings = |value: &serde_json::Value| -> Vec<String> {
                    value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_string))
                        .collect()
                };
                let bins = package["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|target| strings(&target["kind"]).iter().any(|k| k == "bin"))
                    .filter_map(|target| target["name"].as_str().map(str::to_string))
                    .collect();
                let mut features: Vec<String> = package["features"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, _)| name.clone())
                    .collect();
                features.sort();
                CargoPackage {
                    name: package["name"].as_str().unwrap_or_default().to_string(),
                    bins,
                    features,
                }
            })
            .collect();
        Ok(Workspace {
            root: root.to_path_buf(),
            target_directory: value["target_directory"]
                .as_str()
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target")),
            packages,
        })
    }

    /// The package and bin target when the config names no package: the
    /// package owning bin `binary`, or the only package with exactly one bin.
    pub fn default_artifact(&self, binary: Option<&str>) -> Option<(String, String)> {
        let candidates: Vec<(&CargoPackage, &String)> = match binary {
            Some(binary) => self
                .packages
                .iter()
                .filter_map(|p| p.bins.iter().find(|b| *b == binary).map(|b| (p, b)))
                .collect(),
            None => self
                .packages
                .iter()
                .filter_map(|p| match p.bins.as_slice() {
                    [only] => Some((p, only)),
                    _ => None,
                })
                .collect(),
        };
        match candidates.as_slice() {
            [(package, bin)] => Some((package.name.clone(), (*bin).clone())),
            _ => None,
        }
    }
}

/// The cargo features a platform needs from the service's package: `lambda`
/// on Lambda (the `lambda` subcommand), `s3` with S3-protocol storage.
pub fn platform_features(
    platform: Platform,
    storage: Option<&StorageConfig>,
) -> Vec<RequiredFeature> {
    let mut features = Vec::new();
    if matches!(
        platform,
        Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl
    ) {
        features.push(RequiredFeature {
            name: "lambda".into(),
            wanted_by: format!("platform `{}`", platform.name()),
        });
    }
    if let Some(storage) = storage
        && storage.provider != StorageProvider::Gcs
    {
        features.push(RequiredFeature {
            name: "s3".into(),
            wanted_by: "S3-protocol `storage`".into(),
        });
    }
    features
}

/// Every feature a build for `platform` turns on: `service.features` first,
/// then the platform's, without repeats.
pub fn required_features(
    service: &ServiceConfig,
    platform: Platform,
    storage: Option<&StorageConfig>,
) -> Vec<RequiredFeature> {
    let mut features: Vec<RequiredFeature> = service
        .features
        .iter()
        .map(|name| RequiredFeature {
            name: name.clone(),
            wanted_by: "`service.features`".into(),
        })
        .collect();
    for feature in platform_features(platform, storage) {
        if !features.iter().any(|f| f.name == feature.name) {
            features.push(feature);
        }
    }
    features
}

impl Artifact {
    /// From the config alone, without cargo: `None` when `package` is unset.
    pub fn configured(service: &ServiceConfig, config_dir: &Path) -> Option<Artifact> {
        let package = service.package.clone()?;
        Some(Artifact {
            binary: service.binary.clone().unwrap_or_else(|| package.clone()),
            package,
            features: service.features.clone(),
            workspace: service.workspace_dir(config_dir),
        })
    }

    /// [`Artifact::configured`], else the workspace's default (runs `cargo metadata`).
    pub fn resolve(service: &ServiceConfig, config_dir: &Path) -> Result<Artifact, ArtifactError> {
        if let Some(artifact) = Artifact::configured(service, config_dir) {
            return Ok(artifact);
        }
        let root = service.workspace_dir(config_dir);
        let workspace = Workspace::load(&root)?;
        let (package, binary) = workspace
            .default_artifact(service.binary.as_deref())
            .ok_or_else(|| {
                let facts = ArtifactFacts {
                    workspace: service.workspace.clone(),
                    package: None,
                    binary: service.binary.clone(),
                    features: Vec::new(),
                    cargo: CargoWorkspace::Found {
                        packages: workspace.packages.clone(),
                    },
                };
                ArtifactError::NotInWorkspace(
                    facts
                        .problem(&workspace.packages)
                        .expect("no package is a problem"),
                )
            })?;
        Ok(Artifact {
            package,
            binary,
            features: service.features.clone(),
            workspace: root,
        })
    }

    /// Checks the names against `workspace`, with `features` on.
    pub fn check(
        &self,
        workspace: &Workspace,
        features: &[RequiredFeature],
        shown_workspace: &str,
    ) -> Result<(), ArtifactError> {
        let facts = ArtifactFacts {
            workspace: shown_workspace.to_string(),
            package: Some(self.package.clone()),
            binary: Some(self.binary.clone()),
            features: features.to_vec(),
            cargo: CargoWorkspace::Found {
                packages: workspace.packages.clone(),
            },
        };
        match facts.problem(&workspace.packages) {
            Some(problem) => Err(ArtifactError::NotInWorkspace(problem)),
            None => Ok(()),
        }
    }

    /// `cargo build` arguments after `cargo`.
    pub fn build_args(&self, features: &[String], release: bool) -> Vec<String> {
        let mut args = vec!["build".to_string()];
        if release {
            args.push("--release".into());
        }
        args.extend([
            "-p".into(),
            self.package.clone(),
            "--bin".into(),
            self.binary.clone(),
        ]);
        if !features.is_empty() {
            args.extend(["--features".into(), features.join(",")]);
        }
        args
    }

    /// The build as a command line for hints, with `extra` arguments.
    pub fn build_command(&self, features: &[String], extra: &str) -> String {
        let mut command = format!("cargo {}", self.build_args(features, true).join(" "));
        if !extra.is_empty() {
            command.push(' ');
            command.push_str(extra);
        }
        command
    }

    /// Builds the binary with cargo in the workspace root (progress on
    /// stderr) and returns its path under the target directory.
    pub fn build(
        &self,
        workspace: &Workspace,
        features: &[String],
        release: bool,
    ) -> Result<PathBuf, ArtifactError> {
        let args = self.build_args(features, release);
        let status = Command::new(cargo())
            .args(&args)
            .current_dir(&workspace.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|source| ArtifactError::NoCargo {
                cargo: cargo().to_string_lossy().into_owned(),
                source,
            })?;
        if !status.success() {
            return Err(ArtifactError::Build {
                command: format!("cargo {}", args.join(" ")),
                workspace: workspace.root.clone(),
                status: status.to_string(),
            });
        }
        Ok(workspace
            .target_directory
            .join(if release { "release" } else { "debug" })
            .join(format!("{}{}", self.binary, std::env::consts::EXE_SUFFIX)))
    }
}

/// Fills `service.package` and `service.binary` of a loaded config from the
/// workspace when the config leaves them out, so everything after reads one
/// resolved value. A workspace without `Cargo.toml`, or no cargo, leaves them
/// unset (commands that need them say so); an ambiguous workspace is an error.
pub fn fill_defaults(config: &mut DeployConfig, config_dir: &Path) -> Result<(), ArtifactError> {
    if config.service.package.is_some() {
        return Ok(());
    }
    match Artifact::resolve(&config.service, config_dir) {
        Ok(artifact) => {
            config.service.package = Some(artifact.package);
            config.service.binary = Some(artifact.binary);
            Ok(())
        }
        Err(ArtifactError::NoManifest(_) | ArtifactError::NoCargo { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The facts ART001 judges for `platform`: the configured (or default)
/// names, and what `cargo metadata` found, or why it could not run.
pub fn facts(config: &DeployConfig, config_dir: &Path, platform: Platform) -> ArtifactFacts {
    let service = &config.service;
    let root = service.workspace_dir(config_dir);
    let cargo = match Workspace::load(&root) {
        Ok(workspace) => CargoWorkspace::Found {
            packages: workspace.packages,
        },
        Err(error) => CargoWorkspace::Unavailable {
            reason: format!("{error}; {}", error.hint()),
        },
    };
    let (package, binary) = match (&service.package, &cargo) {
        (Some(package), _) => (Some(package.clone()), service.binary().map(str::to_string)),
        (None, CargoWorkspace::Found { packages }) => {
            let workspace = Workspace {
                root: root.clone(),
                target_directory: PathBuf::new(),
                packages: packages.clone(),
            };
            match workspace.default_artifact(service.binary.as_deref()) {
                Some((package, binary)) => (Some(package), Some(binary)),
                None => (None, service.binary.clone()),
            }
        }
        (None, CargoWorkspace::Unavailable { .. }) => (None, service.binary.clone()),
    };
    ArtifactFacts {
        workspace: service.workspace.clone(),
        package,
        binary,
        features: required_features(service, platform, config.storage.as_ref()),
        cargo,
    }
}

/// A prebuilt binary given with `--kit-service`, which must exist.
pub fn given_binary(path: &Path) -> Result<PathBuf, ArtifactError> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ArtifactError::BinaryMissing(path.to_path_buf()))
    }
}

/// The service binary to run on this machine (`up local`, a compose
/// target's processes) when no `--kit-service` is given: `cargo build` in
/// the workspace (after checking the names, with deploy-kit's own profile
/// when it was built in the same target directory, else the dev profile);
/// else, when there is no workspace or no cargo, `binary` next to
/// deploy-kit or on `PATH`.
pub fn local_binary(
    artifact: &Artifact,
    features: &[RequiredFeature],
    shown_workspace: &str,
) -> Result<PathBuf, ArtifactError> {
    let current_exe = std::env::current_exe().ok();
    match Workspace::load(&artifact.workspace) {
        Ok(workspace) => {
            artifact.check(&workspace, features, shown_workspace)?;
            let release = built_for_release(current_exe.as_deref(), &workspace.target_directory);
            let names: Vec<String> = features.iter().map(|f| f.name.clone()).collect();
            eprintln!(
                "building `{}`: cargo {}",
                artifact.binary,
                artifact.build_args(&names, release).join(" ")
            );
            artifact.build(&workspace, &names, release)
        }
        Err(error @ (ArtifactError::NoManifest(_) | ArtifactError::NoCargo { .. })) => {
            let path_var = std::env::var_os("PATH");
            find_prebuilt(
                &artifact.binary,
                current_exe.as_deref(),
                path_var.as_deref(),
            )
            .ok_or(error)
        }
        Err(error) => Err(error),
    }
}

/// A prebuilt `binary`: next to `current_exe` (how `cargo build` leaves a
/// workspace's binaries beside `deploy-kit`), else on `path_var`.
pub fn find_prebuilt(
    binary: &str,
    current_exe: Option<&Path>,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<PathBuf> {
    let name = format!("{binary}{}", std::env::consts::EXE_SUFFIX);
    current_exe
        .and_then(Path::parent)
        .map(|dir| dir.join(&name))
        .filter(|p| p.is_file())
        .or_else(|| {
            path_var
                .into_iter()
                .flat_map(std::env::split_paths)
                .map(|dir| dir.join(&name))
                .find(|p| p.is_file())
        })
}

/// Whether `current_exe` (deploy-kit) sits in `target_directory/release`:
/// then `up local` builds the service with `--release` too, so the README's
/// `cargo build --release -p kit-service -p deploy-kit` is a fresh no-op.
pub fn built_for_release(current_exe: Option<&Path>, target_directory: &Path) -> bool {
    let canonical = |path: &Path| std::fs::canonicalize(path).unwrap_or(path.to_path_buf());
    current_exe.and_then(Path::parent).is_some_and(|dir| {
        dir.file_name().is_some_and(|name| name == "release")
            && dir
                .parent()
                .is_some_and(|parent| canonical(parent) == canonical(target_directory))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const METADATA: &str = r#"{
      "packages": [
        {"name": "acme-rpc", "features": {"fast": [], "lambda": ["kit-service/lambda"]},
         "targets": [{"kind": ["lib"], "name": "acme_rpc"}, {"kind": ["bin"], "name": "acme"}]},
        {"name": "acme-tools", "features": {},
         "targets": [{"kind": ["bin"], "name": "one"}, {"kind": ["bin"], "name": "two"}]},
        {"name": "acme-types", "features": {}, "targets": [{"kind": ["lib"], "name": "acme_types"}]}
      ],
      "target_directory": "/work/target",
      "workspace_root": "/work"
    }"#;

    fn workspace() -> Workspace {
        Workspace::parse(Path::new("/work"), METADATA).unwrap()
    }

    #[test]
    fn metadata_gives_bins_features_and_the_target_directory() {
        let workspace = workspace();
        assert_eq!(workspace.target_directory, Path::new("/work/target"));
        assert_eq!(workspace.packages[0].bins, ["acme"]);
        assert_eq!(workspace.packages[0].features, ["fast", "lambda"]);
        assert!(workspace.packages[2].bins.is_empty());
    }

    #[test]
    fn the_default_is_the_only_package_with_one_bin_or_the_owner_of_binary() {
        let workspace = workspace();
        assert_eq!(
            workspace.default_artifact(None),
            Some(("acme-rpc".into(), "acme".into()))
        );
        assert_eq!(
            workspace.default_artifact(Some("two")),
            Some(("acme-tools".into(), "two".into()))
        );
        assert_eq!(workspace.default_artifact(Some("nope")), None);
    }

    fn artifact(package: &str, binary: &str) -> Artifact {
        Artifact {
            package: package.into(),
            binary: binary.into(),
            features: Vec::new(),
            workspace: PathBuf::from("/work"),
        }
    }

    #[test]
    fn unknown_names_are_errors_listing_what_exists() {
        let workspace = workspace();
        let lambda = platform_features(Platform::AwsLambdaFunctionUrl, None);
        assert!(
            artifact("acme-rpc", "acme")
                .check(&workspace, &lambda, ".")
                .is_ok()
        );
        let error = artifact("kit-service", "kit-service")
            .check(&workspace, &[], ".")
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "no package `kit-service` in the cargo workspace `.`; its packages: `acme-rpc`, `acme-tools`, `acme-types`"
        );
        assert_eq!(error.exit_code(), 2);
        let error = artifact("acme-tools", "three")
            .check(&workspace, &[], ".")
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no bin target `three`; its bin targets: `one`, `two`"),
            "{error}"
        );
        let error = artifact("acme-tools", "one")
            .check(&workspace, &lambda, ".")
            .unwrap_err();
        assert!(
            error.to_string().contains(
                "no feature `lambda` (wanted by platform `aws-lambda-function-url`); its features: none"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_workspace_without_cargo_toml_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("deploy-kit-artifact-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = Workspace::load(&dir).unwrap_err();
        assert!(matches!(error, ArtifactError::NoManifest(_)));
        assert!(error.to_string().contains("no `Cargo.toml` in"), "{error}");
        assert!(error.hint().contains("service.workspace"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn build_commands_name_package_binary_and_features() {
        let features = vec!["fast".to_string(), "lambda".to_string()];
        assert_eq!(
            artifact("acme-rpc", "acme")
                .build_command(&features, "--target x86_64-unknown-linux-musl"),
            "cargo build --release -p acme-rpc --bin acme --features fast,lambda --target x86_64-unknown-linux-musl"
        );
    }
}
