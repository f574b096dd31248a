//! The `processes` runtime's supervisor: the service's replicas and nginx as
//! plain processes on 127.0.0.1, each in its own process group (a Ctrl-C in
//! the terminal reaches `deploy-kit`, which stops them in order), with its
//! output in a log file so it outlives `up --no-wait`.
//!
//! A process is recorded by pid *and* start time (from `/proc`), so a later
//! `up` or `down` never signals an unrelated process that reused the pid.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::CommandError;

/// How long a replica may take to print `LISTENING`, and nginx to answer.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to the service's shutdown grace before a stop becomes SIGKILL.
pub const STOP_MARGIN: Duration = Duration::from_secs(5);

/// A started process: what the state file records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub pid: u32,
    /// Clock ticks since boot when it started (`/proc/<pid>/stat` field 22); 0 when unknown.
    pub start_time: u64,
    pub log: PathBuf,
}

/// The start time of process `pid`, or `None` when it is gone or a zombie
/// (an exited child nobody reaped still answers `kill(pid, 0)`).
#[cfg(target_os = "linux")]
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ...`: comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(not(target_os = "linux"))]
pub fn start_time(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)?;
    rustix::process::test_kill_process(pid).ok().map(|()| 0)
}

impl Running {
    /// True while the recorded process (same pid, same start time) runs.
    pub fn alive(&self) -> bool {
        start_time(self.pid).is_some_and(|t| self.start_time == 0 || t == self.start_time)
    }

    /// Sends `signal`, waits up to `grace` for the process to exit, then
    /// SIGKILLs it. Returns `false` when it was already gone.
    pub fn stop(&self, signal: rustix::process::Signal, grace: Duration) -> bool {
        if !self.alive() {
            return false;
        }
        let Some(pid) = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            return false;
        };
        let _ = rustix::process::kill_process(pid, signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }
}

/// Starts `command` in its own process group with stdout and stderr in
/// `log` (truncated). The child handle is returned so a foreground `up` can
/// reap it; `--no-wait` drops it and the process runs on.
pub fn spawn(mut command: Command, log: &Path) -> Result<(Child, Running), CommandError> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io_error(log, e))?;
    }
    let file = std::fs::File::create(log).map_err(|e| io_error(log, e))?;
    let err = file.try_clone().map_err(|e| io_error(log, e))?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err));
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let program = command.get_program().to_string_lossy().into_owned();
    let child = command.spawn().map_err(|error| {
        CommandError::new(
            format!("failed to start `{program}`: {error}"),
            "check the path given to `--kit-service` / `--nginx`",
            2,
        )
    })?;
    let pid = child.id();
    // A just-forked child always has /proc; 0 only off Linux.
    let start = start_time(pid).unwrap_or(0);
    Ok((
        child,
        Running {
            pid,
            start_time: start,
            log: log.to_path_buf(),
        },
    ))
}

fn io_error(path: &Path, error: std::io::Error) -> CommandError {
    CommandError::new(
        format!("failed to write `{}`: {error}", path.display()),
        "check that the target's output directory is writable",
        1,
    )
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(log) {
        let _ = file.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits for the service's `LISTENING <url>` line in its log; the URL.
pub fn wait_listening(
    child: &mut Child,
    running: &Running,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(&running.log).unwrap_or_default();
        if let Some(url) = text
            .lines()
            .find_map(|line| line.trim().strip_prefix("LISTENING "))
        {
            return Ok(url.trim().trim_end_matches('/').to_string());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before listening ({status})"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "did not print `LISTENING` within {} s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `url` until it answers 200, the child exits, or `timeout` passes.
pub fn wait_http(child: &mut Child, url: &str, timeout: Duration) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    wait_until(child, timeout, Duration::from_millis(100), || {
        agent.get(url).call().is_ok()
    })
    .map_err(|not_ready| {
        not_ready.describe(|| format!("`{url}` did not answer within {} s", timeout.as_secs()))
    })
}

/// Why [`wait_until`] gave up.
enum NotReady {
    Exited(std::process::ExitStatus),
    /// The child was killed and reaped.
    TimedOut,
}

impl NotReady {
    /// The error text; `timed_out` names what did not answer.
    fn describe(self, timed_out: impl FnOnce() -> String) -> String {
        match self {
            NotReady::Exited(status) => format!("exited ({status})"),
            NotReady::TimedOut => timed_out(),
        }
    }
}

/// Polls `ready` every `every` until it holds, the child exits, or `timeout`
/// passes (then the child is killed and reaped).
fn wait_until(
    child: &mut Child,
    timeout: Duration,
    every: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NotReady::Exited(status));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NotReady::TimedOut);
        }
        std::thread::sleep(every);
    }
}

/// True when `url` answers 200 within two seconds.
pub fn answers(url: &str) -> bool {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent.get(url).call().is_ok()
}

/// True when a Redis on `127.0.0.1:port` answers `PING` within a second.
pub fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

/// Polls a Redis on `127.0.0.1:port` until it answers, the child exits, or
/// `timeout` passes.
pub fn wait_redis(child: &mut Child, port: u16, timeout: Duration) -> Result<(), String> {
    wait_until(child, timeout, Duration::from_millis(50), || {
        redis_answers(port)
    })
    .map_err(|not_ready| {
        not_ready.describe(|| {
            format!(
                "did not answer PING on 127.0.0.1:{port} within {} s",
                timeout.as_secs()
            )
        })
    })
}

/// A free loopback port (the OS picks; a race with another binder is unlikely).
pub fn free_port() -> Result<u16, CommandError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| {
            CommandError::new(
                format!("failed to find a free port on 127.0.0.1: {error}"),
                "pass `--port PORT`",
                1,
            )
        })
}

/// Finds `name` in `path_var`, then in the system directories a non-root
/// `PATH` often lacks (`nginx` lives in `/usr/sbin`).
pub fn find_program(name: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    path_var
        .into_iter()
        .flat_map(std::env::split_paths)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let pid = std::process::id();
        let start = start_time(pid).expect("this process has a start time");
        let me = Running {
            pid,
            start_time: start,
            log: PathBuf::new(),
        };
        assert!(me.alive());
        #[cfg(target_os = "linux")]
        assert!(
            !Running {
                start_time: start + 1,
                ..me
            }
            .alive(),
            "a reused pid is not the recorded process"
        );
    }

    #[test]
    fn a_stopped_child_is_gone() {
        let mut command = Command::new("sleep");
        command.arg("30");
        let log = std::env::temp_dir().join(format!("deploy-kit-sleep-{}.log", std::process::id()));
        let (mut child, running) = spawn(command, &log).unwrap();
        assert!(running.alive());
        std::thread::spawn(move || child.wait());
        assert!(running.stop(rustix::process::Signal::TERM, Duration::from_secs(5)));
        assert!(!running.alive());
        assert!(!running.stop(rustix::process::Signal::TERM, Duration::from_secs(1)));
        let _ = std::fs::remove_file(log);
    }
}
