//! Progress as people see it: on a real pseudo-terminal (util-linux
//! `script`), a wait longer than a second is one line redrawn with its
//! elapsed time; redirected, the same run prints plain lines with no
//! carriage-return redraws and no ANSI escapes; `NO_COLOR` keeps the
//! service's own log lines plain even on a terminal.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

#[path = "common/service.rs"]
mod kit;
use kit::kit_service;

const CONFIG: &str = "version: 1
service: {name: ticksvc, environment: ci}
targets:
  dev: {platform: compose}
";

struct WorkDir(PathBuf);

impl WorkDir {
    fn new(name: &str) -> WorkDir {
        let dir =
            std::env::temp_dir().join(format!("deploy-kit-progress-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        WorkDir(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config whose `dev` target is locked by another run.
fn locked_target(dir: &Path) {
    std::fs::write(dir.join("deploy-kit.yaml"), CONFIG).unwrap();
    let state_dir = dir.join(".deploy-kit/ci/dev");
    std::fs::create_dir_all(&state_dir).unwrap();
    std::fs::write(state_dir.join("state.json"), "{}").unwrap();
    let holder = serde_json::json!({
        "id": "0123456789abcdef",
        "who": "ops@elsewhere",
        "pid": 1,
        "operation": "up dev",
        "created": 1_700_000_000u64,
        "version": env!("CARGO_PKG_VERSION"),
    });
    std::fs::write(state_dir.join("state.lock"), holder.to_string()).unwrap();
}

fn deploy_kit() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_deploy-kit"))
}

/// `command` run under a pseudo-terminal; returns its exit code and
/// everything it wrote to the terminal.
fn on_a_terminal(dir: &Path, command: &str, env: &[(&str, &str)]) -> (i32, String) {
    let transcript = dir.join("typescript");
    let mut script = Command::new("script");
    script
        .current_dir(dir)
        .args(["--quiet", "--return", "--flush", "--command", command])
        .arg(&transcript)
        .env("TERM", "xterm")
        .stdout(std::process::Stdio::null())
        .env_remove("NO_COLOR")
        .env_remove("DEPLOY_KIT_PROGRESS");
    for (name, value) in env {
        script.env(name, value);
    }
    let status = script
        .status()
        .expect("util-linux `script` runs (apt-get install bsdutils)");
    let text = String::from_utf8_lossy(&std::fs::read(&transcript).unwrap()).into_owned();
    (status.code().unwrap_or(-1), text)
}

#[test]
fn a_lock_wait_is_redrawn_on_a_terminal_and_plain_when_redirected() {
    let dir = WorkDir::new("lock");
    locked_target(&dir.0);
    let command = format!(
        "{} state push --target dev --lock-timeout 3",
        deploy_kit().display()
    );

    let (code, text) = on_a_terminal(&dir.0, &command, &[]);
    assert_eq!(code, 3, "a held lock is exit 3:\n{text:?}");
    assert!(
        text.contains("\r  state: waiting for the lock of `dev` (1."),
        "redrawn in place with the elapsed seconds:\n{text:?}"
    );
    assert!(
        text.contains("\r  state: waiting for the lock of `dev` (2."),
        "and again a second later:\n{text:?}"
    );
    assert!(text.contains("ops@elsewhere"), "{text:?}");
    assert!(!text.contains('\u{1b}'), "no ANSI escapes:\n{text:?}");

    let output = Command::cargo_bin("deploy-kit")
        .unwrap()
        .current_dir(&dir.0)
        .args(["state", "push", "--target", "dev", "--lock-timeout", "3"])
        .env_remove("DEPLOY_KIT_PROGRESS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("is locked by `ops@elsewhere` (`up dev`); waiting up to 3 s"),
        "{stderr}"
    );
    assert!(!stderr.contains('\r'), "no redraws in a pipe: {stderr:?}");
    assert!(!stderr.contains('\u{1b}'), "no ANSI escapes: {stderr:?}");

    // The same terminal, told to be plain.
    let (code, text) = on_a_terminal(&dir.0, &command, &[("DEPLOY_KIT_PROGRESS", "plain")]);
    assert_eq!(code, 3, "{text:?}");
    assert!(!text.contains("\r  state: waiting"), "{text:?}");
}

#[test]
fn up_local_logs_are_plain_unless_a_terminal_without_no_color_shows_them() {
    let dir = WorkDir::new("local");
    let command = format!(
        "{} up local --no-wait --port 0 --kit-service {}",
        deploy_kit().display(),
        kit_service().display()
    );

    // Redirected: not one escape, from deploy-kit or from the service's log.
    let output = Command::cargo_bin("deploy-kit")
        .unwrap()
        .current_dir(&dir.0)
        .args(["up", "local", "--no-wait", "--port", "0", "--kit-service"])
        .arg(kit_service())
        .env_remove("NO_COLOR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("INFO"), "the service logged: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr:?}");

    // On a terminal the service colours its log, unless NO_COLOR is set.
    let (code, text) = on_a_terminal(&dir.0, &command, &[]);
    assert_eq!(code, 0, "{text:?}");
    assert!(text.contains("\u{1b}["), "coloured on a terminal: {text:?}");
    let (code, text) = on_a_terminal(&dir.0, &command, &[("NO_COLOR", "1")]);
    assert_eq!(code, 0, "{text:?}");
    assert!(text.contains("INFO"), "{text:?}");
    assert!(!text.contains('\u{1b}'), "NO_COLOR holds: {text:?}");
}
