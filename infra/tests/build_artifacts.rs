//! `deploy-kit build` end to end on loopback: the example service
//! (examples/sensor-rpc) cross-linked for glibc 2.34, its Lambda zip's
//! `bootstrap` run under the fake Lambda Runtime API with a real Arrow
//! request, its image pushed to Debian's docker-registry (open, and with
//! htpasswd and TLS), read back with skopeo, run with podman and called with the Python
//! client; then each bad input and its error. `.ci/test-build` starts the
//! registries, pushes the base image and exports `KIT_TEST_*`; without them
//! these tests fail, they never skip.
#![cfg(feature = "e2e")]

#[path = "common/json.rs"]
mod json;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use arrow_array::{Array, BinaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kit_service::testing::lambda_runtime::{FakeRuntime, function_url_event};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};
use serde_json::Value;

struct Servers {
    open: String,
    tls: String,
    ca: String,
    user: String,
    password: String,
    base: String,
}

fn servers() -> Servers {
    let read = |name: &str| {
        std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
            panic!("`{name}` is not set: these tests need the registries and base image that `bash .ci/test-build` starts")
        })
    };
    Servers {
        open: read("KIT_TEST_REGISTRY"),
        tls: read("KIT_TEST_REGISTRY_TLS"),
        ca: read("KIT_TEST_REGISTRY_CA"),
        user: read("KIT_TEST_REGISTRY_USER"),
        password: read("KIT_TEST_REGISTRY_PASSWORD"),
        base: read("KIT_TEST_BASE_IMAGE"),
    }
}

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A directory with a `deploy-kit.yaml` and an empty docker config.
struct Project {
    dir: PathBuf,
}

impl Project {
    fn new(label: &str, config: &str) -> Project {
        let dir = std::env::temp_dir().join(format!(
            "deploy-kit-build-{label}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("docker")).unwrap();
        std::fs::write(dir.join("deploy-kit.yaml"), config).unwrap();
        Project { dir }
    }

    /// Runs deploy-kit here; returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let servers = servers();
        let mut command = Command::new(env!("CARGO_BIN_EXE_deploy-kit"));
        command
            .current_dir(&self.dir)
            .args(args)
            .env("DOCKER_CONFIG", self.dir.join("docker"))
            .env("DEPLOY_KIT_INSECURE_REGISTRIES", &servers.open)
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .env_remove("DEPLOY_KIT_KIT_SERVICE")
            .env_remove("DEPLOY_KIT_REGISTRY_CA")
            .env_remove("DEPLOY_KIT_REGISTRY_CHUNK_BYTES");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        );
        eprintln!("deploy-kit {}:\n{stderr}", args.join(" "));
        (output.status.code().unwrap_or(-1), stdout, stderr)
    }

    fn build_json(&self, target: &str, env: &[(&str, &str)]) -> Value {
        let (code, stdout, stderr) = self.run(&["build", "--target", target, "--json"], env);
        assert_eq!(code, 0, "build --target {target}\n{stdout}\n{stderr}");
        json::validated(&stdout)
    }

    fn docker_config(&self, json: &str) {
        std::fs::write(self.dir.join("docker/config.json"), json).unwrap();
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The example service's config: `image` and `base` per test.
fn sensor_config(image: &str, base: &str) -> String {
    format!(
        "version: 1
service:
  name: sensor-rpc
  environment: ci
  package: sensor-rpc
  binary: sensor-rpc
  features: [lambda]   # one build serves the zip and the image
  workspace: {root}
  image: {image}
  base_image: {base}
targets:
  fn: {{platform: aws-lambda-function-url, region: us-east-1}}
  fn-arm: {{platform: aws-lambda-function-url, region: us-east-1, architecture: arm64}}
  web: {{platform: kubernetes}}
  web-multi: {{platform: kubernetes, architectures: [x86_64, arm64]}}
  fn-multi: {{platform: aws-lambda-function-url, region: us-east-1, architectures: [x86_64, arm64]}}
",
        root = repository_root().display()
    )
}

fn run_tool(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| {
            panic!("`{program}` could not run ({error}); .ci/test-build installs it")
        })
}

/// The `sensor.Sensors.v1` `export` request: `bytes` bytes for `sensor`.
fn export_request(sensor: &str, bytes: i64) -> String {
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("sensor", DataType::Utf8, false),
        Field::new("bytes", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            std::sync::Arc::new(StringArray::from(vec![sensor])),
            std::sync::Arc::new(Int64Array::from(vec![bytes])),
        ],
    )
    .unwrap();
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), "export".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "sensor.Sensors.v1".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "1.0.0".into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    BASE64.encode(out)
}

/// sensor-rpc's `export_byte`: what the service must send back.
fn export_byte(sensor: &str, index: usize) -> u8 {
    let seed = sensor.bytes().fold(0u8, u8::wrapping_add);
    (index as u8).wrapping_mul(31).wrapping_add(seed)
}

#[test]
fn lambda_zip_is_checked_reproducible_and_its_bootstrap_answers_an_arrow_request() {
    let servers = servers();
    let project = Project::new(
        "zip",
        &sensor_config(&format!("{}/ci/sensor-rpc", servers.open), &servers.base),
    );
    let first = project.build_json("fn", &[]);
    assert_eq!(first["kind"], "lambda-zip");
    assert_eq!(first["binary"]["lambda_feature"], true);
    let glibc = first["binary"]["glibc"].as_str().unwrap();
    let minor: u32 = glibc.strip_prefix("2.").unwrap().parse().unwrap();
    assert!(minor <= 34, "glibc {glibc}");
    assert_eq!(first["package"]["upload"], "inline");
    // Same inputs, same bytes: the second build is cargo's no-op and the same zip.
    let second = project.build_json("fn", &[]);
    assert_eq!(first["package"]["sha256"], second["package"]["sha256"]);
    let zip = PathBuf::from(first["package"]["path"].as_str().unwrap());
    assert!(
        zip.starts_with(project.dir.join(".deploy-kit/ci/fn")),
        "{}",
        zip.display()
    );

    // Unzip as Lambda does (modes kept) and run `bootstrap` against the fake Runtime API.
    let unpacked = project.dir.join("task");
    let unzip = run_tool(
        "python3",
        &[
            "-c",
            "import os, sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor i in z.infolist():\n    z.extract(i, sys.argv[2]); os.chmod(os.path.join(sys.argv[2], i.filename), i.external_attr >> 16 & 0o777)\nprint(*sorted(z.namelist()))",
            zip.to_str().unwrap(),
            unpacked.to_str().unwrap(),
        ],
    );
    assert!(unzip.status.success(), "{unzip:?}");
    assert_eq!(
        String::from_utf8_lossy(&unzip.stdout).trim(),
        "bootstrap sensor-rpc"
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let event = function_url_event(
            "/sensor.Sensors.v1/export",
            wire::CONTENT_TYPE,
            &export_request("t1", 16),
            "203.0.113.7",
        );
        let mut fake = FakeRuntime::start(vec![("invoke-export".into(), event)]).await;
        let mut child = tokio::process::Command::new(unpacked.join("bootstrap"))
            .current_dir(&unpacked)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LAMBDA_TASK_ROOT", &unpacked)
            .env("AWS_LAMBDA_RUNTIME_API", fake.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", "sensor-rpc")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("VGI_SIGNING_KEY", "k".repeat(32))
            .env("KIT_LOG_FORMAT", "text")
            .kill_on_drop(true)
            .spawn()
            .expect("bootstrap starts");
        let outcome = fake.expect_outcome(Duration::from_secs(60)).await;
        let _ = child.kill().await;
        assert_eq!(outcome.request_id, "invoke-export");
        assert_eq!(outcome.kind, "response", "{:?}", outcome.body);
        let response = outcome.body;
        assert_eq!(response["statusCode"], 200, "{response}");
        let body = BASE64.decode(response["body"].as_str().unwrap()).unwrap();
        let streams = read_streams(&bytes::Bytes::from(body)).expect("an Arrow IPC body");
        let result = streams
            .iter()
            .flat_map(|stream| &stream.batches)
            .find(|batch| batch.batch.num_rows() == 1 && batch.batch.num_columns() == 1)
            .expect("a result batch");
        let column = result
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .expect("`result: binary`");
        let expected: Vec<u8> = (0..16).map(|i| export_byte("t1", i)).collect();
        assert_eq!(column.value(0), expected.as_slice());
        assert!(!column.is_null(0));
    });
}

fn skopeo_inspect(reference: &str, extra: &[&str], config: bool) -> Value {
    let mut args = vec!["inspect"];
    if config {
        args.push("--config");
    }
    args.extend(extra);
    let target = format!("docker://{reference}");
    args.push(&target);
    let output = run_tool("skopeo", &args);
    assert!(output.status.success(), "skopeo {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A podman container; removed when dropped.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman").args(["rm", "-f", &self.0]).output();
    }
}

fn wait_healthy(url: &str, podman: &str, name: &str) {
    for _ in 0..300 {
        if std::net::TcpStream::connect(url.trim_start_matches("http://")).is_ok() {
            let probe = run_tool("curl", &["-sf", &format!("{url}/healthz")]);
            if probe.status.success() {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let state = run_tool(podman, &["ps", "-a", "--filter", &format!("name={name}")]);
    let logs = run_tool(podman, &["logs", name]);
    panic!(
        "the container at {url} did not answer /healthz within 60 s\n{}\nlog:\n{}{}",
        String::from_utf8_lossy(&state.stdout),
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[test]
fn image_is_pushed_by_digest_read_back_run_with_podman_and_called_with_python() {
    let servers = servers();
    let image = format!("{}/ci/sensor-rpc:ci", servers.open);
    let project = Project::new("image", &sensor_config(&image, &servers.base));
    let first = project.build_json("web", &[]);
    let reference = first["image"]["reference"].as_str().unwrap().to_string();
    let digest = first["image"]["digest"].as_str().unwrap().to_string();
    assert_eq!(
        reference,
        format!("{}/ci/sensor-rpc@{digest}", servers.open)
    );
    assert!(first["image"]["pushed"]["bytes_pushed"].as_u64().unwrap() > 1_000_000);
    // The base layer is mounted from `base/debian-cc` in the same registry, never re-uploaded.
    assert_eq!(first["image"]["pushed"]["blobs_mounted"], 1, "{first}");

    // No source change: the same digest, and nothing new goes up.
    let second = project.build_json("web", &[]);
    assert_eq!(second["image"]["digest"], digest);
    assert_eq!(second["image"]["pushed"]["bytes_pushed"], 0, "{second}");
    assert_eq!(second["image"]["pushed"]["blobs_pushed"], 0);

    // What the registry holds, read by another client.
    let inspected = skopeo_inspect(&reference, &["--tls-verify=false"], false);
    assert_eq!(inspected["Digest"], digest);
    assert_eq!(inspected["Architecture"], "amd64");
    let config = skopeo_inspect(&reference, &["--tls-verify=false"], true);
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/sensor-rpc"])
    );
    assert_eq!(
        config["config"]["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}})
    );
    assert_eq!(
        config["config"]["Labels"]["org.opencontainers.image.title"],
        "sensor-rpc"
    );

    // Deploy by digest: the plan names what was pushed, not the tag.
    let (_, _, stderr) = project.run(&["plan", "web", "--force"], &[]);
    assert!(
        stderr.contains(&format!("artifact: {reference}")),
        "{stderr}"
    );

    // Run it with podman (host network) and call it with the real Python client.
    let podman = std::env::var("KIT_TEST_PODMAN").unwrap_or_else(|_| "podman".into());
    let port = free_port();
    let name = format!("deploy-kit-build-{}", std::process::id());
    let listen = format!("127.0.0.1:{port}");
    // The image sets `PORT=8080`, which the platforms override and which wins over `--listen`'s port.
    let port_variable = format!("PORT={port}");
    let run = run_tool(
        &podman,
        &[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "host",
            "--tls-verify=false",
            "-e",
            &port_variable,
            "-e",
            "VGI_SIGNING_KEY=kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
            "-e",
            "KIT_STORAGE=local",
            "-e",
            "KIT_STORAGE_DIR=/tmp/objects",
            "-e",
            "KIT_URL_ALLOWLIST=http://127.0.0.1",
            "-e",
            "KIT_EXTERNALIZE_THRESHOLD_BYTES=1048576",
            &reference,
            "serve",
            "--listen",
            &listen,
        ],
    );
    assert!(run.status.success(), "podman run: {run:?}");
    let _container = Container(name.clone());
    let url = format!("http://{listen}");
    wait_healthy(&url, &podman, &name);
    // The service runs as the image's user, 65532 (`nonroot` in the base's /etc/passwd).
    let user = run_tool(&podman, &["top", &name, "user"]);
    let users = String::from_utf8_lossy(&user.stdout);
    assert!(
        user.status.success() && (users.contains("nonroot") || users.contains("65532")),
        "{user:?}"
    );
    let python = format!(
        "{}/bin/python",
        std::env::var("VGI_VENV").expect("`VGI_VENV` (the vgi-rpc venv .ci/lib.sh makes)")
    );
    let client = Command::new(&python)
        .arg(repository_root().join("tests/python/sensor_rpc.py"))
        .arg(&url)
        .output()
        .unwrap();
    let logs = run_tool(&podman, &["logs", &name]);
    assert!(
        client.status.success(),
        "python client: {client:?}\ncontainer log:\n{}",
        String::from_utf8_lossy(&logs.stderr)
    );
}

#[test]
fn secure_registry_needs_credentials_and_takes_chunked_uploads() {
    let servers = servers();
    let image = format!("{}/ci/sensor-rpc-secure:ci", servers.tls);
    let project = Project::new("secure", &sensor_config(&image, &servers.base));
    let ca = ("DEPLOY_KIT_REGISTRY_CA", servers.ca.as_str());

    // No credentials: 401, named, with the login command.
    let (code, _, stderr) = project.run(&["build", "--target", "web"], &[ca]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "registry `{}` refused the credentials for `ci/sensor-rpc-secure` (401: no credentials)",
            servers.tls
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("hint: log in with `docker login {}`", servers.tls)),
        "{stderr}"
    );

    // A wrong password: 401 too.
    let wrong = BASE64.encode(format!("{}:wrong", servers.user));
    project.docker_config(&format!(
        r#"{{"auths": {{"{}": {{"auth": "{wrong}"}}}}}}"#,
        servers.tls
    ));
    let (code, _, stderr) = project.run(&["build", "--target", "web"], &[ca]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("refused the credentials") && stderr.contains("(401)"),
        "{stderr}"
    );

    // Without the CA the TLS handshake fails: the registry is "unreachable", with the CA hint.
    let right = BASE64.encode(format!("{}:{}", servers.user, servers.password));
    project.docker_config(&format!(
        r#"{{"auths": {{"https://{}": {{"auth": "{right}"}}}}}}"#,
        servers.tls
    ));
    let (code, _, stderr) = project.run(&["build", "--target", "web"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("DEPLOY_KIT_REGISTRY_CA"), "{stderr}");

    // The right credentials, the CA, and 1 MiB chunks: the binary layer goes up in PATCHes.
    let record = project.build_json("web", &[ca, ("DEPLOY_KIT_REGISTRY_CHUNK_BYTES", "1048576")]);
    let digest = record["image"]["digest"].as_str().unwrap();
    assert!(record["image"]["pushed"]["bytes_pushed"].as_u64().unwrap() > 1_048_576);
    // Another registry, the same content: the same digest as on the open registry.
    let cert_dir = Path::new(&servers.ca)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let creds = format!("{}:{}", servers.user, servers.password);
    let inspected = skopeo_inspect(
        record["image"]["reference"].as_str().unwrap(),
        &["--cert-dir", &cert_dir, "--creds", &creds],
        false,
    );
    assert_eq!(inspected["Digest"], digest);

    // An unknown credential helper is named before anything compiles.
    project.docker_config(&format!(
        r#"{{"credHelpers": {{"{}": "kit-missing"}}}}"#,
        servers.tls
    ));
    let (code, _, stderr) = project.run(&["build", "--target", "web"], &[ca]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("credential helper `docker-credential-kit-missing`")
            && stderr.contains("is not on `PATH`"),
        "{stderr}"
    );
    assert!(!stderr.contains("build: cargo zigbuild"), "{stderr}");
}

/// A C program built here with gcc (the host glibc).
fn c_binary(dir: &Path, name: &str, source: &str) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    std::fs::write(&c, source).unwrap();
    let out = dir.join(name);
    let gcc = run_tool(
        "gcc",
        &["-O1", "-o", out.to_str().unwrap(), c.to_str().unwrap()],
    );
    assert!(gcc.status.success(), "gcc: {gcc:?}");
    out
}

#[test]
fn bad_inputs_each_name_what_to_fix() {
    let servers = servers();
    let project = Project::new(
        "bad",
        &sensor_config(&format!("{}/ci/never-pushed", servers.open), &servers.base),
    );
    let dir = project.dir.clone();

    // A binary without the `lambda` feature (no marker), for a Lambda target.
    let hello = c_binary(&dir, "hello", "int main(void) { return 0; }\n");
    let (code, _, stderr) = project.run(
        &[
            "build",
            "--target",
            "fn",
            "--kit-service",
            hello.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("was built without the `lambda` feature"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: give the service package a `lambda"),
        "{stderr}"
    );

    // glibc too new: arc4random is GLIBC_2.36 (Debian 12's glibc, this machine's).
    let new_glibc = c_binary(
        &dir,
        "new-glibc",
        "#include <stdlib.h>\nint main(void) { return (int)(arc4random() & 1); }\n",
    );
    let (code, _, stderr) = project.run(
        &[
            "build",
            "--target",
            "fn",
            "--kit-service",
            new_glibc.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("needs glibc 2.36, newer than the 2.34 of Lambda's `provided.al2023`"),
        "{stderr}"
    );

    // The wrong architecture: the same ELF with e_machine = EM_AARCH64.
    let mut bytes = std::fs::read(&hello).unwrap();
    bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
    let arm = dir.join("hello-arm64");
    std::fs::write(&arm, bytes).unwrap();
    let (code, _, stderr) = project.run(
        &[
            "build",
            "--target",
            "fn",
            "--kit-service",
            arm.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is built for arm64 (aarch64), and the target runs on x86_64"),
        "{stderr}"
    );

    // An arm64 target on a toolchain with only the x86_64 Linux target.
    let (code, _, stderr) = project.run(&["build", "--target", "fn-arm"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("the Rust target `aarch64-unknown-linux-gnu` is not installed, and target architecture `arm64` needs it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: run `rustup target add aarch64-unknown-linux-gnu`"),
        "{stderr}"
    );

    // The registry is down: nothing listens on the port.
    let closed = free_port();
    let down = Project::new(
        "down",
        &sensor_config(&format!("127.0.0.1:{closed}/ci/x"), &servers.base),
    );
    let (code, _, stderr) = down.run(
        &[
            "build",
            "--target",
            "web",
            "--kit-service",
            hello.to_str().unwrap(),
        ],
        &[(
            "DEPLOY_KIT_INSECURE_REGISTRIES",
            &format!("{},127.0.0.1:{closed}", servers.open),
        )],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("registry `127.0.0.1:{closed}` is unreachable")),
        "{stderr}"
    );

    // A base image that is not in its registry.
    let missing = Project::new(
        "missing-base",
        &sensor_config(
            &format!("{}/ci/x", servers.open),
            &format!("{}/base/nope:1", servers.open),
        ),
    );
    let (code, _, stderr) = missing.run(
        &[
            "build",
            "--target",
            "web",
            "--kit-service",
            hello.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "`{}/base/nope:1` does not exist in its registry (404)",
            servers.open
        )),
        "{stderr}"
    );
    assert!(stderr.contains("hint: push the base image"), "{stderr}");

    // A compile error: cargo's message is shown, the exit is 1, and nothing is pushed.
    let crate_dir = dir.join("broken");
    std::fs::create_dir_all(crate_dir.join("src")).unwrap();
    std::fs::write(
        crate_dir.join("Cargo.toml"),
        "[package]\nname = \"broken\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[features]\nlambda = []\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        crate_dir.join("src/main.rs"),
        "fn main() {\n    let count: u32 = \"many\";\n}\n",
    )
    .unwrap();
    let broken = Project::new(
        "broken",
        &format!(
            "version: 1\nservice:\n  name: broken\n  package: broken\n  workspace: {}\n  image: {}/ci/broken\n  base_image: {}\ntargets:\n  web: {{platform: kubernetes}}\n",
            crate_dir.display(),
            servers.open,
            servers.base
        ),
    );
    let (code, _, stderr) = broken.run(&["build", "--target", "web"], &[]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("mismatched types"),
        "cargo's message: {stderr}"
    );
    assert!(stderr.contains("nothing was pushed"), "{stderr}");
    let tags = run_tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            &format!("docker://{}/ci/broken:0.1.0", servers.open),
        ],
    );
    assert!(!tags.status.success(), "a failed build pushed an image");
}

/// Debian's `docker-registry` on a free port of 127.0.0.1 (plain HTTP)
/// with htpasswd auth for one user; stopped when dropped.
struct AuthRegistry {
    address: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl AuthRegistry {
    fn start(user: &str, password: &str) -> AuthRegistry {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = run_tool("htpasswd", &["-Bbn", user, password]);
        assert!(htpasswd.status.success(), "htpasswd: {htpasswd:?}");
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage: {{filesystem: {{rootdirectory: {data}}}}}\nauth: {{htpasswd: {{realm: deploy-kit-cloud-login, path: {htpasswd}}}}}\nhttp: {{addr: {address}}}\n",
                data = dir.path().join("data").display(),
                htpasswd = dir.path().join("htpasswd").display(),
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .args(["serve", dir.path().join("config.yml").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("`/usr/bin/docker-registry` runs (.ci/test-build installs Debian's docker-registry)");
        let mut registry = AuthRegistry {
            address,
            child,
            _dir: dir,
        };
        for _ in 0..100 {
            if let Ok(Some(status)) = registry.child.try_wait() {
                panic!("docker-registry exited: {status}");
            }
            let probe = ureq::get(&format!("http://{}/v2/", registry.address))
                .config()
                .http_status_as_error(false)
                .build()
                .call();
            if let Ok(reply) = probe {
                // It checks credentials: anonymous is refused.
                assert_eq!(reply.status(), 401);
                return registry;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("docker-registry at {} did not answer", registry.address);
    }
}

impl Drop for AuthRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config whose image goes to `image`, logging in with `registry_auth`.
fn login_config(image: &str, base: &str, registry_auth: &str) -> String {
    format!(
        "version: 1
service: {{name: sensor-rpc, environment: ci, package: hello, image: {image}, base_image: {base}}}
targets:
  web: {{platform: kubernetes}}
build:
  registry_auth: {registry_auth}
"
    )
}

/// Builds `--target web` from the prebuilt `binary`; the record, or the failure.
fn build_with(
    project: &Project,
    binary: &Path,
    env: &[(&str, &str)],
) -> Result<Value, (i32, String)> {
    let (code, stdout, stderr) = project.run(
        &[
            "build",
            "--target",
            "web",
            "--json",
            "--kit-service",
            binary.to_str().unwrap(),
        ],
        env,
    );
    if code == 0 {
        Ok(json::validated(&stdout))
    } else {
        Err((code, stderr))
    }
}

/// ECR's login: `GetAuthorizationToken` (moto here) gives base64
/// `AWS:<password>`. The test asks moto itself (a raw call, not deploy-kit's
/// code), puts that user and password in the registry's htpasswd, and the
/// push with `build.registry_auth: ecr` must be accepted; moto's recorder
/// shows deploy-kit's call. Without the login the same push gets 401.
#[test]
fn ecr_login_gets_a_token_from_get_authorization_token_and_the_registry_takes_it() {
    let servers = servers();
    let moto = std::env::var("KIT_TEST_MOTO_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .expect("`KIT_TEST_MOTO_ENDPOINT` is not set: `.ci/test-build` starts moto_server");
    let ecr_call = |body: &str| {
        ureq::post(&moto)
            .header("Content-Type", "application/x-amz-json-1.1")
            .header(
                "X-Amz-Target",
                "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken",
            )
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ecr/aws4_request, SignedHeaders=host, Signature=0",
            )
            .send(body)
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap()
    };
    let answer: Value = serde_json::from_str(&ecr_call("{}")).unwrap();
    let token = answer["authorizationData"][0]["authorizationToken"]
        .as_str()
        .expect("moto answers a token");
    let decoded = String::from_utf8(BASE64.decode(token).unwrap()).unwrap();
    let (user, password) = decoded.split_once(':').unwrap();
    assert_eq!(user, "AWS");
    let registry = AuthRegistry::start(user, password);
    let image = format!("{}/ci/sensor-rpc-ecr:ci", registry.address);
    let insecure = format!("{},{}", servers.open, registry.address);
    let aws = [
        ("DEPLOY_KIT_INSECURE_REGISTRIES", insecure.as_str()),
        ("AWS_ENDPOINT_URL", moto.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];

    // The docker config (empty) alone: anonymous, refused.
    let project = Project::new(
        "ecr-none",
        &login_config(&image, &servers.base, "docker-config"),
    );
    let hello = c_binary(&project.dir, "hello", "int main(void) { return 0; }\n");
    let (code, stderr) = build_with(&project, &hello, &aws).unwrap_err();
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("(401: no credentials)"), "{stderr}");

    // The ECR login: accepted; moto saw deploy-kit's GetAuthorizationToken.
    let project = Project::new("ecr", &login_config(&image, &servers.base, "ecr"));
    let hello = c_binary(&project.dir, "hello", "int main(void) { return 0; }\n");
    let post = |path: &str| {
        ureq::post(&format!("{moto}/moto-api/recorder/{path}"))
            .send_empty()
            .unwrap();
    };
    post("reset-recording");
    post("start-recording");
    let record = build_with(&project, &hello, &aws).unwrap_or_else(|(code, stderr)| {
        panic!("build with the ECR login exited {code}\n{stderr}")
    });
    post("stop-recording");
    let recording = ureq::get(&format!("{moto}/moto-api/recorder/download-recording"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let calls: Vec<Value> = recording
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap())
        .filter(|request: &Value| {
            request["headers"]
                .as_object()
                .and_then(|headers| {
                    headers
                        .iter()
                        .find(|(name, _)| name.eq_ignore_ascii_case("x-amz-target"))
                })
                .and_then(|(_, value)| value.as_str())
                .is_some_and(|target| target.ends_with(".GetAuthorizationToken"))
        })
        .collect();
    assert_eq!(calls.len(), 1, "one GetAuthorizationToken: {recording}");
    let reference = record["image"]["reference"].as_str().unwrap();
    assert!(reference.starts_with(&format!(
        "{image_repo}@sha256:",
        image_repo = image.trim_end_matches(":ci")
    )));
    let creds = format!("{user}:{password}");
    let inspected = skopeo_inspect(reference, &["--tls-verify=false", "--creds", &creds], false);
    assert_eq!(inspected["Digest"], record["image"]["digest"]);
}

/// A fake Google OAuth token endpoint: answers every `POST /token` with
/// `token` and keeps the form bodies it received.
struct FakeGoogle {
    base: String,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeGoogle {
    fn start(token: &str) -> FakeGoogle {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let token = token.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("content-length")
                    {
                        length = value.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let (status, answer) = if request_line.starts_with("POST /token ") {
                    record
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                    (
                        "200 OK",
                        serde_json::json!({"access_token": token, "expires_in": 3600, "token_type": "Bearer"})
                            .to_string(),
                    )
                } else {
                    ("404 Not Found", "{}".to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        FakeGoogle { base, seen }
    }
}

/// Artifact Registry's login: a Google access token as the password of
/// `oauth2accesstoken`. The token comes from a recording fake of Google's
/// token endpoint (an `authorized_user` credentials file points at it); the
/// registry's htpasswd holds that token, so only a push that really used
/// it is accepted.
#[test]
fn artifact_registry_login_uses_the_google_access_token() {
    let servers = servers();
    let token = format!("ya29.kit-{}", std::process::id());
    let google = FakeGoogle::start(&token);
    let registry = AuthRegistry::start("oauth2accesstoken", &token);
    let image = format!("{}/ci/sensor-rpc-ar:ci", registry.address);
    let project = Project::new(
        "artifact-registry",
        &login_config(&image, &servers.base, "artifact-registry"),
    );
    let credentials = project.dir.join("adc.json");
    std::fs::write(
        &credentials,
        serde_json::json!({
            "type": "authorized_user",
            "client_id": "kit-client",
            "client_secret": "kit-secret",
            "refresh_token": "kit-refresh-token",
            "token_uri": format!("{}/token", google.base),
        })
        .to_string(),
    )
    .unwrap();
    let hello = c_binary(&project.dir, "hello", "int main(void) { return 0; }\n");
    let insecure = format!("{},{}", servers.open, registry.address);
    let env = [
        ("DEPLOY_KIT_INSECURE_REGISTRIES", insecure.as_str()),
        (
            "GOOGLE_APPLICATION_CREDENTIALS",
            credentials.to_str().unwrap(),
        ),
    ];
    let record = build_with(&project, &hello, &env).unwrap_or_else(|(code, stderr)| {
        panic!("build with the Artifact Registry login exited {code}\n{stderr}")
    });
    let seen = google.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one token request: {seen:?}");
    assert!(
        seen[0].contains("grant_type=refresh_token") && seen[0].contains("kit-refresh-token"),
        "{seen:?}"
    );
    let creds = format!("oauth2accesstoken:{token}");
    let inspected = skopeo_inspect(
        record["image"]["reference"].as_str().unwrap(),
        &["--tls-verify=false", "--creds", &creds],
        false,
    );
    assert_eq!(inspected["Digest"], record["image"]["digest"]);

    // Credentials the token endpoint does not know: a clear error, nothing pushed.
    std::fs::write(&credentials, "{\"type\": \"authorized_user\"}").unwrap();
    let (code, stderr) = build_with(&project, &hello, &env).unwrap_err();
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "no Google access token for Artifact Registry `{}`",
            registry.address
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: run `gcloud auth application-default login`"),
        "{stderr}"
    );
}

/// Pushes a blob to `repository` on the open registry (the OCI API, by
/// hand: the test's own client, not deploy-kit's).
fn push_blob(registry: &str, repository: &str, bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(bytes));
    let started = ureq::post(&format!("http://{registry}/v2/{repository}/blobs/uploads/"))
        .send_empty()
        .unwrap();
    assert_eq!(started.status(), 202);
    let location = started.headers()["location"].to_str().unwrap().to_string();
    let location = if location.starts_with('/') {
        format!("http://{registry}{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let put = ureq::put(&format!("{location}{separator}digest={digest}"))
        .header("content-type", "application/octet-stream")
        .send(bytes)
        .unwrap();
    assert_eq!(put.status(), 201);
    digest
}

fn put_manifest(registry: &str, repository: &str, reference: &str, media_type: &str, bytes: &[u8]) {
    let put = ureq::put(&format!(
        "http://{registry}/v2/{repository}/manifests/{reference}"
    ))
    .header("content-type", media_type)
    .send(bytes)
    .unwrap();
    assert_eq!(put.status(), 201);
}

/// A two-architecture base on the open registry: an index over the test
/// base (`linux/amd64`) and a minimal `linux/arm64` image (one layer with
/// `/etc/passwd`: enough to build on and inspect; nothing runs arm64
/// here). Returns its reference.
fn two_architecture_base(servers: &Servers) -> String {
    use sha2::Digest as _;
    let registry = &servers.open;
    let repository = "base/debian-cc";
    let mut tar = tar::Builder::new(Vec::new());
    let passwd = b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/home/nonroot:/sbin/nologin\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(passwd.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_cksum();
    tar.append_data(&mut header, "etc/passwd", &passwd[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, &tar).unwrap();
    let gzip = gzip.finish().unwrap();
    let layer = push_blob(registry, repository, &gzip);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "arm64", "variant": "v8", "os": "linux",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{:x}", sha2::Sha256::digest(&tar))]},
    }))
    .unwrap();
    let config_digest = push_blob(registry, repository, &config);
    let arm = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": gzip.len()}],
    }))
    .unwrap();
    let arm_digest = format!("sha256:{:x}", sha2::Sha256::digest(&arm));
    put_manifest(
        registry,
        repository,
        &arm_digest,
        "application/vnd.oci.image.manifest.v1+json",
        &arm,
    );
    let tag = servers.base.rsplit(':').next().unwrap();
    let mut amd = ureq::get(&format!(
        "http://{registry}/v2/{repository}/manifests/{tag}"
    ))
    .header("accept", "application/vnd.oci.image.manifest.v1+json")
    .call()
    .unwrap();
    let amd = amd.body_mut().read_to_vec().unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{:x}", sha2::Sha256::digest(&amd)), "size": amd.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm_digest, "size": arm.len(), "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        ],
    }))
    .unwrap();
    put_manifest(
        registry,
        repository,
        "multi",
        "application/vnd.oci.image.index.v1+json",
        &index,
    );
    format!("{registry}/{repository}:multi")
}

/// `architectures: [x86_64, arm64]` on an image target: one image per
/// architecture, pushed by digest, then an OCI image index over them under
/// the tag; the record (and so every deploy) names the index's digest.
/// Only the x86_64 Rust standard library is installed here, so the binaries
/// are prebuilt: a C program built with gcc (x86_64) and with zig
/// (`python-zig cc -target aarch64-linux-gnu.2.17`, a real aarch64 ELF).
/// skopeo reads the index back raw (its bytes hash to the recorded digest,
/// one `linux/<arch>` entry per image) and each image's config (its
/// architecture and the binary's sha256); a rebuild pushes nothing and
/// gives the same index. Without the binaries the arm64 compile is refused
/// up front, naming `rustup target add aarch64-unknown-linux-gnu`.
#[test]
fn several_architectures_make_an_image_index_deployed_by_its_digest() {
    use sha2::Digest as _;
    let servers = servers();
    let base = two_architecture_base(&servers);
    let image = format!("{}/ci/sensor-rpc-multi:ci", servers.open);
    let project = Project::new("multi", &sensor_config(&image, &base));
    let source = "int main(void) { return 0; }\n";
    let amd = c_binary(&project.dir, "hello", source);
    let arm = project.dir.join("hello-arm64");
    let zig = run_tool(
        "python-zig",
        &[
            "cc",
            "-target",
            "aarch64-linux-gnu.2.17",
            "-O1",
            "-o",
            arm.to_str().unwrap(),
            project.dir.join("hello.c").to_str().unwrap(),
        ],
    );
    assert!(zig.status.success(), "zig cc: {zig:?}");
    // An ELF for EM_AARCH64 (183).
    let arm_bytes = std::fs::read(&arm).unwrap();
    assert_eq!(&arm_bytes[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([arm_bytes[18], arm_bytes[19]]), 183);
    let (amd_path, arm_path) = (amd.to_str().unwrap(), arm.to_str().unwrap());

    let build = || {
        let (code, stdout, stderr) = project.run(
            &[
                "build",
                "--target",
                "web-multi",
                "--json",
                "--kit-service",
                arm_path,
                "--kit-service",
                amd_path,
            ],
            &[],
        );
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        json::validated(&stdout)
    };
    let record = build();
    assert_eq!(
        record["architectures"],
        serde_json::json!(["x86_64", "arm64"])
    );
    let platforms = record["image"]["platforms"].as_array().unwrap();
    assert_eq!(platforms.len(), 2, "{record}");
    let digest = record["image"]["digest"].as_str().unwrap();
    let reference = record["image"]["reference"].as_str().unwrap();
    assert_eq!(
        reference,
        format!("{}/ci/sensor-rpc-multi@{digest}", servers.open)
    );

    // The index as the registry holds it, read back raw.
    let raw = run_tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    assert!(raw.status.success(), "{raw:?}");
    assert_eq!(
        format!("sha256:{:x}", sha2::Sha256::digest(&raw.stdout)),
        digest
    );
    let index: Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 2);
    for (entry, (platform, architecture, binary)) in manifests.iter().zip([
        (&platforms[0], "amd64", &amd),
        (&platforms[1], "arm64", &arm),
    ]) {
        assert_eq!(entry["platform"]["os"], "linux");
        assert_eq!(entry["platform"]["architecture"], architecture);
        assert_eq!(entry["digest"], platform["digest"]);
        assert_eq!(
            entry["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        let by_digest = format!(
            "{}/ci/sensor-rpc-multi@{}",
            servers.open,
            entry["digest"].as_str().unwrap()
        );
        let config = skopeo_inspect(&by_digest, &["--tls-verify=false"], true);
        assert_eq!(config["architecture"], architecture, "{config}");
        let sha = format!("{:x}", sha2::Sha256::digest(std::fs::read(binary).unwrap()));
        assert_eq!(
            config["config"]["Labels"]["dev.deploy-kit.binary.sha256"],
            sha
        );
        assert_eq!(platform["binary"]["sha256"], sha);
    }

    // The same binaries again: the same index, nothing uploaded.
    let again = build();
    assert_eq!(again["image"]["digest"], digest);
    assert_eq!(again["image"]["pushed"]["bytes_pushed"], 0, "{again}");

    // One binary for two architectures: the missing one is named.
    let (code, _, stderr) = project.run(
        &["build", "--target", "web-multi", "--kit-service", amd_path],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("no prebuilt binary for architecture `arm64` of target `web-multi`"),
        "{stderr}"
    );

    // Compiling: the arm64 standard library is not installed here, which is
    // named before anything compiles.
    let (code, _, stderr) = project.run(&["build", "--target", "web-multi"], &[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("hint: run `rustup target add aarch64-unknown-linux-gnu`"),
        "{stderr}"
    );
    assert!(!stderr.contains("build: cargo zigbuild"), "{stderr}");

    // A Lambda function runs on one architecture.
    let (code, _, stderr) = project.run(
        &["build", "--target", "fn-multi", "--kit-service", amd_path],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr
            .contains("target `fn-multi` lists 2 architectures, and a Lambda function runs on one"),
        "{stderr}"
    );
}

/// `build.engine: docker` with the real podman (`DOCKER=podman`): the
/// checked binary on the Debian-made base, built from the rendered
/// Dockerfile and pushed by podman; the digest deploy-kit records is the
/// one skopeo reads back, and `plan` deploys it. A missing CLI and a build
/// that fails (a base image that does not exist) each name what to fix and
/// record nothing.
#[test]
fn docker_engine_builds_with_podman_and_records_the_pushed_digest() {
    let servers = servers();
    let image = format!("{}/ci/docker-engine:ci", servers.open);
    let yaml = format!(
        "{}build: {{engine: docker}}\n",
        sensor_config(&image, &servers.base)
    );
    let project = Project::new("docker-engine", &yaml);
    // podman reads the same login file; with `DOCKER_CONFIG` set it must exist.
    project.docker_config("{}");
    let hello = c_binary(&project.dir, "hello", "int main(void) { return 0; }\n");
    let hello_path = hello.to_str().unwrap();
    let podman = std::env::var("KIT_TEST_PODMAN").unwrap_or_else(|_| "podman".into());
    let docker_env = [("DOCKER", podman.as_str())];
    let (code, stdout, stderr) = project.run(
        &[
            "build",
            "--target",
            "web",
            "--json",
            "--kit-service",
            hello_path,
        ],
        &docker_env,
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!("build: {podman} build --platform linux/amd64")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("build: {podman} push")),
        "{stderr}"
    );
    let record = json::validated(&stdout);
    assert_eq!(record["image"]["engine"], "docker", "{record}");
    let digest = record["image"]["digest"].as_str().unwrap().to_string();
    let reference = record["image"]["reference"].as_str().unwrap().to_string();
    assert_eq!(
        reference,
        format!("{}/ci/docker-engine@{digest}", servers.open)
    );
    // The rendered Dockerfile is kept beside the record.
    let dockerfile = std::fs::read_to_string(
        project
            .dir
            .join(".deploy-kit/ci/web/docker-build/Dockerfile"),
    )
    .unwrap();
    assert!(
        dockerfile.contains(&format!("FROM {}\n", servers.base)),
        "{dockerfile}"
    );

    // What the registry holds under the tag is what deploy-kit recorded,
    // and the manifest's bytes hash to that digest.
    let tagged = skopeo_inspect(&image, &["--tls-verify=false"], false);
    assert_eq!(tagged["Digest"], digest);
    let raw = run_tool(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    );
    assert!(raw.status.success(), "{raw:?}");
    use sha2::Digest as _;
    let hashed: String = sha2::Sha256::digest(&raw.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(format!("sha256:{hashed}"), digest);
    let config = skopeo_inspect(&reference, &["--tls-verify=false"], true);
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/usr/local/bin/sensor-rpc"])
    );
    assert_eq!(
        config["config"]["Labels"]["dev.deploy-kit.binary.sha256"],
        record["binary"]["sha256"]
    );

    // Deploy by digest, as with the native engine.
    let (_, _, stderr) = project.run(&["plan", "web", "--force"], &[]);
    assert!(stderr.contains(&reference), "{stderr}");

    // No docker CLI: the error names the setting and the way back.
    let fresh = Project::new("docker-missing", &yaml);
    let (code, _, stderr) = fresh.run(
        &["build", "--target", "web", "--kit-service", hello_path],
        &[("DOCKER", "/nonexistent/docker")],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(
            "`build.engine: docker` needs a docker CLI, and `/nonexistent/docker` does not exist"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("set `build.engine: native`"), "{stderr}");
    assert!(!fresh.dir.join(".deploy-kit/ci/web/build.json").exists());

    // The build fails (no such base image): podman's own words, nothing recorded.
    let missing_base = format!("{}/base/does-not-exist:1", servers.open);
    let broken = Project::new(
        "docker-broken",
        &format!(
            "{}build: {{engine: docker}}\n",
            sensor_config(&image, &missing_base)
        ),
    );
    broken.docker_config("{}");
    let (code, _, stderr) = broken.run(
        &["build", "--target", "web", "--kit-service", hello_path],
        &docker_env,
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains(&format!("error: `{podman} build --platform")),
        "{stderr}"
    );
    assert!(
        stderr.contains("nothing was recorded. Its output:"),
        "{stderr}"
    );
    assert!(stderr.contains("does-not-exist"), "{stderr}");
    assert!(
        stderr.contains("hint: fix what the docker CLI says above"),
        "{stderr}"
    );
    assert!(!broken.dir.join(".deploy-kit/ci/web/build.json").exists());
    // podman keeps what it built in its local store; the registry has it.
    let _ = run_tool(&podman, &["rmi", "-f", &image]);
}
