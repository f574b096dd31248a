//! The GCP storage path against the real gcp-storage-emulator (feature
//! `gcp`): `up` creates the bucket with lifecycle rules on the prefix and
//! CORS, reads them back, changes nothing the second time and keeps rules it
//! does not own; `doctor --online` (the real binary) passes the storage checks
//! for that bucket and fails STO004/STO005 for a bucket without rules; `down`
//! keeps data unless `--delete-data` and never deletes a bucket it did not
//! create.
//!
//! `.ci/test-gcp` starts the emulator and sets `KIT_TEST_GCS_ENDPOINT`. Run by
//! hand: `gcp-storage-emulator start --host=127.0.0.1 --port=PORT --in-memory`,
//! then `KIT_TEST_GCS_ENDPOINT=http://127.0.0.1:PORT cargo test -p deploy-kit
//! --features gcp --test gcp_storage`. Without it every test fails: a missing
//! emulator must not look like a pass.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use assert_cmd::cargo::CommandCargoExt;
use deploy_kit::config::DeployConfig;
use deploy_kit::engine::Progress;
use deploy_kit::engine::gcp::apply::{down_with, up_with, up_with_request};
use deploy_kit::engine::target::UpRequest;
use deploy_kit::gcp::Client;
use deploy_kit::gcp::storage::{StorageApi, cors_of, lifecycle_of};
use serde_json::{Value, json};

fn emulator() -> String {
    std::env::var("KIT_TEST_GCS_ENDPOINT")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "`KIT_TEST_GCS_ENDPOINT` is not set: start the emulator first (`gcp-storage-emulator start --host=127.0.0.1 --port=PORT --in-memory`, then `KIT_TEST_GCS_ENDPOINT=http://127.0.0.1:PORT`), or run `bash .ci/test-gcp`"
            )
        })
}

/// A working directory with a `deploy-kit.yaml`, a bucket name of its own,
/// and the emulator's address; removed on drop.
struct Fixture {
    dir: PathBuf,
    endpoint: String,
    bucket: String,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let endpoint = emulator();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "deploy-kit-gcp-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Fixture {
            dir,
            endpoint,
            bucket: format!("dk-{name}-{}-{}", std::process::id(), nanos % 1_000_000_000),
        }
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("deploy-kit.yaml")
    }

    /// A `cloud-functions` target (storage and key only: no Cloud Run calls)
    /// whose storage is the emulator.
    fn write_config(&self, expiry_days: u32) -> DeployConfig {
        // ART001 checks this repository's kit-service.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .display()
            .to_string();
        let yaml = format!(
            r#"version: 1
service:
  name: gcp-test
  package: kit-service
  workspace: "{root}"
targets:
  fn:
    platform: cloud-functions
    project: test-project
    region: europe-west1
limits:
  upload_urls: true
  max_request_bytes: 30000000
  max_response_bytes: 30000000
  externalize_threshold_bytes: 8000000
  shutdown_grace_seconds: 8
cors:
  origins: [https://app.example.com]
signing_key:
  source: env
storage:
  provider: gcs
  bucket: {bucket}
  prefix: vgi-rpc/
  endpoint: {endpoint}
  expiry_days: {expiry_days}
  abort_multipart_days: 1
  credential: service-account
  cors_origins: [https://app.example.com]
"#,
            bucket = self.bucket,
            endpoint = self.endpoint,
        );
        std::fs::write(self.config_path(), &yaml).unwrap();
        DeployConfig::parse(&yaml, &self.config_path()).unwrap()
    }

    fn env(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |name| (name == "STORAGE_EMULATOR_HOST").then(|| self.endpoint.clone())
    }

    fn api(&self) -> StorageApi {
        StorageApi::new(Arc::new(Client::new(None)), &self.endpoint)
    }

    fn bucket(&self) -> Option<Value> {
        self.api().get_bucket(&self.bucket).unwrap()
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(".deploy-kit/dev/fn/state.json")
    }

    /// `up` through the library; returns the exit code and the progress lines.
    fn up(&self, config: &DeployConfig) -> (u8, String) {
        let (mut progress, lines) = captured();
        let code = up_with(
            config,
            &self.config_path(),
            "fn",
            &self.env(),
            &mut progress,
        )
        .unwrap_or_else(|e| panic!("up failed: {} (hint: {})", e.message, e.hint));
        drop(progress);
        (code, lines.text())
    }

    fn down(&self, config: &DeployConfig, delete_data: bool) -> String {
        let (mut progress, lines) = captured();
        down_with(
            config,
            &self.config_path(),
            "fn",
            delete_data,
            &self.env(),
            &mut progress,
        )
        .unwrap_or_else(|e| panic!("down failed: {} (hint: {})", e.message, e.hint));
        drop(progress);
        lines.text()
    }

    /// The real `deploy-kit doctor --online --format json`: outcome per check id.
    fn doctor(&self) -> Vec<(String, String, String)> {
        let output = std::process::Command::cargo_bin("deploy-kit")
            .unwrap()
            .args(["doctor", "--online", "--format", "json", "--config"])
            .arg(self.config_path())
            .env("STORAGE_EMULATOR_HOST", &self.endpoint)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .env_remove("DEPLOY_KIT_TARGET")
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor printed no JSON ({e}); stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["id"].as_str().unwrap().to_string(),
                    f["outcome"].as_str().unwrap().to_string(),
                    f["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Progress lines written to memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Lines {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

impl std::io::Write for Lines {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> (Progress, Lines) {
    let lines = Lines::default();
    (Progress::to(Box::new(lines.clone())), lines)
}

/// Asserts the outcome of each named check.
fn check(findings: &[(String, String, String)], expect: &[(&str, &str)]) {
    for (id, outcome) in expect {
        let found = findings
            .iter()
            .find(|(f, _, _)| f == id)
            .unwrap_or_else(|| panic!("no finding {id}"));
        assert_eq!(&found.1, outcome, "{id}: {}", found.2);
    }
}

fn metageneration(bucket: &Value) -> String {
    bucket["metageneration"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn up_provisions_lifecycle_and_cors_idempotently_and_doctor_passes() {
    let fixture = Fixture::new("up");
    let config = fixture.write_config(1);

    let (_, first) = fixture.up(&config);
    assert!(
        first.contains(&format!("bucket/{}: created", fixture.bucket)),
        "{first}"
    );
    let bucket = fixture.bucket().expect("the bucket exists");
    let rules = lifecycle_of(&bucket);
    let delete = rules
        .iter()
        .find(|r| r.action == "Delete")
        .expect("a Delete rule");
    assert_eq!(delete.age_days, Some(1));
    assert_eq!(delete.matches_prefix, ["vgi-rpc/"]);
    let abort = rules
        .iter()
        .find(|r| r.action == "AbortIncompleteMultipartUpload")
        .expect("an abort rule");
    assert_eq!(abort.age_days, Some(1));
    let cors = cors_of(&bucket);
    assert_eq!(cors.len(), 1);
    assert_eq!(cors[0].origins, ["https://app.example.com"]);
    assert!(cors[0].methods.contains(&"PUT".to_string()));
    assert_eq!(bucket["labels"]["managed-by"], "deploy-kit");

    let state = std::fs::read_to_string(fixture.state_path()).unwrap();
    assert!(
        state.contains(&format!("\"name\": \"{}\"", fixture.bucket)),
        "{state}"
    );
    assert!(state.contains("\"engine\": \"gcp\""), "{state}");

    // The second run writes nothing: the emulator bumps metageneration on every PATCH.
    let before = metageneration(&bucket);
    let (_, second) = fixture.up(&config);
    assert!(
        second.contains(&format!("bucket/{}: unchanged", fixture.bucket)),
        "{second}"
    );
    assert!(second.contains("0 planned change(s)"), "{second}");
    assert_eq!(metageneration(&fixture.bucket().unwrap()), before);

    let findings = fixture.doctor();
    check(
        &findings,
        &[
            ("STO001", "pass"),
            ("STO002", "pass"),
            ("STO003", "pass"),
            ("STO004", "pass"),
            ("STO005", "pass"),
            ("STO007", "pass"),
        ],
    );
    assert!(
        fixture
            .api()
            .list_objects(&fixture.bucket, "")
            .unwrap()
            .is_empty(),
        "the round trip cleans up after itself"
    );
}

#[test]
fn a_changed_expiry_is_patched_and_foreign_rules_are_kept() {
    let fixture = Fixture::new("foreign");
    let config = fixture.write_config(1);
    fixture.up(&config);
    let mut rules: Vec<Value> = fixture.bucket().unwrap()["lifecycle"]["rule"]
        .as_array()
        .unwrap()
        .clone();
    let foreign = json!({"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
        "condition": {"age": 30, "matchesPrefix": ["archive/"]}});
    rules.push(foreign.clone());
    fixture
        .api()
        .patch_bucket(&fixture.bucket, &json!({"lifecycle": {"rule": rules}}))
        .unwrap();

    let config = fixture.write_config(3);
    let (_, output) = fixture.up(&config);
    assert!(output.contains("updated (lifecycle)"), "{output}");
    let bucket = fixture.bucket().unwrap();
    let rules = bucket["lifecycle"]["rule"].as_array().unwrap();
    assert!(rules.contains(&foreign), "{rules:?}");
    let delete: Vec<_> = lifecycle_of(&bucket)
        .into_iter()
        .filter(|r| r.action == "Delete")
        .collect();
    assert_eq!(
        delete.len(),
        1,
        "the old Delete rule is replaced, not added to"
    );
    assert_eq!(delete[0].age_days, Some(3));
    fixture.down(&config, true);
}

#[test]
fn doctor_fails_sto004_and_sto005_for_a_bucket_without_rules() {
    let fixture = Fixture::new("bare");
    fixture.write_config(1);
    fixture
        .api()
        .insert_bucket("test-project", &json!({"name": fixture.bucket}))
        .unwrap();
    let findings = fixture.doctor();
    check(
        &findings,
        &[
            ("STO001", "pass"),
            ("STO002", "pass"),
            ("STO004", "fail"),
            ("STO005", "fail"),
            ("STO007", "fail"),
        ],
    );
    fixture.api().delete_bucket(&fixture.bucket).unwrap();
    let findings = fixture.doctor();
    let reach = findings.iter().find(|(id, _, _)| id == "STO001").unwrap();
    assert_eq!(reach.1, "fail", "{reach:?}");
    assert!(reach.2.contains("no bucket"), "{reach:?}");
}

#[test]
fn down_keeps_data_unless_asked_and_then_removes_the_bucket() {
    let fixture = Fixture::new("down");
    let config = fixture.write_config(1);
    fixture.up(&config);
    fixture
        .api()
        .insert_object(
            &fixture.bucket,
            "vgi-rpc/result",
            b"data",
            "application/octet-stream",
        )
        .unwrap();

    let output = fixture.down(&config, false);
    assert!(output.contains("holds 1 objects"), "{output}");
    assert!(
        output.contains("deploy-kit down fn --delete-data"),
        "{output}"
    );
    assert!(fixture.bucket().is_some());
    assert!(
        fixture.state_path().exists(),
        "the kept bucket stays recorded"
    );

    let output = fixture.down(&config, true);
    assert!(output.contains("deleted with 1 objects"), "{output}");
    assert!(fixture.bucket().is_none());
    assert!(!fixture.state_path().exists());
    let output = fixture.down(&config, true);
    assert!(output.contains("nothing recorded"), "{output}");
}

/// Ownership (docs/ownership.md): a bucket deploy-kit did not make stops
/// `up` untouched; `--adopt` labels it with the state's id; a state with
/// another id makes `down` refuse before anything is deleted;
/// `--delete-data` deletes the service's prefix only and keeps a bucket
/// with other objects.
#[test]
fn a_foreign_bucket_needs_adopt_and_down_deletes_only_its_own() {
    let fixture = Fixture::new("adopted");
    let config = fixture.write_config(1);
    fixture
        .api()
        .insert_bucket("test-project", &json!({"name": fixture.bucket}))
        .unwrap();
    let (mut progress, lines) = captured();
    let error = up_with(
        &config,
        &fixture.config_path(),
        "fn",
        &fixture.env(),
        &mut progress,
    )
    .unwrap_err();
    drop(progress);
    assert_eq!(error.exit_code, 2, "{}", error.message);
    assert!(
        error
            .message
            .contains("exists and deploy-kit did not make it"),
        "{}",
        error.message
    );
    assert!(error.hint.contains("--adopt"), "{}", error.hint);
    assert!(
        lifecycle_of(&fixture.bucket().unwrap()).is_empty(),
        "untouched: {}",
        lines.text()
    );

    let (mut progress, lines) = captured();
    let mut request = UpRequest::new(&fixture.dir);
    request.adopt = true;
    up_with_request(
        &config,
        &fixture.config_path(),
        "fn",
        &request,
        &fixture.env(),
        &mut progress,
    )
    .unwrap_or_else(|e| panic!("{} / {}", e.message, e.hint));
    drop(progress);
    assert!(
        lines.text().contains("labelled as this deployment's"),
        "{}",
        lines.text()
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.state_path()).unwrap()).unwrap();
    let bucket = fixture.bucket().unwrap();
    assert_eq!(bucket["labels"]["deploy-kit-id"], state["id"], "{bucket}");
    assert_eq!(bucket["labels"]["managed-by"], "deploy-kit", "{bucket}");

    // Another checkout's state (another id): nothing is deleted.
    let mut other = state.clone();
    other["id"] = json!("ffffffffffffffff");
    std::fs::write(fixture.state_path(), other.to_string()).unwrap();
    let (mut progress, _) = captured();
    let error = down_with(
        &config,
        &fixture.config_path(),
        "fn",
        true,
        &fixture.env(),
        &mut progress,
    )
    .unwrap_err();
    assert!(
        error.message.contains("`down` refuses to delete bucket"),
        "{}",
        error.message
    );
    drop(progress);
    assert!(fixture.bucket().is_some());
    std::fs::write(fixture.state_path(), state.to_string()).unwrap();

    for key in ["vgi-rpc/result", "reports/keep"] {
        fixture
            .api()
            .insert_object(&fixture.bucket, key, b"data", "application/octet-stream")
            .unwrap();
    }
    let output = fixture.down(&config, true);
    assert!(
        output.contains(
            "holds objects outside the service's prefix `vgi-rpc/` (such as `reports/keep`)"
        ),
        "{output}"
    );
    assert_eq!(
        fixture.api().list_objects(&fixture.bucket, "").unwrap(),
        ["reports/keep"]
    );
    fixture
        .api()
        .delete_object(&fixture.bucket, "reports/keep")
        .unwrap();
    fixture.api().delete_bucket(&fixture.bucket).unwrap();
}

#[test]
fn the_binary_brings_a_target_up_and_down() {
    let fixture = Fixture::new("cli");
    fixture.write_config(1);
    let run = |args: &[&str]| {
        std::process::Command::cargo_bin("deploy-kit")
            .unwrap()
            .args(args)
            .current_dir(&fixture.dir)
            .env("STORAGE_EMULATOR_HOST", &fixture.endpoint)
            .env_remove("DEPLOY_KIT_CONFIG")
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .output()
            .unwrap()
    };
    let up = run(&["up", "fn"]);
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(stderr.contains("created"), "{stderr}");
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert_eq!(
        up.status.code(),
        Some(0),
        "the online doctor is clean:\n{stdout}\n{stderr}"
    );
    assert!(fixture.bucket().is_some());
    let down = run(&["down", "fn", "--yes", "--delete-data"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(fixture.bucket().is_none());
}
