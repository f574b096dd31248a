//! LIM001-LIM005: service limits against the platform's limits.

use super::Verdict;
use crate::facts::Facts;
use crate::platform::{HEADROOM_PERCENT, SMALL_REQUEST_BYTES, human_bytes};

pub(super) fn request_limit(facts: &Facts) -> Verdict {
    let platform = facts.target.platform;
    let Some(limit) = platform.limits().request_bytes else {
        return Verdict::Pass;
    };
    let usable = platform.limits().usable_request_bytes().unwrap_or(limit);
    match facts.limits.max_request_bytes {
        None => Verdict::Fail(format!(
            "`max_request_bytes` is unset (unlimited) but `{}` accepts at most {}; set it to at most {usable} ({HEADROOM_PERCENT}% headroom)",
            platform.name(),
            human_bytes(limit)
        )),
        Some(max) if max > usable => Verdict::Fail(format!(
            "`max_request_bytes` is {max} but `{}` accepts at most {}; set it to at most {usable} ({HEADROOM_PERCENT}% headroom)",
            platform.name(),
            human_bytes(limit)
        )),
        Some(_) => Verdict::Pass,
    }
}

pub(super) fn response_limit(facts: &Facts) -> Verdict {
    let platform = facts.target.platform;
    let Some(limit) = platform.limits().response_bytes else {
        return Verdict::Pass;
    };
    let usable = platform.limits().usable_response_bytes().unwrap_or(limit);
    let limits = &facts.limits;
    let mut problems = Vec::new();
    if limits.max_response_bytes.is_none() && limits.externalize_threshold_bytes.is_none() {
        problems.push(
            "neither `max_response_bytes` nor `externalize_threshold_bytes` is set".to_string(),
        );
    }
    if let Some(max) = limits.max_response_bytes.filter(|max| *max > usable) {
        problems.push(format!("`max_response_bytes` is {max}"));
    }
    if let Some(threshold) = limits.externalize_threshold_bytes.filter(|t| *t > usable) {
        problems.push(format!("`externalize_threshold_bytes` is {threshold}"));
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "{} but `{}` sends at most {} per response; keep both at or below {usable} ({HEADROOM_PERCENT}% headroom)",
            problems.join(" and "),
            platform.name(),
            human_bytes(limit)
        ))
    }
}

pub(super) fn timeouts(facts: &Facts) -> Verdict {
    let platform = facts.target.platform;
    let limits = platform.limits();
    let Some(timeout) = limits.timeout_seconds else {
        return Verdict::Pass;
    };
    let mut problems = Vec::new();
    if facts.limits.request_timeout_seconds > timeout {
        problems.push(format!(
            "`request_timeout_seconds` is {}",
            facts.limits.request_timeout_seconds
        ));
    }
    if let Some(stream) = facts.limits.stream_timeout_seconds.filter(|s| *s > timeout) {
        problems.push(format!("`stream_timeout_seconds` is {stream}"));
    }
    if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "{} but `{}` ends requests after {timeout} s ({} timeout)",
            problems.join(" and "),
            platform.name(),
            limits.timeout_kind
        ))
    }
}

pub(super) fn size_limited_without_storage(facts: &Facts) -> Verdict {
    let limits = facts.target.platform.limits();
    if !limits.size_limited() || facts.storage.is_some() {
        return Verdict::Pass;
    }
    let limit = limits
        .request_bytes
        .into_iter()
        .chain(limits.response_bytes)
        .min()
        .unwrap_or_default();
    Verdict::Fail(format!(
        "`{}` limits bodies to {} and no `storage:` is configured, so larger batches fail instead of going through object storage",
        facts.target.platform.name(),
        human_bytes(limit)
    ))
}

pub(super) fn small_requests_without_uploads(facts: &Facts) -> Verdict {
    if facts.limits.upload_urls {
        return Verdict::Pass;
    }
    let effective = facts.limits.max_request_bytes.or(facts
        .target
        .platform
        .limits()
        .usable_request_bytes());
    match effective {
        Some(max) if max <= SMALL_REQUEST_BYTES => Verdict::Fail(format!(
            "requests are limited to {} and upload URLs are off, so clients cannot send larger inputs",
            human_bytes(max)
        )),
        _ => Verdict::Pass,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::facts::{Credential, StorageFacts, StorageProvider};
    use crate::platform::Platform;
    use crate::rules::test_support::{check, facts};

    fn lambda() -> crate::Facts {
        let mut f = facts();
        f.target.platform = Platform::AwsLambdaFunctionUrl;
        f
    }

    pub(crate) fn storage() -> StorageFacts {
        StorageFacts {
            provider: StorageProvider::S3,
            bucket: "vgi-data".into(),
            prefix: "vgi/".into(),
            url_base: "https://b.s3.amazonaws.com".into(),
            expiry_days: Some(1),
            abort_multipart_days: Some(1),
            presign_ttl_seconds: 3600,
            credential: Credential::StaticKeys,
            cors_origins: Vec::new(),
        }
    }

    #[test]
    fn lim001_request_limit() {
        check("LIM001", &facts(), "pass");
        let mut f = lambda();
        assert!(check("LIM001", &f, "fail").contains("unset"));
        f.limits.max_request_bytes = Some(6 * 1024 * 1024);
        assert!(check("LIM001", &f, "fail").contains("at most 5662311"));
        f.limits.max_request_bytes = Some(5_000_000);
        check("LIM001", &f, "pass");
    }

    #[test]
    fn lim002_response_limit() {
        let mut f = lambda();
        check("LIM002", &f, "fail");
        f.limits.externalize_threshold_bytes = Some(512_000);
        check("LIM002", &f, "pass");
        f.limits.max_response_bytes = Some(6 * 1024 * 1024);
        assert!(check("LIM002", &f, "fail").contains("`max_response_bytes` is 6291456"));
        f.limits.max_response_bytes = Some(5_000_000);
        check("LIM002", &f, "pass");
    }

    #[test]
    fn lim003_timeouts() {
        let mut f = facts();
        f.target.platform = Platform::AwsLambdaApiGateway;
        assert!(check("LIM003", &f, "fail").contains("after 29 s"));
        f.limits.request_timeout_seconds = 25;
        check("LIM003", &f, "pass");
        f.limits.stream_timeout_seconds = Some(60);
        assert!(check("LIM003", &f, "fail").contains("stream_timeout_seconds"));
    }

    #[test]
    fn lim004_size_limited_without_storage() {
        check("LIM004", &facts(), "pass");
        let mut f = lambda();
        check("LIM004", &f, "fail");
        f.storage = Some(storage());
        check("LIM004", &f, "pass");
    }

    #[test]
    fn lim005_small_requests_without_uploads() {
        check("LIM005", &facts(), "pass");
        let mut f = lambda();
        f.limits.max_request_bytes = Some(5_000_000);
        check("LIM005", &f, "fail");
        f.limits.upload_urls = true;
        check("LIM005", &f, "pass");
    }
}
