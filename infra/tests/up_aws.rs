//! `deploy-kit plan/up/down` on an AWS target and `doctor --online` with the
//! S3 probe, against real servers on loopback: moto_server (Secrets Manager,
//! IAM, Lambda, Function URL, STS) and SeaweedFS (S3). `.ci/test-aws` starts
//! them and exports `KIT_TEST_MOTO_ENDPOINT`, `KIT_TEST_S3_ENDPOINT` and the
//! SeaweedFS credentials; without them these tests fail, they never skip.
#![cfg(feature = "aws")]

#[path = "common/json.rs"]
mod json;
#[path = "common/moto.rs"]
mod moto_recorder;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use assert_cmd::Command;
use aws_config::{BehaviorVersion, Region};

struct Servers {
    moto: String,
    s3: String,
}

fn servers() -> Servers {
    let read = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!(
                "`{name}` is not set: these tests need moto_server and SeaweedFS; run `bash .ci/test-aws`, which starts both"
            )
        })
    };
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        read(name);
    }
    Servers {
        moto: read("KIT_TEST_MOTO_ENDPOINT"),
        s3: read("KIT_TEST_S3_ENDPOINT"),
    }
}

/// A fresh directory with a config for a uniquely named service and bucket.
/// The target's `replicas` is a Function URL on loopback in front of the
/// real `kit-service lambda` (`KIT_TEST_KIT_SERVICE_LAMBDA`), started with
/// the variables moto holds for the function's `live` alias: what `up`'s
/// smoke test (OPS004) calls is the binary with the settings deploy-kit
/// deployed.
struct Project {
    front: kit_service::testing::function_url::FunctionUrl,
    _front_runtime: tokio::runtime::Runtime,
    dir: PathBuf,
    name: String,
    bucket: String,
    servers: Servers,
}

/// The variables of `function`'s alias `live` on moto (none before `up`),
/// plus what the loopback stand-ins need in place of AWS's endpoints.
fn deployed_environment(servers: &Servers, function: &str) -> Vec<(String, String)> {
    let url = format!(
        "{}/2015-03-31/functions/{function}/configuration?Qualifier=live",
        servers.moto
    );
    // moto picks the service from the credential scope of the signature.
    let mut variables: Vec<(String, String)> = ureq::get(&url)
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/lambda/aws4_request, SignedHeaders=host, Signature=0",
        )
        .call()
        .ok()
        .and_then(|mut response| response.body_mut().read_to_string().ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|configuration| {
            configuration["Environment"]["Variables"]
                .as_object()
                .cloned()
        })
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, value)| value.as_str().map(|v| (name, v.to_string())))
        .collect();
    for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
        variables.push((name.into(), std::env::var(name).unwrap_or_default()));
    }
    variables.push(("AWS_REGION".into(), "us-east-1".into()));
    variables.push(("AWS_ENDPOINT_URL".into(), servers.moto.clone()));
    variables.push(("KIT_STORAGE_ENDPOINT".into(), servers.s3.clone()));
    variables.push(("KIT_LOG_FORMAT".into(), "text".into()));
    variables.sort();
    variables
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Project {
    fn new(label: &str) -> Project {
        let servers = servers();
        let unique = format!(
            "{}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                % 100_000
        );
        let name = format!("{label}-{unique}");
        let dir = std::env::temp_dir().join(format!("deploy-kit-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let bucket = format!("{name}-data");
        let front_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let function = format!("{name}-ci");
        let stand_ins = Servers {
            moto: servers.moto.clone(),
            s3: servers.s3.clone(),
        };
        let front = front_runtime.block_on(kit_service::testing::function_url::FunctionUrl::start(
            lambda_binary(),
            Box::new(move || deployed_environment(&stand_ins, &function)),
        ));
        let project = Project {
            front,
            _front_runtime: front_runtime,
            dir,
            name,
            bucket,
            servers,
        };
        project.write_config("1");
        std::fs::write(
            project.dir.join("kit-service"),
            "#!/bin/sh\n[ \"$1\" = lambda ] && exit 0\nexit 1\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                project.dir.join("kit-service"),
                std::fs::Permissions::from_mode(0o755),
            )
            .unwrap();
        }
        project
    }

    fn write_config(&self, expiry_days: &str) {
        let config = format!(
            "version: 1
service: {{name: {name}, environment: ci, package: kit-service}}
targets:
  lambda: {{platform: aws-lambda-function-url, region: us-east-1, replicas: [\"{front}\"]}}
limits:
  max_request_bytes: 5000000
  max_response_bytes: 5000000
  externalize_threshold_bytes: 4000000
  upload_urls: true
  request_timeout_seconds: 60
storage:
  provider: s3
  bucket: {bucket}
  prefix: vgi-rpc/
  expiry_days: {expiry_days}
  abort_multipart_days: 1
  credential: assumed-role
  session_seconds: 3600
  cors_origins: [https://app.example.com]
cors:
  origins: [https://app.example.com]
signing_key:
  source: secret
  secret: aws:{name}/ci/signing-key
",
            name = self.name,
            bucket = self.bucket,
            front = self.front.url(),
        );
        std::fs::write(self.dir.join("deploy-kit.yaml"), config).unwrap();
    }

    /// A Lambda package of the fake `kit-service` as it is now (what `up
    /// --package` deploys without building).
    fn package(&self) -> PathBuf {
        let binary = std::fs::read(self.dir.join("kit-service")).unwrap();
        let bootstrap = deploy_kit::engine::aws::bootstrap("kit-service");
        let zip = deploy_kit::engine::zip::write(&[
            deploy_kit::engine::zip::ZipEntry {
                name: "bootstrap",
                contents: bootstrap.as_bytes(),
                mode: 0o755,
            },
            deploy_kit::engine::zip::ZipEntry {
                name: "kit-service",
                contents: &binary,
                mode: 0o755,
            },
        ])
        .unwrap();
        let path = self.dir.join("package.zip");
        std::fs::write(&path, zip).unwrap();
        path
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(".deploy-kit/ci/lambda/state.json")
    }

    /// Starts deploy-kit here with the endpoint overrides, output piped.
    fn spawn(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("deploy-kit"))
            .current_dir(&self.dir)
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.servers.moto)
            .env("AWS_ENDPOINT_URL_S3", &self.servers.s3)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("DEPLOY_KIT_KIT_SERVICE", self.dir.join("kit-service"))
            .env("DEPLOY_KIT_PACKAGE", self.package())
            .env("DEPLOY_KIT_TODAY", "2026-01-15")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .env_remove("DEPLOY_KIT_STATE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs deploy-kit here with the endpoint overrides; returns (exit, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_with(args, &[])
    }

    /// [`Project::run`] with more variables (set last, so they win).
    fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> (i32, String, String) {
        let mut command = Command::cargo_bin("deploy-kit").unwrap();
        command
            .current_dir(&self.dir)
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.servers.moto)
            .env("AWS_ENDPOINT_URL_S3", &self.servers.s3)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("DEPLOY_KIT_PACKAGE", self.package())
            // The doctor's ART001 judges this binary (there is no cargo workspace).
            .env("DEPLOY_KIT_KIT_SERVICE", self.dir.join("kit-service"))
            .env("DEPLOY_KIT_TODAY", "2026-01-15")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .env_remove("DEPLOY_KIT_STATE");
        for (name, value) in extra {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SDK clients for checking what deploy-kit made, independent of its code.
struct Cloud {
    runtime: tokio::runtime::Runtime,
    s3: aws_sdk_s3::Client,
    secrets: aws_sdk_secretsmanager::Client,
    iam: aws_sdk_iam::Client,
    lambda: aws_sdk_lambda::Client,
}

impl Cloud {
    fn new(servers: &Servers) -> Cloud {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let shared = runtime.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(&servers.moto)
                .http_client(
                    aws_smithy_http_client::Builder::new()
                        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                        ))
                        .build_https(),
                )
                .load(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .endpoint_url(&servers.s3)
                .force_path_style(true)
                .request_checksum_calculation(
                    aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
                )
                .build(),
        );
        Cloud {
            s3,
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
            iam: aws_sdk_iam::Client::new(&shared),
            lambda: aws_sdk_lambda::Client::new(&shared),
            runtime,
        }
    }

    fn bucket_exists(&self, bucket: &str) -> bool {
        self.runtime
            .block_on(self.s3.head_bucket().bucket(bucket).send())
            .is_ok()
    }

    fn secret_value(&self, name: &str) -> Option<String> {
        self.runtime
            .block_on(self.secrets.get_secret_value().secret_id(name).send())
            .ok()
            .and_then(|v| v.secret_string().map(str::to_string))
    }

    fn role_exists(&self, name: &str) -> bool {
        self.runtime
            .block_on(self.iam.get_role().role_name(name).send())
            .is_ok()
    }

    /// The version the function's alias `live` points at.
    fn live_version(&self, function: &str) -> String {
        self.runtime
            .block_on(
                self.lambda
                    .get_alias()
                    .function_name(function)
                    .name("live")
                    .send(),
            )
            .unwrap()
            .function_version()
            .unwrap()
            .to_string()
    }

    fn function_exists(&self, name: &str) -> bool {
        self.runtime
            .block_on(self.lambda.get_function().function_name(name).send())
            .is_ok()
    }

    fn function_env(&self, name: &str) -> std::collections::HashMap<String, String> {
        self.runtime
            .block_on(
                self.lambda
                    .get_function_configuration()
                    .function_name(name)
                    .send(),
            )
            .unwrap()
            .environment()
            .and_then(|e| e.variables())
            .cloned()
            .unwrap_or_default()
    }

    fn function_url(&self, name: &str) -> Option<String> {
        self.runtime
            .block_on(
                self.lambda
                    .get_function_url_config()
                    .function_name(name)
                    .send(),
            )
            .ok()
            .map(|c| c.function_url().to_string())
    }
}

fn assert_no_secret(secret: &str, label: &str, text: &str) {
    let bare = secret.trim_start_matches("hex:");
    assert!(
        !text.contains(bare),
        "the signing key appears in {label}:\n{text}"
    );
}

#[test]
fn up_twice_then_plan_then_down_against_moto_and_seaweedfs() {
    let project = Project::new("dk-up");
    let cloud = Cloud::new(&project.servers);
    let function = format!("{}-ci", project.name);
    let secret_name = format!("{}/ci/signing-key", project.name);
    let mut outputs = Vec::new();

    let (code, stdout, stderr) = project.run(&["plan", "lambda"]);
    assert_eq!(code, 2, "a first plan has changes\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("+ create bucket/{}", project.bucket)),
        "{stdout}"
    );

    let (code, stdout, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 0, "first up\n{stdout}\n{stderr}");
    for step in ["bucket", "secret", "role", "function `", "function URL"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(step) && l.contains("created") && l.ends_with(" s)")),
            "no progress line for {step}:\n{stderr}"
        );
    }
    assert!(stdout.contains("pass    STO004"), "{stdout}");
    assert!(stdout.contains("pass    STO005"), "{stdout}");
    assert!(stdout.contains("pass    STO002"), "{stdout}");
    // The smoke test called the deployed function (the real binary behind
    // the loopback Function URL) and got a result back through SeaweedFS.
    assert!(stdout.contains("pass    OPS004 smoke-after-up"), "{stdout}");
    assert!(
        project.front.started(),
        "the smoke test reached the function"
    );
    outputs.push(stdout.clone() + &stderr);

    // Everything exists, checked with the SDK directly.
    assert!(cloud.bucket_exists(&project.bucket));
    let lifecycle = cloud
        .runtime
        .block_on(
            cloud
                .s3
                .get_bucket_lifecycle_configuration()
                .bucket(&project.bucket)
                .send(),
        )
        .unwrap();
    let covers = |pick: &dyn Fn(&aws_sdk_s3::types::LifecycleRule) -> Option<i32>| {
        lifecycle.rules().iter().any(|rule| {
            rule.filter().and_then(|f| f.prefix()) == Some("vgi-rpc/") && pick(rule) == Some(1)
        })
    };
    assert!(
        covers(&|r| r.expiration().and_then(|e| e.days())),
        "{lifecycle:?}"
    );
    assert!(
        covers(&|r| r
            .abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation())),
        "{lifecycle:?}"
    );
    let cors = cloud
        .runtime
        .block_on(cloud.s3.get_bucket_cors().bucket(&project.bucket).send())
        .unwrap();
    assert_eq!(
        cors.cors_rules()[0].allowed_origins(),
        ["https://app.example.com"]
    );
    let secret = cloud.secret_value(&secret_name).expect("secret made");
    assert!(
        secret.starts_with("hex:") && secret.len() == 4 + 64,
        "a 32-byte hex key"
    );
    assert!(cloud.role_exists(&function));
    assert!(cloud.function_exists(&function));
    let url = cloud.function_url(&function).expect("function URL made");
    assert!(
        outputs[0].contains(&format!("url: {url}")),
        "{}",
        outputs[0]
    );

    // A second up changes nothing (not one write reaches moto: issue 18
    // item 4), keeps the key, and plan agrees.
    let mut second = (0, String::new(), String::new());
    let requests = moto_recorder::recorded(&project.servers.moto, || {
        second = project.run(&["up", "lambda", "--json"]);
    });
    let (code, stdout, stderr) = second;
    assert_eq!(code, 0, "second up\n{stdout}\n{stderr}");
    let ours: Vec<&serde_json::Value> = requests
        .iter()
        .filter(|r| r.to_string().contains(&project.name))
        .collect();
    assert!(!ours.is_empty(), "the second up read its resources");
    let writes: Vec<String> = ours
        .iter()
        .filter(|r| moto_recorder::is_write(r))
        .map(|r| moto_recorder::operation(r))
        .collect();
    assert!(writes.is_empty(), "an unchanged up wrote: {writes:?}");
    let document = json::validated(&stdout);
    let phases = &document["phases"];
    assert_eq!(
        phases["build"], 0.0,
        "`--package`: nothing built: {document}"
    );
    assert_eq!(phases["push"], 0.0, "{document}");
    assert!(phases["provision"].as_f64().unwrap() > 0.0, "{document}");
    assert!(phases["smoke"].as_f64().unwrap() > 0.0, "{document}");
    assert!(
        stderr.contains("up: ")
            && stderr.contains(" s in all: build 0.0 s, push 0.0 s, provision "),
        "{stderr}"
    );
    assert!(stderr.contains("no changes"), "{stderr}");
    assert!(
        !stderr.contains("created") && !stderr.contains("updated"),
        "second up changed something:\n{stderr}"
    );
    assert_eq!(
        cloud.secret_value(&secret_name).as_deref(),
        Some(secret.as_str())
    );
    outputs.push(stdout + &stderr);
    // `up` in the middle of a rotation keeps the keys the rotation put on the
    // function: the staged key still verifies, the current one still signs.
    let (code, stdout, stderr) = project.run(&[
        "secrets", "rotate", "--target", "lambda", "--phase", "stage",
    ]);
    assert_eq!(code, 0, "stage\n{stdout}\n{stderr}");
    outputs.push(stdout + &stderr);
    let staged = cloud.function_env(&function);
    let pending = staged
        .get("VGI_SIGNING_KEY_PREVIOUS")
        .cloned()
        .expect("the stage roll adds the pending key");
    assert_ne!(pending, secret);
    let (code, stdout, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 0, "up while staged\n{stdout}\n{stderr}");
    assert!(stderr.contains("no changes"), "{stderr}");
    let after = cloud.function_env(&function);
    assert_eq!(after.get("VGI_SIGNING_KEY"), Some(&secret));
    assert_eq!(
        after.get("VGI_SIGNING_KEY_PREVIOUS"),
        Some(&pending),
        "a plain up must not drop the staged key"
    );
    outputs.push(stdout + &stderr);

    let (code, stdout, stderr) = project.run(&["plan", "lambda"]);
    assert_eq!(code, 0, "plan after up\n{stdout}\n{stderr}");
    outputs.push(stdout + &stderr);
    let (code, stdout, stderr) = project.run(&["plan", "lambda", "--json"]);
    assert_eq!(code, 0);
    let document: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(document["schema"], "deploy-kit.plan/v1");
    outputs.push(stdout + &stderr);

    // A shorter expiry is planned as a change, with a warning.
    project.write_config("0");
    let (code, stdout, stderr) = project.run(&["plan", "lambda", "--force"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("lifecycle.expiration_days: 1 -> 0"),
        "{stdout}"
    );
    assert!(stdout.contains("warning: shortens expiration"), "{stdout}");
    project.write_config("1");

    let state = std::fs::read_to_string(project.state_path()).unwrap();
    assert_no_secret(&secret, "the state file", &state);
    assert_no_secret(&pending, "the state file", &state);

    // down keeps a bucket with data and says how to remove it.
    cloud
        .runtime
        .block_on(
            cloud
                .s3
                .put_object()
                .bucket(&project.bucket)
                .key("vgi-rpc/result")
                .body(b"data".to_vec().into())
                .send(),
        )
        .unwrap();
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("deploy-kit down lambda --delete-data"),
        "{stderr}"
    );
    assert!(cloud.bucket_exists(&project.bucket));
    assert!(!cloud.function_exists(&function));
    assert!(cloud.function_url(&function).is_none());
    assert!(!cloud.role_exists(&function));
    assert!(cloud.secret_value(&secret_name).is_none());
    outputs.push(stdout + &stderr);
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!cloud.bucket_exists(&project.bucket));
    assert!(
        !project.state_path().exists(),
        "state removed with the last resource"
    );
    outputs.push(stdout + &stderr);

    for (index, output) in outputs.iter().enumerate() {
        assert_no_secret(&secret, &format!("command output #{index}"), output);
        assert_no_secret(&pending, &format!("command output #{index}"), output);
    }
}

/// Makes a bucket, optionally with the right lifecycle rules.
fn make_bucket(cloud: &Cloud, bucket: &str, with_lifecycle: bool) {
    use aws_sdk_s3::types::{
        AbortIncompleteMultipartUpload, BucketLifecycleConfiguration, ExpirationStatus,
        LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    };
    cloud
        .runtime
        .block_on(cloud.s3.create_bucket().bucket(bucket).send())
        .unwrap();
    if with_lifecycle {
        let rule = LifecycleRule::builder()
            .id("expire")
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("vgi-rpc/").build())
            .expiration(LifecycleExpiration::builder().days(1).build())
            .abort_incomplete_multipart_upload(
                AbortIncompleteMultipartUpload::builder()
                    .days_after_initiation(1)
                    .build(),
            )
            .build()
            .unwrap();
        cloud
            .runtime
            .block_on(
                cloud
                    .s3
                    .put_bucket_lifecycle_configuration()
                    .bucket(bucket)
                    .lifecycle_configuration(
                        BucketLifecycleConfiguration::builder()
                            .rules(rule)
                            .build()
                            .unwrap(),
                    )
                    .send(),
            )
            .unwrap();
    }
}

fn delete_bucket(cloud: &Cloud, bucket: &str) {
    let _ = cloud
        .runtime
        .block_on(cloud.s3.delete_bucket().bucket(bucket).send());
}

fn finding<'a>(report: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("no finding {id} in {report}"))
}

#[test]
fn doctor_online_judges_the_live_bucket_lifecycle() {
    let with_rules = Project::new("dk-doc-good");
    let without_rules = Project::new("dk-doc-bad");
    let cloud = Cloud::new(&with_rules.servers);
    make_bucket(&cloud, &with_rules.bucket, true);
    make_bucket(&cloud, &without_rules.bucket, false);

    let report = |project: &Project| {
        let (_, stdout, stderr) = project.run(&[
            "doctor", "--online", "--format", "json", "--target", "lambda",
        ]);
        serde_json::from_str::<serde_json::Value>(&stdout)
            .unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
    };
    let good = report(&with_rules);
    let bad = report(&without_rules);
    delete_bucket(&cloud, &with_rules.bucket);
    delete_bucket(&cloud, &without_rules.bucket);

    let outcome = |report: &serde_json::Value, id: &str| {
        finding(report, id)["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    for id in ["STO001", "STO002", "STO004", "STO005"] {
        assert_eq!(outcome(&good, id), "pass", "{id}: {}", finding(&good, id));
    }
    for id in ["STO004", "STO005"] {
        assert_eq!(outcome(&bad, id), "fail", "{id}: {}", finding(&bad, id));
    }
    assert_eq!(outcome(&bad, "STO001"), "pass");
    // No CORS rule on either bucket: STO007 fails live.
    assert_eq!(
        outcome(&good, "STO007"),
        "fail",
        "{}",
        finding(&good, "STO007")
    );
}

#[test]
fn missing_bucket_fails_storage_reach() {
    let project = Project::new("dk-doc-none");
    let (_, stdout, _) = project.run(&[
        "doctor", "--online", "--format", "json", "--target", "lambda",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let reach = finding(&report, "STO001");
    assert_eq!(reach["outcome"], "fail", "{reach}");
    let _ = Path::new(&project.dir);
}

fn finish(child: std::process::Child) -> (i32, String) {
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// `up` against state in S3 while another run holds the lock: without a
/// lock timeout it is refused (exit 3, holder and unlock command named,
/// nothing provisioned), with one it waits and then runs; two runs started
/// together both succeed; the state is whole, holds no secret, and `down`
/// removes it.
#[test]
fn two_ups_against_s3_state_are_kept_apart_by_the_lock() {
    let project = Project::new("dk-lock");
    let cloud = Cloud::new(&project.servers);
    let state_bucket = format!("{}-state", project.name);
    cloud
        .runtime
        .block_on(cloud.s3.create_bucket().bucket(&state_bucket).send())
        .unwrap();
    let config = std::fs::read_to_string(project.dir.join("deploy-kit.yaml")).unwrap();
    std::fs::write(
        project.dir.join("deploy-kit.yaml"),
        format!("{config}state: s3://{state_bucket}/teams\n"),
    )
    .unwrap();
    let key = format!("teams/{}/ci/lambda/state.json", project.name);
    let lock_key = format!("teams/{}/ci/lambda/state.lock", project.name);
    let object = |key: &str| -> Option<String> {
        let output = cloud
            .runtime
            .block_on(cloud.s3.get_object().bucket(&state_bucket).key(key).send())
            .ok()?;
        let bytes = cloud.runtime.block_on(output.body.collect()).unwrap();
        Some(String::from_utf8(bytes.into_bytes().to_vec()).unwrap())
    };

    // Another run holds the lock (written as deploy-kit writes it): `up`
    // is refused with exit 3 before it touches anything.
    let held = serde_json::json!({
        "id": "feedfacecafe0001", "who": "ci@elsewhere", "pid": 4242,
        "operation": "up lambda", "created": 1_700_000_000u64, "version": "0.1.0",
    });
    let hold = || {
        cloud
            .runtime
            .block_on(
                cloud
                    .s3
                    .put_object()
                    .bucket(&state_bucket)
                    .key(&lock_key)
                    .body(serde_json::to_vec(&held).unwrap().into())
                    .send(),
            )
            .unwrap();
    };
    hold();
    let (code, output) = finish(project.spawn(&["up", "lambda"]));
    assert_eq!(code, 3, "a held lock refuses the run:\n{output}");
    assert!(output.contains("is locked by `ci@elsewhere`"), "{output}");
    assert!(
        output.contains("deploy-kit state unlock feedfacecafe0001"),
        "{output}"
    );
    assert!(
        !cloud.function_exists(&format!("{}-ci", project.name)),
        "nothing was provisioned while locked"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&object(&lock_key).unwrap()).unwrap(),
        held,
        "the holder's lock is left alone"
    );

    // With a lock timeout, `up` waits for the holder and then runs.
    let mut waiting = project.spawn(&["up", "lambda", "--lock-timeout", "300"]);
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "up waits while the lock is held"
    );
    assert!(!cloud.function_exists(&format!("{}-ci", project.name)));
    cloud
        .runtime
        .block_on(
            cloud
                .s3
                .delete_object()
                .bucket(&state_bucket)
                .key(&lock_key)
                .send(),
        )
        .unwrap();
    let (code, output) = finish(waiting);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("waiting up to 300 s"), "{output}");
    let stored = object(&key).expect("the state is in the bucket");
    let state: deploy_kit::engine::State = serde_json::from_str(&stored).unwrap();
    assert!(state.resources.len() >= 4, "{stored}");
    assert!(object(&lock_key).is_none(), "the lock is released");
    let secret = cloud
        .secret_value(&format!("{}/ci/signing-key", project.name))
        .expect("up made the signing key");
    assert_no_secret(&secret, "the remote state", &stored);

    // Two runs started together: whichever order they take the lock in,
    // both succeed and the state stays whole.
    let first = project.spawn(&["up", "lambda", "--lock-timeout", "300"]);
    let second = project.spawn(&["up", "lambda", "--lock-timeout", "300"]);
    let results = [finish(first), finish(second)];
    for (code, output) in &results {
        assert_eq!(*code, 0, "{output}");
    }
    let again: deploy_kit::engine::State = serde_json::from_str(&object(&key).unwrap()).unwrap();
    assert_eq!(again.resources.len(), state.resources.len());

    // Another checkout (no local copy) sees the state, and `down` removes it.
    std::fs::remove_dir_all(project.dir.join(".deploy-kit")).unwrap();
    let (code, stdout, stderr) = project.run(&["state", "show", "--target", "lambda"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("lock: free"), "{stdout}");
    assert!(
        stdout.contains(&format!("function/{}-ci", project.name)),
        "{stdout}"
    );
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!cloud.function_exists(&format!("{}-ci", project.name)));
    assert!(object(&key).is_none(), "down removed the remote state");
    assert!(object(&lock_key).is_none());
}

/// `plan --refresh` reads the live resources: a lifecycle rule deleted and
/// a function URL removed behind deploy-kit's back show as drift (exit 2),
/// while the plain plan, which trusts the state, sees nothing; `up` then
/// restores both and the refreshed plan is clean (exit 0).
#[test]
fn plan_refresh_shows_changes_made_outside_deploy_kit() {
    let project = Project::new("dk-drift");
    let cloud = Cloud::new(&project.servers);
    let function = format!("{}-ci", project.name);
    let (code, stdout, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 0, "up\n{stdout}\n{stderr}");
    let (code, stdout, stderr) = project.run(&["plan", "lambda", "--refresh"]);
    assert_eq!(code, 0, "nothing drifted yet\n{stdout}\n{stderr}");

    cloud
        .runtime
        .block_on(
            cloud
                .s3
                .delete_bucket_lifecycle()
                .bucket(&project.bucket)
                .send(),
        )
        .unwrap();
    cloud
        .runtime
        .block_on(
            cloud
                .lambda
                .delete_function_url_config()
                .function_name(&function)
                .send(),
        )
        .unwrap();

    let (code, stdout, stderr) = project.run(&["plan", "lambda"]);
    assert_eq!(
        code, 0,
        "the plain plan trusts the state\n{stdout}\n{stderr}"
    );
    let (code, stdout, stderr) = project.run(&["plan", "lambda", "--refresh"]);
    assert_eq!(code, 2, "drift\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "! drift bucket/{}: changed outside deploy-kit (lifecycle.abort_multipart_days: 1 -> (none), lifecycle.expiration_days: 1 -> (none))",
            project.bucket
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "! drift endpoint/{function}: deleted outside deploy-kit"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("+ create endpoint/{function}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("~ change bucket/{}", project.bucket)),
        "{stdout}"
    );
    let (code, json, stderr) = project.run(&["plan", "lambda", "--refresh", "--json"]);
    assert_eq!(code, 2, "{stderr}");
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(document["drift"].as_array().unwrap().len(), 2, "{json}");

    let (code, stdout, stderr) = project.run(&["up", "lambda", "--json"]);
    assert_eq!(code, 0, "up restores\n{stdout}\n{stderr}");
    let up = json::validated(&stdout);
    assert!(
        up["url"]
            .as_str()
            .is_some_and(|url| url.contains("lambda-url")),
        "{up}"
    );
    assert!(
        stderr.contains("pass    STO004"),
        "the doctor's report goes to stderr under --json"
    );
    let (code, stdout, stderr) = project.run(&["plan", "lambda", "--refresh"]);
    assert_eq!(code, 0, "restored\n{stdout}\n{stderr}");
    let (code, stdout, stderr) =
        project.run(&["down", "lambda", "--yes", "--delete-data", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let down = json::validated(&stdout);
    assert_eq!(
        down["deleted"].as_array().unwrap().len(),
        up["resources"].as_array().unwrap().len(),
        "{down}"
    );
    assert_eq!(down["kept"], serde_json::json!([]));
}

/// `auth.required: true` deploys a function that requires auth and gets the
/// keys (the same `KIT_*` settings every renderer writes, plus `KIT_API_KEYS`
/// read from Secrets Manager); a missing or malformed keys secret stops
/// `up` before anything is created, and no key reaches the state or output.
#[test]
fn auth_required_reaches_the_function_with_its_keys() {
    let project = Project::new("dk-auth");
    let cloud = Cloud::new(&project.servers);
    let function = format!("{}-ci", project.name);
    let keys_secret = format!("{}/ci/api-keys", project.name);
    let config = std::fs::read_to_string(project.dir.join("deploy-kit.yaml")).unwrap();
    std::fs::write(
        project.dir.join("deploy-kit.yaml"),
        format!("{config}auth:\n  required: true\n  api_keys: aws:{keys_secret}\n"),
    )
    .unwrap();

    let (code, stdout, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("the API keys secret `{keys_secret}`"))
            && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!cloud.function_exists(&function), "nothing was created");
    assert!(!cloud.bucket_exists(&project.bucket), "nothing was created");

    let create = |value: &str| {
        cloud
            .runtime
            .block_on(
                cloud
                    .secrets
                    .create_secret()
                    .name(&keys_secret)
                    .secret_string(value)
                    .send(),
            )
            .unwrap();
    };
    create("ci");
    let (code, _, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`auth.api_keys`"), "{stderr}");
    assert!(!cloud.function_exists(&function), "nothing was created");
    cloud
        .runtime
        .block_on(
            cloud
                .secrets
                .delete_secret()
                .secret_id(&keys_secret)
                .force_delete_without_recovery(true)
                .send(),
        )
        .unwrap();

    let key = "ci=9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c;scopes=kit.Demo.v1/*";
    create(key);
    let (code, stdout, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    // The deployed function refused the smoke test's call without a key.
    assert!(
        stdout.contains(
            "skip    OPS004 smoke-after-up: auth is required and no `DEPLOY_KIT_API_KEY` was given: checked only that"
        ),
        "{stdout}"
    );
    let configuration = cloud
        .runtime
        .block_on(
            cloud
                .lambda
                .get_function_configuration()
                .function_name(&function)
                .send(),
        )
        .unwrap();
    let variables = configuration
        .environment()
        .and_then(|e| e.variables())
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        variables.get("KIT_REQUIRE_AUTH").map(String::as_str),
        Some("true")
    );
    assert_eq!(variables.get("KIT_API_KEYS").map(String::as_str), Some(key));
    // The same settings `render` writes for the target, key for key.
    let parsed = deploy_kit::config::DeployConfig::parse(
        &std::fs::read_to_string(project.dir.join("deploy-kit.yaml")).unwrap(),
        &project.dir.join("deploy-kit.yaml"),
    )
    .unwrap();
    let (rendered, _) = deploy_kit::render::service_environment(&parsed, "lambda").unwrap();
    for var in rendered {
        assert_eq!(
            variables.get(&var.name),
            Some(&var.value),
            "`{}` as rendered",
            var.name
        );
    }
    let state = std::fs::read_to_string(project.state_path()).unwrap();
    assert_no_secret("9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c", "the state", &state);
    assert_no_secret(
        "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c",
        "the output",
        &(stdout + &stderr),
    );

    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

/// The real `kit-service` built with `--features lambda`, which `.ci/test-aws` builds.
fn lambda_binary() -> PathBuf {
    let path = std::env::var("KIT_TEST_KIT_SERVICE_LAMBDA")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!("`KIT_TEST_KIT_SERVICE_LAMBDA` is not set: run `bash .ci/test-aws`, which builds `kit-service --features lambda`")
        });
    let path = PathBuf::from(path);
    assert!(path.is_file(), "`{}` does not exist", path.display());
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Unpacks `zip` as Lambda does, runs its `bootstrap` under the fake
/// Runtime API as version `version`, sends a Function URL `GET /healthz`
/// and returns the JSON it answered.
fn healthz_of_package(zip: &Path, version: &str, work: &Path) -> serde_json::Value {
    use base64::Engine as _;
    use kit_service::testing::lambda_runtime::{FakeRuntime, function_url_event};
    let task = work.join(format!("task-{version}"));
    let unzip = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor i in z.infolist():\n    z.extract(i, sys.argv[2]); os.chmod(os.path.join(sys.argv[2], i.filename), i.external_attr >> 16 & 0o777)",
            zip.to_str().unwrap(),
            task.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(unzip.status.success(), "{unzip:?}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut event = function_url_event("/healthz", "application/json", "", "203.0.113.7");
        event["requestContext"]["http"]["method"] = "GET".into();
        event["isBase64Encoded"] = false.into();
        let mut fake = FakeRuntime::start(vec![("invoke-health".into(), event)]).await;
        let mut child = tokio::process::Command::new(task.join("bootstrap"))
            .current_dir(&task)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LAMBDA_TASK_ROOT", &task)
            .env("AWS_LAMBDA_RUNTIME_API", fake.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", "kit-service")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", version)
            .env("VGI_SIGNING_KEY", "k".repeat(32))
            .env("KIT_LOG_FORMAT", "text")
            .kill_on_drop(true)
            .spawn()
            .expect("bootstrap starts");
        let outcome = fake
            .expect_outcome(std::time::Duration::from_secs(60))
            .await;
        let _ = child.kill().await;
        assert_eq!(outcome.kind, "response", "{:?}", outcome.body);
        let response = outcome.body;
        assert_eq!(response["statusCode"], 200, "{response}");
        let body = response["body"].as_str().unwrap();
        let body = if response["isBase64Encoded"] == true {
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        } else {
            body.as_bytes().to_vec()
        };
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {response}"))
    })
}

/// Two `up`s of two builds of the real Lambda binary (the second is the
/// first with bytes appended: same behaviour, another `CodeSha256` and
/// another `/healthz` `binary.sha256`), each published as a version behind
/// the alias `live` that the Function URL points at; `rollback` moves the
/// alias back. moto tells which version is live and its code digest; that
/// package then runs under the fake Runtime API, and a call to it answers
/// with the first binary's digest. Bad input changes nothing: an unknown
/// release, and a release whose version was deleted.
#[test]
fn rollback_moves_the_alias_back_to_the_previous_version() {
    let project = Project::new("dk-rb");
    let cloud = Cloud::new(&project.servers);
    let function = format!("{}-ci", project.name);
    let real = std::fs::read(lambda_binary()).unwrap();
    let mut next = real.clone();
    next.extend_from_slice(b"\0deploy-kit rollback test: the next build\0");
    let builds = [real, next];
    let mut packages = Vec::new();
    for (index, binary) in builds.iter().enumerate() {
        std::fs::write(project.dir.join("kit-service"), binary).unwrap();
        let (code, stdout, stderr) = project.run(&["up", "lambda"]);
        assert_eq!(code, 0, "up #{index}\n{stdout}\n{stderr}");
        let release = index + 1;
        assert!(
            stderr.contains(&format!(
                "up: release {release} (version {release}) is live"
            )),
            "{stderr}"
        );
        let kept = project.dir.join(format!("package-{release}.zip"));
        std::fs::copy(project.package(), &kept).unwrap();
        packages.push(kept);
    }
    let alias = |cloud: &Cloud| cloud.live_version(&function);
    let code_of = |cloud: &Cloud, version: &str| -> String {
        cloud
            .runtime
            .block_on(
                cloud
                    .lambda
                    .get_function_configuration()
                    .function_name(&function)
                    .qualifier(version)
                    .send(),
            )
            .unwrap()
            .code_sha256()
            .unwrap()
            .to_string()
    };
    assert_eq!(alias(&cloud), "2");
    let digests: Vec<String> = packages
        .iter()
        .map(|zip| deploy_kit::plan::package_hash(&std::fs::read(zip).unwrap()))
        .collect();
    assert_eq!(code_of(&cloud, "1"), digests[0]);
    assert_eq!(code_of(&cloud, "2"), digests[1]);
    assert!(
        cloud
            .runtime
            .block_on(
                cloud
                    .lambda
                    .get_function_url_config()
                    .function_name(&function)
                    .qualifier("live")
                    .send()
            )
            .is_ok(),
        "the Function URL is on the alias"
    );

    let (code, json, stderr) = project.run(&["releases", "lambda", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let listed = json::validated(&json);
    assert_eq!(listed["schema"], "deploy-kit.releases/v1");
    assert_eq!(listed["live"], 2);
    for (index, release) in listed["releases"].as_array().unwrap().iter().enumerate() {
        assert_eq!(release["artifact"]["kind"], "lambda-zip");
        assert_eq!(release["artifact"]["digest"], digests[index].as_str());
        assert_eq!(
            release["restore"]["lambda_version"],
            (index + 1).to_string()
        );
        // The secret by name, never its value.
        assert_eq!(
            release["settings"]["secret:VGI_SIGNING_KEY"], "signing-key",
            "{release}"
        );
    }

    // An unknown release: refused, the alias stays.
    let (code, _, stderr) = project.run(&["rollback", "lambda", "5"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("it has 1, 2 (live: 2)"), "{stderr}");
    assert_eq!(alias(&cloud), "2");

    let (code, stdout, stderr) = project.run(&["rollback", "lambda", "--json"]);
    assert_eq!(code, 0, "rollback\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("alias `live` of") && stderr.contains("moved from 2 to 1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pass    STO004"),
        "the post-up check ran (its report on stderr under --json):\n{stderr}"
    );
    let rolled = json::validated(&stdout);
    assert_eq!(rolled["returns_to"], 1);
    let live = alias(&cloud);
    assert_eq!(live, "1");
    // What serves now: the package whose digest moto has for the live version.
    let live_code = code_of(&cloud, &live);
    let index = digests.iter().position(|d| *d == live_code).unwrap();
    let health = healthz_of_package(&packages[index], &live, &project.dir);
    assert_eq!(
        health["binary"]["sha256"],
        format!("sha256:{}", sha256_hex(&builds[0])),
        "the first build answers"
    );
    let other = healthz_of_package(&packages[1], "2", &project.dir);
    assert_ne!(other["binary"]["sha256"], health["binary"]["sha256"]);

    let (_, json, _) = project.run(&["releases", "lambda", "--json"]);
    let listed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(listed["live"], 3);
    assert_eq!(listed["releases"][2]["returns_to"], 1);
    assert_eq!(listed["releases"][2]["restore"]["lambda_version"], "1");

    // Version 2 deleted behind deploy-kit's back: rolling back to it is
    // refused before the alias moves.
    cloud
        .runtime
        .block_on(
            cloud
                .lambda
                .delete_function()
                .function_name(&function)
                .qualifier("2")
                .send(),
        )
        .unwrap();
    let state_before = std::fs::read(project.state_path()).unwrap();
    let (code, _, stderr) = project.run(&["rollback", "lambda", "2"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(
            "the artifact of release 2 of target `lambda` is gone: version 2 of function"
        ),
        "{stderr}"
    );
    assert_eq!(alias(&cloud), "1");
    assert_eq!(std::fs::read(project.state_path()).unwrap(), state_before);

    let secret = cloud
        .secret_value(&format!("{}/ci/signing-key", project.name))
        .unwrap();
    assert_no_secret(
        &secret,
        "the state file",
        &String::from_utf8_lossy(&state_before),
    );
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(!cloud.function_exists(&function));
}

/// Finding: a Lambda version keeps the environment it was published with,
/// and `secrets rotate` publishes versions with the new key: `rollback` to a
/// release from before a rotation brought back the retired key and dropped
/// the current one (every open stream failed, new tokens were signed with a
/// retired key). It is now refused before the alias moves.
#[test]
fn rollback_refuses_a_release_from_before_a_key_rotation() {
    let project = Project::new("dk-rk");
    let cloud = Cloud::new(&project.servers);
    let function = format!("{}-ci", project.name);
    let real = std::fs::read(lambda_binary()).unwrap();
    let mut next = real.clone();
    next.extend_from_slice(b"\0deploy-kit rollback-after-rotation test\0");
    for (index, binary) in [real, next].iter().enumerate() {
        std::fs::write(project.dir.join("kit-service"), binary).unwrap();
        let (code, stdout, stderr) = project.run(&["up", "lambda"]);
        assert_eq!(code, 0, "up #{index}\n{stdout}\n{stderr}");
    }
    let alias = |cloud: &Cloud| cloud.live_version(&function);
    let signing_key = |cloud: &Cloud, qualifier: &str| -> String {
        cloud
            .runtime
            .block_on(
                cloud
                    .lambda
                    .get_function_configuration()
                    .function_name(&function)
                    .qualifier(qualifier)
                    .send(),
            )
            .unwrap()
            .environment()
            .and_then(|environment| environment.variables())
            .and_then(|variables| variables.get("VGI_SIGNING_KEY").cloned())
            .expect("the version's signing key")
    };
    let old_key = signing_key(&cloud, "1");
    let mut printed = String::new();
    for phase in ["stage", "promote"] {
        let (code, stdout, stderr) =
            project.run(&["secrets", "rotate", "--target", "lambda", "--phase", phase]);
        assert_eq!(code, 0, "rotate {phase}\n{stdout}\n{stderr}");
        printed.push_str(&stdout);
        printed.push_str(&stderr);
    }
    let live = alias(&cloud);
    assert_ne!(live, "2", "the rotation's rolls published versions");
    let new_key = signing_key(&cloud, "live");
    assert_ne!(new_key, old_key, "the promote made the new key sign");
    assert_eq!(
        signing_key(&cloud, "1"),
        old_key,
        "a published version keeps its environment"
    );

    let state_before = std::fs::read(project.state_path()).unwrap();
    let (code, stdout, stderr) = project.run(&["rollback", "lambda", "1"]);
    printed.push_str(&stdout);
    printed.push_str(&stderr);
    assert_eq!(code, 2, "refused\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("release 1 of target `lambda` runs with signing key")
            && stderr.contains("from before the key was rotated"),
        "{stderr}"
    );
    assert!(
        stderr.contains("deploy-kit up lambda --package ZIP"),
        "the way forward: {stderr}"
    );
    assert_eq!(alias(&cloud), live, "the alias did not move");
    assert_eq!(std::fs::read(project.state_path()).unwrap(), state_before);
    for key in [&old_key, &new_key] {
        assert_no_secret(key, "deploy-kit's output", &printed);
    }
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

/// Finding: a key roll publishes `$LATEST` with the new keys and moves
/// `live` to it. After a `rollback` (which only moves `live`), `$LATEST`
/// still holds the newer code, so `secrets rotate` silently put the code
/// that had been rolled back live again. It is now refused before any key
/// changes.
#[test]
fn a_key_rotation_after_a_rollback_does_not_roll_the_code_forward() {
    let project = Project::new("dk-rr");
    let cloud = Cloud::new(&project.servers);
    let function = format!("{}-ci", project.name);
    let real = std::fs::read(lambda_binary()).unwrap();
    let mut next = real.clone();
    next.extend_from_slice(b"\0deploy-kit rotate-after-rollback test\0");
    for (index, binary) in [real, next].iter().enumerate() {
        std::fs::write(project.dir.join("kit-service"), binary).unwrap();
        let (code, stdout, stderr) = project.run(&["up", "lambda"]);
        assert_eq!(code, 0, "up #{index}\n{stdout}\n{stderr}");
    }
    let (code, stdout, stderr) = project.run(&["rollback", "lambda", "1"]);
    assert_eq!(code, 0, "rollback\n{stdout}\n{stderr}");
    let live = |cloud: &Cloud| -> (String, String) {
        let configuration = cloud
            .runtime
            .block_on(
                cloud
                    .lambda
                    .get_function_configuration()
                    .function_name(&function)
                    .qualifier("live")
                    .send(),
            )
            .unwrap();
        (
            configuration.version().unwrap().to_string(),
            configuration.code_sha256().unwrap().to_string(),
        )
    };
    let before = live(&cloud);
    assert_eq!(before.0, "1");
    let secret = format!("{}/ci/signing-key", project.name);
    let current = cloud.secret_value(&secret).unwrap();

    let (code, stdout, stderr) = project.run(&[
        "secrets", "rotate", "--target", "lambda", "--phase", "stage",
    ]);
    assert_eq!(code, 2, "refused\n{stdout}\n{stderr}");
    assert!(
        stderr.contains("`$LATEST` holds code") && stderr.contains("the alias was rolled back"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(live(&cloud), before, "the rolled-back code still serves");
    assert_eq!(cloud.secret_value(&secret).unwrap(), current);
    assert!(
        cloud
            .runtime
            .block_on(cloud.secrets.describe_secret().secret_id(&secret).send())
            .unwrap()
            .version_ids_to_stages()
            .is_none_or(|stages| stages
                .values()
                .all(|labels| !labels.iter().any(|l| l == "AWSPENDING"))),
        "no key was staged"
    );
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

/// moto's request recorder: what it received while `f` ran (other tests
/// may add requests of their own; callers filter by their names).
fn recorded(moto: &str, f: impl FnOnce()) -> Vec<serde_json::Value> {
    moto_recorder::recorded(moto, f)
}

/// A recorded request's body as text.
fn recorded_body(request: &serde_json::Value) -> Vec<u8> {
    use base64::Engine as _;
    let body = request["body"].as_str().unwrap_or_default();
    if request["body_encoded"] == true {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    } else {
        body.as_bytes().to_vec()
    }
}

/// Lambda refuses a zip over 50 MB in the request, so `up` puts a bigger
/// one in `deploy-kit-artifacts-<account>-<region>` under its SHA-256 and
/// names bucket and key in `CreateFunction`/`UpdateFunctionCode`. The limit
/// is lowered here (`DEPLOY_KIT_LAMBDA_INLINE_LIMIT_BYTES`) so a small
/// package takes that path; S3 is moto's own here, because moto's Lambda
/// reads the code from there. moto's recorder shows which way the code
/// went, and its `CodeSha256` (which it computes from the S3 object) shows
/// that the object is the package. A second `up` of the same package
/// uploads nothing; a new binary goes up under its new key.
#[test]
fn a_package_over_the_inline_limit_goes_through_the_artifact_bucket() {
    use base64::Engine as _;
    let project = Project::new("dk-s3pkg");
    // No storage: all of S3 is moto's here.
    std::fs::write(
        project.dir.join("deploy-kit.yaml"),
        format!(
            "version: 1
service: {{name: {name}, environment: ci, package: kit-service}}
targets:
  lambda: {{platform: aws-lambda-function-url, region: us-east-1, replicas: [\"{front}\"]}}
limits:
  max_request_bytes: 5000000
  max_response_bytes: 5000000
  externalize_threshold_bytes: 4000000
signing_key:
  source: secret
  secret: aws:{name}/ci/signing-key
",
            name = project.name,
            front = project.front.url(),
        ),
    )
    .unwrap();
    let moto = project.servers.moto.clone();
    let function = format!("{}-ci", project.name);
    let bucket = "deploy-kit-artifacts-123456789012-us-east-1";
    let extra = [
        ("AWS_ENDPOINT_URL_S3", moto.as_str()),
        ("DEPLOY_KIT_LAMBDA_INLINE_LIMIT_BYTES", "64"),
    ];
    let up = |label: &str| {
        let mut outcome = None;
        let requests = recorded(&moto, || {
            outcome = Some(project.run_with(&["up", "lambda"], &extra));
        });
        let (code, stdout, stderr) = outcome.unwrap();
        assert_eq!(code, 0, "{label}\n{stdout}\n{stderr}");
        requests
    };
    let function_calls = |requests: &[serde_json::Value], method: &str, suffix: &str| {
        requests
            .iter()
            .filter(|r| {
                r["method"] == method
                    && r["url"].as_str().unwrap_or_default().ends_with(suffix)
                    && String::from_utf8_lossy(&recorded_body(r)).contains(&function)
            })
            .map(|r| serde_json::from_slice::<serde_json::Value>(&recorded_body(r)).unwrap())
            .collect::<Vec<_>>()
    };
    let object_puts = |requests: &[serde_json::Value], key: &str| {
        requests
            .iter()
            .filter(|r| {
                r["method"] == "PUT"
                    && r["url"]
                        .as_str()
                        .unwrap_or_default()
                        .contains(&format!("/{bucket}/{key}"))
            })
            .count()
    };
    let cloud = Cloud::new(&project.servers);
    let s3 =
        aws_sdk_s3::Client::from_conf(cloud.s3.config().to_builder().endpoint_url(&moto).build());
    let object = |key: &str| {
        cloud
            .runtime
            .block_on(s3.get_object().bucket(bucket).key(key).send())
            .ok()
            .map(|o| cloud.runtime.block_on(o.body.collect()).unwrap().to_vec())
    };
    let code_sha256 = || {
        cloud
            .runtime
            .block_on(
                cloud
                    .lambda
                    .get_function_configuration()
                    .function_name(&function)
                    .send(),
            )
            .unwrap()
            .code_sha256()
            .unwrap_or_default()
            .to_string()
    };
    let lambda_hash = |zip: &[u8]| {
        use sha2::Digest;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(zip))
    };

    // First up: the function is created from the bucket.
    let first = std::fs::read(project.package()).unwrap();
    let first_key = format!("lambda/{}.zip", sha256_hex(&first));
    let requests = up("first up");
    let created = function_calls(&requests, "POST", "/2015-03-31/functions");
    assert_eq!(created.len(), 1, "one CreateFunction: {requests:#?}");
    assert_eq!(created[0]["Code"]["S3Bucket"], bucket, "{}", created[0]);
    assert_eq!(created[0]["Code"]["S3Key"], first_key.as_str());
    assert!(
        created[0]["Code"].get("ZipFile").is_none(),
        "{}",
        created[0]
    );
    assert_eq!(object_puts(&requests, &first_key), 1);
    assert_eq!(object(&first_key).unwrap(), first);
    assert_eq!(code_sha256(), lambda_hash(&first));
    let state = std::fs::read_to_string(project.state_path()).unwrap();
    assert!(
        state.contains(&format!("s3://{bucket}/{first_key}")),
        "{state}"
    );

    // The same package again: nothing is uploaded, the code is unchanged.
    let code_updates = |requests: &[serde_json::Value]| -> Vec<serde_json::Value> {
        let suffix = format!("/functions/{function}/code");
        requests
            .iter()
            .filter(|r| {
                r["method"] == "PUT" && r["url"].as_str().unwrap_or_default().ends_with(&suffix)
            })
            .map(|r| serde_json::from_slice(&recorded_body(r)).unwrap())
            .collect()
    };
    let requests = up("second up");
    assert_eq!(object_puts(&requests, &first_key), 0, "{requests:#?}");
    assert!(code_updates(&requests).is_empty(), "{requests:#?}");

    // A new binary: uploaded under its own key, then named in UpdateFunctionCode.
    std::fs::write(
        project.dir.join("kit-service"),
        "#!/bin/sh\n# second build\n[ \"$1\" = lambda ] && exit 0\nexit 1\n",
    )
    .unwrap();
    let second = std::fs::read(project.package()).unwrap();
    let second_key = format!("lambda/{}.zip", sha256_hex(&second));
    let requests = up("third up");
    let updated = code_updates(&requests);
    assert_eq!(updated.len(), 1, "one UpdateFunctionCode: {requests:#?}");
    assert_eq!(updated[0]["S3Bucket"], bucket, "{}", updated[0]);
    assert_eq!(updated[0]["S3Key"], second_key.as_str());
    assert!(updated[0].get("ZipFile").is_none());
    assert_eq!(object_puts(&requests, &second_key), 1);
    assert_eq!(code_sha256(), lambda_hash(&second));

    let (code, stdout, stderr) = project.run_with(&["down", "lambda", "--yes"], &extra);
    assert_eq!(code, 0, "down\n{stdout}\n{stderr}");
    assert!(!cloud.function_exists(&function));
    // Content-addressed and shared: `down` keeps the artifact bucket.
    assert!(object(&second_key).is_some());
}

/// The `deploy-kit:deployment` tag of everything `up` made, as moto and
/// SeaweedFS report it: (bucket, secret, role, function).
fn deployment_tags(cloud: &Cloud, project: &Project) -> [Option<String>; 4] {
    const KEY: &str = "deploy-kit:deployment";
    let function = format!("{}-ci", project.name);
    let secret = format!("{}/ci/signing-key", project.name);
    let rt = &cloud.runtime;
    let bucket = rt
        .block_on(cloud.s3.get_bucket_tagging().bucket(&project.bucket).send())
        .ok()
        .and_then(|t| {
            t.tag_set()
                .iter()
                .find(|t| t.key() == KEY)
                .map(|t| t.value().to_string())
        });
    let secret = rt
        .block_on(cloud.secrets.describe_secret().secret_id(&secret).send())
        .ok()
        .and_then(|s| {
            s.tags()
                .iter()
                .find(|t| t.key() == Some(KEY))
                .and_then(|t| t.value().map(str::to_string))
        });
    let role = rt
        .block_on(cloud.iam.list_role_tags().role_name(&function).send())
        .ok()
        .and_then(|t| {
            t.tags()
                .iter()
                .find(|t| t.key() == KEY)
                .map(|t| t.value().to_string())
        });
    let function = rt
        .block_on(cloud.lambda.get_function().function_name(&function).send())
        .ok()
        .and_then(|f| f.tags().and_then(|t| t.get(KEY)).cloned());
    [bucket, secret, role, function]
}

/// Ownership (issue 16 item 7): `up` tags everything with the deployment
/// and its state id, refuses a bucket it did not make unless `--adopt`, and
/// refuses another deployment's resources; `down` refuses a state whose id
/// does not match the tags before deleting anything; `--delete-data` deletes
/// only the service's prefix; the key secret is scheduled for deletion with
/// a recovery window, not force-deleted.
#[test]
fn ownership_tags_guard_up_and_down() {
    let project = Project::new("own");
    let cloud = Cloud::new(&project.servers);
    let function = format!("{}-ci", project.name);
    let secret_name = format!("{}/ci/signing-key", project.name);

    // Someone else's bucket with the configured name: nothing is made.
    make_bucket(&cloud, &project.bucket, true);
    let (code, stdout, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "bucket `{}` exists and deploy-kit did not make it (no deploy-kit ownership tag)",
            project.bucket
        )),
        "{stderr}"
    );
    assert!(stderr.contains("`--adopt`"), "{stderr}");
    assert!(cloud.secret_value(&secret_name).is_none(), "no secret made");
    assert!(!cloud.function_exists(&function), "no function made");

    // --adopt takes it over; everything carries the tag with the state's id.
    let (code, stdout, stderr) = project.run(&["up", "lambda", "--adopt"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(project.state_path()).unwrap()).unwrap();
    let id = state["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 16, "{state}");
    let tag = format!("{}/ci/lambda@{id}", project.name);
    assert_eq!(
        deployment_tags(&cloud, &project),
        [0; 4].map(|_| Some(tag.clone()))
    );

    // A state made in another account: `down` refuses before anything.
    let elsewhere = std::fs::read_to_string(project.state_path())
        .unwrap()
        .replace(":123456789012:", ":999999999999:");
    std::fs::write(project.state_path(), elsewhere).unwrap();
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("the state's resources are in account `999999999999`, and the credentials are for account `123456789012`"),
        "{stderr}"
    );
    assert!(cloud.function_exists(&function), "function kept");
    std::fs::write(project.state_path(), state.to_string()).unwrap();

    // A state from another checkout (another id): `up` and `down` refuse,
    // and nothing changes.
    let mut other = state.clone();
    other["id"] = serde_json::json!("ffffffffffffffff");
    std::fs::write(project.state_path(), other.to_string()).unwrap();
    let (code, stdout, stderr) = project.run(&["up", "lambda"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("belongs to deployment `{tag}`")),
        "{stderr}"
    );
    let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
    assert_eq!(code, 2, "{stdout}\n{stderr}");
    assert!(stderr.contains("`down` refuses to delete"), "{stderr}");
    assert!(stderr.contains("nothing was deleted"), "{stderr}");
    assert!(cloud.function_exists(&function), "function kept");
    assert!(cloud.role_exists(&function), "role kept");
    assert!(cloud.secret_value(&secret_name).is_some(), "secret kept");
    std::fs::write(project.state_path(), state.to_string()).unwrap();

    // --delete-data deletes the service's objects only; the bucket with
    // someone else's object stays, with why.
    for key in ["vgi-rpc/result", "reports/keep"] {
        cloud
            .runtime
            .block_on(
                cloud
                    .s3
                    .put_object()
                    .bucket(&project.bucket)
                    .key(key)
                    .body(b"data".to_vec().into())
                    .send(),
            )
            .unwrap();
    }
    let recording = recorded(&project.servers.moto, || {
        let (code, stdout, stderr) = project.run(&["down", "lambda", "--yes", "--delete-data"]);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        assert!(
            stderr.contains(
                "holds objects outside the service's prefix `vgi-rpc/` (such as `reports/keep`)"
            ),
            "{stderr}"
        );
    });
    let keys: Vec<String> = cloud
        .runtime
        .block_on(cloud.s3.list_objects_v2().bucket(&project.bucket).send())
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap_or_default().to_string())
        .collect();
    assert_eq!(keys, ["reports/keep"]);
    assert!(!cloud.function_exists(&function));
    // Scheduled for deletion, restorable for 30 days.
    let deletes: Vec<serde_json::Value> = recording
        .iter()
        .filter(|r| moto_recorder::operation(r) == "DeleteSecret")
        .map(|r| serde_json::from_slice(&recorded_body(r)).unwrap())
        .collect();
    assert_eq!(deletes.len(), 1, "{recording:?}");
    assert_eq!(deletes[0]["RecoveryWindowInDays"], 30, "{}", deletes[0]);
    assert!(
        deletes[0].get("ForceDeleteWithoutRecovery").is_none(),
        "{}",
        deletes[0]
    );
    let described = cloud
        .runtime
        .block_on(
            cloud
                .secrets
                .describe_secret()
                .secret_id(&secret_name)
                .send(),
        )
        .unwrap();
    assert!(described.deleted_date().is_some(), "scheduled, not gone");
    delete_bucket(&cloud, &project.bucket);
}

/// `down --delete-data` empties a bucket under the prefix the state
/// recorded for it, also when the config names another bucket by now: the
/// objects outside that prefix (another team's) stay, and so does the bucket.
#[test]
fn down_delete_data_of_a_bucket_the_config_no_longer_names_keeps_other_prefixes() {
    let servers = servers();
    let cloud = Cloud::new(&servers);
    let unique = format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    let bucket = format!("dk-renamed-{unique}");
    make_bucket(&cloud, &bucket, false);
    let id = "0011223344556677";
    let tag = aws_sdk_s3::types::Tag::builder()
        .key("deploy-kit:deployment")
        .value(format!("svc/ci/lambda@{id}"))
        .build()
        .unwrap();
    cloud
        .runtime
        .block_on(
            cloud
                .s3
                .put_bucket_tagging()
                .bucket(&bucket)
                .tagging(
                    aws_sdk_s3::types::Tagging::builder()
                        .tag_set(tag)
                        .build()
                        .unwrap(),
                )
                .send(),
        )
        .unwrap();
    for key in ["svc/ours.bin", "other-team/theirs.bin"] {
        cloud
            .runtime
            .block_on(
                cloud
                    .s3
                    .put_object()
                    .bucket(&bucket)
                    .key(key)
                    .body(b"x".to_vec().into())
                    .send(),
            )
            .unwrap();
    }
    let dir = std::env::temp_dir().join(format!("deploy-kit-renamed-{unique}"));
    std::fs::create_dir_all(dir.join(".deploy-kit/ci/lambda")).unwrap();
    // The config moved to another bucket (and prefix); the state records the old one.
    std::fs::write(
        dir.join("deploy-kit.yaml"),
        format!(
            "version: 1
service: {{name: svc, environment: ci, package: svc}}
targets:
  lambda: {{platform: aws-lambda-function-url, region: us-east-1}}
storage: {{provider: s3, bucket: dk-new-{unique}, prefix: vgi-rpc/, credential: instance-role}}
"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join(".deploy-kit/ci/lambda/state.json"),
        serde_json::json!({
            "schema": "deploy-kit.state/v1",
            "engine": "aws",
            "environment": "ci",
            "target": "lambda",
            "id": id,
            "resources": [{
                "kind": "bucket",
                "name": bucket,
                "settings": {"lifecycle.prefix": "svc/", "region": "us-east-1"},
            }],
        })
        .to_string(),
    )
    .unwrap();
    let output = Command::cargo_bin("deploy-kit")
        .unwrap()
        .current_dir(&dir)
        .args(["down", "lambda", "--delete-data", "--yes"])
        .env("AWS_ENDPOINT_URL", &servers.moto)
        .env("AWS_ENDPOINT_URL_S3", &servers.s3)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("DEPLOY_KIT_CONFIG")
        .env_remove("DEPLOY_KIT_TARGET")
        .env_remove("DEPLOY_KIT_STATE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let listed = cloud
        .runtime
        .block_on(cloud.s3.list_objects_v2().bucket(&bucket).send());
    let keys: Vec<String> = listed
        .map(|l| {
            l.contents()
                .iter()
                .map(|o| o.key().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        keys,
        ["other-team/theirs.bin"],
        "exit {:?}\n{stderr}",
        output.status.code()
    );
    assert!(
        stderr.contains("holds objects outside the service's prefix `svc/`"),
        "{stderr}"
    );
    for key in &keys {
        let _ = cloud
            .runtime
            .block_on(cloud.s3.delete_object().bucket(&bucket).key(key).send());
    }
    delete_bucket(&cloud, &bucket);
    let _ = std::fs::remove_dir_all(&dir);
}
