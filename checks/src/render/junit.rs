//! JUnit XML: one test case per check. A failure below `--fail-on` is not a
//! `<failure>` (it would turn CI red while the exit code says clean); its
//! message goes to `<system-out>` instead.

use super::Rendering;
use crate::{Outcome, Report};

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

pub fn junit(report: &Report, rendering: &Rendering<'_>) -> String {
    let mut cases = String::new();
    let (mut failures, mut errors, mut skipped) = (0, 0, 0);
    for finding in &report.findings {
        let family = &finding.id[..3];
        cases.push_str(&format!(
            "    <testcase classname=\"{}.doctor.{family}\" name=\"{} {}\"",
            escape(rendering.tool),
            finding.id,
            finding.alias
        ));
        let body = match &finding.outcome {
            Outcome::Pass => None,
            Outcome::Fail { message, hint } if finding.severity >= rendering.fail_on => {
                failures += 1;
                Some(format!(
                    "      <failure message=\"{}\" type=\"{}\">hint: {}</failure>\n",
                    escape(message),
                    finding.severity.name(),
                    escape(hint)
                ))
            }
            Outcome::Fail { message, hint } => Some(format!(
                "      <system-out>{} (below fail-on {}): {}\nhint: {}</system-out>\n",
                finding.severity.name(),
                rendering.fail_on.name(),
                escape(message),
                escape(hint)
            )),
            Outcome::Skip { reason } => {
                skipped += 1;
                Some(format!("      <skipped message=\"{}\"/>\n", escape(reason)))
            }
            Outcome::Waived {
                message,
                reason,
                expires,
            } => {
                skipped += 1;
                Some(format!(
                    "      <skipped message=\"waived until {expires}: {}\"/>\n      <system-out>{}</system-out>\n",
                    escape(reason),
                    escape(message)
                ))
            }
            Outcome::Errored { reason } => {
                errors += 1;
                Some(format!(
                    "      <error message=\"could not run\" type=\"errored\">{}</error>\n",
                    escape(reason)
                ))
            }
        };
        match body {
            None => cases.push_str("/>\n"),
            Some(body) => {
                cases.push_str(">\n");
                cases.push_str(&body);
                cases.push_str("    </testcase>\n");
            }
        }
    }
    let tests = report.findings.len();
    let counts = format!(
        "tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\" skipped=\"{skipped}\""
    );
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{tool} doctor\" {counts}>\n  <testsuite name=\"{tool} doctor: {target}\" {counts}>\n{cases}  </testsuite>\n</testsuites>\n",
        tool = escape(rendering.tool),
        target = escape(&report.target),
    )
}
