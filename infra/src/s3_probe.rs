//! The S3 [`StorageProbe`] behind `doctor --online` (cargo feature `aws`):
//! HeadBucket, the bucket's lifecycle and CORS rules, and a put/get/delete
//! round trip, for `s3`, `r2` and `s3-compatible` storage. `up` reuses it to
//! read back what it set.
//!
//! The endpoint is `storage.endpoint` when set, else the SDK's own
//! (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or AWS itself).

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ExpirationStatus;
use kit_checks::facts::StorageProvider;
use kit_checks::probe::{CorsRule, LifecycleRule, StorageError, StorageProbe};

use crate::CommandError;
use crate::config::StorageConfig;
use crate::engine::aws::clients::{AwsClients, code, describe};

/// Region used for S3-compatible stores that ignore it.
const DEFAULT_REGION: &str = "us-east-1";

#[derive(Debug)]
pub struct S3StorageProbe {
    clients: AwsClients,
    bucket: String,
}

impl S3StorageProbe {
    /// A probe for `storage`, or `None` when its provider is not S3-like.
    /// `region` is the target's, falling back to `AWS_REGION`.
    pub fn for_storage(
        storage: &StorageConfig,
        region: Option<&str>,
    ) -> Option<Result<S3StorageProbe, CommandError>> {
        if storage.provider == StorageProvider::Gcs {
            return None;
        }
        let region = region
            .map(str::to_string)
            .or_else(|| std::env::var("AWS_REGION").ok())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| match storage.provider {
                StorageProvider::R2 => "auto".to_string(),
                _ => DEFAULT_REGION.to_string(),
            });
        Some(
            AwsClients::new(&region, storage.endpoint.as_deref()).map(|clients| S3StorageProbe {
                clients,
                bucket: storage.bucket.clone(),
            }),
        )
    }

    pub fn new(clients: AwsClients, bucket: &str) -> S3StorageProbe {
        S3StorageProbe {
            clients,
            bucket: bucket.to_string(),
        }
    }
}

/// Access and missing-bucket answers are the store's verdict; anything else
/// (connection refused, timeouts, 5xx) means the check could not run.
fn classify<E>(error: aws_sdk_s3::error::SdkError<E>) -> StorageError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = describe(&error);
    match &error {
        aws_sdk_s3::error::SdkError::ServiceError(service)
            if service.raw().status().as_u16() < 500 =>
        {
            StorageError::Rejected(text)
        }
        _ => StorageError::Unavailable(text),
    }
}

impl StorageProbe for S3StorageProbe {
    fn reach(&self) -> Result<(), StorageError> {
        let request = self.clients.s3.head_bucket().bucket(&self.bucket).send();
        match self.clients.runtime.block_on(request) {
            Ok(_) => Ok(()),
            Err(error) if error.as_service_error().is_some_and(|e| e.is_not_found()) => Err(
                StorageError::Rejected(format!("bucket `{}` does not exist", self.bucket)),
            ),
            Err(error) => Err(classify(error)),
        }
    }

    fn lifecycle_rules(&self) -> Result<Vec<LifecycleRule>, StorageError> {
        let request = self
            .clients
            .s3
            .get_bucket_lifecycle_configuration()
            .bucket(&self.bucket)
            .send();
        let output = match self.clients.runtime.block_on(request) {
            Ok(output) => output,
            Err(error) if code(&error) == Some("NoSuchLifecycleConfiguration") => {
                return Ok(Vec::new());
            }
            Err(error) => return Err(classify(error)),
        };
        Ok(output
            .rules()
            .iter()
            .map(|rule| {
                #[allow(deprecated)]
                let legacy_prefix = rule.prefix();
                let filter = rule.filter();
                let prefix = filter
                    .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
                    .or(legacy_prefix)
                    .unwrap_or_default();
                LifecycleRule {
                    prefix: prefix.to_string(),
                    enabled: rule.status() == &ExpirationStatus::Enabled,
                    expiration_days: rule
                        .expiration()
                        .and_then(|e| e.days())
                        .and_then(|d| u32::try_from(d).ok()),
                    abort_incomplete_multipart_days: rule
                        .abort_incomplete_multipart_upload()
                        .and_then(|a| a.days_after_initiation())
                        .and_then(|d| u32::try_from(d).ok()),
                }
            })
            .collect())
    }

    fn cors_rules(&self) -> Result<Vec<CorsRule>, StorageError> {
        let request = self
            .clients
            .s3
            .get_bucket_cors()
            .bucket(&self.bucket)
            .send();
        match self.clients.runtime.block_on(request) {
            Ok(output) => Ok(output
                .cors_rules()
                .iter()
                .map(|rule| CorsRule {
                    origins: rule.allowed_origins().to_vec(),
                    methods: rule
                        .allowed_methods()
                        .iter()
                        .map(|m| m.to_ascii_uppercase())
                        .collect(),
                })
                .collect()),
            Err(error) if code(&error) == Some("NoSuchCORSConfiguration") => Ok(Vec::new()),
            Err(error) => Err(classify(error)),
        }
    }

    fn put(&self, key: &str, body: &[u8]) -> Result<(), StorageError> {
        let request = self
            .clients
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(body.to_vec()))
            .send();
        self.clients
            .runtime
            .block_on(request)
            .map(|_| ())
            .map_err(classify)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let runtime = &self.clients.runtime;
        let request = self
            .clients
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        let output = runtime.block_on(request).map_err(classify)?;
        runtime
            .block_on(output.body.collect())
            .map(|data| data.into_bytes().to_vec())
            .map_err(|error| StorageError::Unavailable(format!("reading `{key}`: {error}")))
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let request = self
            .clients
            .s3
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send();
        self.clients
            .runtime
            .block_on(request)
            .map(|_| ())
            .map_err(classify)
    }
}
