//! The `deploy-kit.yaml` model: what the doctor reads today, extended by the
//! deploy issues later.
//!
//! The file carries `version: 1` from day one, unknown keys are refused
//! (`deny_unknown_fields`) so a typo never silently becomes a default, and
//! parse errors point at line and column. Every key is listed here once, with
//! its doc comment; the commented example at the repository root mirrors it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kit_checks::Date;
use kit_checks::facts::StorageProvider;
use kit_checks::platform::Platform;
use serde::Deserialize;

/// The only version this build understands.
pub const CONFIG_VERSION: u32 = 1;
/// The file looked for in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "deploy-kit.yaml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployConfig {
    /// Format version; must be 1.
    pub version: u32,
    /// What is deployed: name, image, environment.
    #[serde(default)]
    pub service: ServiceConfig,
    /// Target used when `--target`/`DEPLOY_KIT_TARGET` is not given.
    #[serde(default)]
    pub default_target: Option<String>,
    /// Deployment targets by name.
    pub targets: BTreeMap<String, TargetConfig>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub cors: CorsConfig,
    /// `N/SECONDS` per API key, or `off`; or a map with `limit`, `store`
    /// (`local` or `redis`), `redis_url` and `on_store_failure` (see
    /// [`RateLimitConfig`]).
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Host `vgi_rpc.Reflection.v1` (describe).
    #[serde(default = "yes")]
    pub reflection: bool,
    /// Debug logging or endpoints.
    #[serde(default)]
    pub debug: bool,
    /// Tracebacks in error batches sent to clients.
    #[serde(default)]
    pub tracebacks: bool,
    /// External object storage for large results and uploads.
    #[serde(default)]
    pub storage: Option<StorageConfig>,
    #[serde(default)]
    pub signing_key: SigningKeyConfig,
    /// Temporary exceptions to named checks.
    #[serde(default)]
    pub waivers: Vec<WaiverConfig>,
}

fn yes() -> bool {
    true
}

/// `rate_limit:` as `100/60` (or `off`), or as a map when replicas must
/// share one limit:
///
/// ```yaml
/// rate_limit:
///   limit: 100/60            # KIT_RATE_LIMIT
///   store: redis             # local (default): each replica counts alone
///   redis_url: redis://10.0.0.5:6379/0   # not on compose: deploy-kit runs one
///   on_store_failure: open   # open (default) | closed: KIT_RATE_LIMIT_STORE_FAILURE
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// `N/SECONDS` or `off`; `None` leaves the service's default (off).
    pub limit: Option<String>,
    pub store: RateLimitStoreKind,
    /// The Redis every replica uses; deploy-kit provisions one on compose.
    pub redis_url: Option<String>,
    pub on_store_failure: StoreFailureMode,
}

/// Where the rate limit is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RateLimitStoreKind {
    /// In each replica's memory: N replicas allow N times the limit.
    #[default]
    Local,
    /// In one Redis shared by every replica (`KIT_RATE_LIMIT_STORE`).
    Redis,
}

/// What a failing shared store means (`KIT_RATE_LIMIT_STORE_FAILURE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreFailureMode {
    /// Each replica decides alone until the store answers again.
    #[default]
    Open,
    /// Refuse with 503 until the store answers again.
    Closed,
}

impl StoreFailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreFailureMode::Open => "open",
            StoreFailureMode::Closed => "closed",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitMap {
    #[serde(default)]
    limit: Option<String>,
    #[serde(default)]
    store: RateLimitStoreKind,
    #[serde(default)]
    redis_url: Option<String>,
    #[serde(default)]
    on_store_failure: StoreFailureMode,
}

impl<'de> Deserialize<'de> for RateLimitConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RateLimitConfig;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("`N/SECONDS`, `off`, or a map with `limit`, `store`, `redis_url` and `on_store_failure`")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                Ok(RateLimitConfig {
                    limit: Some(text.to_string()),
                    ..RateLimitConfig::default()
                })
            }

            // YAML 1.1 readers take a bare `off` for false.
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Self::Value, E> {
                if value {
                    return Err(E::custom(
                        "`rate_limit: true` names no limit: use `N/SECONDS`",
                    ));
                }
                self.visit_str("off")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                let map =
                    RateLimitMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(RateLimitConfig {
                    limit: map.limit,
                    store: map.store,
                    redis_url: map.redis_url,
                    on_store_failure: map.on_store_failure,
                })
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The shared store a target's replicas use, resolved from `rate_limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitStore {
    /// `KIT_RATE_LIMIT_STORE`.
    pub url: String,
    pub on_failure: StoreFailureMode,
    /// deploy-kit runs this Redis itself (compose: a `redis` service, or a
    /// `redis-server` process with `--runtime processes`).
    pub provisioned: bool,
}

/// The host name of the Redis the compose engine provisions.
pub const COMPOSE_REDIS_URL: &str = "redis://redis:6379/0";

impl RateLimitConfig {
    /// `N/SECONDS` unless `off` or unset.
    pub fn limit(&self) -> Option<&str> {
        self.limit
            .as_deref()
            .filter(|limit| !limit.eq_ignore_ascii_case("off"))
    }

    /// The shared store on `platform`: `None` for `store: local`; an error
    /// (message, hint) when `store: redis` has no Redis to use.
    pub fn store(&self, platform: Platform) -> Result<Option<RateLimitStore>, (String, String)> {
        if self.store == RateLimitStoreKind::Local {
            if self.redis_url.is_some() {
                return Err((
                    "`rate_limit.redis_url` is set but `rate_limit.store` is `local`".into(),
                    "set `rate_limit.store: redis` to share the limit, or remove `redis_url`"
                        .into(),
                ));
            }
            return Ok(None);
        }
        if let Some(url) = &self.redis_url {
            let parsed = url::Url::parse(url).map_err(|error| {
                (
                    format!("`rate_limit.redis_url` is not a URL: {error}"),
                    "write it as `redis://HOST:PORT/DB`".to_string(),
                )
            })?;
            if parsed.scheme() != "redis" || parsed.host_str().is_none() {
                return Err((
                    format!("`rate_limit.redis_url` `{url}` is not a `redis://HOST:PORT` URL"),
                    "write it as `redis://HOST:PORT/DB` (TLS `rediss://` is not supported)".into(),
                ));
            }
            if parsed.password().is_some() {
                return Err((
                    "`rate_limit.redis_url` holds a password, and `deploy-kit.yaml` holds no secrets".into(),
                    "use a Redis reachable only from the service's network without a password, or set `KIT_RATE_LIMIT_STORE` as a secret on the platform".into(),
                ));
            }
            return Ok(Some(RateLimitStore {
                url: url.clone(),
                on_failure: self.on_store_failure,
                provisioned: false,
            }));
        }
        if platform == Platform::Compose {
            return Ok(Some(RateLimitStore {
                url: COMPOSE_REDIS_URL.to_string(),
                on_failure: self.on_store_failure,
                provisioned: true,
            }));
        }
        Err((
            format!(
                "`rate_limit.store: redis` needs `rate_limit.redis_url` on platform `{}`: deploy-kit provisions a Redis only for compose",
                platform.name()
            ),
            "set `rate_limit.redis_url: redis://HOST:PORT/DB` to your Redis (Memorystore, ElastiCache, Upstash), or `store: local`".into(),
        ))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Names every resource deploy-kit creates (bucket policies, roles,
    /// functions, Deployments); lower-case letters, digits and `-`.
    #[serde(default = "service_name")]
    pub name: String,
    /// Container image the platforms run; default `<name>:<deploy-kit version>`
    /// built from the repository's Dockerfile.
    #[serde(default)]
    pub image: Option<String>,
    /// Environment or stage (`dev`, `staging`, `prod`): rendered files go to
    /// `.deploy-kit/<environment>/<target>/`, state sits beside them.
    #[serde(default = "environment")]
    pub environment: String,
    /// The cargo package that builds the service (`cargo build -p`). Default:
    /// the workspace's only package with exactly one bin target, found with
    /// `cargo metadata --no-deps` at `workspace`; set it to render without cargo.
    #[serde(default)]
    pub package: Option<String>,
    /// The package's bin target that serves (`cargo build --bin`, the image's
    /// entrypoint, the Lambda `bootstrap`); default `package`.
    #[serde(default)]
    pub binary: Option<String>,
    /// Cargo features of `package` every build turns on; deploy-kit adds the
    /// platform's own (`lambda` on Lambda, `s3` with S3 storage).
    #[serde(default)]
    pub features: Vec<String>,
    /// The cargo workspace root, relative to this file: the Docker build
    /// context and where `cargo metadata` and `up local`'s build run.
    #[serde(default = "workspace")]
    pub workspace: String,
    /// The image `deploy-kit build` puts the binary on (a glibc image with
    /// `libgcc_s`); default [`DEFAULT_BASE_IMAGE`].
    #[serde(default)]
    pub base_image: Option<String>,
}

/// The default `service.base_image`: distroless with glibc and libgcc, nonroot.
pub const DEFAULT_BASE_IMAGE: &str = "gcr.io/distroless/cc-debian12:nonroot";

fn service_name() -> String {
    "kit-service".to_string()
}

fn environment() -> String {
    "dev".to_string()
}

fn workspace() -> String {
    ".".to_string()
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            name: service_name(),
            image: None,
            environment: environment(),
            package: None,
            binary: None,
            features: Vec::new(),
            workspace: workspace(),
            base_image: None,
        }
    }
}

impl ServiceConfig {
    /// The bin target: `binary`, else `package` (`None` when neither is set).
    pub fn binary(&self) -> Option<&str> {
        self.binary.as_deref().or(self.package.as_deref())
    }

    /// The cargo workspace root: `workspace` under `config_dir`.
    pub fn workspace_dir(&self, config_dir: &Path) -> PathBuf {
        let dir = if config_dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            config_dir
        };
        match self.workspace.as_str() {
            "." | "" => dir.to_path_buf(),
            workspace => dir.join(workspace),
        }
    }

    /// The image to deploy: `image`, or `<name>:<deploy-kit version>`.
    pub fn image(&self) -> String {
        self.image
            .clone()
            .unwrap_or_else(|| format!("{}:{}", self.name, env!("CARGO_PKG_VERSION")))
    }
}

/// How `up` provisions: the cloud SDKs, or the user's Pulumi CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    #[default]
    Native,
    Pulumi,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Where it runs: `cloud-run`, `aws-lambda-function-url`, `kubernetes`, ...
    pub platform: Platform,
    /// Most instances at once (max instances / replicas).
    #[serde(default = "one")]
    pub instances: u32,
    /// Server processes per instance.
    #[serde(default = "one")]
    pub workers: u32,
    /// Reachable from the internet.
    #[serde(default)]
    pub public: bool,
    /// Serves production traffic.
    #[serde(default)]
    pub production: bool,
    /// Address the service binds (`0.0.0.0:8080`).
    #[serde(default)]
    pub bind: Option<String>,
    /// Overrides the platform's SIGTERM-to-SIGKILL grace.
    #[serde(default)]
    pub termination_grace_seconds: Option<u64>,
    /// Base URLs of running replicas, for `doctor --online`.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// Rendered files to inspect, relative to this file.
    #[serde(default)]
    pub manifests: Vec<String>,
    /// Cloud region (aws, gcp, azure, fly primary region).
    #[serde(default)]
    pub region: Option<String>,
    /// GCP project id (cloud-run, cloud-functions).
    #[serde(default)]
    pub project: Option<String>,
    /// Kubernetes namespace (default `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Public host name: nginx `server_name`, Ingress host.
    #[serde(default)]
    pub host: Option<String>,
    /// `native` (cloud SDKs, the default) or `pulumi`.
    #[serde(default)]
    pub engine: Engine,
    /// The CPU the service runs on: `x86_64` (default) or `arm64`; what
    /// `deploy-kit build` compiles for and checks the binary against.
    #[serde(default)]
    pub architecture: Architecture,
}

/// A target's CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    #[default]
    #[serde(alias = "amd64")]
    X86_64,
    #[serde(alias = "aarch64")]
    Arm64,
}

impl Architecture {
    /// The name as AWS Lambda spells it (`x86_64`, `arm64`).
    pub fn name(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64",
            Architecture::Arm64 => "arm64",
        }
    }

    /// The Rust target a Linux (glibc) build uses.
    pub fn rust_target(self) -> &'static str {
        match self {
            Architecture::X86_64 => "x86_64-unknown-linux-gnu",
            Architecture::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The name in an OCI image config and platform (`amd64`, `arm64`).
    pub fn oci(self) -> &'static str {
        match self {
            Architecture::X86_64 => "amd64",
            Architecture::Arm64 => "arm64",
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `KIT_MAX_REQUEST_BYTES`.
    #[serde(default)]
    pub max_request_bytes: Option<u64>,
    /// `KIT_MAX_RESPONSE_BYTES`.
    #[serde(default)]
    pub max_response_bytes: Option<u64>,
    /// Results above this go to external storage.
    #[serde(default)]
    pub externalize_threshold_bytes: Option<u64>,
    /// `KIT_MAX_UPLOAD_BYTES`.
    #[serde(default)]
    pub max_upload_bytes: Option<u64>,
    /// Vend presigned upload URLs for large inputs.
    #[serde(default)]
    pub upload_urls: bool,
    /// `KIT_REQUEST_TIMEOUT`.
    #[serde(default = "request_timeout")]
    pub request_timeout_seconds: u64,
    /// Longest a stream may stay open.
    #[serde(default)]
    pub stream_timeout_seconds: Option<u64>,
    /// `KIT_SHUTDOWN_GRACE`.
    #[serde(default = "shutdown_grace")]
    pub shutdown_grace_seconds: u64,
}

fn request_timeout() -> u64 {
    300
}

fn shutdown_grace() -> u64 {
    30
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_bytes: None,
            max_response_bytes: None,
            externalize_threshold_bytes: None,
            max_upload_bytes: None,
            upload_urls: false,
            request_timeout_seconds: request_timeout(),
            stream_timeout_seconds: None,
            shutdown_grace_seconds: shutdown_grace(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Refuse calls without a valid API key.
    #[serde(default)]
    pub required: bool,
    /// Secret reference holding `name=key` lines (becomes `KIT_API_KEYS_FILE`).
    #[serde(default)]
    pub api_keys: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Allowed browser origins; `*` is refused together with auth.
    #[serde(default)]
    pub origins: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialKind {
    StaticKeys,
    AssumedRole,
    InstanceRole,
    ServiceAccount,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `s3`, `gcs`, `r2` or `s3-compatible`.
    pub provider: StorageProvider,
    pub bucket: String,
    /// Prefix of every object the service writes (`vgi-rpc/`).
    pub prefix: String,
    /// Endpoint the presigned URLs point at; defaults to the provider's https endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Lifecycle expiration on `prefix`, days.
    #[serde(default)]
    pub expiry_days: Option<u32>,
    /// Lifecycle rule aborting incomplete multipart uploads, days.
    #[serde(default)]
    pub abort_multipart_days: Option<u32>,
    /// Lifetime of presigned URLs.
    #[serde(default = "presign_ttl")]
    pub presign_ttl_seconds: u64,
    /// What signs the URLs: `static-keys`, `assumed-role`, `instance-role`, `service-account`.
    pub credential: CredentialKind,
    /// Session length of an `assumed-role` credential.
    #[serde(default)]
    pub session_seconds: Option<u64>,
    /// Origins the bucket's CORS rule allows (browser uploads and downloads).
    #[serde(default)]
    pub cors_origins: Vec<String>,
}

fn presign_ttl() -> u64 {
    3600
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeySourceKind {
    /// No key: a random one per process (single instance only).
    #[default]
    Ephemeral,
    /// An environment variable the platform injects.
    Env,
    /// A mounted secret file.
    File,
    /// A secret manager reference.
    Secret,
    /// The key written here (always flagged by KEY003).
    Literal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// `ephemeral`, `env`, `file`, `secret` or `literal`.
    #[serde(default)]
    pub source: KeySourceKind,
    /// With `source: env`: the variable (default `VGI_SIGNING_KEY`).
    #[serde(default)]
    pub env: Option<String>,
    /// With `source: file`: the mounted path.
    #[serde(default)]
    pub path: Option<String>,
    /// With `source: secret`: the reference (`gcp:projects/p/secrets/vgi-signing-key`).
    #[serde(default)]
    pub secret: Option<String>,
    /// With `source: literal`: the key itself (don't).
    #[serde(default)]
    pub value: Option<String>,
    /// `KIT_TOKEN_TTL`: lifetime of stream tokens, 0 = never expire.
    #[serde(default = "token_ttl")]
    pub token_ttl_seconds: u64,
    /// Keys still accepted for verification after a rotation.
    #[serde(default)]
    pub previous: Vec<PreviousKeyConfig>,
}

fn token_ttl() -> u64 {
    3600
}

impl Default for SigningKeyConfig {
    fn default() -> Self {
        SigningKeyConfig {
            source: KeySourceKind::Ephemeral,
            env: None,
            path: None,
            secret: None,
            value: None,
            token_ttl_seconds: token_ttl(),
            previous: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousKeyConfig {
    /// Where the previous key comes from (a secret reference or version).
    #[serde(default)]
    pub secret: Option<String>,
    /// The day it stopped signing (`YYYY-MM-DD`).
    #[serde(default)]
    pub retired: Option<Date>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaiverConfig {
    /// Check id or alias.
    pub id: String,
    pub reason: String,
    /// `YYYY-MM-DD`, at most 90 days ahead.
    pub expires: Date,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("failed to parse `{path}`: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("`{path}`: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl DeployConfig {
    pub fn load(path: &Path) -> Result<DeployConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        DeployConfig::parse(&text, path)
    }

    /// Parses and validates; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<DeployConfig, ConfigError> {
        let config: DeployConfig =
            serde_saphyr::from_str(text).map_err(|error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: error
                    .to_string()
                    .trim_start_matches("error: ")
                    .replace("<input>", &path.display().to_string()),
            })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        if config.version != CONFIG_VERSION {
            return Err(invalid(format!(
                "`version: {}` is not supported; this deploy-kit reads `version: {CONFIG_VERSION}`",
                config.version
            )));
        }
        let name = &config.service.name;
        if name.is_empty()
            || name.len() > 40
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || name.starts_with('-')
            || name.ends_with('-')
        {
            return Err(invalid(format!(
                "`service.name: {name}` must be 1-40 lower-case letters, digits and `-`, not starting or ending with `-` (it names buckets' roles, functions and Deployments)"
            )));
        }
        let cargo_name = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let service = &config.service;
        for (key, value) in [
            ("package", service.package.as_deref()),
            ("binary", service.binary.as_deref()),
        ] {
            if let Some(value) = value
                && !cargo_name(value)
            {
                return Err(invalid(format!(
                    "`service.{key}: {value}` is not a cargo name (letters, digits, `-` and `_`)"
                )));
            }
        }
        if let Some(feature) = service.features.iter().find(|f| {
            f.is_empty()
                || !f
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_+./".contains(&b))
        }) {
            return Err(invalid(format!(
                "`service.features` entry `{feature}` is not a cargo feature name"
            )));
        }
        if config.targets.is_empty() {
            return Err(invalid("`targets` is empty; define at least one".into()));
        }
        if let Some(default) = &config.default_target
            && !config.targets.contains_key(default)
        {
            return Err(invalid(format!(
                "`default_target: {default}` names no entry of `targets`"
            )));
        }
        let key = &config.signing_key;
        let needed = match key.source {
            KeySourceKind::File => key.path.is_none().then_some("path"),
            KeySourceKind::Secret => key.secret.is_none().then_some("secret"),
            KeySourceKind::Literal => key.value.is_none().then_some("value"),
            KeySourceKind::Ephemeral | KeySourceKind::Env => None,
        };
        if let Some(field) = needed {
            return Err(invalid(format!(
                "`signing_key.source` needs `signing_key.{field}`"
            )));
        }
        if config.auth.required && config.auth.api_keys.is_none() {
            return Err(invalid(
                "`auth.required: true` needs `auth.api_keys` (a secret reference)".into(),
            ));
        }
        if let Some(storage) = &config.storage
            && storage.provider == StorageProvider::S3Compatible
            && storage.endpoint.is_none()
        {
            return Err(invalid(
                "`storage.provider: s3-compatible` needs `storage.endpoint`".into(),
            ));
        }
        if let Some(storage) = &config.storage
            && storage.credential == CredentialKind::AssumedRole
            && storage.session_seconds.is_none()
        {
            return Err(invalid(
                "`storage.credential: assumed-role` needs `storage.session_seconds`".into(),
            ));
        }
        Ok(config)
    }

    /// The target to judge: the given name, else `default_target`, else the only one.
    pub fn target(&self, name: Option<&str>) -> Result<(&str, &TargetConfig), String> {
        let name = match name.or(self.default_target.as_deref()) {
            Some(name) => name,
            None if self.targets.len() == 1 => self.targets.keys().next().expect("one"),
            None => {
                return Err(format!(
                    "several targets ({}) and no `default_target`; pick one with `--target`",
                    self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        };
        self.targets
            .get_key_value(name)
            .map(|(name, target)| (name.as_str(), target))
            .ok_or_else(|| {
                format!(
                    "no target `{name}`; known: {}",
                    self.targets.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeployConfig, String> {
        DeployConfig::parse(text, Path::new("deploy-kit.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = parse("version: 1\ntargets:\n  local:\n    platform: compose\n").unwrap();
        assert_eq!(config.limits.request_timeout_seconds, 300);
        assert!(config.reflection);
        assert_eq!(config.target(None).unwrap().0, "local");
    }

    #[test]
    fn rate_limit_is_a_string_or_a_map_with_a_store() {
        let rate = |text: &str| {
            parse(&format!(
                "version: 1\ntargets:\n  t:\n    platform: compose\n{text}"
            ))
            .map(|config| config.rate_limit.unwrap())
        };
        assert_eq!(
            rate("rate_limit: 100/60\n").unwrap().limit(),
            Some("100/60")
        );
        assert_eq!(rate("rate_limit: off\n").unwrap().limit(), None);
        let shared =
            rate("rate_limit:\n  limit: 10/1\n  store: redis\n  on_store_failure: closed\n")
                .unwrap();
        assert_eq!(shared.limit(), Some("10/1"));
        assert_eq!(
            shared.store(Platform::Compose).unwrap(),
            Some(RateLimitStore {
                url: COMPOSE_REDIS_URL.into(),
                on_failure: StoreFailureMode::Closed,
                provisioned: true,
            })
        );
        let error = shared.store(Platform::CloudRun).unwrap_err();
        assert!(error.0.contains("`rate_limit.redis_url`"), "{error:?}");
        let external =
            rate("rate_limit:\n  store: redis\n  redis_url: redis://10.0.0.5:6379/0\n").unwrap();
        let store = external.store(Platform::CloudRun).unwrap().unwrap();
        assert_eq!(store.url, "redis://10.0.0.5:6379/0");
        assert!(!store.provisioned);
        assert_eq!(store.on_failure, StoreFailureMode::Open);
        let secret = rate("rate_limit:\n  store: redis\n  redis_url: redis://:pw@10.0.0.5:6379\n")
            .unwrap()
            .store(Platform::Kubernetes)
            .unwrap_err();
        assert!(secret.0.contains("password"), "{secret:?}");
        let error = rate("rate_limit:\n  limit: 10/1\n  stroe: redis\n").unwrap_err();
        assert!(error.contains("stroe"), "{error}");
        assert!(rate("rate_limit:\n  store: memcached\n").is_err());
    }

    #[test]
    fn unknown_keys_are_refused_with_line_and_column() {
        let error =
            parse("version: 1\ntargets:\n  local:\n    platform: compose\n    replicaz: []\n")
                .unwrap_err();
        assert!(error.contains("line 5 column 5"), "{error}");
        assert!(error.contains("unknown field `replicaz`"), "{error}");
        assert!(error.contains("deploy-kit.yaml:5:5"), "{error}");
    }

    #[test]
    fn bad_values_point_at_their_place() {
        let error = parse("version: 1\ntargets:\n  local:\n    platform: heroku\n").unwrap_err();
        assert!(error.contains("line 4 column 15"), "{error}");
        let error = parse(
            "version: 1\ntargets:\n  l:\n    platform: fly\nwaivers:\n  - id: SEC001\n    reason: r\n    expires: soon\n",
        )
        .unwrap_err();
        assert!(
            error.contains("line 8") && error.contains("YYYY-MM-DD"),
            "{error}"
        );
    }

    #[test]
    fn artifact_keys_default_and_refuse_non_cargo_names() {
        let config = parse("version: 1\ntargets:\n  l:\n    platform: fly\n").unwrap();
        assert_eq!(config.service.package, None);
        assert_eq!(config.service.binary(), None);
        assert_eq!(config.service.workspace, ".");
        assert_eq!(config.service.workspace_dir(Path::new("")), Path::new("."));
        let config = parse(
            "version: 1\nservice:\n  package: acme-rpc\n  features: [fast]\n  workspace: ..\ntargets:\n  l:\n    platform: fly\n",
        )
        .unwrap();
        assert_eq!(config.service.binary(), Some("acme-rpc"));
        assert_eq!(
            config.service.workspace_dir(Path::new("/repo/deploy")),
            Path::new("/repo/deploy/..")
        );
        let error =
            parse("version: 1\nservice:\n  package: acme rpc\ntargets:\n  l:\n    platform: fly\n")
                .unwrap_err();
        assert!(
            error.contains("`service.package: acme rpc` is not a cargo name"),
            "{error}"
        );
        let error = parse(
            "version: 1\nservice:\n  features: [\"a b\"]\ntargets:\n  l:\n    platform: fly\n",
        )
        .unwrap_err();
        assert!(
            error.contains("`a b` is not a cargo feature name"),
            "{error}"
        );
    }

    #[test]
    fn version_and_cross_field_rules() {
        assert!(
            parse("version: 2\ntargets:\n  l:\n    platform: fly\n")
                .unwrap_err()
                .contains("version: 2")
        );
        assert!(
            parse(
                "version: 1\ntargets:\n  l:\n    platform: fly\nsigning_key:\n  source: secret\n"
            )
            .unwrap_err()
            .contains("signing_key.secret")
        );
        let config =
            parse("version: 1\ntargets:\n  a:\n    platform: fly\n  b:\n    platform: compose\n")
                .unwrap();
        assert!(config.target(None).unwrap_err().contains("pick one"));
        assert_eq!(config.target(Some("b")).unwrap().0, "b");
        assert!(
            config
                .target(Some("c"))
                .unwrap_err()
                .contains("no target `c`")
        );
    }
}
