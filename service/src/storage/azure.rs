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
//! Credentials: `AZURE_STORAGE_ACCOUNT`, and either `AZURE_STORAGE_KEY`
//! (base64; the names Azure's CLI and SDKs use), which signs service SAS
//! URLs, or, without a key, the managed identity of the App Service or
//! Functions host (`IDENTITY_ENDPOINT` and `IDENTITY_HEADER`, which the
//! platform sets when the app has an identity): a token for
//! `https://storage.azure.com/` from that endpoint requests a **user
//! delegation key** (`POST /?restype=service&comp=userdelegationkey`), and
//! that key signs user delegation SAS URLs. The key is kept until its
//! expiry is nearer than a URL's lifetime, then requested again; the
//! identity needs `Storage Blob Data Contributor` on the account (the `az`
//! engine grants it). `KIT_STORAGE_ENDPOINT` replaces
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

/// The fields of a blob user delegation SAS, in the terms of "Create a user
/// delegation SAS" (version 2020-12-06 and later; no `sduoid`, which only
/// later versions sign).
#[derive(Debug, Clone)]
pub struct UserDelegationSas<'a> {
    /// `sp`.
    pub permissions: &'a str,
    /// `st`.
    pub start: Option<&'a str>,
    /// `se`.
    pub expiry: &'a str,
    /// `/blob/{account}/{container}/{blob}`.
    pub canonicalized_resource: &'a str,
    /// The key's `skoid`, `sktid`, `skt`, `ske`, `sks`, `skv`.
    pub key: &'a UserDelegationKey,
    /// `saoid`.
    pub authorized_object_id: Option<&'a str>,
    /// `suoid`.
    pub unauthorized_object_id: Option<&'a str>,
    /// `scid`.
    pub correlation_id: Option<&'a str>,
    pub ip: Option<&'a str>,
    pub protocol: Option<&'a str>,
    /// `sv`.
    pub version: &'a str,
    /// `sr`.
    pub resource: &'a str,
    pub snapshot_time: Option<&'a str>,
    pub encryption_scope: Option<&'a str>,
    pub cache_control: Option<&'a str>,
    pub content_disposition: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub content_language: Option<&'a str>,
    pub content_type: Option<&'a str>,
}

impl<'a> UserDelegationSas<'a> {
    /// A blob SAS (`sr=b`, `sv` [`SAS_VERSION`]) with no optional field.
    pub fn blob(
        permissions: &'a str,
        expiry: &'a str,
        canonicalized_resource: &'a str,
        key: &'a UserDelegationKey,
    ) -> UserDelegationSas<'a> {
        UserDelegationSas {
            permissions,
            start: None,
            expiry,
            canonicalized_resource,
            key,
            authorized_object_id: None,
            unauthorized_object_id: None,
            correlation_id: None,
            ip: None,
            protocol: None,
            version: SAS_VERSION,
            resource: "b",
            snapshot_time: None,
            encryption_scope: None,
            cache_control: None,
            content_disposition: None,
            content_encoding: None,
            content_language: None,
            content_type: None,
        }
    }

    /// The string to sign, version 2020-12-06 and later.
    pub fn string_to_sign(&self) -> String {
        [
            self.permissions,
            self.start.unwrap_or(""),
            self.expiry,
            self.canonicalized_resource,
            &self.key.signed_oid,
            &self.key.signed_tid,
            &self.key.signed_start,
            &self.key.signed_expiry,
            &self.key.signed_service,
            &self.key.signed_version,
            self.authorized_object_id.unwrap_or(""),
            self.unauthorized_object_id.unwrap_or(""),
            self.correlation_id.unwrap_or(""),
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

    /// The SAS query string (no leading `?`), signed with the key's value.
    pub fn token(&self) -> Result<String, StorageError> {
        let signature = sign(&self.key.decoded()?, &self.string_to_sign());
        let key = self.key;
        let mut pairs: Vec<(&str, &str)> = vec![("sv", self.version)];
        pairs.extend(self.start.map(|v| ("st", v)));
        pairs.push(("se", self.expiry));
        pairs.push(("sr", self.resource));
        pairs.push(("sp", self.permissions));
        pairs.extend([
            ("skoid", key.signed_oid.as_str()),
            ("sktid", key.signed_tid.as_str()),
            ("skt", key.signed_start.as_str()),
            ("ske", key.signed_expiry.as_str()),
            ("sks", key.signed_service.as_str()),
            ("skv", key.signed_version.as_str()),
        ]);
        pairs.extend(self.authorized_object_id.map(|v| ("saoid", v)));
        pairs.extend(self.unauthorized_object_id.map(|v| ("suoid", v)));
        pairs.extend(self.correlation_id.map(|v| ("scid", v)));
        pairs.extend(self.ip.map(|v| ("sip", v)));
        pairs.extend(self.protocol.map(|v| ("spr", v)));
        pairs.extend(self.encryption_scope.map(|v| ("ses", v)));
        pairs.extend(self.cache_control.map(|v| ("rscc", v)));
        pairs.extend(self.content_disposition.map(|v| ("rscd", v)));
        pairs.extend(self.content_encoding.map(|v| ("rsce", v)));
        pairs.extend(self.content_language.map(|v| ("rscl", v)));
        pairs.extend(self.content_type.map(|v| ("rsct", v)));
        pairs.push(("sig", &signature));
        Ok(pairs
            .iter()
            .map(|(name, value)| format!("{name}={}", percent_encode(value, false)))
            .collect::<Vec<_>>()
            .join("&"))
    }
}

/// A user delegation key as Get User Delegation Key returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDelegationKey {
    pub signed_oid: String,
    pub signed_tid: String,
    pub signed_start: String,
    pub signed_expiry: String,
    pub signed_service: String,
    pub signed_version: String,
    /// Base64, as returned.
    pub value: String,
}

impl UserDelegationKey {
    /// Reads the `<UserDelegationKey>` XML document.
    pub fn parse(xml: &str) -> Result<UserDelegationKey, StorageError> {
        let field = |name: &str| {
            xml_text(xml, name).ok_or_else(|| StorageError::Failed {
                backend: BACKEND,
                message: format!("the user delegation key has no `<{name}>`"),
            })
        };
        Ok(UserDelegationKey {
            signed_oid: field("SignedOid")?,
            signed_tid: field("SignedTid")?,
            signed_start: field("SignedStart")?,
            signed_expiry: field("SignedExpiry")?,
            signed_service: field("SignedService")?,
            signed_version: field("SignedVersion")?,
            value: field("Value")?,
        })
    }

    fn decoded(&self) -> Result<Vec<u8>, StorageError> {
        base64::engine::general_purpose::STANDARD
            .decode(self.value.trim())
            .map_err(|e| StorageError::Failed {
                backend: BACKEND,
                message: format!("the user delegation key's `<Value>` is not base64: {e}"),
            })
    }
}

/// The text of the first `<name>...</name>` (no attributes, no nesting: the
/// shape of Get User Delegation Key's answer).
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim().to_string())
}

/// `base64(HMAC-SHA256(key, string_to_sign))`, the signature of every SAS version.
pub fn sign(account_key: &[u8], string_to_sign: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(account_key).expect("HMAC takes any key length");
    mac.update(string_to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The resource a managed identity token is asked for.
pub const STORAGE_RESOURCE: &str = "https://storage.azure.com/";
/// The App Service / Functions managed identity protocol version.
pub const IDENTITY_API_VERSION: &str = "2019-08-01";
/// The role the identity needs on the storage account.
pub const STORAGE_ROLE: &str = "Storage Blob Data Contributor";
/// Longest user delegation key Azure issues.
const MAX_KEY_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// What signs the SAS URLs.
enum Signer {
    /// The account key: service SAS.
    AccountKey(Vec<u8>),
    /// The managed identity: user delegation SAS.
    Identity(Box<ManagedIdentity>),
}

/// The App Service / Functions managed identity endpoint and the user
/// delegation key it last got.
struct ManagedIdentity {
    endpoint: String,
    header: String,
    cached: tokio::sync::Mutex<Option<(UserDelegationKey, SystemTime)>>,
}

/// The Azure Blob backend.
pub struct AzureStorage {
    client: reqwest::Client,
    account: String,
    signer: Signer,
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
        AzureStorage::with_signer(
            account,
            Signer::AccountKey(key),
            endpoint,
            container,
            prefix,
            ttl,
        )
    }

    /// A backend that signs with user delegation keys its managed identity
    /// requests: `identity_endpoint` and `identity_header` are the
    /// platform's `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`.
    pub fn with_managed_identity(
        account: &str,
        identity_endpoint: &str,
        identity_header: &str,
        endpoint: Option<&str>,
        container: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<AzureStorage, StorageError> {
        AzureStorage::with_signer(
            account,
            Signer::Identity(Box::new(ManagedIdentity {
                endpoint: identity_endpoint.to_string(),
                header: identity_header.to_string(),
                cached: tokio::sync::Mutex::new(None),
            })),
            endpoint,
            container,
            prefix,
            ttl,
        )
    }

    /// Replaces the HTTP client (one trusting another root: an emulator's
    /// self-signed certificate, a private CA).
    pub fn with_client(mut self, client: reqwest::Client) -> AzureStorage {
        self.client = client;
        self
    }

    fn with_signer(
        account: &str,
        signer: Signer,
        endpoint: Option<&str>,
        container: &str,
        prefix: &str,
        ttl: Duration,
    ) -> Result<AzureStorage, StorageError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .map_err(|e| StorageError::Config(format!("failed to build the Azure client: {e}")))?;
        Ok(AzureStorage {
            client,
            account: account.to_string(),
            signer,
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

    /// Reads `AZURE_STORAGE_ACCOUNT`, then `AZURE_STORAGE_KEY` or, without
    /// one, `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`, and the storage settings.
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
        let Some(account) = var("AZURE_STORAGE_ACCOUNT") else {
            return Err(StorageError::Config(
                "`KIT_STORAGE=azure` needs `AZURE_STORAGE_ACCOUNT` (the storage account's name)"
                    .into(),
            ));
        };
        if let Some(key) = var("AZURE_STORAGE_KEY") {
            return AzureStorage::new(
                &account,
                &key,
                settings.endpoint.as_deref(),
                container,
                &settings.prefix,
                settings.presign_ttl,
            );
        }
        let (Some(identity_endpoint), Some(identity_header)) =
            (var("IDENTITY_ENDPOINT"), var("IDENTITY_HEADER"))
        else {
            return Err(StorageError::Config(format!(
                "`KIT_STORAGE=azure` without `AZURE_STORAGE_KEY` signs with the app's managed identity, and `IDENTITY_ENDPOINT`/`IDENTITY_HEADER` are not set: turn on the app's system identity (`az functionapp identity assign`, which `deploy-kit up` does) and grant it `{STORAGE_ROLE}` on the account, or set `AZURE_STORAGE_KEY`"
            )));
        };
        AzureStorage::with_managed_identity(
            &account,
            &identity_endpoint,
            &identity_header,
            settings.endpoint.as_deref(),
            container,
            &settings.prefix,
            settings.presign_ttl,
        )
    }

    /// A token for `https://storage.azure.com/` from the managed identity endpoint.
    async fn identity_token(&self, identity: &ManagedIdentity) -> Result<String, StorageError> {
        let failed = |message: String| StorageError::Denied {
            backend: BACKEND,
            message: format!(
                "no managed identity token from `IDENTITY_ENDPOINT` (`{}`): {message}",
                identity.endpoint
            ),
        };
        let response = self
            .client
            .get(&identity.endpoint)
            .query(&[
                ("resource", STORAGE_RESOURCE),
                ("api-version", IDENTITY_API_VERSION),
            ])
            .header("X-IDENTITY-HEADER", &identity.header)
            .send()
            .await
            .map_err(|e| StorageError::Unreachable {
                backend: BACKEND,
                message: format!(
                    "the managed identity endpoint `IDENTITY_ENDPOINT` (`{}`) does not answer: {}",
                    identity.endpoint,
                    e.without_url()
                ),
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(failed(format!(
                "HTTP {status}: {}",
                super::signing::excerpt(&body)
            )));
        }
        let document: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| failed(format!("the answer is not JSON: {e}")))?;
        document["access_token"]
            .as_str()
            .filter(|token| !token.is_empty())
            .map(str::to_string)
            .ok_or_else(|| failed("the answer has no `access_token`".into()))
    }

    /// Get User Delegation Key with the identity's token, valid from a
    /// little before now (clock skew) until `expiry`.
    async fn request_delegation_key(
        &self,
        identity: &ManagedIdentity,
        expiry: SystemTime,
    ) -> Result<UserDelegationKey, StorageError> {
        let token = self.identity_token(identity).await?;
        let start = Utc::from_system_time(SystemTime::now() - Duration::from_secs(300)).iso8601();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><KeyInfo><Start>{start}</Start><Expiry>{}</Expiry></KeyInfo>",
            Utc::from_system_time(expiry).iso8601()
        );
        let response = self
            .client
            .post(format!("{}/", self.endpoint))
            .query(&[("restype", "service"), ("comp", "userdelegationkey")])
            .bearer_auth(token)
            .header("x-ms-version", SAS_VERSION)
            .header("content-type", "application/xml")
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(BACKEND, e))?;
        let status = response.status();
        if status.as_u16() == 403 {
            let excerpt = super::signing::body_excerpt(response).await;
            return Err(StorageError::Denied {
                backend: BACKEND,
                message: format!(
                    "storage account `{}` refused a user delegation key to the managed identity (HTTP 403): the identity needs the `{STORAGE_ROLE}` role on the account (`az role assignment create --role \"{STORAGE_ROLE}\" --assignee-object-id <principal> --scope <account id>`, which `deploy-kit up` runs): {excerpt}",
                    self.account
                ),
            });
        }
        if !status.is_success() {
            return Err(refused(BACKEND, "requesting a user delegation key", response).await);
        }
        let text = response.text().await.map_err(|e| unreachable(BACKEND, e))?;
        UserDelegationKey::parse(&text)
    }

    /// The cached user delegation key and its expiry, or a new one when the
    /// cached key would expire before a URL valid for `ttl` does.
    async fn delegation_key(
        &self,
        identity: &ManagedIdentity,
        ttl: Duration,
    ) -> Result<(UserDelegationKey, SystemTime), StorageError> {
        let mut cached = identity.cached.lock().await;
        let now = SystemTime::now();
        let margin = Duration::from_secs(60);
        if let Some((key, expires_at)) = cached.as_ref()
            && *expires_at > now + ttl + margin
        {
            return Ok((key.clone(), *expires_at));
        }
        // Long enough to serve many URLs, at most what Azure issues.
        let lifetime = (ttl + margin + Duration::from_secs(3600))
            .max(Duration::from_secs(6 * 3600))
            .min(MAX_KEY_LIFETIME);
        let expires_at = now + lifetime;
        let key = self.request_delegation_key(identity, expires_at).await?;
        *cached = Some((key.clone(), expires_at));
        Ok((key, expires_at))
    }

    /// A SAS URL for blob `key` with `permissions`, valid for `ttl` from
    /// now: a service SAS with the account key, else a user delegation SAS
    /// (capped at the delegation key's expiry, at most 7 days).
    pub async fn presign(
        &self,
        permissions: &str,
        key: &str,
        ttl: Duration,
    ) -> Result<(String, SystemTime), StorageError> {
        let mut expires_at = SystemTime::now() + ttl;
        let resource = format!("/blob/{}/{}/{key}", self.account, self.container);
        let token = match &self.signer {
            Signer::AccountKey(account_key) => {
                let expiry = Utc::from_system_time(expires_at).iso8601();
                ServiceSas {
                    permissions,
                    expiry: &expiry,
                    canonicalized_resource: &resource,
                    version: SAS_VERSION,
                    resource: "b",
                    ..ServiceSas::default()
                }
                .token(account_key)
            }
            Signer::Identity(identity) => {
                let (delegation, key_expiry) = self.delegation_key(identity, ttl).await?;
                expires_at = expires_at.min(key_expiry);
                let expiry = Utc::from_system_time(expires_at).iso8601();
                UserDelegationSas::blob(permissions, &expiry, &resource, &delegation).token()?
            }
        };
        Ok((
            format!(
                "{}/{}/{}?{token}",
                self.endpoint,
                percent_encode(&self.container, false),
                percent_encode(key, true)
            ),
            expires_at,
        ))
    }

    async fn put_blob(
        &self,
        key: &str,
        bytes: Bytes,
        content_encoding: Option<&str>,
    ) -> Result<(), StorageError> {
        // The write SAS only has to outlive this request.
        let (url, _) = self
            .presign("cw", key, Duration::from_secs(15 * 60))
            .await?;
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
            Ok(self.presign("r", &key, self.ttl).await?.0)
        })
    }

    fn upload_urls(&self, count: usize) -> BoxFuture<'_, Result<Vec<UploadUrl>, StorageError>> {
        Box::pin(async move {
            let mut urls = Vec::with_capacity(count);
            for _ in 0..count {
                let key = new_key(&self.prefix);
                let (upload_url, expires_at) = self.presign("cw", &key, self.ttl).await?;
                let (download_url, _) = self.presign("r", &key, self.ttl).await?;
                urls.push(UploadUrl {
                    upload_url,
                    download_url,
                    expires_at,
                });
            }
            Ok(urls)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn presigned_urls_carry_the_sas_fields() {
        let storage = AzureStorage::new(
            "devstoreaccount1",
            "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
            Some("http://127.0.0.1:10000/devstoreaccount1/"),
            "kit",
            "vgi-rpc/",
            Duration::from_secs(60),
        )
        .unwrap();
        let (url, _) = storage
            .presign("r", "vgi-rpc/a.arrow", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            url.starts_with(
                "http://127.0.0.1:10000/devstoreaccount1/kit/vgi-rpc/a.arrow?sv=2022-11-02&se="
            ),
            "{url}"
        );
        assert!(url.contains("&sr=b&sp=r&sig="), "{url}");
    }

    fn key() -> UserDelegationKey {
        UserDelegationKey {
            signed_oid: "11111111-1111-1111-1111-111111111111".into(),
            signed_tid: "22222222-2222-2222-2222-222222222222".into(),
            signed_start: "2026-01-01T00:00:00Z".into(),
            signed_expiry: "2026-01-02T00:00:00Z".into(),
            signed_service: "b".into(),
            signed_version: "2022-11-02".into(),
            value: "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==".into(),
        }
    }

    /// "Create a user delegation SAS", version 2020-12-06 and later:
    /// signedPermissions, signedStart, signedExpiry, canonicalizedResource,
    /// signedKeyObjectId, signedKeyTenantId, signedKeyStart, signedKeyExpiry,
    /// signedKeyService, signedKeyVersion, signedAuthorizedUserObjectId,
    /// signedUnauthorizedUserObjectId, signedCorrelationId, signedIP,
    /// signedProtocol, signedVersion, signedResource, signedSnapshotTime,
    /// signedEncryptionScope, rscc, rscd, rsce, rscl, rsct; one per line.
    #[test]
    fn user_delegation_string_to_sign_follows_the_documented_order() {
        let key = key();
        let mut sas = UserDelegationSas::blob(
            "rw",
            "2026-01-01T12:00:00Z",
            "/blob/acct/kit/vgi-rpc/a.arrow",
            &key,
        );
        sas.start = Some("2026-01-01T11:00:00Z");
        sas.authorized_object_id = Some("saoid");
        sas.unauthorized_object_id = Some("suoid");
        sas.correlation_id = Some("scid");
        sas.ip = Some("10.0.0.1");
        sas.protocol = Some("https");
        sas.snapshot_time = Some("snapshot");
        sas.encryption_scope = Some("scope");
        sas.cache_control = Some("rscc");
        sas.content_disposition = Some("rscd");
        sas.content_encoding = Some("rsce");
        sas.content_language = Some("rscl");
        sas.content_type = Some("rsct");
        assert_eq!(
            sas.string_to_sign(),
            "rw\n2026-01-01T11:00:00Z\n2026-01-01T12:00:00Z\n/blob/acct/kit/vgi-rpc/a.arrow\n\
             11111111-1111-1111-1111-111111111111\n22222222-2222-2222-2222-222222222222\n\
             2026-01-01T00:00:00Z\n2026-01-02T00:00:00Z\nb\n2022-11-02\n\
             saoid\nsuoid\nscid\n10.0.0.1\nhttps\n2022-11-02\nb\nsnapshot\nscope\n\
             rscc\nrscd\nrsce\nrscl\nrsct"
        );
        // The minimal blob SAS: the optional fields empty, still 24 lines.
        let plain = UserDelegationSas::blob("r", "2026-01-01T12:00:00Z", "/blob/a/c/k", &key);
        assert_eq!(plain.string_to_sign().split('\n').count(), 24);
        let token = plain.token().unwrap();
        assert!(
            token.starts_with("sv=2022-11-02&se=2026-01-01T12%3A00%3A00Z&sr=b&sp=r&skoid=11111111-1111-1111-1111-111111111111&sktid=22222222-2222-2222-2222-222222222222&skt=2026-01-01T00%3A00%3A00Z&ske=2026-01-02T00%3A00%3A00Z&sks=b&skv=2022-11-02&sig="),
            "{token}"
        );
        let signature = sign(
            &base64::engine::general_purpose::STANDARD
                .decode(&key.value)
                .unwrap(),
            &plain.string_to_sign(),
        );
        assert!(
            token.ends_with(&percent_encode(&signature, false)),
            "{token}"
        );
    }

    #[test]
    fn the_delegation_key_is_read_from_its_xml() {
        let xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?><UserDelegationKey><SignedOid>11111111-1111-1111-1111-111111111111</SignedOid><SignedTid>22222222-2222-2222-2222-222222222222</SignedTid><SignedStart>2026-01-01T00:00:00Z</SignedStart><SignedExpiry>2026-01-02T00:00:00Z</SignedExpiry><SignedService>b</SignedService><SignedVersion>2022-11-02</SignedVersion><Value>Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==</Value></UserDelegationKey>";
        assert_eq!(UserDelegationKey::parse(xml).unwrap(), key());
        let error = UserDelegationKey::parse("<UserDelegationKey/>").unwrap_err();
        assert!(error.to_string().contains("`<SignedOid>`"), "{error}");
    }

    fn settings() -> StorageSettings {
        let mut settings = StorageSettings::local("unused", "http://unused");
        settings.bucket = Some("kit".into());
        settings
    }

    #[test]
    fn without_a_key_or_an_identity_endpoint_the_error_names_both() {
        let env: std::collections::HashMap<String, String> =
            [("AZURE_STORAGE_ACCOUNT".to_string(), "acct".to_string())].into();
        let error = AzureStorage::from_env(&settings(), &env).err().unwrap();
        let text = error.to_string();
        assert!(text.contains("`IDENTITY_ENDPOINT`"), "{text}");
        assert!(text.contains("`AZURE_STORAGE_KEY`"), "{text}");
        assert!(text.contains("Storage Blob Data Contributor"), "{text}");
    }

    #[tokio::test]
    async fn an_identity_endpoint_that_does_not_answer_is_named() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let env: std::collections::HashMap<String, String> = [
            ("AZURE_STORAGE_ACCOUNT", "acct"),
            (
                "IDENTITY_ENDPOINT",
                &*format!("http://127.0.0.1:{port}/msi/token"),
            ),
            ("IDENTITY_HEADER", "secret-header"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let storage = AzureStorage::from_env(&settings(), &env).unwrap();
        let error = storage
            .presign("r", "k", Duration::from_secs(60))
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("the managed identity endpoint `IDENTITY_ENDPOINT`"),
            "{text}"
        );
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("secret-header"), "{text}");
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
