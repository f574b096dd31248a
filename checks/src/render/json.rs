//! Machine-readable JSON with a versioned schema id.

use serde_json::json;

use super::Rendering;
use crate::{Outcome, Report};

/// Bumped only on breaking changes; new fields may appear within a version.
pub const JSON_SCHEMA_ID: &str = "deploy-kit.doctor/v1";

pub fn json(report: &Report, rendering: &Rendering<'_>) -> String {
    let status = report.status(rendering.fail_on);
    let findings: Vec<serde_json::Value> = report
        .findings
        .iter()
        .map(|finding| {
            let check = finding.check();
            let mut value = json!({
                "id": finding.id,
                "alias": finding.alias,
                "severity": finding.severity,
                "title": check.message,
                "docs": check.docs_url(),
            });
            let fields = match &finding.outcome {
                Outcome::Pass => json!({"outcome": "pass"}),
                Outcome::Fail { message, hint } => {
                    json!({"outcome": "fail", "message": message, "hint": hint})
                }
                Outcome::Skip { reason } => json!({"outcome": "skip", "reason": reason}),
                Outcome::Waived {
                    message,
                    reason,
                    expires,
                } => json!({
                    "outcome": "waived",
                    "message": message,
                    "waiver": {"reason": reason, "expires": expires},
                }),
                Outcome::Errored { reason } => json!({"outcome": "errored", "reason": reason}),
            };
            if let (Some(map), serde_json::Value::Object(extra)) = (value.as_object_mut(), fields) {
                map.extend(extra);
            }
            value
        })
        .collect();
    let document = json!({
        "schema": JSON_SCHEMA_ID,
        "tool": {"name": rendering.tool, "version": rendering.version},
        "target": report.target,
        "origin": report.origin,
        "mode": report.mode,
        "fail_on": rendering.fail_on,
        "status": status,
        "exit_code": status.exit_code(),
        "summary": report.summary(),
        "findings": findings,
    });
    let mut out = serde_json::to_string_pretty(&document).expect("JSON values serialize");
    out.push('\n');
    out
}
