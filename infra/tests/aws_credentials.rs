//! AWS credentials as users have them (issue 16, item 6), each through a
//! real `deploy-kit secrets status` that reads a Secrets Manager secret on
//! moto_server, with no access key in the environment:
//! - a profile with `credential_process` (the process is run, its key signs),
//! - web identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, as CI
//!   OIDC sets them): moto's STS answers `AssumeRoleWithWebIdentity`,
//! - an SSO profile: a cached portal token and a recording fake of the SSO
//!   portal's `GetRoleCredentials` on loopback (no emulator exists).
//!
//! What moto received is read back with its request recorder and asserted:
//! the `Authorization` header names the access key each source produced.
//! `.ci/test-aws` starts moto and exports `KIT_TEST_MOTO_ENDPOINT`; without
//! it these tests fail, never skip.
#![cfg(feature = "aws")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use assert_cmd::Command;
use aws_config::{BehaviorVersion, Region};

fn moto() -> String {
    std::env::var("KIT_TEST_MOTO_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("`KIT_TEST_MOTO_ENDPOINT` is not set: run `bash .ci/test-aws`, which starts moto_server")
        })
}

/// A unique suffix per test in this process.
fn unique(label: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{label}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A project whose signing key is a secret on moto, and a private `HOME`
/// with no AWS files unless the test writes them.
struct Project {
    dir: tempfile::TempDir,
    secret: String,
}

impl Project {
    fn new(label: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let secret = format!("{}/ci/signing-key", unique(label));
        std::fs::write(
            dir.path().join("deploy-kit.yaml"),
            format!(
                "version: 1
service: {{name: {label}, environment: ci, package: kit-service}}
targets:
  lambda: {{platform: aws-lambda-function-url, region: us-east-1}}
signing_key: {{source: secret, secret: \"aws:{secret}\"}}
"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("home/.aws")).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(moto())
                .http_client(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                        ))
                        .build_https(),
                )
                .credentials_provider(aws_sdk_secretsmanager::config::Credentials::new(
                    "testing", "testing", None, None, "test",
                ))
                .load()
                .await;
            aws_sdk_secretsmanager::Client::new(&shared)
                .create_secret()
                .name(&secret)
                .secret_string(format!("hex:{}", "3c".repeat(32)))
                .send()
                .await
                .unwrap();
        });
        Project { dir, secret }
    }

    fn home(&self) -> std::path::PathBuf {
        self.dir.path().join("home")
    }

    /// `deploy-kit secrets status --target lambda` with only `env` as AWS
    /// settings (plus the moto endpoint).
    fn status(&self, env: &[(&str, String)]) -> (i32, String) {
        let mut command = Command::cargo_bin("deploy-kit").unwrap();
        command
            .current_dir(self.dir.path())
            .args(["secrets", "status", "--target", "lambda"])
            .env("HOME", self.home())
            .env("AWS_CONFIG_FILE", self.home().join(".aws/config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.home().join(".aws/credentials"),
            )
            .env("AWS_ENDPOINT_URL", moto())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for name in [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "DEPLOY_KIT_CONFIG",
            "DEPLOY_KIT_TARGET",
        ] {
            command.env_remove(name);
        }
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    }
}

#[path = "common/moto.rs"]
mod moto_recorder;

/// moto's request recorder: what it received while `f` ran.
fn recorded(f: impl FnOnce()) -> Vec<serde_json::Value> {
    moto_recorder::recorded(&moto(), f)
}

/// Recorded requests signed with `access_key`.
fn signed_with<'a>(
    requests: &'a [serde_json::Value],
    access_key: &str,
) -> Vec<&'a serde_json::Value> {
    requests
        .iter()
        .filter(|request| {
            request["headers"]
                .as_object()
                .and_then(|headers| {
                    headers
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                })
                .and_then(|(_, value)| value.as_str())
                .is_some_and(|value| value.contains(&format!("Credential={access_key}/")))
        })
        .collect()
}

#[test]
fn a_profile_without_credentials_is_a_clear_error() {
    let project = Project::new("credsnone");
    std::fs::write(
        project.home().join(".aws/config"),
        "[profile empty]\nregion = us-east-1\n",
    )
    .unwrap();
    let (code, output) = project.status(&[("AWS_PROFILE", "empty".into())]);
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("credentials"), "{output}");
    assert!(output.contains("hint: "), "{output}");
}

#[test]
fn credential_process_runs_and_its_key_signs_the_calls() {
    let project = Project::new("credsproc");
    let key = unique("AKIDPROC");
    let marker = project.dir.path().join("process-ran");
    let script = project.dir.path().join("credentials.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\nprintf '{{\"Version\": 1, \"AccessKeyId\": \"{key}\", \"SecretAccessKey\": \"process-secret\"}}'\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        project.home().join(".aws/config"),
        format!(
            "[profile team]\nregion = us-east-1\ncredential_process = {} --profile team\n",
            script.display()
        ),
    )
    .unwrap();

    let mut result = (0, String::new());
    let requests = recorded(|| result = project.status(&[("AWS_PROFILE", "team".into())]));
    let (code, output) = result;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains(&project.secret), "{output}");
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        "--profile team",
        "the process ran with its arguments"
    );
    let signed = signed_with(&requests, &key);
    assert!(
        !signed.is_empty(),
        "moto saw calls signed by the process's key"
    );
    assert!(
        signed
            .iter()
            .any(|r| r["headers"].to_string().contains("secretsmanager.")),
        "{signed:?}"
    );
}

#[test]
fn web_identity_is_exchanged_at_sts_and_the_role_signs_the_calls() {
    let project = Project::new("credsoidc");
    let token_file = project.dir.path().join("oidc-token");
    let token = format!("eyJ.{}.sig", unique("ci-oidc-token"));
    std::fs::write(&token_file, &token).unwrap();
    let role = "arn:aws:iam::123456789012:role/deploy-from-ci";

    let mut result = (0, String::new());
    let requests = recorded(|| {
        result = project.status(&[
            ("AWS_ROLE_ARN", role.into()),
            (
                "AWS_WEB_IDENTITY_TOKEN_FILE",
                token_file.display().to_string(),
            ),
            ("AWS_ROLE_SESSION_NAME", "deploy-kit-ci".into()),
        ])
    });
    let (code, output) = result;
    assert_eq!(code, 0, "{output}");
    // The exchange: STS got the token and the role (form-encoded body).
    let exchange = requests
        .iter()
        .find(|request| {
            let body = decoded_body(request);
            body.contains("Action=AssumeRoleWithWebIdentity") && body.contains(&token)
        })
        .unwrap_or_else(|| panic!("no AssumeRoleWithWebIdentity with our token: {requests:?}"));
    let body = decoded_body(exchange);
    assert!(
        body.contains("RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Fdeploy-from-ci"),
        "{body}"
    );
    assert!(body.contains("RoleSessionName=deploy-kit-ci"), "{body}");
    // Then the Secrets Manager call is signed by a temporary key (ASIA...)
    // with a session token, not by any long-term key.
    // (Other tests run at the same time: only this project's reads count.)
    let signed: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| {
            let headers = r["headers"].to_string();
            headers.contains("secretsmanager.")
                && !headers.contains("secretsmanager.CreateSecret")
                && decoded_body(r).contains(&project.secret)
        })
        .collect();
    assert!(!signed.is_empty(), "{requests:?}");
    for request in signed {
        let headers = request["headers"].to_string().to_ascii_lowercase();
        assert!(headers.contains("credential=asia"), "{headers}");
        assert!(headers.contains("x-amz-security-token"), "{headers}");
    }
}

fn decoded_body(request: &serde_json::Value) -> String {
    let body = request["body"].as_str().unwrap_or_default();
    if request["body_encoded"].as_bool() == Some(true) {
        use base64::Engine;
        String::from_utf8_lossy(
            &base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap_or_default(),
        )
        .into_owned()
    } else {
        body.to_string()
    }
}

/// A fake SSO portal (`GET /federation/credentials`) on loopback that
/// records each request line and bearer token and answers with `key`.
/// Each request the fake portal received: request line and bearer token.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

fn sso_portal(key: String) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut bearer = String::new();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("x-amz-sso_bearer_token") {
                        bearer = value.trim().to_string();
                    }
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            record
                .lock()
                .unwrap()
                .push((request_line.trim_end().to_string(), bearer));
            let expiration = (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 3600)
                * 1000;
            let answer = format!(
                r#"{{"roleCredentials":{{"accessKeyId":"{key}","secretAccessKey":"sso-secret","sessionToken":"sso-session","expiration":{expiration}}}}}"#
            );
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn an_sso_profile_uses_the_cached_token_at_the_portal_and_its_role_key_signs() {
    let project = Project::new("credssso");
    let key = unique("ASIASSO");
    let (portal, seen) = sso_portal(key.clone());
    let start_url = "https://acme.awsapps.com/start";
    std::fs::write(
        project.home().join(".aws/config"),
        format!(
            "[profile dev]\nregion = us-east-1\nsso_start_url = {start_url}\nsso_region = us-east-1\nsso_account_id = 111122223333\nsso_role_name = Deployer\n"
        ),
    )
    .unwrap();
    // What `aws sso login` leaves: the token cached under the SHA-1 of the start URL.
    let cache = project.home().join(".aws/sso/cache");
    std::fs::create_dir_all(&cache).unwrap();
    let token = unique("portal-token-");
    let name: String = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        start_url.as_bytes(),
    )
    .as_ref()
    .iter()
    .map(|byte| format!("{byte:02x}"))
    .collect();
    std::fs::write(
        cache.join(format!("{name}.json")),
        format!(
            r#"{{"startUrl": "{start_url}", "region": "us-east-1", "accessToken": "{token}", "expiresAt": "2099-01-01T00:00:00Z"}}"#
        ),
    )
    .unwrap();

    let mut result = (0, String::new());
    let requests = recorded(|| {
        result = project.status(&[
            ("AWS_PROFILE", "dev".into()),
            ("AWS_ENDPOINT_URL_SSO", portal.clone()),
        ])
    });
    let (code, output) = result;
    assert_eq!(code, 0, "{output}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (line, bearer) = &seen[0];
    assert!(line.starts_with("GET /federation/credentials?"), "{line}");
    assert!(line.contains("role_name=Deployer"), "{line}");
    assert!(line.contains("account_id=111122223333"), "{line}");
    assert_eq!(bearer, &token, "the cached portal token");
    assert!(
        !signed_with(&requests, &key).is_empty(),
        "the role's key signed the Secrets Manager call"
    );
}
