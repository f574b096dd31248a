//! The native GCP engine for `cloud-run` and `cloud-functions` targets:
//! settings resolved from `deploy-kit.yaml`, and the desired resources
//! (no network, so `plan` works in any build). Applying them needs the `gcp`
//! feature ([`apply`]); without it `up` and `down` say how to rebuild.
//!
//! Resources, in creation order:
//! 1. the GCS bucket (`storage.provider: gcs`), with a `Delete` lifecycle rule
//!    (`age: expiry_days`, `matchesPrefix: [prefix]`), an
//!    `AbortIncompleteMultipartUpload` rule (`age: abort_multipart_days`) on
//!    the same prefix, and CORS for `storage.cors_origins`;
//! 2. the signing-key secret (`signing_key.source: secret` with a `gcp:`
//!    reference): created once with one generated version;
//! 3. the Cloud Run service (`cloud-run` only): the image, max instances,
//!    request timeout, env pointing at the bucket and the key secret, public
//!    when `public: true`. `cloud-functions` targets get 1 and 2 only: a
//!    function is deployed from source by `gcloud functions deploy`, which
//!    deploy-kit does not drive.

#[cfg(feature = "gcp")]
pub mod apply;

use kit_checks::facts::StorageProvider;
use kit_checks::platform::Platform;

use crate::CommandError;
use crate::config::{DeployConfig, KeySourceKind, TargetConfig};
use crate::engine::{Resource, kind, setting};

/// Bucket setting: the bucket's location (the target's region).
pub const LOCATION: &str = "location";
/// Bucket setting: the CORS methods deploy-kit allows.
pub const CORS_METHODS: &str = "cors.methods";
/// Secret setting: how it is replicated.
pub const REPLICATION: &str = "replication";
/// Service settings.
pub const IMAGE: &str = "image";
pub const MAX_INSTANCES: &str = "max_instances";
pub const TIMEOUT_SECONDS: &str = "timeout_seconds";
pub const PUBLIC: &str = "public";
pub const ENV_NAMES: &str = "env";

/// Methods the bucket's CORS entry allows: downloads, and uploads to vended URLs.
pub const CORS_METHOD_LIST: &[&str] = &["GET", "HEAD", "PUT"];
/// Response headers a browser may read from the bucket.
pub const CORS_RESPONSE_HEADERS: &[&str] = &["Content-Type", "Content-Encoding", "Content-Length"];
/// How long browsers cache the CORS preflight.
pub const CORS_MAX_AGE_SECONDS: u64 = 3600;
/// The label on everything deploy-kit creates; `down` deletes only buckets carrying it.
pub const MANAGED_BY: (&str, &str) = ("managed-by", "deploy-kit");

/// True for the platforms this engine provisions.
pub fn handles(platform: Platform) -> bool {
    matches!(platform, Platform::CloudRun | Platform::CloudFunctions)
}

/// The signing-key secret of a GCP target: a `gcp:projects/P/secrets/S` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSettings {
    pub project: String,
    pub secret: String,
}

impl SecretSettings {
    /// `projects/P/secrets/S`.
    pub fn resource(&self) -> String {
        format!("projects/{}/secrets/{}", self.project, self.secret)
    }
}

/// The storage half of a GCP target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSettings {
    pub bucket: String,
    pub prefix: String,
    /// `storage.endpoint` (where presigned URLs point), if set.
    pub endpoint: Option<String>,
    pub expiry_days: Option<u32>,
    pub abort_multipart_days: Option<u32>,
    pub cors_origins: Vec<String>,
    pub presign_ttl_seconds: u64,
}

/// Everything the GCP engine needs, resolved from the config.
#[derive(Debug, Clone)]
pub struct GcpSettings {
    pub target_name: String,
    pub platform: Platform,
    pub project: String,
    pub region: String,
    pub bucket: Option<BucketSettings>,
    pub secret: Option<SecretSettings>,
    /// The Cloud Run service name (`cloud-run` only).
    pub service: Option<String>,
    pub image: String,
    pub instances: u32,
    pub public: bool,
    pub timeout_seconds: u64,
    /// Plain env of the service (no secret values), from the settings model.
    pub service_env: Vec<(String, String)>,
    /// `auth.api_keys`: the Secret Manager secret the service reads as
    /// `KIT_API_KEYS` (a `secretKeyRef`, never a value in the service body).
    pub api_keys: Option<SecretSettings>,
}

fn invalid(target: &str, message: String, hint: String) -> CommandError {
    CommandError::new(format!("target `{target}`: {message}"), hint, 2)
}

impl GcpSettings {
    pub fn resolve(
        config: &DeployConfig,
        target_name: &str,
        target: &TargetConfig,
    ) -> Result<GcpSettings, CommandError> {
        let project = target.project.clone().ok_or_else(|| {
            invalid(
                target_name,
                format!("`{}` needs a GCP project", target.platform.name()),
                format!("add `project: MY-PROJECT` under `targets.{target_name}`"),
            )
        })?;
        let region = target.region.clone().ok_or_else(|| {
            invalid(
                target_name,
                format!("`{}` needs a region", target.platform.name()),
                format!("add `region: europe-west1` (or another) under `targets.{target_name}`"),
            )
        })?;
        let bucket = match &config.storage {
            Some(storage) if storage.provider == StorageProvider::Gcs => Some(BucketSettings {
                bucket: storage.bucket.clone(),
                prefix: storage.prefix.clone(),
                endpoint: storage.endpoint.clone(),
                expiry_days: storage.expiry_days,
                abort_multipart_days: storage.abort_multipart_days,
                cors_origins: storage.cors_origins.clone(),
                presign_ttl_seconds: storage.presign_ttl_seconds,
            }),
            _ => None,
        };
        let key = &config.signing_key;
        let secret = match (key.source, key.secret.as_deref()) {
            (KeySourceKind::Secret, Some(reference)) if reference.starts_with("gcp:") => {
                let (project, secret) = parse_secret_reference(reference).ok_or_else(|| {
                    invalid(
                        target_name,
                        format!("`signing_key.secret: {reference}` is not `gcp:projects/PROJECT/secrets/NAME`"),
                        "write it like `gcp:projects/my-project/secrets/vgi-signing-key`".into(),
                    )
                })?;
                Some(SecretSettings { project, secret })
            }
            (KeySourceKind::Secret, Some(reference)) => {
                return Err(invalid(
                    target_name,
                    format!("`signing_key.secret: {reference}` is not a Secret Manager reference"),
                    format!(
                        "use `gcp:projects/{project}/secrets/{}-signing-key` for a GCP target",
                        config.service.name
                    ),
                ));
            }
            _ => None,
        };
        let service = (target.platform == Platform::CloudRun)
            .then(|| format!("{}-{}", config.service.name, config.service.environment));
        if let Some(name) = &service
            && (name.len() > 49
                || !name.starts_with(|c: char| c.is_ascii_lowercase())
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
        {
            return Err(invalid(
                target_name,
                format!(
                    "Cloud Run service name `{name}` (`service.name`-`service.environment`) must be at most 49 lower-case letters, digits and `-`, starting with a letter"
                ),
                "shorten `service.name` or `service.environment`".into(),
            ));
        }
        if let Some(rate) = &config.rate_limit {
            rate.store(target.platform)
                .map_err(|(message, hint)| invalid(target_name, message, hint))?;
        }
        // The one settings model every renderer uses: auth, limits, rate
        // limit, CORS, storage, token TTL and mode.
        let service_env: Vec<(String, String)> =
            crate::render::service_environment(config, target_name)
                .map(|(env, _)| env.into_iter().map(|v| (v.name, v.value)).collect())
                .unwrap_or_default();
        let api_keys = match config.auth.api_keys.as_deref() {
            None => None,
            Some(reference) => {
                let (project, secret) = reference
                    .starts_with("gcp:")
                    .then(|| parse_secret_reference(reference))
                    .flatten()
                    .ok_or_else(|| {
                        invalid(
                            target_name,
                            format!("`auth.api_keys: {reference}` is not `gcp:projects/PROJECT/secrets/NAME`"),
                            format!(
                                "keep the keys in Secret Manager: `auth.api_keys: gcp:projects/{project}/secrets/{}-api-keys`",
                                config.service.name
                            ),
                        )
                    })?;
                Some(SecretSettings { project, secret })
            }
        };
        Ok(GcpSettings {
            target_name: target_name.to_string(),
            platform: target.platform,
            project,
            region,
            bucket,
            secret,
            service,
            image: config.service.image(),
            instances: target.instances,
            public: target.public,
            timeout_seconds: config.limits.request_timeout_seconds,
            service_env,
            api_keys,
        })
    }

    /// The desired resources, in creation order. Settings never carry a
    /// secret value: the key's only trace is the secret's name.
    pub fn desired(&self) -> Vec<Resource> {
        let mut resources = Vec::new();
        if let Some(bucket) = &self.bucket {
            let mut resource = Resource::new(kind::BUCKET, &bucket.bucket)
                .with(LOCATION, self.region.to_ascii_uppercase())
                .with(setting::LIFECYCLE_PREFIX, &bucket.prefix);
            if let Some(days) = bucket.expiry_days {
                resource = resource.with(setting::LIFECYCLE_EXPIRATION_DAYS, days.to_string());
            }
            if let Some(days) = bucket.abort_multipart_days {
                resource = resource.with(setting::LIFECYCLE_ABORT_MULTIPART_DAYS, days.to_string());
            }
            if !bucket.cors_origins.is_empty() {
                resource = resource
                    .with(setting::CORS_ORIGINS, bucket.cors_origins.join(","))
                    .with(CORS_METHODS, CORS_METHOD_LIST.join(","));
            }
            resources.push(resource);
        }
        if let Some(secret) = &self.secret {
            resources.push(
                Resource::new(kind::SECRET, secret.resource()).with(REPLICATION, "automatic"),
            );
        }
        if let Some(service) = &self.service {
            let mut env_names: Vec<&str> = self
                .service_env
                .iter()
                .map(|(name, _)| name.as_str())
                .collect();
            if self.secret.is_some() {
                env_names.push("VGI_SIGNING_KEY");
            }
            let mut resource = Resource::new(
                kind::FUNCTION,
                format!(
                    "projects/{}/locations/{}/services/{service}",
                    self.project, self.region
                ),
            )
            .with(IMAGE, &self.image)
            .with(MAX_INSTANCES, self.instances.to_string())
            .with(TIMEOUT_SECONDS, self.timeout_seconds.to_string())
            .with(PUBLIC, self.public.to_string())
            .with(ENV_NAMES, env_names.join(","));
            for (name, value) in &self.service_env {
                resource = resource.with(&format!("env.{name}"), value);
            }
            resources.push(resource);
        }
        resources
    }
}

/// `gcp:projects/P/secrets/S[/versions/V]` -> (P, S).
pub fn parse_secret_reference(reference: &str) -> Option<(String, String)> {
    let parts: Vec<&str> = reference.strip_prefix("gcp:")?.split('/').collect();
    match parts.as_slice() {
        ["projects", project, "secrets", secret, rest @ ..]
            if !project.is_empty()
                && !secret.is_empty()
                && (rest.is_empty() || (rest.len() == 2 && rest[0] == "versions")) =>
        {
            Some((project.to_string(), secret.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(yaml: &str) -> Result<GcpSettings, CommandError> {
        let config = DeployConfig::parse(yaml, std::path::Path::new("deploy-kit.yaml")).unwrap();
        let (name, target) = config.target(None).unwrap();
        GcpSettings::resolve(&config, name, target)
    }

    const EXAMPLE: &str = include_str!("../../../../deploy-kit.yaml");

    #[test]
    fn the_example_config_wants_bucket_secret_and_service() {
        let desired = settings(EXAMPLE).unwrap().desired();
        let addresses: Vec<String> = desired.iter().map(Resource::address).collect();
        assert_eq!(
            addresses,
            [
                "bucket/my-vgi-rpc-data",
                "secret/projects/my-project/secrets/vgi-signing-key",
                "function/projects/my-project/locations/europe-west1/services/vgi-demo-prod",
            ]
        );
        let bucket = &desired[0].settings;
        assert_eq!(bucket[setting::LIFECYCLE_PREFIX], "vgi-rpc/");
        assert_eq!(bucket[setting::LIFECYCLE_EXPIRATION_DAYS], "1");
        assert_eq!(bucket[setting::LIFECYCLE_ABORT_MULTIPART_DAYS], "1");
        assert_eq!(bucket[setting::CORS_ORIGINS], "https://app.example.com");
        let service = &desired[2].settings;
        assert_eq!(service[MAX_INSTANCES], "10");
        assert_eq!(service["env.KIT_STORAGE_BUCKET"], "my-vgi-rpc-data");
        assert!(service[ENV_NAMES].contains("VGI_SIGNING_KEY"));
    }

    #[test]
    fn missing_project_or_region_says_where_to_add_it() {
        let error = settings(
            "version: 1\ntargets:\n  run:\n    platform: cloud-run\n    region: europe-west1\n",
        )
        .unwrap_err();
        assert!(
            error.message.contains("needs a GCP project"),
            "{}",
            error.message
        );
        assert!(error.hint.contains("targets.run"), "{}", error.hint);
        let error =
            settings("version: 1\ntargets:\n  run:\n    platform: cloud-run\n    project: p\n")
                .unwrap_err();
        assert!(
            error.message.contains("needs a region"),
            "{}",
            error.message
        );
    }

    #[test]
    fn cloud_functions_get_storage_and_key_only() {
        let yaml = EXAMPLE.replace("platform: cloud-run ", "platform: cloud-functions ");
        let desired = settings(&yaml).unwrap().desired();
        assert_eq!(desired.len(), 2);
        assert!(desired.iter().all(|r| r.kind != kind::FUNCTION));
    }

    #[test]
    fn foreign_secret_references_are_refused() {
        let yaml = EXAMPLE.replace(
            "secret: gcp:projects/my-project/secrets/vgi-signing-key",
            "secret: aws:arn:aws:secretsmanager:eu-west-1:1:secret:k",
        );
        let error = settings(&yaml).unwrap_err();
        assert!(
            error.message.contains("not a Secret Manager reference"),
            "{}",
            error.message
        );
        assert!(
            error.hint.contains("gcp:projects/my-project/secrets/"),
            "{}",
            error.hint
        );
        assert_eq!(
            parse_secret_reference("gcp:projects/p/secrets/s/versions/2"),
            Some(("p".into(), "s".into()))
        );
        assert_eq!(parse_secret_reference("gcp:projects/p/secrets/s/x"), None);
    }
}
