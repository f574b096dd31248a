//! The `kit-service` binary next to the `deploy-kit` under test, and a
//! `kit-service serve` process on a free loopback port for a test to call.
//! (Each test binary that includes it uses part of it.)
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `kit-service` next to the `deploy-kit` under test, as `cargo build` leaves it.
pub fn kit_service() -> PathBuf {
    let binary = Path::new(env!("CARGO_BIN_EXE_deploy-kit"))
        .parent()
        .unwrap()
        .join("kit-service");
    assert!(
        binary.exists(),
        "`{}` is missing: run `cargo build -p kit-service` first",
        binary.display()
    );
    binary
}

/// A kit-service process on a free loopback port, killed on drop.
pub struct Service {
    pub child: Child,
    /// What it printed after `LISTENING `.
    pub url: String,
    /// A directory that must live as long as the process (its storage).
    pub dir: Option<tempfile::TempDir>,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kit-service serve` (demo protocol) with `settings` as its
/// environment: no `VGI_*` or `KIT_*` variable of the test's own gets in.
pub fn service(settings: &[(&str, &str)]) -> Service {
    let mut command = Command::new(kit_service());
    command
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("VGI_") || name.starts_with("KIT_") {
            command.env_remove(name);
        }
    }
    command.envs(settings.iter().copied());
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("kit-service did not report its address: {line:?}"))
        .to_string();
    Service {
        child,
        url,
        dir: None,
    }
}
