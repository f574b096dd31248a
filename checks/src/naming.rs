//! Bucket and container naming rules per provider, as each documents them.
//!
//! A bucket name a provider refuses fails only when `deploy-kit up` creates
//! the bucket, or when the service first uploads; judging it here moves the
//! failure before the deploy. `kit-service` uses the same rules when it
//! parses `KIT_STORAGE_BUCKET`, so the service and the doctor agree.

/// Whose rules a bucket name must follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketRules {
    /// Amazon S3 general purpose buckets (and S3-compatible stores, which
    /// follow them).
    S3,
    /// Cloudflare R2: like S3, but no dots.
    R2,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage containers.
    Azure,
}

impl BucketRules {
    /// The provider's name for messages.
    pub fn provider(self) -> &'static str {
        match self {
            BucketRules::S3 => "S3 bucket",
            BucketRules::R2 => "R2 bucket",
            BucketRules::Gcs => "GCS bucket",
            BucketRules::Azure => "Azure container",
        }
    }
}

/// Why `name` breaks `rules`, or `None` when the provider accepts it.
///
/// ```
/// use kit_checks::naming::{BucketRules, bucket_name_problem};
/// assert_eq!(bucket_name_problem(BucketRules::S3, "vgi-data"), None);
/// let problem = bucket_name_problem(BucketRules::S3, "VGI_Data").unwrap();
/// assert!(problem.contains("lowercase"), "{problem}");
/// ```
pub fn bucket_name_problem(rules: BucketRules, name: &str) -> Option<String> {
    let reason = reason(rules, name)?;
    Some(format!(
        "`{name}` is not a valid {}: {reason}",
        rules.provider()
    ))
}

fn reason(rules: BucketRules, name: &str) -> Option<String> {
    let allowed: fn(char) -> bool = match rules {
        BucketRules::S3 => |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-',
        BucketRules::Gcs => {
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')
        }
        BucketRules::R2 | BucketRules::Azure => {
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        }
    };
    let longest = if rules == BucketRules::Gcs && name.contains('.') {
        222
    } else {
        63
    };
    let length = name.chars().count();
    if !(3..=longest).contains(&length) {
        return Some(format!(
            "it must be 3 to {longest} characters long, not {length}"
        ));
    }
    if let Some(bad) = name.chars().find(|c| !allowed(*c)) {
        let set = match rules {
            BucketRules::S3 => "lowercase letters, digits, `.` and `-`",
            BucketRules::Gcs => "lowercase letters, digits, `.`, `-` and `_`",
            BucketRules::R2 | BucketRules::Azure => "lowercase letters, digits and `-`",
        };
        return Some(format!("`{bad}` is not allowed, only {set}"));
    }
    let alphanumeric = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alphanumeric(name.chars().next()) || !alphanumeric(name.chars().last()) {
        return Some("it must start and end with a letter or digit".into());
    }
    if name.contains("..") {
        return Some("it must not contain `..`".into());
    }
    if rules == BucketRules::Azure && name.contains("--") {
        return Some("it must not contain `--`".into());
    }
    if matches!(rules, BucketRules::S3 | BucketRules::Gcs) && looks_like_ipv4(name) {
        return Some("it must not look like an IP address".into());
    }
    if rules == BucketRules::Gcs {
        if name.split('.').any(|part| part.len() > 63) {
            return Some("each dot-separated part must be at most 63 characters".into());
        }
        if name.starts_with("goog") {
            return Some("it must not start with `goog`".into());
        }
        // Google names `g00gle` as a refused misspelling: zeros read as `o`.
        if name.replace('0', "o").contains("google") {
            return Some("it must not contain `google` or a misspelling of it".into());
        }
    }
    if rules == BucketRules::S3 {
        for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
            if name.starts_with(prefix) {
                return Some(format!("it must not start with `{prefix}` (reserved)"));
            }
        }
        for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
            if name.ends_with(suffix) {
                return Some(format!("it must not end with `{suffix}` (reserved)"));
            }
        }
    }
    None
}

fn looks_like_ipv4(name: &str) -> bool {
    let parts: Vec<&str> = name.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rules: BucketRules, name: &str, expect: Option<&str>) {
        let problem = bucket_name_problem(rules, name);
        match (expect, &problem) {
            (None, None) => {}
            (Some(part), Some(problem)) if problem.contains(part) => {}
            _ => panic!("{rules:?} `{name}`: expected {expect:?}, got {problem:?}"),
        }
    }

    #[test]
    fn s3_rules() {
        use BucketRules::S3;
        check(S3, "vgi-data", None);
        check(S3, "vgi.data.example", None);
        check(S3, "ab", Some("3 to 63"));
        check(S3, &"a".repeat(64), Some("3 to 63"));
        check(S3, "Vgi-Data", Some("`V` is not allowed"));
        check(S3, "vgi_data", Some("`_` is not allowed"));
        check(S3, "-vgi", Some("start and end"));
        check(S3, "vgi.", Some("start and end"));
        check(S3, "vgi..data", Some("`..`"));
        check(S3, "192.168.5.4", Some("IP address"));
        check(S3, "xn--vgi", Some("`xn--`"));
        check(S3, "vgi-s3alias", Some("`-s3alias`"));
    }

    #[test]
    fn r2_rules() {
        use BucketRules::R2;
        check(R2, "vgi-data", None);
        check(R2, "vgi.data", Some("`.` is not allowed"));
    }

    #[test]
    fn gcs_rules() {
        use BucketRules::Gcs;
        check(Gcs, "vgi_data-1", None);
        check(Gcs, &format!("{}.example.com", "a".repeat(60)), None);
        check(Gcs, &"a".repeat(64), Some("3 to 63"));
        check(
            Gcs,
            &format!("{}.example", "a".repeat(64)),
            Some("dot-separated part"),
        );
        check(Gcs, "goog-data", Some("`goog`"));
        check(Gcs, "my-g00gle-data", Some("google"));
        check(Gcs, "my-google-data", Some("google"));
        check(Gcs, "10.0.0.1", Some("IP address"));
        check(Gcs, "Data", Some("`D` is not allowed"));
    }

    #[test]
    fn azure_rules() {
        use BucketRules::Azure;
        check(Azure, "vgi-data", None);
        check(Azure, "vgi--data", Some("`--`"));
        check(Azure, "vgi_data", Some("`_` is not allowed"));
        check(Azure, "vgi.data", Some("`.` is not allowed"));
        check(Azure, "vgi-", Some("start and end"));
    }
}
