//! `deploy-kit up local`: the embedded default, with no cloud account and no
//! other service. It keeps its state in `.deploy-kit/local/` (a signing key
//! made once and reused, and the `local` storage directory), builds the
//! configured service (`service.package`, `service.binary`) with cargo in
//! `service.workspace`, starts `<binary> serve` on loopback, and judges it
//! with the same doctor as `deploy-kit doctor --online`. `--kit-service PATH`
//! runs a prebuilt binary instead; without a cargo workspace, `<binary>` next
//! to `deploy-kit` or on `PATH` is run.
//!
//! The key is written as `hex:` text because the service refuses a key file
//! that is not UTF-8; it holds 32 random bytes and is never printed.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kit_checks::render::Format;
use kit_checks::{Date, Mode, Severity};

use crate::artifact::{Artifact, ArtifactError};
use crate::config::{DEFAULT_CONFIG_FILE, DeployConfig, KeySourceKind};
use crate::doctor::{DoctorError, DoctorOutput, DoctorRequest, OutputFormat};
use kit_checks::facts::RequiredFeature;

/// Where `up local` keeps its state, relative to the working directory.
pub const STATE_DIR: &str = ".deploy-kit/local";
/// The signing key file inside [`STATE_DIR`].
pub const KEY_FILE: &str = "signing-key";
/// The `local` storage directory inside [`STATE_DIR`].
pub const OBJECTS_DIR: &str = "objects";
/// Bytes of randomness in a generated signing key.
pub const KEY_BYTES: usize = 32;
/// How long the service may take to print `LISTENING`.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The target name `up local` judges, in `deploy-kit.yaml` or the built-in defaults.
pub const LOCAL_TARGET: &str = "local";

/// `KIT_SHUTDOWN_GRACE` of the local service, and what the built-in config
/// says, so the facts describe the process: under the 10 s a `compose`-like
/// supervisor allows (OPS002).
pub const LOCAL_SHUTDOWN_GRACE_SECONDS: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum UpLocalError {
    /// Resolving, checking, building or finding the service binary.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("failed to prepare `{path}`: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signing key file `{0}` is not a `hex:` key of at least 32 bytes")]
    BadKey(PathBuf),
    #[error("failed to generate the signing key: {0}")]
    Random(getrandom::Error),
    #[error("failed to start the service binary `{path}`: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the service exited before listening ({0})")]
    ExitedEarly(String),
    #[error("the service did not print `LISTENING` within {0} s")]
    StartTimeout(u64),
    #[error("{0}")]
    Doctor(DoctorError),
}

impl UpLocalError {
    /// The `hint:` line: the command that fixes it.
    pub fn hint(&self) -> String {
        match self {
            UpLocalError::Artifact(error) => error.hint(),
            UpLocalError::State { .. } => {
                "check that the working directory is writable".to_string()
            }
            UpLocalError::BadKey(path) => format!(
                "delete `{}` and run `deploy-kit up local` again to make a new key",
                path.display()
            ),
            UpLocalError::Random(_) => "the system's random source failed; try again".to_string(),
            UpLocalError::Spawn { .. } => {
                "check that the binary runs on this machine, or leave `--kit-service` out to build it with cargo".to_string()
            }
            UpLocalError::ExitedEarly(_) | UpLocalError::StartTimeout(_) => {
                "read the service's log above; `--port 0` picks a free port if 8080 is taken"
                    .to_string()
            }
            UpLocalError::Doctor(error) => error.hint.clone(),
        }
    }

    /// 2 for usage and config errors, 1 when the service itself fails.
    pub fn exit_code(&self) -> u8 {
        match self {
            UpLocalError::ExitedEarly(_) | UpLocalError::StartTimeout(_) => 1,
            UpLocalError::Artifact(error) => error.exit_code(),
            _ => 2,
        }
    }
}

/// Where `up local` keeps its files.
#[derive(Debug, Clone)]
pub struct LocalState {
    pub key_file: PathBuf,
    pub objects_dir: PathBuf,
    /// The key was made by this run (not reused).
    pub created_key: bool,
}

/// Makes `.deploy-kit/local/` under `cwd`: the signing key (once, mode 0600)
/// and the objects directory. An existing key is reused after checking that
/// it still decodes, so a later run keeps tokens from an earlier one valid.
pub fn prepare_state(cwd: &Path) -> Result<LocalState, UpLocalError> {
    let dir = cwd.join(STATE_DIR);
    let objects_dir = dir.join(OBJECTS_DIR);
    let state_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpLocalError::State { path, source }
    };
    std::fs::create_dir_all(&objects_dir).map_err(state_error(&objects_dir))?;
    let key_file = dir.join(KEY_FILE);
    let created_key = ensure_key(&key_file)?;
    Ok(LocalState {
        key_file,
        objects_dir,
        created_key,
    })
}

/// Makes the signing key file at `key_file` once (32 CSPRNG bytes as `hex:`,
/// mode 0600), or checks that an existing one still decodes. Returns whether
/// it made the key. `up local` and the compose engine share it.
pub fn ensure_key(key_file: &Path) -> Result<bool, UpLocalError> {
    let state_error = |source| UpLocalError::State {
        path: key_file.to_path_buf(),
        source,
    };
    match std::fs::read_to_string(key_file) {
        Ok(text) => {
            if decode_hex_key(&text).is_none_or(|bytes| bytes.len() < KEY_BYTES) {
                return Err(UpLocalError::BadKey(key_file.to_path_buf()));
            }
            Ok(false)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = key_file.parent() {
                std::fs::create_dir_all(dir).map_err(state_error)?;
            }
            let mut bytes = [0u8; KEY_BYTES];
            getrandom::fill(&mut bytes).map_err(UpLocalError::Random)?;
            let text = format!("hex:{}\n", to_hex(&bytes));
            write_private_file(key_file, text.as_bytes()).map_err(state_error)?;
            Ok(true)
        }
        Err(error) => Err(state_error(error)),
    }
}

/// Creates `path` with mode 0600 from the start, so the key is never readable
/// by others, not even between create and chmod.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex_key(text: &str) -> Option<Vec<u8>> {
    let hex = text.trim_end_matches(['\n', '\r']).strip_prefix("hex:")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect()
}

/// A started service process; SIGTERM and wait with [`LocalService::stop`].
/// Dropping it without stopping kills it, so a failed `up` leaves nothing behind.
pub struct LocalService {
    child: Option<Child>,
    pub url: String,
}

impl LocalService {
    /// Starts `binary serve --listen 127.0.0.1:PORT` with the local env and
    /// waits for its `LISTENING` line. Its log (stderr) passes through; the
    /// rest of its stdout is copied to ours.
    pub fn start(
        binary: &Path,
        port: u16,
        state: &LocalState,
        timeout: Duration,
    ) -> Result<LocalService, UpLocalError> {
        let mut command = Command::new(binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("VGI_SIGNING_KEY_FILE", &state.key_file)
            .env_remove("VGI_SIGNING_KEY")
            .env_remove("VGI_SIGNING_KEY_PREVIOUS");
        // Mid-rotation (`deploy-kit secrets rotate --target local`), the
        // staged or previous key verifies too.
        match crate::secrets::store::verify_key_files(&state.key_file) {
            Some(files) => command.env("VGI_SIGNING_KEY_PREVIOUS_FILE", files),
            None => command.env_remove("VGI_SIGNING_KEY_PREVIOUS_FILE"),
        };
        let mut child = command
            .env("KIT_STORAGE", "local")
            .env("KIT_STORAGE_DIR", &state.objects_dir)
            .env("KIT_URL_ALLOWLIST", "http://127.0.0.1")
            .env("KIT_LOG_FORMAT", "text")
            .env(
                "KIT_SHUTDOWN_GRACE",
                LOCAL_SHUTDOWN_GRACE_SECONDS.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|source| UpLocalError::Spawn {
                path: binary.to_path_buf(),
                source,
            })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let first = match reader.read_line(&mut line) {
                Ok(0) | Err(_) => None,
                Ok(_) => Some(line.trim().to_string()),
            };
            let _ = sender.send(first);
            // Keep draining so the service never blocks on a full pipe.
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
            let _ = std::io::stdout().write_all(&rest);
        });
        let mut service = LocalService {
            child: Some(child),
            url: String::new(),
        };
        let line = match receiver.recv_timeout(timeout) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(UpLocalError::StartTimeout(timeout.as_secs()));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        };
        match line.as_deref().and_then(|l| l.strip_prefix("LISTENING ")) {
            Some(url) => {
                service.url = url.trim_end_matches('/').to_string();
                Ok(service)
            }
            None => {
                let status = service
                    .child
                    .take()
                    .and_then(|mut c| c.wait().ok())
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "no status".to_string());
                Err(UpLocalError::ExitedEarly(status))
            }
        }
    }

    /// The service's process id, for forwarding signals.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM (the service drains) and waits for it to exit.
    pub fn stop(&mut self) -> std::io::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| std::io::Error::other("the service was already stopped"))?;
        terminate(&child)?;
        child.wait()
    }

    /// Waits for the service to exit on its own (after a forwarded signal).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| std::io::Error::other("the service was already stopped"))?;
        child.wait()
    }
}

impl Drop for LocalService {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(unix)]
fn terminate(child: &Child) -> std::io::Result<()> {
    send_sigterm(child.id())
}

#[cfg(not(unix))]
fn terminate(_child: &Child) -> std::io::Result<()> {
    Err(std::io::Error::other("SIGTERM needs a unix system"))
}

/// Sends SIGTERM to process `pid` (a child this process started).
#[cfg(unix)]
pub fn send_sigterm(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("bad process id {pid}")))?;
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).map_err(Into::into)
}

/// The config `up local` judges: `deploy-kit.yaml` in `cwd` when it has a
/// `local` target, else built-in defaults (a `compose`-like loopback target,
/// with the file's `service:` when there is a file, so its package is what
/// runs). Either way the signing key is the generated file, since that is
/// what the started service uses.
pub fn local_config(
    cwd: &Path,
    port: u16,
    key_file: &Path,
) -> Result<(DeployConfig, String), DoctorError> {
    let (mut config, display) = base_config(cwd, port)?;
    let key = &mut config.signing_key;
    key.source = KeySourceKind::File;
    key.path = Some(key_file.display().to_string());
    key.env = None;
    key.secret = None;
    key.value = None;
    Ok((config, display))
}

/// [`local_config`] before the signing key is set.
fn base_config(cwd: &Path, port: u16) -> Result<(DeployConfig, String), DoctorError> {
    let path = cwd.join(DEFAULT_CONFIG_FILE);
    let from_file = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let config =
                DeployConfig::parse(&text, Path::new(DEFAULT_CONFIG_FILE)).map_err(|e| {
                    DoctorError::new(
                        e.to_string(),
                        "fix the file; every key is described in the example `deploy-kit.yaml`",
                    )
                })?;
            Some(config)
        }
        Err(_) => None,
    };
    let service = from_file.as_ref().map(|config| config.service.clone());
    let from_file = from_file
        .filter(|config| config.targets.contains_key(LOCAL_TARGET))
        .map(|config| (config, DEFAULT_CONFIG_FILE.to_string()));
    match from_file {
        Some(found) => Ok(found),
        None => {
            let text = format!(
                "version: 1\n\
                 default_target: {LOCAL_TARGET}\n\
                 targets:\n  {LOCAL_TARGET}:\n    platform: compose\n    bind: 127.0.0.1:{port}\n\
                 limits:\n  shutdown_grace_seconds: {LOCAL_SHUTDOWN_GRACE_SECONDS}\n"
            );
            let mut config = DeployConfig::parse(&text, Path::new("built-in defaults"))
                .map_err(|e| DoctorError::new(e.to_string(), "report this as a bug"))?;
            if let Some(service) = service {
                config.service = service;
            }
            Ok((config, "built-in defaults".to_string()))
        }
    }
}

/// The binary `up local` runs: the flag's, else the configured package
/// built with cargo ([`crate::artifact::local_binary`]).
pub fn service_binary(
    flag: Option<&Path>,
    config: &DeployConfig,
    cwd: &Path,
) -> Result<PathBuf, UpLocalError> {
    if let Some(path) = flag {
        return Ok(crate::artifact::given_binary(path)?);
    }
    let service = &config.service;
    let artifact = Artifact::resolve(service, cwd)?;
    // `up local` serves the embedded `local` storage: only `service.features`.
    let features: Vec<RequiredFeature> = service
        .features
        .iter()
        .map(|name| RequiredFeature {
            name: name.clone(),
            wanted_by: "`service.features`".into(),
        })
        .collect();
    Ok(crate::artifact::local_binary(
        &artifact,
        &features,
        &service.workspace,
    )?)
}

/// Runs the online doctor against the one local replica at `url`.
pub fn doctor_local(
    cwd: &Path,
    port: u16,
    url: &str,
    key_file: &Path,
    today: Date,
    prebuilt_binary: Option<&Path>,
) -> Result<DoctorOutput, DoctorError> {
    let (config, display) = local_config(cwd, port, key_file)?;
    let request = DoctorRequest {
        config: None,
        target: Some(LOCAL_TARGET.to_string()),
        mode: Mode::Online,
        format: OutputFormat::Report(Format::Text),
        fail_on: Severity::Error,
        apply_waivers: true,
        replicas: vec![url.to_string()],
        today: None,
        list_checks: false,
        explain: None,
        prebuilt_binary: prebuilt_binary.map(Path::to_path_buf),
    };
    crate::doctor::report(
        &config,
        &display,
        &cwd.join(DEFAULT_CONFIG_FILE),
        &request,
        Format::Text,
        today,
        &|_| None,
    )
}

/// A resolved `deploy-kit up local` invocation.
#[derive(Debug, Clone)]
pub struct UpLocalRequest {
    /// `--kit-service` / `DEPLOY_KIT_KIT_SERVICE`: a prebuilt binary to run
    /// instead of building `service.package`.
    pub kit_service: Option<PathBuf>,
    pub port: u16,
    /// Serve in the foreground until a signal (false: `--no-wait`).
    pub wait: bool,
}

/// Runs `deploy-kit up local` in the current directory and returns the exit
/// code: the doctor's with `--no-wait` (or when it fails), else the service's.
pub fn run(request: &UpLocalRequest) -> Result<u8, UpLocalError> {
    let cwd = std::env::current_dir().map_err(|source| UpLocalError::State {
        path: PathBuf::from("."),
        source,
    })?;
    let today = match std::env::var("DEPLOY_KIT_TODAY") {
        Ok(text) if !text.is_empty() => Date::parse(&text).map_err(|e| {
            UpLocalError::Doctor(DoctorError::new(
                format!("`DEPLOY_KIT_TODAY`: {e}"),
                "unset `DEPLOY_KIT_TODAY` or set it like `2026-01-31`",
            ))
        })?,
        _ => Date::today_utc(),
    };
    // Judge the config and build before starting anything: a typo is exit
    // 2, not a service that starts and is then torn down.
    let (config, _) = base_config(&cwd, request.port).map_err(UpLocalError::Doctor)?;
    let binary = service_binary(request.kit_service.as_deref(), &config, &cwd)?;
    let state = prepare_state(&cwd)?;
    let shown_key = state
        .key_file
        .strip_prefix(&cwd)
        .unwrap_or(&state.key_file)
        .display()
        .to_string();
    local_config(&cwd, request.port, &state.key_file).map_err(UpLocalError::Doctor)?;
    if state.created_key {
        eprintln!("made a new signing key in `{shown_key}` (mode 0600)");
    } else {
        eprintln!("reusing the signing key in `{shown_key}`");
    }
    let mut service = crate::ticker::while_waiting("service: starting", || {
        LocalService::start(&binary, request.port, &state, START_TIMEOUT)
    })?;
    if let Some(pid) = service.pid() {
        forward_signals(pid);
    }
    let name = binary
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    crate::output::human(&format!("{name} is serving at {}\n", service.url));
    let port = service
        .url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(request.port);
    let output = crate::ticker::while_waiting("doctor: checking the running service", || {
        doctor_local(
            &cwd,
            port,
            &service.url,
            &state.key_file,
            today,
            request.kit_service.as_deref(),
        )
    })
    .map_err(UpLocalError::Doctor)?;
    crate::output::human(&output.text);
    let _ = std::io::stdout().flush();
    if !request.wait || output.exit_code != 0 {
        if output.exit_code != 0 {
            eprintln!("hint: fix the findings above, then run `deploy-kit up local` again");
        }
        let _ = service.stop();
        return Ok(output.exit_code);
    }
    eprintln!("press Ctrl-C to stop");
    let status = service.wait().map_err(|source| UpLocalError::State {
        path: binary.clone(),
        source,
    })?;
    Ok(exit_code_of(status))
}

/// The child's exit code; a death by signal counts as a clean stop when it
/// was the signal we forwarded.
fn exit_code_of(status: ExitStatus) -> u8 {
    match status.code() {
        Some(code) => u8::try_from(code).unwrap_or(1),
        None => {
            #[cfg(unix)]
            {
                use std::os::unix::process::ExitStatusExt;
                if status.signal() == Some(15) {
                    return 0;
                }
            }
            1
        }
    }
}

/// On Ctrl-C or SIGTERM, sends SIGTERM to the service (it drains) instead of
/// letting `deploy-kit` die and orphan it; `run` then exits with its status.
fn forward_signals(pid: u32) {
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
                loop {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = terminate.recv() => {}
                    }
                    let _ = send_sigterm(pid);
                }
            }
            #[cfg(not(unix))]
            {
                let _ = pid;
                let _ = tokio::signal::ctrl_c().await;
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_keys_round_trip() {
        let bytes: Vec<u8> = (0..32).collect();
        let text = format!("hex:{}\n", to_hex(&bytes));
        assert_eq!(decode_hex_key(&text), Some(bytes));
        assert_eq!(decode_hex_key("hex:abc"), None);
        assert_eq!(decode_hex_key("plain"), None);
    }

    #[test]
    fn an_explicit_binary_must_exist() {
        let config = DeployConfig::parse(
            "version: 1\ntargets:\n  local: {platform: compose}\n",
            Path::new("deploy-kit.yaml"),
        )
        .unwrap();
        let missing = Path::new("/nonexistent/acme");
        let error = service_binary(Some(missing), &config, Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(
            error,
            UpLocalError::Artifact(ArtifactError::BinaryMissing(_))
        ));
        assert_eq!(error.exit_code(), 2);
        // No flag, no package and no `Cargo.toml`: nothing names a binary.
        let error = service_binary(None, &config, Path::new("/nonexistent")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("no `Cargo.toml` in `/nonexistent`"),
            "{error}"
        );
    }
}
