//! Renderers: a report (or the registry) in, the bytes to print out.
//!
//! They are pure functions in this crate, not in `infra`, because both
//! binaries (`deploy-kit doctor` and `kit-service doctor`) print reports, and
//! `kit-service` must not depend on `infra`. Nothing here writes anywhere.

mod github;
mod json;
mod junit;
mod markdown;
mod sarif;
mod text;

pub use github::github;
pub use json::{JSON_SCHEMA_ID, json};
pub use junit::junit;
pub use markdown::checks_markdown;
pub use sarif::{SARIF_SCHEMA_URI, sarif};
pub use text::{explain, list_checks, text};

use crate::Severity;

/// What every renderer needs besides the report.
#[derive(Debug, Clone, Copy)]
pub struct Rendering<'a> {
    /// The threshold the exit code is computed at.
    pub fail_on: Severity,
    /// The tool that ran the checks (`deploy-kit`, `kit-service`).
    pub tool: &'a str,
    pub version: &'a str,
}

/// The report formats both binaries accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Sarif,
    Junit,
    Github,
}

impl Format {
    pub fn render(self, report: &crate::Report, rendering: &Rendering<'_>) -> String {
        match self {
            Format::Text => text(report, rendering),
            Format::Json => json(report, rendering),
            Format::Sarif => sarif(report, rendering),
            Format::Junit => junit(report, rendering),
            Format::Github => github(report, rendering),
        }
    }
}

fn status_words(status: crate::Status) -> &'static str {
    match status {
        crate::Status::Clean => "clean",
        crate::Status::Findings => "findings",
        crate::Status::CouldNotRun => "could not run",
    }
}

/// The one-line summary that ends text and GitHub output.
pub fn summary_line(report: &crate::Report, rendering: &Rendering<'_>) -> String {
    let summary = report.summary();
    let failed = summary.failed_error + summary.failed_warn + summary.failed_info;
    let status = report.status(rendering.fail_on);
    format!(
        "summary: {failed} failed ({} error, {} warn, {} info), {} passed, {} skipped, {} waived, {} could not run; fail-on {}: {} (exit {})",
        summary.failed_error,
        summary.failed_warn,
        summary.failed_info,
        summary.passed,
        summary.skipped,
        summary.waived,
        summary.errored,
        rendering.fail_on.name(),
        status_words(status),
        status.exit_code()
    )
}
