//! Azure Blob Storage: every request and every URL handed out is authorized
//! by a service SAS (HMAC-SHA256 with the account key, `sr=b`), so the
//! service never needs Shared Key request signing: uploads are a Put Blob
//! through a short `cw` SAS, downloads a `r` SAS.
//!
//! The string to sign is the layout of SAS version 2020-12-06 and later
//! (sixteen fields, with `ses`), checked against the field placement Azure's
//! own SDK tests expect, and the HMAC and encoding against published SDK
//! vectors (`service/tests/fixtures/azure_sas_vectors.json`). Azurite checks
//! SAS signatures too, so the emulator round trip exercises the whole thing.
//!
//! Credentials: `AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_KEY` (base64), the
//! names Azure's CLI and SDKs use. `KIT_STORAGE_ENDPOINT` replaces
//! `https://{account}.blob.core.windows.net`, e.g. Azurite's
//! `http://127.0.0.1:10000/devstoreaccount1`.
//!
//! Clients PUTting to a vended upload URL must send `x-ms-blob-type: BlockBlob`
//! (Put Blob requires it whoever signs the request).

use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::signing::{Utc, percent_encode, refused, unreachable};
use super::{ExternalStorage, StorageError, StorageSettings, UploadUrl, new_key};
use crate::rpc::BoxFuture;

const BACKEND: &str = "azure";
/// The `sv` of every SAS and the `x-ms-version` of every request.
pub const SAS_VERSION: &str = "2022-11-02";

/// The fields of a blob service SAS, in the terms of "Create a service SAS".
#[derive(Debug, Clone, Default)]
pub struct ServiceSas<'a> {
    /// `sp`, e.g. `r` or `cw`.
    pub permissions: &'a str,
    /// `st`, ISO 8601 UTC.
    pub start: Option<&'a str>,
    /// `se`, ISO 8601 UTC.
    pub expiry: &'a str,
    /// `/blob/{account}/{container}/{blob}`, blob name not encoded.
    pub canonicalized_resource: &'a str,
    pub identifier: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub protocol: Option<&'a str>,
    /// `sv`.
    pub version: &'a str,
    /// `sr`: `b` for a blob.
    pub resource: &'a str,
    pub snapshot_time: Option<&'a str>,
    pub encryption_scope: Option<&'a str>,
    pub cache_control: Option<&'a str>,
    pub content_disposition: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub content_language: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

impl ServiceSas<'_> {
    /// The string to sign, version 2020-12-06 and later.
    pub fn string_to_sign(&self) -> String {
        [
            self.permissions,
            self.start.unwrap_or(""),
            self.expiry,
            self.canonicalized_resource,
            self.identifier.unwrap_or(""),
            self.ip.unwrap_or(""),
            self.protocol.unwrap_or(""),
            self.version,
            self.resource,
            self.snapshot_time.unwrap_or(""),
            self.encryption_scope.unwrap_or(""),
            self.cache_control.unwrap_or(""),
            self.content_disposition.unwrap_or(""),
            self.content_encoding.unwrap_or(""),
            self.content_language.unwrap_or(""),
            self.content_type.unwrap_or(""),
        ]
        .join("\n")
    }

    /// The SAS query string (no leading `?`), signed with the decoded account key.
    pub fn token(&self, account_key: &[u8]) -> String {
        let signature = sign(account_key, &self.string_to_sign());
        let mut pairs: Vec<(&str, &str)> = vec![("sv", self.version)];
        pairs.extend(self.start.map(|v| ("st", v)));
        pairs.push(("se", self.expiry));
        pairs.push(("sr", self.resource));
        pairs.push(("sp", self.permissions));
        pairs.extend(self.identifier.map(|v| ("si", v)));
        pairs.extend(self.ip.map(|v| ("sip", v)));
        pairs.extend(self.protocol.map(|v| ("spr", v)));
        pairs.extend(self.encryption_scope.map(|v| ("ses", v)));
        pairs.extend(self.cache_control.map(|v| ("rscc", v)));
        pairs.extend(self.content_disposition.map(|v| ("rscd", v)));
        pairs.extend(self.content_encoding.map(|v| ("rsce", v)));
        pairs.extend(self.content_language.map(|v| ("rscl", v)));
        pairs.extend(self.content_type.map(|v| ("rsct", v)));
        pairs.push(("sig", &signature));
        pairs
            .iter()
            .map(|(name, value)| format!("{name}={}", percent_encode(value, false)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// `base64(HMAC-SHA256(key, string_to_sign))`, the signature of every SAS version.
pub fn sign(account_key: &[u8], string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(account_key).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The Azure Blob backend.
pub struct AzureStorage {
    client: reqwest::Client,
    account: String,
    key: Vec<u8>,
    /// Blob service base URL, no trailing slash.
    endpoint: String,
    container: String,
    prefix: String,
    ttl: Duration,
}

impl AzureStorage {
    /// `account_key` is the base64 text Azure shows.
    pub fn new(
        account: &str,
        account_key: &str,
        endpoint: Option<&str>,
        container: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<AzureStorage, StorageError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(account_key.trim())
            .map_err(|e| StorageError::Config(format!("`AZURE_STORAGE_KEY` is not base64: {e}")))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| StorageError::Config(format!("failed to build the Azure client: {e}")))?;
        Ok(AzureStorage {
            client,
            account: account.to_string(),
            key,
            endpoint: endpoint
                .map(str::to_string)
                .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"))
                .trim_end_matches('/')
                .to_string(),
            container: container.to_string(),
            prefix: prefix.to_string(),
            ttl,
        })
    }

    /// Reads `AZURE_STORAGE_ACCOUNT`, `AZURE_STORAGE_KEY` and the storage settings.
    pub fn from_env(
        settings: &StorageSettings,
        env: &dyn crate::config::Env,
    ) -> Result<AzureStorage, StorageError> {
        let container = settings.bucket.as_deref().ok_or_else(|| {
            StorageError::Config(
                "`KIT_STORAGE=azure` needs `KIT_STORAGE_BUCKET` (the container)".into(),
            )
        })?;
        let var = |name: &str| env.var(name).filter(|v| !v.trim().is_empty());
        let (Some(account), Some(key)) = (var("AZURE_STORAGE_ACCOUNT"), var("AZURE_STORAGE_KEY"))
        else {
            return Err(StorageError::Config(
                "`KIT_STORAGE=azure` needs `AZURE_STORAGE_ACCOUNT` and `AZURE_STORAGE_KEY` (the account key signs the SAS URLs)".into(),
            ));
        };
        AzureStorage::new(
            &account,
            &key,
            settings.endpoint.as_deref(),
            container,
            &settings.prefix,
            settings.presign_ttl,
        )
    }

    /// A SAS URL for blob `key` with `permissions`, valid for `ttl` from now.
    pub fn presign(&self, permissions: &str, key: &str, ttl: Duration) -> (String, SystemTime) {
        let expires_at = SystemTime::now() + ttl;
        let expiry = Utc::from_system_time(expires_at).iso8601();
        let resource = format!("/blob/{}/{}/{key}", self.account, self.container);
        let token = ServiceSas {
            permissions,
            expiry: &expiry,
            canonicalized_resource: &resource,
            version: SAS_VERSION,
            resource: "b",
            ..ServiceSas::default()
        }
        .token(&self.key);
        (
            format!(
                "{}/{}/{}?{token}",
                self.endpoint,
                percent_encode(&self.container, false),
                percent_encode(key, true)
            ),
            expires_at,
        )
    }

    async fn put_blob(
        &self,
        key: &str,
        bytes: Bytes,
        content_encoding: Option<&str>,
    ) -> Result<(), StorageError> {
        // The write SAS only has to outlive this request.
        let (url, _) = self.presign("cw", key, Duration::from_secs(15 * 60));
        let mut request = self
            .client
            .put(url)
            .header("x-ms-version", SAS_VERSION)
            .header("x-ms-blob-type", "BlockBlob")
            .header("x-ms-blob-content-type", crate::wire::CONTENT_TYPE)
            .body(bytes);
        if let Some(encoding) = content_encoding {
            request = request.header("x-ms-blob-content-encoding", encoding);
        }
        let response = request.send().await.map_err(|e| unreachable(BACKEND, e))?;
        if !response.status().is_success() {
            return Err(refused(BACKEND, &format!("uploading `{key}`"), response).await);
        }
        Ok(())
    }
}

impl ExternalStorage for AzureStorage {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn upload(
        &self,
        bytes: Bytes,
        content_encoding: Option<&'static str>,
    ) -> BoxFuture<'_, Result<String, StorageError>> {
        Box::pin(async move {
            let key = new_key(&self.prefix);
            self.put_blob(&key, bytes, content_encoding).await?;
            Ok(self.presign("r", &key, self.ttl).0)
        })
    }

    fn upload_urls(&self, count: usize) -> BoxFuture<'_, Result<Vec<UploadUrl>, StorageError>> {
        Box::pin(async move {
            Ok((0..count)
                .map(|_| {
                    let key = new_key(&self.prefix);
                    let (upload_url, expires_at) = self.presign("cw", &key, self.ttl);
                    let (download_url, _) = self.presign("r", &key, self.ttl);
                    UploadUrl {
                        upload_url,
                        download_url,
                        expires_at,
                    }
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_carry_the_sas_fields() {
        let storage = AzureStorage::new(
            "devstoreaccount1",
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
            Some("http://127.0.0.1:10000/devstoreaccount1/"),
            "kit",
            "vgi-rpc/",
            Duration::from_secs(60),
        )
        .unwrap();
        let (url, _) = storage.presign("r", "vgi-rpc/a.arrow", Duration::from_secs(60));
        assert!(
            url.starts_with(
                "http://127.0.0.1:10000/devstoreaccount1/kit/vgi-rpc/a.arrow?sv=2022-11-02&se="
            ),
            "{url}"
        );
        assert!(url.contains("&sr=b&sp=r&sig="), "{url}");
    }

    #[test]
    fn a_key_that_is_not_base64_is_a_config_error() {
        let error = AzureStorage::new("a", "not base64!", None, "c", "p/", Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(error.to_string().contains("AZURE_STORAGE_KEY"), "{error}");
    }
}

/// Known-answer vectors from Azure's SDKs (`service/tests/fixtures/azure_sas_vectors.json`).
#[cfg(test)]
mod vectors {
    use super::*;

    fn fixture() -> serde_json::Value {
        serde_json::from_str(include_str!("../../tests/fixtures/azure_sas_vectors.json")).unwrap()
    }

    #[test]
    fn string_to_sign_places_every_field_as_the_java_sdk_expects() {
        let fixture = fixture();
        let section = &fixture["string_to_sign"];
        let expiry = section["expiry"].as_str().unwrap();
        let resource = "/blob/devstoreaccount1/containerName/blobName";
        let cases = section["cases"].as_array().unwrap();
        assert_eq!(cases.len(), 12);
        for case in cases {
            let fields = &case["fields"];
            let field = |name: &str| fields[name].as_str();
            let sas = ServiceSas {
                permissions: "r",
                start: field("start"),
                expiry,
                canonicalized_resource: resource,
                identifier: field("identifier"),
                ip: field("ip"),
                protocol: field("protocol"),
                version: SAS_VERSION,
                resource: field("resource").unwrap_or("b"),
                snapshot_time: field("snapshot_time"),
                encryption_scope: field("encryption_scope"),
                cache_control: field("cache_control"),
                content_disposition: field("content_disposition"),
                content_encoding: field("content_encoding"),
                content_language: field("content_language"),
                content_type: field("content_type"),
            };
            let expected = case["expected"]
                .as_str()
                .unwrap()
                .replace("{account}", "devstoreaccount1")
                .replace("{version}", SAS_VERSION);
            assert_eq!(sas.string_to_sign(), expected, "{}", case["description"]);
        }
    }

    #[test]
    fn signatures_and_query_encoding_match_the_node_sdk_vectors() {
        let fixture = fixture();
        let section = &fixture["signatures"];
        let key = base64::engine::general_purpose::STANDARD
            .decode(section["account_key"].as_str().unwrap())
            .unwrap();
        for case in section["cases"].as_array().unwrap() {
            let signature = sign(&key, case["string_to_sign"].as_str().unwrap());
            let expected = case["expected_query"].as_str().unwrap();
            let expected_signature = expected.rsplit_once("&sig=").unwrap().1;
            assert_eq!(percent_encode(&signature, false), expected_signature);
            assert!(
                expected.starts_with(&format!(
                    "se={}&",
                    percent_encode("2011-10-12T11:53:40Z", false)
                )),
                "{expected}"
            );
        }
    }
}
