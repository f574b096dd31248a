//! The only doors the online checks have to the world.
//!
//! Callers implement these small traits (HTTP to a replica, an object-store
//! client); tests implement them with plain data. When a caller has no probe,
//! the online checks skip with a reason instead of guessing.

/// Fetches a replica's `/healthz` body.
pub trait ReplicaProbe {
    /// The raw JSON body of `GET <base_url>/healthz`, or why it could not be had.
    fn healthz(&self, base_url: &str) -> Result<String, String>;
}

/// What the signing-key part of `/healthz` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaKey {
    pub fingerprint: String,
    pub ephemeral: bool,
}

impl ReplicaKey {
    /// Reads `signing_key.fingerprint` and `signing_key.ephemeral` from a `/healthz` body.
    pub fn from_healthz(body: &str) -> Result<ReplicaKey, String> {
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| format!("`/healthz` is not JSON ({e})"))?;
        let key = value
            .get("signing_key")
            .ok_or("`/healthz` has no `signing_key` object")?;
        let fingerprint = key
            .get("fingerprint")
            .and_then(|v| v.as_str())
            .ok_or("`/healthz` has no `signing_key.fingerprint` string")?;
        let ephemeral = key
            .get("ephemeral")
            .and_then(|v| v.as_bool())
            .ok_or("`/healthz` has no `signing_key.ephemeral` boolean")?;
        Ok(ReplicaKey {
            fingerprint: fingerprint.to_string(),
            ephemeral,
        })
    }
}

/// A lifecycle rule as the bucket reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleRule {
    /// The rule's filter prefix; empty covers the whole bucket.
    pub prefix: String,
    pub enabled: bool,
    pub expiration_days: Option<u32>,
    pub abort_incomplete_multipart_days: Option<u32>,
}

impl LifecycleRule {
    /// True when the rule applies to every object written under `prefix`.
    pub fn covers(&self, prefix: &str) -> bool {
        self.enabled && prefix.starts_with(&self.prefix)
    }
}

/// A bucket CORS rule, reduced to what browser uploads need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsRule {
    pub origins: Vec<String>,
    /// Upper-case HTTP methods (`PUT`, `GET`).
    pub methods: Vec<String>,
}

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The store answered: access denied, no such bucket, wrong credentials.
    Rejected(String),
    /// The store could not be asked (no backend, network down): the check could not run.
    Unavailable(String),
}

/// Reads bucket settings and does a put/get/delete round trip.
pub trait StorageProbe {
    /// Confirms the bucket exists and the credentials are accepted.
    fn reach(&self) -> Result<(), StorageError>;
    fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>, StorageError>;
    fn cors_rules(&self) -> Result<Vec<CorsRule>, StorageError>;
    fn put(&self, key: &str, body: &[u8]) -> Result<(), StorageError>;
    fn get(&self, key: &str) -> Result<Vec<u8>, StorageError>;
    fn delete(&self, key: &str) -> Result<(), StorageError>;
}

/// The end-to-end probe behind OPS003 and OPS004.
pub trait SyntheticProbe {
    /// Calls a method whose result is forced through external storage.
    fn call_through_storage(&self, base_url: &str) -> Result<(), SyntheticError>;
    /// Opens a stream on `first` and continues it on `second`.
    fn stream_across(&self, first: &str, second: &str) -> Result<(), SyntheticError>;
    /// Makes a real vgi-rpc call with the caller's key (if any): it must succeed.
    fn call(&self, base_url: &str) -> Result<(), SyntheticError>;
    /// Makes the same call with no credentials: it must be refused with 401.
    fn refused_without_key(&self, base_url: &str) -> Result<(), SyntheticError>;
    /// Whether [`SyntheticProbe::call`] sends a key (`DEPLOY_KIT_API_KEY`).
    fn has_key(&self) -> bool {
        true
    }
}

/// Why a synthetic call did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyntheticError {
    /// The replica answered, wrongly: a finding.
    Failed(String),
    /// The replica could not be reached: the check could not run.
    Unreachable(String),
}

/// The probes a caller provides; `None` means the check skips.
#[derive(Default, Clone, Copy)]
pub struct Probes<'a> {
    pub replicas: Option<&'a dyn ReplicaProbe>,
    pub storage: Option<&'a dyn StorageProbe>,
    pub synthetic: Option<&'a dyn SyntheticProbe>,
    /// Why `storage` is absent, for the skip reason.
    pub storage_unavailable: Option<&'a str>,
    /// Why `synthetic` is absent, for the skip reason.
    pub synthetic_unavailable: Option<&'a str>,
}

impl std::fmt::Debug for Probes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("replicas", &self.replicas.is_some())
            .field("storage", &self.storage.is_some())
            .field("synthetic", &self.synthetic.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_healthz_key_block() {
        let key = ReplicaKey::from_healthz(
            r#"{"status":"ok","signing_key":{"fingerprint":"abcd","ephemeral":false}}"#,
        )
        .unwrap();
        assert_eq!(key.fingerprint, "abcd");
        assert!(!key.ephemeral);
        assert!(ReplicaKey::from_healthz("<html>").is_err());
        assert!(ReplicaKey::from_healthz(r#"{"status":"ok"}"#).is_err());
    }

    #[test]
    fn lifecycle_rules_cover_by_prefix() {
        let rule = LifecycleRule {
            prefix: "vgi/".into(),
            enabled: true,
            expiration_days: Some(1),
            abort_incomplete_multipart_days: None,
        };
        assert!(rule.covers("vgi/results/"));
        assert!(!rule.covers("other/"));
        assert!(
            !LifecycleRule {
                enabled: false,
                ..rule
            }
            .covers("vgi/")
        );
    }
}
