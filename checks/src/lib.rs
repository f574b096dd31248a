//! kit-checks: the doctor's checks as a library.
//!
//! Checks judge plain facts and return a [`Report`]; this crate never prints
//! and never exits, and depends on no crate of ours, so `deploy-kit doctor` and
//! `kit-service doctor` can share every check. The registry of checks arrives
//! with the doctor issue; the types here are the contract both callers build on.

use serde::Serialize;

/// How bad a failed check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Error,
}

/// The result of one check. A failure is data, never an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail { message: String, hint: String },
    Skip { reason: String },
    Waived { reason: String },
}

/// One check's finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub outcome: Outcome,
}

/// Everything a doctor run found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when some failed finding is at or above `threshold`.
    pub fn fails_at(&self, threshold: Severity) -> bool {
        self.findings
            .iter()
            .any(|f| matches!(f.outcome, Outcome::Fail { .. }) && f.severity >= threshold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: Severity, outcome: Outcome) -> Finding {
        Finding {
            id: "T001",
            severity,
            outcome,
        }
    }

    #[test]
    fn thresholds_count_only_failures() {
        let fail = Outcome::Fail {
            message: "m".into(),
            hint: "h".into(),
        };
        let report = Report {
            findings: vec![
                finding(Severity::Warn, fail),
                finding(Severity::Error, Outcome::Pass),
            ],
        };
        assert!(report.fails_at(Severity::Warn));
        assert!(!report.fails_at(Severity::Error));
    }
}
