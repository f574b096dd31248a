//! Releases and rollback: what each `up` put live, and the way back.
//!
//! Every successful `up` (and every `rollback`) appends a [`Release`] to the
//! target's [`State`]: a sequence number, the artifact's digest, a hash of
//! the config, the service's settings (plain values and secret *names*,
//! never secret values), the time, who ran it, and what the engine needs to
//! return to it (`restore`): the Lambda version published for it, or the
//! path of a retained copy of the service binary for a compose target
//! (`.deploy-kit/<env>/<target>/releases/<digest>/`). The state keeps the
//! last [`HISTORY`] releases; a retained binary no kept release names is
//! deleted with it.
//!
//! `deploy-kit releases [TARGET]` lists them; `deploy-kit rollback [TARGET]
//! [RELEASE]` runs in the same locked state session as `up` and `down`,
//! checks that the release's artifact is still there before it changes
//! anything, returns traffic to it through the engine ([`crate::engine::Engine::rollback`]
//! for AWS, the compose engine's restart, the Fly/Kubernetes CLI engine
//! deploying the earlier image), records the rollback as a new release
//! pointing at the old artifact, and runs the same post-`up` check `up`
//! runs (`doctor --online`), whose exit code it returns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::State;

/// Schema id of `deploy-kit releases --json`.
pub const RELEASES_SCHEMA: &str = crate::output::RELEASES;
/// Schema id of `deploy-kit rollback --json`.
pub const ROLLBACK_SCHEMA: &str = crate::output::ROLLBACK;
/// How many releases a state keeps (the oldest go first; the live one is
/// always the newest, so it is never dropped).
pub const HISTORY: usize = 20;

/// Keys of [`Release::restore`].
pub mod restore {
    /// The Lambda version number published for the release (AWS engine).
    pub const LAMBDA_VERSION: &str = "lambda_version";
    /// The retained copy of the service binary (compose engine).
    pub const BINARY: &str = "binary";
}

/// Kinds of [`Artifact`].
pub mod artifact_kind {
    /// A Lambda zip; the digest is Lambda's `CodeSha256` (base64 SHA-256).
    pub const LAMBDA_ZIP: &str = "lambda-zip";
    /// A service binary run as processes; the digest is `sha256:<hex>`.
    pub const BINARY: &str = "binary";
    /// An image; the digest is the reference it was deployed by.
    pub const IMAGE: &str = "image";
}

/// What a release ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// One of [`artifact_kind`].
    pub kind: String,
    pub digest: String,
}

/// One `up` or `rollback` of a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Sequence number, from 1, never reused.
    pub id: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// `user@host`.
    pub who: String,
    /// `up` or `rollback`.
    pub command: String,
    /// For a rollback: the release whose artifact it returned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returns_to: Option<u64>,
    pub artifact: Artifact,
    /// SHA-256 (hex) of the config file's bytes, the environment and the target.
    pub config_hash: String,
    /// The service's settings: plain variables by name, and
    /// `secret:<VARIABLE>` = the secret's name (never its value).
    pub settings: BTreeMap<String, String>,
    /// What the engine needs to return to it (see [`restore`]).
    pub restore: BTreeMap<String, String>,
}

impl Release {
    /// The time as `YYYY-MM-DDTHH:MM:SSZ`.
    ///
    /// ```
    /// # use deploy_kit::releases::utc;
    /// assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    /// assert_eq!(utc(1_767_225_600 + 3_661), "2026-01-01T01:01:01Z");
    /// ```
    pub fn time_utc(&self) -> String {
        utc(self.time)
    }
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// What an engine put live, for [`record`].
#[derive(Debug, Clone)]
pub struct Live {
    pub artifact: Artifact,
    pub restore: BTreeMap<String, String>,
    /// Set by `rollback`: the release returned to.
    pub returns_to: Option<u64>,
}

/// SHA-256 (hex) of the config file, the environment and the target.
pub fn config_hash(deployment: &Deployment) -> String {
    let mut hasher = Sha256::new();
    hasher.update(std::fs::read(&deployment.config_path).unwrap_or_default());
    hasher.update(b"\0environment=");
    hasher.update(deployment.config.service.environment.as_bytes());
    hasher.update(b"\0target=");
    hasher.update(deployment.target_name.as_bytes());
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:<hex>` of a file.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(format!("sha256:{}", hex(&hasher.finalize())))
}

/// The service's settings as a release records them: the plain environment
/// the settings model computes, and the secrets by name only.
pub fn service_settings(deployment: &Deployment) -> BTreeMap<String, String> {
    match crate::render::Settings::resolve(
        &deployment.config,
        &deployment.target_name,
        &crate::render::RenderOptions::default(),
    ) {
        Ok(settings) => {
            let mut recorded: BTreeMap<String, String> = settings
                .env
                .into_iter()
                .map(|variable| (variable.name, variable.value))
                .collect();
            for secret in settings.secrets {
                recorded.insert(format!("secret:{}", secret.variable), secret.secret_name);
            }
            recorded
        }
        Err(error) => BTreeMap::from([("unresolved".to_string(), error.message)]),
    }
}

/// Appends a release for what `live` describes, marks it live, and keeps
/// the last [`HISTORY`]. Returns its id and the releases dropped (their
/// retained artifacts may go, see [`unreferenced`]). The caller saves `state`.
pub fn record(state: &mut State, deployment: &Deployment, live: Live) -> (u64, Vec<Release>) {
    let id = state.releases.iter().map(|r| r.id).max().unwrap_or(0) + 1;
    state.releases.push(Release {
        id,
        time: crate::state::unix_now(),
        who: crate::state::who(),
        command: if live.returns_to.is_some() {
            "rollback".into()
        } else {
            "up".into()
        },
        returns_to: live.returns_to,
        artifact: live.artifact,
        config_hash: config_hash(deployment),
        settings: service_settings(deployment),
        restore: live.restore,
    });
    state.live_release = Some(id);
    state.live_uncertain = false;
    let excess = state.releases.len().saturating_sub(HISTORY);
    let dropped = state.releases.drain(..excess).collect();
    (id, dropped)
}

/// Of `dropped`'s restore values under `key`, those no release in `state`
/// still names (what may be deleted).
pub fn unreferenced(state: &State, dropped: &[Release], key: &str) -> Vec<String> {
    let mut gone: Vec<String> = dropped
        .iter()
        .filter_map(|release| release.restore.get(key).cloned())
        .filter(|value| {
            !state
                .releases
                .iter()
                .any(|kept| kept.restore.get(key) == Some(value))
        })
        .collect();
    gone.sort();
    gone.dedup();
    gone
}

/// Why a rollback was refused (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("target `{target}` has no recorded release")]
    NoReleases { target: String },
    #[error("target `{target}` has no release before the live one (release {live})")]
    NoEarlier { target: String, live: u64 },
    #[error("target `{target}` has no release `{asked}`; it has {known}")]
    Unknown {
        target: String,
        asked: String,
        known: String,
    },
    #[error("release {id} of target `{target}` is already live")]
    AlreadyLive { target: String, id: u64 },
    #[error("the artifact of release {id} of target `{target}` is gone: {what}")]
    ArtifactGone {
        target: String,
        id: u64,
        what: String,
    },
    #[error("rollback is not supported on {platform} yet")]
    Unsupported { target: String, platform: String },
    /// The release's deployment carries signing keys from before a
    /// rotation: it would not verify the tokens the live one signs.
    #[error(
        "release {id} of target `{target}` runs with signing key {release_key}, from before the key was rotated (the live key is {live_key}): rolling back to it would fail every open stream and sign with a retired key"
    )]
    KeysRotatedSince {
        target: String,
        id: u64,
        /// Fingerprints, never values.
        release_key: String,
        live_key: String,
    },
}

/// Exit code of a rollback refused because of its input (no such release,
/// nothing earlier, already live, not supported here).
pub const REFUSED_EXIT_CODE: u8 = 2;
/// Exit code of a rollback whose release's artifact is gone.
pub const ARTIFACT_GONE_EXIT_CODE: u8 = 1;

impl From<RollbackError> for CommandError {
    fn from(error: RollbackError) -> CommandError {
        let message = error.to_string();
        let (hint, code) = match &error {
            RollbackError::NoReleases { target } => (
                format!(
                    "`deploy-kit up {target}` records the first release; `deploy-kit releases {target}` lists them"
                ),
                REFUSED_EXIT_CODE,
            ),
            RollbackError::NoEarlier { target, .. } | RollbackError::AlreadyLive { target, .. } => {
                (
                    format!(
                        "`deploy-kit releases {target}` lists the releases; name another one: `deploy-kit rollback {target} ID`"
                    ),
                    REFUSED_EXIT_CODE,
                )
            }
            RollbackError::Unknown { target, .. } => (
                format!("`deploy-kit releases {target}` lists the releases"),
                REFUSED_EXIT_CODE,
            ),
            RollbackError::ArtifactGone { target, .. } => (
                format!(
                    "nothing was changed; roll back to another release (`deploy-kit releases {target}`), or deploy the artifact again with `deploy-kit up {target}`"
                ),
                ARTIFACT_GONE_EXIT_CODE,
            ),
            RollbackError::KeysRotatedSince { target, id, .. } => (
                format!(
                    "nothing was changed; deploy release {id}'s artifact again instead, which keeps the current key: `deploy-kit up {target} --package ZIP` with that release's package (`deploy-kit releases {target}` shows its code hash)"
                ),
                REFUSED_EXIT_CODE,
            ),
            RollbackError::Unsupported { target, .. } => (
                format!(
                    "nothing was changed; roll forward instead: `deploy-kit up {target}` with the earlier artifact (`--image REFERENCE`, `--package ZIP`); docs/state.md lists where rollback works"
                ),
                REFUSED_EXIT_CODE,
            ),
        };
        CommandError::new(message, hint, code)
    }
}

/// The release `rollback` returns to: `asked`, else the newest release
/// before the live one whose artifact differs from the live one's.
pub fn choose<'a>(
    state: &'a State,
    target: &str,
    asked: Option<&str>,
) -> Result<&'a Release, RollbackError> {
    let live_id = state
        .live_release
        .or_else(|| state.releases.last().map(|r| r.id))
        .ok_or_else(|| RollbackError::NoReleases {
            target: target.to_string(),
        })?;
    let live = state.releases.iter().find(|r| r.id == live_id);
    match asked {
        Some(asked) => {
            let found = asked
                .trim_start_matches('#')
                .parse::<u64>()
                .ok()
                .and_then(|id| state.releases.iter().find(|r| r.id == id));
            let Some(release) = found else {
                let known: Vec<String> = state.releases.iter().map(|r| r.id.to_string()).collect();
                return Err(RollbackError::Unknown {
                    target: target.to_string(),
                    asked: asked.to_string(),
                    known: if known.is_empty() {
                        "none".into()
                    } else {
                        format!("{} (live: {live_id})", known.join(", "))
                    },
                });
            };
            // After an `up` that failed part-way the recorded live release
            // may not be what serves: returning to it is a real rollback.
            if release.id == live_id && !state.live_uncertain {
                return Err(RollbackError::AlreadyLive {
                    target: target.to_string(),
                    id: release.id,
                });
            }
            Ok(release)
        }
        None if state.live_uncertain => live.ok_or_else(|| RollbackError::NoEarlier {
            target: target.to_string(),
            live: live_id,
        }),
        None => state
            .releases
            .iter()
            .rev()
            .filter(|r| r.id < live_id)
            .find(|r| live.is_none_or(|live| live.artifact != r.artifact))
            .ok_or_else(|| RollbackError::NoEarlier {
                target: target.to_string(),
                live: live_id,
            }),
    }
}

/// `deploy-kit releases [TARGET]`.
#[derive(Debug, clap::Args)]
pub struct ReleasesArgs {
    /// Target (a name under `targets:`); default `default_target`, or the only target.
    pub target: Option<String>,
    /// Print `deploy-kit.releases/v1` JSON instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub state: crate::state::StateArgs,
}

/// `deploy-kit rollback [TARGET] [RELEASE]`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// Target (a name under `targets:`); default `default_target`, or the only
    /// target. A lone number is taken as RELEASE.
    pub target: Option<String>,
    /// Release id (`deploy-kit releases`); default the newest release before
    /// the live one that ran a different artifact.
    pub release: Option<String>,
    /// Print `deploy-kit.rollback/v1` JSON (the new release) on stdout
    /// instead of the doctor's report.
    #[arg(long)]
    pub json: bool,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The `nginx` binary (compose); default on `PATH`, then `/usr/sbin`.
    #[arg(long, env = "DEPLOY_KIT_NGINX", value_name = "PATH")]
    pub nginx: Option<PathBuf>,
    #[command(flatten)]
    pub state: crate::state::StateArgs,
}

fn cwd() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// Runs `deploy-kit releases`.
pub fn run_releases(args: ReleasesArgs) -> ExitCode {
    crate::output::set_json(args.json);
    let env = |name: &str| std::env::var(name).ok();
    match releases(&args, &env) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(error) => error.report(),
    }
}

fn releases(
    args: &ReleasesArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, CommandError> {
    let deployment = Deployment::load(args.config.as_deref(), args.target.as_deref(), &cwd())?;
    let store = args.state.store(&deployment, env)?;
    let state = store
        .pull()?
        .map(|bytes| crate::engine::parse_state(&bytes).expect("pull checked it"));
    let empty = State::new("", &deployment.config.service.environment, "");
    let state = state.as_ref().unwrap_or(&empty);
    Ok(if args.json {
        let mut text = serde_json::to_string_pretty(&releases_json(&deployment, state))
            .expect("releases serialize");
        text.push('\n');
        text
    } else {
        releases_text(&deployment.target_name, state)
    })
}

/// The `deploy-kit.releases/v1` document of `state`.
pub fn releases_json(deployment: &Deployment, state: &State) -> serde_json::Value {
    let releases: Vec<serde_json::Value> = state
        .releases
        .iter()
        .map(|release| {
            let mut value = serde_json::to_value(release).expect("a release serializes");
            value["time_utc"] = release.time_utc().into();
            value["live"] = (state.live_release == Some(release.id)).into();
            value
        })
        .collect();
    serde_json::json!({
        "schema": RELEASES_SCHEMA,
        "service": deployment.config.service.name,
        "environment": deployment.config.service.environment,
        "target": deployment.target_name,
        "live": state.live_release,
        "history_limit": HISTORY,
        "releases": releases,
    })
}

fn short(digest: &str) -> String {
    let bare = digest.strip_prefix("sha256:").unwrap_or(digest);
    let cut: String = bare.chars().take(12).collect();
    if digest.starts_with("sha256:") {
        format!("sha256:{cut}")
    } else {
        cut
    }
}

/// The table `deploy-kit releases` prints; `*` marks the live release.
pub fn releases_text(target: &str, state: &State) -> String {
    if state.releases.is_empty() {
        return format!(
            "target `{target}`: no releases recorded (`deploy-kit up {target}` records one)\n"
        );
    }
    let rows: Vec<[String; 6]> = state
        .releases
        .iter()
        .rev()
        .map(|release| {
            let live = if state.live_release == Some(release.id) {
                "*"
            } else {
                " "
            };
            let what = match release.returns_to {
                Some(to) => format!("rollback to {to}"),
                None => release.command.clone(),
            };
            [
                format!("{live} {}", release.id),
                release.time_utc(),
                release.who.clone(),
                what,
                format!(
                    "{} {}",
                    release.artifact.kind,
                    short(&release.artifact.digest)
                ),
                release.config_hash.chars().take(12).collect(),
            ]
        })
        .collect();
    let header = ["  ID", "TIME", "WHO", "COMMAND", "ARTIFACT", "CONFIG"].map(String::from);
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(rows.iter()) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(line.join("  ").trim_end());
        text.push('\n');
    }
    text.push_str(&format!(
        "* live; the last {HISTORY} releases are kept; `deploy-kit rollback {target} ID` returns to one\n"
    ));
    text
}

/// Runs `deploy-kit rollback`.
pub fn run_rollback(args: RollbackArgs) -> ExitCode {
    crate::output::set_json(args.json);
    let env = |name: &str| std::env::var(name).ok();
    match rollback(args, &env) {
        Ok(code) => ExitCode::from(code),
        Err(error) => error.report(),
    }
}

fn rollback(
    mut args: RollbackArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    // `rollback 3`: a lone number is the release of the default target.
    if args.release.is_none()
        && args.target.as_deref().is_some_and(|t| {
            !t.is_empty()
                && t.trim_start_matches('#')
                    .bytes()
                    .all(|b| b.is_ascii_digit())
        })
    {
        args.release = args.target.take();
    }
    let deployment = Deployment::load(args.config.as_deref(), args.target.as_deref(), &cwd())?;
    let session = args.state.begin(
        &deployment,
        &format!("rollback {}", deployment.target_name),
        env,
    )?;
    let result = rollback_locked(&args, &deployment, env);
    let finished = session.finish();
    let code = crate::state::with_session(result, finished)?;
    Ok(code)
}

/// What a rollback did, for `--json` and the caller.
#[derive(Debug, Clone)]
pub struct RolledBack {
    /// The new release (a copy of the one returned to).
    pub release: Release,
    /// `doctor --online`'s exit code and report.
    pub doctor_exit_code: u8,
    pub doctor_text: String,
}

fn rollback_locked(
    args: &RollbackArgs,
    deployment: &Deployment,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<u8, CommandError> {
    let target = &deployment.target_name;
    let state_path = deployment.state_path();
    let state = State::load(&state_path)?.ok_or_else(|| RollbackError::NoReleases {
        target: target.clone(),
    })?;
    let chosen = choose(&state, target, args.release.as_deref())?.clone();
    // Nothing is built: the release's artifact runs, so the doctor's ART001
    // (can the workspace build the service?) is skipped as for `--kit-service`.
    let mut deployment = deployment.clone();
    deployment.prebuilt_binary = Some(
        chosen
            .restore
            .get(restore::BINARY)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("release {}", chosen.id))),
    );
    let deployment = &deployment;
    let rolled = crate::engine::target::open(deployment)?.rollback(
        state,
        &chosen,
        args.nginx.clone(),
        env,
    )?;
    if args.json {
        let document = serde_json::json!({
            "schema": ROLLBACK_SCHEMA,
            "target": target,
            "release": rolled.release,
            "returns_to": chosen.id,
            "doctor_exit_code": rolled.doctor_exit_code,
        });
        eprint!("{}", rolled.doctor_text);
        crate::output::document(&document);
    } else {
        print!("{}", rolled.doctor_text);
    }
    Ok(rolled.doctor_exit_code)
}

/// Fly and Kubernetes: the release's image deployed again through the CLI
/// engine (`fly deploy --image`, the manifest re-applied with it), with the
/// config as it is now; then `doctor --online`, which the engine prints.
pub(crate) fn image_rollback(
    target: &crate::engine::target::Resources<'_>,
    chosen: &Release,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RolledBack, CommandError> {
    use crate::engine::target::{Resources, TargetEngine, UpRequest};
    let image = &chosen.artifact.digest;
    if !image.contains("@sha256:") {
        eprintln!(
            "warning: release {} was deployed by tag (`{image}`), not digest; the platform runs whatever the tag points at now",
            chosen.id
        );
    }
    eprintln!(
        "rollback: target `{}` to release {} (image `{image}`)",
        target.deployment.target_name, chosen.id
    );
    let mut deployment = target.deployment.clone();
    deployment.config.service.image = Some(image.clone());
    // Returning to a release that ran goes on despite offline findings.
    crate::plan::doctor_gate(&deployment, true, env)?;
    let again = Resources {
        deployment: &deployment,
        family: target.family,
    };
    let mut request = UpRequest::new(&cwd());
    request.force = true;
    request.returns_to = Some(chosen.id);
    let code = again.up(&request, env)?;
    let state =
        State::load(&deployment.state_path())?.ok_or_else(|| RollbackError::NoReleases {
            target: deployment.target_name.clone(),
        })?;
    Ok(RolledBack {
        release: state.releases.last().cloned().expect("just recorded"),
        doctor_exit_code: code,
        doctor_text: String::new(),
    })
}

/// A resource engine's rollback (AWS: the alias `live` goes back to the
/// release's published version, checked first), then `doctor --online`.
pub(crate) fn engine_rollback(
    deployment: &Deployment,
    engine: &dyn crate::engine::Engine,
    mut state: State,
    chosen: &Release,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<RolledBack, CommandError> {
    use crate::engine::{Progress, kind};

    let mut progress = Progress::stderr();
    progress.note(&format!(
        "rollback: target `{}` to release {}",
        deployment.target_name, chosen.id
    ));
    engine.rollback(chosen, &mut progress)?;
    let (id, _) = record(
        &mut state,
        deployment,
        Live {
            artifact: chosen.artifact.clone(),
            restore: chosen.restore.clone(),
            returns_to: Some(chosen.id),
        },
    );
    let state_path = deployment.state_path();
    state.save(&state_path)?;
    progress.note(&format!(
        "rollback: release {id} (the artifact of release {}) is live; done in {:.1} s",
        chosen.id,
        progress.elapsed_seconds()
    ));
    if let Some(url) = state
        .resources
        .iter()
        .find(|r| r.kind == kind::ENDPOINT)
        .and_then(|r| r.outputs.get("url"))
    {
        eprintln!("url: {url}");
    }
    let output = deployment.doctor(kit_checks::Mode::Online, env)?;
    Ok(RolledBack {
        release: state.releases.last().cloned().expect("just recorded"),
        doctor_exit_code: output.exit_code,
        doctor_text: output.text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(id: u64, digest: &str) -> Release {
        Release {
            id,
            time: 1_767_225_600 + id,
            who: "dev@host".into(),
            command: "up".into(),
            returns_to: None,
            artifact: Artifact {
                kind: artifact_kind::BINARY.into(),
                digest: digest.into(),
            },
            config_hash: "c0ffee".into(),
            settings: BTreeMap::new(),
            restore: BTreeMap::from([(restore::BINARY.to_string(), format!("/r/{digest}"))]),
        }
    }

    fn state(releases: Vec<Release>, live: Option<u64>) -> State {
        State {
            releases,
            live_release: live,
            ..State::new("compose", "dev", "stack")
        }
    }

    #[test]
    fn after_an_up_that_failed_part_way_rollback_returns_to_the_last_release_known_to_serve() {
        let mut history = state(vec![release(1, "a"), release(2, "b")], Some(2));
        assert!(matches!(
            choose(&history, "stack", Some("2")),
            Err(RollbackError::AlreadyLive { id: 2, .. })
        ));
        history.live_uncertain = true;
        assert_eq!(choose(&history, "stack", None).unwrap().id, 2);
        assert_eq!(choose(&history, "stack", Some("2")).unwrap().id, 2);
        assert_eq!(choose(&history, "stack", Some("1")).unwrap().id, 1);
        // The next release settles it.
        let mut settled = history.clone();
        settled.releases.push(release(3, "a"));
        settled.live_release = Some(3);
        settled.live_uncertain = false;
        assert_eq!(choose(&settled, "stack", None).unwrap().id, 2);
        // It survives the state file.
        let text = serde_json::to_string(&history).unwrap();
        assert!(text.contains("\"live_uncertain\":true"), "{text}");
        let read: State = serde_json::from_str(&text).unwrap();
        assert!(read.live_uncertain);
        assert!(
            !serde_json::to_string(&settled)
                .unwrap()
                .contains("live_uncertain")
        );
    }

    #[test]
    fn the_default_is_the_newest_earlier_release_with_another_artifact() {
        let history = state(
            vec![release(1, "a"), release(2, "b"), release(3, "b")],
            Some(3),
        );
        assert_eq!(choose(&history, "stack", None).unwrap().id, 1);
        // After rolling back to 1 (release 4 runs a), the default is 3 (b).
        let mut rolled = history.clone();
        let mut back = release(4, "a");
        back.returns_to = Some(1);
        rolled.releases.push(back);
        rolled.live_release = Some(4);
        assert_eq!(choose(&rolled, "stack", None).unwrap().id, 3);
        assert_eq!(choose(&rolled, "stack", Some("2")).unwrap().id, 2);
    }

    #[test]
    fn bad_choices_are_refused_with_what_exists() {
        let empty = state(Vec::new(), None);
        assert!(matches!(
            choose(&empty, "stack", None),
            Err(RollbackError::NoReleases { .. })
        ));
        let one = state(vec![release(1, "a")], Some(1));
        assert!(matches!(
            choose(&one, "stack", None),
            Err(RollbackError::NoEarlier { live: 1, .. })
        ));
        let two = state(vec![release(1, "a"), release(2, "b")], Some(2));
        let error = choose(&two, "stack", Some("7")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "target `stack` has no release `7`; it has 1, 2 (live: 2)"
        );
        assert_eq!(CommandError::from(error).exit_code, REFUSED_EXIT_CODE);
        assert!(matches!(
            choose(&two, "stack", Some("2")),
            Err(RollbackError::AlreadyLive { id: 2, .. })
        ));
        let unsupported = CommandError::from(RollbackError::Unsupported {
            target: "run".into(),
            platform: "gcp-cloud-run".into(),
        });
        assert_eq!(
            unsupported.message,
            "rollback is not supported on gcp-cloud-run yet"
        );
        assert!(unsupported.hint.contains("deploy-kit up run"));
    }

    #[test]
    fn history_is_bounded_and_dropped_artifacts_are_named_once_unused() {
        let mut history = state(
            (1..=HISTORY as u64)
                .map(|id| release(id, &format!("d{id}")))
                .collect(),
            Some(HISTORY as u64),
        );
        // Release 2 reuses release 1's binary: it stays named after 1 goes.
        history.releases[1].restore = history.releases[0].restore.clone();
        let dropped: Vec<Release> = history.releases.drain(..2).collect();
        assert_eq!(unreferenced(&history, &dropped, restore::BINARY), ["/r/d1"]);
        let text = releases_text("stack", &history);
        assert!(text.lines().nth(1).unwrap().starts_with("* 20 "), "{text}");
        assert!(text.contains("binary d20"), "{text}");
    }

    #[test]
    fn utc_formats_leap_days() {
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_798_761_599), "2026-12-31T23:59:59Z");
    }
}
