//! kit-checks: the doctor's checks as a library.
//!
//! Checks judge plain [`Facts`] and return a [`Report`]; this crate never
//! prints and never exits, and depends on no crate of ours, so `deploy-kit
//! doctor` and `kit-service doctor` share every check. Online checks reach the
//! world only through the traits in [`probe`], which the callers implement.
//! The renderers in [`render`] turn a report into text, JSON, SARIF, JUnit or
//! GitHub annotations as pure functions, so both binaries print the same bytes.

pub mod api_keys;
pub mod date;
pub mod facts;
pub mod naming;
pub mod platform;
pub mod probe;
pub mod registry;
pub mod render;
mod rules;
pub mod waiver;

use serde::Serialize;

pub use date::Date;
pub use facts::Facts;
pub use probe::Probes;
pub use registry::{CHECKS, Check, Mode};
pub use waiver::Waiver;

/// How bad a failed check is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warn,
    Error,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Error => "error",
        }
    }
}

/// The result of one check. A failure is data, never an `Err`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail {
        message: String,
        hint: String,
    },
    /// Not applicable here, or needs a probe this run does not have.
    Skip {
        reason: String,
    },
    /// Failed, but a current waiver covers it.
    Waived {
        message: String,
        reason: String,
        expires: Date,
    },
    /// The check should have run and could not (a replica did not answer).
    Errored {
        reason: String,
    },
}

/// One check's finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub alias: &'static str,
    pub severity: Severity,
    #[serde(flatten)]
    pub outcome: Outcome,
}

impl Finding {
    pub fn check(&self) -> &'static Check {
        registry::find(self.id).expect("findings are made from registered checks")
    }

    pub fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Fail { .. })
    }
}

/// Everything a doctor run found, one finding per registered check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: String,
    pub origin: String,
    pub mode: Mode,
    pub findings: Vec<Finding>,
}

/// What a report means for a caller's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Nothing failed at or above the threshold and every check ran.
    Clean,
    /// Some finding failed at or above the threshold.
    Findings,
    /// Nothing failed at the threshold, but some check could not run.
    CouldNotRun,
}

impl Status {
    /// 0, 1 or 3; 2 (usage or config error) never comes from a report.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Clean => 0,
            Status::Findings => 1,
            Status::CouldNotRun => 3,
        }
    }
}

/// Counts by outcome, for summaries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub passed: usize,
    pub failed_error: usize,
    pub failed_warn: usize,
    pub failed_info: usize,
    pub skipped: usize,
    pub waived: usize,
    pub errored: usize,
}

impl Report {
    /// True when some failed finding is at or above `threshold`.
    pub fn fails_at(&self, threshold: Severity) -> bool {
        self.findings
            .iter()
            .any(|f| f.is_failure() && f.severity >= threshold)
    }

    /// A finding at or above the threshold wins over a check that could not
    /// run: it is a definite problem, and CI should show it first.
    pub fn status(&self, threshold: Severity) -> Status {
        if self.fails_at(threshold) {
            Status::Findings
        } else if self
            .findings
            .iter()
            .any(|f| matches!(f.outcome, Outcome::Errored { .. }))
        {
            Status::CouldNotRun
        } else {
            Status::Clean
        }
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for finding in &self.findings {
            match (&finding.outcome, finding.severity) {
                (Outcome::Pass, _) => summary.passed += 1,
                (Outcome::Fail { .. }, Severity::Error) => summary.failed_error += 1,
                (Outcome::Fail { .. }, Severity::Warn) => summary.failed_warn += 1,
                (Outcome::Fail { .. }, Severity::Info) => summary.failed_info += 1,
                (Outcome::Skip { .. }, _) => summary.skipped += 1,
                (Outcome::Waived { .. }, _) => summary.waived += 1,
                (Outcome::Errored { .. }, _) => summary.errored += 1,
            }
        }
        summary
    }

    pub fn finding(&self, id: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.id == id)
    }
}

/// How a run is made.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub mode: Mode,
    /// False for `--no-waivers`: every failure stays a failure.
    pub apply_waivers: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mode: Mode::Offline,
            apply_waivers: true,
        }
    }
}

/// The id of the check that reports expired waivers.
pub const EXPIRED_WAIVER: &str = "DOC001";

/// Runs every registered check against `facts`.
pub fn run(facts: &Facts, probes: &Probes<'_>, options: &Options) -> Report {
    let context = rules::Context {
        mode: options.mode,
        probes: *probes,
    };
    let mut findings: Vec<Finding> = CHECKS
        .iter()
        .filter(|check| check.id != EXPIRED_WAIVER)
        .map(|check| Finding {
            id: check.id,
            alias: check.alias,
            severity: check.severity,
            outcome: rules::evaluate(check, facts, &context),
        })
        .collect();
    let expired_waiver = registry::find(EXPIRED_WAIVER).expect("registered");
    let waiver_outcome = if options.apply_waivers {
        apply_waivers(&mut findings, facts)
    } else {
        Outcome::Skip {
            reason: "waivers ignored (`--no-waivers`)".into(),
        }
    };
    findings.push(Finding {
        id: expired_waiver.id,
        alias: expired_waiver.alias,
        severity: expired_waiver.severity,
        outcome: waiver_outcome,
    });
    Report {
        target: facts.target.name.clone(),
        origin: facts.origin.clone(),
        mode: options.mode,
        findings,
    }
}

/// Turns covered failures into waived ones; returns the outcome of the
/// expired-waiver check.
fn apply_waivers(findings: &mut [Finding], facts: &Facts) -> Outcome {
    let mut expired = Vec::new();
    for waiver in &facts.waivers {
        let Some(id) = waiver.check_id() else {
            continue;
        };
        if waiver.is_expired(facts.today) {
            expired.push(format!(
                "waiver for {id} expired on {} ({})",
                waiver.expires, waiver.reason
            ));
            continue;
        }
        for finding in findings.iter_mut().filter(|f| f.id == id) {
            if let Outcome::Fail { message, .. } = &finding.outcome {
                finding.outcome = Outcome::Waived {
                    message: message.clone(),
                    reason: waiver.reason.clone(),
                    expires: waiver.expires,
                };
            }
        }
    }
    if expired.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail {
            message: expired.join("; "),
            hint: registry::find(EXPIRED_WAIVER)
                .expect("registered")
                .hint
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(severity: Severity, outcome: Outcome) -> Finding {
        Finding {
            id: "KEY001",
            alias: "no-shared-signing-key",
            severity,
            outcome,
        }
    }

    fn report(findings: Vec<Finding>) -> Report {
        Report {
            target: "t".into(),
            origin: "o".into(),
            mode: Mode::Offline,
            findings,
        }
    }

    #[test]
    fn thresholds_count_only_failures() {
        let fail = Outcome::Fail {
            message: "m".into(),
            hint: "h".into(),
        };
        let report = report(vec![
            finding(Severity::Warn, fail),
            finding(Severity::Error, Outcome::Pass),
        ]);
        assert!(report.fails_at(Severity::Warn));
        assert!(!report.fails_at(Severity::Error));
        assert_eq!(report.status(Severity::Warn).exit_code(), 1);
        assert_eq!(report.status(Severity::Error).exit_code(), 0);
    }

    #[test]
    fn a_check_that_could_not_run_is_exit_3_unless_something_failed() {
        let errored = Outcome::Errored { reason: "r".into() };
        let report_errored = report(vec![finding(Severity::Error, errored.clone())]);
        assert_eq!(report_errored.status(Severity::Error), Status::CouldNotRun);
        let fail = Outcome::Fail {
            message: "m".into(),
            hint: "h".into(),
        };
        let both = report(vec![
            finding(Severity::Error, errored),
            finding(Severity::Error, fail),
        ]);
        assert_eq!(both.status(Severity::Error), Status::Findings);
    }

    fn today() -> Date {
        Date::parse("2026-01-10").unwrap()
    }

    fn failing_facts() -> Facts {
        let mut facts = Facts::baseline(today());
        facts.target.instances = 3;
        facts
    }

    #[test]
    fn a_current_waiver_waives_and_an_expired_one_reraises() {
        let mut facts = failing_facts();
        facts.waivers.push(Waiver {
            id: "no-shared-signing-key".into(),
            reason: "migrating to Secret Manager".into(),
            expires: Date::parse("2026-02-01").unwrap(),
        });
        let report = run(&facts, &Probes::default(), &Options::default());
        assert!(matches!(
            report.finding("KEY001").unwrap().outcome,
            Outcome::Waived { .. }
        ));
        assert_eq!(
            report.finding(EXPIRED_WAIVER).unwrap().outcome,
            Outcome::Pass
        );
        assert!(!report.fails_at(Severity::Error));

        facts.waivers[0].expires = Date::parse("2026-01-09").unwrap();
        let report = run(&facts, &Probes::default(), &Options::default());
        assert!(report.finding("KEY001").unwrap().is_failure());
        assert!(report.finding(EXPIRED_WAIVER).unwrap().is_failure());

        let options = Options {
            apply_waivers: false,
            ..Options::default()
        };
        facts.waivers[0].expires = Date::parse("2026-02-01").unwrap();
        let report = run(&facts, &Probes::default(), &options);
        assert!(report.finding("KEY001").unwrap().is_failure());
        assert!(matches!(
            report.finding(EXPIRED_WAIVER).unwrap().outcome,
            Outcome::Skip { .. }
        ));
    }

    #[test]
    fn every_registered_check_reports_once() {
        let report = run(
            &Facts::baseline(today()),
            &Probes::default(),
            &Options::default(),
        );
        assert_eq!(report.findings.len(), CHECKS.len());
        for (finding, check) in report.findings.iter().zip(CHECKS) {
            assert_eq!(finding.id, check.id);
        }
    }
}
