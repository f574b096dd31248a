//! `deploy-kit secrets rotate` on an AWS target against moto_server: the key
//! moves through Secrets Manager version stages (AWSPENDING, AWSCURRENT,
//! AWSPREVIOUS) and each roll rewrites the Lambda function's key variables,
//! keeping the rest of its environment. `.ci/test-secrets` starts moto and
//! exports `KIT_TEST_MOTO_ENDPOINT`; without it this test fails, never skips.
#![cfg(feature = "aws")]

use std::collections::HashMap;
use std::path::PathBuf;

use assert_cmd::Command;
use aws_config::{BehaviorVersion, Region};

fn moto() -> String {
    std::env::var("KIT_TEST_MOTO_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("`KIT_TEST_MOTO_ENDPOINT` is not set: run `bash .ci/test-secrets`, which starts moto_server")
        })
}

struct Cloud {
    runtime: tokio::runtime::Runtime,
    secrets: aws_sdk_secretsmanager::Client,
    iam: aws_sdk_iam::Client,
    lambda: aws_sdk_lambda::Client,
}

impl Cloud {
    fn new(endpoint: &str) -> Cloud {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shared = runtime.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .http_client(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                        ))
                        .build_https(),
                )
                .load(),
        );
        Cloud {
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
            iam: aws_sdk_iam::Client::new(&shared),
            lambda: aws_sdk_lambda::Client::new(&shared),
            runtime,
        }
    }

    /// Version id -> stages.
    fn stages(&self, name: &str) -> HashMap<String, Vec<String>> {
        let page = self
            .runtime
            .block_on(
                self.secrets
                    .list_secret_version_ids()
                    .secret_id(name)
                    .send(),
            )
            .unwrap();
        page.versions()
            .iter()
            .map(|v| {
                (
                    v.version_id().unwrap().to_string(),
                    v.version_stages().to_vec(),
                )
            })
            .filter(|(_, stages)| !stages.is_empty())
            .collect()
    }

    fn holding(&self, name: &str, stage: &str) -> Option<String> {
        self.stages(name)
            .into_iter()
            .find(|(_, stages)| stages.iter().any(|s| s == stage))
            .map(|(id, _)| id)
    }

    fn value(&self, name: &str, version: &str) -> String {
        self.runtime
            .block_on(
                self.secrets
                    .get_secret_value()
                    .secret_id(name)
                    .version_id(version)
                    .send(),
            )
            .unwrap()
            .secret_string()
            .unwrap()
            .to_string()
    }

    fn environment(&self, function: &str) -> HashMap<String, String> {
        self.environment_of(function, None)
    }

    /// The environment of `qualifier` (a version or the alias), `$LATEST` without one.
    fn environment_of(&self, function: &str, qualifier: Option<&str>) -> HashMap<String, String> {
        self.runtime
            .block_on(
                self.lambda
                    .get_function_configuration()
                    .function_name(function)
                    .set_qualifier(qualifier.map(str::to_string))
                    .send(),
            )
            .unwrap()
            .environment()
            .and_then(|e| e.variables())
            .cloned()
            .unwrap_or_default()
    }
}

#[test]
fn rotation_moves_secret_stages_and_the_function_environment() {
    let endpoint = moto();
    let cloud = Cloud::new(&endpoint);
    let name = format!("dk-rot-{}", std::process::id());
    let function = format!("{name}-ci");
    let secret = format!("{name}/ci/signing-key");
    let first = format!("hex:{}", "5a".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    // ART001 checks this repository's kit-service.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .display()
        .to_string();
    std::fs::write(
        dir.path().join("deploy-kit.yaml"),
        format!(
            "version: 1
service: {{name: {name}, environment: ci, package: kit-service, workspace: \"{root}\"}}
targets:
  lambda: {{platform: aws-lambda-function-url, region: us-east-1}}
signing_key:
  source: secret
  secret: aws:{secret}
  token_ttl_seconds: 600
"
        ),
    )
    .unwrap();

    // What `up` makes, made directly: the secret, a role, the function.
    cloud
        .runtime
        .block_on(
            cloud
                .secrets
                .create_secret()
                .name(&secret)
                .secret_string(&first)
                .send(),
        )
        .unwrap();
    let role = cloud
        .runtime
        .block_on(
            cloud
                .iam
                .create_role()
                .role_name(&function)
                .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#)
                .send(),
        )
        .unwrap();
    let package = deploy_kit::engine::zip::write(&[deploy_kit::engine::zip::ZipEntry {
        name: "bootstrap",
        contents: b"#!/bin/sh\n",
        mode: 0o755,
    }])
    .unwrap();
    cloud
        .runtime
        .block_on(
            cloud
                .lambda
                .create_function()
                .function_name(&function)
                .runtime(aws_sdk_lambda::types::Runtime::from("provided.al2023"))
                .handler("bootstrap")
                .role(role.role().unwrap().arn())
                .environment(
                    aws_sdk_lambda::types::Environment::builder()
                        .variables("VGI_SIGNING_KEY", &first)
                        .variables("KIT_TOKEN_TTL", "600")
                        .build(),
                )
                .code(
                    aws_sdk_lambda::types::FunctionCode::builder()
                        .zip_file(aws_sdk_lambda::primitives::Blob::new(package))
                        .build(),
                )
                .send(),
        )
        .unwrap();

    let mut everything = String::new();
    let mut run = |args: &[&str]| -> (i32, String) {
        let output = Command::cargo_bin("deploy-kit")
            .unwrap()
            .current_dir(dir.path())
            .args(["secrets"])
            .args(args)
            .args(["--target", "lambda"])
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        everything += &text;
        (output.status.code().unwrap_or(-1), text)
    };

    let current = cloud.holding(&secret, "AWSCURRENT").unwrap();
    let (code, text) = run(&["rotate", "--phase", "stage"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("roll: function `"), "{text}");
    let pending = cloud
        .holding(&secret, "AWSPENDING")
        .expect("a pending version");
    assert_ne!(pending, current);
    assert_eq!(
        cloud.holding(&secret, "AWSCURRENT").as_deref(),
        Some(current.as_str())
    );
    let new = cloud.value(&secret, &pending);
    assert!(new.starts_with("hex:") && new.len() == 68 && new != first);
    let env = cloud.environment(&function);
    assert_eq!(
        env.get("VGI_SIGNING_KEY"),
        Some(&first),
        "still signs with the old key"
    );
    assert_eq!(
        env.get("VGI_SIGNING_KEY_PREVIOUS"),
        Some(&new),
        "verifies with the new key"
    );
    // Traffic reaches the alias `live`: the roll published and moved it.
    assert_eq!(
        cloud.environment_of(&function, Some("live")),
        env,
        "the alias serves the rolled environment"
    );
    assert_eq!(
        env.get("KIT_TOKEN_TTL").map(String::as_str),
        Some("600"),
        "other variables stay"
    );

    let (code, text) = run(&["rotate", "--phase", "promote"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(
        cloud.holding(&secret, "AWSCURRENT").as_deref(),
        Some(pending.as_str())
    );
    assert_eq!(
        cloud.holding(&secret, "AWSPREVIOUS").as_deref(),
        Some(current.as_str())
    );
    assert_eq!(cloud.holding(&secret, "AWSPENDING"), None);
    let env = cloud.environment(&function);
    assert_eq!(env.get("VGI_SIGNING_KEY"), Some(&new));
    assert_eq!(env.get("VGI_SIGNING_KEY_PREVIOUS"), Some(&first));

    let (code, text) = run(&["rotate", "--phase", "retire"]);
    assert_eq!(code, 75, "{text}");
    assert!(
        text.contains(
            "hint: run `deploy-kit secrets rotate --target lambda --phase retire` after "
        ),
        "{text}"
    );
    assert_eq!(
        cloud.environment(&function).get("VGI_SIGNING_KEY_PREVIOUS"),
        Some(&first)
    );

    let (code, text) = run(&["rotate", "--phase", "retire", "--force"]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(cloud.holding(&secret, "AWSPREVIOUS"), None);
    assert_eq!(
        cloud.holding(&secret, "AWSCURRENT").as_deref(),
        Some(pending.as_str())
    );
    let env = cloud.environment(&function);
    assert_eq!(env.get("VGI_SIGNING_KEY"), Some(&new));
    assert!(
        !env.contains_key("VGI_SIGNING_KEY_PREVIOUS"),
        "{:?}",
        env.keys()
    );

    let (code, text) = run(&["status"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("phase: idle"), "{text}");

    let state: PathBuf = dir.path().join(".deploy-kit/ci/lambda/rotation.json");
    let state = std::fs::read_to_string(state).unwrap();
    for value in [&first, &new] {
        let bare = value.trim_start_matches("hex:");
        assert!(
            !everything.contains(bare),
            "a key value was printed:\n{everything}"
        );
        assert!(
            !state.contains(bare),
            "a key value is in rotation.json:\n{state}"
        );
    }
}
