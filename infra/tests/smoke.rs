//! OPS004, the smoke test `up` ends with, against real `kit-service serve`
//! processes on loopback: an open service under a config that requires auth
//! fails it; a secured one passes with the right key, fails with a wrong
//! one, and without `DEPLOY_KIT_API_KEY` only its refusal is checked.

use std::path::{Path, PathBuf};
use std::process::Command;

use assert_cmd::cargo::CommandCargoExt;

#[path = "common/service.rs"]
mod kit;
use kit::{Service, service};

const KEY: &str = "smoke-key-0123456789abcdef";

/// `kit-service serve` with a fixed signing key and `env`.
fn start(env: &[(&str, &str)]) -> Service {
    let key = format!("hex:{}", "ab".repeat(32));
    let mut settings = vec![("VGI_SIGNING_KEY", key.as_str())];
    settings.extend_from_slice(env);
    service(&settings)
}

fn project(label: &str, auth_required: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "deploy-kit-smoke-{label}-{auth_required}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("deploy-kit.yaml"),
        format!(
            "version: 1
service: {{name: smokesvc, environment: ci}}
targets:
  live: {{platform: kubernetes, instances: 1}}
auth:
  required: {auth_required}
  api_keys: k8s:smokesvc-api-keys
signing_key: {{source: secret, secret: k8s:smokesvc-signing-key}}
"
        ),
    )
    .unwrap();
    dir
}

/// `doctor --online` of `replica` with `key` as `DEPLOY_KIT_API_KEY`:
/// exit code and the OPS004 finding.
fn smoke(dir: &Path, replica: &str, key: Option<&str>) -> (i32, serde_json::Value) {
    let mut command = Command::cargo_bin("deploy-kit").unwrap();
    command
        .current_dir(dir)
        .args(["doctor", "--online", "--target", "live", "--format", "json"])
        .args(["--replica", replica])
        .env_remove("DEPLOY_KIT_CONFIG")
        .env_remove("DEPLOY_KIT_TARGET")
        .env_remove("DEPLOY_KIT_API_KEY");
    if let Some(key) = key {
        command.env("DEPLOY_KIT_API_KEY", key);
    }
    let output = command.output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let finding = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "OPS004")
        .expect("OPS004 is in the report")
        .clone();
    (output.status.code().unwrap_or(-1), finding)
}

#[test]
fn an_open_service_fails_the_smoke_test_when_auth_is_required() {
    let open = start(&[]);
    let dir = project("open", true);
    let (code, finding) = smoke(&dir, &open.url, Some(KEY));
    assert_eq!(finding["outcome"], "fail", "{finding}");
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains("answered a call without credentials although auth is required"),
        "{message}"
    );
    assert!(
        finding["hint"]
            .as_str()
            .unwrap()
            .contains("deploy-kit rollback"),
        "{finding}"
    );
    assert_eq!(code, 1, "an error-severity finding: exit 1");

    // The same service under a config that does not require auth passes.
    let dir = project("open", false);
    let (code, finding) = smoke(&dir, &open.url, None);
    assert_eq!(finding["outcome"], "pass", "{finding}");
    let _ = code;
}

#[test]
fn a_secured_service_passes_with_its_key_and_fails_with_another() {
    let secured = start(&[
        ("KIT_REQUIRE_AUTH", "true"),
        ("KIT_API_KEYS", &format!("smoke={KEY}")),
    ]);
    let dir = project("secured", true);

    let (_, finding) = smoke(&dir, &secured.url, Some(KEY));
    assert_eq!(finding["outcome"], "pass", "{finding}");

    let (code, finding) = smoke(&dir, &secured.url, Some("not-the-key"));
    assert_eq!(finding["outcome"], "fail", "{finding}");
    let message = finding["message"].as_str().unwrap();
    assert!(message.contains("401"), "{message}");
    assert_eq!(code, 1);

    let (_, finding) = smoke(&dir, &secured.url, None);
    assert_eq!(finding["outcome"], "skip", "{finding}");
    assert!(
        finding
            .to_string()
            .contains("no `DEPLOY_KIT_API_KEY` was given: checked only that"),
        "{finding}"
    );
}
