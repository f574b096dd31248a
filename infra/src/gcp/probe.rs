//! `StorageProbe` for GCS: what `doctor --online` reads from a bucket.
//!
//! GCS lifecycle rules have no enabled flag and carry their prefixes in
//! `matchesPrefix`; they are mapped to the provider-neutral `LifecycleRule`
//! so STO004/STO005 judge GCS and S3 alike: a `Delete` rule with an `age` is
//! an expiration, `AbortIncompleteMultipartUpload` with an `age` the abort
//! rule. A rule with any other condition (`isLive: false`, `matchesSuffix`,
//! ...) covers no prefix, because it leaves some objects under it alone.

use kit_checks::probe::{CorsRule, LifecycleRule, StorageError, StorageProbe};

use super::GcpError;
use super::storage::{
    ABORT_MULTIPART, DELETE, LifecycleRuleSpec, StorageApi, cors_of, lifecycle_of,
};

/// One bucket, probed through the JSON API.
#[derive(Debug)]
pub struct GcsProbe {
    api: StorageApi,
    bucket: String,
}

impl GcsProbe {
    pub fn new(api: StorageApi, bucket: &str) -> GcsProbe {
        GcsProbe {
            api,
            bucket: bucket.to_string(),
        }
    }

    fn bucket_resource(&self) -> Result<serde_json::Value, StorageError> {
        match self.api.get_bucket(&self.bucket) {
            Ok(Some(bucket)) => Ok(bucket),
            Ok(None) => Err(StorageError::Rejected(format!(
                "no bucket `{}` at `{}`",
                self.bucket,
                self.api.endpoint_url()
            ))),
            Err(error) => Err(storage_error(error)),
        }
    }
}

/// Answers from the store (denied, missing) are findings; not being able
/// to ask (network, 5xx, a garbled answer) means the check could not run.
fn storage_error(error: GcpError) -> StorageError {
    match &error {
        GcpError::Status { status, .. } if *status >= 500 => {
            StorageError::Unavailable(error.to_string())
        }
        GcpError::Status { .. } | GcpError::Credentials(_) => {
            StorageError::Rejected(error.to_string())
        }
        GcpError::Unreachable { .. } | GcpError::Decode { .. } => {
            StorageError::Unavailable(error.to_string())
        }
    }
}

/// The neutral rules one GCS rule stands for: one per prefix (none: the
/// whole bucket).
pub fn neutral_rules(rule: &LifecycleRuleSpec) -> Vec<LifecycleRule> {
    let days = |action: &str| {
        (rule.action == action && !rule.narrowed)
            .then_some(rule.age_days)
            .flatten()
    };
    let prefixes = if rule.matches_prefix.is_empty() {
        vec![String::new()]
    } else {
        rule.matches_prefix.clone()
    };
    prefixes
        .into_iter()
        .map(|prefix| LifecycleRule {
            prefix,
            enabled: !rule.narrowed,
            expiration_days: days(DELETE),
            abort_incomplete_multipart_days: days(ABORT_MULTIPART),
        })
        .collect()
}

impl StorageProbe for GcsProbe {
    fn reach(&self) -> Result<(), StorageError> {
        self.bucket_resource().map(drop)
    }

    fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>, StorageError> {
        let bucket = self.bucket_resource()?;
        Ok(lifecycle_of(&bucket)
            .iter()
            .flat_map(neutral_rules)
            .collect())
    }

    fn cors_rules(&self) -> Result<Vec<CorsRule>, StorageError> {
        let bucket = self.bucket_resource()?;
        Ok(cors_of(&bucket)
            .into_iter()
            .map(|entry| CorsRule {
                origins: entry.origins,
                methods: entry
                    .methods
                    .iter()
                    .map(|m| m.to_ascii_uppercase())
                    .collect(),
            })
            .collect())
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<(), StorageError> {
        self.api
            .insert_object(&self.bucket, key, body, "application/octet-stream")
            .map_err(storage_error)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        self.api
            .get_object(&self.bucket, key)
            .map_err(storage_error)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.api
            .delete_object(&self.bucket, key)
            .map_err(storage_error)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn neutral(rule: serde_json::Value) -> Vec<LifecycleRule> {
        neutral_rules(&LifecycleRuleSpec::from_json(&rule))
    }

    #[test]
    fn delete_with_age_is_an_expiration_per_prefix() {
        let rules = neutral(json!({"action": {"type": "Delete"},
            "condition": {"age": 1, "matchesPrefix": ["a/", "b/"]}}));
        assert_eq!(rules.len(), 2);
        assert!(rules[0].covers("a/x/") && rules[1].covers("b/"));
        assert_eq!(rules[0].expiration_days, Some(1));
        assert_eq!(rules[0].abort_incomplete_multipart_days, None);
    }

    #[test]
    fn abort_rule_without_prefix_covers_the_bucket() {
        let rules = neutral(json!({"action": {"type": "AbortIncompleteMultipartUpload"},
            "condition": {"age": 2}}));
        assert_eq!(rules.len(), 1);
        assert!(rules[0].covers("vgi-rpc/"));
        assert_eq!(rules[0].abort_incomplete_multipart_days, Some(2));
        assert_eq!(rules[0].expiration_days, None);
    }

    #[test]
    fn narrowed_or_other_rules_expire_nothing() {
        let noncurrent = neutral(json!({"action": {"type": "Delete"},
            "condition": {"age": 1, "isLive": false}}));
        assert!(!noncurrent[0].covers("vgi-rpc/"));
        assert_eq!(noncurrent[0].expiration_days, None);
        let class = neutral(
            json!({"action": {"type": "SetStorageClass", "storageClass": "COLDLINE"},
            "condition": {"age": 30}}),
        );
        assert_eq!(class[0].expiration_days, None);
        let no_age = neutral(json!({"action": {"type": "Delete"},
            "condition": {"numNewerVersions": 3}}));
        assert_eq!(no_age[0].expiration_days, None);
    }

    #[test]
    fn denials_are_findings_and_outages_are_not() {
        let status = |status| GcpError::Status {
            action: "get bucket `b`".into(),
            status,
            message: "m".into(),
        };
        assert!(matches!(
            storage_error(status(403)),
            StorageError::Rejected(_)
        ));
        assert!(matches!(
            storage_error(status(503)),
            StorageError::Unavailable(_)
        ));
        assert!(matches!(
            storage_error(GcpError::Unreachable {
                url: "u".into(),
                message: "refused".into()
            }),
            StorageError::Unavailable(_)
        ));
    }
}
