//! The AWS native engine for `aws-lambda-function-url` targets: an S3 bucket
//! with lifecycle and CORS, the signing key in Secrets Manager, an IAM role,
//! the Lambda function running the service binary, and its Function URL.
//!
//! What a target needs ([`desired`]) is computed here from the config alone
//! and compiles without the SDKs, so `plan` works in any build; making it
//! ([`apply::AwsEngine`]) needs the cargo feature `aws`.
//!
//! The service reads its key from `VGI_SIGNING_KEY`, not from Secrets
//! Manager, so `up` reads the secret at deploy time and sets that variable on
//! the function (Lambda encrypts environment variables at rest). The state
//! and the plan name the secret, never its value.

#[cfg(feature = "aws")]
pub mod apply;
#[cfg(feature = "aws")]
pub mod bucket;
#[cfg(feature = "aws")]
pub mod clients;

use std::collections::BTreeMap;

use kit_checks::facts::StorageProvider;
use kit_checks::platform::Platform;

use super::{Resource, kind, setting};
use crate::CommandError;
use crate::config::{DeployConfig, KeySourceKind, TargetConfig};

/// The Lambda runtime for a custom `bootstrap`.
pub const RUNTIME: &str = "provided.al2023";
/// The inline policy `up` puts on the role.
pub const POLICY_NAME: &str = "deploy-kit";
/// Statement id of the public Function URL permission.
pub const URL_PERMISSION_ID: &str = "deploy-kit-function-url";
/// Memory of the function, MB: enough for Arrow batches of tens of MB.
pub const MEMORY_MB: i32 = 1024;
/// Lambda's longest timeout.
pub const MAX_TIMEOUT_SECONDS: u64 = 900;
/// Bytes of randomness in a generated signing key.
pub const KEY_BYTES: usize = 32;
/// Rule ids of the lifecycle rules `up` manages; other rules are kept.
pub const EXPIRE_RULE_ID: &str = "deploy-kit-expire";
pub const ABORT_MULTIPART_RULE_ID: &str = "deploy-kit-abort-multipart";
/// The alias every `up` moves to the version it publishes; the Function URL
/// points at it, so `rollback` is moving it back.
pub const ALIAS: &str = "live";
/// The variable the function's key goes in (a setting shows the secret's name).
pub const KEY_VARIABLE: &str = "VGI_SIGNING_KEY";
/// The keys that verify but no longer sign (comma-separated), as rotation writes them.
pub const PREVIOUS_KEY_VARIABLE: &str = "VGI_SIGNING_KEY_PREVIOUS";

/// Lambda's `bootstrap` for the service binary `binary`: the custom runtime
/// runs it without arguments, and the binary needs its `lambda` subcommand.
pub fn bootstrap(binary: &str) -> String {
    format!("#!/bin/sh\nexec \"${{LAMBDA_TASK_ROOT:-.}}/{binary}\" lambda\n")
}

/// Names and settings `up` works from, resolved once from the config.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    pub target: String,
    pub region: String,
    /// `<service>-<environment>`: role and function.
    pub function_name: String,
    pub role_name: String,
    pub secret_name: String,
    pub bucket: Option<BucketSettings>,
    pub public: bool,
    pub timeout_seconds: u64,
    /// The service's environment except the keys: the one settings model
    /// every renderer uses ([`crate::render::service_environment`]).
    pub environment: BTreeMap<String, String>,
    /// `auth.api_keys` (`aws:NAME`): the Secrets Manager secret whose value
    /// becomes `KIT_API_KEYS` in the function's environment (Lambda takes
    /// no files), read at `up`, never stored in the state.
    pub api_keys_secret: Option<String>,
    /// Packages bigger than this go through [`artifact_bucket`] instead of
    /// the request ([`crate::build::lambda::inline_limit`]).
    pub inline_limit_bytes: u64,
}

/// The bucket deploy-kit keeps Lambda packages too big to upload inline
/// in, one per account and region (as SAM and CDK keep theirs): packages
/// are content-addressed ([`artifact_key`]), so services share it and
/// `down` keeps it.
pub fn artifact_bucket(account: &str, region: &str) -> String {
    format!("deploy-kit-artifacts-{account}-{region}")
}

/// A package's key in [`artifact_bucket`]: its hex SHA-256, so an upload
/// already there is skipped.
pub fn artifact_key(sha256_hex: &str) -> String {
    format!("lambda/{sha256_hex}.zip")
}

#[derive(Debug, Clone)]
pub struct BucketSettings {
    pub name: String,
    pub prefix: String,
    pub expiration_days: Option<u32>,
    pub abort_multipart_days: Option<u32>,
    pub cors_origins: Vec<String>,
}

/// True for the platforms this engine provisions.
pub fn handles(platform: Platform) -> bool {
    matches!(
        platform,
        Platform::AwsLambdaFunctionUrl | Platform::AwsLambdaApiGateway
    )
}

impl AwsSettings {
    /// `env` supplies `AWS_REGION`/`AWS_DEFAULT_REGION` when the target names no region.
    pub fn resolve(
        config: &DeployConfig,
        target_name: &str,
        target: &TargetConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<AwsSettings, CommandError> {
        if target.platform == Platform::AwsLambdaApiGateway {
            return Err(CommandError::new(
                format!(
                    "target `{target_name}`: the native engine provisions Lambda Function URLs; API Gateway is not provisioned yet"
                ),
                format!(
                    "set `platform: aws-lambda-function-url` for target `{target_name}`, or `engine: pulumi` to deploy the rendered Pulumi program"
                ),
                2,
            ));
        }
        let region = target
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .filter(|r| !r.is_empty())
            .ok_or_else(|| {
                CommandError::new(
                    format!("target `{target_name}` has no AWS region"),
                    format!("set `region: us-east-1` under `targets.{target_name}`, or export `AWS_REGION`"),
                    2,
                )
            })?;
        if let Some(rate) = &config.rate_limit {
            rate.store(target.platform).map_err(|(message, hint)| {
                CommandError::new(format!("target `{target_name}`: {message}"), hint, 2)
            })?;
        }
        let function_name = format!("{}-{}", config.service.name, config.service.environment);
        let secret_name = match (&config.signing_key.source, &config.signing_key.secret) {
            (KeySourceKind::Secret, Some(reference)) => match reference.strip_prefix("aws:") {
                Some(name) => name.to_string(),
                None => {
                    return Err(CommandError::new(
                        format!("`signing_key.secret: {reference}` is not an AWS secret"),
                        format!(
                            "use `signing_key.secret: aws:{}/{}/signing-key` (the name `up` creates in Secrets Manager)",
                            config.service.name, config.service.environment
                        ),
                        2,
                    ));
                }
            },
            _ => format!(
                "{}/{}/signing-key",
                config.service.name, config.service.environment
            ),
        };
        let bucket = match &config.storage {
            None => None,
            Some(storage) if storage.provider == StorageProvider::S3 => Some(BucketSettings {
                name: storage.bucket.clone(),
                prefix: storage.prefix.clone(),
                expiration_days: storage.expiry_days,
                abort_multipart_days: storage.abort_multipart_days,
                cors_origins: storage.cors_origins.clone(),
            }),
            Some(storage) => {
                return Err(CommandError::new(
                    format!(
                        "target `{target_name}` runs on AWS but `storage.provider` is `{}`",
                        provider_name(storage.provider)
                    ),
                    "set `storage.provider: s3`, or remove `storage:` to deploy without external storage",
                    2,
                ));
            }
        };
        let timeout_seconds = config
            .limits
            .request_timeout_seconds
            .clamp(1, MAX_TIMEOUT_SECONDS);
        let api_keys_secret = match &config.auth.api_keys {
            None => None,
            Some(reference) => Some(
                reference
                    .strip_prefix("aws:")
                    .filter(|name| !name.is_empty())
                    .ok_or_else(|| {
                        CommandError::new(
                            format!("`auth.api_keys: {reference}` is not an AWS secret"),
                            format!(
                                "use `auth.api_keys: aws:{}/{}/api-keys`, a Secrets Manager secret holding one `name=key` per line",
                                config.service.name, config.service.environment
                            ),
                            2,
                        )
                    })?
                    .to_string(),
            ),
        };
        let inline_limit_bytes = crate::build::lambda::inline_limit(env).map_err(|message| {
            CommandError::new(
                message,
                format!(
                    "unset `{}` (Lambda's own limit applies), or lower it",
                    crate::build::lambda::INLINE_LIMIT_VARIABLE
                ),
                2,
            )
        })?;
        let mut environment = service_environment(config, target_name);
        if !environment.contains_key("KIT_STORAGE_REGION") && config.storage.is_some() {
            // The region came from the environment, not the target.
            environment.insert("KIT_STORAGE_REGION".into(), region.clone());
        }
        Ok(AwsSettings {
            target: target_name.to_string(),
            environment,
            api_keys_secret,
            region,
            role_name: function_name.clone(),
            function_name,
            secret_name,
            bucket,
            public: target.public,
            timeout_seconds,
            inline_limit_bytes,
        })
    }

    /// The resources in creation (dependency) order.
    pub fn desired(&self, code_sha256: Option<&str>) -> Vec<Resource> {
        let mut resources = Vec::new();
        if let Some(bucket) = &self.bucket {
            let mut resource = Resource::new(kind::BUCKET, &bucket.name)
                .with("region", &self.region)
                .with(setting::LIFECYCLE_PREFIX, &bucket.prefix);
            if let Some(days) = bucket.expiration_days {
                resource = resource.with(setting::LIFECYCLE_EXPIRATION_DAYS, days.to_string());
            }
            if let Some(days) = bucket.abort_multipart_days {
                resource = resource.with(setting::LIFECYCLE_ABORT_MULTIPART_DAYS, days.to_string());
            }
            if !bucket.cors_origins.is_empty() {
                resource = resource.with(setting::CORS_ORIGINS, bucket.cors_origins.join(","));
            }
            resources.push(resource);
        }
        resources.push(Resource::new(kind::SECRET, &self.secret_name).with(
            "value",
            format!("{KEY_BYTES} random bytes, hex (made once, never overwritten)"),
        ));
        let mut role = Resource::new(kind::ROLE, &self.role_name)
            .with("trust", "lambda.amazonaws.com")
            .with("policy.secret", &self.secret_name);
        if let Some(bucket) = &self.bucket {
            role = role.with(
                "policy.objects",
                format!("{}/{}*", bucket.name, bucket.prefix),
            );
        }
        resources.push(role);
        let mut function = Resource::new(kind::FUNCTION, &self.function_name)
            .with("runtime", RUNTIME)
            .with("handler", "bootstrap")
            .with("memory_mb", MEMORY_MB.to_string())
            .with("timeout_seconds", self.timeout_seconds.to_string())
            .with("role", &self.role_name)
            .with(
                format!("env.{KEY_VARIABLE}").as_str(),
                format!("(from secret `{}`)", self.secret_name),
            );
        for (name, value) in &self.environment {
            function = function.with(&format!("env.{name}"), value);
        }
        if let Some(hash) = code_sha256 {
            function = function.with("code.sha256", hash);
        }
        resources.push(function);
        resources.push(
            Resource::new(kind::ENDPOINT, &self.function_name)
                .with("auth", if self.public { "NONE" } else { "AWS_IAM" }),
        );
        resources
    }
}

fn provider_name(provider: StorageProvider) -> &'static str {
    match provider {
        StorageProvider::S3 => "s3",
        StorageProvider::Gcs => "gcs",
        StorageProvider::R2 => "r2",
        StorageProvider::S3Compatible => "s3-compatible",
    }
}

/// The service's variables (docs/configuration.md) from the config, except
/// the keys: the settings every renderer and engine share, as a map.
pub fn service_environment(config: &DeployConfig, target_name: &str) -> BTreeMap<String, String> {
    crate::render::service_environment(config, target_name)
        .map(|(env, _)| env.into_iter().map(|v| (v.name, v.value)).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_bootstrap_runs_the_configured_binary() {
        assert_eq!(
            bootstrap("acme"),
            "#!/bin/sh\nexec \"${LAMBDA_TASK_ROOT:-.}/acme\" lambda\n"
        );
    }

    const CONFIG: &str = "version: 1
service: {name: vgi, environment: test}
targets:
  lambda: {platform: aws-lambda-function-url, region: eu-west-1, public: true}
  gateway: {platform: aws-lambda-api-gateway, region: eu-west-1}
storage:
  provider: s3
  bucket: vgi-data
  prefix: vgi-rpc/
  expiry_days: 1
  abort_multipart_days: 1
  credential: assumed-role
  session_seconds: 3600
  cors_origins: [https://app.example.com]
";

    fn settings(target: &str) -> Result<AwsSettings, CommandError> {
        let config = DeployConfig::parse(CONFIG, Path::new("deploy-kit.yaml")).unwrap();
        let (name, target) = config.target(Some(target)).unwrap();
        AwsSettings::resolve(&config, name, target, &|_| None)
    }

    #[test]
    fn desired_resources_in_dependency_order_with_kit_variables() {
        let settings = settings("lambda").unwrap();
        let desired = settings.desired(Some("abc="));
        let addresses: Vec<String> = desired.iter().map(Resource::address).collect();
        assert_eq!(
            addresses,
            [
                "bucket/vgi-data",
                "secret/vgi/test/signing-key",
                "role/vgi-test",
                "function/vgi-test",
                "endpoint/vgi-test"
            ]
        );
        let function = &desired[3].settings;
        assert_eq!(function["env.KIT_STORAGE_BUCKET"], "vgi-data");
        assert_eq!(function["env.KIT_STORAGE_REGION"], "eu-west-1");
        assert_eq!(
            function["env.VGI_SIGNING_KEY"],
            "(from secret `vgi/test/signing-key`)"
        );
        assert_eq!(desired[0].settings[setting::LIFECYCLE_PREFIX], "vgi-rpc/");
        assert_eq!(desired[4].settings["auth"], "NONE");
    }

    #[test]
    fn api_gateway_and_missing_region_are_clear_errors() {
        let error = settings("gateway").unwrap_err();
        assert!(error.hint.contains("engine: pulumi"), "{}", error.hint);
        let config = DeployConfig::parse(
            "version: 1\ntargets:\n  l: {platform: aws-lambda-function-url}\n",
            Path::new("deploy-kit.yaml"),
        )
        .unwrap();
        let (name, target) = config.target(None).unwrap();
        let error = AwsSettings::resolve(&config, name, target, &|_| None).unwrap_err();
        assert!(error.hint.contains("AWS_REGION"), "{}", error.hint);
        let region = AwsSettings::resolve(&config, name, target, &|v| {
            (v == "AWS_REGION").then(|| "us-east-1".to_string())
        })
        .unwrap();
        assert_eq!(region.region, "us-east-1");
        assert!(region.bucket.is_none());
    }
}
