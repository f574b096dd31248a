//! STO001-STO009: external object storage.

use super::{Context, Verdict, errored};
use crate::facts::{Facts, StorageFacts, StorageProvider};
use crate::naming::{BucketRules, bucket_name_problem};
use crate::probe::{StorageError, StorageProbe};

const NO_STORAGE: &str = "no `storage:` configured";
const NO_BACKEND: &str = "storage backend not configured/available";

/// The storage facts and probe an online storage check needs, or its verdict.
fn online<'a>(
    facts: &'a Facts,
    context: &Context<'a>,
) -> Result<(&'a StorageFacts, &'a dyn StorageProbe), Verdict> {
    if let Some(skip) = context.offline() {
        return Err(Verdict::Done(skip));
    }
    let Some(storage) = &facts.storage else {
        return Err(Verdict::Skip(NO_STORAGE.into()));
    };
    match context.probes.storage {
        Some(probe) => Ok((storage, probe)),
        None => Err(Verdict::Skip(
            context
                .probes
                .storage_unavailable
                .unwrap_or(NO_BACKEND)
                .to_string(),
        )),
    }
}

fn storage_failure(step: &str, bucket: &str, error: StorageError) -> Verdict {
    match error {
        StorageError::Rejected(reason) => {
            Verdict::Fail(format!("{step} on bucket `{bucket}` failed: {reason}"))
        }
        StorageError::Unavailable(reason) => {
            errored(format!("could not {step} on bucket `{bucket}`: {reason}"))
        }
    }
}

pub(super) fn reachable(facts: &Facts, context: &Context<'_>) -> Verdict {
    let (storage, probe) = match online(facts, context) {
        Ok(pair) => pair,
        Err(verdict) => return verdict,
    };
    match probe.reach() {
        Ok(()) => Verdict::Pass,
        Err(error) => storage_failure("reach", &storage.bucket, error),
    }
}

pub(super) fn round_trip(facts: &Facts, context: &Context<'_>) -> Verdict {
    let (storage, probe) = match online(facts, context) {
        Ok(pair) => pair,
        Err(verdict) => return verdict,
    };
    let key = format!("{}.deploy-kit-doctor", storage.prefix);
    let body = b"deploy-kit doctor round trip";
    if let Err(error) = probe.put(&key, body) {
        return storage_failure(&format!("put `{key}`"), &storage.bucket, error);
    }
    let read = probe.get(&key);
    let deleted = probe.delete(&key);
    match read {
        Err(error) => return storage_failure(&format!("get `{key}`"), &storage.bucket, error),
        Ok(read) if read != body => {
            return Verdict::Fail(format!(
                "get `{key}` on bucket `{}` returned {} bytes that differ from the {} written",
                storage.bucket,
                read.len(),
                body.len()
            ));
        }
        Ok(_) => {}
    }
    match deleted {
        Ok(()) => Verdict::Pass,
        Err(error) => storage_failure(&format!("delete `{key}`"), &storage.bucket, error),
    }
}

fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    host == "localhost" || host.starts_with("127.") || rest.starts_with("[::1]")
}

pub(super) fn https_urls(facts: &Facts) -> Verdict {
    let Some(storage) = &facts.storage else {
        return Verdict::Skip(NO_STORAGE.into());
    };
    let url = storage.url_base.trim();
    if url.to_ascii_lowercase().starts_with("https://") || is_loopback(url) {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "download URLs start with `{url}`; presigned URLs must be https (loopback is allowed for local runs)"
        ))
    }
}

/// STO004 and STO005 share their shape: a lifecycle rule field on the bucket
/// online, or the setting deploy-kit would apply offline.
fn lifecycle(
    facts: &Facts,
    context: &Context<'_>,
    what: &str,
    configured: fn(&StorageFacts) -> Option<u32>,
    rule_days: fn(&crate::probe::LifecycleRule) -> Option<u32>,
    setting: &str,
) -> Verdict {
    let Some(storage) = &facts.storage else {
        return Verdict::Skip(NO_STORAGE.into());
    };
    if context.mode == crate::Mode::Online
        && let Some(probe) = context.probes.storage
    {
        return match probe.lifecycle_rules() {
            Ok(rules) => {
                if rules
                    .iter()
                    .any(|rule| rule.covers(&storage.prefix) && rule_days(rule).is_some())
                {
                    Verdict::Pass
                } else {
                    Verdict::Fail(format!(
                        "bucket `{}` has no enabled {what} rule covering prefix `{}`",
                        storage.bucket, storage.prefix
                    ))
                }
            }
            Err(StorageError::Rejected(reason) | StorageError::Unavailable(reason)) => {
                errored(format!(
                    "could not read the lifecycle rules of bucket `{}`: {reason}",
                    storage.bucket
                ))
            }
        };
    }
    match configured(storage) {
        Some(days) if days > 0 => Verdict::Pass,
        _ => Verdict::Fail(format!(
            "`storage.{setting}` is not set, so no {what} rule covers prefix `{}` of bucket `{}`",
            storage.prefix, storage.bucket
        )),
    }
}

pub(super) fn lifecycle_expiry(facts: &Facts, context: &Context<'_>) -> Verdict {
    lifecycle(
        facts,
        context,
        "expiration",
        |s| s.expiry_days,
        |r| r.expiration_days,
        "expiry_days",
    )
}

pub(super) fn abort_multipart(facts: &Facts, context: &Context<'_>) -> Verdict {
    lifecycle(
        facts,
        context,
        "abort-incomplete-multipart",
        |s| s.abort_multipart_days,
        |r| r.abort_incomplete_multipart_days,
        "abort_multipart_days",
    )
}

pub(super) fn presign_ttl(facts: &Facts) -> Verdict {
    let Some(storage) = &facts.storage else {
        return Verdict::Skip(NO_STORAGE.into());
    };
    let max = storage.credential.max_presign_seconds();
    if storage.presign_ttl_seconds <= max {
        Verdict::Pass
    } else {
        Verdict::Fail(format!(
            "`storage.presign_ttl_seconds` is {} but the signing credential grants at most {max} s",
            storage.presign_ttl_seconds
        ))
    }
}

fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

pub(super) fn bucket_cors(facts: &Facts, context: &Context<'_>) -> Verdict {
    let origins = &facts.security.cors_origins;
    if origins.is_empty() {
        return Verdict::Pass;
    }
    let Some(storage) = &facts.storage else {
        return Verdict::Skip(NO_STORAGE.into());
    };
    let method = if facts.limits.upload_urls {
        "PUT"
    } else {
        "GET"
    };
    let allowed: Vec<String> = if context.mode == crate::Mode::Online
        && let Some(probe) = context.probes.storage
    {
        match probe.cors_rules() {
            Ok(rules) => rules
                .into_iter()
                .filter(|rule| rule.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
                .flat_map(|rule| rule.origins)
                .collect(),
            Err(StorageError::Rejected(reason) | StorageError::Unavailable(reason)) => {
                return errored(format!(
                    "could not read the CORS rules of bucket `{}`: {reason}",
                    storage.bucket
                ));
            }
        }
    } else {
        storage.cors_origins.clone()
    };
    let missing: Vec<&str> = origins
        .iter()
        .filter(|origin| *origin != "*" && !origin_allowed(&allowed, origin))
        .map(String::as_str)
        .collect();
    let wildcard_uncovered = origins.iter().any(|o| o == "*") && !allowed.iter().any(|a| a == "*");
    if missing.is_empty() && !wildcard_uncovered {
        Verdict::Pass
    } else {
        let mut missing: Vec<&str> = missing;
        if wildcard_uncovered {
            missing.push("*");
        }
        Verdict::Fail(format!(
            "bucket `{}` allows no {method} from origin(s) {} that the service allows",
            storage.bucket,
            missing.join(", ")
        ))
    }
}

pub(super) fn bucket_name(facts: &Facts) -> Verdict {
    let Some(storage) = &facts.storage else {
        return Verdict::Skip(NO_STORAGE.into());
    };
    let rules = match storage.provider {
        StorageProvider::S3 | StorageProvider::S3Compatible => BucketRules::S3,
        StorageProvider::R2 => BucketRules::R2,
        StorageProvider::Gcs => BucketRules::Gcs,
    };
    match bucket_name_problem(rules, &storage.bucket) {
        None => Verdict::Pass,
        Some(problem) => Verdict::Fail(format!("`storage.bucket`: {problem}")),
    }
}

pub(super) fn prefix_not_empty(facts: &Facts) -> Verdict {
    let Some(storage) = &facts.storage else {
        return Verdict::Skip(NO_STORAGE.into());
    };
    if storage.prefix.trim_matches('/').trim().is_empty() {
        Verdict::Fail(format!(
            "`storage.prefix` is `{}`: every object in bucket `{}` is under it, so its lifecycle rule expires the whole bucket",
            storage.prefix, storage.bucket
        ))
    } else {
        Verdict::Pass
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use crate::Mode;
    use crate::facts::Credential;
    use crate::probe::{CorsRule, LifecycleRule, Probes, StorageError, StorageProbe};
    use crate::rules::limits::tests::storage;
    use crate::rules::test_support::{check, check_with, facts};

    /// An in-memory bucket; `reject` makes every call answer access denied,
    /// `down` makes every call unavailable.
    #[derive(Default)]
    struct Bucket {
        objects: RefCell<HashMap<String, Vec<u8>>>,
        lifecycle: Vec<LifecycleRule>,
        cors: Vec<CorsRule>,
        reject: bool,
        down: bool,
        corrupt: bool,
    }

    impl Bucket {
        fn gate(&self) -> Result<(), StorageError> {
            if self.down {
                Err(StorageError::Unavailable("connection refused".into()))
            } else if self.reject {
                Err(StorageError::Rejected("AccessDenied".into()))
            } else {
                Ok(())
            }
        }
    }

    impl StorageProbe for Bucket {
        fn reach(&self) -> Result<(), StorageError> {
            self.gate()
        }
        fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>, StorageError> {
            self.gate().map(|()| self.lifecycle.clone())
        }
        fn cors_rules(&self) -> Result<Vec<CorsRule>, StorageError> {
            self.gate().map(|()| self.cors.clone())
        }
        fn put(&self, key: &str, body: &[u8]) -> Result<(), StorageError> {
            self.gate()?;
            let mut body = body.to_vec();
            if self.corrupt {
                body.pop();
            }
            self.objects.borrow_mut().insert(key.into(), body);
            Ok(())
        }
        fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
            self.gate()?;
            self.objects
                .borrow()
                .get(key)
                .cloned()
                .ok_or_else(|| StorageError::Rejected("NoSuchKey".into()))
        }
        fn delete(&self, key: &str) -> Result<(), StorageError> {
            self.gate()?;
            self.objects.borrow_mut().remove(key);
            Ok(())
        }
    }

    fn online(bucket: &Bucket) -> Probes<'_> {
        Probes {
            storage: Some(bucket),
            ..Probes::default()
        }
    }

    fn with_storage() -> crate::Facts {
        let mut f = facts();
        f.storage = Some(storage());
        f
    }

    #[test]
    fn sto001_reachable() {
        let f = with_storage();
        check("STO001", &f, "skip");
        let reason = check_with("STO001", &f, Mode::Online, Probes::default(), "skip");
        assert_eq!(reason, "storage backend not configured/available");
        check_with(
            "STO001",
            &f,
            Mode::Online,
            online(&Bucket::default()),
            "pass",
        );
        let rejected = Bucket {
            reject: true,
            ..Bucket::default()
        };
        check_with("STO001", &f, Mode::Online, online(&rejected), "fail");
        let down = Bucket {
            down: true,
            ..Bucket::default()
        };
        check_with("STO001", &f, Mode::Online, online(&down), "errored");
    }

    #[test]
    fn sto002_round_trip() {
        let f = with_storage();
        check("STO002", &f, "skip");
        let bucket = Bucket::default();
        check_with("STO002", &f, Mode::Online, online(&bucket), "pass");
        assert!(
            bucket.objects.borrow().is_empty(),
            "the probe object is deleted"
        );
        let corrupt = Bucket {
            corrupt: true,
            ..Bucket::default()
        };
        let message = check_with("STO002", &f, Mode::Online, online(&corrupt), "fail");
        assert!(message.contains("differ"), "{message}");
        let rejected = Bucket {
            reject: true,
            ..Bucket::default()
        };
        let message = check_with("STO002", &f, Mode::Online, online(&rejected), "fail");
        assert!(
            message.contains("put `vgi/.deploy-kit-doctor`"),
            "{message}"
        );
    }

    #[test]
    fn sto003_https_urls() {
        check("STO003", &facts(), "skip");
        let mut f = with_storage();
        check("STO003", &f, "pass");
        f.storage.as_mut().unwrap().url_base = "http://127.0.0.1:8333".into();
        check("STO003", &f, "pass");
        f.storage.as_mut().unwrap().url_base = "http://storage.example.com".into();
        check("STO003", &f, "fail");
    }

    fn rule(prefix: &str, expiration: Option<u32>, abort: Option<u32>) -> LifecycleRule {
        LifecycleRule {
            prefix: prefix.into(),
            enabled: true,
            expiration_days: expiration,
            abort_incomplete_multipart_days: abort,
        }
    }

    #[test]
    fn sto004_lifecycle_expiry() {
        let mut f = with_storage();
        check("STO004", &f, "pass");
        f.storage.as_mut().unwrap().expiry_days = None;
        check("STO004", &f, "fail");
        let other_prefix = Bucket {
            lifecycle: vec![rule("other/", Some(1), None)],
            ..Bucket::default()
        };
        check_with("STO004", &f, Mode::Online, online(&other_prefix), "fail");
        let covering = Bucket {
            lifecycle: vec![rule("", Some(1), None)],
            ..Bucket::default()
        };
        check_with("STO004", &f, Mode::Online, online(&covering), "pass");
    }

    #[test]
    fn sto005_abort_multipart() {
        let mut f = with_storage();
        check("STO005", &f, "pass");
        f.storage.as_mut().unwrap().abort_multipart_days = None;
        check("STO005", &f, "fail");
        let expiry_only = Bucket {
            lifecycle: vec![rule("vgi/", Some(1), None)],
            ..Bucket::default()
        };
        check_with("STO005", &f, Mode::Online, online(&expiry_only), "fail");
        let both = Bucket {
            lifecycle: vec![rule("vgi/", Some(1), Some(1))],
            ..Bucket::default()
        };
        check_with("STO005", &f, Mode::Online, online(&both), "pass");
    }

    #[test]
    fn sto006_presign_ttl() {
        let mut f = with_storage();
        check("STO006", &f, "pass");
        let storage = f.storage.as_mut().unwrap();
        storage.credential = Credential::AssumedRole {
            session_seconds: 900,
        };
        assert!(check("STO006", &f, "fail").contains("at most 900 s"));
    }

    #[test]
    fn sto007_bucket_cors() {
        let mut f = with_storage();
        f.security.cors_origins = vec!["https://app.example.com".into()];
        f.limits.upload_urls = true;
        check("STO007", &f, "fail");
        f.storage.as_mut().unwrap().cors_origins = vec!["https://app.example.com".into()];
        check("STO007", &f, "pass");
        let get_only = Bucket {
            cors: vec![CorsRule {
                origins: vec!["https://app.example.com".into()],
                methods: vec!["GET".into()],
            }],
            ..Bucket::default()
        };
        check_with("STO007", &f, Mode::Online, online(&get_only), "fail");
        let put = Bucket {
            cors: vec![CorsRule {
                origins: vec!["*".into()],
                methods: vec!["GET".into(), "PUT".into()],
            }],
            ..Bucket::default()
        };
        check_with("STO007", &f, Mode::Online, online(&put), "pass");
    }

    #[test]
    fn sto008_bucket_name() {
        use crate::facts::StorageProvider;
        check("STO008", &facts(), "skip");
        let mut f = with_storage();
        check("STO008", &f, "pass");
        f.storage.as_mut().unwrap().bucket = "VGI_Data".into();
        let message = check("STO008", &f, "fail");
        assert!(message.contains("not a valid S3 bucket"), "{message}");
        let storage = f.storage.as_mut().unwrap();
        storage.bucket = "vgi.data".into();
        check("STO008", &f, "pass");
        f.storage.as_mut().unwrap().provider = StorageProvider::R2;
        assert!(check("STO008", &f, "fail").contains("R2 bucket"));
        let storage = f.storage.as_mut().unwrap();
        storage.provider = StorageProvider::Gcs;
        storage.bucket = "google-data".into();
        assert!(check("STO008", &f, "fail").contains("GCS bucket"));
    }

    #[test]
    fn sto009_prefix_not_empty() {
        check("STO009", &facts(), "skip");
        let mut f = with_storage();
        check("STO009", &f, "pass");
        for empty in ["", "/", " "] {
            f.storage.as_mut().unwrap().prefix = empty.into();
            let message = check("STO009", &f, "fail");
            assert!(message.contains("whole bucket"), "{message}");
        }
    }
}
