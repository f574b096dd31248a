//! Secret Manager v1: the secret that holds the service's signing key.
//!
//! `up` creates the secret once and adds one version holding `hex:` and 64
//! hex digits (32 random bytes, the form kit-service reads from
//! `VGI_SIGNING_KEY`). The value is generated here, sent once, and never
//! printed, logged or written to the state file; later runs see an enabled
//! version and leave it alone. There is no Secret Manager emulator: the
//! tests run this against a fake on 127.0.0.1 that checks the requests.

use std::sync::Arc;

use base64::Engine;
use serde_json::{Value, json};

use super::{Client, GcpError, encode};

/// A `gcp:projects/<project>/secrets/<secret>` reference, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretName {
    pub project: String,
    pub secret: String,
}

impl SecretName {
    /// Parses `gcp:projects/P/secrets/S` (an optional `/versions/V` is ignored).
    pub fn parse(reference: &str) -> Result<SecretName, String> {
        let path = reference.strip_prefix("gcp:").ok_or_else(|| {
            format!(
                "`{reference}` is not a GCP secret reference (`gcp:projects/PROJECT/secrets/NAME`)"
            )
        })?;
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["projects", project, "secrets", secret, rest @ ..]
                if !project.is_empty()
                    && !secret.is_empty()
                    && (rest.is_empty() || (rest.len() == 2 && rest[0] == "versions")) =>
            {
                Ok(SecretName {
                    project: project.to_string(),
                    secret: secret.to_string(),
                })
            }
            _ => Err(format!(
                "`{reference}` is not of the form `gcp:projects/PROJECT/secrets/NAME`"
            )),
        }
    }

    /// `projects/P/secrets/S`, as Cloud Run's `secretKeyRef` wants it.
    pub fn resource(&self) -> String {
        format!("projects/{}/secrets/{}", self.project, self.secret)
    }
}

/// Secret Manager at one endpoint.
#[derive(Debug, Clone)]
pub struct SecretsApi {
    client: Arc<Client>,
    endpoint: String,
}

impl SecretsApi {
    pub fn new(client: Arc<Client>, endpoint: &str) -> SecretsApi {
        SecretsApi {
            client,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }

    fn url(&self, name: &SecretName) -> String {
        format!(
            "{}/v1/projects/{}/secrets/{}",
            self.endpoint,
            encode(&name.project),
            encode(&name.secret)
        )
    }

    /// The secret resource, or `None`.
    pub fn get(&self, name: &SecretName) -> Result<Option<Value>, GcpError> {
        match self.client.json(
            "GET",
            &self.url(name),
            None,
            &format!("get secret `{}`", name.resource()),
        ) {
            Ok(secret) => Ok(Some(secret)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Creates the secret (no value yet) with automatic replication.
    /// Replaces the secret's labels (`updateMask=labels`).
    pub fn set_labels(&self, name: &SecretName, labels: &Value) -> Result<Value, GcpError> {
        self.client.json(
            "PATCH",
            &format!("{}?updateMask=labels", self.url(name)),
            Some(&json!({"labels": labels})),
            &format!("label secret `{}`", name.resource()),
        )
    }

    pub fn create(&self, name: &SecretName, labels: &Value) -> Result<Value, GcpError> {
        self.client.json(
            "POST",
            &format!(
                "{}/v1/projects/{}/secrets?secretId={}",
                self.endpoint,
                encode(&name.project),
                encode(&name.secret)
            ),
            Some(&json!({"replication": {"automatic": {}}, "labels": labels})),
            &format!("create secret `{}`", name.resource()),
        )
    }

    /// Names of the enabled versions.
    pub fn enabled_versions(&self, name: &SecretName) -> Result<Vec<String>, GcpError> {
        let page = self.client.json(
            "GET",
            &format!("{}/versions?filter=state%3AENABLED", self.url(name)),
            None,
            &format!("list versions of secret `{}`", name.resource()),
        )?;
        Ok(page
            .get("versions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| v.get("state").and_then(Value::as_str) == Some("ENABLED"))
            .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
            .collect())
    }

    /// Adds a version holding `payload`; returns the version's name only.
    pub fn add_version(&self, name: &SecretName, payload: &[u8]) -> Result<String, GcpError> {
        let data = base64::engine::general_purpose::STANDARD.encode(payload);
        let version = self.client.json(
            "POST",
            &format!("{}:addVersion", self.url(name)),
            Some(&json!({"payload": {"data": data}})),
            &format!("add a version to secret `{}`", name.resource()),
        )?;
        Ok(version
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string())
    }

    /// Deletes the secret with all its versions.
    pub fn delete(&self, name: &SecretName) -> Result<(), GcpError> {
        self.client
            .send(
                "DELETE",
                &self.url(name),
                None,
                &format!("delete secret `{}`", name.resource()),
            )
            .map(drop)
    }
}

/// A new signing key as kit-service reads it: `hex:` and 64 hex digits.
pub fn new_signing_key() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let mut text = String::with_capacity(4 + 64);
    text.push_str("hex:");
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse() {
        let name = SecretName::parse("gcp:projects/p-1/secrets/vgi-signing-key").unwrap();
        assert_eq!(name.project, "p-1");
        assert_eq!(name.resource(), "projects/p-1/secrets/vgi-signing-key");
        assert_eq!(
            SecretName::parse("gcp:projects/p/secrets/s/versions/3")
                .unwrap()
                .secret,
            "s"
        );
        for bad in [
            "aws:arn:aws:secretsmanager:...",
            "gcp:projects/p",
            "gcp:projects//secrets/s",
            "gcp:projects/p/secrets/s/extra",
        ] {
            assert!(SecretName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signing_keys_are_32_random_bytes_in_hex() {
        let first = new_signing_key().unwrap();
        let second = new_signing_key().unwrap();
        assert_eq!(first.len(), 4 + 64);
        assert!(first.starts_with("hex:"));
        assert!(first[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }
}
