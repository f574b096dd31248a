//! `deploy-kit doctor`: settings -> [`Facts`] -> checks -> rendered report.
//!
//! Everything here is a plain function of its inputs (the parsed request, the
//! config file, an environment lookup), so tests call it without a process.
//! Exit codes: 0 clean, 1 findings at or above `--fail-on`, 2 usage or config
//! error, 3 a check could not run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kit_checks::facts::{
    Credential, KeyFacts, KeyMaterial, KeySource, LimitFacts, Manifest, PreviousKey, SecurityFacts,
    StorageFacts, StorageProvider, TargetFacts,
};
use kit_checks::render::{self, Format, Rendering};
use kit_checks::{Date, Facts, Mode, Options, Probes, Severity, Waiver};

use crate::config::{
    CredentialKind, DEFAULT_CONFIG_FILE, DeployConfig, KeySourceKind, StorageConfig,
};
use crate::replica::HttpReplicaProbe;

/// Why storage checks skip until the object-store client lands.
pub const STORAGE_UNAVAILABLE: &str =
    "no live storage to probe: `storage:` is not set in deploy-kit.yaml, or this is an offline run";
/// Why OPS003 skips in an offline run.
pub const SYNTHETIC_OFFLINE: &str = "offline run: no calls to replicas";

/// Report formats, plus `markdown` for `--list-checks` (the docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Report(Format),
    Markdown,
}

/// A fully resolved doctor invocation (flags and env already merged by clap).
#[derive(Debug, Clone)]
pub struct DoctorRequest {
    pub config: Option<PathBuf>,
    pub target: Option<String>,
    pub mode: Mode,
    pub format: OutputFormat,
    pub fail_on: Severity,
    pub apply_waivers: bool,
    pub replicas: Vec<String>,
    pub today: Option<String>,
    pub list_checks: bool,
    pub explain: Option<String>,
    /// A prebuilt service binary (`up --kit-service`): nothing is built, so
    /// ART001 (the cargo package exists) skips.
    pub prebuilt_binary: Option<PathBuf>,
}

/// What to print and how to exit.
#[derive(Debug)]
pub struct DoctorOutput {
    pub text: String,
    pub exit_code: u8,
    pub summary: Option<String>,
}

/// A usage or config error: exit 2, with a hint.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DoctorError {
    pub message: String,
    pub hint: String,
}

impl DoctorError {
    pub(crate) fn new(message: impl Into<String>, hint: impl Into<String>) -> DoctorError {
        DoctorError {
            message: message.into(),
            hint: hint.into(),
        }
    }
}

/// Runs the doctor. `env` looks up environment variables (the signing key's
/// variable, for measuring it when it is set here).
pub fn doctor(
    request: &DoctorRequest,
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DoctorOutput, DoctorError> {
    if let Some(name) = &request.explain {
        let check = kit_checks::registry::find(name).ok_or_else(|| {
            DoctorError::new(
                format!("no check named `{name}`"),
                "run `deploy-kit doctor --list-checks` for every id and alias",
            )
        })?;
        return Ok(DoctorOutput {
            text: render::explain(check),
            exit_code: 0,
            summary: None,
        });
    }
    if request.list_checks {
        let text = match request.format {
            OutputFormat::Markdown => render::checks_markdown(),
            OutputFormat::Report(Format::Text) => render::list_checks(),
            OutputFormat::Report(_) => {
                return Err(DoctorError::new(
                    "`--list-checks` prints `text` or `markdown`",
                    "run `deploy-kit doctor --list-checks --format markdown > docs/checks.md`",
                ));
            }
        };
        return Ok(DoctorOutput {
            text,
            exit_code: 0,
            summary: None,
        });
    }
    let OutputFormat::Report(format) = request.format else {
        return Err(DoctorError::new(
            "`--format markdown` only goes with `--list-checks`",
            "use `--format text|json|sarif|junit|github` for reports",
        ));
    };
    let today = match &request.today {
        Some(text) => Date::parse(text).map_err(|e| {
            DoctorError::new(
                format!("`DEPLOY_KIT_TODAY`: {e}"),
                "unset `DEPLOY_KIT_TODAY` or set it like `2026-01-31`",
            )
        })?,
        None => Date::today_utc(),
    };
    let path = request
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    let path = if path.is_absolute() {
        path
    } else {
        cwd.join(path)
    };
    if request.config.is_none() && !path.exists() {
        return Err(DoctorError::new(
            format!("no `{DEFAULT_CONFIG_FILE}` in `{}`", cwd.display()),
            "pass `--config FILE`, set `DEPLOY_KIT_CONFIG`, or copy the commented example from the repository root",
        ));
    }
    let display = request
        .config
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| DEFAULT_CONFIG_FILE.to_string());
    let fix = "fix the file; every key is described in the example `deploy-kit.yaml`";
    let text = std::fs::read_to_string(&path).map_err(|e| {
        DoctorError::new(
            format!("failed to read `{display}`: {e}"),
            "check the path given to `--config` or `DEPLOY_KIT_CONFIG`",
        )
    })?;
    let config = DeployConfig::parse(&text, Path::new(&display))
        .map_err(|e| DoctorError::new(e.to_string(), fix))?;
    report(&config, &display, &path, request, format, today, env)
}

/// Judges an already loaded `config` (from `path`, shown as `display`) and
/// renders the report; `deploy-kit up local` calls this with its own config.
pub fn report(
    config: &DeployConfig,
    display: &str,
    path: &Path,
    request: &DoctorRequest,
    format: Format,
    today: Date,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<DoctorOutput, DoctorError> {
    let rendering = Rendering {
        fail_on: request.fail_on,
        tool: "deploy-kit",
        version: env!("CARGO_PKG_VERSION"),
    };
    let facts = facts(config, display, path, request, today, env)?;
    for waiver in &facts.waivers {
        waiver.validate(today).map_err(|e| {
            DoctorError::new(
                format!("`{display}`: {e}"),
                "waivers need `id`, `reason` and `expires` at most 90 days ahead",
            )
        })?;
    }
    let replica_probe = HttpReplicaProbe::new(Duration::from_secs(5));
    let storage_probe = match request.mode {
        Mode::Online => crate::storage_probe::storage_probe(config, request.target.as_deref(), env),
        Mode::Offline => Err(STORAGE_UNAVAILABLE.to_string()),
    };
    let synthetic_probe = match request.mode {
        Mode::Online => crate::synthetic::HttpSyntheticProbe::new(
            Duration::from_secs(30),
            env("DEPLOY_KIT_API_KEY").filter(|key| !key.is_empty()),
        ),
        Mode::Offline => Err(SYNTHETIC_OFFLINE.to_string()),
    };
    let probes = Probes {
        replicas: Some(&replica_probe),
        storage: storage_probe.as_ref().ok().map(|probe| &**probe),
        synthetic: synthetic_probe.as_ref().ok().map(|probe| probe as _),
        storage_unavailable: storage_probe.as_ref().err().map(String::as_str),
        synthetic_unavailable: synthetic_probe.as_ref().err().map(String::as_str),
    };
    let report = kit_checks::run(
        &facts,
        &probes,
        &Options {
            mode: request.mode,
            apply_waivers: request.apply_waivers,
        },
    );
    Ok(DoctorOutput {
        text: format.render(&report, &rendering),
        exit_code: report.status(request.fail_on).exit_code(),
        summary: Some(render::summary_line(&report, &rendering)),
    })
}

/// Builds the facts for the chosen target of `config`.
pub fn facts(
    config: &DeployConfig,
    display: &str,
    path: &Path,
    request: &DoctorRequest,
    today: Date,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Facts, DoctorError> {
    let (name, target) = config
        .target(request.target.as_deref())
        .map_err(|message| {
            DoctorError::new(
                message,
                "name a target with `--target NAME` or `DEPLOY_KIT_TARGET`",
            )
        })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut manifests = Vec::new();
    for manifest in &target.manifests {
        let text = std::fs::read_to_string(base.join(manifest)).map_err(|e| {
            DoctorError::new(
                format!("failed to read manifest `{manifest}` of target `{name}`: {e}"),
                "render the manifests first, or fix the path (relative to the config file)",
            )
        })?;
        manifests.push(Manifest {
            path: manifest.clone(),
            text,
        });
    }
    let replicas = if !request.replicas.is_empty() {
        request.replicas.clone()
    } else if target.replicas.is_empty()
        && request.mode == Mode::Online
        && crate::engine::compose::handles(target.platform)
    {
        // What `deploy-kit up` started for this compose target, if anything.
        let state_path =
            crate::engine::output_dir(base, config, name).join(crate::engine::STATE_FILE);
        crate::engine::State::load(&state_path)
            .ok()
            .flatten()
            .map(|state| crate::engine::compose::recorded_replicas(&state))
            .unwrap_or_default()
    } else {
        target.replicas.clone()
    };
    // The URL `up` recorded for this target, for the smoke test (OPS004).
    let endpoint = (request.mode == Mode::Online)
        .then(|| {
            let state_path =
                crate::engine::output_dir(base, config, name).join(crate::engine::STATE_FILE);
            crate::engine::State::load(&state_path)
                .ok()
                .flatten()
                .and_then(|state| state.url().map(str::to_string))
        })
        .flatten();
    let limits = &config.limits;
    Ok(Facts {
        origin: display.to_string(),
        today,
        target: TargetFacts {
            name: name.to_string(),
            platform: target.platform,
            instances: target.instances,
            workers: target.workers,
            public: target.public,
            production: target.production,
            bind: target.bind.clone(),
            termination_grace_seconds: target.termination_grace_seconds,
        },
        limits: LimitFacts {
            max_request_bytes: limits.max_request_bytes,
            max_response_bytes: limits.max_response_bytes,
            externalize_threshold_bytes: limits.externalize_threshold_bytes,
            upload_urls: limits.upload_urls,
            request_timeout_seconds: limits.request_timeout_seconds,
            stream_timeout_seconds: limits.stream_timeout_seconds,
            shutdown_grace_seconds: limits.shutdown_grace_seconds,
        },
        signing_key: {
            let mut key = key_facts(config, base, env);
            key.previous.extend(rotation_previous(base, config, name));
            key
        },
        storage: config.storage.as_ref().map(storage_facts),
        security: SecurityFacts {
            require_auth: config.auth.required,
            api_keys_configured: config.auth.api_keys.is_some(),
            api_keys: local_api_keys(&crate::engine::output_dir(base, config, name), config),
            cors_origins: config.cors.origins.clone(),
            rate_limit: config
                .rate_limit
                .as_ref()
                .and_then(|r| r.limit())
                .map(str::to_string),
            reflection: config.reflection,
            debug: config.debug,
            tracebacks: config.tracebacks,
        },
        manifests,
        replicas,
        endpoint,
        artifact: request
            .prebuilt_binary
            .is_none()
            .then(|| crate::artifact::facts(config, base, target.platform)),
        waivers: config
            .waivers
            .iter()
            .map(|w| Waiver {
                id: w.id.clone(),
                reason: w.reason.clone(),
                expires: w.expires,
            })
            .collect(),
        service_config_problems: Some(crate::service_config::problems(config, name)),
    })
}

/// Decodes `hex:`/`base64:` like the service does; raw text otherwise.
fn decode_key(text: &str) -> Vec<u8> {
    use base64::Engine;
    if let Some(hex) = text.strip_prefix("hex:") {
        let hex = hex.trim();
        let decoded: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect();
        if let Some(bytes) = decoded {
            return bytes;
        }
    } else if let Some(b64) = text.strip_prefix("base64:")
        && let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim())
    {
        return bytes;
    }
    text.as_bytes().to_vec()
}

/// A `deploy-kit secrets rotate` that was promoted but not retired keeps the
/// old key on the target's replicas: KEY005 judges it like a
/// `signing_key.previous` entry retired on the promote date.
/// The names, expiries and scopes of the API keys in the secret file a
/// compose or local target mounts (`<output>/secrets/<name>`), for SEC006.
/// Other platforms keep the secret out of deploy-kit's reach: no facts. A
/// file that does not parse gives none either; `up` refuses it by name.
fn local_api_keys(output_dir: &Path, config: &DeployConfig) -> Vec<kit_checks::api_keys::KeyFacts> {
    let Some(reference) = &config.auth.api_keys else {
        return Vec::new();
    };
    let file = output_dir
        .join("secrets")
        .join(crate::render::secret_name_of(reference));
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| kit_checks::api_keys::parse(&text).ok())
        .map(|entries| entries.iter().map(Into::into).collect())
        .unwrap_or_default()
}

fn rotation_previous(base: &Path, config: &DeployConfig, target: &str) -> Option<PreviousKey> {
    use crate::secrets::rotation::{Phase, ROTATION_FILE, RotationState};
    let path = crate::engine::output_dir(base, config, target).join(ROTATION_FILE);
    let state = RotationState::load(&path).ok().flatten()?;
    (state.phase == Phase::Promoted).then(|| PreviousKey {
        retired_on: state
            .promoted_at
            .map(|at| Date::from_days_since_epoch((at / 86_400) as i64)),
    })
}

fn key_facts(config: &DeployConfig, base: &Path, env: &dyn Fn(&str) -> Option<String>) -> KeyFacts {
    let key = &config.signing_key;
    let (source, visible) = match key.source {
        KeySourceKind::Ephemeral => (KeySource::Ephemeral, None),
        KeySourceKind::Env => {
            let variable = key.env.clone().unwrap_or_else(|| "VGI_SIGNING_KEY".into());
            let value = env(&variable).filter(|v| !v.is_empty());
            (KeySource::Env { variable }, value)
        }
        KeySourceKind::File => {
            let path = key.path.clone().unwrap_or_default();
            let value = std::fs::read_to_string(base.join(&path))
                .ok()
                .map(|v| v.trim_end_matches(['\n', '\r']).to_string());
            (KeySource::File { path }, value)
        }
        KeySourceKind::Secret => (
            KeySource::SecretStore {
                reference: key.secret.clone().unwrap_or_default(),
            },
            None,
        ),
        KeySourceKind::Literal => (KeySource::Literal, key.value.clone()),
    };
    KeyFacts {
        source,
        material: visible.map(|text| KeyMaterial::inspect(&decode_key(&text))),
        fingerprint: None,
        previous: key
            .previous
            .iter()
            .map(|p| PreviousKey {
                retired_on: p.retired,
            })
            .collect(),
        token_ttl_seconds: key.token_ttl_seconds,
        token_mode: Some(
            match config.signing_key.token_mode {
                crate::config::TokenModeConfig::Signed => "signed",
                crate::config::TokenModeConfig::Sealed => "sealed",
            }
            .to_string(),
        ),
        // Only the service binary knows its protocols: KEY007 runs in
        // `kit-service doctor`.
        confidential_state: None,
    }
}

fn storage_facts(storage: &StorageConfig) -> StorageFacts {
    let url_base = storage
        .endpoint
        .clone()
        .unwrap_or_else(|| match storage.provider {
            StorageProvider::S3 => format!("https://{}.s3.amazonaws.com", storage.bucket),
            StorageProvider::Gcs => format!("https://storage.googleapis.com/{}", storage.bucket),
            StorageProvider::R2 => "https://<account>.r2.cloudflarestorage.com".to_string(),
            StorageProvider::S3Compatible => String::new(),
        });
    StorageFacts {
        provider: storage.provider,
        bucket: storage.bucket.clone(),
        prefix: storage.prefix.clone(),
        url_base,
        expiry_days: storage.expiry_days,
        abort_multipart_days: storage.abort_multipart_days,
        presign_ttl_seconds: storage.presign_ttl_seconds,
        credential: match storage.credential {
            CredentialKind::StaticKeys => Credential::StaticKeys,
            CredentialKind::AssumedRole => Credential::AssumedRole {
                session_seconds: storage.session_seconds.unwrap_or(3600),
            },
            CredentialKind::InstanceRole => Credential::InstanceRole,
            CredentialKind::ServiceAccount => Credential::ServiceAccount,
        },
        cors_origins: storage.cors_origins.clone(),
    }
}
