//! The S3 backend (cargo feature `s3`): AWS S3 and S3-compatible stores
//! (SeaweedFS, MinIO, Cloudflare R2) through `aws-sdk-s3`.
//!
//! Results go up with one PutObject (the object carries its
//! `Content-Encoding`) and come back to clients as pre-signed GET URLs;
//! the upload-URL flow hands out pre-signed PUT + GET pairs. Downloads never
//! pass through here: clients, and our own fetcher, read the URLs directly.
//!
//! Why it looks the way it does:
//! - `storage::open` is synchronous, but loading the SDK's credential chain is
//!   not, so the client is built on first use. Everything that can be judged
//!   without the network (the region) is judged at `new`, before a port binds.
//! - Request checksums are `WhenRequired`: newer SDKs otherwise add CRC32
//!   trailers that several S3-compatible stores reject, and bake the checksum
//!   of an *empty* body into pre-signed PUT URLs. Integrity is end to end
//!   anyway: the pointer carries the sha256 of the raw IPC bytes.
//! - With an endpoint set, addressing is path style (`{endpoint}/{bucket}/{key}`),
//!   which every S3-compatible store understands and needs no wildcard DNS.
//! - TLS is rustls on ring through `aws-smithy-http-client`, the same crypto
//!   reqwest already brings, rather than the SDK's default aws-lc build.

use std::time::{Duration, SystemTime};

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
    SharedHttpClient,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tokio::sync::OnceCell;

use super::{ExternalStorage, StorageError, StorageSettings, UploadUrl, new_key};
use crate::rpc::BoxFuture;

/// The SDK, for callers (tests, tools) that need a plain client with our settings.
pub use aws_sdk_s3 as sdk;

const BACKEND: &str = "s3";
/// Region used with a custom endpoint when none is configured: S3-compatible
/// stores accept any region in the signature, and `us-east-1` is their default.
const ENDPOINT_DEFAULT_REGION: &str = "us-east-1";

pub struct S3Storage {
    settings: ClientSettings,
    client: OnceCell<aws_sdk_s3::Client>,
    bucket: String,
    prefix: String,
    ttl: Duration,
}

/// What the client is built from (kept so the client can be built lazily).
#[derive(Debug, Clone)]
struct ClientSettings {
    region: Region,
    endpoint: Option<String>,
}

impl S3Storage {
    /// Checks the settings; the client (and its credential chain: environment,
    /// profile, web identity, ECS, IMDS) loads on first use.
    pub fn new(settings: &StorageSettings) -> Result<S3Storage, StorageError> {
        let client_settings = ClientSettings::resolve(settings)?;
        Ok(S3Storage {
            settings: client_settings,
            client: OnceCell::new(),
            bucket: bucket(settings)?,
            prefix: settings.prefix.clone(),
            ttl: settings.presign_ttl,
        })
    }

    /// A backend over a client built elsewhere (for example with explicit
    /// credentials from [`client_builder`]).
    pub fn with_client(
        client: aws_sdk_s3::Client,
        settings: &StorageSettings,
    ) -> Result<S3Storage, StorageError> {
        Ok(S3Storage {
            settings: ClientSettings::resolve(settings)?,
            client: OnceCell::new_with(Some(client)),
            bucket: bucket(settings)?,
            prefix: settings.prefix.clone(),
            ttl: settings.presign_ttl,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client, built on first use.
    pub async fn client(&self) -> &aws_sdk_s3::Client {
        self.client
            .get_or_init(|| async {
                let shared = aws_config::defaults(BehaviorVersion::latest())
                    .region(self.settings.region.clone())
                    .http_client(http_client())
                    .load()
                    .await;
                let builder = aws_sdk_s3::config::Builder::from(&shared);
                aws_sdk_s3::Client::from_conf(self.settings.apply(builder).build())
            })
            .await
    }

    fn presigning(&self) -> Result<PresigningConfig, StorageError> {
        PresigningConfig::expires_in(self.ttl).map_err(|e| {
            StorageError::Config(format!(
                "presign TTL of {} s for bucket `{}`: {e}",
                self.ttl.as_secs(),
                self.bucket
            ))
        })
    }

    async fn presign_get(&self, key: &str) -> Result<String, StorageError> {
        let presigned = self
            .client()
            .await
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| storage_error(&self.bucket, "signing a GET URL", e))?;
        Ok(presigned.uri().to_string())
    }

    async fn presign_put(&self, key: &str) -> Result<String, StorageError> {
        let presigned = self
            .client()
            .await
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(self.presigning()?)
            .await
            .map_err(|e| storage_error(&self.bucket, "signing a PUT URL", e))?;
        Ok(presigned.uri().to_string())
    }
}

/// A client config builder with everything of ours but credentials:
/// region, endpoint, path style, checksum policy, the rustls/ring HTTP client.
pub fn client_builder(
    settings: &StorageSettings,
) -> Result<aws_sdk_s3::config::Builder, StorageError> {
    let client_settings = ClientSettings::resolve(settings)?;
    let builder = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(client_settings.region.clone())
        .http_client(http_client());
    Ok(client_settings.apply(builder))
}

fn http_client() -> SharedHttpClient {
    use aws_smithy_http_client::tls;
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

fn bucket(settings: &StorageSettings) -> Result<String, StorageError> {
    settings
        .bucket
        .clone()
        .filter(|b| !b.trim().is_empty())
        .ok_or_else(|| StorageError::Config("`KIT_STORAGE=s3` needs `KIT_STORAGE_BUCKET`".into()))
}

impl ClientSettings {
    fn resolve(settings: &StorageSettings) -> Result<ClientSettings, StorageError> {
        let endpoint = settings.endpoint.clone().filter(|e| !e.trim().is_empty());
        let region = match (&settings.region, &endpoint) {
            (Some(region), _) => region.clone(),
            (None, Some(_)) => ENDPOINT_DEFAULT_REGION.to_string(),
            (None, None) => {
                return Err(StorageError::Config(
                    "`KIT_STORAGE=s3` needs a region: set `KIT_STORAGE_REGION` or `AWS_REGION`"
                        .into(),
                ));
            }
        };
        Ok(ClientSettings {
            region: Region::new(region),
            endpoint,
        })
    }

    fn apply(&self, builder: aws_sdk_s3::config::Builder) -> aws_sdk_s3::config::Builder {
        let builder = builder
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        match &self.endpoint {
            Some(endpoint) => builder.endpoint_url(endpoint).force_path_style(true),
            None => builder,
        }
    }
}

/// Maps an SDK error to the storage error kinds, naming the bucket. The full
/// SDK chain goes into the message (it is logged, never sent to clients).
fn storage_error<E>(bucket: &str, action: &str, error: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = DisplayErrorContext(&error).to_string();
    let status = error.raw_response().map(|r| r.status().as_u16());
    let code = error.code().unwrap_or_default().to_string();
    let message = format!("{action} in bucket `{bucket}`: {detail}");
    let denied_codes = [
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    ];
    match &error {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            if matches!(status, Some(401 | 403)) || denied_codes.contains(&code.as_str()) {
                StorageError::Denied {
                    backend: BACKEND,
                    message,
                }
            } else if code == "NoSuchBucket" {
                StorageError::Failed {
                    backend: BACKEND,
                    message: format!("bucket `{bucket}` does not exist ({action})"),
                }
            } else {
                StorageError::Failed {
                    backend: BACKEND,
                    message,
                }
            }
        }
        // Credential resolution fails before anything is sent.
        _ if detail.contains("credential") => StorageError::Denied {
            backend: BACKEND,
            message,
        },
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => StorageError::Unreachable {
            backend: BACKEND,
            message,
        },
        _ => StorageError::Failed {
            backend: BACKEND,
            message,
        },
    }
}

impl ExternalStorage for S3Storage {
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
            self.client()
                .await
                .put_object()
                .bucket(&self.bucket)
                .key(&key)
                .content_type(crate::wire::CONTENT_TYPE)
                .set_content_encoding(content_encoding.map(str::to_string))
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map_err(|e| storage_error(&self.bucket, "PutObject", e))?;
            self.presign_get(&key).await
        })
    }

    fn upload_urls(&self, count: usize) -> BoxFuture<'_, Result<Vec<UploadUrl>, StorageError>> {
        Box::pin(async move {
            let mut urls = Vec::with_capacity(count);
            for _ in 0..count {
                let key = new_key(&self.prefix);
                // The pair shares one expiry; compute it before signing so it never overstates.
                let expires_at = SystemTime::now() + self.ttl;
                urls.push(UploadUrl {
                    upload_url: self.presign_put(&key).await?,
                    download_url: self.presign_get(&key).await?,
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

    fn settings(region: Option<&str>, endpoint: Option<&str>) -> StorageSettings {
        let mut settings = StorageSettings::local("unused", "http://unused");
        settings.provider = super::super::settings::Provider::S3;
        settings.bucket = Some("kit".into());
        settings.region = region.map(str::to_string);
        settings.endpoint = endpoint.map(str::to_string);
        settings
    }

    #[test]
    fn region_is_required_without_an_endpoint() {
        let error = S3Storage::new(&settings(None, None)).err().unwrap();
        assert!(error.to_string().contains("KIT_STORAGE_REGION"), "{error}");
        assert!(S3Storage::new(&settings(Some("eu-west-1"), None)).is_ok());
        let with_endpoint = ClientSettings::resolve(&settings(None, Some("http://127.0.0.1:1")));
        assert_eq!(
            with_endpoint.unwrap().region.as_ref(),
            ENDPOINT_DEFAULT_REGION
        );
    }

    #[test]
    fn bucket_is_required() {
        let mut no_bucket = settings(Some("eu-west-1"), None);
        no_bucket.bucket = None;
        let error = S3Storage::new(&no_bucket).err().unwrap();
        assert!(error.to_string().contains("KIT_STORAGE_BUCKET"), "{error}");
    }
}
