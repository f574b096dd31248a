//! Plain text for terminals and logs; the last line is the summary.

use super::{Rendering, summary_line};
use crate::registry::{CHECKS, Check, Mode};
use crate::{Outcome, Report};

pub fn text(report: &Report, rendering: &Rendering<'_>) -> String {
    let mode = match report.mode {
        Mode::Offline => "offline",
        Mode::Online => "online",
    };
    let mut out = format!(
        "{} doctor: target `{}` from {} ({mode})\n\n",
        rendering.tool, report.target, report.origin
    );
    for finding in &report.findings {
        let check = finding.check();
        let name = format!("{} {}", finding.id, finding.alias);
        let severity = finding.severity.name();
        match &finding.outcome {
            Outcome::Pass => out.push_str(&format!("pass    {name}\n")),
            Outcome::Skip { reason } => out.push_str(&format!("skip    {name}: {reason}\n")),
            Outcome::Fail { message, hint } => {
                let label = if finding.severity >= rendering.fail_on {
                    "FAIL"
                } else {
                    "fail"
                };
                out.push_str(&format!(
                    "{label:<8}{name} [{severity}]: {message}\n        hint: {hint}\n        docs: {}#{}\n",
                    crate::registry::DOCS_PATH,
                    check.anchor()
                ));
            }
            Outcome::Waived {
                message,
                reason,
                expires,
            } => out.push_str(&format!(
                "waived  {name} [{severity}]: {message}\n        waiver until {expires}: {reason}\n"
            )),
            Outcome::Errored { reason } => {
                out.push_str(&format!("ERROR   {name}: could not run: {reason}\n"))
            }
        }
    }
    out.push('\n');
    out.push_str(&summary_line(report, rendering));
    out.push('\n');
    out
}

/// `--list-checks`: one line per check.
pub fn list_checks() -> String {
    let mut out = String::new();
    for check in CHECKS {
        let mode = match check.mode {
            Mode::Offline => "offline",
            Mode::Online => "online",
        };
        out.push_str(&format!(
            "{}  {:<36} {:<5}  {:<7}  {}\n",
            check.id,
            check.alias,
            check.severity.name(),
            mode,
            check.message
        ));
    }
    out
}

/// `--explain ID`: everything the registry says about one check.
pub fn explain(check: &Check) -> String {
    let mode = match check.mode {
        Mode::Offline => "offline (config, environment, rendered files)",
        Mode::Online => "online (live storage and replicas; `--online`)",
    };
    format!(
        "{} {}\n\nseverity: {}\nmode:     {mode}\nfinds:    {}\n\nwhy: {}\n\nfix: {}\n\ndocs: {}\n",
        check.id,
        check.alias,
        check.severity.name(),
        check.message,
        check.rationale,
        check.hint,
        check.docs_url()
    )
}
