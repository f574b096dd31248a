//! The plain data every check judges.
//!
//! `deploy-kit` builds [`Facts`] from `deploy-kit.yaml` and `kit-service`
//! builds them from its environment; the checks never read files, env or the
//! network themselves. Facts hold no secrets: a signing key enters only as the
//! [`KeyMaterial`] measurements taken from it.

use serde::{Deserialize, Serialize};

use crate::date::Date;
use crate::platform::Platform;
use crate::waiver::Waiver;

/// Everything the doctor knows about one deployment target.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// Where the settings came from (`deploy-kit.yaml`, `environment`); SARIF
    /// and GitHub annotations point at it.
    pub origin: String,
    /// The date waivers are judged against.
    pub today: Date,
    pub target: TargetFacts,
    pub limits: LimitFacts,
    pub signing_key: KeyFacts,
    pub storage: Option<StorageFacts>,
    pub security: SecurityFacts,
    /// Rendered manifests (k8s YAML, compose files, Dockerfiles).
    pub manifests: Vec<Manifest>,
    /// Base URLs of running replicas, for the online checks.
    pub replicas: Vec<String>,
    /// The URL the platform gave the deployment (a Function URL, a Cloud Run
    /// URL), when one was recorded: the smoke test's address when no
    /// replicas are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub waivers: Vec<Waiver>,
    /// The cargo package and bin target the deploy builds, when a cargo
    /// build is part of it (`None`: the service judging its own environment,
    /// or a prebuilt binary).
    pub artifact: Option<ArtifactFacts>,
    /// What the service's own configuration parser says about the
    /// environment rendered for it, one problem per line (`None`: not judged
    /// here, e.g. the service judging its own environment, which it already
    /// parsed to start).
    pub service_config_problems: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TargetFacts {
    pub name: String,
    pub platform: Platform,
    /// Most instances the target may run at once.
    pub instances: u32,
    /// Server processes per instance.
    pub workers: u32,
    /// Reachable from the internet.
    pub public: bool,
    /// Serves production traffic (stricter rules for reflection and debug).
    pub production: bool,
    /// The address the process binds, when known (`0.0.0.0:8080`).
    pub bind: Option<String>,
    /// Overrides the platform's default termination grace.
    pub termination_grace_seconds: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LimitFacts {
    pub max_request_bytes: Option<u64>,
    pub max_response_bytes: Option<u64>,
    /// Results above this go to external storage.
    pub externalize_threshold_bytes: Option<u64>,
    /// Upload URL vending for large inputs.
    pub upload_urls: bool,
    pub request_timeout_seconds: u64,
    /// Longest a whole stream may stay open, when limited.
    pub stream_timeout_seconds: Option<u64>,
    pub shutdown_grace_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KeySource {
    /// No key: each process draws a random one.
    Ephemeral,
    /// An environment variable injected by the platform (possibly from a secret).
    Env { variable: String },
    /// A mounted secret file.
    File { path: String },
    /// A secret manager reference (`gcp:...`, `aws:...`, `k8s:...`).
    SecretStore { reference: String },
    /// Written into the config itself.
    Literal,
}

/// Measurements of a key, never the key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyMaterial {
    pub length: usize,
    pub distinct_bytes: usize,
    /// Shannon entropy of the byte histogram, bits per byte.
    pub entropy_bits_per_byte: f64,
    /// Matches a known placeholder (`changeme`, `secret`, a repeated character).
    pub placeholder: bool,
}

const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "example",
    "placeholder",
    "replace-me",
    "replaceme",
    "your-signing-key",
    "your-secret-key",
    "signing-key",
    "dev-signing-key",
    "insecure",
    "todo",
    "xxx",
    "test",
];

impl KeyMaterial {
    /// Measures `secret` (already decoded from `hex:`/`base64:`).
    pub fn inspect(secret: &[u8]) -> KeyMaterial {
        let mut counts = [0usize; 256];
        for byte in secret {
            counts[usize::from(*byte)] += 1;
        }
        let length = secret.len();
        let entropy = if length == 0 {
            0.0
        } else {
            counts
                .iter()
                .filter(|c| **c > 0)
                .map(|c| {
                    let p = *c as f64 / length as f64;
                    -p * p.log2()
                })
                .sum()
        };
        let lowered = String::from_utf8_lossy(secret).to_ascii_lowercase();
        let stripped: String = lowered
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let placeholder = PLACEHOLDERS.iter().any(|p| {
            stripped == *p
                || (stripped.starts_with(p)
                    && stripped[p.len()..].chars().all(|c| !c.is_alphabetic()))
                || stripped.contains("changeme")
                || stripped.contains("placeholder")
                || stripped.contains("replace-me")
        });
        KeyMaterial {
            length,
            distinct_bytes: counts.iter().filter(|c| **c > 0).count(),
            entropy_bits_per_byte: entropy,
            placeholder,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PreviousKey {
    /// When this key stopped signing, if recorded.
    pub retired_on: Option<Date>,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeyFacts {
    pub source: KeySource,
    /// Present when the key itself is visible here (inside the container, or a literal).
    pub material: Option<KeyMaterial>,
    /// Fingerprint of the primary key when known (`/healthz` reports the same value).
    pub fingerprint: Option<String>,
    pub previous: Vec<PreviousKey>,
    /// Lifetime of stream tokens; 0 means tokens never expire.
    pub token_ttl_seconds: u64,
    /// `signed` or `sealed` (`KIT_TOKEN_MODE`), when known here.
    pub token_mode: Option<String>,
    /// `protocol/method` of every hosted stream whose author declared that
    /// its state may hold secrets (`Protocol::with_confidential_state`).
    /// Known only where the protocols are (`kit-service doctor`); `None`
    /// elsewhere.
    pub confidential_state: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageProvider {
    S3,
    Gcs,
    R2,
    /// Any other S3-compatible store (SeaweedFS, MinIO).
    S3Compatible,
}

/// The credential that signs presigned URLs; it bounds their lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Credential {
    /// Long-lived access keys (SigV4 and GCS V4 allow at most 7 days).
    StaticKeys,
    /// Temporary credentials from an assumed role: the URL dies with the session.
    AssumedRole { session_seconds: u64 },
    /// Instance or task role credentials, rotated about every 6 hours.
    InstanceRole,
    /// A GCS service account signing through IAM (V4: at most 7 days).
    ServiceAccount,
}

impl Credential {
    /// The longest presigned URL this credential can grant.
    pub fn max_presign_seconds(self) -> u64 {
        match self {
            Credential::StaticKeys | Credential::ServiceAccount => 7 * 24 * 3600,
            Credential::AssumedRole { session_seconds } => session_seconds,
            Credential::InstanceRole => 6 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageFacts {
    pub provider: StorageProvider,
    pub bucket: String,
    /// The prefix every object the service writes starts with.
    pub prefix: String,
    /// Base URL of download (and upload) URLs handed to clients.
    pub url_base: String,
    /// Lifecycle expiration the deploy sets on `prefix`, in days.
    pub expiry_days: Option<u32>,
    /// Lifecycle rule aborting incomplete multipart uploads, in days.
    pub abort_multipart_days: Option<u32>,
    pub presign_ttl_seconds: u64,
    pub credential: Credential,
    /// Origins the bucket's CORS configuration allows.
    pub cors_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecurityFacts {
    pub require_auth: bool,
    pub api_keys_configured: bool,
    /// Each API key's name, expiry and scopes, when the caller can read the
    /// keys (the service from its env; deploy-kit only from a local secret
    /// file). Never a key value.
    pub api_keys: Vec<crate::api_keys::KeyFacts>,
    pub cors_origins: Vec<String>,
    /// `N/SECONDS`, or `None` when off.
    pub rate_limit: Option<String>,
    pub reflection: bool,
    /// Debug logging or debug endpoints.
    pub debug: bool,
    /// Tracebacks sent to clients in error batches.
    pub tracebacks: bool,
}

/// One rendered file.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub path: String,
    pub text: String,
}

impl Manifest {
    pub fn kind(&self) -> ManifestKind {
        let name = self
            .path
            .rsplit('/')
            .next()
            .unwrap_or(&self.path)
            .to_ascii_lowercase();
        if name.starts_with("dockerfile") || name.ends_with(".dockerfile") {
            ManifestKind::Dockerfile
        } else if name.contains("compose") {
            ManifestKind::Compose
        } else if self.text.contains("kind: Deployment") || self.text.contains("kind: StatefulSet")
        {
            ManifestKind::KubernetesWorkload
        } else {
            ManifestKind::Other
        }
    }
}

/// What deploy-kit builds (`service.package`, `service.binary`,
/// `service.features`) and what `cargo metadata` found in the workspace.
#[derive(Debug, Clone, Serialize)]
pub struct ArtifactFacts {
    /// The cargo workspace root as configured (`service.workspace`), for messages.
    pub workspace: String,
    /// The package to build; `None` when the config names none and the
    /// workspace has no single candidate.
    pub package: Option<String>,
    /// The bin target to run; `None` like `package`.
    pub binary: Option<String>,
    /// Every feature the build turns on, with who asks for it.
    pub features: Vec<RequiredFeature>,
    pub cargo: CargoWorkspace,
}

/// One cargo feature the build turns on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequiredFeature {
    pub name: String,
    /// Who asks for it: `service.features`, or the platform (`aws-lambda-function-url`).
    pub wanted_by: String,
}

/// The workspace as `cargo metadata --no-deps` reports it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CargoWorkspace {
    Found {
        packages: Vec<CargoPackage>,
    },
    /// `cargo metadata` could not run (no cargo, no `Cargo.toml`): why, and the fix.
    Unavailable {
        reason: String,
    },
}

/// One workspace member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CargoPackage {
    pub name: String,
    /// Its bin targets.
    pub bins: Vec<String>,
    /// Its features (`[features]` keys).
    pub features: Vec<String>,
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl ArtifactFacts {
    /// What is wrong with the artifact against `packages`, naming the
    /// missing thing and listing what exists; `None` when it builds.
    /// `deploy-kit` uses the same words for its errors.
    pub fn problem(&self, packages: &[CargoPackage]) -> Option<String> {
        let workspace = &self.workspace;
        let Some(package_name) = &self.package else {
            let candidates: Vec<String> = packages
                .iter()
                .filter(|p| !p.bins.is_empty())
                .map(|p| format!("{} (bins: {})", p.name, p.bins.join(", ")))
                .collect();
            return Some(format!(
                "`service.package` is not set and the cargo workspace `{workspace}` has no single package with one bin target to default to; candidates: {}",
                listed(&candidates)
            ));
        };
        let Some(package) = packages.iter().find(|p| &p.name == package_name) else {
            let names: Vec<String> = packages.iter().map(|p| p.name.clone()).collect();
            return Some(format!(
                "no package `{package_name}` in the cargo workspace `{workspace}`; its packages: {}",
                listed(&names)
            ));
        };
        let binary = self.binary.as_ref().unwrap_or(package_name);
        if !package.bins.contains(binary) {
            return Some(format!(
                "package `{package_name}` has no bin target `{binary}`; its bin targets: {}",
                listed(&package.bins)
            ));
        }
        let missing: Vec<String> = self
            .features
            .iter()
            .filter(|f| !package.features.contains(&f.name))
            .map(|f| format!("`{}` (wanted by {})", f.name, f.wanted_by))
            .collect();
        if !missing.is_empty() {
            return Some(format!(
                "package `{package_name}` has no feature {}; its features: {}",
                missing.join(", "),
                listed(&package.features)
            ));
        }
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    Dockerfile,
    Compose,
    KubernetesWorkload,
    Other,
}

impl Facts {
    /// Facts for a single, private, well-configured instance; tests and
    /// callers start here and change what they judge.
    pub fn baseline(today: Date) -> Facts {
        Facts {
            origin: "deploy-kit.yaml".into(),
            today,
            target: TargetFacts {
                name: "local".into(),
                platform: Platform::Compose,
                instances: 1,
                workers: 1,
                public: false,
                production: false,
                bind: Some("127.0.0.1:8080".into()),
                termination_grace_seconds: None,
            },
            limits: LimitFacts {
                max_request_bytes: None,
                max_response_bytes: None,
                externalize_threshold_bytes: None,
                upload_urls: false,
                request_timeout_seconds: 300,
                stream_timeout_seconds: None,
                shutdown_grace_seconds: 5,
            },
            signing_key: KeyFacts {
                source: KeySource::Ephemeral,
                material: None,
                fingerprint: None,
                previous: Vec::new(),
                token_ttl_seconds: 3600,
                token_mode: None,
                confidential_state: None,
            },
            storage: None,
            security: SecurityFacts {
                require_auth: false,
                api_keys_configured: false,
                api_keys: Vec::new(),
                cors_origins: Vec::new(),
                rate_limit: None,
                reflection: true,
                debug: false,
                tracebacks: false,
            },
            manifests: Vec::new(),
            replicas: Vec::new(),
            endpoint: None,
            waivers: Vec::new(),
            artifact: None,
            service_config_problems: None,
        }
    }

    /// Processes that may serve one stream's turns.
    pub fn processes(&self) -> u64 {
        u64::from(self.target.instances.max(1)) * u64::from(self.target.workers.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_material_spots_placeholders_and_low_entropy() {
        assert!(KeyMaterial::inspect(b"changeme").placeholder);
        assert!(KeyMaterial::inspect(b"changeme-changeme-changeme-changeme").placeholder);
        assert!(KeyMaterial::inspect(b"secret123").placeholder);
        let random = KeyMaterial::inspect(b"9f2c4e7a1b3d5f60a8c2e4f6b1d3a5c7e9f0b2d4");
        assert!(!random.placeholder);
        assert!(random.entropy_bits_per_byte > 3.0);
        let repeated = KeyMaterial::inspect(&[b'a'; 40]);
        assert_eq!(repeated.distinct_bytes, 1);
        assert_eq!(repeated.entropy_bits_per_byte, 0.0);
    }
}
