//! `deploy-kit doctor` as a user runs it: the real binary, exit code, stdout
//! and stderr snapshotted with insta (temp paths and ports filtered).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use assert_cmd::cargo::CommandCargoExt;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `deploy-kit` in `dir` with a clean `DEPLOY_KIT_*` environment and a
/// fixed date, and returns exit code, stdout and stderr as one text.
fn run_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = Command::cargo_bin("deploy-kit").unwrap();
    command.current_dir(dir).args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("DEPLOY_KIT_") {
            command.env_remove(name);
        }
    }
    command.env("DEPLOY_KIT_TODAY", "2026-01-10");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    let code = output.status.code().unwrap_or(-1);
    let text = format!(
        "exit: {code}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (code, text)
}

fn run(args: &[&str]) -> (i32, String) {
    run_in(&fixtures(), args, &[])
}

/// One helper for every CLI case: the exit code must match, and the whole
/// output must match its snapshot.
fn check(name: &str, args: &[&str], env: &[(&str, &str)], expect_exit: i32) {
    let (code, text) = run_in(&fixtures(), args, env);
    assert_eq!(code, expect_exit, "{text}");
    insta::with_settings!({filters => vec![
        (r"127\.0\.0\.1:\d+", "127.0.0.1:[PORT]"),
        (r#""version": "\d+\.\d+\.\d+""#, r#""version": "[VERSION]""#),
        (r"\(os error \d+\)", "(os error [N])"),
        (r"/\S*/tests/fixtures", "[FIXTURES]"),
    ]}, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn example_config_passes_offline() {
    let (code, text) = run_in(&repo_root(), &["doctor", "--offline"], &[]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = run_in(
        &repo_root(),
        &["doctor", "--offline", "--fail-on", "warn"],
        &[],
    );
    assert_eq!(code, 0, "{text}");
    insta::assert_snapshot!("example_offline", text);
}

#[test]
fn failures_exit_1_with_hints_and_a_summary() {
    check(
        "failing_text",
        &["doctor", "--config", "failing.yaml"],
        &[],
        1,
    );
}

#[test]
fn failing_json() {
    check(
        "failing_json",
        &["doctor", "--config", "failing.yaml", "--format", "json"],
        &[],
        1,
    );
}

#[test]
fn failing_github() {
    check(
        "failing_github",
        &["doctor", "--config", "failing.yaml", "--format", "github"],
        &[],
        1,
    );
}

#[test]
fn sarif_and_junit_exit_like_text() {
    for format in ["sarif", "junit"] {
        let (code, text) = run(&["doctor", "--config", "failing.yaml", "--format", format]);
        assert_eq!(code, 1, "{text}");
    }
    let (_, junit) = run(&["doctor", "--config", "failing.yaml", "--format", "junit"]);
    assert_eq!(
        junit.matches("<testcase ").count(),
        kit_checks::CHECKS.len()
    );
}

#[test]
fn fail_on_decides_whether_warnings_fail() {
    check(
        "warn_only_fail_on_error",
        &["doctor", "--config", "warn-only.yaml"],
        &[],
        0,
    );
    check(
        "warn_only_fail_on_warn",
        &["doctor", "--config", "warn-only.yaml", "--fail-on", "warn"],
        &[],
        1,
    );
    // The env var sits between the flag and the default.
    let (code, _) = run_in(
        &fixtures(),
        &["doctor", "--config", "warn-only.yaml"],
        &[("DEPLOY_KIT_FAIL_ON", "warn")],
    );
    assert_eq!(code, 1);
    let (code, _) = run_in(
        &fixtures(),
        &["doctor", "--config", "warn-only.yaml", "--fail-on", "error"],
        &[("DEPLOY_KIT_FAIL_ON", "warn")],
    );
    assert_eq!(code, 0, "the flag wins over the env var");
}

#[test]
fn config_errors_exit_2_with_line_and_column() {
    check(
        "unknown_field",
        &["doctor", "--config", "unknown-field.yaml"],
        &[],
        2,
    );
    check(
        "missing_config",
        &["doctor", "--config", "nope.yaml"],
        &[],
        2,
    );
    check(
        "waiver_too_far_ahead",
        &["doctor", "--config", "waiver-too-far.yaml"],
        &[],
        2,
    );
    check(
        "unknown_target",
        &["doctor", "--config", "failing.yaml", "--target", "prod"],
        &[],
        2,
    );
}

#[test]
fn usage_errors_exit_2() {
    let (code, text) = run(&["doctor", "--format", "yaml"]);
    assert_eq!(code, 2, "{text}");
    let (code, text) = run(&["doctor", "--offline", "--online"]);
    assert_eq!(code, 2, "{text}");
    check(
        "explain_unknown",
        &["doctor", "--explain", "NOPE01"],
        &[],
        2,
    );
}

#[test]
fn no_config_in_the_working_directory_is_a_config_error() {
    let empty = std::env::temp_dir().join(format!("deploy-kit-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let (code, text) = run_in(&empty, &["doctor"], &[]);
    std::fs::remove_dir_all(&empty).unwrap();
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no `deploy-kit.yaml`"), "{text}");
}

#[test]
fn waivers_waive_until_they_expire() {
    check(
        "waiver_current",
        &["doctor", "--config", "waived.yaml"],
        &[],
        0,
    );
    check(
        "waiver_expired",
        &["doctor", "--config", "waived.yaml"],
        &[("DEPLOY_KIT_TODAY", "2026-02-02")],
        1,
    );
    let (code, text) = run(&["doctor", "--config", "waived.yaml", "--no-waivers"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("waivers ignored"), "{text}");
}

#[test]
fn list_and_explain() {
    check("list_checks", &["doctor", "--list-checks"], &[], 0);
    check(
        "explain_alias",
        &["doctor", "--explain", "replica-key-mismatch"],
        &[],
        0,
    );
    let (code, text) = run(&["doctor", "--list-checks", "--format", "markdown"]);
    assert_eq!(code, 0);
    assert!(text.contains(&kit_checks::render::checks_markdown()));
}

#[test]
fn output_writes_the_report_to_a_file() {
    let path = std::env::temp_dir().join(format!("deploy-kit-doctor-{}.sarif", std::process::id()));
    let path_text = path.to_str().unwrap();
    let (code, text) = run(&[
        "doctor",
        "--config",
        "failing.yaml",
        "--format",
        "sarif",
        "--output",
        path_text,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("--- stdout\n--- stderr\nwrote "), "{text}");
    let sarif: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unreachable_replicas_exit_3() {
    check(
        "replicas_unreachable",
        &[
            "doctor",
            "--online",
            "--config",
            "replicas.yaml",
            "--replica",
            "http://127.0.0.1:9",
            "--replica",
            "http://127.0.0.1:9",
        ],
        &[],
        3,
    );
}

/// A `kit-service serve` on a free loopback port, killed on drop.
struct Replica {
    child: Child,
    url: String,
}

impl Replica {
    fn start(key: &str) -> Replica {
        let binary = Path::new(env!("CARGO_BIN_EXE_deploy-kit"))
            .parent()
            .unwrap()
            .join("kit-service");
        assert!(
            binary.exists(),
            "`{}` is missing: run `cargo build -p kit-service` first",
            binary.display()
        );
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("VGI_SIGNING_KEY", key)
            .env("KIT_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line `{line}`"))
            .to_string();
        Replica { child, url }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn key004_against_two_real_replicas() {
    let shared = "hex:".to_string() + &"5a".repeat(16) + &"c3".repeat(16);
    let other = "hex:".to_string() + &"17".repeat(32);
    let first = Replica::start(&shared);
    let same = Replica::start(&shared);
    let different = Replica::start(&other);
    let args = |second: &str| {
        vec![
            "doctor".to_string(),
            "--online".into(),
            "--config".into(),
            "replicas.yaml".into(),
            "--format".into(),
            "json".into(),
            "--replica".into(),
            first.url.clone(),
            "--replica".into(),
            second.to_string(),
        ]
    };
    let key004 = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = run(&args);
        let json = text
            .split("--- stdout\n")
            .nth(1)
            .unwrap()
            .split("--- stderr")
            .next()
            .unwrap();
        let report: serde_json::Value = serde_json::from_str(json).unwrap();
        let finding = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "KEY004")
            .unwrap()
            .clone();
        (code, finding)
    };
    let (code, finding) = key004(args(&same.url));
    assert_eq!(finding["outcome"], "pass", "{finding}");
    assert_eq!(code, 0);
    let (code, finding) = key004(args(&different.url));
    assert_eq!(finding["outcome"], "fail", "{finding}");
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("different key fingerprints")
    );
    assert_eq!(code, 1);
}

/// A one-binary cargo package in `dir` with the platform features, so the
/// default `service.package` resolves and ART001 passes.
fn user_crate(dir: &Path) {
    std::fs::write(
        dir.join("Cargo.toml"),
        "[package]\nname = \"acme-rpc\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [features]\nlambda = []\ns3 = []\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/main.rs"), "fn main() {}\n").unwrap();
}

/// ART001 names an unknown package and lists the workspace's; a workspace
/// without `Cargo.toml` is "could not run" (exit 3), not a pass.
#[test]
fn art001_names_a_missing_package_and_cannot_run_without_a_workspace() {
    let dir = tempfile::tempdir().unwrap();
    let (code, text) = run_in(
        dir.path(),
        &["init", "--target", "compose", "--package", "acme"],
        &[],
    );
    assert_eq!(code, 0, "{text}");
    let (code, text) = run_in(dir.path(), &["doctor"], &[]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains(
            "ERROR   ART001 service-artifact-missing: could not run: no `Cargo.toml` in `"
        ),
        "{text}"
    );
    user_crate(dir.path());
    let (code, text) = run_in(dir.path(), &["doctor"], &[]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL    ART001 service-artifact-missing [error]: no package `acme` in the cargo workspace `.`; its packages: `acme-rpc`"),
        "{text}"
    );
    let config = std::fs::read_to_string(dir.path().join("deploy-kit.yaml"))
        .unwrap()
        .replace("package: acme ", "package: acme-rpc ");
    std::fs::write(dir.path().join("deploy-kit.yaml"), config).unwrap();
    let (code, text) = run_in(dir.path(), &["doctor"], &[]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("pass    ART001 service-artifact-missing"),
        "{text}"
    );
}

/// KEY005 reads the state `deploy-kit secrets rotate` leaves: a promoted
/// rotation that was never retired keeps the old key on the replicas, and
/// after one token lifetime (plus a day of slack) the doctor says to retire it,
/// naming the target in the command.
#[test]
fn key005_flags_a_promoted_rotation_left_unretired() {
    let dir = tempfile::tempdir().unwrap();
    user_crate(dir.path());
    let (code, text) = run_in(dir.path(), &["init", "--target", "kubernetes"], &[]);
    assert_eq!(code, 0, "{text}");
    let state_dir = dir.path().join(".deploy-kit/dev/production");
    std::fs::create_dir_all(&state_dir).unwrap();
    let write_state = |phase: &str, promoted: &str| {
        let promoted_at = kit_checks::Date::parse(promoted)
            .unwrap()
            .days_since_epoch()
            * 86_400;
        std::fs::write(
            state_dir.join("rotation.json"),
            format!(
                r#"{{"schema": "deploy-kit.rotation/v1", "phase": "{phase}", "rolled": true,
                "primary": "aa", "pending": null, "previous": "bb", "token_ttl_seconds": 3600,
                "staged_at": null, "promoted_at": {promoted_at}, "retired_at": null}}"#
            ),
        )
        .unwrap();
    };
    let key005 = |today: &str| -> (i32, serde_json::Value) {
        let (code, text) = run_in(
            dir.path(),
            &[
                "doctor",
                "--offline",
                "--fail-on",
                "warn",
                "--format",
                "json",
            ],
            &[("DEPLOY_KIT_TODAY", today)],
        );
        let json = &text[text.find('{').unwrap()..text.find("--- stderr").unwrap()];
        let report: serde_json::Value = serde_json::from_str(json).unwrap();
        let finding = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == "KEY005")
            .cloned()
            .unwrap();
        (code, finding)
    };

    // Promoted on Jan 2: tokens live an hour, so by Jan 10 the old key is stale.
    write_state("promoted", "2026-01-02");
    let (code, finding) = key005("2026-01-10");
    assert_eq!(code, 1, "{finding}");
    assert_eq!(finding["outcome"], "fail", "{finding}");
    assert!(
        finding["message"]
            .as_str()
            .unwrap()
            .contains("retired 2026-01-02"),
        "{finding}"
    );
    assert!(
        finding["hint"]
            .as_str()
            .unwrap()
            .contains("deploy-kit secrets rotate --target production --phase retire"),
        "{finding}"
    );
    // Promoted yesterday: still within the token lifetime and the slack.
    write_state("promoted", "2026-01-09");
    let (code, finding) = key005("2026-01-10");
    assert_eq!(
        (code, &finding["outcome"]),
        (0, &serde_json::json!("pass")),
        "{finding}"
    );
    // Retired: nothing is kept.
    write_state("idle", "2026-01-02");
    let (code, finding) = key005("2026-01-10");
    assert_eq!(
        (code, &finding["outcome"]),
        (0, &serde_json::json!("pass")),
        "{finding}"
    );
}

/// Settings the service would refuse at start, or the provider at create
/// time, fail the doctor (and so `plan`) with their own check ids, before
/// anything is deployed.
#[test]
fn config_errors_are_caught_before_deploy() {
    let (code, text) = run(&[
        "doctor",
        "--config",
        "config-errors.yaml",
        "--format",
        "json",
    ]);
    assert_eq!(code, 1, "{text}");
    let json = &text[text.find('{').unwrap()..text.find("--- stderr").unwrap()];
    let report: serde_json::Value = serde_json::from_str(json).unwrap();
    let finding = |id: &str| -> (String, String) {
        let finding = report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {json}"));
        (
            finding["outcome"].as_str().unwrap().to_string(),
            finding["message"].as_str().unwrap_or_default().to_string(),
        )
    };
    for (id, expect) in [
        ("CFG001", "`KIT_RATE_LIMIT`"),
        ("STO008", "`VGI_Data` is not a valid S3 bucket"),
        ("STO009", "expires the whole bucket"),
        ("KEY006", "`token_ttl_seconds: 0`"),
    ] {
        let (outcome, message) = finding(id);
        assert_eq!(outcome, "fail", "{id}: {message}");
        assert!(message.contains(expect), "{id}: {message}");
    }

    let (code, text) = run(&["plan", "--config", "config-errors.yaml"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("found errors in target `prod`"), "{text}");
    assert!(text.contains("CFG001 service-rejects-setting"), "{text}");
}

/// SEC006 reads a compose target's API-keys secret file: names and expiries,
/// never a key.
#[test]
fn sec006_reads_the_expiry_of_a_compose_api_key_secret() {
    let dir = tempfile::tempdir().unwrap();
    user_crate(dir.path());
    let (code, text) = run_in(dir.path(), &["init", "--target", "compose"], &[]);
    assert_eq!(code, 0, "{text}");
    let secrets = dir.path().join(".deploy-kit/dev/production/secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join("kit-service-api-keys"),
        "ci=key-ci-secret;expires=2026-01-15\nold=key-old-secret;expires=2025-12-01\nfine=key-fine-secret;scopes=kit.Demo.v1/*\n",
    )
    .unwrap();
    let (_, text) = run_in(dir.path(), &["doctor", "--offline"], &[]);
    let line = text
        .lines()
        .find(|l| l.contains("SEC006"))
        .unwrap_or_else(|| panic!("no SEC006 in:\n{text}"));
    assert!(line.starts_with("fail"), "{line}");
    assert!(
        line.contains("`ci` expires at 2026-01-15T00:00:00Z (in 5 days)")
            && line.contains("`old` expired at 2025-12-01T00:00:00Z"),
        "{line}"
    );
    assert!(
        !line.contains("fine")
            && !text.contains("key-ci-secret")
            && !text.contains("key-old-secret"),
        "{text}"
    );
    std::fs::write(
        secrets.join("kit-service-api-keys"),
        "ci=key-ci-secret;expires=2027-01-01\n",
    )
    .unwrap();
    let (_, text) = run_in(dir.path(), &["doctor", "--offline"], &[]);
    assert!(text.contains("pass    SEC006"), "{text}");
}
