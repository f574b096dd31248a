//! Rolling replicas onto new keys, one at a time, so the others keep serving
//! (any replica continues any stream from its token alone).
//!
//! [`ReplicaSet`] is what a platform's roll implements: [`ProcessReplicas`]
//! restarts local service processes (SIGTERM, drain, start again on the
//! same port with the new environment, wait for `LISTENING` and `/readyz`),
//! Lambda updates the function's environment (`aws` module), Kubernetes
//! restarts the Deployment (`kubernetes` module), and [`PrintedRoll`]
//! prints the exact commands for platforms deploy-kit does not drive
//! (compose, Fly, ...).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::store::ReplicaKeys;
use crate::CommandError;

/// What a roll did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollOutcome {
    /// Every replica runs with the new keys.
    Rolled,
    /// deploy-kit cannot restart these replicas: the operator runs these commands.
    Manual(Vec<String>),
}

/// The replicas of one target.
pub trait ReplicaSet {
    /// How messages name them: `2 local `acme` processes`.
    fn describe(&self) -> String;
    /// Restarts every replica with `keys`, one at a time; `progress` gets one
    /// line per replica. Never prints a key value.
    fn roll(
        &mut self,
        keys: &ReplicaKeys,
        progress: &mut dyn FnMut(&str),
    ) -> Result<RollOutcome, CommandError>;
    /// Checked before a rotation changes any key: whether a roll would do
    /// only what it says (change the keys, nothing else).
    fn preflight(&mut self) -> Result<(), CommandError> {
        Ok(())
    }
}

/// A roll deploy-kit cannot do itself: it prints the commands that do it.
#[derive(Debug, Clone)]
pub struct PrintedRoll {
    pub what: String,
    pub commands: Vec<String>,
}

impl ReplicaSet for PrintedRoll {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn roll(
        &mut self,
        _keys: &ReplicaKeys,
        _progress: &mut dyn FnMut(&str),
    ) -> Result<RollOutcome, CommandError> {
        Ok(RollOutcome::Manual(self.commands.clone()))
    }
}

/// How long a replica may take to print `LISTENING` and answer `/readyz`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Local `<binary> serve` processes on loopback, each restarted on its
/// own port. Dropping the set kills every process it started.
pub struct ProcessReplicas {
    binary: PathBuf,
    /// Environment of every replica, apart from the key variables.
    base_env: Vec<(String, String)>,
    replicas: Vec<Replica>,
    log_dir: Option<PathBuf>,
    /// SIGTERM to exit: the service's `KIT_SHUTDOWN_GRACE` plus slack; then SIGKILL.
    pub stop_timeout: Duration,
}

struct Replica {
    port: u16,
    child: Option<Child>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl ProcessReplicas {
    /// Starts `count` replicas of `binary` on free loopback ports with
    /// `base_env` and `keys`; their logs go to `log_dir/replica-N.log`, else
    /// nowhere.
    pub fn start(
        binary: &Path,
        count: usize,
        base_env: Vec<(String, String)>,
        keys: &ReplicaKeys,
        log_dir: Option<&Path>,
    ) -> Result<ProcessReplicas, CommandError> {
        let mut set = ProcessReplicas {
            binary: binary.to_path_buf(),
            base_env,
            replicas: Vec::new(),
            log_dir: log_dir.map(Path::to_path_buf),
            stop_timeout: Duration::from_secs(20),
        };
        for index in 0..count {
            let (child, port) = set.spawn(index, 0, keys)?;
            set.replicas.push(Replica {
                port,
                child: Some(child),
            });
        }
        Ok(set)
    }

    /// Base URLs, `http://127.0.0.1:PORT`, in replica order.
    pub fn urls(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| format!("http://127.0.0.1:{}", r.port))
            .collect()
    }

    /// Process ids, in replica order (`None` for a stopped replica).
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.replicas
            .iter()
            .map(|r| r.child.as_ref().map(Child::id))
            .collect()
    }

    fn spawn(
        &self,
        index: usize,
        port: u16,
        keys: &ReplicaKeys,
    ) -> Result<(Child, u16), CommandError> {
        let mut command = Command::new(&self.binary);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env_remove("PORT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        for (name, value) in &self.base_env {
            command.env(name, value);
        }
        for (name, value) in keys.env() {
            match value {
                Some(value) => command.env(name, value),
                None => command.env_remove(name),
            };
        }
        let stderr = match &self.log_dir {
            Some(dir) => {
                let path = dir.join(format!("replica-{index}.log"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|error| {
                        CommandError::new(
                            format!("failed to open `{}`: {error}", path.display()),
                            "check that the log directory is writable",
                            1,
                        )
                    })?;
                Stdio::from(file)
            }
            None => Stdio::null(),
        };
        let mut child = command.stderr(stderr).spawn().map_err(|error| {
            CommandError::new(
                format!("failed to start `{}`: {error}", self.binary.display()),
                "build the service (`deploy-kit up local` builds `service.package`), or pass the path of a built binary",
                1,
            )
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
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        });
        let mut guard = Replica {
            port,
            child: Some(child),
        };
        let line = receiver.recv_timeout(READY_TIMEOUT).ok().flatten();
        let Some(url) = line.as_deref().and_then(|l| l.strip_prefix("LISTENING ")) else {
            let status = guard
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("no `LISTENING` within {} s", READY_TIMEOUT.as_secs()));
            return Err(CommandError::new(
                format!(
                    "replica {index} (`{}`) did not start: {status}",
                    self.binary.display()
                ),
                match &self.log_dir {
                    Some(dir) => format!(
                        "read `{}`",
                        dir.join(format!("replica-{index}.log")).display()
                    ),
                    None => "run the binary by hand to see its log".to_string(),
                },
                1,
            ));
        };
        let bound: u16 = url
            .rsplit_once(':')
            .and_then(|(_, p)| p.trim_end_matches('/').parse().ok())
            .unwrap_or(port);
        wait_ready(&format!("http://127.0.0.1:{bound}"), READY_TIMEOUT).map_err(|message| {
            CommandError::new(
                format!("replica {index}: {message}"),
                "read the replica's log",
                1,
            )
        })?;
        let child = guard.child.take().expect("the child is still held");
        Ok((child, bound))
    }

    /// SIGTERM, then wait for the drain (SIGKILL after `stop_timeout`).
    fn stop(&mut self, index: usize) -> Result<(), CommandError> {
        let Some(mut child) = self.replicas[index].child.take() else {
            return Ok(());
        };
        #[cfg(unix)]
        let signalled = crate::up_local::send_sigterm(child.id()).is_ok();
        #[cfg(not(unix))]
        let signalled = false;
        let deadline = Instant::now() + self.stop_timeout;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if signalled && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(());
                }
            }
        }
    }
}

impl ReplicaSet for ProcessReplicas {
    fn describe(&self) -> String {
        let name = self
            .binary
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{} local `{name}` processes", self.replicas.len())
    }

    fn roll(
        &mut self,
        keys: &ReplicaKeys,
        progress: &mut dyn FnMut(&str),
    ) -> Result<RollOutcome, CommandError> {
        let total = self.replicas.len();
        for index in 0..total {
            let started = Instant::now();
            self.stop(index)?;
            let port = self.replicas[index].port;
            let (child, _) = self.spawn(index, port, keys)?;
            self.replicas[index].child = Some(child);
            progress(&format!(
                "roll: replica {}/{total} (127.0.0.1:{port}) restarted and ready in {:.1} s",
                index + 1,
                started.elapsed().as_secs_f64()
            ));
        }
        Ok(RollOutcome::Rolled)
    }
}

/// Polls `base/readyz` until it answers 200.
pub fn wait_ready(base: &str, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + timeout;
    let url = format!("{base}/readyz");
    loop {
        let last = match agent.get(&url).call() {
            Ok(response) if response.status() == 200 => return Ok(()),
            Ok(response) => format!("answered {}", response.status()),
            Err(error) => error.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "`{url}` was not ready within {} s (last: {last})",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
