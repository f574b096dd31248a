//! `build.engine: docker` against a **recording fake docker CLI** (a shell
//! script named by `DOCKER`), for the two flavors the real-podman test in
//! `build_artifacts.rs` cannot reach here (no Docker daemon or buildx on
//! CI): `docker buildx build --push --metadata-file` and `docker build` +
//! `docker push`. They pin the argv deploy-kit sends, the build context it
//! writes and how the digest is read back; whether Docker itself accepts
//! them is not tested here.

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::Command;

const DIGEST_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Logs argv; `--version` says Docker; `buildx version` succeeds only with
/// `FAKE_BUILDX`; `buildx build` writes `--metadata-file`; `push` prints
/// Docker's digest line unless `FAKE_PUSH_SILENT`.
const FAKE_DOCKER: &str = r#"#!/bin/sh
echo "$*" >> "$FAKE_DOCKER_LOG"
case "$1" in
  --version) echo "Docker version 28.2.2, build e6534b4"; exit 0;;
  buildx)
    if [ "$2" = version ]; then
      if [ -n "$FAKE_BUILDX" ]; then echo "github.com/docker/buildx v0.20.0"; exit 0; fi
      echo "docker: unknown command: docker buildx" >&2; exit 1
    fi
    previous=
    for argument in "$@"; do
      if [ "$previous" = "--metadata-file" ]; then
        printf '{"buildx.build.ref": "x", "containerimage.digest": "sha256:%s"}' "$FAKE_DIGEST_HEX" > "$argument"
      fi
      previous=$argument
    done
    exit 0;;
  build) echo "Successfully built 1234"; exit 0;;
  push)
    echo "The push refers to repository [127.0.0.1:5999/ci/x]"
    if [ -z "$FAKE_PUSH_SILENT" ]; then echo "ci: digest: sha256:$FAKE_DIGEST_HEX size: 528"; fi
    exit 0;;
esac
echo "unexpected: $*" >&2
exit 1
"#;

struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new() -> Project {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("deploy-kit.yaml"),
            "version: 1
service: {name: sensor-rpc, environment: ci, package: sensor-rpc, image: \"127.0.0.1:5999/ci/x:ci\", base_image: \"127.0.0.1:5999/base/cc:12\"}
targets:
  web: {platform: kubernetes}
  web-multi: {platform: kubernetes, architectures: [x86_64, arm64]}
build: {engine: docker}
",
        )
        .unwrap();
        let docker = dir.path().join("docker");
        std::fs::write(&docker, FAKE_DOCKER).unwrap();
        std::fs::set_permissions(&docker, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A real x86_64 ELF, and the same with e_machine = EM_AARCH64.
        let source = dir.path().join("hello.c");
        std::fs::write(&source, "int main(void) { return 0; }\n").unwrap();
        let x86 = dir.path().join("hello");
        let cc = Command::new("cc")
            .args(["-O1", "-o", x86.to_str().unwrap(), source.to_str().unwrap()])
            .output()
            .expect("cc runs");
        assert!(cc.status.success(), "{cc:?}");
        let mut bytes = std::fs::read(&x86).unwrap();
        bytes[18..20].copy_from_slice(&183u16.to_le_bytes());
        std::fs::write(dir.path().join("hello-arm64"), bytes).unwrap();
        Project { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn build(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_deploy-kit"));
        command
            .current_dir(self.dir.path())
            .arg("build")
            .args(args)
            .env("DOCKER", self.path("docker"))
            .env("FAKE_DOCKER_LOG", self.path("docker.log"))
            .env("FAKE_DIGEST_HEX", DIGEST_HEX)
            .env_remove("FAKE_BUILDX")
            .env_remove("FAKE_PUSH_SILENT")
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("DEPLOY_KIT_TARGET")
            .env_remove("DEPLOY_KIT_KIT_SERVICE");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let clean = |bytes: &[u8]| {
            String::from_utf8_lossy(bytes).replace(&self.dir.path().display().to_string(), "[dir]")
        };
        (
            output.status.code().unwrap_or(-1),
            clean(&output.stdout),
            clean(&output.stderr),
        )
    }

    /// The logged argv lines (paths as `[dir]`), cleared.
    fn take_log(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.path("docker.log")).unwrap_or_default();
        std::fs::write(self.path("docker.log"), "").unwrap();
        text.replace(&self.dir.path().display().to_string(), "[dir]")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn record(&self, target: &str) -> Option<serde_json::Value> {
        let text = std::fs::read_to_string(
            self.dir
                .path()
                .join(".deploy-kit/ci")
                .join(target)
                .join("build.json"),
        )
        .ok()?;
        Some(serde_json::from_str(&text).unwrap())
    }
}

fn context(target: &str) -> String {
    format!("[dir]/.deploy-kit/ci/{target}/docker-build")
}

#[test]
fn buildx_pushes_with_a_metadata_file_and_the_digest_is_read_from_it() {
    let project = Project::new();
    let (code, stdout, stderr) = project.build(
        &["--target", "web", "--kit-service", "hello"],
        &[("FAKE_BUILDX", "1")],
    );
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let ctx = context("web");
    assert_eq!(
        project.take_log(),
        [
            "--version".to_string(),
            "buildx version".to_string(),
            format!(
                "buildx build --platform linux/amd64 --build-arg TARGETARCH=amd64 --tag 127.0.0.1:5999/ci/x:ci --file {ctx}/Dockerfile --push --metadata-file {ctx}/metadata.json {ctx}"
            ),
        ]
    );
    let record = project.record("web").expect("build.json");
    assert_eq!(record["image"]["digest"], format!("sha256:{DIGEST_HEX}"));
    assert_eq!(
        record["image"]["reference"],
        format!("127.0.0.1:5999/ci/x@sha256:{DIGEST_HEX}")
    );
    assert_eq!(record["image"]["engine"], "docker");
    assert_eq!(
        stdout.trim(),
        format!("127.0.0.1:5999/ci/x@sha256:{DIGEST_HEX}")
    );
    let built = project.path(".deploy-kit/ci/web/docker-build");
    assert_eq!(
        std::fs::read(built.join("amd64/sensor-rpc")).unwrap(),
        std::fs::read(project.path("hello")).unwrap()
    );
    let dockerfile = std::fs::read_to_string(built.join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("FROM 127.0.0.1:5999/base/cc:12\n"),
        "{dockerfile}"
    );
}

#[test]
fn buildx_builds_every_architecture_in_one_index() {
    let project = Project::new();
    let (code, _, stderr) = project.build(
        &[
            "--target",
            "web-multi",
            "--kit-service",
            "hello",
            "--kit-service",
            "hello-arm64",
        ],
        &[("FAKE_BUILDX", "1")],
    );
    assert_eq!(code, 0, "{stderr}");
    let ctx = context("web-multi");
    let log = project.take_log();
    assert_eq!(
        log.last().unwrap(),
        &format!(
            "buildx build --platform linux/amd64,linux/arm64 --tag 127.0.0.1:5999/ci/x:ci --file {ctx}/Dockerfile --push --metadata-file {ctx}/metadata.json {ctx}"
        )
    );
    let built = project.path(".deploy-kit/ci/web-multi/docker-build");
    assert_eq!(
        std::fs::read(built.join("arm64/sensor-rpc")).unwrap(),
        std::fs::read(project.path("hello-arm64")).unwrap()
    );
    assert_eq!(
        project.record("web-multi").unwrap()["image"]["digest"],
        format!("sha256:{DIGEST_HEX}")
    );
}

#[test]
fn without_buildx_it_builds_then_pushes_and_reads_the_push_output() {
    let project = Project::new();
    let (code, _, stderr) = project.build(&["--target", "web", "--kit-service", "hello"], &[]);
    assert_eq!(code, 0, "{stderr}");
    let ctx = context("web");
    assert_eq!(
        project.take_log(),
        [
            "--version".to_string(),
            "buildx version".to_string(),
            format!(
                "build --platform linux/amd64 --build-arg TARGETARCH=amd64 --tag 127.0.0.1:5999/ci/x:ci --file {ctx}/Dockerfile {ctx}"
            ),
            "push 127.0.0.1:5999/ci/x:ci".to_string(),
        ]
    );
    assert_eq!(
        project.record("web").unwrap()["image"]["digest"],
        format!("sha256:{DIGEST_HEX}")
    );

    // A push whose output has no digest: an error, nothing recorded.
    let fresh = Project::new();
    let (code, _, stderr) = fresh.build(
        &["--target", "web", "--kit-service", "hello"],
        &[("FAKE_PUSH_SILENT", "1")],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("error: `[dir]/docker push 127.0.0.1:5999/ci/x:ci` pushed, and its digest could not be read back: its output has no `digest: sha256:...` line"),
        "{stderr}"
    );
    assert!(fresh.record("web").is_none());

    // Several architectures need buildx.
    let (code, _, stderr) = fresh.build(
        &[
            "--target",
            "web-multi",
            "--kit-service",
            "hello",
            "--kit-service",
            "hello-arm64",
        ],
        &[],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("has no `buildx`, and target `web-multi` lists 2 architectures"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: install the buildx plugin"),
        "{stderr}"
    );
    assert!(fresh.record("web-multi").is_none());
}

#[test]
fn the_context_path_helper_matches_what_build_writes() {
    assert_eq!(
        Path::new(&context("web")).file_name().unwrap(),
        deploy_kit::build::docker::CONTEXT_DIR
    );
}
