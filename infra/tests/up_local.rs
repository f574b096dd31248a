//! `deploy-kit up local --no-wait` as a user runs it: the real binary starts
//! the real `kit-service` (build it first: `cargo build -p kit-service`) in a
//! fresh working directory, and the doctor judges it; in a cargo workspace of
//! another name it builds and starts the configured binary.

use std::path::{Path, PathBuf};

use assert_cmd::cargo::CommandCargoExt;
use base64::Engine;

#[path = "common/service.rs"]
mod kit;
use kit::kit_service;

/// A fresh, empty working directory, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(name: &str) -> WorkDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let path = std::env::temp_dir().join(format!(
            "deploy-kit-up-local-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).unwrap();
        WorkDir(path)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `deploy-kit up local --no-wait --port 0 EXTRA...` in `dir`; returns
/// exit code, stdout and stderr.
fn up_local(dir: &Path, extra: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::cargo_bin("deploy-kit").unwrap();
    command
        .current_dir(dir)
        .args(["up", "local", "--no-wait", "--port", "0"])
        .args(extra);
    for (name, _) in std::env::vars() {
        if name.starts_with("DEPLOY_KIT_") || name.starts_with("VGI_") || name.starts_with("KIT_") {
            command.env_remove(name);
        }
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The key file's 32 random bytes, after checking its mode and format.
fn key_bytes(dir: &Path) -> Vec<u8> {
    let path = dir.join(".deploy-kit/local/signing-key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode of `{}`", path.display());
    }
    let text = std::fs::read_to_string(&path).unwrap();
    let hex = text.trim_end().strip_prefix("hex:").expect("a `hex:` key");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    assert_eq!(bytes.len(), 32, "key length");
    bytes
}

fn assert_key_not_shown(bytes: &[u8], stdout: &str, stderr: &str) {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let forms = [
        hex.clone(),
        hex.to_uppercase(),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ];
    for form in forms {
        assert!(!stdout.contains(&form), "key leaked to stdout:\n{stdout}");
        assert!(!stderr.contains(&form), "key leaked to stderr:\n{stderr}");
    }
}

#[test]
fn up_local_serves_passes_the_doctor_and_reuses_its_key() {
    let binary = kit_service();
    let dir = WorkDir::new("reuse");
    let flag = ["--kit-service", binary.to_str().unwrap()];

    let (code, stdout, stderr) = up_local(&dir.0, &flag);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("kit-service is serving at http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("target `local` from built-in defaults (online)"),
        "{stdout}"
    );
    assert!(stderr.contains("made a new signing key"), "{stderr}");
    // The smoke test made a real call to the running service.
    assert!(stdout.contains("pass    OPS004 smoke-after-up"), "{stdout}");
    assert!(dir.0.join(".deploy-kit/local/objects").is_dir());
    let first = key_bytes(&dir.0);
    assert_key_not_shown(&first, &stdout, &stderr);

    let (code, stdout, stderr) = up_local(&dir.0, &flag);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("reusing the signing key"), "{stderr}");
    assert_eq!(key_bytes(&dir.0), first, "the second run made a new key");
    assert_key_not_shown(&first, &stdout, &stderr);
}

#[test]
fn the_binary_can_come_from_the_environment() {
    let binary = kit_service();
    let dir = WorkDir::new("env");
    let mut command = std::process::Command::cargo_bin("deploy-kit").unwrap();
    let output = command
        .current_dir(&dir.0)
        .args(["up", "local", "--no-wait", "--port", "0"])
        .env("DEPLOY_KIT_KIT_SERVICE", &binary)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_missing_binary_exits_2_with_a_hint() {
    let dir = WorkDir::new("missing");
    let (code, stdout, stderr) = up_local(&dir.0, &["--kit-service", "/nonexistent/kit-service"]);
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("error: service binary `/nonexistent/kit-service` does not exist"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: pass the path of a built service binary to `--kit-service`"),
        "{stderr}"
    );
    assert!(
        !dir.0.join(".deploy-kit").exists(),
        "made state before failing"
    );
}

#[test]
fn other_targets_are_not_implemented_yet() {
    let dir = WorkDir::new("other");
    let output = std::process::Command::cargo_bin("deploy-kit")
        .unwrap()
        .current_dir(&dir.0)
        .args(["up", "cloud-run"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// A one-file crate whose binary `acme` prints `LISTENING` like the service
/// and holds the port; std only, so it builds in a second.
fn acme_crate(dir: &Path) {
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"acme-rpc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [[bin]]\nname = \"acme\"\npath = \"src/main.rs\"\n\n[features]\nfast = []\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/main.rs"),
        r#"fn main() {
    let args: Vec<String> = std::env::args().collect();
    assert_eq!(args[1], "serve", "{args:?}");
    if cfg!(feature = "fast") {
        std::fs::write("built-with-fast", "").unwrap();
    }
    let listener = std::net::TcpListener::bind(&args[3]).unwrap();
    println!("LISTENING http://{}", listener.local_addr().unwrap());
    for stream in listener.incoming() {
        drop(stream);
    }
}
"#,
    )
    .unwrap();
}

/// Runs `up local` in `dir` with the crate's own target directory.
fn up_local_in_crate(dir: &Path) -> (i32, String, String) {
    let mut command = std::process::Command::cargo_bin("deploy-kit").unwrap();
    command
        .current_dir(dir)
        .args(["up", "local", "--no-wait", "--port", "0"])
        .env("CARGO_TARGET_DIR", dir.join("target"));
    for (name, _) in std::env::vars() {
        if name.starts_with("DEPLOY_KIT_") || name.starts_with("VGI_") || name.starts_with("KIT_") {
            command.env_remove(name);
        }
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn up_local_builds_and_runs_the_configured_binary() {
    let dir = WorkDir::new("acme");
    acme_crate(&dir.0);
    std::fs::write(
        dir.0.join("deploy-kit.yaml"),
        "version: 1\nservice:\n  package: acme-rpc\n  binary: acme\n  features: [fast]\n\
         targets:\n  local:\n    platform: compose\n    bind: 127.0.0.1:8080\n",
    )
    .unwrap();
    let (code, stdout, stderr) = up_local_in_crate(&dir.0);
    assert!(
        stderr.contains("building `acme`: cargo build -p acme-rpc --bin acme --features fast"),
        "{stderr}"
    );
    assert!(
        stdout.contains("acme is serving at http://127.0.0.1:"),
        "exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(dir.0.join("target/debug/acme").is_file());
    assert!(
        dir.0.join("built-with-fast").is_file(),
        "built without `fast`"
    );
    // The doctor judged the built package, which exists.
    assert!(
        stdout.contains("pass    ART001 service-artifact-missing"),
        "{stdout}"
    );
    // The fake answers no probe, so the online doctor cannot pass; it ran.
    assert_ne!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn up_local_without_a_package_key_builds_the_only_binary_package() {
    let dir = WorkDir::new("default");
    acme_crate(&dir.0);
    // No deploy-kit.yaml: the built-in defaults, and the package from `cargo metadata`.
    let (_, stdout, stderr) = up_local_in_crate(&dir.0);
    assert!(
        stderr.contains("building `acme`: cargo build -p acme-rpc --bin acme\n"),
        "{stderr}"
    );
    assert!(stdout.contains("acme is serving at"), "{stdout}\n{stderr}");
    assert!(!dir.0.join("built-with-fast").exists());
}

#[test]
fn up_local_names_an_unknown_package_and_lists_the_workspace() {
    let dir = WorkDir::new("unknown");
    acme_crate(&dir.0);
    std::fs::write(
        dir.0.join("deploy-kit.yaml"),
        "version: 1\nservice:\n  package: acme-server\n  features: [turbo]\n\
         targets:\n  local:\n    platform: compose\n",
    )
    .unwrap();
    let (code, stdout, stderr) = up_local_in_crate(&dir.0);
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains(
            "error: no package `acme-server` in the cargo workspace `.`; its packages: `acme-rpc`"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("hint: set `service.package`"), "{stderr}");
    std::fs::write(
        dir.0.join("deploy-kit.yaml"),
        "version: 1\nservice:\n  package: acme-rpc\n  binary: acme\n  features: [turbo]\n\
         targets:\n  local:\n    platform: compose\n",
    )
    .unwrap();
    let (code, _, stderr) = up_local_in_crate(&dir.0);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("error: package `acme-rpc` has no feature `turbo` (wanted by `service.features`); its features: `fast`"),
        "{stderr}"
    );
    assert!(!dir.0.join("target").exists(), "built before checking");
}
