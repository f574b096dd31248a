//! The Cloud Storage JSON API calls deploy-kit makes: buckets (get, insert,
//! patch, delete), objects (insert, get, delete, list), and the bucket
//! settings it owns, lifecycle rules and CORS, as typed values that compare
//! the same whether they were written by us or read back from Google.
//!
//! The endpoint is `STORAGE_EMULATOR_HOST` when set (Google's client
//! libraries use the same variable; `host:port` gains `http://`), else
//! `storage.endpoint` from `deploy-kit.yaml`, else Google's. The
//! gcp-storage-emulator answers the same paths, and keeps what a bucket
//! PATCH sets, which is what the tests rely on.

use std::sync::Arc;

use serde_json::{Value, json};

use super::{Body, Client, GcpError, encode, endpoint_from_override};

/// The action and the conditions of one lifecycle rule, reduced to what
/// deploy-kit sets and what the doctor judges.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LifecycleRuleSpec {
    /// `Delete`, `AbortIncompleteMultipartUpload`, `SetStorageClass`, ...
    pub action: String,
    pub age_days: Option<u32>,
    pub matches_prefix: Vec<String>,
    /// Any condition besides `age` and `matchesPrefix` (`isLive`,
    /// `matchesSuffix`, `createdBefore`, ...) narrows the rule, so it no
    /// longer covers every object under the prefix.
    pub narrowed: bool,
}

impl LifecycleRuleSpec {
    /// Reads one entry of `lifecycle.rule`.
    pub fn from_json(rule: &Value) -> LifecycleRuleSpec {
        let action = rule
            .pointer("/action/type")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let condition = rule.get("condition").and_then(Value::as_object);
        let age_days = condition
            .and_then(|c| c.get("age"))
            .and_then(|age| {
                age.as_u64()
                    .or_else(|| age.as_str().and_then(|s| s.parse().ok()))
            })
            .and_then(|age| u32::try_from(age).ok());
        let matches_prefix = condition
            .and_then(|c| c.get("matchesPrefix"))
            .and_then(Value::as_array)
            .map(|prefixes| {
                prefixes
                    .iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let narrowed = condition.is_some_and(|c| {
            c.iter().any(|(name, value)| match name.as_str() {
                "age" | "matchesPrefix" => false,
                // `isLive: true` is every live object, no narrowing.
                "isLive" => value != &Value::Bool(true),
                _ => true,
            })
        });
        LifecycleRuleSpec {
            action,
            age_days,
            matches_prefix,
            narrowed,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut condition = serde_json::Map::new();
        if let Some(age) = self.age_days {
            condition.insert("age".into(), age.into());
        }
        if !self.matches_prefix.is_empty() {
            condition.insert("matchesPrefix".into(), self.matches_prefix.clone().into());
        }
        json!({"action": {"type": self.action}, "condition": condition})
    }

    /// A rule deploy-kit writes for `prefix`: one of its two actions, on
    /// exactly that prefix, with nothing but an age.
    pub fn is_managed_for(&self, prefix: &str) -> bool {
        (self.action == DELETE || self.action == ABORT_MULTIPART)
            && self.matches_prefix == [prefix]
            && !self.narrowed
    }
}

/// The lifecycle action that expires objects.
pub const DELETE: &str = "Delete";
/// The lifecycle action that aborts incomplete XML-API multipart uploads.
pub const ABORT_MULTIPART: &str = "AbortIncompleteMultipartUpload";

/// One entry of a bucket's `cors` list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct CorsSpec {
    pub origins: Vec<String>,
    pub methods: Vec<String>,
    pub response_headers: Vec<String>,
    pub max_age_seconds: Option<u64>,
}

impl CorsSpec {
    pub fn from_json(entry: &Value) -> CorsSpec {
        let strings = |name: &str| -> Vec<String> {
            entry
                .get(name)
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        CorsSpec {
            origins: strings("origin"),
            methods: strings("method"),
            response_headers: strings("responseHeader"),
            max_age_seconds: entry.get("maxAgeSeconds").and_then(|age| {
                age.as_u64()
                    .or_else(|| age.as_str().and_then(|s| s.parse().ok()))
            }),
        }
    }

    pub fn to_json(&self) -> Value {
        let mut entry = json!({
            "origin": self.origins,
            "method": self.methods,
            "responseHeader": self.response_headers,
        });
        if let Some(age) = self.max_age_seconds {
            entry["maxAgeSeconds"] = age.into();
        }
        entry
    }
}

/// The lifecycle rules of a bucket resource (`lifecycle.rule`).
pub fn lifecycle_of(bucket: &Value) -> Vec<LifecycleRuleSpec> {
    bucket
        .pointer("/lifecycle/rule")
        .and_then(Value::as_array)
        .map(|rules| rules.iter().map(LifecycleRuleSpec::from_json).collect())
        .unwrap_or_default()
}

/// The CORS entries of a bucket resource.
pub fn cors_of(bucket: &Value) -> Vec<CorsSpec> {
    bucket
        .get("cors")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().map(CorsSpec::from_json).collect())
        .unwrap_or_default()
}

/// The Cloud Storage JSON API at one endpoint.
#[derive(Debug, Clone)]
pub struct StorageApi {
    client: Arc<Client>,
    endpoint: String,
}

impl StorageApi {
    pub fn new(client: Arc<Client>, endpoint: &str) -> StorageApi {
        StorageApi {
            client,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    /// `STORAGE_EMULATOR_HOST`, else the configured endpoint, else Google's.
    pub fn endpoint(configured: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> String {
        match env("STORAGE_EMULATOR_HOST").filter(|v| !v.trim().is_empty()) {
            Some(host) => endpoint_from_override(&host),
            None => configured
                .map(endpoint_from_override)
                .unwrap_or_else(|| super::STORAGE_ENDPOINT.to_string()),
        }
    }

    pub fn endpoint_url(&self) -> &str {
        &self.endpoint
    }

    fn bucket_url(&self, bucket: &str) -> String {
        format!("{}/storage/v1/b/{}", self.endpoint, encode(bucket))
    }

    /// The bucket resource, or `None` when there is no such bucket.
    pub fn get_bucket(&self, bucket: &str) -> Result<Option<Value>, GcpError> {
        match self.client.json(
            "GET",
            &self.bucket_url(bucket),
            None,
            &format!("get bucket `{bucket}`"),
        ) {
            Ok(value) => Ok(Some(value)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates a bucket in `project`; `resource` carries `name` and settings.
    pub fn insert_bucket(&self, project: &str, resource: &Value) -> Result<Value, GcpError> {
        let name = resource["name"].as_str().unwrap_or_default();
        self.client.json(
            "POST",
            &format!("{}/storage/v1/b?project={}", self.endpoint, encode(project)),
            Some(resource),
            &format!("create bucket `{name}`"),
        )
    }

    /// Sets the fields in `patch`, leaving the others as they are.
    pub fn patch_bucket(&self, bucket: &str, patch: &Value) -> Result<Value, GcpError> {
        self.client.json(
            "PATCH",
            &self.bucket_url(bucket),
            Some(patch),
            &format!("update bucket `{bucket}`"),
        )
    }

    /// Deletes an empty bucket (Google answers 409 while objects remain).
    pub fn delete_bucket(&self, bucket: &str) -> Result<(), GcpError> {
        self.client
            .send(
                "DELETE",
                &self.bucket_url(bucket),
                None,
                &format!("delete bucket `{bucket}`"),
            )
            .map(drop)
    }

    /// Uploads one object in a single `uploadType=media` request.
    pub fn insert_object(
        &self,
        bucket: &str,
        name: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<(), GcpError> {
        self.client
            .send(
                "POST",
                &format!(
                    "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
                    self.endpoint,
                    encode(bucket),
                    encode(name)
                ),
                Some(Body {
                    content_type,
                    bytes,
                }),
                &format!("upload `{name}` to bucket `{bucket}`"),
            )
            .map(drop)
    }

    /// Uploads one object only if no object has that name
    /// (`ifGenerationMatch=0`); `false` when one exists (HTTP 412).
    pub fn insert_object_if_absent(
        &self,
        bucket: &str,
        name: &str,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<bool, GcpError> {
        let sent = self.client.send(
            "POST",
            &format!(
                "{}/upload/storage/v1/b/{}/o?uploadType=media&ifGenerationMatch=0&name={}",
                self.endpoint,
                encode(bucket),
                encode(name)
            ),
            Some(Body {
                content_type,
                bytes,
            }),
            &format!("create `{name}` in bucket `{bucket}`"),
        );
        match sent {
            Ok(_) => Ok(true),
            Err(GcpError::Status { status: 412, .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// An object's bytes.
    pub fn get_object(&self, bucket: &str, name: &str) -> Result<Vec<u8>, GcpError> {
        self.client
            .send(
                "GET",
                &format!("{}/o/{}?alt=media", self.bucket_url(bucket), encode(name)),
                None,
                &format!("download `{name}` from bucket `{bucket}`"),
            )
            .map(|reply| reply.body)
    }

    pub fn delete_object(&self, bucket: &str, name: &str) -> Result<(), GcpError> {
        self.client
            .send(
                "DELETE",
                &format!("{}/o/{}", self.bucket_url(bucket), encode(name)),
                None,
                &format!("delete `{name}` from bucket `{bucket}`"),
            )
            .map(drop)
    }

    /// Every object name under `prefix` (all pages).
    pub fn list_objects(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, GcpError> {
        let mut names = Vec::new();
        let mut page_token: Option<String> = None;
        loop {
            let mut url = format!(
                "{}/o?fields=items(name),nextPageToken&maxResults=1000",
                self.bucket_url(bucket)
            );
            if !prefix.is_empty() {
                url.push_str(&format!("&prefix={}", encode(prefix)));
            }
            if let Some(token) = &page_token {
                url.push_str(&format!("&pageToken={}", encode(token)));
            }
            let page = self.client.json(
                "GET",
                &url,
                None,
                &format!("list objects of bucket `{bucket}`"),
            )?;
            names.extend(
                page.get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|item| item.get("name").and_then(Value::as_str))
                    .map(str::to_string),
            );
            page_token = page
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if page_token.is_none() {
                return Ok(names);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_round_trip_through_json() {
        let rule = LifecycleRuleSpec {
            action: DELETE.into(),
            age_days: Some(1),
            matches_prefix: vec!["vgi-rpc/".into()],
            narrowed: false,
        };
        assert_eq!(LifecycleRuleSpec::from_json(&rule.to_json()), rule);
        assert!(rule.is_managed_for("vgi-rpc/"));
        assert!(!rule.is_managed_for("other/"));
    }

    #[test]
    fn extra_conditions_narrow_a_rule() {
        let noncurrent = json!({"action": {"type": "Delete"},
            "condition": {"age": 1, "matchesPrefix": ["p/"], "isLive": false}});
        assert!(LifecycleRuleSpec::from_json(&noncurrent).narrowed);
        let live = json!({"action": {"type": "Delete"},
            "condition": {"age": "3", "isLive": true}});
        let live = LifecycleRuleSpec::from_json(&live);
        assert!(!live.narrowed);
        assert_eq!(live.age_days, Some(3));
        assert!(live.matches_prefix.is_empty());
    }

    #[test]
    fn cors_entries_round_trip() {
        let entry = CorsSpec {
            origins: vec!["https://app.example.com".into()],
            methods: vec!["GET".into(), "PUT".into()],
            response_headers: vec!["Content-Type".into()],
            max_age_seconds: Some(3600),
        };
        assert_eq!(CorsSpec::from_json(&entry.to_json()), entry);
    }

    #[test]
    fn emulator_host_wins_over_the_configured_endpoint() {
        let env = |name: &str| (name == "STORAGE_EMULATOR_HOST").then(|| "127.0.0.1:9".to_string());
        assert_eq!(
            StorageApi::endpoint(Some("https://x.example"), &env),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            StorageApi::endpoint(Some("https://x.example/"), &|_| None),
            "https://x.example"
        );
        assert_eq!(
            StorageApi::endpoint(None, &|_| None),
            super::super::STORAGE_ENDPOINT
        );
    }
}
