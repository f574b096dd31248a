//! Engines: what a target needs (desired [`Resource`]s) against what the last
//! `up` recorded ([`State`]), and the [`Plan`] between them.
//!
//! An engine (AWS native in [`aws`], GCP native, ...) implements [`Engine`]:
//! `desired` is a pure function of the config, so `plan` needs no cloud
//! account; `apply` makes the cloud match and reports every resource it made
//! as it goes, so a run that fails half way still leaves a state `down` can
//! read; `destroy` removes what a state records, newest first.
//!
//! Invariants:
//! - a resource's `settings` and `outputs` never hold a secret value (keys,
//!   passwords): the state file and `plan --json` are safe to print and commit;
//! - the state file is written atomically (temp file, fsync, rename), so an
//!   interrupted `up` leaves either the old or the new state, never half;
//! - `state.resources` is in creation order; `down` walks it backwards, which
//!   is reverse dependency order.

pub mod aws;
pub mod cli;
pub mod compose;
pub mod gcp;
pub mod owner;
pub mod pulumi;
pub mod target;
pub mod zip;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::CommandError;
use crate::config::DeployConfig;

/// Schema id of the state file.
pub const STATE_SCHEMA: &str = "deploy-kit.state/v1";
/// The state file inside the target's output directory.
pub const STATE_FILE: &str = "state.json";

/// Resource kinds the plan's risk warnings know about; engines may add more.
pub mod kind {
    /// Object storage bucket (S3, GCS): deleting it loses data.
    pub const BUCKET: &str = "bucket";
    /// The signing-key secret: replacing it breaks open streams.
    pub const SECRET: &str = "secret";
    /// IAM role / service account the service runs as.
    pub const ROLE: &str = "role";
    /// The function or service that runs the service binary (Lambda, Cloud Run).
    pub const FUNCTION: &str = "function";
    /// Its public endpoint (Lambda Function URL).
    pub const ENDPOINT: &str = "endpoint";
}

/// Bucket settings the risk warnings read; engines use these names.
pub mod setting {
    pub const LIFECYCLE_PREFIX: &str = "lifecycle.prefix";
    pub const LIFECYCLE_EXPIRATION_DAYS: &str = "lifecycle.expiration_days";
    pub const LIFECYCLE_ABORT_MULTIPART_DAYS: &str = "lifecycle.abort_multipart_days";
    pub const CORS_ORIGINS: &str = "cors.origins";
}

/// One thing an engine manages, named the way the cloud names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// One of [`kind`] (or an engine's own).
    pub kind: String,
    /// The cloud's name for it: bucket, secret, role or function name.
    pub name: String,
    /// Desired settings, compared field by field by `plan`. Never secret values.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// What the cloud assigned (ARNs, URLs, version ids): recorded, not compared.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
}

impl Resource {
    pub fn new(kind: &str, name: impl Into<String>) -> Resource {
        Resource {
            kind: kind.to_string(),
            name: name.into(),
            settings: BTreeMap::new(),
            outputs: BTreeMap::new(),
        }
    }

    /// Adds a compared setting.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Resource {
        self.settings.insert(key.to_string(), value.into());
        self
    }

    /// `kind/name`: how plans and progress lines name it.
    pub fn address(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    /// The prefix under which a recorded bucket holds the service's
    /// objects (`storage.prefix` when `up` made it): all that `down
    /// --delete-data` deletes, whatever the config names now.
    pub fn data_prefix(&self) -> Option<&str> {
        self.settings
            .get(setting::LIFECYCLE_PREFIX)
            .map(String::as_str)
    }

    fn same_identity(&self, other: &Resource) -> bool {
        self.kind == other.kind && self.name == other.name
    }
}

/// What the last `up` of a target made: `.deploy-kit/<environment>/<target>/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// [`STATE_SCHEMA`].
    pub schema: String,
    /// The engine that made it (`aws`, `gcp`).
    pub engine: String,
    pub environment: String,
    pub target: String,
    /// Made once per state file and part of every resource's ownership tag
    /// ([`owner::Owner`]): another checkout's state has another id. Empty
    /// in states written before it existed (the next `up` sets it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// In creation order.
    pub resources: Vec<Resource>,
    /// What each `up` and `rollback` put live, oldest first, at most
    /// [`crate::releases::HISTORY`] (see [`crate::releases`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<crate::releases::Release>,
    /// The id of the release serving now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_release: Option<u64>,
    /// An `up` failed after it began changing the deployment (an engine may
    /// move traffic before a later step fails): `live_release` is the last
    /// release known to serve, and the failed `up`'s artifact may serve now.
    /// `rollback` then returns to `live_release` itself by default. Cleared
    /// by the next release.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub live_uncertain: bool,
}

impl State {
    /// The URL the platform gave the deployment: the endpoint resource's
    /// `url`, else the first `http(s)` `url` a resource recorded (a
    /// bucket's `gs://` address is not one).
    pub fn url(&self) -> Option<&str> {
        let web = |url: &&String| url.starts_with("https://") || url.starts_with("http://");
        self.resources
            .iter()
            .find(|r| r.kind == kind::ENDPOINT)
            .and_then(|r| r.outputs.get("url"))
            .filter(web)
            .or_else(|| {
                self.resources
                    .iter()
                    .find_map(|r| r.outputs.get("url").filter(web))
            })
            .map(String::as_str)
    }

    pub fn new(engine: &str, environment: &str, target: &str) -> State {
        State {
            schema: STATE_SCHEMA.to_string(),
            engine: engine.to_string(),
            environment: environment.to_string(),
            target: target.to_string(),
            id: owner::new_state_id(),
            resources: Vec::new(),
            releases: Vec::new(),
            live_release: None,
            live_uncertain: false,
        }
    }

    /// Reads a state file; `Ok(None)` when there is none (nothing applied yet).
    pub fn load(path: &Path) -> Result<Option<State>, CommandError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(CommandError::new(
                    format!("failed to read `{}`: {error}", path.display()),
                    "check the permissions of the `.deploy-kit` directory",
                    1,
                ));
            }
        };
        let state = parse_state(text.as_bytes()).map_err(|reason| {
            CommandError::new(
                format!("`{}` {reason}", path.display()),
                "the file is kept as it is; restore the last good one (`deploy-kit state pull` from a versioned bucket, or version control); deleting it makes `down` forget what `up` made",
                1,
            )
        })?;
        Ok(Some(state))
    }

    /// Writes atomically: a temp file beside it, fsync, rename.
    pub fn save(&self, path: &Path) -> Result<(), CommandError> {
        let failed = |error: std::io::Error| {
            CommandError::new(
                format!("failed to write `{}`: {error}", path.display()),
                "check that the working directory is writable; the cloud resources exist, run `up` again to record them",
                1,
            )
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(failed)?;
        }
        let mut text = serde_json::to_string_pretty(self).expect("state serializes");
        text.push('\n');
        let temporary = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&temporary).map_err(failed)?;
        file.write_all(text.as_bytes()).map_err(failed)?;
        file.sync_all().map_err(failed)?;
        std::fs::rename(&temporary, path).map_err(failed)
    }

    /// Replaces the resource with the same kind and name, or appends it.
    pub fn record(&mut self, resource: Resource) {
        match self
            .resources
            .iter_mut()
            .find(|r| r.same_identity(&resource))
        {
            Some(existing) => *existing = resource,
            None => self.resources.push(resource),
        }
    }

    pub fn find(&self, kind: &str, name: &str) -> Option<&Resource> {
        self.resources
            .iter()
            .find(|r| r.kind == kind && r.name == name)
    }
}

/// Parses a state file's bytes, refusing one this deploy-kit cannot read:
/// not JSON of a state (corrupt), or a schema other than [`STATE_SCHEMA`]
/// (a newer deploy-kit's is named as such). The error completes
/// "`<file>` ...".
pub fn parse_state(bytes: &[u8]) -> Result<State, String> {
    #[derive(Deserialize)]
    struct Schema {
        schema: String,
    }
    // The schema first: a newer state may not parse as this one.
    let schema = serde_json::from_slice::<Schema>(bytes)
        .map_err(|error| format!("is not a deploy-kit state file: {error}"))?
        .schema;
    if schema != STATE_SCHEMA {
        let version = |schema: &str| {
            schema
                .strip_prefix("deploy-kit.state/v")
                .and_then(|v| v.parse::<u32>().ok())
        };
        return Err(match (version(&schema), version(STATE_SCHEMA)) {
            (Some(theirs), Some(ours)) if theirs > ours => format!(
                "was written by a newer deploy-kit (schema `{schema}`; this one reads `{STATE_SCHEMA}`): upgrade deploy-kit, this one does not rewrite it"
            ),
            _ => format!("has schema `{schema}`; this deploy-kit reads `{STATE_SCHEMA}`"),
        });
    }
    serde_json::from_slice(bytes)
        .map_err(|error| format!("is not a deploy-kit state file: {error}"))
}

/// `.deploy-kit/<environment>/<target>/` under `base` (the config file's directory).
pub fn output_dir(base: &Path, config: &DeployConfig, target: &str) -> PathBuf {
    base.join(".deploy-kit")
        .join(&config.service.environment)
        .join(target)
}

/// What `plan` shows for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Change,
    Delete,
}

/// One setting that differs; `None` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub action: Action,
    pub kind: String,
    pub name: String,
    /// For `change`: what differs. Empty for create and delete.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// The difference between desired resources and the recorded state, with
/// warnings about changes that lose data or break clients.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Creates and changes in desired order, then deletes newest first.
pub fn diff(desired: &[Resource], state: Option<&State>) -> Plan {
    let recorded: &[Resource] = state.map_or(&[], |s| &s.resources);
    let mut changes = Vec::new();
    for want in desired {
        match recorded.iter().find(|r| r.same_identity(want)) {
            None => changes.push(Change {
                action: Action::Create,
                kind: want.kind.clone(),
                name: want.name.clone(),
                fields: Vec::new(),
            }),
            Some(have) => {
                let keys: std::collections::BTreeSet<&String> =
                    want.settings.keys().chain(have.settings.keys()).collect();
                let fields: Vec<FieldChange> = keys
                    .into_iter()
                    .filter(|key| want.settings.get(*key) != have.settings.get(*key))
                    .map(|key| FieldChange {
                        field: key.clone(),
                        old: have.settings.get(key).cloned(),
                        new: want.settings.get(key).cloned(),
                    })
                    .collect();
                if !fields.is_empty() {
                    changes.push(Change {
                        action: Action::Change,
                        kind: want.kind.clone(),
                        name: want.name.clone(),
                        fields,
                    });
                }
            }
        }
    }
    for have in recorded.iter().rev() {
        if !desired.iter().any(|want| want.same_identity(have)) {
            changes.push(Change {
                action: Action::Delete,
                kind: have.kind.clone(),
                name: have.name.clone(),
                fields: Vec::new(),
            });
        }
    }
    let warnings = risks(&changes);
    Plan { changes, warnings }
}

fn days(value: &Option<String>) -> Option<u64> {
    value.as_deref().and_then(|v| v.parse().ok())
}

/// Semantic risks: data loss, shorter retention, a new signing key.
fn risks(changes: &[Change]) -> Vec<String> {
    let mut warnings = Vec::new();
    let creates_bucket = changes
        .iter()
        .any(|c| c.action == Action::Create && c.kind == kind::BUCKET);
    let creates_secret = changes
        .iter()
        .any(|c| c.action == Action::Create && c.kind == kind::SECRET);
    for change in changes {
        match (change.action, change.kind.as_str()) {
            (Action::Delete, kind::BUCKET) => warnings.push(if creates_bucket {
                format!(
                    "replaces bucket `{}`: objects in it are not moved; `up` leaves the old bucket, `down --delete-data` loses them",
                    change.name
                )
            } else {
                format!(
                    "deletes bucket `{}`: its objects are lost if it is emptied (`--delete-data`)",
                    change.name
                )
            }),
            (Action::Delete, kind::SECRET) => warnings.push(if creates_secret {
                format!(
                    "replaces the signing-key secret `{}`: tokens signed with the old key stop verifying, so open streams break; rotate with `deploy-kit secrets rotate` instead",
                    change.name
                )
            } else {
                format!(
                    "deletes the signing-key secret `{}`: open streams break",
                    change.name
                )
            }),
            (Action::Change, kind::BUCKET) => {
                for field in &change.fields {
                    bucket_field_risk(&change.name, field, &mut warnings);
                }
            }
            (Action::Change, kind::SECRET) => warnings.push(format!(
                "changes the signing-key secret `{}` ({}): check that open streams keep a valid key",
                change.name,
                change
                    .fields
                    .iter()
                    .map(|f| f.field.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => {}
        }
    }
    warnings
}

fn bucket_field_risk(bucket: &str, field: &FieldChange, warnings: &mut Vec<String>) {
    let lifecycle = [
        (setting::LIFECYCLE_EXPIRATION_DAYS, "expiration"),
        (
            setting::LIFECYCLE_ABORT_MULTIPART_DAYS,
            "abort-incomplete-multipart",
        ),
    ];
    for (name, what) in lifecycle {
        if field.field != name {
            continue;
        }
        match (days(&field.old), days(&field.new)) {
            (Some(old), None) => warnings.push(format!(
                "drops the {what} lifecycle rule of bucket `{bucket}` (was {old} days): objects are kept forever"
            )),
            (Some(old), Some(new)) if new < old => warnings.push(format!(
                "shortens {what} on bucket `{bucket}` from {old} to {new} days: objects older than {new} days are deleted"
            )),
            _ => {}
        }
    }
    if field.field == setting::LIFECYCLE_PREFIX {
        warnings.push(format!(
            "moves the lifecycle rule of bucket `{bucket}` from prefix `{}` to `{}`: objects under the old prefix no longer expire",
            field.old.as_deref().unwrap_or(""),
            field.new.as_deref().unwrap_or("")
        ));
    }
    if field.field == setting::CORS_ORIGINS && field.new.is_none() {
        warnings.push(format!(
            "drops the CORS rule of bucket `{bucket}`: browser uploads and downloads stop working"
        ));
    }
}

/// Progress on stderr: one line per step with its elapsed time.
pub struct Progress {
    started: Instant,
    out: crate::ticker::SharedOut,
    style: crate::ticker::Style,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress").finish_non_exhaustive()
    }
}

impl Progress {
    /// Progress on stderr: a step longer than a second shows its elapsed
    /// time on a terminal, plain lines elsewhere ([`crate::ticker`]).
    pub fn stderr() -> Progress {
        Progress::styled(
            Box::new(std::io::stderr()),
            crate::ticker::Style::of_stderr(),
        )
    }

    /// Progress into `out`, in plain lines.
    pub fn to(out: Box<dyn Write + Send>) -> Progress {
        Progress::styled(out, crate::ticker::Style::Plain)
    }

    /// Progress into `out` in `style`.
    pub fn styled(out: Box<dyn Write + Send>, style: crate::ticker::Style) -> Progress {
        Progress {
            started: Instant::now(),
            out: crate::ticker::shared(out),
            style,
        }
    }

    /// Runs one step and prints `<what>: <outcome> (<seconds> s)`; the
    /// outcome is the step's own word (`created`, `unchanged`, `updated`).
    /// While it runs, a ticker shows that it is still going.
    pub fn step<T>(
        &mut self,
        what: &str,
        run: impl FnOnce() -> Result<(T, String), CommandError>,
    ) -> Result<T, CommandError> {
        let step_started = Instant::now();
        let ticker = crate::ticker::Ticker::start(
            self.out.clone(),
            self.style,
            what.to_string(),
            crate::ticker::Timing::default(),
        );
        let result = run();
        ticker.finish();
        let seconds = step_started.elapsed().as_secs_f64();
        let line = match &result {
            Ok((_, outcome)) => format!("  {what}: {outcome} ({seconds:.1} s)"),
            Err(_) => format!("  {what}: failed ({seconds:.1} s)"),
        };
        self.note(&line);
        result.map(|(value, _)| value)
    }

    pub fn note(&mut self, line: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{line}");
    }

    /// Seconds since this progress began.
    pub fn elapsed_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// Options of `down`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DestroyOptions {
    /// Empty and delete buckets that still hold objects.
    pub delete_data: bool,
}

/// A resource `down` left in place on purpose, and the command that removes it.
#[derive(Debug, Clone)]
pub struct Kept {
    pub resource: Resource,
    pub reason: String,
    pub command: String,
}

impl Kept {
    /// A recorded bucket with no recorded prefix (a hand-edited state):
    /// which of its objects are the service's is unknown, so none is deleted.
    pub fn bucket_without_prefix(name: &str) -> Kept {
        Kept {
            resource: Resource::new(kind::BUCKET, name),
            reason: format!(
                "the state records no prefix for bucket `{name}`, so `--delete-data` cannot tell the service's objects from others"
            ),
            command: format!("aws s3 rm s3://{name}/PREFIX --recursive, then delete the bucket"),
        }
    }
}

/// A native engine for one cloud.
pub trait Engine {
    /// `aws`, `gcp`: recorded in the state file.
    fn name(&self) -> &'static str;
    /// What the target needs, from the config alone (no network).
    fn desired(&self) -> Result<Vec<Resource>, CommandError>;
    /// Creates or updates every desired resource (idempotent), calling
    /// `made` with each one (outputs filled in) as soon as it exists.
    fn apply(
        &self,
        desired: &[Resource],
        progress: &mut Progress,
        made: &mut dyn FnMut(Resource) -> Result<(), CommandError>,
    ) -> Result<(), CommandError>;
    /// What the cloud has now for a `recorded` resource (`plan --refresh`):
    /// the settings it can read back, under the same keys as `desired`.
    /// The default says it cannot tell, which `plan --refresh` reports.
    fn refresh(&self, recorded: &Resource) -> Result<Live, CommandError> {
        let _ = recorded;
        Ok(Live::Unknown)
    }
    /// Returns traffic to `release` (`deploy-kit rollback`): checks first
    /// that its artifact is still there ([`crate::releases::RollbackError::ArtifactGone`]
    /// before anything changes), then switches. The default: not supported.
    fn rollback(
        &self,
        release: &crate::releases::Release,
        progress: &mut Progress,
    ) -> Result<(), CommandError> {
        let _ = (release, progress);
        Err(CommandError::new(
            format!(
                "rollback is not supported by the `{}` engine yet",
                self.name()
            ),
            "roll forward with `deploy-kit up` and the earlier artifact",
            crate::releases::REFUSED_EXIT_CODE,
        ))
    }
    /// Deletes what `state` records, newest first, calling `removed` after
    /// each; returns what it left on purpose (a bucket with data).
    fn destroy(
        &self,
        state: &State,
        options: DestroyOptions,
        progress: &mut Progress,
        removed: &mut dyn FnMut(&Resource) -> Result<(), CommandError>,
    ) -> Result<Vec<Kept>, CommandError>;
}

/// A recorded resource as the cloud has it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Live {
    /// It exists. The settings the engine read, under `desired`'s keys:
    /// `Some` value, or `None` when read and found unset (a deleted
    /// lifecycle rule). Keys it does not read are absent and keep their
    /// recorded values.
    Present(BTreeMap<String, Option<String>>),
    /// It is gone.
    Missing,
    /// The engine cannot read it back.
    Unknown,
}

/// A change made outside deploy-kit, found by `plan --refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub kind: String,
    pub name: String,
    /// `true` when the resource is gone.
    pub missing: bool,
    /// Settings whose live value differs from the recorded one (`old` recorded, `new` live).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
}

/// Reads every recorded resource back through `engine`: the drift found,
/// the state as the cloud has it (what the plan is then computed against),
/// and the addresses the engine could not read.
pub fn refresh(
    engine: &dyn Engine,
    state: &State,
) -> Result<(Vec<Drift>, State, Vec<String>), CommandError> {
    let mut drift = Vec::new();
    let mut live_state = state.clone();
    live_state.resources.clear();
    let mut unknown = Vec::new();
    for recorded in &state.resources {
        match engine.refresh(recorded)? {
            Live::Unknown => {
                unknown.push(recorded.address());
                live_state.resources.push(recorded.clone());
            }
            Live::Missing => drift.push(Drift {
                kind: recorded.kind.clone(),
                name: recorded.name.clone(),
                missing: true,
                fields: Vec::new(),
            }),
            Live::Present(read) => {
                let mut live = recorded.clone();
                let fields: Vec<FieldChange> = read
                    .into_iter()
                    .filter(|(key, now)| recorded.settings.get(key) != now.as_ref())
                    .map(|(key, now)| FieldChange {
                        old: recorded.settings.get(&key).cloned(),
                        field: key,
                        new: now,
                    })
                    .collect();
                for field in &fields {
                    match &field.new {
                        Some(value) => live.settings.insert(field.field.clone(), value.clone()),
                        None => live.settings.remove(&field.field),
                    };
                }
                if !fields.is_empty() {
                    drift.push(Drift {
                        kind: recorded.kind.clone(),
                        name: recorded.name.clone(),
                        missing: false,
                        fields,
                    });
                }
                live_state.resources.push(live);
            }
        }
    }
    Ok((drift, live_state, unknown))
}

/// `up`'s shared step: creates or updates every `desired` resource, saving
/// `state` to `state_path` after each one, then removes what `state` records
/// but the config no longer asks for (as the plan said). Returns what the
/// engine kept on purpose (a bucket with data), for the caller to report.
pub fn apply_and_prune(
    engine: &dyn Engine,
    desired: &[Resource],
    state: &mut State,
    state_path: &Path,
    progress: &mut Progress,
) -> Result<Vec<Kept>, CommandError> {
    engine.apply(desired, progress, &mut |resource| {
        state.record(resource);
        state.save(state_path)
    })?;
    let stale: Vec<Resource> = state
        .resources
        .iter()
        .filter(|have| {
            !desired
                .iter()
                .any(|want| want.kind == have.kind && want.name == have.name)
        })
        .cloned()
        .collect();
    if stale.is_empty() {
        return Ok(Vec::new());
    }
    let mut removed = Vec::new();
    let kept = engine.destroy(
        &State {
            resources: stale,
            ..state.clone()
        },
        DestroyOptions::default(),
        progress,
        &mut |resource| {
            removed.push(resource.clone());
            Ok(())
        },
    )?;
    state.resources.retain(|r| !removed.contains(r));
    state.save(state_path)?;
    Ok(kept)
}

/// `down`'s shared step: destroys everything `state` records, dropping each
/// resource from the state file at `state_path` as it goes, and removes the
/// file once nothing is left. Returns what the engine kept on purpose (a
/// bucket with data), for the caller to report.
pub fn destroy_and_forget(
    engine: &dyn Engine,
    mut state: State,
    state_path: &Path,
    options: DestroyOptions,
    progress: &mut Progress,
) -> Result<Vec<Kept>, CommandError> {
    let recorded = state.clone();
    let kept = engine.destroy(&recorded, options, progress, &mut |resource| {
        state.resources.retain(|r| r != resource);
        state.save(state_path)
    })?;
    finish_down(&state, state_path, progress)?;
    Ok(kept)
}

/// The end of every `down`: the state file goes once it records nothing,
/// and the run's time is reported.
pub fn finish_down(
    state: &State,
    state_path: &Path,
    progress: &mut Progress,
) -> Result<(), CommandError> {
    if state.resources.is_empty() {
        std::fs::remove_file(state_path).map_err(|error| {
            CommandError::new(
                format!("failed to remove `{}`: {error}", state_path.display()),
                "delete it by hand; everything it recorded is gone",
                1,
            )
        })?;
    }
    progress.note(&format!(
        "down: done in {:.1} s",
        progress.elapsed_seconds()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(expiration: Option<&str>) -> Resource {
        let mut bucket =
            Resource::new(kind::BUCKET, "data").with(setting::LIFECYCLE_PREFIX, "vgi/");
        if let Some(days) = expiration {
            bucket = bucket.with(setting::LIFECYCLE_EXPIRATION_DAYS, days);
        }
        bucket
    }

    fn state(resources: Vec<Resource>) -> State {
        State {
            resources,
            ..State::new("aws", "dev", "t")
        }
    }

    #[test]
    fn nothing_recorded_creates_everything_in_order() {
        let desired = vec![bucket(Some("1")), Resource::new(kind::SECRET, "key")];
        let plan = diff(&desired, None);
        assert_eq!(plan.changes.len(), 2);
        assert!(plan.changes.iter().all(|c| c.action == Action::Create));
        assert_eq!(plan.changes[0].kind, kind::BUCKET);
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn same_settings_plan_nothing_even_with_other_outputs() {
        let mut recorded = bucket(Some("1"));
        recorded
            .outputs
            .insert("arn".into(), "arn:aws:s3:::data".into());
        let plan = diff(&[bucket(Some("1"))], Some(&state(vec![recorded])));
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn shorter_or_dropped_expiry_warns() {
        let plan = diff(&[bucket(Some("1"))], Some(&state(vec![bucket(Some("7"))])));
        assert_eq!(plan.changes[0].fields[0].old.as_deref(), Some("7"));
        assert!(plan.warnings[0].contains("from 7 to 1 days"), "{plan:?}");
        let plan = diff(&[bucket(None)], Some(&state(vec![bucket(Some("7"))])));
        assert!(
            plan.warnings[0].contains("drops the expiration"),
            "{plan:?}"
        );
        let plan = diff(&[bucket(Some("7"))], Some(&state(vec![bucket(Some("1"))])));
        assert!(plan.warnings.is_empty(), "longer expiry is safe: {plan:?}");
    }

    #[test]
    fn renamed_bucket_and_secret_are_replacements() {
        let recorded = state(vec![
            bucket(Some("1")),
            Resource::new(kind::SECRET, "old-key"),
        ]);
        let mut renamed = bucket(Some("1"));
        renamed.name = "data-2".into();
        let plan = diff(
            &[renamed, Resource::new(kind::SECRET, "new-key")],
            Some(&recorded),
        );
        let actions: Vec<Action> = plan.changes.iter().map(|c| c.action).collect();
        assert_eq!(
            actions,
            [
                Action::Create,
                Action::Create,
                Action::Delete,
                Action::Delete
            ]
        );
        assert_eq!(plan.changes[2].name, "old-key", "deletes go newest first");
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("replaces bucket `data`"))
        );
        assert!(
            plan.warnings
                .iter()
                .any(|w| w.contains("replaces the signing-key secret `old-key`"))
        );
    }

    #[test]
    fn state_round_trips_atomically() {
        let dir = std::env::temp_dir().join(format!("deploy-kit-state-{}", std::process::id()));
        let path = dir.join("state.json");
        assert_eq!(State::load(&path).unwrap(), None);
        let mut written = state(vec![bucket(Some("1"))]);
        written.record(bucket(Some("2")));
        assert_eq!(written.resources.len(), 1, "record replaces by identity");
        written.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), Some(written));
        assert!(!path.with_extension("json.tmp").exists());
        std::fs::write(&path, "{}").unwrap();
        assert!(
            State::load(&path)
                .unwrap_err()
                .message
                .contains("not a deploy-kit state file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
