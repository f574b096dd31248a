//! Calendar dates for waiver expiry, without a date-time crate.
//!
//! Waivers need only whole days and "today", so a day count since 1970-01-01
//! (Howard Hinnant's civil-date algorithms) is enough. Callers pass "today" in,
//! which keeps every check deterministic under test.

use std::fmt;

/// A proleptic Gregorian date, stored as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    days: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a date: expected `YYYY-MM-DD`")]
pub struct DateError(pub String);

impl Date {
    pub fn from_days_since_epoch(days: i64) -> Date {
        Date { days }
    }

    /// Today in UTC from the system clock.
    pub fn today_utc() -> Date {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Date {
            days: (seconds / 86_400) as i64,
        }
    }

    pub fn from_ymd(year: i64, month: u32, day: u32) -> Option<Date> {
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let year_of_era = y - era * 400;
        let m = i64::from(month);
        let day_of_year = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        Some(Date {
            days: era * 146_097 + day_of_era - 719_468,
        })
    }

    /// Parses `YYYY-MM-DD`.
    pub fn parse(text: &str) -> Result<Date, DateError> {
        let error = || DateError(text.to_string());
        let mut parts = text.trim().splitn(3, '-');
        let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(error());
        };
        if y.len() != 4 || m.len() != 2 || d.len() != 2 {
            return Err(error());
        }
        let year = y.parse::<i64>().map_err(|_| error())?;
        let month = m.parse::<u32>().map_err(|_| error())?;
        let day = d.parse::<u32>().map_err(|_| error())?;
        Date::from_ymd(year, month, day).ok_or_else(error)
    }

    pub fn days_since_epoch(self) -> i64 {
        self.days
    }

    pub fn add_days(self, days: i64) -> Date {
        Date {
            days: self.days + days,
        }
    }

    /// Days from `self` to `later` (negative when `later` is earlier).
    pub fn days_until(self, later: Date) -> i64 {
        later.days - self.days
    }

    fn ymd(self) -> (i64, u32, u32) {
        let z = self.days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = self.ymd();
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

impl serde::Serialize for Date {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Date {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Date, D::Error> {
        let text = String::deserialize(deserializer)?;
        Date::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_counts_days() {
        for text in ["1970-01-01", "2000-02-29", "2024-12-31", "2026-03-01"] {
            assert_eq!(Date::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Date::parse("1970-01-01").unwrap().days_since_epoch(), 0);
        let start = Date::parse("2024-02-28").unwrap();
        assert_eq!(start.add_days(2).to_string(), "2024-03-01");
        assert_eq!(start.days_until(Date::parse("2024-05-28").unwrap()), 90);
    }

    #[test]
    fn rejects_impossible_dates() {
        for text in ["2023-02-29", "2024-13-01", "24-01-01", "2024-1-1", "soon"] {
            assert!(Date::parse(text).is_err(), "{text}");
        }
    }
}
