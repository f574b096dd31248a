//! The compose engine for `platform: compose` targets: nginx in front of
//! `instances` replicas of the service binary, with the bucket on an S3-compatible
//! store (SeaweedFS, MinIO) and one signing key shared by every replica.
//!
//! Two runtimes, chosen with `up --runtime`:
//!
//! - `processes` (the default, and what CI runs): the replicas and nginx run
//!   as plain processes on 127.0.0.1 ([`processes`]). Every replica gets the
//!   same variables the rendered `compose.yaml` gives its containers, with
//!   `VGI_SIGNING_KEY_FILE` pointing at the target's key file. nginx runs
//!   unprivileged from `render nginx --upstream ... --plain-http` output.
//! - `container`: `docker compose` or `podman compose` runs the rendered
//!   `compose.yaml` (the image must be built first).
//!
//! The bucket step is the AWS engine's ([`super::aws::bucket`]), so it needs
//! the cargo feature `aws`. The key is 32 CSPRNG bytes as `hex:` in
//! `.deploy-kit/<env>/<target>/signing-key` (mode 0600), made once and never
//! printed; the state records its path, never its value.
//!
//! Invariants: every process `up` starts is in the state file (pid, start
//! time, port) before `up` goes on, so `down` stops it even after a failed
//! `up`; a second `up` leaves running, healthy processes alone.

pub mod processes;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kit_checks::facts::StorageProvider;
use kit_checks::platform::Platform;

use super::{Progress, Resource, State, kind};
use crate::CommandError;
use crate::config::{KeySourceKind, StorageConfig};
use crate::deployment::Deployment;
use processes::Running;

/// The engine name in the state file.
pub const ENGINE: &str = "compose";
/// Resource kind of a supervised process (a replica or nginx).
pub const PROCESS: &str = "process";
/// Resource kind of a `docker compose` / `podman compose` project.
pub const PROJECT: &str = "compose-project";
/// The generated key file inside the target's output directory.
pub const KEY_FILE: &str = "signing-key";
/// The process (and compose service) holding the shared rate limit.
pub const REDIS: &str = "redis";
/// Region of S3-compatible stores, which ignore it.
pub const DEFAULT_REGION: &str = "us-east-1";
/// How `up` runs a compose target: the default is `processes`, in docs and CI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// The service's replicas and nginx as processes on 127.0.0.1.
    Processes,
    /// The rendered compose.yaml with `docker compose` or `podman compose`.
    Container,
}

/// True for the platforms this engine provisions.
pub fn handles(platform: Platform) -> bool {
    platform == Platform::Compose
}

/// What `up` needs beyond the config: flags of `deploy-kit up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub runtime: Runtime,
    pub kit_service: Option<PathBuf>,
    pub nginx: Option<PathBuf>,
    /// nginx's port on 127.0.0.1; 0 keeps the recorded one or picks a free one.
    pub port: u16,
    /// Stay in the foreground until Ctrl-C (false: `--no-wait`).
    pub wait: bool,
    /// Set by `rollback`: the release whose retained binary `kit_service` is.
    pub returns_to: Option<u64>,
}

/// The names and files of one compose target, resolved from the config.
#[derive(Debug, Clone)]
pub struct ComposeSettings {
    pub target: String,
    pub instances: u32,
    pub output_dir: PathBuf,
    /// The key file every replica reads: `signing_key.path` when the source
    /// is `file`, else the generated one in the output directory.
    pub key_file: PathBuf,
    pub key_generated: bool,
    pub storage: Option<StorageConfig>,
    pub shutdown_grace: Duration,
    /// The bin target the replicas run (`service.binary`), for the plan.
    pub binary: String,
    /// `rate_limit.store: redis` with the Redis this engine runs.
    pub redis: Option<crate::config::RateLimitStore>,
}

impl ComposeSettings {
    pub fn resolve(deployment: &Deployment) -> Result<ComposeSettings, CommandError> {
        let config = &deployment.config;
        if let Some(storage) = &config.storage
            && storage.provider == StorageProvider::Gcs
        {
            return Err(CommandError::new(
                format!(
                    "target `{}` is a compose target, but `storage.provider` is `gcs`",
                    deployment.target_name
                ),
                "set `storage.provider: s3-compatible` with `storage.endpoint` (SeaweedFS, MinIO), or remove `storage:`",
                2,
            ));
        }
        let key = &config.signing_key;
        let (key_file, key_generated) = match (&key.source, &key.path) {
            (KeySourceKind::File, Some(path)) => (
                deployment
                    .config_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(path),
                false,
            ),
            _ => (deployment.output_dir.join(KEY_FILE), true),
        };
        let redis = match &config.rate_limit {
            Some(rate) => rate
                .store(Platform::Compose)
                .map_err(|(message, hint)| {
                    CommandError::new(
                        format!("target `{}`: {message}", deployment.target_name),
                        hint,
                        2,
                    )
                })?
                .filter(|store| store.provisioned),
            None => None,
        };
        Ok(ComposeSettings {
            redis,
            target: deployment.target_name.clone(),
            instances: deployment.target.instances.max(1),
            output_dir: deployment.output_dir.clone(),
            key_file,
            key_generated,
            storage: config.storage.clone(),
            shutdown_grace: Duration::from_secs(config.limits.shutdown_grace_seconds),
            binary: deployment
                .artifact
                .as_ref()
                .map(|artifact| artifact.binary.clone())
                .unwrap_or_else(|| "<service.binary>".into()),
        })
    }

    /// The resources in creation order (no network): the bucket, the key
    /// file, the replicas, then nginx.
    pub fn desired(&self) -> Vec<Resource> {
        let mut resources = Vec::new();
        if let Some(storage) = &self.storage {
            let mut bucket = Resource::new(kind::BUCKET, &storage.bucket)
                .with(super::setting::LIFECYCLE_PREFIX, &storage.prefix);
            if let Some(endpoint) = &storage.endpoint {
                bucket = bucket.with("endpoint", endpoint);
            }
            if let Some(days) = storage.expiry_days {
                bucket = bucket.with(super::setting::LIFECYCLE_EXPIRATION_DAYS, days.to_string());
            }
            if let Some(days) = storage.abort_multipart_days {
                bucket = bucket.with(
                    super::setting::LIFECYCLE_ABORT_MULTIPART_DAYS,
                    days.to_string(),
                );
            }
            if !storage.cors_origins.is_empty() {
                bucket = bucket.with(super::setting::CORS_ORIGINS, storage.cors_origins.join(","));
            }
            resources.push(bucket);
        }
        resources.push(
            Resource::new(kind::SECRET, KEY_FILE)
                .with("file", self.key_file.display().to_string())
                .with(
                    "value",
                    if self.key_generated {
                        "32 random bytes, hex (made once, never overwritten)"
                    } else {
                        "from `signing_key.path`"
                    },
                ),
        );
        if let Some(store) = &self.redis {
            resources.push(
                Resource::new(PROCESS, REDIS)
                    .with("role", "rate-limit-store")
                    .with(
                        "command",
                        "redis-server --bind 127.0.0.1 --port PORT --save ''",
                    )
                    .with("on_store_failure", store.on_failure.as_str()),
            );
        }
        for index in 1..=self.instances {
            resources.push(
                Resource::new(PROCESS, replica_name(index))
                    .with("role", "replica")
                    .with(
                        "command",
                        format!("{} serve --listen 127.0.0.1:PORT", self.binary),
                    ),
            );
        }
        resources.push(
            Resource::new(PROCESS, "nginx")
                .with("role", "proxy")
                .with("upstreams", self.instances.to_string()),
        );
        resources
    }
}

pub fn replica_name(index: u32) -> String {
    format!("replica-{index}")
}

/// The replica URLs a state records, in order: what `doctor --online`
/// probes for a compose target when no `--replica` is given.
pub fn recorded_replicas(state: &State) -> Vec<String> {
    state
        .resources
        .iter()
        .filter(|r| {
            r.kind == PROCESS && r.settings.get("role").map(String::as_str) == Some("replica")
        })
        .filter_map(|r| r.outputs.get("url").cloned())
        .collect()
}

fn running_of(resource: &Resource) -> Option<Running> {
    Some(Running {
        pid: resource.outputs.get("pid")?.parse().ok()?,
        start_time: resource
            .outputs
            .get("start_time")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        log: PathBuf::from(resource.outputs.get("log")?),
    })
}

fn record_running(resource: &mut Resource, running: &Running) {
    resource
        .outputs
        .insert("pid".into(), running.pid.to_string());
    resource
        .outputs
        .insert("start_time".into(), running.start_time.to_string());
    resource
        .outputs
        .insert("log".into(), running.log.display().to_string());
}

/// `deploy-kit up` for a compose target (after the offline doctor gate):
/// the bucket, the key, the runtime, then `doctor --online` against the
/// replicas, whose exit code it returns.
pub fn up(
    deployment: &Deployment,
    options: &UpOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    let (code, report) = up_checked(deployment, options, env)?;
    crate::output::human(&report);
    Ok(code)
}

/// [`up`] returning the doctor's exit code and its report (empty when the
/// foreground run printed it already).
fn up_checked(
    deployment: &Deployment,
    options: &UpOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(u8, String), CommandError> {
    let settings = ComposeSettings::resolve(deployment)?;
    let desired = settings.desired();
    let state_path = deployment.state_path();
    let mut state = match State::load(&state_path)? {
        Some(state) if state.engine != ENGINE => {
            return Err(CommandError::new(
                format!(
                    "the state of target `{}` was made by the `{}` engine",
                    deployment.target_name, state.engine
                ),
                format!(
                    "run `deploy-kit down {}` with that engine first",
                    deployment.target_name
                ),
                2,
            ));
        }
        Some(state) => state,
        None => State::new(
            ENGINE,
            &deployment.config.service.environment,
            &deployment.target_name,
        ),
    };
    let settings_of = |kind: &str, name: &str| {
        desired
            .iter()
            .find(|r| r.kind == kind && r.name == name)
            .map(|r| r.settings.clone())
            .unwrap_or_default()
    };
    let mut progress = Progress::stderr();
    progress.note(&format!(
        "up: target `{}` (compose, runtime {})",
        deployment.target_name,
        match options.runtime {
            Runtime::Processes => "processes",
            Runtime::Container => "container",
        }
    ));
    if let Some(storage) = &settings.storage {
        let mut bucket = progress.step(&format!("bucket `{}`", storage.bucket), || {
            ensure_bucket(deployment, storage)
        })?;
        bucket.settings = settings_of(kind::BUCKET, &storage.bucket);
        state.record(bucket);
        state.save(&state_path)?;
    }
    let key_file = settings.key_file.clone();
    let key_generated = settings.key_generated;
    progress.step(
        &format!("signing key `{}`", shown(&key_file, deployment)),
        || ensure_key(&key_file, key_generated),
    )?;
    let mut key = Resource::new(kind::SECRET, KEY_FILE);
    key.settings = settings_of(kind::SECRET, KEY_FILE);
    state.record(key);
    state.save(&state_path)?;

    let replicas = match options.runtime {
        Runtime::Container => {
            container_up(deployment, &settings, &mut state, &mut progress)?;
            let live = crate::releases::Live {
                artifact: crate::releases::Artifact {
                    kind: crate::releases::artifact_kind::IMAGE.into(),
                    digest: deployment.config.service.image(),
                },
                restore: BTreeMap::new(),
                returns_to: None,
            };
            let (id, _) = crate::releases::record(&mut state, deployment, live);
            state.save(&state_path)?;
            progress.note(&format!("up: release {id} is live"));
            Vec::new()
        }
        Runtime::Processes => {
            let mut supervisor = Supervisor {
                deployment,
                settings: &settings,
                options,
                state_path: &state_path,
                children: Vec::new(),
                binary: None,
            };
            let result = supervisor.up(&mut state, &mut progress, &settings_of);
            let children = std::mem::take(&mut supervisor.children);
            let result = result.and_then(|url| {
                let (binary, digest) = supervisor.binary.clone().expect("up found the binary");
                record_binary_release(
                    deployment,
                    &mut state,
                    &binary,
                    &digest,
                    options,
                    &mut progress,
                )?;
                state.save(&state_path)?;
                Ok(url)
            });
            match result {
                Ok(url) => {
                    crate::output::human(&format!("url: {url}\n"));
                    let replicas = recorded_replicas(&state);
                    for (index, replica) in replicas.iter().enumerate() {
                        crate::output::human(&format!("replica-{}: {replica}\n", index + 1));
                    }
                    progress.note(&format!(
                        "up: done in {:.1} s, state in `{}`",
                        progress.elapsed_seconds(),
                        shown(&state_path, deployment)
                    ));
                    if options.wait {
                        let code = foreground(
                            deployment,
                            &settings,
                            &mut state,
                            &state_path,
                            children,
                            &replicas,
                            env,
                        )?;
                        return Ok((code, String::new()));
                    }
                    replicas
                }
                Err(error) => {
                    // Leave nothing running that this run started.
                    stop_started(&children, &mut state, &settings);
                    let _ = state.save(&state_path);
                    return Err(error);
                }
            }
        }
    };
    let output = deployment.doctor_with_replicas(kit_checks::Mode::Online, &replicas, env)?;
    if output.exit_code != 0 {
        eprintln!(
            "hint: the processes keep running for inspection; fix the findings, then `deploy-kit up {}` again, `deploy-kit rollback {}`, or `deploy-kit down {}`",
            deployment.target_name, deployment.target_name, deployment.target_name
        );
    }
    Ok((output.exit_code, output.text))
}

/// The directory of retained binaries, one per digest.
pub const RELEASES_DIR: &str = "releases";

/// Keeps a copy of the binary the replicas run (one per digest, under
/// `<output>/releases/`) and records the release; copies no kept release
/// names any more are deleted.
fn record_binary_release(
    deployment: &Deployment,
    state: &mut State,
    binary: &Path,
    digest: &str,
    options: &UpOptions,
    progress: &mut Progress,
) -> Result<(), CommandError> {
    use crate::releases::{Artifact, Live, artifact_kind, restore};
    let retained = match options.returns_to {
        // A rollback runs the retained copy itself.
        Some(_) => binary.to_path_buf(),
        None => retain_binary(&deployment.output_dir, binary, digest)?,
    };
    let live = Live {
        artifact: Artifact {
            kind: artifact_kind::BINARY.into(),
            digest: digest.to_string(),
        },
        restore: [(restore::BINARY.to_string(), retained.display().to_string())].into(),
        returns_to: options.returns_to,
    };
    let (id, dropped) = crate::releases::record(state, deployment, live);
    for path in crate::releases::unreferenced(state, &dropped, restore::BINARY) {
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent()
            && dir.parent() == Some(&deployment.output_dir.join(RELEASES_DIR))
        {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    progress.note(&format!(
        "up: release {id} is live ({} {})",
        artifact_kind::BINARY,
        digest
    ));
    Ok(())
}

/// `<output>/releases/<first 16 hex digits>/<file name>`, copied once.
fn retain_binary(output_dir: &Path, binary: &Path, digest: &str) -> Result<PathBuf, CommandError> {
    let short: String = digest
        .trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect();
    let dir = output_dir.join(RELEASES_DIR).join(short);
    let name = binary
        .file_name()
        .unwrap_or(std::ffi::OsStr::new("kit-service"));
    let retained = dir.join(name);
    if crate::releases::file_digest(&retained).is_ok_and(|have| have == digest) {
        return Ok(retained);
    }
    let failed = |error: std::io::Error| {
        CommandError::new(
            format!(
                "failed to keep a copy of `{}` in `{}`: {error}",
                binary.display(),
                dir.display()
            ),
            "check that the target's output directory is writable and has room",
            1,
        )
    };
    std::fs::create_dir_all(&dir).map_err(failed)?;
    let temporary = dir.join(".copy.tmp");
    std::fs::copy(binary, &temporary).map_err(failed)?;
    std::fs::rename(&temporary, &retained).map_err(failed)?;
    Ok(retained)
}

/// `deploy-kit rollback` for a compose target (`processes` runtime): checks
/// that the release's retained binary is there with its digest, restarts
/// the replicas with it (nginx stays), records the rollback, and runs
/// `doctor --online` against the replicas.
pub fn rollback(
    deployment: &Deployment,
    release: &crate::releases::Release,
    nginx: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::releases::RolledBack, CommandError> {
    use crate::releases::{RollbackError, artifact_kind, restore};
    let gone = |what: String| RollbackError::ArtifactGone {
        target: deployment.target_name.clone(),
        id: release.id,
        what,
    };
    if release.artifact.kind != artifact_kind::BINARY {
        return Err(RollbackError::Unsupported {
            target: deployment.target_name.clone(),
            platform: "compose with `--runtime container`".into(),
        }
        .into());
    }
    let binary = release
        .restore
        .get(restore::BINARY)
        .map(PathBuf::from)
        .ok_or_else(|| gone("it recorded no retained binary".into()))?;
    match crate::releases::file_digest(&binary) {
        Ok(digest) if digest == release.artifact.digest => {}
        Ok(digest) => {
            return Err(gone(format!(
                "`{}` is now `{digest}`, not the release's `{}`",
                binary.display(),
                release.artifact.digest
            ))
            .into());
        }
        Err(error) => {
            return Err(gone(format!("`{}`: {error}", binary.display())).into());
        }
    }
    eprintln!(
        "rollback: target `{}` to release {} ({})",
        deployment.target_name, release.id, release.artifact.digest
    );
    let options = UpOptions {
        runtime: Runtime::Processes,
        kit_service: Some(binary),
        nginx,
        port: 0,
        wait: false,
        returns_to: Some(release.id),
    };
    let (code, report) = up_checked(deployment, &options, env)?;
    let state = State::load(&deployment.state_path())?.ok_or_else(|| {
        CommandError::new(
            format!(
                "the state of `{}` vanished during the rollback",
                deployment.target_name
            ),
            "run `deploy-kit up` again",
            1,
        )
    })?;
    Ok(crate::releases::RolledBack {
        release: state
            .releases
            .last()
            .cloned()
            .expect("the rollback recorded a release"),
        doctor_exit_code: code,
        doctor_text: report,
    })
}

/// `deploy-kit down` for a compose target: stops every recorded process
/// (SIGTERM, the service's grace, then SIGKILL), removes the key file it
/// made, and deletes the bucket (emptied only with `--delete-data`).
pub fn down(
    deployment: &Deployment,
    mut state: State,
    delete_data: bool,
) -> Result<u8, CommandError> {
    let settings = ComposeSettings::resolve(deployment)?;
    let state_path = deployment.state_path();
    let mut progress = Progress::stderr();
    progress.note(&format!("down: target `{}`", deployment.target_name));
    let recorded = state.clone();
    let mut kept = Vec::new();
    for resource in recorded.resources.iter().rev() {
        let left = progress.step(&resource.address(), || match resource.kind.as_str() {
            PROCESS => Ok((None, stop_process(resource, &settings))),
            PROJECT => container_down(deployment, resource).map(|outcome| (None, outcome)),
            kind::SECRET => {
                let generated = resource
                    .settings
                    .get("value")
                    .is_none_or(|v| !v.starts_with("from"));
                let path = resource
                    .settings
                    .get("file")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| settings.key_file.clone());
                if !generated {
                    return Ok((None, "kept (`signing_key.path` is yours)".to_string()));
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok((None, "deleted".to_string())),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                        Ok((None, "already gone".to_string()))
                    }
                    Err(error) => Err(CommandError::new(
                        format!("failed to remove `{}`: {error}", path.display()),
                        "delete it by hand",
                        1,
                    )),
                }
            }
            kind::BUCKET => delete_bucket(deployment, &settings, resource, delete_data),
            other => Err(CommandError::new(
                format!("the state records a `{other}` resource the compose engine does not know"),
                "remove it by hand, then remove it from the state file",
                1,
            )),
        })?;
        match left {
            Some(left) => kept.push(left),
            None => {
                state.resources.retain(|r| r != resource);
                state.save(&state_path)?;
            }
        }
    }
    crate::engine::finish_down(&state, &state_path, &mut progress)?;
    for left in &kept {
        eprintln!("kept: {}; remove it with `{}`", left.reason, left.command);
    }
    Ok(0)
}

fn shown(path: &Path, deployment: &Deployment) -> String {
    let base = deployment.config_path.parent().unwrap_or(Path::new("."));
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn ensure_key(key_file: &Path, generated: bool) -> Result<((), String), CommandError> {
    if !generated {
        return match std::fs::metadata(key_file) {
            Ok(_) => Ok(((), "from `signing_key.path`".to_string())),
            Err(error) => Err(CommandError::new(
                format!("signing key file `{}`: {error}", key_file.display()),
                "write 32 random bytes there (`echo hex:$(openssl rand -hex 32) > FILE; chmod 600 FILE`), or remove `signing_key.path` to let `up` make one",
                2,
            )),
        };
    }
    match crate::up_local::ensure_key(key_file) {
        Ok(true) => Ok(((), "created (mode 0600)".to_string())),
        Ok(false) => Ok(((), "unchanged".to_string())),
        Err(error) => Err(CommandError::new(
            error.to_string(),
            format!(
                "delete `{}` and run `deploy-kit up` again to make a new key",
                key_file.display()
            ),
            2,
        )),
    }
}

#[cfg(feature = "aws")]
const STORE_HINT: &str = "check that the S3-compatible store at `storage.endpoint` runs and that `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` hold its credentials";

#[cfg(feature = "aws")]
fn buckets_for<'a>(
    clients: &'a super::aws::clients::AwsClients,
    storage: &'a StorageConfig,
    region: &'a str,
    target: &'a str,
) -> super::aws::bucket::Buckets<'a> {
    super::aws::bucket::Buckets {
        clients,
        region,
        endpoint: storage.endpoint.as_deref(),
        target,
        hint: STORE_HINT,
        owner: None,
    }
}

#[cfg(feature = "aws")]
fn region_of(deployment: &Deployment) -> String {
    deployment
        .target
        .region
        .clone()
        .unwrap_or_else(|| DEFAULT_REGION.to_string())
}

#[cfg(feature = "aws")]
fn ensure_bucket(
    deployment: &Deployment,
    storage: &StorageConfig,
) -> Result<(Resource, String), CommandError> {
    let region = region_of(deployment);
    let clients = super::aws::clients::AwsClients::new(&region, storage.endpoint.as_deref())?;
    let settings = super::aws::BucketSettings {
        name: storage.bucket.clone(),
        prefix: storage.prefix.clone(),
        expiration_days: storage.expiry_days,
        abort_multipart_days: storage.abort_multipart_days,
        cors_origins: storage.cors_origins.clone(),
    };
    let (mut resource, outcome) =
        buckets_for(&clients, storage, &region, &deployment.target_name).ensure(&settings)?;
    resource.outputs.clear();
    if let Some(endpoint) = &storage.endpoint {
        resource.outputs.insert("endpoint".into(), endpoint.clone());
    }
    Ok((resource, outcome))
}

#[cfg(feature = "aws")]
fn delete_bucket(
    deployment: &Deployment,
    settings: &ComposeSettings,
    recorded: &Resource,
    delete_data: bool,
) -> Result<(Option<super::Kept>, String), CommandError> {
    let name = recorded.name.as_str();
    let Some(storage) = &settings.storage else {
        return Err(CommandError::new(
            format!("the state records bucket `{name}` but `storage:` is gone from the config"),
            format!(
                "put `storage:` back to let `down` delete it, or delete bucket `{name}` by hand"
            ),
            2,
        ));
    };
    let region = region_of(deployment);
    let clients = super::aws::clients::AwsClients::new(&region, storage.endpoint.as_deref())?;
    let buckets = buckets_for(&clients, storage, &region, &deployment.target_name);
    // The prefix recorded when `up` made the bucket, not the config's now.
    let left = match recorded.data_prefix() {
        Some(prefix) => buckets.delete(name, prefix, super::DestroyOptions { delete_data })?,
        None => buckets
            .delete(name, "", super::DestroyOptions { delete_data: false })?
            .map(|_| super::Kept::bucket_without_prefix(name)),
    };
    match left {
        Some(kept) => Ok((Some(kept), "kept: it holds objects".to_string())),
        None => Ok((None, "deleted".to_string())),
    }
}

#[cfg(not(feature = "aws"))]
fn ensure_bucket(
    deployment: &Deployment,
    _storage: &StorageConfig,
) -> Result<(Resource, String), CommandError> {
    Err(without_aws(deployment))
}

#[cfg(not(feature = "aws"))]
fn delete_bucket(
    deployment: &Deployment,
    _settings: &ComposeSettings,
    _recorded: &Resource,
    _delete_data: bool,
) -> Result<(Option<super::Kept>, String), CommandError> {
    Err(without_aws(deployment))
}

#[cfg(not(feature = "aws"))]
fn without_aws(deployment: &Deployment) -> CommandError {
    CommandError::new(
        format!(
            "target `{}` has S3-compatible storage, and this deploy-kit was built without the `aws` feature",
            deployment.target_name
        ),
        "rebuild with `cargo install --path infra --features aws` (or `cargo build --release -p deploy-kit --features aws`)",
        2,
    )
}

fn stop_process(resource: &Resource, settings: &ComposeSettings) -> String {
    let Some(running) = running_of(resource) else {
        return "not recorded as running".to_string();
    };
    // nginx stops gracefully on SIGQUIT (SIGTERM is its fast shutdown);
    // The service drains on SIGTERM within its shutdown grace.
    let signal = if resource.name == "nginx" {
        rustix::process::Signal::QUIT
    } else {
        rustix::process::Signal::TERM
    };
    if running.stop(signal, settings.shutdown_grace + processes::STOP_MARGIN) {
        format!("stopped pid {}", running.pid)
    } else {
        "already stopped".to_string()
    }
}

fn stop_started(children: &[(String, Child)], state: &mut State, settings: &ComposeSettings) {
    for (name, _) in children.iter().rev() {
        if let Some(resource) = state.find(PROCESS, name).cloned() {
            stop_process(&resource, settings);
            state.resources.retain(|r| r != &resource);
        }
    }
}

/// Starts what is not running, leaves what runs alone.
struct Supervisor<'a> {
    deployment: &'a Deployment,
    settings: &'a ComposeSettings,
    options: &'a UpOptions,
    state_path: &'a Path,
    /// Children this run started, to reap (foreground) or stop (on failure).
    children: Vec<(String, Child)>,
    /// The binary the replicas run and its `sha256:` digest (set by `up`).
    binary: Option<(PathBuf, String)>,
}

impl Supervisor<'_> {
    /// Replicas, then nginx; the URL nginx serves at.
    fn up(
        &mut self,
        state: &mut State,
        progress: &mut Progress,
        settings_of: &dyn Fn(&str, &str) -> BTreeMap<String, String>,
    ) -> Result<String, CommandError> {
        let service_binary = self.service_binary()?;
        let digest = crate::releases::file_digest(&service_binary).map_err(|error| {
            CommandError::new(
                format!("failed to read `{}`: {error}", service_binary.display()),
                "check the service binary (`--kit-service`)",
                2,
            )
        })?;
        self.binary = Some((service_binary.clone(), digest));
        let nginx = match &self.options.nginx {
            Some(path) if path.is_file() => path.clone(),
            Some(path) => {
                return Err(CommandError::new(
                    format!("nginx binary `{}` does not exist", path.display()),
                    "install nginx (`apt-get install nginx-light`) or pass `--nginx PATH` (or set `DEPLOY_KIT_NGINX`)",
                    2,
                ));
            }
            None => processes::find_program("nginx", std::env::var_os("PATH").as_deref())
                .ok_or_else(|| {
                    CommandError::new(
                        "no `nginx` binary found (looked at `--nginx`, `DEPLOY_KIT_NGINX`, `PATH` and `/usr/sbin`)",
                        "install nginx (`apt-get install nginx-light`) or pass `--nginx PATH` (or set `DEPLOY_KIT_NGINX`)",
                        2,
                    )
                })?,
        };
        let mut environment = self.replica_environment()?;
        if self.settings.redis.is_some() {
            let url = progress.step(REDIS, || self.ensure_redis(state))?;
            let mut resource = state.find(PROCESS, REDIS).cloned().expect("recorded");
            resource.settings = settings_of(PROCESS, REDIS);
            state.record(resource);
            state.save(self.state_path)?;
            // The replicas are processes: the compose host name `redis` is
            // this loopback port.
            environment.retain(|(name, _)| name != "KIT_RATE_LIMIT_STORE");
            environment.push(("KIT_RATE_LIMIT_STORE".into(), url));
        }
        let mut upstreams = Vec::new();
        for index in 1..=self.settings.instances {
            let name = replica_name(index);
            let url = progress.step(&name, || {
                self.ensure_replica(state, &name, &service_binary, &environment)
            })?;
            let mut resource = state.find(PROCESS, &name).cloned().expect("recorded");
            resource.settings = settings_of(PROCESS, &name);
            state.record(resource);
            state.save(self.state_path)?;
            upstreams.push(url.trim_start_matches("http://").to_string());
        }
        // Replicas beyond `instances` (it was lowered) go.
        let extra: Vec<Resource> = state
            .resources
            .iter()
            .filter(|r| {
                r.kind == PROCESS
                    && r.settings.get("role").map(String::as_str) == Some("replica")
                    && r.name
                        .strip_prefix("replica-")
                        .and_then(|n| n.parse::<u32>().ok())
                        .is_some_and(|n| n > self.settings.instances)
            })
            .cloned()
            .collect();
        for resource in extra {
            progress.step(&resource.name, || {
                Ok(((), stop_process(&resource, self.settings)))
            })?;
            state.resources.retain(|r| r != &resource);
            state.save(self.state_path)?;
        }
        let url = progress.step("nginx", || self.ensure_nginx(state, &nginx, &upstreams))?;
        let mut resource = state.find(PROCESS, "nginx").cloned().expect("recorded");
        resource.settings = settings_of(PROCESS, "nginx");
        state.record(resource);
        state.save(self.state_path)?;
        Ok(url)
    }

    /// The replicas' binary: `--kit-service`, else `service.package` built
    /// with cargo (with the target's features) in `service.workspace`.
    fn service_binary(&self) -> Result<PathBuf, CommandError> {
        let deployment = self.deployment;
        let config = &deployment.config;
        let features = crate::artifact::required_features(
            &config.service,
            deployment.target.platform,
            config.storage.as_ref(),
        );
        let binary = match &self.options.kit_service {
            Some(path) => crate::artifact::given_binary(path)?,
            None => {
                let artifact = deployment.artifact()?;
                crate::timings::measure(crate::timings::Phase::Build, || {
                    crate::artifact::local_binary(artifact, &features, &config.service.workspace)
                })?
            }
        };
        Ok(binary)
    }

    /// The service's variables: the ones the rendered compose.yaml gives its
    /// containers (`render::Settings::env`), adjusted for loopback processes.
    fn replica_environment(&self) -> Result<Vec<(String, String)>, CommandError> {
        let config = &self.deployment.config;
        let resolved = crate::render::Settings::resolve(
            config,
            &self.deployment.target_name,
            &crate::render::RenderOptions::default(),
        )
        .map_err(|error| CommandError::new(error.message, error.hint, 2))?;
        let mut environment: Vec<(String, String)> = resolved
            .env
            .into_iter()
            .map(|variable| (variable.name, variable.value))
            .collect();
        let mut set = |name: &str, value: String| {
            environment.retain(|(have, _)| have != name);
            environment.push((name.to_string(), value));
        };
        // Only nginx on this machine reaches the replicas.
        set("KIT_TRUSTED_PROXIES", "127.0.0.1".into());
        set(
            "VGI_SIGNING_KEY_FILE",
            self.settings.key_file.display().to_string(),
        );
        // Mid-rotation (`deploy-kit secrets rotate`), the staged or
        // previous key verifies too.
        if let Some(files) = crate::secrets::store::verify_key_files(&self.settings.key_file) {
            set("VGI_SIGNING_KEY_PREVIOUS_FILE", files);
        }
        if let Some(reference) = &config.auth.api_keys {
            let name = crate::render::secret_name_of(reference);
            let file = self.settings.output_dir.join("secrets").join(&name);
            if !file.is_file() {
                return Err(CommandError::new(
                    format!(
                        "`auth.api_keys` names secret `{name}`, and `{}` does not exist",
                        file.display()
                    ),
                    format!(
                        "write its `name=key` lines to `{}` (mode 0600), as compose mounts `./secrets/{name}`",
                        file.display()
                    ),
                    2,
                ));
            }
            // The replicas would exit 64 on a malformed entry; say so before starting them.
            let text = std::fs::read_to_string(&file).map_err(|error| {
                CommandError::new(
                    format!("failed to read `{}`: {error}", file.display()),
                    format!("make `{}` readable (mode 0600)", file.display()),
                    2,
                )
            })?;
            if let Err(error) = kit_checks::api_keys::parse(&text) {
                return Err(CommandError::new(
                    format!("`{}` (`auth.api_keys`): {error}", file.display()),
                    "write one `name=key[;expires=YYYY-MM-DD][;scopes=protocol/method ...]` per line (docs/configuration.md, `KIT_API_KEYS`)".to_string(),
                    2,
                ));
            }
            set("KIT_API_KEYS_FILE", file.display().to_string());
        }
        if let Some(storage) = &self.settings.storage {
            let region = self
                .deployment
                .target
                .region
                .clone()
                .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
                .unwrap_or_else(|| DEFAULT_REGION.to_string());
            set("KIT_STORAGE_REGION", region);
            // Presigned URLs on a loopback store are http; the fetch guard
            // allows them only when listed.
            if let Some(endpoint) = &storage.endpoint
                && (endpoint.starts_with("http://127.0.0.1")
                    || endpoint.starts_with("http://localhost"))
            {
                set(
                    "KIT_URL_ALLOWLIST",
                    endpoint.trim_end_matches('/').to_string(),
                );
            }
        }
        Ok(environment)
    }

    fn ensure_replica(
        &mut self,
        state: &mut State,
        name: &str,
        service_binary: &Path,
        environment: &[(String, String)],
    ) -> Result<(String, String), CommandError> {
        let recorded = state.find(PROCESS, name).cloned();
        let digest = self.binary.as_ref().map(|(_, digest)| digest.clone());
        // A replica running another binary (a new build, a rollback) restarts.
        if let Some(resource) = &recorded
            && let (Some(running), Some(url)) = (running_of(resource), resource.outputs.get("url"))
            && running.alive()
            && resource.outputs.get("binary_sha256") == digest.as_ref()
            && processes::answers(&format!("{url}/readyz"))
        {
            return Ok((url.clone(), format!("unchanged, pid {}", running.pid)));
        }
        if let Some(resource) = &recorded {
            stop_process(resource, self.settings);
        }
        // Keep a recorded port, so nginx's upstreams stay valid.
        let port = recorded
            .as_ref()
            .and_then(|r| r.outputs.get("port"))
            .cloned()
            .unwrap_or_else(|| "0".into());
        let mut command = Command::new(service_binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .current_dir(&self.settings.output_dir);
        for (variable, _) in std::env::vars() {
            if variable.starts_with("KIT_") || variable.starts_with("VGI_") {
                command.env_remove(&variable);
            }
        }
        for (variable, value) in environment {
            command.env(variable, value);
        }
        command.env(
            "KIT_SERVER_ID",
            format!("{}-{name}", self.deployment.config.service.name),
        );
        let log = self
            .settings
            .output_dir
            .join("logs")
            .join(format!("{name}.log"));
        let (mut child, running) = processes::spawn(command, &log)?;
        let url = match processes::wait_listening(&mut child, &running, processes::START_TIMEOUT) {
            Ok(url) => url,
            Err(reason) => {
                return Err(CommandError::new(
                    format!(
                        "`{}` ({name}) {reason}; the end of `{}`:\n{}",
                        service_binary.display(),
                        log.display(),
                        processes::log_tail(&log, 15)
                    ),
                    "S3 storage needs the service built with its `s3` feature (deploy-kit adds it when it builds; a `--kit-service` binary must have it too); a taken recorded port frees up after `deploy-kit down`",
                    1,
                ));
            }
        };
        let mut resource = Resource::new(PROCESS, name);
        record_running(&mut resource, &running);
        let port = url.rsplit(':').next().unwrap_or_default().to_string();
        resource.outputs.insert("url".into(), url.clone());
        resource.outputs.insert("port".into(), port);
        if let Some(digest) = digest {
            resource.outputs.insert("binary_sha256".into(), digest);
        }
        state.record(resource);
        state.save(self.state_path)?;
        self.children.push((name.to_string(), child));
        let outcome = if recorded.is_some() {
            "restarted"
        } else {
            "started"
        };
        Ok((
            url.clone(),
            format!("{outcome} at {url}, pid {}", running.pid),
        ))
    }

    /// A `redis-server` on loopback holding every replica's rate limit;
    /// nothing is persisted (a restart forgets the counts, never the limit).
    fn ensure_redis(&mut self, state: &mut State) -> Result<(String, String), CommandError> {
        let recorded = state.find(PROCESS, REDIS).cloned();
        let recorded_port = recorded
            .as_ref()
            .and_then(|r| r.outputs.get("port"))
            .and_then(|p| p.parse::<u16>().ok());
        if let Some(resource) = &recorded
            && let (Some(running), Some(port)) = (running_of(resource), recorded_port)
            && running.alive()
            && processes::redis_answers(port)
        {
            let url = format!("redis://127.0.0.1:{port}/0");
            return Ok((
                url,
                format!("unchanged at 127.0.0.1:{port}, pid {}", running.pid),
            ));
        }
        if let Some(resource) = &recorded {
            stop_process(resource, self.settings);
        }
        let program = processes::find_program("redis-server", std::env::var_os("PATH").as_deref())
            .ok_or_else(|| {
                CommandError::new(
                    "`rate_limit.store: redis` needs `redis-server`, and none was found (looked at `PATH` and `/usr/sbin`)",
                    "install it (`apt-get install redis-server`, `brew install redis`), or set `rate_limit.store: local`",
                    2,
                )
            })?;
        // Keep a recorded port, so running replicas keep their store.
        let port = match recorded_port {
            Some(port) => port,
            None => processes::free_port()?,
        };
        let mut command = Command::new(&program);
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxmemory", "64mb", "--maxmemory-policy", "volatile-ttl"])
            .current_dir(&self.settings.output_dir);
        let log = self.settings.output_dir.join("logs").join("redis.log");
        let (mut child, running) = processes::spawn(command, &log)?;
        if let Err(reason) = processes::wait_redis(&mut child, port, processes::START_TIMEOUT) {
            return Err(CommandError::new(
                format!(
                    "`{}` {reason}; the end of `{}`:\n{}",
                    program.display(),
                    log.display(),
                    processes::log_tail(&log, 15)
                ),
                format!("a taken recorded port ({port}) frees up after `deploy-kit down`"),
                1,
            ));
        }
        let url = format!("redis://127.0.0.1:{port}/0");
        let mut resource = Resource::new(PROCESS, REDIS);
        record_running(&mut resource, &running);
        resource.outputs.insert("url".into(), url.clone());
        resource.outputs.insert("port".into(), port.to_string());
        state.record(resource);
        state.save(self.state_path)?;
        self.children.push((REDIS.to_string(), child));
        let outcome = if recorded.is_some() {
            "restarted"
        } else {
            "started"
        };
        Ok((
            url,
            format!("{outcome} at 127.0.0.1:{port}, pid {}", running.pid),
        ))
    }

    fn ensure_nginx(
        &mut self,
        state: &mut State,
        nginx: &Path,
        upstreams: &[String],
    ) -> Result<(String, String), CommandError> {
        let recorded = state.find(PROCESS, "nginx").cloned();
        let recorded_port = recorded
            .as_ref()
            .and_then(|r| r.outputs.get("port"))
            .and_then(|p| p.parse::<u16>().ok());
        let port = match (self.options.port, recorded_port) {
            (0, Some(port)) => port,
            (0, None) => processes::free_port()?,
            (port, _) => port,
        };
        let prefix = self.settings.output_dir.join("nginx");
        let files = crate::render::render_parts(
            &self.deployment.config,
            &self.deployment.target_name,
            &crate::render::RenderOptions {
                config_name: self
                    .deployment
                    .config_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                nginx: crate::render::NginxOptions {
                    upstreams: upstreams.to_vec(),
                    listen: Some(format!("127.0.0.1:{port}")),
                    plain_http: true,
                    tls_certificate: None,
                    tls_certificate_key: None,
                },
            },
            crate::render::What::Nginx,
        )?;
        let conf = files
            .iter()
            .find(|f| f.path == Path::new("nginx.conf"))
            .map(|f| f.contents.clone())
            .ok_or_else(|| {
                CommandError::new(
                    "rendering nginx produced no `nginx.conf`",
                    "report this as a bug",
                    1,
                )
            })?;
        let conf_path = prefix.join("nginx.conf");
        let url = format!("http://127.0.0.1:{port}");
        let unchanged_conf = std::fs::read_to_string(&conf_path).is_ok_and(|have| have == conf);
        if let Some(resource) = &recorded
            && let Some(running) = running_of(resource)
            && running.alive()
            && unchanged_conf
            && processes::answers(&format!("{url}/nginx-healthz"))
        {
            return Ok((
                url,
                format!("unchanged at http://127.0.0.1:{port}, pid {}", running.pid),
            ));
        }
        if let Some(resource) = &recorded {
            stop_process(resource, self.settings);
        }
        std::fs::create_dir_all(prefix.join("logs"))
            .and_then(|()| std::fs::write(&conf_path, &conf))
            .map_err(|error| {
                CommandError::new(
                    format!("failed to write `{}`: {error}", conf_path.display()),
                    "check that the target's output directory is writable",
                    1,
                )
            })?;
        let mut command = Command::new(nginx);
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"]);
        let log = self.settings.output_dir.join("logs").join("nginx.log");
        let (mut child, running) = processes::spawn(command, &log)?;
        if let Err(reason) = processes::wait_http(
            &mut child,
            &format!("{url}/nginx-healthz"),
            processes::START_TIMEOUT,
        ) {
            return Err(CommandError::new(
                format!(
                    "nginx {reason}; the end of `{}`:\n{}",
                    log.display(),
                    processes::log_tail(&log, 15)
                ),
                format!(
                    "check the config with `{} -t -p {} -c {}`; pass `--port PORT` if {port} is taken",
                    nginx.display(),
                    prefix.display(),
                    conf_path.display()
                ),
                1,
            ));
        }
        let mut resource = Resource::new(PROCESS, "nginx");
        record_running(&mut resource, &running);
        resource.outputs.insert("url".into(), url.clone());
        resource.outputs.insert("port".into(), port.to_string());
        state.record(resource);
        state.save(self.state_path)?;
        self.children.push(("nginx".to_string(), child));
        let outcome = if recorded.is_some() {
            "restarted"
        } else {
            "started"
        };
        Ok((
            url.clone(),
            format!("{outcome} at {url}, pid {}", running.pid),
        ))
    }
}

/// `up` without `--no-wait`: the doctor, then wait for Ctrl-C (or SIGTERM,
/// or a process dying) and stop everything, nginx first.
fn foreground(
    deployment: &Deployment,
    settings: &ComposeSettings,
    state: &mut State,
    state_path: &Path,
    mut children: Vec<(String, Child)>,
    replicas: &[String],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(stop.clone());
    let output = deployment.doctor_with_replicas(kit_checks::Mode::Online, replicas, env)?;
    crate::output::human(&output.text);
    let mut code = output.exit_code;
    if code == 0 {
        eprintln!("press Ctrl-C to stop");
        let processes: Vec<(String, Running)> = state
            .resources
            .iter()
            .filter(|r| r.kind == PROCESS)
            .filter_map(|r| Some((r.name.clone(), running_of(r)?)))
            .collect();
        'wait: while !stop.load(Ordering::SeqCst) {
            for (_, child) in children.iter_mut() {
                let _ = child.try_wait();
            }
            for (name, running) in &processes {
                if !running.alive() {
                    eprintln!(
                        "error: {name} exited; stopping the rest (its log: `{}`)",
                        running.log.display()
                    );
                    code = 1;
                    break 'wait;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut order: Vec<Resource> = state
        .resources
        .iter()
        .filter(|r| r.kind == PROCESS)
        .cloned()
        .collect();
    order.reverse();
    for resource in order {
        let outcome = stop_process(&resource, settings);
        eprintln!("  {}: {outcome}", resource.address());
        state.resources.retain(|r| r != &resource);
    }
    for (_, child) in children.iter_mut() {
        let _ = child.wait();
    }
    state.save(state_path)?;
    eprintln!(
        "stopped; the bucket and key stay (`deploy-kit down {}` removes them)",
        deployment.target_name
    );
    Ok(code)
}

/// Sets `stop` on Ctrl-C or SIGTERM.
fn watch_signals(stop: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            #[cfg(unix)]
            {
                use tokio::signal::unix::{SignalKind, signal};
                let Ok(mut terminate) = signal(SignalKind::terminate()) else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
            stop.store(true, Ordering::SeqCst);
        });
    });
}

/// `docker compose` or `podman compose`, whichever answers `compose version`.
fn find_compose() -> Result<Vec<String>, CommandError> {
    for tool in ["docker", "podman"] {
        let works = Command::new(tool)
            .args(["compose", "version"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return Ok(vec![tool.to_string(), "compose".to_string()]);
        }
    }
    Err(CommandError::new(
        "`--runtime container` needs `docker compose` or `podman compose`, and neither answers `compose version`",
        "install Docker Compose v2 or podman-compose, or use the default `--runtime processes`",
        2,
    ))
}

fn project_name(deployment: &Deployment) -> String {
    format!(
        "{}-{}",
        deployment.config.service.name, deployment.target_name
    )
}

fn container_up(
    deployment: &Deployment,
    settings: &ComposeSettings,
    state: &mut State,
    progress: &mut Progress,
) -> Result<(), CommandError> {
    let tool = find_compose()?;
    deployment.render()?;
    // compose mounts `./secrets/<name>`: the key goes there as a 0600 copy.
    if let Some(secret) = crate::render::Settings::resolve(
        &deployment.config,
        &deployment.target_name,
        &crate::render::RenderOptions::default(),
    )
    .map_err(|error| CommandError::new(error.message, error.hint, 2))?
    .signing_key
    {
        let file = settings
            .output_dir
            .join("secrets")
            .join(&secret.secret_name);
        if !file.exists() {
            let bytes = std::fs::read(&settings.key_file).map_err(|error| {
                CommandError::new(
                    format!("failed to read `{}`: {error}", settings.key_file.display()),
                    "run `deploy-kit up` again",
                    1,
                )
            })?;
            std::fs::create_dir_all(settings.output_dir.join("secrets"))
                .and_then(|()| crate::up_local::write_private_file(&file, &bytes))
                .map_err(|error| {
                    CommandError::new(
                        format!("failed to write `{}`: {error}", file.display()),
                        "check that the target's output directory is writable",
                        1,
                    )
                })?;
        }
    }
    let project = project_name(deployment);
    progress.step(&format!("compose project `{project}`"), || {
        let status = Command::new(&tool[0])
            .args(&tool[1..])
            .args(["-p", &project, "-f", "compose.yaml", "up", "-d", "--wait"])
            .current_dir(&settings.output_dir)
            .status()
            .map_err(|error| CommandError::new(format!("failed to run `{}`: {error}", tool.join(" ")), "", 1))?;
        if !status.success() {
            return Err(CommandError::new(
                format!("`{} up` failed ({status})", tool.join(" ")),
                "build the image first (`docker build -f .deploy-kit/<env>/<target>/Dockerfile -t <image> .`) and read the compose output above",
                1,
            ));
        }
        Ok(((), "up".to_string()))
    })?;
    let mut resource = Resource::new(PROJECT, &project);
    resource.outputs.insert("tool".into(), tool.join(" "));
    state.record(resource);
    state.save(&deployment.state_path())
}

fn container_down(deployment: &Deployment, resource: &Resource) -> Result<String, CommandError> {
    let tool: Vec<String> = resource
        .outputs
        .get("tool")
        .map(|t| t.split(' ').map(str::to_string).collect())
        .unwrap_or_else(|| vec!["docker".into(), "compose".into()]);
    let status = Command::new(&tool[0])
        .args(&tool[1..])
        .args(["-p", &resource.name, "-f", "compose.yaml", "down"])
        .current_dir(&deployment.output_dir)
        .status()
        .map_err(|error| {
            CommandError::new(
                format!("failed to run `{}`: {error}", tool.join(" ")),
                format!(
                    "stop it by hand: `{} -p {} down`",
                    tool.join(" "),
                    resource.name
                ),
                1,
            )
        })?;
    if !status.success() {
        return Err(CommandError::new(
            format!("`{} down` failed ({status})", tool.join(" ")),
            format!(
                "stop it by hand: `{} -p {} down`",
                tool.join(" "),
                resource.name
            ),
            1,
        ));
    }
    Ok("down".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "version: 1
service: {name: vgi, environment: test}
targets:
  stack: {platform: compose, instances: 2}
storage:
  provider: s3-compatible
  bucket: vgi-data
  prefix: vgi-rpc/
  endpoint: http://127.0.0.1:8333
  expiry_days: 1
  abort_multipart_days: 1
  credential: static-keys
  cors_origins: [https://app.example.com]
";

    fn deployment() -> Deployment {
        let dir =
            std::env::temp_dir().join(format!("deploy-kit-compose-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("deploy-kit.yaml"), CONFIG).unwrap();
        Deployment::load(None, Some("stack"), &dir).unwrap()
    }

    /// `secrets rotate` on a compose target keeps its keys in the output
    /// directory (FileKeyStore): after `promote`, `signing-key` is the new
    /// key and `signing-key.previous` the old one. A replica that `up`
    /// (re)starts verifies with the previous key too.
    #[test]
    fn replicas_started_mid_rotation_verify_with_the_previous_key() {
        use crate::secrets::store::{FileKeyStore, KeyStore, PREVIOUS_FILE, Secret};
        let dir =
            std::env::temp_dir().join(format!("deploy-kit-compose-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("deploy-kit.yaml"),
            "version: 1\nservice: {name: vgi, environment: test, package: vgi}\ntargets:\n  stack: {platform: compose, instances: 1}\n",
        )
        .unwrap();
        let deployment = Deployment::load(None, Some("stack"), &dir).unwrap();
        let settings = ComposeSettings::resolve(&deployment).unwrap();
        std::fs::create_dir_all(&deployment.output_dir).unwrap();
        std::fs::write(&settings.key_file, format!("hex:{}\n", "11".repeat(32))).unwrap();
        let mut store = FileKeyStore::new(&deployment.output_dir);
        store.stage(&Secret::generate().unwrap()).unwrap();
        store.promote().unwrap();
        let options = UpOptions {
            runtime: Runtime::Processes,
            kit_service: None,
            nginx: None,
            port: 0,
            wait: false,
            returns_to: None,
        };
        let state_path = deployment.state_path();
        let supervisor = Supervisor {
            deployment: &deployment,
            settings: &settings,
            options: &options,
            state_path: &state_path,
            children: Vec::new(),
            binary: None,
        };
        let environment = supervisor.replica_environment().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let previous = environment
            .iter()
            .find(|(name, _)| name == "VGI_SIGNING_KEY_PREVIOUS_FILE")
            .map(|(_, value)| value.clone());
        assert_eq!(
            previous,
            Some(
                deployment
                    .output_dir
                    .join(PREVIOUS_FILE)
                    .display()
                    .to_string()
            ),
            "{environment:?}"
        );
    }

    #[test]
    fn desired_is_bucket_key_replicas_then_nginx() {
        let deployment = deployment();
        let settings = ComposeSettings::resolve(&deployment).unwrap();
        let addresses: Vec<String> = settings.desired().iter().map(Resource::address).collect();
        assert_eq!(
            addresses,
            [
                "bucket/vgi-data",
                "secret/signing-key",
                "process/replica-1",
                "process/replica-2",
                "process/nginx"
            ]
        );
        assert!(
            settings
                .key_file
                .ends_with(".deploy-kit/test/stack/signing-key")
        );
        assert!(settings.key_generated);
    }

    #[test]
    fn recorded_replicas_are_the_replica_urls_in_order() {
        let mut state = State::new(ENGINE, "test", "stack");
        for (name, role, url) in [
            ("replica-1", "replica", "http://127.0.0.1:1"),
            ("replica-2", "replica", "http://127.0.0.1:2"),
            ("nginx", "proxy", "http://127.0.0.1:3"),
        ] {
            let mut resource = Resource::new(PROCESS, name).with("role", role);
            resource.outputs.insert("url".into(), url.into());
            state.record(resource);
        }
        assert_eq!(
            recorded_replicas(&state),
            ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
    }
}
