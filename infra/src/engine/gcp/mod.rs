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
//! 3. the runtime service account (`cloud-run` only), `<service>-<env>`
//!    shortened to IAM's 6-30 characters ([`runtime_account_id`]);
//! 4. its grants, each on one resource, never on the project:
//!    `roles/secretmanager.secretAccessor` on the signing-key secret (and on
//!    the `auth.api_keys` secret, which the revision mounts too),
//!    `roles/storage.objectAdmin` on the bucket, and
//!    `roles/iam.serviceAccountTokenCreator` on the account itself, which
//!    kit-service needs to sign URLs through IAM `signBlob` (no key file);
//! 5. the Cloud Run service (`cloud-run` only): the image, the runtime
//!    account, cpu, memory, concurrency, min and max instances, request
//!    timeout, env pointing at the bucket and the key secret, public when
//!    `public: true`. `cloud-functions` targets get 1 and 2 only: a
//!    function is deployed from source by `gcloud functions deploy`, which
//!    deploy-kit does not drive.

#[cfg(feature = "gcp")]
pub mod apply;
#[cfg(feature = "gcp")]
pub mod iam;

use kit_checks::facts::StorageProvider;
use kit_checks::platform::Platform;

use crate::CommandError;
use crate::config::{CloudRunConfig, DeployConfig, KeySourceKind, TargetConfig};
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
pub const SERVICE_ACCOUNT: &str = "service_account";
pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const CONCURRENCY: &str = "concurrency";
pub const MIN_INSTANCES: &str = "min_instances";
/// Grant settings: the resource, the role and the member.
pub const GRANT_RESOURCE: &str = "resource";
pub const GRANT_ROLE: &str = "role";
pub const GRANT_MEMBER: &str = "member";
/// Service-account setting: its e-mail.
pub const EMAIL: &str = "email";

/// The resource kind of one IAM binding (role + member on one resource).
pub const GRANT: &str = "grant";
/// Reads secret versions: what Cloud Run needs to mount a secret.
pub const SECRET_ACCESSOR: &str = "roles/secretmanager.secretAccessor";
/// Objects (not the bucket's settings) of one bucket.
pub const OBJECT_ADMIN: &str = "roles/storage.objectAdmin";
/// `iam.serviceAccounts.signBlob` and tokens: kit-service's URL signing.
pub const TOKEN_CREATOR: &str = "roles/iam.serviceAccountTokenCreator";

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
    /// The identity the revision runs as (`cloud-run` only).
    pub runtime: Option<RuntimeAccount>,
    /// cpu, memory, concurrency and min instances (`cloud_run:`, else defaults).
    pub cloud_run: CloudRunConfig,
}

/// The runtime service account of a Cloud Run service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeAccount {
    pub project: String,
    /// The account id, 6-30 characters.
    pub account_id: String,
}

impl RuntimeAccount {
    /// `ID@PROJECT.iam.gserviceaccount.com`.
    pub fn email(&self) -> String {
        format!(
            "{}@{}.iam.gserviceaccount.com",
            self.account_id, self.project
        )
    }

    /// `projects/P/serviceAccounts/EMAIL`.
    pub fn resource(&self) -> String {
        format!("projects/{}/serviceAccounts/{}", self.project, self.email())
    }

    /// `serviceAccount:EMAIL`, as IAM bindings name it.
    pub fn member(&self) -> String {
        format!("serviceAccount:{}", self.email())
    }
}

/// One IAM binding deploy-kit keeps: `role` for `member` on `resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `projects/P/secrets/S`, `projects/_/buckets/B` or `projects/P/serviceAccounts/E`.
    pub resource: String,
    pub role: String,
    pub member: String,
}

impl Grant {
    /// The state and plan name: `RESOURCE#ROLE`.
    pub fn name(&self) -> String {
        format!("{}#{}", self.resource, self.role)
    }

    /// Reads a grant back from its resource.
    pub fn of(resource: &Resource) -> Option<Grant> {
        Some(Grant {
            resource: resource.settings.get(GRANT_RESOURCE)?.clone(),
            role: resource.settings.get(GRANT_ROLE)?.clone(),
            member: resource.settings.get(GRANT_MEMBER)?.clone(),
        })
    }
}

/// The runtime account id for a Cloud Run service name: the name itself
/// when it fits IAM's `[a-z][-a-z0-9]{4,28}[a-z0-9]`; a short name gains
/// `-run`; a long one keeps its first 21 characters and adds `-` and 8 hex
/// digits of its SHA-256, so two long names sharing a start stay apart and
/// the same name always gives the same id.
///
/// ```
/// use deploy_kit::engine::gcp::runtime_account_id;
/// assert_eq!(runtime_account_id("vgi-demo-prod"), "vgi-demo-prod");
/// assert_eq!(runtime_account_id("a-b"), "a-b-run");
/// let long = runtime_account_id("a-very-long-service-name-production");
/// assert_eq!(long.len(), 30);
/// assert!(long.starts_with("a-very-long-service-n-"));
/// ```
pub fn runtime_account_id(service: &str) -> String {
    use sha2::Digest;
    if service.len() < 6 {
        return format!("{}-run", service.trim_end_matches('-'));
    }
    if service.len() <= 30 && !service.ends_with('-') {
        return service.to_string();
    }
    let digest = sha2::Sha256::digest(service.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let head: String = service.chars().take(21).collect();
    format!("{}-{hash}", head.trim_end_matches('-'))
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
        let cloud_run = target.cloud_run.clone().unwrap_or_default();
        if target.platform == Platform::CloudRun {
            cloud_run
                .check(target.instances, config.limits.request_timeout_seconds)
                .map_err(|message| {
                    invalid(
                        target_name,
                        message,
                        format!("change `targets.{target_name}.cloud_run` or `limits`"),
                    )
                })?;
        }
        let runtime = service.as_ref().map(|name| RuntimeAccount {
            project: project.clone(),
            account_id: runtime_account_id(name),
        });
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
            runtime,
            cloud_run,
        })
    }

    /// The bindings the runtime account needs, each on one resource.
    pub fn grants(&self) -> Vec<Grant> {
        let Some(runtime) = &self.runtime else {
            return Vec::new();
        };
        let member = runtime.member();
        let grant = |resource: String, role: &str| Grant {
            resource,
            role: role.to_string(),
            member: member.clone(),
        };
        let mut grants = Vec::new();
        for secret in [&self.secret, &self.api_keys].into_iter().flatten() {
            grants.push(grant(secret.resource(), SECRET_ACCESSOR));
        }
        if let Some(bucket) = &self.bucket {
            grants.push(grant(
                format!("projects/_/buckets/{}", bucket.bucket),
                OBJECT_ADMIN,
            ));
        }
        grants.push(grant(runtime.resource(), TOKEN_CREATOR));
        grants
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
        if let Some(runtime) = &self.runtime {
            resources
                .push(Resource::new(kind::ROLE, runtime.resource()).with(EMAIL, runtime.email()));
        }
        for grant in self.grants() {
            resources.push(
                Resource::new(GRANT, grant.name())
                    .with(GRANT_RESOURCE, &grant.resource)
                    .with(GRANT_ROLE, &grant.role)
                    .with(GRANT_MEMBER, &grant.member),
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
            .with(MIN_INSTANCES, self.cloud_run.min_instances.to_string())
            .with(CPU, &self.cloud_run.cpu)
            .with(MEMORY, &self.cloud_run.memory)
            .with(CONCURRENCY, self.cloud_run.concurrency.to_string())
            .with(TIMEOUT_SECONDS, self.timeout_seconds.to_string())
            .with(PUBLIC, self.public.to_string())
            .with(ENV_NAMES, env_names.join(","));
            if let Some(runtime) = &self.runtime {
                resource = resource.with(SERVICE_ACCOUNT, runtime.email());
            }
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
                "role/projects/my-project/serviceAccounts/vgi-demo-prod@my-project.iam.gserviceaccount.com",
                "grant/projects/my-project/secrets/vgi-signing-key#roles/secretmanager.secretAccessor",
                "grant/projects/my-project/secrets/vgi-api-keys#roles/secretmanager.secretAccessor",
                "grant/projects/_/buckets/my-vgi-rpc-data#roles/storage.objectAdmin",
                "grant/projects/my-project/serviceAccounts/vgi-demo-prod@my-project.iam.gserviceaccount.com#roles/iam.serviceAccountTokenCreator",
                "function/projects/my-project/locations/europe-west1/services/vgi-demo-prod",
            ]
        );
        for grant in &desired[3..7] {
            assert_eq!(
                grant.settings[GRANT_MEMBER],
                "serviceAccount:vgi-demo-prod@my-project.iam.gserviceaccount.com"
            );
        }
        let bucket = &desired[0].settings;
        assert_eq!(bucket[setting::LIFECYCLE_PREFIX], "vgi-rpc/");
        assert_eq!(bucket[setting::LIFECYCLE_EXPIRATION_DAYS], "1");
        assert_eq!(bucket[setting::LIFECYCLE_ABORT_MULTIPART_DAYS], "1");
        assert_eq!(bucket[setting::CORS_ORIGINS], "https://app.example.com");
        let service = &desired[7].settings;
        assert_eq!(service[MAX_INSTANCES], "10");
        assert_eq!(
            service[SERVICE_ACCOUNT],
            "vgi-demo-prod@my-project.iam.gserviceaccount.com"
        );
        assert_eq!(
            (
                &*service[CPU],
                &*service[MEMORY],
                &*service[CONCURRENCY],
                &*service[MIN_INSTANCES]
            ),
            ("1", "512Mi", "80", "0")
        );
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

    #[test]
    fn runtime_account_ids_fit_iams_rule_and_are_stable() {
        let valid = |id: &str| {
            (6..=30).contains(&id.len())
                && id.starts_with(|c: char| c.is_ascii_lowercase())
                && id.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        let long_a = "payments-gateway-service-staging-eu";
        let long_b = "payments-gateway-service-staging-us";
        for name in [
            "a-b",
            "abc-d",
            "svc-dev",
            long_a,
            "x234567890123456789-1234567890",
        ] {
            let id = runtime_account_id(name);
            assert!(valid(&id), "{name} -> {id}");
            assert_eq!(id, runtime_account_id(name), "deterministic");
        }
        assert_ne!(runtime_account_id(long_a), runtime_account_id(long_b));
        // 21 characters ending in `-` drop it before the hash.
        assert!(!runtime_account_id("abcdefghijklmnopqrst-uvwxyz-0123").contains("--"));
    }

    #[test]
    fn cloud_functions_get_no_runtime_account_or_grants() {
        let yaml = EXAMPLE.replace("platform: cloud-run ", "platform: cloud-functions ");
        let settings = settings(&yaml).unwrap();
        assert!(settings.runtime.is_none() && settings.grants().is_empty());
    }
}
