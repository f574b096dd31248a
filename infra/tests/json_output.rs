//! `--json` output of the commands that need no server, each validated
//! against its JSON Schema in docs/schemas/ (named by the document's
//! `schema` id through `deploy_kit::output::SCHEMAS`), with stdout holding
//! exactly that one document. `up`/`down --json` are validated in
//! up_aws.rs against moto and SeaweedFS, `build --json` in
//! build_artifacts.rs.

use std::path::Path;

use assert_cmd::Command;

#[path = "common/json.rs"]
mod json;
use json::validated;

const CONFIG: &str = "version: 1
service: {name: jsonsvc, environment: ci, package: kit-service}
targets:
  lambda: {platform: aws-lambda-function-url, region: us-east-1}
limits: {max_request_bytes: 5000000, max_response_bytes: 5000000, externalize_threshold_bytes: 4000000, upload_urls: true, request_timeout_seconds: 60}
storage: {provider: s3, bucket: jsonsvc-data, prefix: vgi-rpc/, credential: instance-role}
signing_key: {source: secret, secret: aws:jsonsvc/ci/signing-key}
";

fn run(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let output = Command::cargo_bin("deploy-kit")
        .unwrap()
        .current_dir(dir)
        .args(args)
        .env_remove("DEPLOY_KIT_CONFIG")
        .env_remove("DEPLOY_KIT_TARGET")
        .env_remove("DEPLOY_KIT_ENV")
        .env_remove("DEPLOY_KIT_STATE")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_schema_file_compiles_and_the_error_document_rejects_junk() {
    let junk = serde_json::json!({"schema": "deploy-kit.error/v1", "error": "", "exit_code": 0});
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas/error.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        !jsonschema::validator_for(&schema).unwrap().is_valid(&junk),
        "the schemas constrain what they describe"
    );
    for (id, file) in deploy_kit::output::SCHEMAS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/schemas")
            .join(file);
        let schema: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap_or_else(|error| panic!("{id}: {error}"));
    }
}

#[test]
fn init_plan_doctor_and_state_show_print_documents_that_match_their_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = run(
        dir.path(),
        &[
            "init",
            "--target",
            "aws-lambda-function-url",
            "--output",
            "generated.yaml",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    let init = validated(&stdout);
    assert_eq!(init["written"][0], "generated.yaml");
    assert!(dir.path().join("generated.yaml").is_file());
    assert!(stderr.contains("wrote generated.yaml"), "{stderr}");

    std::fs::write(dir.path().join("deploy-kit.yaml"), CONFIG).unwrap();
    let (code, stdout, stderr) = run(dir.path(), &["plan", "lambda", "--json", "--force"]);
    assert_eq!(code, 2, "a first plan has changes\n{stdout}\n{stderr}");
    let plan = validated(&stdout);
    assert_eq!(
        plan["summary"]["create"],
        plan["changes"].as_array().unwrap().len()
    );

    let (_, stdout, stderr) = run(
        dir.path(),
        &[
            "doctor",
            "--offline",
            "--target",
            "lambda",
            "--format",
            "json",
        ],
    );
    let doctor = validated(&stdout);
    assert!(
        !doctor["findings"].as_array().unwrap().is_empty(),
        "{stderr}"
    );

    let (code, stdout, stderr) = run(
        dir.path(),
        &["state", "show", "--target", "lambda", "--json"],
    );
    assert_eq!(code, 0, "{stderr}");
    let show = validated(&stdout);
    assert_eq!(show["lock"], serde_json::Value::Null);
    assert_eq!(
        show["state"],
        serde_json::Value::Null,
        "nothing deployed yet"
    );

    let (code, stdout, stderr) = run(dir.path(), &["releases", "lambda", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let releases = validated(&stdout);
    assert_eq!(releases["releases"], serde_json::json!([]));
    assert_eq!(releases["live"], serde_json::Value::Null);
}

#[test]
fn secrets_rotate_prints_the_steps_and_fingerprints_never_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join(".deploy-kit/local");
    std::fs::create_dir_all(&keys).unwrap();
    let key = format!("{:064x}", 0x5eed_u64);
    std::fs::write(keys.join("signing-key"), format!("hex:{key}\n")).unwrap();
    let (code, stdout, stderr) = run(
        dir.path(),
        &["secrets", "rotate", "--phase", "stage", "--json"],
    );
    assert_eq!(code, 0, "{stderr}");
    let rotate = validated(&stdout);
    assert_eq!(rotate["steps"], serde_json::json!(["stage"]));
    assert_eq!(rotate["rotation"]["phase"], "staged");
    assert!(
        stderr.contains("stage: new key"),
        "progress goes to stderr: {stderr}"
    );
    let pending = std::fs::read_to_string(keys.join("signing-key.pending")).unwrap();
    for secret in [key.as_str(), pending.trim().trim_start_matches("hex:")] {
        assert!(!stdout.contains(secret), "no key value in the document");
    }
}

#[test]
fn failures_under_json_print_the_error_document() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deploy-kit.yaml"), CONFIG).unwrap();
    let (code, stdout, stderr) = run(dir.path(), &["plan", "nope", "--json"]);
    assert_eq!(code, 1, "{stderr}");
    let error = validated(&stdout);
    assert_eq!(error["exit_code"], 1);
    assert!(error["error"].as_str().unwrap().contains("nope"), "{error}");
    assert!(
        stderr.contains("error: "),
        "people still read stderr: {stderr}"
    );

    let (code, stdout, _) = run(dir.path(), &["init", "--output", "-", "--json"]);
    assert_eq!(code, 2);
    assert!(
        validated(&stdout)["error"]
            .as_str()
            .unwrap()
            .contains("stdout")
    );

    let (code, stdout, _) = run(dir.path(), &["state", "show", "--target", "nope", "--json"]);
    assert_eq!(code, 2, "{stdout}");
    validated(&stdout);
}
