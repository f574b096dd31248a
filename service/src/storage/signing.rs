//! Pieces the cloud URL signers share: UTC timestamps in the forms the
//! signing specs spell out (no date crate needed for three formats), RFC 3986
//! percent-encoding, and the error a transport failure maps to.

use std::time::{SystemTime, UNIX_EPOCH};

use super::StorageError;

/// A UTC calendar time, to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
}

impl Utc {
    pub fn from_system_time(time: SystemTime) -> Utc {
        let seconds = time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        Utc::from_unix(seconds)
    }

    /// Howard Hinnant's `civil_from_days`.
    pub fn from_unix(seconds: i64) -> Utc {
        let days = seconds.div_euclid(86_400);
        let in_day = seconds.rem_euclid(86_400);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Utc {
            year,
            month,
            day,
            hour: (in_day / 3600) as u32,
            minute: (in_day % 3600 / 60) as u32,
            second: (in_day % 60) as u32,
        }
    }

    /// `20190201` (GCS credential scope).
    pub fn compact_date(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `20190201T090000Z` (GCS `X-Goog-Date`).
    pub fn compact_date_time(&self) -> String {
        format!(
            "{}T{:02}{:02}{:02}Z",
            self.compact_date(),
            self.hour,
            self.minute,
            self.second
        )
    }

    /// `2019-02-01T09:00:00Z` (Azure `st`/`se`).
    pub fn iso8601(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

/// Percent-encodes every byte but RFC 3986 unreserved characters (and `/`
/// when `keep_slash`), uppercase hex, as both signing specs require.
pub fn percent_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && byte == b'/')
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Maps a transport error (no HTTP status) to `Unreachable`.
pub fn unreachable(backend: &'static str, error: reqwest::Error) -> StorageError {
    // reqwest's text names the whole URL, signature included: keep a redacted one.
    let url = error
        .url()
        .map(|url| super::fetch::RedactedUrl::from(url).to_string());
    let error = error.without_url();
    StorageError::Unreachable {
        backend,
        message: match url {
            Some(url) => format!("`{url}`: {error}"),
            None => error.to_string(),
        },
    }
}

/// The start of an error body (300 characters), which names the cause in
/// GCS, IAM and Azure errors.
pub fn excerpt(body: &str) -> String {
    body.chars().take(300).collect()
}

/// [`excerpt`] of a response's body (empty when it cannot be read).
pub async fn body_excerpt(response: reqwest::Response) -> String {
    excerpt(&response.text().await.unwrap_or_default())
}

/// Maps a non-2xx response to `Denied` (401/403) or `Failed`, with the start
/// of the body, which names the cause in both GCS and Azure errors.
pub async fn refused(
    backend: &'static str,
    what: &str,
    response: reqwest::Response,
) -> StorageError {
    let status = response.status();
    let excerpt = body_excerpt(response).await;
    let message = format!("{what}: HTTP {status}: {excerpt}");
    if matches!(status.as_u16(), 401 | 403) {
        StorageError::Denied { backend, message }
    } else {
        StorageError::Failed { backend, message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_match_known_instants() {
        // 2019-02-01T09:00:00Z, the GCS conformance vectors' timestamp.
        assert_eq!(
            Utc::from_unix(1_549_011_600).compact_date_time(),
            "20190201T090000Z"
        );
        assert_eq!(Utc::from_unix(0).iso8601(), "1970-01-01T00:00:00Z");
        // A leap day and the end of a century.
        assert_eq!(
            Utc::from_unix(951_782_400).iso8601(),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            Utc::from_unix(4_107_542_399).iso8601(),
            "2100-02-28T23:59:59Z"
        );
    }

    #[test]
    fn percent_encoding_keeps_unreserved_only() {
        assert_eq!(percent_encode("soufflé", false), "souffl%C3%A9");
        assert_eq!(percent_encode("=%-_.~", false), "%3D%25-_.~");
        assert_eq!(percent_encode("a/b&c", true), "a/b%26c");
        assert_eq!(percent_encode("a/b", false), "a%2Fb");
    }
}
