//! GitHub Actions workflow commands (`::error file=...::message`).

use super::{Rendering, summary_line};
use crate::{Outcome, Report, Severity};

/// Escapes a command's message (`%`, CR, LF).
fn data(text: &str) -> String {
    text.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Escapes a command property, which also may not contain `:` or `,`.
fn property(text: &str) -> String {
    data(text).replace(':', "%3A").replace(',', "%2C")
}

pub fn github(report: &Report, rendering: &Rendering<'_>) -> String {
    let mut out = String::new();
    let file = property(&report.origin);
    for finding in &report.findings {
        let title = property(&format!("{} {}", finding.id, finding.alias));
        match &finding.outcome {
            Outcome::Fail { message, hint } => {
                let command = match finding.severity {
                    Severity::Error => "error",
                    Severity::Warn => "warning",
                    Severity::Info => "notice",
                };
                out.push_str(&format!(
                    "::{command} file={file},title={title}::{}\n",
                    data(&format!("{message}\nhint: {hint}"))
                ));
            }
            Outcome::Waived {
                message,
                reason,
                expires,
            } => out.push_str(&format!(
                "::notice file={file},title={title} (waived)::{}\n",
                data(&format!("{message}\nwaived until {expires}: {reason}"))
            )),
            Outcome::Errored { reason } => out.push_str(&format!(
                "::error title={title} (could not run)::{}\n",
                data(reason)
            )),
            Outcome::Pass | Outcome::Skip { .. } => {}
        }
    }
    out.push_str(&summary_line(report, rendering));
    out.push('\n');
    out
}
