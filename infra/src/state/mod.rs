//! Where a target's state lives, and the lock that keeps two runs apart.
//!
//! A state location is `local` (the default: `.deploy-kit/<environment>/<target>/`
//! next to the config), `s3://bucket/prefix` or `gs://bucket/prefix`, chosen
//! by `--state`, then `DEPLOY_KIT_STATE`, then `state:` in deploy-kit.yaml.
//! Remote state is keyed `<prefix>/<service>/<environment>/<target>/state.json`.
//!
//! Every command that changes a target (`up`, `down`, `state push`) runs in a
//! [`Session`]: it takes the target's lock (`state.lock` beside the state),
//! created only if absent (a local `O_EXCL` create, S3 `If-None-Match: *`,
//! GCS `ifGenerationMatch=0`), holding who, when and what command. A second
//! run waits up to `--lock-timeout` and then fails with the holder and the
//! lock's age ([`StateError::Locked`], exit 3). With a remote location the
//! session pulls the state into the target's local output directory, the
//! engines work on that copy as always, and [`Session::finish`] pushes it back
//! (also after a failed run, so what was made is recorded) and releases the
//! lock. A run killed outright leaves its lock: `deploy-kit state unlock ID`
//! breaks it, and `state push` uploads the local copy.
//!
//! The state never holds a secret value (see [`crate::engine`]), so a shared
//! bucket holds names and ids only.

pub mod command;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::CommandError;
use crate::engine::{STATE_FILE, State};

/// The lock object beside the state.
pub const LOCK_FILE: &str = "state.lock";
/// Exit code of a command that could not take the target's lock.
pub const LOCKED_EXIT_CODE: u8 = 3;

/// Where a target's state is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    /// `.deploy-kit/` beside the config (per machine, not shared).
    Local,
    /// `s3://bucket/prefix`.
    S3 { bucket: String, prefix: String },
    /// `gs://bucket/prefix`.
    Gcs { bucket: String, prefix: String },
}

impl StateLocation {
    /// Parses `local`, `s3://bucket[/prefix]` or `gs://bucket[/prefix]`.
    ///
    /// ```
    /// use deploy_kit::state::StateLocation;
    /// assert_eq!(
    ///     StateLocation::parse("s3://team-state/deploy").unwrap(),
    ///     StateLocation::S3 { bucket: "team-state".into(), prefix: "deploy".into() }
    /// );
    /// assert!(StateLocation::parse("ftp://x").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<StateLocation, StateError> {
        let text = text.trim();
        if text.is_empty() || text == "local" {
            return Ok(StateLocation::Local);
        }
        let invalid = || StateError::BadLocation {
            location: text.to_string(),
        };
        let (scheme, rest) = text.split_once("://").ok_or_else(invalid)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = !bucket.is_empty()
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c));
        if !valid_bucket {
            return Err(invalid());
        }
        let bucket = bucket.to_string();
        let prefix = prefix.trim_matches('/').to_string();
        match scheme {
            "s3" => Ok(StateLocation::S3 { bucket, prefix }),
            "gs" => Ok(StateLocation::Gcs { bucket, prefix }),
            _ => Err(invalid()),
        }
    }

    /// `--state`, then `DEPLOY_KIT_STATE`, then the config's `state:`.
    pub fn resolve(
        flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        config: Option<&str>,
    ) -> Result<StateLocation, StateError> {
        let from_env = env("DEPLOY_KIT_STATE").filter(|v| !v.is_empty());
        let chosen = flag
            .map(str::to_owned)
            .or(from_env)
            .or(config.map(str::to_owned));
        StateLocation::parse(chosen.as_deref().unwrap_or("local"))
    }
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (scheme, bucket, prefix) = match self {
            StateLocation::Local => return f.write_str("local"),
            StateLocation::S3 { bucket, prefix } => ("s3", bucket, prefix),
            StateLocation::Gcs { bucket, prefix } => ("gs", bucket, prefix),
        };
        if prefix.is_empty() {
            write!(f, "{scheme}://{bucket}")
        } else {
            write!(f, "{scheme}://{bucket}/{prefix}")
        }
    }
}

/// How often a run waiting for a lock says it still waits.
const LOCK_WAIT_NOTE: Duration = Duration::from_secs(15);

/// What a lock records about the run holding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// Random; `state unlock ID` must name it.
    pub id: String,
    /// `user@host`.
    pub who: String,
    /// Process id on that host.
    pub pid: u32,
    /// The command, e.g. `up lambda`.
    pub operation: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The deploy-kit version that took it.
    pub version: String,
}

impl LockInfo {
    fn new(operation: &str) -> LockInfo {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the OS random source");
        LockInfo {
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            who: who(),
            pid: std::process::id(),
            operation: operation.to_string(),
            created: unix_now(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// How long ago it was taken.
    pub fn age(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.created))
    }
}

/// `user@host` of this run, as locks and releases record it.
pub fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    format!("{user}@{host}")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `--state` and `--lock-timeout`, for every command that reads or changes
/// a target's state.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StateArgs {
    /// Where the state is kept: `local`, `s3://BUCKET/PREFIX` or
    /// `gs://BUCKET/PREFIX`; default `state:` in deploy-kit.yaml, else `local`.
    #[arg(long = "state", env = "DEPLOY_KIT_STATE", value_name = "LOCATION")]
    pub location: Option<String>,
    /// Seconds to wait for another run's lock before failing (exit 3).
    #[arg(
        long,
        env = "DEPLOY_KIT_LOCK_TIMEOUT",
        default_value_t = 0,
        value_name = "SECONDS"
    )]
    pub lock_timeout: u64,
}

impl StateArgs {
    /// The store of the deployment's target.
    pub fn store(
        &self,
        deployment: &crate::deployment::Deployment,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Store, StateError> {
        let location = StateLocation::resolve(
            self.location.as_deref(),
            &|_| None,
            deployment.config.state.as_deref(),
        )?;
        let compose = crate::engine::compose::handles(deployment.target.platform);
        if compose && location != StateLocation::Local {
            return Err(StateError::LocalTarget {
                target: deployment.target_name.clone(),
                location: location.to_string(),
            });
        }
        Store::open(
            &location,
            &deployment.output_dir,
            &deployment.config.service.name,
            &deployment.config.service.environment,
            &deployment.target_name,
            env,
        )
    }

    /// Locks the deployment's target for `operation` (module docs).
    pub fn begin(
        &self,
        deployment: &crate::deployment::Deployment,
        operation: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Session, StateError> {
        Session::begin(
            self.store(deployment, env)?,
            &deployment.state_path(),
            operation,
            Duration::from_secs(self.lock_timeout),
        )
    }
}

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("`{location}` is not a state location")]
    BadLocation { location: String },
    #[error(
        "the state of `{target}` is locked by `{}` (lock `{}`, `{}`, pid {}, taken {} s ago, deploy-kit {})",
        holder.who, holder.id, holder.operation, holder.pid, holder.age().as_secs(), holder.version
    )]
    Locked {
        target: String,
        holder: Box<LockInfo>,
    },
    #[error("the lock of `{target}` is `{held}`, not `{asked}`")]
    WrongLock {
        target: String,
        held: String,
        asked: String,
    },
    #[error("the state of `{target}` is not locked")]
    NotLocked { target: String },
    #[error("`{location}` cannot be read or written: {reason}")]
    Unreachable { location: String, reason: String },
    #[error("`{what}` {reason}")]
    Corrupt { what: String, reason: String },
    #[error(
        "target `{target}` runs processes on this machine; its state stays local, not at `{location}`"
    )]
    LocalTarget { target: String, location: String },
    #[error("`{path}` holds a state, and {location} has none")]
    LocalOnly { path: String, location: String },
    #[error("`{location}` needs deploy-kit built with the `{feature}` feature")]
    Unsupported {
        location: String,
        feature: &'static str,
    },
    /// The run's changes are recorded in the working copy but did not reach
    /// the shared state: others see the state from before the run.
    #[error("the state of `{target}` was not pushed back to `{location}`: {reason}")]
    NotPushed {
        target: String,
        location: String,
        working: String,
        reason: String,
    },
}

impl From<StateError> for CommandError {
    fn from(error: StateError) -> CommandError {
        let message = error.to_string();
        let (hint, code) = match &error {
            StateError::BadLocation { .. } => (
                "use `local`, `s3://BUCKET/PREFIX` or `gs://BUCKET/PREFIX` (`--state`, `DEPLOY_KIT_STATE` or `state:`)".to_string(),
                2,
            ),
            StateError::Locked { holder, .. } => (
                format!(
                    "wait for that run (`--lock-timeout SECONDS` waits for it); if it is gone, `deploy-kit state unlock {}`",
                    holder.id
                ),
                LOCKED_EXIT_CODE,
            ),
            StateError::WrongLock { held, .. } => (
                format!("`deploy-kit state show` names the holder; unlock `{held}` only if that run is gone"),
                2,
            ),
            StateError::NotLocked { .. } => (String::new(), 2),
            StateError::Unreachable { .. } => (
                "check the bucket, the credentials and the endpoint (`AWS_ENDPOINT_URL_S3`, `STORAGE_EMULATOR_HOST`); nothing was changed".to_string(),
                1,
            ),
            StateError::Corrupt { .. } => (
                "the file is kept as it is; restore the last good one (`deploy-kit state pull` from a versioned bucket, or version control) and `deploy-kit state push` it".to_string(),
                1,
            ),
            StateError::LocalTarget { .. } => (
                "drop `--state` / `DEPLOY_KIT_STATE` for this target, or set `state: local`".to_string(),
                2,
            ),
            StateError::LocalOnly { .. } => (
                "this target was kept locally so far: `deploy-kit state push` uploads it (or remove the file if it is stale)".to_string(),
                2,
            ),
            StateError::Unsupported { feature, .. } => (
                format!("rebuild with `cargo install --path infra --features {feature}`"),
                2,
            ),
            StateError::NotPushed {
                target, working, ..
            } => (
                format!(
                    "what this run did is recorded only in `{working}`: run `deploy-kit state push --target {target}` from here once the store answers, before anyone runs `up` or `down` on `{target}`"
                ),
                1,
            ),
        };
        CommandError::new(message, hint, code)
    }
}

/// A locked command's result with its session's [`Session::finish`]: the
/// command's own error comes first, and a state that could not be pushed
/// back is added to it, never dropped (the shared state then lacks what the
/// command did, whether it succeeded or not).
pub fn with_session(
    result: Result<u8, CommandError>,
    finished: Result<(), StateError>,
) -> Result<u8, CommandError> {
    match (result, finished) {
        (result, Ok(())) => result,
        (Ok(_), Err(push)) => Err(push.into()),
        (Err(mut error), Err(push)) => {
            let push = CommandError::from(push);
            error.message = format!("{}\nand then: {}", error.message, push.message);
            error.hint = match (error.hint.is_empty(), push.hint.is_empty()) {
                (_, true) => error.hint,
                (true, false) => push.hint,
                (false, false) => format!("{}\nhint: {}", error.hint, push.hint),
            };
            Err(error)
        }
    }
}

/// One place objects are kept: a directory or a bucket.
pub trait Backend: Send {
    /// The object's bytes; `None` when absent.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError>;
    /// Writes (replaces) the object; atomic for readers.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StateError>;
    /// Writes the object only if absent; `false` when it exists.
    fn create_new(&self, key: &str, bytes: &[u8]) -> Result<bool, StateError>;
    /// Removes it (absent is fine).
    fn delete(&self, key: &str) -> Result<(), StateError>;
}

/// A directory; keys are relative paths in it.
pub struct LocalBackend {
    root: PathBuf,
}

impl LocalBackend {
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend { root: root.into() }
    }

    fn unreachable(&self, key: &str, error: std::io::Error) -> StateError {
        StateError::Unreachable {
            location: self.root.join(key).display().to_string(),
            reason: error.to_string(),
        }
    }
}

impl Backend for LocalBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match std::fs::read(self.root.join(key)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(self.unreachable(key, error)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StateError> {
        use std::io::Write;
        let path = self.root.join(key);
        let failed = |error| self.unreachable(key, error);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::File::create(&temporary).map_err(failed)?;
        file.write_all(bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&temporary, &path).map_err(failed)
    }

    fn create_new(&self, key: &str, bytes: &[u8]) -> Result<bool, StateError> {
        use std::io::Write;
        let path = self.root.join(key);
        let failed = |error| self.unreachable(key, error);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(error) => return Err(failed(error)),
        };
        file.write_all(bytes).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        Ok(true)
    }

    fn delete(&self, key: &str) -> Result<(), StateError> {
        match std::fs::remove_file(self.root.join(key)) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(self.unreachable(key, error)),
        }
    }
}

/// An S3 bucket through the AWS SDK (endpoint overrides as the AWS engine
/// reads them: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).
#[cfg(feature = "aws")]
pub struct S3Backend {
    clients: crate::engine::aws::clients::AwsClients,
    bucket: String,
}

#[cfg(feature = "aws")]
impl S3Backend {
    /// `endpoint` overrides the SDK's own (`AWS_ENDPOINT_URL_S3`, ...).
    pub fn new(
        bucket: &str,
        region: &str,
        endpoint: Option<&str>,
    ) -> Result<S3Backend, StateError> {
        let clients =
            crate::engine::aws::clients::AwsClients::new(region, endpoint).map_err(|error| {
                StateError::Unreachable {
                    location: format!("s3://{bucket}"),
                    reason: error.message,
                }
            })?;
        Ok(S3Backend {
            clients,
            bucket: bucket.to_string(),
        })
    }

    fn unreachable<E>(&self, key: &str, error: &aws_sdk_s3::error::SdkError<E>) -> StateError
    where
        E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    {
        StateError::Unreachable {
            location: format!("s3://{}/{key}", self.bucket),
            reason: crate::engine::aws::clients::describe(error),
        }
    }
}

#[cfg(feature = "aws")]
impl Backend for S3Backend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let s3 = &self.clients.s3;
        let result = self
            .clients
            .runtime
            .block_on(s3.get_object().bucket(&self.bucket).key(key).send());
        match result {
            Ok(output) => {
                let body = self
                    .clients
                    .runtime
                    .block_on(output.body.collect())
                    .map_err(|error| StateError::Unreachable {
                        location: format!("s3://{}/{key}", self.bucket),
                        reason: error.to_string(),
                    })?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(error) if crate::engine::aws::clients::code(&error) == Some("NoSuchKey") => {
                Ok(None)
            }
            Err(error) => Err(self.unreachable(key, &error)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StateError> {
        let s3 = &self.clients.s3;
        self.clients
            .runtime
            .block_on(
                s3.put_object()
                    .bucket(&self.bucket)
                    .key(key)
                    .content_type("application/json")
                    .body(bytes.to_vec().into())
                    .send(),
            )
            .map(|_| ())
            .map_err(|error| self.unreachable(key, &error))
    }

    fn create_new(&self, key: &str, bytes: &[u8]) -> Result<bool, StateError> {
        let s3 = &self.clients.s3;
        let result = self.clients.runtime.block_on(
            s3.put_object()
                .bucket(&self.bucket)
                .key(key)
                .if_none_match("*")
                .content_type("application/json")
                .body(bytes.to_vec().into())
                .send(),
        );
        match result {
            Ok(_) => Ok(true),
            // 412; 409 when another conditional write is in progress.
            Err(error)
                if matches!(
                    crate::engine::aws::clients::code(&error),
                    Some("PreconditionFailed" | "ConditionalRequestConflict")
                ) || error
                    .raw_response()
                    .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
            {
                Ok(false)
            }
            Err(error) => Err(self.unreachable(key, &error)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StateError> {
        let s3 = &self.clients.s3;
        self.clients
            .runtime
            .block_on(s3.delete_object().bucket(&self.bucket).key(key).send())
            .map(|_| ())
            .map_err(|error| self.unreachable(key, &error))
    }
}

/// The state and lock of one target, wherever they live.
pub struct Store {
    backend: Box<dyn Backend>,
    location: StateLocation,
    /// Key of the state object; the lock is [`LOCK_FILE`] beside it.
    state_key: String,
    lock_key: String,
    /// The target's name, for messages.
    target: String,
}

impl Store {
    /// The store of a target: `local` keeps `<output_dir>/state.json`; a
    /// bucket keeps `<prefix>/<service>/<environment>/<target>/state.json`.
    pub fn open(
        location: &StateLocation,
        output_dir: &Path,
        service: &str,
        environment: &str,
        target: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Store, StateError> {
        let remote_key = |prefix: &str, file: &str| {
            let mut key = String::new();
            if !prefix.is_empty() {
                key.push_str(prefix);
                key.push('/');
            }
            format!("{key}{service}/{environment}/{target}/{file}")
        };
        let (backend, state_key, lock_key): (Box<dyn Backend>, String, String) = match location {
            StateLocation::Local => (
                Box::new(LocalBackend::new(output_dir)),
                STATE_FILE.to_string(),
                LOCK_FILE.to_string(),
            ),
            StateLocation::S3 { bucket, prefix } => {
                #[cfg(feature = "aws")]
                {
                    // `AWS_REGION` (or `AWS_DEFAULT_REGION`), else `us-east-1`.
                    let region = env("AWS_REGION")
                        .or_else(|| env("AWS_DEFAULT_REGION"))
                        .unwrap_or_else(|| "us-east-1".into());
                    (
                        Box::new(S3Backend::new(bucket, &region, None)?),
                        remote_key(prefix, STATE_FILE),
                        remote_key(prefix, LOCK_FILE),
                    )
                }
                #[cfg(not(feature = "aws"))]
                {
                    let _ = (bucket, prefix, env, remote_key);
                    return Err(StateError::Unsupported {
                        location: location.to_string(),
                        feature: "aws",
                    });
                }
            }
            StateLocation::Gcs { bucket, prefix } => {
                #[cfg(feature = "gcp")]
                {
                    (
                        Box::new(crate::gcp::state::GcsBackend::new(bucket, env)?),
                        remote_key(prefix, STATE_FILE),
                        remote_key(prefix, LOCK_FILE),
                    )
                }
                #[cfg(not(feature = "gcp"))]
                {
                    let _ = (bucket, prefix, env, remote_key);
                    return Err(StateError::Unsupported {
                        location: location.to_string(),
                        feature: "gcp",
                    });
                }
            }
        };
        Ok(Store {
            backend,
            location: location.clone(),
            state_key,
            lock_key,
            target: target.to_string(),
        })
    }

    /// A store over any backend (tests).
    pub fn with_backend(
        backend: Box<dyn Backend>,
        location: StateLocation,
        state_key: &str,
        target: &str,
    ) -> Store {
        let lock_key = match state_key.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{LOCK_FILE}"),
            None => LOCK_FILE.to_string(),
        };
        Store {
            backend,
            location,
            state_key: state_key.to_string(),
            lock_key,
            target: target.to_string(),
        }
    }

    /// Where the state lives, e.g. `s3://bucket/prefix/svc/production/lambda/state.json`.
    pub fn describe(&self) -> String {
        match &self.location {
            StateLocation::Local => format!("local `{}`", self.state_key),
            StateLocation::S3 { bucket, .. } => format!("s3://{bucket}/{}", self.state_key),
            StateLocation::Gcs { bucket, .. } => format!("gs://{bucket}/{}", self.state_key),
        }
    }

    pub fn location(&self) -> &StateLocation {
        &self.location
    }

    /// The raw state bytes, checked to parse as a state; `None` when there is none.
    pub fn pull(&self) -> Result<Option<Vec<u8>>, StateError> {
        let Some(bytes) = self.backend.get(&self.state_key)? else {
            return Ok(None);
        };
        parse_state(&bytes, &self.describe())?;
        Ok(Some(bytes))
    }

    /// Writes the state bytes after checking they parse as a state of this target.
    pub fn push(&self, bytes: &[u8], what: &str) -> Result<(), StateError> {
        let state = parse_state(bytes, what)?;
        if state.target != self.target {
            return Err(StateError::Corrupt {
                what: what.to_string(),
                reason: format!(
                    "is not a state to use here: it is the state of target `{}`, not `{}`",
                    state.target, self.target
                ),
            });
        }
        self.backend.put(&self.state_key, bytes)
    }

    /// Who holds the lock, if anyone.
    pub fn holder(&self) -> Result<Option<LockInfo>, StateError> {
        let Some(bytes) = self.backend.get(&self.lock_key)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| StateError::Corrupt {
                what: format!("lock `{}`", self.lock_key),
                reason: format!("is not a deploy-kit lock: {error}"),
            })
    }

    /// Takes the lock for `operation`, waiting up to `timeout` for a holder.
    pub fn lock(&self, operation: &str, timeout: Duration) -> Result<LockInfo, StateError> {
        let info = LockInfo::new(operation);
        let bytes = serde_json::to_vec_pretty(&info).expect("lock info serializes");
        let started = Instant::now();
        let mut announced = false;
        let mut last_note = started;
        // On a terminal the wait is one line with its elapsed time; in
        // plain output a note every LOCK_WAIT_NOTE says how long it has been.
        let style = crate::ticker::Style::of_stderr();
        let mut ticker = None;
        loop {
            if self.backend.create_new(&self.lock_key, &bytes)? {
                drop(ticker);
                return Ok(info);
            }
            // The holder may have released it between our create and this read.
            let Some(holder) = self.holder()? else {
                continue;
            };
            let waited = started.elapsed();
            if waited >= timeout {
                drop(ticker);
                return Err(StateError::Locked {
                    target: self.target.clone(),
                    holder: Box::new(holder),
                });
            }
            if !announced {
                eprintln!(
                    "state: `{}` is locked by `{}` (`{}`); waiting up to {} s",
                    self.target,
                    holder.who,
                    holder.operation,
                    timeout.as_secs()
                );
                announced = true;
                last_note = Instant::now();
                if style == crate::ticker::Style::Terminal {
                    ticker = Some(crate::ticker::Ticker::start(
                        crate::ticker::shared(Box::new(std::io::stderr())),
                        style,
                        format!("state: waiting for the lock of `{}`", self.target),
                        crate::ticker::Timing::default(),
                    ));
                }
            } else if ticker.is_none() && last_note.elapsed() >= LOCK_WAIT_NOTE {
                // Never a silent minute: say how long it has been.
                eprintln!(
                    "state: still waiting for the lock of `{}` held by `{}` ({} s of {} s)",
                    self.target,
                    holder.who,
                    waited.as_secs(),
                    timeout.as_secs()
                );
                last_note = Instant::now();
            }
            std::thread::sleep((timeout - waited).min(Duration::from_millis(500)));
        }
    }

    /// Releases the lock if `id` holds it.
    pub fn unlock(&self, id: &str) -> Result<(), StateError> {
        match self.holder()? {
            None => Err(StateError::NotLocked {
                target: self.target.clone(),
            }),
            Some(holder) if holder.id != id => Err(StateError::WrongLock {
                target: self.target.clone(),
                held: holder.id,
                asked: id.to_string(),
            }),
            Some(_) => self.backend.delete(&self.lock_key),
        }
    }
}

fn parse_state(bytes: &[u8], what: &str) -> Result<State, StateError> {
    crate::engine::parse_state(bytes).map_err(|reason| StateError::Corrupt {
        what: what.to_string(),
        reason,
    })
}

/// Makes `working` the remote state (see [`Session::begin`]); returns it.
impl Store {
    /// For a remote store, makes `working` (the engines' `state.json`) the
    /// stored state, as a locked run does at its start (a differing local
    /// copy is kept aside; a state kept only locally is refused). Local:
    /// nothing to do.
    pub fn sync_working(&self, working: &Path) -> Result<(), StateError> {
        match self.location {
            StateLocation::Local => Ok(()),
            _ => sync_working_copy(self, working).map(|_| ()),
        }
    }
}

fn sync_working_copy(store: &Store, working: &Path) -> Result<Option<Vec<u8>>, StateError> {
    let pulled = store.pull()?;
    let local = match std::fs::read(working) {
        Ok(bytes) => Some(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(StateError::Unreachable {
                location: working.display().to_string(),
                reason: error.to_string(),
            });
        }
    };
    let io = |error: std::io::Error| StateError::Unreachable {
        location: working.display().to_string(),
        reason: error.to_string(),
    };
    match (&pulled, local) {
        (None, None) => {}
        (None, Some(_)) => {
            return Err(StateError::LocalOnly {
                path: working.display().to_string(),
                location: store.describe(),
            });
        }
        (Some(remote), local) => {
            if local.as_ref().is_some_and(|l| l != remote) {
                let kept = working.with_extension("json.replaced");
                std::fs::rename(working, &kept).map_err(io)?;
                eprintln!(
                    "state: the local copy differed from {}; kept it as `{}`",
                    store.describe(),
                    kept.display()
                );
            }
            let dir = working.parent().unwrap_or(Path::new("."));
            let file = working
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| STATE_FILE.into());
            LocalBackend::new(dir).put(&file, remote)?;
        }
    }
    Ok(pulled)
}

/// A locked run over one target's state (module docs): remote state is
/// pulled into `working` (the engines' `state.json`) and pushed back by
/// [`Session::finish`].
pub struct Session {
    store: Store,
    working: PathBuf,
    lock: Option<LockInfo>,
    /// The bytes pulled (remote only), to skip an unchanged push.
    pulled: Option<Vec<u8>>,
}

impl Session {
    /// Locks the target and, for a remote store, pulls its state into
    /// `working`. A local copy that differs from the remote one is kept as
    /// `state.json.replaced` (the remote state wins); a local state with no
    /// remote one is refused, untouched: that is a target kept locally so
    /// far, and `deploy-kit state push` moves it.
    pub fn begin(
        store: Store,
        working: &Path,
        operation: &str,
        timeout: Duration,
    ) -> Result<Session, StateError> {
        let lock = store.lock(operation, timeout)?;
        let pulled = match store.location {
            StateLocation::Local => Ok(None),
            _ => sync_working_copy(&store, working),
        };
        let pulled = match pulled {
            Ok(pulled) => pulled,
            Err(error) => {
                let _ = store.unlock(&lock.id);
                return Err(error);
            }
        };
        Ok(Session {
            store,
            working: working.to_path_buf(),
            lock: Some(lock),
            pulled,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Pushes the working state (remote only, when changed) and releases the lock.
    pub fn finish(mut self) -> Result<(), StateError> {
        let pushed = self.push_working();
        let released = self.release();
        pushed.and(released)
    }

    fn push_working(&mut self) -> Result<(), StateError> {
        if self.store.location == StateLocation::Local {
            return Ok(());
        }
        match std::fs::read(&self.working) {
            Ok(bytes) if Some(&bytes) != self.pulled.as_ref() => {
                let working = self.working.display().to_string();
                self.store
                    .push(&bytes, &working)
                    .map_err(|error| StateError::NotPushed {
                        target: self.store.target.clone(),
                        location: self.store.location.to_string(),
                        working,
                        reason: error.to_string(),
                    })?;
                self.pulled = Some(bytes);
                Ok(())
            }
            Ok(_) => Ok(()),
            // `down` removed everything and deleted the file.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                if self.pulled.take().is_some() {
                    self.store.backend.delete(&self.store.state_key)?;
                }
                Ok(())
            }
            Err(error) => Err(StateError::Unreachable {
                location: self.working.display().to_string(),
                reason: error.to_string(),
            }),
        }
    }

    fn release(&mut self) -> Result<(), StateError> {
        match self.lock.take() {
            Some(lock) => self.store.unlock(&lock.id),
            None => Ok(()),
        }
    }
}

impl Drop for Session {
    /// A session not finished (an early `?`, a panic) still records what
    /// was made and frees the lock.
    fn drop(&mut self) {
        if self.lock.is_some() {
            if let Err(error) = self.push_working() {
                eprintln!("warning: {error}");
            }
            if let Err(error) = self.release() {
                eprintln!("warning: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, location: StateLocation) -> Store {
        Store::with_backend(
            Box::new(LocalBackend::new(dir)),
            location,
            "svc/production/lambda/state.json",
            "lambda",
        )
    }

    fn state_bytes(target: &str) -> Vec<u8> {
        let mut state = State::new("aws", "production", target);
        state.id = "0123456789abcdef".into();
        serde_json::to_vec(&state).unwrap()
    }

    #[test]
    fn locations_parse_and_print_back() {
        for text in ["local", "s3://b", "s3://b/p/q", "gs://team.state/x"] {
            assert_eq!(StateLocation::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(StateLocation::parse("").unwrap(), StateLocation::Local);
        for bad in ["s3://", "s3://Upper/x", "http://b/x", "bucket", "s3://b c"] {
            assert!(
                matches!(
                    StateLocation::parse(bad),
                    Err(StateError::BadLocation { .. })
                ),
                "{bad}"
            );
        }
        let env = |name: &str| (name == "DEPLOY_KIT_STATE").then(|| "gs://e".to_string());
        assert_eq!(
            StateLocation::resolve(None, &env, Some("s3://c"))
                .unwrap()
                .to_string(),
            "gs://e"
        );
        assert_eq!(
            StateLocation::resolve(Some("s3://f"), &env, None)
                .unwrap()
                .to_string(),
            "s3://f"
        );
    }

    #[test]
    fn a_second_lock_fails_with_the_holder_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let first = store(dir.path(), StateLocation::Local);
        let second = store(dir.path(), StateLocation::Local);
        let held = first.lock("up lambda", Duration::ZERO).unwrap();
        let started = Instant::now();
        match second.lock("down lambda", Duration::from_millis(700)) {
            Err(StateError::Locked { holder, target }) => {
                assert_eq!(*holder, held);
                assert_eq!(target, "lambda");
            }
            other => panic!("expected Locked, got {:?}", other.map(|i| i.id)),
        }
        assert!(started.elapsed() >= Duration::from_millis(700), "it waited");
        let error = CommandError::from(second.lock("down", Duration::ZERO).unwrap_err());
        assert_eq!(error.exit_code, LOCKED_EXIT_CODE);
        assert!(error.message.contains("up lambda"), "{}", error.message);
        assert!(error.hint.contains(&held.id), "{}", error.hint);
        assert!(matches!(
            second.unlock("0000"),
            Err(StateError::WrongLock { .. })
        ));
        first.unlock(&held.id).unwrap();
        assert!(matches!(
            second.unlock(&held.id),
            Err(StateError::NotLocked { .. })
        ));
        second.lock("down lambda", Duration::ZERO).unwrap();
    }

    #[test]
    fn a_waiting_run_gets_the_lock_when_the_holder_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let held = store(&path, StateLocation::Local)
            .lock("up", Duration::ZERO)
            .unwrap();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            store(&path, StateLocation::Local).unlock(&held.id).unwrap();
        });
        store(dir.path(), StateLocation::Local)
            .lock("up", Duration::from_secs(10))
            .unwrap();
        releaser.join().unwrap();
    }

    #[test]
    fn a_state_that_cannot_be_pushed_back_is_reported_with_the_commands_own_error() {
        let remote = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let working = work.path().join("state.json");
        let location = StateLocation::S3 {
            bucket: "b".into(),
            prefix: String::new(),
        };
        let begin = || {
            Session::begin(
                store(remote.path(), location.clone()),
                &working,
                "up",
                Duration::ZERO,
            )
            .unwrap()
        };
        let mut state = State::new("aws", "production", "lambda");
        state.record(crate::engine::Resource::new("bucket", "data"));
        let store_gone = |session: Session| {
            state.save(&working).unwrap();
            // The store stops answering: its directory is now a file.
            std::fs::remove_dir_all(remote.path()).unwrap();
            std::fs::write(remote.path(), b"not a directory").unwrap();
            let finished = session.finish();
            std::fs::remove_file(remote.path()).unwrap();
            std::fs::create_dir(remote.path()).unwrap();
            finished
        };

        // The command succeeded: the push failure is the error.
        let finished = store_gone(begin());
        assert!(
            matches!(&finished, Err(StateError::NotPushed { working: w, .. }) if *w == working.display().to_string()),
            "{finished:?}"
        );
        let error = with_session(Ok(0), finished).unwrap_err();
        assert_eq!(error.exit_code, 1);
        assert!(
            error.message.contains("was not pushed back to `s3://b`"),
            "{}",
            error.message
        );
        assert!(
            error.hint.contains(&working.display().to_string())
                && error.hint.contains("deploy-kit state push --target lambda"),
            "{}",
            error.hint
        );
        // The working copy still holds what the run made.
        assert!(
            std::fs::read_to_string(&working)
                .unwrap()
                .contains("\"data\"")
        );

        // The command failed too: its error (and exit code) first, the push's added.
        std::fs::remove_file(&working).unwrap();
        let finished = store_gone(begin());
        let failed = CommandError::new("the deploy failed", "look at the deploy", 4);
        let error = with_session(Err(failed), finished).unwrap_err();
        assert_eq!(error.exit_code, 4);
        assert!(
            error.message.starts_with(
                "the deploy failed\nand then: the state of `lambda` was not pushed back"
            ),
            "{}",
            error.message
        );
        assert!(
            error
                .hint
                .starts_with("look at the deploy\nhint: what this run did is recorded only in"),
            "{}",
            error.hint
        );

        // Nothing failed to push: the command's result as it is.
        assert_eq!(with_session(Ok(2), Ok(())).unwrap(), 2);
        let failed = CommandError::new("x", "", 1);
        assert_eq!(with_session(Err(failed), Ok(())).unwrap_err().message, "x");
    }

    #[test]
    fn a_remote_session_pulls_then_pushes_and_refuses_foreign_or_corrupt_state() {
        let remote = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let working = work.path().join("state.json");
        let location = StateLocation::S3 {
            bucket: "b".into(),
            prefix: String::new(),
        };
        // A state kept locally so far is refused, untouched, lock released.
        std::fs::write(&working, state_bytes("lambda")).unwrap();
        assert!(matches!(
            Session::begin(
                store(remote.path(), location.clone()),
                &working,
                "up",
                Duration::ZERO
            ),
            Err(StateError::LocalOnly { .. })
        ));
        assert_eq!(std::fs::read(&working).unwrap(), state_bytes("lambda"));
        std::fs::remove_file(&working).unwrap();
        let session = Session::begin(
            store(remote.path(), location.clone()),
            &working,
            "up",
            Duration::ZERO,
        )
        .unwrap();
        let mut state = State::new("aws", "production", "lambda");
        state.record(crate::engine::Resource::new("bucket", "data"));
        state.save(&working).unwrap();
        session.finish().unwrap();
        let stored = store(remote.path(), location.clone())
            .pull()
            .unwrap()
            .unwrap();
        assert!(String::from_utf8(stored).unwrap().contains("\"data\""));
        assert!(
            store(remote.path(), location.clone())
                .holder()
                .unwrap()
                .is_none()
        );

        // Another machine's run sees it; its stale copy is kept aside.
        std::fs::write(&working, state_bytes("lambda")).unwrap();
        let session = Session::begin(
            store(remote.path(), location.clone()),
            &working,
            "down",
            Duration::ZERO,
        )
        .unwrap();
        assert!(
            std::fs::read_to_string(&working)
                .unwrap()
                .contains("\"data\"")
        );
        assert_eq!(
            std::fs::read(work.path().join("state.json.replaced")).unwrap(),
            state_bytes("lambda")
        );
        // `down` removed everything: the remote state goes too.
        std::fs::remove_file(&working).unwrap();
        session.finish().unwrap();
        assert!(
            store(remote.path(), location.clone())
                .pull()
                .unwrap()
                .is_none()
        );
        store(remote.path(), location.clone())
            .push(&state_bytes("lambda"), "file")
            .unwrap();

        let other = store(remote.path(), location.clone());
        assert!(matches!(
            other.push(&state_bytes("cloudrun"), "file"),
            Err(StateError::Corrupt { .. })
        ));
        assert!(matches!(
            other.push(b"{ not json", "file"),
            Err(StateError::Corrupt { .. })
        ));
        let newer = String::from_utf8(state_bytes("lambda"))
            .unwrap()
            .replace(crate::engine::STATE_SCHEMA, "deploy-kit.state/v9");
        assert!(matches!(
            other.push(newer.as_bytes(), "file"),
            Err(StateError::Corrupt { .. })
        ));
        // Refusals change nothing.
        assert_eq!(other.pull().unwrap().unwrap(), state_bytes("lambda"));
    }
}
