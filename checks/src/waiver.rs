//! Waivers: a named, dated, explained exception to one check.
//!
//! A waiver is temporary by construction: its expiry is required and at most
//! [`MAX_WAIVER_DAYS`] ahead, and once it passes the finding comes back along
//! with an `expired-waiver` finding of its own.

use serde::Serialize;

use crate::date::Date;
use crate::registry;

/// How far ahead a waiver may expire.
pub const MAX_WAIVER_DAYS: i64 = 90;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiver {
    /// A check id or alias, as written.
    pub id: String,
    pub reason: String,
    pub expires: Date,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaiverError {
    #[error("waiver for `{0}` names no known check; see `deploy-kit doctor --list-checks`")]
    UnknownCheck(String),
    #[error("waiver for `{0}` needs a non-empty `reason`")]
    MissingReason(String),
    #[error(
        "waiver for `{id}` expires {expires}, more than {MAX_WAIVER_DAYS} days after {today}; pick a date on or before {latest}"
    )]
    TooFarAhead {
        id: String,
        expires: Date,
        today: Date,
        latest: Date,
    },
}

impl Waiver {
    /// Checks the rules a waiver must meet when it is written down. An expired
    /// waiver is valid here: it is reported as a finding instead.
    pub fn validate(&self, today: Date) -> Result<(), WaiverError> {
        if registry::find(&self.id).is_none() {
            return Err(WaiverError::UnknownCheck(self.id.clone()));
        }
        if self.reason.trim().is_empty() {
            return Err(WaiverError::MissingReason(self.id.clone()));
        }
        if today.days_until(self.expires) > MAX_WAIVER_DAYS {
            return Err(WaiverError::TooFarAhead {
                id: self.id.clone(),
                expires: self.expires,
                today,
                latest: today.add_days(MAX_WAIVER_DAYS),
            });
        }
        Ok(())
    }

    /// The check id this waiver names (`KEY001` for `no-shared-signing-key`).
    pub fn check_id(&self) -> Option<&'static str> {
        registry::find(&self.id).map(|c| c.id)
    }

    /// Valid through the expiry day itself.
    pub fn is_expired(&self, today: Date) -> bool {
        today > self.expires
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiver(id: &str, reason: &str, expires: &str) -> Waiver {
        Waiver {
            id: id.into(),
            reason: reason.into(),
            expires: Date::parse(expires).unwrap(),
        }
    }

    #[test]
    fn validation_rules() {
        let today = Date::parse("2026-01-01").unwrap();
        assert_eq!(waiver("SEC003", "r", "2026-04-01").validate(today), Ok(()));
        assert_eq!(
            waiver("reflection-in-production", "r", "2025-01-01").validate(today),
            Ok(()),
            "expired is valid and reported later"
        );
        assert!(matches!(
            waiver("SEC003", "r", "2026-04-02").validate(today),
            Err(WaiverError::TooFarAhead { .. })
        ));
        assert!(matches!(
            waiver("SEC999", "r", "2026-02-01").validate(today),
            Err(WaiverError::UnknownCheck(_))
        ));
        assert!(matches!(
            waiver("SEC003", " ", "2026-02-01").validate(today),
            Err(WaiverError::MissingReason(_))
        ));
        let w = waiver("SEC003", "r", "2026-01-01");
        assert!(!w.is_expired(today));
        assert!(w.is_expired(today.add_days(1)));
    }
}
