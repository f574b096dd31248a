//! `environments:` through the CLI: `--env` and `DEPLOY_KIT_ENV` pick the
//! overlay, and the plan's names, state path and settings follow it.

use assert_cmd::Command;

const CONFIG: &str = "version: 1
service: {name: envsvc, environment: production, package: kit-service}
targets:
  lambda: {platform: aws-lambda-function-url, region: us-east-1}
limits: {max_request_bytes: 5000000, max_response_bytes: 5000000, externalize_threshold_bytes: 4000000, upload_urls: true, request_timeout_seconds: 60}
storage: {provider: s3, bucket: envsvc-data, prefix: vgi-rpc/, credential: instance-role}
signing_key: {source: secret, secret: aws:envsvc/production/signing-key}
environments:
  production: {}
  staging:
    storage: {bucket: envsvc-staging-data}
    signing_key: {secret: aws:envsvc/staging/signing-key}
";

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy-kit.yaml"), CONFIG).unwrap();
    dir
}

fn plan(dir: &std::path::Path, args: &[&str], env: Option<&str>) -> (i32, String, String) {
    let mut command = Command::cargo_bin("deploy-kit").unwrap();
    command
        .current_dir(dir)
        .args(["plan", "lambda", "--json", "--force"])
        .args(args)
        .env_remove("DEPLOY_KIT_CONFIG")
        .env_remove("DEPLOY_KIT_TARGET")
        .env_remove("DEPLOY_KIT_ENV");
    if let Some(env) = env {
        command.env("DEPLOY_KIT_ENV", env);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn env_picks_the_overlay_for_names_state_and_storage() {
    let dir = project();
    let (code, staging, stderr) = plan(dir.path(), &["--env", "staging"], None);
    assert_eq!(code, 2, "a first plan has changes\n{staging}\n{stderr}");
    let staging: serde_json::Value = serde_json::from_str(&staging).unwrap();
    assert_eq!(staging["environment"], "staging");
    assert_eq!(staging["state"], ".deploy-kit/staging/lambda/state.json");
    let text = staging.to_string();
    assert!(text.contains("envsvc-staging-data"), "{text}");
    assert!(text.contains("envsvc-staging"), "{text}");
    assert!(!text.contains("\"envsvc-data\""), "{text}");

    // DEPLOY_KIT_ENV does the same; no choice is `service.environment`.
    let (_, from_env, _) = plan(dir.path(), &[], Some("staging"));
    let from_env: serde_json::Value = serde_json::from_str(&from_env).unwrap();
    assert_eq!(from_env["environment"], "staging");
    let (code, production, stderr) = plan(dir.path(), &[], None);
    assert_eq!(code, 2, "{stderr}");
    let production: serde_json::Value = serde_json::from_str(&production).unwrap();
    assert_eq!(production["environment"], "production");
    assert!(production.to_string().contains("\"envsvc-data\""));
    assert!(production.to_string().contains("envsvc-production"));

    // Exit 1: an error (plan's 2 means "changes").
    let (code, _, stderr) = plan(dir.path(), &["--env", "qa"], None);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("no environment `qa`; known: production, staging"),
        "{stderr}"
    );
}
