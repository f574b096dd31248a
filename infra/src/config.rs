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
    /// Where targets' state (and its lock) is kept: `local` (default:
    /// `.deploy-kit/` beside this file), `s3://bucket/prefix` or
    /// `gs://bucket/prefix`; `--state` and `DEPLOY_KIT_STATE` override it.
    #[serde(default)]
    pub state: Option<String>,
    /// Named environments (`staging`, `production`), each overlaying this
    /// file: maps merge key by key, lists and values replace. `--env` (or
    /// `DEPLOY_KIT_ENV`) picks one; it becomes `service.environment`. Kept
    /// raw here; [`DeployConfig::parse`] returns the chosen one merged.
    #[serde(default)]
    pub environments: BTreeMap<String, serde_json::Value>,
    /// How `deploy-kit build` makes and ships artifacts.
    #[serde(default)]
    pub build: BuildConfig,
}

/// `build:`: settings of `deploy-kit build`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// How the push to `service.image`'s registry logs in (see [`RegistryAuth`]).
    #[serde(default)]
    pub registry_auth: RegistryAuth,
    /// What makes and pushes images (see [`BuildEngine`]).
    #[serde(default)]
    pub engine: BuildEngine,
}

/// `build.engine`: what turns the checked binary into a pushed image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildEngine {
    /// deploy-kit itself: the image assembled and pushed over the OCI
    /// distribution API, no daemon.
    #[default]
    Native,
    /// The Docker CLI (`DOCKER`, else `docker` on `PATH`; podman works
    /// too): a rendered Dockerfile built with `buildx build --push`, or
    /// `build` then `push` without buildx, and the pushed digest read back.
    Docker,
}

impl BuildEngine {
    /// The name in `deploy-kit.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            BuildEngine::Native => "native",
            BuildEngine::Docker => "docker",
        }
    }
}

/// `build.registry_auth`: where registry credentials come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RegistryAuth {
    /// By the registry's host: `<account>.dkr.ecr.<region>.amazonaws.com`
    /// logs in with ECR and `*-docker.pkg.dev` with a Google access token,
    /// unless the docker config file holds credentials for it; any other
    /// registry uses the docker config file.
    #[default]
    Auto,
    /// The docker/podman config file only (`docker login`, credential helpers).
    DockerConfig,
    /// ECR `GetAuthorizationToken` with the AWS credentials, whatever the host.
    Ecr,
    /// A Google OAuth access token (user `oauth2accesstoken`), whatever the host.
    ArtifactRegistry,
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
    /// More than one CPU (image targets): one image per architecture and
    /// an OCI image index over them, deployed by the index's digest.
    /// Replaces `architecture` when set.
    #[serde(default)]
    pub architectures: Vec<Architecture>,
    /// Cloud Run sizing (`cloud-run` targets only): cpu, memory, requests
    /// per instance, warm instances. Max instances is `instances`, the
    /// request timeout `limits.request_timeout_seconds`.
    #[serde(default)]
    pub cloud_run: Option<CloudRunConfig>,
}

/// `targets.<name>.cloud_run`: what each Cloud Run instance gets.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudRunConfig {
    /// vCPUs per instance: `1`, `2`, `4`, `6`, `8`, or millicores below one
    /// (`500m`, which needs `concurrency: 1`).
    #[serde(default = "cloud_run_cpu")]
    pub cpu: String,
    /// Memory per instance, `Mi` or `Gi` (`512Mi`, `2Gi`).
    #[serde(default = "cloud_run_memory")]
    pub memory: String,
    /// Requests one instance serves at once (`maxInstanceRequestConcurrency`), 1-1000.
    #[serde(default = "cloud_run_concurrency")]
    pub concurrency: u32,
    /// Instances kept warm (`minInstanceCount`), at most `instances`.
    #[serde(default)]
    pub min_instances: u32,
}

fn cloud_run_cpu() -> String {
    "1".into()
}

fn cloud_run_memory() -> String {
    "512Mi".into()
}

fn cloud_run_concurrency() -> u32 {
    80
}

impl Default for CloudRunConfig {
    fn default() -> CloudRunConfig {
        CloudRunConfig {
            cpu: cloud_run_cpu(),
            memory: cloud_run_memory(),
            concurrency: cloud_run_concurrency(),
            min_instances: 0,
        }
    }
}

/// Cloud Run's longest request timeout.
pub const CLOUD_RUN_MAX_TIMEOUT_SECONDS: u64 = 3600;

impl CloudRunConfig {
    /// The vCPUs as millicores: `1` -> 1000, `500m` -> 500.
    pub fn cpu_millis(&self) -> Option<u32> {
        let cpu = self.cpu.trim();
        match cpu.strip_suffix('m') {
            Some(millis) => millis.parse().ok(),
            None => cpu.parse::<u32>().ok().and_then(|c| c.checked_mul(1000)),
        }
    }

    /// The memory in MiB: `512Mi` -> 512, `2Gi` -> 2048.
    pub fn memory_mib(&self) -> Option<u32> {
        let memory = self.memory.trim();
        if let Some(mib) = memory.strip_suffix("Mi") {
            return mib.parse().ok();
        }
        memory
            .strip_suffix("Gi")
            .and_then(|gib| gib.parse::<u32>().ok())
            .and_then(|gib| gib.checked_mul(1024))
    }

    /// Cloud Run's rules for these settings, `instances` (max instances)
    /// and the request timeout, each broken one named.
    pub fn check(&self, instances: u32, timeout_seconds: u64) -> Result<(), String> {
        let millis = self
            .cpu_millis()
            .filter(|m| (80..1000).contains(m) || [1000, 2000, 4000, 6000, 8000].contains(m));
        let Some(millis) = millis else {
            return Err(format!(
                "`cloud_run.cpu: {}` must be `1`, `2`, `4`, `6`, `8` or millicores from `80m` to `999m`",
                self.cpu
            ));
        };
        let Some(mib) = self.memory_mib().filter(|m| (128..=32 * 1024).contains(m)) else {
            return Err(format!(
                "`cloud_run.memory: {}` must be `128Mi` to `32Gi`, written with `Mi` or `Gi`",
                self.memory
            ));
        };
        // Cloud Run's memory ceiling per CPU, and the floors of 4+ CPUs.
        let (floor, ceiling) = match millis {
            0..=999 => (128, 1024),
            1000 => (128, 4 * 1024),
            2000 => (128, 8 * 1024),
            4000 => (2 * 1024, 16 * 1024),
            6000 => (4 * 1024, 24 * 1024),
            _ => (4 * 1024, 32 * 1024),
        };
        if !(floor..=ceiling).contains(&mib) {
            return Err(format!(
                "`cloud_run.memory: {}` does not fit `cloud_run.cpu: {}`: Cloud Run allows {floor}Mi to {ceiling}Mi with that CPU",
                self.memory, self.cpu
            ));
        }
        if !(1..=1000).contains(&self.concurrency) {
            return Err(format!(
                "`cloud_run.concurrency: {}` must be 1 to 1000",
                self.concurrency
            ));
        }
        if millis < 1000 && self.concurrency != 1 {
            return Err(format!(
                "`cloud_run.cpu: {}` is below one vCPU, which Cloud Run allows only with `concurrency: 1`",
                self.cpu
            ));
        }
        if self.min_instances > instances {
            return Err(format!(
                "`cloud_run.min_instances: {}` is above `instances: {instances}` (the maximum)",
                self.min_instances
            ));
        }
        if !(1..=CLOUD_RUN_MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
            return Err(format!(
                "`limits.request_timeout_seconds: {timeout_seconds}` is beyond Cloud Run's 1 to {CLOUD_RUN_MAX_TIMEOUT_SECONDS} seconds"
            ));
        }
        Ok(())
    }
}

impl TargetConfig {
    /// What the target is built for: `architectures` (duplicates dropped,
    /// order kept), else `architecture`.
    pub fn built_architectures(&self) -> Vec<Architecture> {
        let mut out = Vec::new();
        for architecture in &self.architectures {
            if !out.contains(architecture) {
                out.push(*architecture);
            }
        }
        if out.is_empty() {
            out.push(self.architecture);
        }
        out
    }
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
    /// Secret reference holding `name=key[;expires=...][;scopes=...]` lines
    /// (becomes `KIT_API_KEYS_FILE`; format in `kit_checks::api_keys`).
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
    /// `KIT_TOKEN_MODE`: `signed` (default; the caller can read the state) or
    /// `sealed` (XChaCha20-Poly1305; it cannot). Same key, ids and rotation.
    #[serde(default)]
    pub token_mode: TokenModeConfig,
    /// Keys still accepted for verification after a rotation.
    #[serde(default)]
    pub previous: Vec<PreviousKeyConfig>,
}

/// How the service mints stream-state tokens (`signing_key.token_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenModeConfig {
    /// HMAC-SHA256: tamper-proof, readable.
    #[default]
    Signed,
    /// XChaCha20-Poly1305: tamper-proof and confidential.
    Sealed,
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
            token_mode: TokenModeConfig::Signed,
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

    /// Parses and validates, for the environment chosen by `--env` /
    /// `DEPLOY_KIT_ENV` (see [`select_environment`]); `path` only names the
    /// file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<DeployConfig, ConfigError> {
        DeployConfig::parse_in(text, path, selected_environment().as_deref())
    }

    /// Parses and validates the config of `environment` (default
    /// `service.environment`): with `environments:`, every environment is
    /// merged and validated, and two that would share a bucket prefix or a
    /// secret are refused, whichever is chosen.
    pub fn parse_in(
        text: &str,
        path: &Path,
        environment: Option<&str>,
    ) -> Result<DeployConfig, ConfigError> {
        let base: DeployConfig =
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
        if base.environments.is_empty() {
            base.validate(path)?;
            return match environment {
                Some(chosen) if chosen != base.service.environment => Err(invalid(format!(
                    "no environment `{chosen}`: the file has no `environments:` and deploys `{}` only",
                    base.service.environment
                ))),
                _ => Ok(base),
            };
        }
        let mut all = BTreeMap::new();
        for name in base.environments.keys() {
            all.insert(name.clone(), base.overlay(text, path, name)?);
        }
        distinct_environments(&all).map_err(invalid)?;
        let chosen = environment.unwrap_or(&base.service.environment);
        all.remove(chosen).ok_or_else(|| {
            invalid(format!(
                "no environment `{chosen}`; known: {} (pick one with `--env` or `DEPLOY_KIT_ENV`)",
                base.environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The file with `environments.<name>` merged over it.
    fn overlay(&self, text: &str, path: &Path, name: &str) -> Result<DeployConfig, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: format!("environment `{name}`: {message}"),
        };
        if !valid_name(name) {
            return Err(invalid(
                "environment names are 1-20 lower-case letters, digits and `-` (they name resources)".into(),
            ));
        }
        let mut value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|error| ConfigError::Parse {
                path: path.to_path_buf(),
                message: error.to_string(),
            })?;
        let root = value.as_object_mut().expect("a config is a map");
        let overlay = root
            .remove("environments")
            .and_then(|mut all| all.get_mut(name).map(serde_json::Value::take))
            .unwrap_or_default();
        match &overlay {
            serde_json::Value::Object(map) => {
                for key in ["version", "environments", "state"] {
                    if map.contains_key(key) {
                        return Err(invalid(format!("`{key}` cannot differ per environment")));
                    }
                }
                if map
                    .get("service")
                    .and_then(|s| s.get("environment"))
                    .is_some()
                {
                    return Err(invalid(
                        "`service.environment` is the environment's name; drop it from the overlay"
                            .into(),
                    ));
                }
            }
            serde_json::Value::Null => {}
            _ => return Err(invalid("must be a map of keys to override".into())),
        }
        merge(&mut value, overlay);
        value["service"]["environment"] = serde_json::Value::String(name.to_string());
        let config: DeployConfig =
            serde_json::from_value(value).map_err(|error| invalid(error.to_string()))?;
        config.validate(path).map_err(|error| match error {
            ConfigError::Invalid { message, .. } => invalid(message),
            other => other,
        })?;
        Ok(config)
    }

    /// The checks every parsed (and merged) config must pass.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let config = self;
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
        if let Some(state) = &config.state
            && let Err(error) = crate::state::StateLocation::parse(state)
        {
            return Err(invalid(format!(
                "`state: {state}`: {error}; use `local`, `s3://BUCKET/PREFIX` or `gs://BUCKET/PREFIX`"
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
        for (name, target) in &config.targets {
            if let Some(region) = &target.region {
                crate::regions::check(target.platform, region)
                    .map_err(|error| invalid(format!("`targets.{name}`: {error}")))?;
            }
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
        for (name, target) in &config.targets {
            match (&target.cloud_run, target.platform) {
                (None, _) => {}
                (Some(cloud_run), Platform::CloudRun) => cloud_run
                    .check(target.instances, config.limits.request_timeout_seconds)
                    .map_err(|message| invalid(format!("target `{name}`: {message}")))?,
                (Some(_), platform) => {
                    return Err(invalid(format!(
                        "target `{name}`: `cloud_run` settings are for `platform: cloud-run`, not `{}`",
                        platform.name()
                    )));
                }
            }
        }
        Ok(())
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

static SELECTED_ENVIRONMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Chooses the environment every later [`DeployConfig::parse`] returns
/// (`deploy-kit --env NAME`); the first call wins.
pub fn select_environment(name: &str) {
    let _ = SELECTED_ENVIRONMENT.set(name.to_string());
}

/// `--env` (through [`select_environment`]), else `DEPLOY_KIT_ENV`.
pub fn selected_environment() -> Option<String> {
    SELECTED_ENVIRONMENT.get().cloned().or_else(|| {
        std::env::var("DEPLOY_KIT_ENV")
            .ok()
            .filter(|v| !v.is_empty())
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Merges `overlay` into `base`: maps key by key, anything else replaced.
fn merge(base: &mut serde_json::Value, overlay: serde_json::Value) {
    match (base, overlay) {
        (serde_json::Value::Object(base), serde_json::Value::Object(overlay)) => {
            for (key, value) in overlay {
                merge(base.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (_, serde_json::Value::Null) => {}
        (base, overlay) => *base = overlay,
    }
}

/// Two environments must not share what `up` makes or `down` deletes: a
/// bucket prefix (one inside the other counts: lifecycle rules and
/// `down --delete-data` would reach the other's objects) or a secret.
fn distinct_environments(all: &BTreeMap<String, DeployConfig>) -> Result<(), String> {
    let names: Vec<&String> = all.keys().collect();
    for (i, a) in names.iter().enumerate() {
        for b in &names[i + 1..] {
            let (x, y) = (&all[*a], &all[*b]);
            if let (Some(s), Some(t)) = (&x.storage, &y.storage)
                && s.bucket == t.bucket
                && (s.prefix.starts_with(&t.prefix) || t.prefix.starts_with(&s.prefix))
            {
                return Err(format!(
                    "environments `{a}` and `{b}` share storage: bucket `{}` with prefixes `{}` and `{}`; give each its own bucket or a prefix that does not contain the other",
                    s.bucket, s.prefix, t.prefix
                ));
            }
            let secrets = |c: &DeployConfig| {
                let mut names = Vec::new();
                if c.signing_key.source == KeySourceKind::Secret
                    && let Some(secret) = &c.signing_key.secret
                {
                    names.push(("signing_key.secret", secret.clone()));
                }
                if let Some(keys) = &c.auth.api_keys {
                    names.push(("auth.api_keys", keys.clone()));
                }
                names
            };
            for (key, secret) in secrets(x) {
                if secrets(y).iter().any(|(_, other)| *other == secret) {
                    return Err(format!(
                        "environments `{a}` and `{b}` share the secret `{secret}` (`{key}`); rotating one would rotate both: give each its own"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DeployConfig, String> {
        DeployConfig::parse(text, Path::new("deploy-kit.yaml")).map_err(|e| e.to_string())
    }

    const ENVIRONMENTS: &str = "version: 1
service: {name: svc, environment: production}
targets:
  lambda: {platform: aws-lambda-function-url, region: us-east-1}
limits: {max_request_bytes: 1000000, request_timeout_seconds: 60}
storage: {provider: s3, bucket: svc-data, prefix: prod/, credential: instance-role}
signing_key: {source: secret, secret: aws:svc/production/signing-key}
environments:
  production: {}
  staging:
    limits: {max_request_bytes: 2000000}
    storage: {bucket: svc-staging-data}
    signing_key: {secret: aws:svc/staging/signing-key}
";

    fn parse_in(text: &str, environment: Option<&str>) -> Result<DeployConfig, String> {
        DeployConfig::parse_in(text, Path::new("deploy-kit.yaml"), environment)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn build_engine_is_native_unless_docker_is_asked_for() {
        let base = "version: 1\nservice: {name: svc, environment: ci}\ntargets: {web: {platform: kubernetes}}\n";
        assert_eq!(parse(base).unwrap().build.engine, BuildEngine::Native);
        let docker = parse(&format!("{base}build: {{engine: docker}}\n")).unwrap();
        assert_eq!(docker.build.engine, BuildEngine::Docker);
        assert_eq!(docker.build.engine.name(), "docker");
        let error = parse(&format!("{base}build: {{engine: buildah}}\n")).unwrap_err();
        assert!(
            error.contains(
                "line 4 column 17: unknown variant `buildah`, expected one of native, docker"
            ),
            "{error}"
        );
    }

    #[test]
    fn an_environment_overlays_the_base_map_by_map() {
        let staging = parse_in(ENVIRONMENTS, Some("staging")).unwrap();
        assert_eq!(staging.service.environment, "staging");
        assert_eq!(staging.limits.max_request_bytes, Some(2_000_000));
        // Untouched keys of an overlaid map stay.
        assert_eq!(staging.limits.request_timeout_seconds, 60);
        let storage = staging.storage.as_ref().unwrap();
        assert_eq!(storage.bucket, "svc-staging-data");
        assert_eq!(storage.prefix, "prod/");
        assert_eq!(
            staging.signing_key.secret.as_deref(),
            Some("aws:svc/staging/signing-key")
        );
        let production = parse_in(ENVIRONMENTS, None).unwrap();
        assert_eq!(production.service.environment, "production");
        assert_eq!(production.limits.max_request_bytes, Some(1_000_000));
        assert_eq!(production.storage.unwrap().bucket, "svc-data");
        let error = parse_in(ENVIRONMENTS, Some("qa")).unwrap_err();
        assert!(
            error.contains("no environment `qa`; known: production, staging"),
            "{error}"
        );
        let error = parse_in(
            "version: 1\ntargets: {a: {platform: compose}}\n",
            Some("qa"),
        )
        .unwrap_err();
        assert!(error.contains("has no `environments:`"), "{error}");
    }

    #[test]
    fn environments_that_would_share_a_bucket_prefix_or_a_secret_are_refused() {
        let shared_prefix = ENVIRONMENTS.replace(
            "storage: {bucket: svc-staging-data}",
            "storage: {prefix: prod/staging/}",
        );
        let error = parse_in(&shared_prefix, Some("production")).unwrap_err();
        assert!(
            error.contains("share storage: bucket `svc-data`"),
            "{error}"
        );
        let shared_secret = ENVIRONMENTS.replace(
            "signing_key: {secret: aws:svc/staging/signing-key}",
            "signing_key: {}",
        );
        let error = parse_in(&shared_secret, Some("staging")).unwrap_err();
        assert!(
            error.contains("share the secret `aws:svc/production/signing-key`"),
            "{error}"
        );
    }

    #[test]
    fn an_overlay_is_checked_like_the_file() {
        for (overlay, expected) in [
            ("version: 2", "`version` cannot differ"),
            (
                "service: {environment: x}",
                "`service.environment` is the environment's name",
            ),
            ("limits: {max_request_bytez: 1}", "max_request_bytez"),
            (
                "storage: {credential: assumed-role}",
                "needs `storage.session_seconds`",
            ),
            ("[1, 2]", "must be a map"),
        ] {
            let text =
                ENVIRONMENTS.replace("production: {}", &format!("production: {{{overlay}}}"));
            let text = if overlay.starts_with('[') {
                ENVIRONMENTS.replace("production: {}", "production: [1, 2]")
            } else {
                text
            };
            let error = parse_in(&text, Some("staging")).unwrap_err();
            assert!(
                error.contains("environment `production`"),
                "{overlay}: {error}"
            );
            assert!(error.contains(expected), "{overlay}: {error}");
        }
        let bad_name = ENVIRONMENTS.replace("production: {}", "Prod: {}");
        assert!(
            parse_in(&bad_name, Some("staging"))
                .unwrap_err()
                .contains("environment names")
        );
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

    #[test]
    fn cloud_run_sizing_is_checked_against_cloud_runs_rules() {
        let run = |block: &str| {
            parse(&format!(
                "version: 1\ntargets:\n  r:\n    platform: cloud-run\n    instances: 4\n    cloud_run: {block}\n"
            ))
        };
        let config = run("{cpu: '2', memory: 1Gi, concurrency: 20, min_instances: 1}").unwrap();
        let cloud_run = config.targets["r"].cloud_run.clone().unwrap();
        assert_eq!(
            (cloud_run.cpu_millis(), cloud_run.memory_mib()),
            (Some(2000), Some(1024))
        );
        assert_eq!(
            run("{}").unwrap().targets["r"].cloud_run,
            Some(CloudRunConfig::default())
        );
        run("{cpu: 500m, concurrency: 1}").unwrap();
        for (block, expect) in [
            ("{cpu: '3'}", "`cloud_run.cpu: 3`"),
            ("{memory: 512MB}", "`cloud_run.memory: 512MB`"),
            ("{cpu: '4', memory: 1Gi}", "2048Mi to 16384Mi"),
            ("{memory: 8Gi}", "128Mi to 4096Mi"),
            ("{concurrency: 0}", "`cloud_run.concurrency: 0`"),
            ("{cpu: 500m}", "only with `concurrency: 1`"),
            ("{min_instances: 5}", "above `instances: 4`"),
            ("{cpus: 2}", "cpus"),
        ] {
            let error = run(block).unwrap_err();
            assert!(error.contains(expect), "{block}: {error}");
        }
        let error = parse(
            "version: 1\nlimits: {request_timeout_seconds: 7200}\ntargets:\n  r:\n    platform: cloud-run\n    cloud_run: {}\n",
        )
        .unwrap_err();
        assert!(error.contains("request_timeout_seconds: 7200"), "{error}");
        let error =
            parse("version: 1\ntargets:\n  f:\n    platform: fly\n    cloud_run: {cpu: '1'}\n")
                .unwrap_err();
        assert!(error.contains("not `fly`"), "{error}");
    }
}
