//! SARIF 2.1.0 for code scanning. Every rule is declared, with or without a
//! result, so dashboards can tell "checked and clean" from "never checked".

use serde_json::json;

use super::Rendering;
use crate::registry::CHECKS;
use crate::{Outcome, Report, Severity};

pub const SARIF_SCHEMA_URI: &str = "https://json.schemastore.org/sarif-2.1.0.json";

fn level(severity: Severity) -> &'static str {
    match severity {
        Severity::Error => "error",
        Severity::Warn => "warning",
        Severity::Info => "note",
    }
}

pub fn sarif(report: &Report, rendering: &Rendering<'_>) -> String {
    let rules: Vec<serde_json::Value> = CHECKS
        .iter()
        .map(|check| {
            json!({
                "id": check.id,
                "name": check.alias,
                "shortDescription": {"text": check.message},
                "fullDescription": {"text": check.rationale},
                "help": {"text": check.hint},
                "helpUri": check.docs_url(),
                "defaultConfiguration": {"level": level(check.severity)},
                "properties": {"mode": check.mode, "alias": check.alias},
            })
        })
        .collect();
    let location = json!([{
        "physicalLocation": {"artifactLocation": {"uri": report.origin}}
    }]);
    let mut results = Vec::new();
    let mut notifications = Vec::new();
    for finding in &report.findings {
        let rule_index = CHECKS
            .iter()
            .position(|c| c.id == finding.id)
            .expect("registered");
        match &finding.outcome {
            Outcome::Fail { message, hint } => results.push(json!({
                "ruleId": finding.id,
                "ruleIndex": rule_index,
                "kind": "fail",
                "level": level(finding.severity),
                "message": {"text": format!("{message}. Fix: {hint}")},
                "locations": location,
            })),
            Outcome::Waived {
                message,
                reason,
                expires,
            } => results.push(json!({
                "ruleId": finding.id,
                "ruleIndex": rule_index,
                "kind": "fail",
                "level": level(finding.severity),
                "message": {"text": message},
                "locations": location,
                "suppressions": [{
                    "kind": "external",
                    "status": "accepted",
                    "justification": format!("{reason} (waiver until {expires})"),
                }],
            })),
            Outcome::Errored { reason } => notifications.push(json!({
                "level": "error",
                "message": {"text": format!("{} could not run: {reason}", finding.id)},
                "associatedRule": {"id": finding.id, "index": rule_index},
            })),
            Outcome::Pass | Outcome::Skip { .. } => {}
        }
    }
    let status = report.status(rendering.fail_on);
    let document = json!({
        "$schema": SARIF_SCHEMA_URI,
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": rendering.tool,
                "version": rendering.version,
                "informationUri": crate::registry::DOCS_URL,
                "rules": rules,
            }},
            "invocations": [{
                "executionSuccessful": status != crate::Status::CouldNotRun,
                "exitCode": status.exit_code(),
                "toolExecutionNotifications": notifications,
            }],
            "results": results,
            "properties": {"target": report.target, "mode": report.mode},
        }],
    });
    let mut out = serde_json::to_string_pretty(&document).expect("JSON values serialize");
    out.push('\n');
    out
}
