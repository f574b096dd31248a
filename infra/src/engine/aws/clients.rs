//! SDK clients for the AWS engine and the S3 storage probe: one shared
//! config (region, credentials from the usual chain, rustls on ring), with
//! the endpoint overrides the SDK reads itself (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_S3`, ...). S3 behind an override (SeaweedFS, MinIO,
//! LocalStack) is addressed path style, as those stores expect.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls;

use crate::CommandError;

/// One blocking runtime and the shared SDK config.
#[derive(Debug)]
pub struct AwsClients {
    pub runtime: tokio::runtime::Runtime,
    pub shared: SdkConfig,
    pub s3: aws_sdk_s3::Client,
}

impl AwsClients {
    /// `s3_endpoint` overrides the S3 endpoint (`storage.endpoint`); else
    /// the SDK's own env overrides apply.
    pub fn new(region: &str, s3_endpoint: Option<&str>) -> Result<AwsClients, CommandError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| {
                CommandError::new(
                    format!("failed to start the AWS client runtime: {error}"),
                    "",
                    1,
                )
            })?;
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let shared = runtime.block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .region(Region::new(region.to_string()))
                .http_client(http_client)
                .load(),
        );
        let env_override = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()));
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = s3_endpoint {
            s3 = s3.endpoint_url(endpoint).force_path_style(true);
        } else if env_override {
            s3 = s3.force_path_style(true);
        }
        Ok(AwsClients {
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            runtime,
            shared,
        })
    }

    pub fn secrets(&self) -> aws_sdk_secretsmanager::Client {
        aws_sdk_secretsmanager::Client::new(&self.shared)
    }

    pub fn iam(&self) -> aws_sdk_iam::Client {
        aws_sdk_iam::Client::new(&self.shared)
    }

    pub fn lambda(&self) -> aws_sdk_lambda::Client {
        aws_sdk_lambda::Client::new(&self.shared)
    }

    pub fn ecr(&self) -> aws_sdk_ecr::Client {
        aws_sdk_ecr::Client::new(&self.shared)
    }

    pub fn sts(&self) -> aws_sdk_sts::Client {
        aws_sdk_sts::Client::new(&self.shared)
    }
}

/// An SDK error as one line: the service's code and message when it answered,
/// else the whole source chain (connection refused, no credentials).
pub fn describe<E>(error: &aws_sdk_s3::error::SdkError<E>) -> String
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    if let Some(service) = error.as_service_error() {
        let code = service.code().unwrap_or("error");
        return match service.message() {
            Some(message) => format!("{code}: {message}"),
            None => code.to_string(),
        };
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The service's error code, when it answered.
pub fn code<E>(error: &aws_sdk_s3::error::SdkError<E>) -> Option<&str>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    error.as_service_error().and_then(|e| e.code())
}
