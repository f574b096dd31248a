//! The resolved settings templates see: one serializable value built from
//! `deploy-kit.yaml`, the chosen target and the render flags.
//!
//! Templates never read the environment or the raw config; every decision
//! (which variable carries a limit, how a secret reaches the process, which
//! cargo features the image needs) is made here once, in Rust, so the
//! templates stay plain text with blanks. Secret *values* never enter this
//! struct: a secret is a name, a Pulumi config key and a way of delivery.

use kit_checks::facts::StorageProvider;
use kit_checks::platform::Platform;
use serde::Serialize;

use crate::config::{CredentialKind, DeployConfig, KeySourceKind, RateLimitStore, TargetConfig};

/// The port the service listens on inside every container we render.
pub const CONTAINER_PORT: u16 = 8080;
/// Extra bytes nginx accepts above `max_request_bytes`, so the service (not
/// the proxy) answers an oversized body with its Arrow error batch.
pub const PROXY_BODY_HEADROOM_BYTES: u64 = 64 * 1024;
/// Seconds the service keeps serving with `/readyz` at 503 on Kubernetes, so
/// endpoints controllers and ingresses stop routing before connections close.
pub const KUBERNETES_DRAIN_DELAY_SECONDS: u64 = 5;
/// Seconds added to shutdown grace + drain delay for the pod's termination grace.
pub const TERMINATION_MARGIN_SECONDS: u64 = 5;

/// Render flags that change the nginx front (`render nginx`, `render compose`).
#[derive(Debug, Clone, Default)]
pub struct NginxOptions {
    /// Upstream `host:port` addresses; default the target's replicas.
    pub upstreams: Vec<String>,
    /// nginx `listen` address (`443`, `127.0.0.1:8443`).
    pub listen: Option<String>,
    /// No TLS: plain HTTP on `listen` (loopback tests, TLS terminated before nginx).
    pub plain_http: bool,
    /// PEM certificate path as nginx sees it.
    pub tls_certificate: Option<String>,
    /// PEM private key path as nginx sees it.
    pub tls_certificate_key: Option<String>,
}

/// What `render` was asked for, beyond the config.
#[derive(Debug, Clone)]
pub struct RenderOptions {
    /// The config file's name as shown in generated-by headers.
    pub config_name: String,
    pub nginx: NginxOptions,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            config_name: crate::config::DEFAULT_CONFIG_FILE.to_string(),
            nginx: NginxOptions::default(),
        }
    }
}

/// Everything a template may use.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `deploy-kit <version>`, for the few files that pin the tool.
    pub deploy_kit_version: &'static str,
    /// The config file name (headers, workflow).
    pub config_file: String,
    pub service: ServiceSettings,
    pub target: TargetSettings,
    pub limits: LimitSettings,
    /// Plain (non-secret) environment of the service, in a stable order.
    pub env: Vec<EnvVar>,
    /// Secrets the process needs, as references only.
    pub secrets: Vec<SecretSettings>,
    /// The signing key's secret, when there is one (also in `secrets`).
    pub signing_key: Option<SecretSettings>,
    pub storage: Option<StorageSettings>,
    pub image: ImageSettings,
    /// What is built and run: package, bin target, features.
    pub artifact: ArtifactSettings,
    pub nginx: NginxSettings,
    /// Every target of the config (the workflow's matrix).
    pub all_targets: Vec<String>,
    /// The Kubernetes manifests rendered beside the Pulumi program.
    pub kubernetes_files: Vec<String>,
    /// The Redis every replica counts the rate limit in (`rate_limit.store:
    /// redis`); `provisioned` when the compose file runs it.
    pub rate_limit_store: Option<RateLimitStoreSettings>,
}

/// The shared rate-limit store as templates see it.
#[derive(Debug, Clone, Serialize)]
pub struct RateLimitStoreSettings {
    pub url: String,
    pub on_failure: &'static str,
    pub provisioned: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceSettings {
    pub name: String,
    pub image: String,
    pub environment: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetSettings {
    pub name: String,
    pub platform: &'static str,
    /// Most replicas (HPA max, Cloud Run max instances, compose services).
    pub instances: u32,
    /// Fewest replicas kept running (HPA min, PDB): 2 when `instances` allows.
    pub min_instances: u32,
    pub workers: u32,
    pub public: bool,
    pub production: bool,
    pub port: u16,
    pub region: Option<String>,
    pub project: Option<String>,
    pub namespace: String,
    pub host: Option<String>,
    /// `<name>-<target>`: the Pulumi project and stack-scoped names.
    pub resource_prefix: String,
    /// `<service.name>-<environment>`: the app on a platform whose app
    /// names are one namespace for every environment (Fly), as the Lambda
    /// function and the Cloud Run service are named.
    pub app: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitSettings {
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    pub max_upload_bytes: Option<u64>,
    pub request_timeout_seconds: u64,
    pub shutdown_grace_seconds: u64,
    /// `KIT_DRAIN_DELAY` (0 where nothing routes by readiness).
    pub drain_delay_seconds: u64,
    /// Kubernetes `terminationGracePeriodSeconds`: shutdown grace + drain + margin.
    pub termination_grace_seconds: u64,
    /// nginx `client_max_body_size`: max request bytes + headroom, `0` = unlimited.
    pub proxy_body_bytes: u64,
    pub proxy_body_headroom_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// How a secret reaches the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// A mounted file; `variable` holds its path.
    File,
    /// An environment variable injected from the secret store.
    Env,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecretSettings {
    /// Stable id used for resource and volume names (`signing-key`).
    pub id: String,
    /// Name of the secret in the platform's store (`vgi-signing-key`).
    pub secret_name: String,
    /// Key inside a multi-key secret (Kubernetes `secretKeyRef.key`, compose secret).
    pub key: String,
    /// The Pulumi config key holding the value (`signingKey`), always `secret: true`.
    pub config_key: String,
    /// The variable the service reads (`VGI_SIGNING_KEY_FILE` or `VGI_SIGNING_KEY`).
    pub variable: String,
    pub delivery: Delivery,
    /// With file delivery: the directory the secret is mounted at and the file in it.
    pub mount_dir: String,
    pub file_name: String,
    pub file_path: String,
    /// Where the value comes from, for comments and docs (never the value).
    pub origin: String,
    /// Filled by Pulumi from another resource (`serviceAccountKey`) instead of config.
    pub from_resource: bool,
    /// Keys that only verify, from a second key of the same secret: set for
    /// the signing key on Kubernetes, where `deploy-kit secrets rotate`
    /// keeps a rotation's staged or old key beside `value`.
    pub verify_only: Option<VerifyOnlySettings>,
}

/// The Secret key a rotation keeps its verify-only keys in.
pub const PREVIOUS_SIGNING_KEYS_KEY: &str = "previous";

/// A secret key injected as an environment variable that may be absent
/// (`secretKeyRef.optional: true`): outside a rotation the key does not exist.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOnlySettings {
    /// `VGI_SIGNING_KEY_PREVIOUS`: comma-separated keys, empty counts as unset.
    pub variable: String,
    /// The key inside the secret (`previous`).
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageSettings {
    /// `s3`, `gcs`, `r2`, `s3-compatible`.
    pub provider: &'static str,
    /// `KIT_STORAGE`: `s3` or `gcs`.
    pub backend: &'static str,
    pub bucket: String,
    pub prefix: String,
    pub endpoint: Option<String>,
    pub expiry_days: u32,
    pub abort_multipart_days: u32,
    pub presign_ttl_seconds: u64,
    pub cors_origins: Vec<String>,
    pub credential: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageSettings {
    /// The container's arguments after the binary (`serve --listen 0.0.0.0:8080`).
    pub command: Vec<String>,
}

/// The service's cargo artifact (`service.package`, `service.binary`,
/// `service.features`, `service.workspace`), resolved once.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactSettings {
    /// `cargo build -p <package>`.
    pub package: String,
    /// `cargo build --bin <binary>`: the executable every platform runs.
    pub binary: String,
    /// Every feature the build turns on: `service.features`, then the
    /// platform's (`lambda` on Lambda, `s3` with S3-protocol storage).
    pub features: Vec<String>,
    /// Where images install it: `/usr/local/bin/<binary>`.
    pub path: String,
    /// The cargo workspace root as configured (the Docker build context).
    pub workspace: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NginxSettings {
    pub listen: String,
    pub server_name: String,
    pub tls: Option<TlsSettings>,
    /// Also listen on 80 and redirect to https (TLS only, default listen only).
    pub redirect_http: bool,
    pub upstreams: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsSettings {
    pub certificate: String,
    pub certificate_key: String,
}

/// A resolved-settings failure: the message names the key, the hint the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError {
    pub message: String,
    pub hint: String,
}

/// `gcp:projects/p/secrets/vgi-signing-key` -> `vgi-signing-key`;
/// `aws:arn:aws:secretsmanager:r:1:secret:vgi-key` -> `vgi-key`.
pub fn secret_name_of(reference: &str) -> String {
    let last = reference
        .rsplit(['/', ':'])
        .find(|part| !part.is_empty())
        .unwrap_or(reference);
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    cleaned.trim_matches('-').to_string()
}

fn platform_delivery(platform: Platform) -> Delivery {
    match platform {
        Platform::Kubernetes | Platform::CloudRun | Platform::Compose => Delivery::File,
        _ => Delivery::Env,
    }
}

fn secrets_dir(platform: Platform) -> &'static str {
    match platform {
        // Cloud Run mounts each secret volume at its own directory.
        Platform::CloudRun => "/secrets",
        Platform::Compose => "/run/secrets",
        _ => "/var/run/secrets/kit",
    }
}

struct SecretSpec<'a> {
    id: &'a str,
    secret_name: String,
    config_key: &'a str,
    file_variable: &'a str,
    env_variable: &'a str,
    origin: String,
    from_resource: bool,
    /// A fixed mount path (`signing_key.path` with `source: file`).
    file_path: Option<String>,
}

fn secret(platform: Platform, spec: SecretSpec<'_>) -> SecretSettings {
    let delivery = platform_delivery(platform);
    let (mount_dir, file_name) = match &spec.file_path {
        Some(path) => match path.rsplit_once('/') {
            Some((dir, file)) if !dir.is_empty() => (dir.to_string(), file.to_string()),
            _ => (secrets_dir(platform).to_string(), path.clone()),
        },
        None if platform == Platform::Compose => {
            (secrets_dir(platform).to_string(), spec.secret_name.clone())
        }
        None => (
            format!("{}/{}", secrets_dir(platform), spec.id),
            "value".into(),
        ),
    };
    SecretSettings {
        id: spec.id.to_string(),
        key: "value".into(),
        config_key: spec.config_key.to_string(),
        variable: match delivery {
            Delivery::File => spec.file_variable.to_string(),
            Delivery::Env => spec.env_variable.to_string(),
        },
        delivery,
        file_path: format!("{mount_dir}/{file_name}"),
        mount_dir,
        file_name,
        origin: spec.origin,
        from_resource: spec.from_resource,
        secret_name: spec.secret_name,
        verify_only: None,
    }
}

impl Settings {
    /// Resolves `target_name` of `config` with `options`.
    pub fn resolve(
        config: &DeployConfig,
        target_name: &str,
        options: &RenderOptions,
    ) -> Result<Settings, SettingsError> {
        let target = config
            .targets
            .get(target_name)
            .ok_or_else(|| SettingsError {
                message: format!(
                    "no target `{target_name}`; known: {}",
                    config
                        .targets
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                hint: "name a target from `targets:` with `--target NAME`".into(),
            })?;
        let platform = target.platform;
        let name = &config.service.name;
        let limits = &config.limits;
        let drain_delay_seconds = drain_delay(config, platform);
        let storage = config.storage.as_ref().map(|storage| StorageSettings {
            provider: match storage.provider {
                StorageProvider::S3 => "s3",
                StorageProvider::Gcs => "gcs",
                StorageProvider::R2 => "r2",
                StorageProvider::S3Compatible => "s3-compatible",
            },
            backend: match storage.provider {
                StorageProvider::Gcs => "gcs",
                _ => "s3",
            },
            bucket: storage.bucket.clone(),
            prefix: storage.prefix.clone(),
            endpoint: storage.endpoint.clone(),
            expiry_days: storage.expiry_days.unwrap_or(1),
            abort_multipart_days: storage.abort_multipart_days.unwrap_or(1),
            presign_ttl_seconds: storage.presign_ttl_seconds,
            cors_origins: storage.cors_origins.clone(),
            credential: match storage.credential {
                CredentialKind::StaticKeys => "static-keys",
                CredentialKind::AssumedRole => "assumed-role",
                CredentialKind::InstanceRole => "instance-role",
                CredentialKind::ServiceAccount => "service-account",
            },
        });

        let secrets = resolve_secrets(config, target, name);
        let signing_key = secrets.iter().find(|s| s.id == "signing-key").cloned();
        let rate_limit_store = match &config.rate_limit {
            Some(rate) => rate
                .store(platform)
                .map_err(|(message, hint)| SettingsError { message, hint })?,
            None => None,
        };
        let env = resolve_env(
            config,
            target,
            drain_delay_seconds,
            rate_limit_store.as_ref(),
        );

        let artifact = resolve_artifact(config, platform)?;
        let lambda = matches!(
            platform,
            Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl
        );
        let command = if lambda {
            vec!["lambda".to_string()]
        } else {
            vec![
                "serve".to_string(),
                "--listen".to_string(),
                format!("0.0.0.0:{CONTAINER_PORT}"),
            ]
        };

        let nginx = resolve_nginx(config, target, &options.nginx);
        let instances = target.instances.max(1);
        Ok(Settings {
            deploy_kit_version: env!("CARGO_PKG_VERSION"),
            config_file: options.config_name.clone(),
            service: ServiceSettings {
                name: name.clone(),
                image: config.service.image(),
                environment: config.service.environment.clone(),
            },
            target: TargetSettings {
                name: target_name.to_string(),
                platform: platform.name(),
                instances,
                min_instances: instances.min(2),
                workers: target.workers,
                public: target.public,
                production: target.production,
                port: CONTAINER_PORT,
                region: target.region.clone(),
                project: target.project.clone(),
                namespace: target.namespace.clone().unwrap_or_else(|| "default".into()),
                host: target.host.clone(),
                resource_prefix: format!("{name}-{target_name}"),
                app: format!("{name}-{}", config.service.environment),
            },
            limits: LimitSettings {
                max_request_bytes: limits.max_request_bytes,
                max_response_bytes: limits.max_response_bytes,
                max_upload_bytes: limits.max_upload_bytes,
                request_timeout_seconds: limits.request_timeout_seconds,
                shutdown_grace_seconds: limits.shutdown_grace_seconds,
                drain_delay_seconds,
                termination_grace_seconds: limits.shutdown_grace_seconds
                    + drain_delay_seconds
                    + TERMINATION_MARGIN_SECONDS,
                proxy_body_bytes: limits
                    .max_request_bytes
                    .map_or(0, |bytes| bytes + PROXY_BODY_HEADROOM_BYTES),
                proxy_body_headroom_bytes: PROXY_BODY_HEADROOM_BYTES,
            },
            env,
            secrets,
            signing_key,
            storage,
            image: ImageSettings { command },
            artifact,
            nginx,
            all_targets: config.targets.keys().cloned().collect(),
            kubernetes_files: Vec::new(),
            rate_limit_store: rate_limit_store.map(|store| RateLimitStoreSettings {
                url: store.url,
                on_failure: store.on_failure.as_str(),
                provisioned: store.provisioned,
            }),
        })
    }
}

/// The artifact from `service:`; `package` is set by now when the config was
/// loaded from a cargo workspace ([`crate::artifact::fill_defaults`]).
fn resolve_artifact(
    config: &DeployConfig,
    platform: Platform,
) -> Result<ArtifactSettings, SettingsError> {
    let service = &config.service;
    let (Some(package), Some(binary)) = (&service.package, service.binary()) else {
        return Err(SettingsError {
            message: format!(
                "`service.package` is not set, and `cargo metadata` could not find it (no `Cargo.toml` at `service.workspace: {}`, or no cargo)",
                service.workspace
            ),
            hint: "set `service.package` (and `service.binary` when the bin target has another name) in deploy-kit.yaml, or `service.workspace` to the cargo workspace root".into(),
        });
    };
    Ok(ArtifactSettings {
        package: package.clone(),
        binary: binary.to_string(),
        features: crate::artifact::required_features(service, platform, config.storage.as_ref())
            .into_iter()
            .map(|feature| feature.name)
            .collect(),
        path: format!("/usr/local/bin/{binary}"),
        workspace: service.workspace.clone(),
    })
}

fn resolve_secrets(
    config: &DeployConfig,
    target: &TargetConfig,
    name: &str,
) -> Vec<SecretSettings> {
    let platform = target.platform;
    let mut secrets = Vec::new();
    let key = &config.signing_key;
    // A literal key is handled like a secret: the files reference
    // `<name>-signing-key`, and the value goes into the secret store out of
    // band (`pulumi config set --secret signingKey`), never into a file.
    let key_origin = match key.source {
        KeySourceKind::Ephemeral => None,
        KeySourceKind::Secret => Some((
            key.secret
                .as_deref()
                .map(secret_name_of)
                .unwrap_or_else(|| format!("{name}-signing-key")),
            format!(
                "signing_key.secret ({})",
                key.secret.as_deref().unwrap_or("")
            ),
        )),
        KeySourceKind::Env => Some((
            format!("{name}-signing-key"),
            format!(
                "signing_key.env ({})",
                key.env.as_deref().unwrap_or("VGI_SIGNING_KEY")
            ),
        )),
        KeySourceKind::File => Some((
            format!("{name}-signing-key"),
            "signing_key.path".to_string(),
        )),
        KeySourceKind::Literal => Some((
            format!("{name}-signing-key"),
            "signing_key.value (a literal: move it into a secret store)".to_string(),
        )),
    };
    if let Some((secret_name, origin)) = key_origin {
        let mut signing_key = secret(
            platform,
            SecretSpec {
                id: "signing-key",
                secret_name,
                config_key: "signingKey",
                file_variable: "VGI_SIGNING_KEY_FILE",
                env_variable: "VGI_SIGNING_KEY",
                origin,
                from_resource: false,
                file_path: (key.source == KeySourceKind::File)
                    .then(|| key.path.clone())
                    .flatten(),
            },
        );
        if platform == Platform::Kubernetes {
            signing_key.verify_only = Some(VerifyOnlySettings {
                variable: "VGI_SIGNING_KEY_PREVIOUS".into(),
                key: PREVIOUS_SIGNING_KEYS_KEY.into(),
            });
        }
        secrets.push(signing_key);
    }
    if let Some(reference) = &config.auth.api_keys {
        secrets.push(secret(
            platform,
            SecretSpec {
                id: "api-keys",
                secret_name: secret_name_of(reference),
                config_key: "apiKeys",
                file_variable: "KIT_API_KEYS_FILE",
                env_variable: "KIT_API_KEYS",
                origin: format!("auth.api_keys ({reference})"),
                from_resource: false,
                file_path: None,
            },
        ));
    }
    if let Some(storage) = &config.storage
        && storage.provider == StorageProvider::Gcs
        && platform_delivery(platform) == Delivery::File
    {
        // The gcs backend signs V4 URLs with a service-account key file.
        secrets.push(secret(
            platform,
            SecretSpec {
                id: "storage-key",
                secret_name: format!("{name}-storage-key"),
                config_key: "storageKey",
                file_variable: "GOOGLE_APPLICATION_CREDENTIALS",
                env_variable: "GOOGLE_APPLICATION_CREDENTIALS",
                origin: "a key of the service's storage service account".into(),
                from_resource: platform == Platform::CloudRun,
                file_path: None,
            },
        ));
    }
    secrets
}

/// `KIT_DRAIN_DELAY`: only where traffic follows readiness (Kubernetes).
fn drain_delay(config: &DeployConfig, platform: Platform) -> u64 {
    match platform {
        Platform::Kubernetes => {
            KUBERNETES_DRAIN_DELAY_SECONDS.min(config.limits.shutdown_grace_seconds / 2)
        }
        _ => 0,
    }
}

/// The environment the service gets on `target_name`, and the secrets
/// delivered beside it: the parts of [`Settings::resolve`] the service's own
/// configuration parser judges (the doctor's CFG001), without the artifact,
/// which needs cargo. `None` for an unknown target.
pub fn service_environment(
    config: &DeployConfig,
    target_name: &str,
) -> Option<(Vec<EnvVar>, Vec<SecretSettings>)> {
    let target = config.targets.get(target_name)?;
    // A rate-limit store the platform cannot have is the settings' own error
    // (`plan` reports it); here it only drops the store's variables.
    let store = config
        .rate_limit
        .as_ref()
        .and_then(|rate| rate.store(target.platform).ok().flatten());
    let env = resolve_env(
        config,
        target,
        drain_delay(config, target.platform),
        store.as_ref(),
    );
    let secrets = resolve_secrets(config, target, &config.service.name);
    Some((env, secrets))
}

fn resolve_env(
    config: &DeployConfig,
    target: &TargetConfig,
    drain_delay: u64,
    rate_limit_store: Option<&RateLimitStore>,
) -> Vec<EnvVar> {
    let mut env = Vec::new();
    let mut push = |name: &str, value: String| {
        env.push(EnvVar {
            name: name.to_string(),
            value,
        })
    };
    let limits = &config.limits;
    push("KIT_LOG_FORMAT", "json".into());
    if let Some(bytes) = limits.max_request_bytes {
        push("KIT_MAX_REQUEST_BYTES", bytes.to_string());
    }
    if let Some(bytes) = limits.max_response_bytes {
        push("KIT_MAX_RESPONSE_BYTES", bytes.to_string());
    }
    if let Some(bytes) = limits.max_upload_bytes
        && limits.upload_urls
    {
        push("KIT_MAX_UPLOAD_BYTES", bytes.to_string());
    }
    push(
        "KIT_REQUEST_TIMEOUT",
        limits.request_timeout_seconds.to_string(),
    );
    push(
        "KIT_SHUTDOWN_GRACE",
        limits.shutdown_grace_seconds.to_string(),
    );
    if drain_delay > 0 {
        push("KIT_DRAIN_DELAY", drain_delay.to_string());
    }
    push(
        "KIT_TOKEN_TTL",
        config.signing_key.token_ttl_seconds.to_string(),
    );
    // Only when set: `signed` is the service's default.
    if config.signing_key.token_mode == crate::config::TokenModeConfig::Sealed {
        push("KIT_TOKEN_MODE", "sealed".into());
    }
    push("KIT_REQUIRE_AUTH", config.auth.required.to_string());
    if !config.cors.origins.is_empty() {
        push("KIT_CORS_ORIGINS", config.cors.origins.join(","));
    }
    push(
        "KIT_RATE_LIMIT",
        config
            .rate_limit
            .as_ref()
            .and_then(|rate| rate.limit.clone())
            .unwrap_or_else(|| "off".into()),
    );
    if let Some(store) = rate_limit_store {
        push("KIT_RATE_LIMIT_STORE", store.url.clone());
        push(
            "KIT_RATE_LIMIT_STORE_FAILURE",
            store.on_failure.as_str().into(),
        );
    }
    push("KIT_REFLECTION", config.reflection.to_string());
    if target.platform == Platform::Compose {
        // Only nginx reaches the replicas on the compose network.
        push(
            "KIT_TRUSTED_PROXIES",
            "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16".into(),
        );
    }
    if let Some(storage) = &config.storage {
        push(
            "KIT_STORAGE",
            match storage.provider {
                StorageProvider::Gcs => "gcs",
                _ => "s3",
            }
            .into(),
        );
        push("KIT_STORAGE_BUCKET", storage.bucket.clone());
        push("KIT_STORAGE_PREFIX", storage.prefix.clone());
        if let Some(endpoint) = &storage.endpoint {
            push("KIT_STORAGE_ENDPOINT", endpoint.clone());
        }
        if storage.provider == StorageProvider::S3
            && let Some(region) = &target.region
        {
            push("KIT_STORAGE_REGION", region.clone());
        }
        push("KIT_PRESIGN_TTL", storage.presign_ttl_seconds.to_string());
        if let Some(bytes) = limits.externalize_threshold_bytes {
            push("KIT_EXTERNALIZE_THRESHOLD_BYTES", bytes.to_string());
        }
    }
    env
}

fn resolve_nginx(
    config: &DeployConfig,
    target: &TargetConfig,
    options: &NginxOptions,
) -> NginxSettings {
    let upstreams = if !options.upstreams.is_empty() {
        options.upstreams.clone()
    } else if target.platform == Platform::Compose {
        (1..=target.instances.max(1))
            .map(|index| format!("{}-{index}:{CONTAINER_PORT}", config.service.name))
            .collect()
    } else {
        vec![format!("127.0.0.1:{CONTAINER_PORT}")]
    };
    let tls = (!options.plain_http).then(|| TlsSettings {
        certificate: options
            .tls_certificate
            .clone()
            .unwrap_or_else(|| "/etc/nginx/tls/tls.crt".into()),
        certificate_key: options
            .tls_certificate_key
            .clone()
            .unwrap_or_else(|| "/etc/nginx/tls/tls.key".into()),
    });
    NginxSettings {
        listen: options
            .listen
            .clone()
            .unwrap_or_else(|| if tls.is_some() { "443" } else { "80" }.to_string()),
        server_name: target.host.clone().unwrap_or_else(|| "_".into()),
        redirect_http: tls.is_some() && options.listen.is_none(),
        tls,
        upstreams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> Result<Settings, SettingsError> {
        let config = DeployConfig::parse(text, std::path::Path::new("deploy-kit.yaml")).unwrap();
        Settings::resolve(&config, "t", &RenderOptions::default())
    }

    #[test]
    fn the_artifact_takes_the_users_features_then_the_platforms() {
        let settings = settings(
            "version: 1\nservice:\n  package: acme-rpc\n  binary: acme\n  features: [fast, s3]\n\
             targets:\n  t:\n    platform: aws-lambda-function-url\n\
             storage:\n  provider: s3\n  bucket: b\n  prefix: p/\n  credential: instance-role\n",
        )
        .unwrap();
        let artifact = &settings.artifact;
        assert_eq!(artifact.package, "acme-rpc");
        assert_eq!(artifact.binary, "acme");
        assert_eq!(artifact.features, ["fast", "s3", "lambda"]);
        assert_eq!(artifact.path, "/usr/local/bin/acme");
        assert_eq!(settings.image.command, ["lambda"]);
    }

    #[test]
    fn an_unresolved_package_is_a_settings_error() {
        let error = settings("version: 1\ntargets:\n  t:\n    platform: fly\n").unwrap_err();
        assert!(
            error.message.contains("`service.package` is not set"),
            "{}",
            error.message
        );
        assert!(error.hint.contains("service.workspace"), "{}", error.hint);
    }

    #[test]
    fn sealed_tokens_render_kit_token_mode_and_signed_renders_nothing() {
        let config = |mode: &str| {
            format!(
                "version: 1\nservice:\n  package: acme-rpc\ntargets:\n  t:\n    platform: fly\n{mode}"
            )
        };
        let mode_of = |text: String| {
            settings(&text)
                .unwrap()
                .env
                .into_iter()
                .find(|v| v.name == "KIT_TOKEN_MODE")
                .map(|v| v.value)
        };
        assert_eq!(mode_of(config("")), None);
        assert_eq!(
            mode_of(config("signing_key:\n  token_mode: signed\n")),
            None
        );
        assert_eq!(
            mode_of(config("signing_key:\n  token_mode: sealed\n")).as_deref(),
            Some("sealed")
        );
        let error = DeployConfig::parse(
            &config("signing_key:\n  token_mode: secret\n"),
            std::path::Path::new("deploy-kit.yaml"),
        )
        .unwrap_err();
        assert!(
            format!("{error:?}").contains("expected one of signed, sealed"),
            "{error:?}"
        );
    }

    #[test]
    fn secret_names_come_from_the_reference() {
        assert_eq!(
            secret_name_of("gcp:projects/p/secrets/vgi-signing-key"),
            "vgi-signing-key"
        );
        assert_eq!(
            secret_name_of("aws:arn:aws:secretsmanager:eu-west-1:1:secret:vgi-key"),
            "vgi-key"
        );
        assert_eq!(secret_name_of("k8s:Vgi_Keys"), "vgi_keys");
    }
}
