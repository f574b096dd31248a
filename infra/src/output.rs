//! What commands print for people and for machines.
//!
//! `--json` on `plan`, `build`, `up`, `down`, `releases`, `rollback`,
//! `state show`, `secrets rotate` and `init` (and `doctor --format json`) makes stdout carry
//! exactly one JSON document. Its `schema`
//! field is a versioned id (`deploy-kit.<what>/v<N>`) with a JSON Schema
//! file in `docs/schemas/` ([`SCHEMAS`]); a test validates every command's
//! output against its file. New fields may appear within a version; a field
//! removed or changed in meaning bumps it. Progress and the human report go
//! to stderr under `--json` ([`human`]), and an error is the
//! `deploy-kit.error/v1` document (see [`crate::CommandError::report`]).

use std::sync::atomic::{AtomicBool, Ordering};

static JSON: AtomicBool = AtomicBool::new(false);

/// Plan of a target (`plan --json`).
pub const PLAN: &str = "deploy-kit.plan/v1";
/// Doctor report (`doctor --json`, `doctor --format json`).
pub const DOCTOR: &str = kit_checks::render::JSON_SCHEMA_ID;
/// What a build made (`build --json`, and `build.json`).
pub const BUILD: &str = "deploy-kit.build/v1";
/// The outcome of `up`.
pub const UP: &str = "deploy-kit.up/v1";
/// The outcome of `down`.
pub const DOWN: &str = "deploy-kit.down/v1";
/// Where a target's state is, its lock and what it records (`state show`).
pub const STATE_SHOW: &str = "deploy-kit.state-show/v1";
/// The outcome of `secrets rotate`.
pub const SECRETS_ROTATE: &str = "deploy-kit.secrets-rotate/v1";
/// What `init` wrote.
pub const INIT: &str = "deploy-kit.init/v1";
/// A target's releases (`releases --json`).
pub const RELEASES: &str = "deploy-kit.releases/v1";
/// What a rollback did (`rollback --json`).
pub const ROLLBACK: &str = "deploy-kit.rollback/v1";
/// A command that failed: message, hint and exit code.
pub const ERROR: &str = "deploy-kit.error/v1";

/// Every schema id and its file under `docs/schemas/`.
pub const SCHEMAS: &[(&str, &str)] = &[
    (PLAN, "plan.schema.json"),
    (DOCTOR, "doctor.schema.json"),
    (BUILD, "build.schema.json"),
    (UP, "up.schema.json"),
    (DOWN, "down.schema.json"),
    (STATE_SHOW, "state-show.schema.json"),
    (SECRETS_ROTATE, "secrets-rotate.schema.json"),
    (INIT, "init.schema.json"),
    (RELEASES, "releases.schema.json"),
    (ROLLBACK, "rollback.schema.json"),
    (ERROR, "error.schema.json"),
];

/// Turns `--json` on for this process (each command's `run` calls it).
pub fn set_json(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether `--json` was given.
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Prints report text meant for people: stdout normally, stderr under
/// `--json` so that stdout stays one document.
pub fn human(text: &str) {
    if json() {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
}

/// Prints `document` (which carries its `schema`) as the command's stdout.
pub fn document(document: &serde_json::Value) {
    debug_assert!(
        document["schema"]
            .as_str()
            .is_some_and(|id| SCHEMAS.iter().any(|(known, _)| *known == id)),
        "a JSON document names a schema listed in SCHEMAS"
    );
    println!(
        "{}",
        serde_json::to_string_pretty(document).expect("JSON values serialize")
    );
}

/// The error document printed under `--json`.
pub fn error_document(message: &str, hint: &str, exit_code: u8) -> serde_json::Value {
    serde_json::json!({
        "schema": ERROR,
        "error": message,
        "hint": hint,
        "exit_code": exit_code,
    })
}

/// How `up` and `down` documents list a resource: kind, name and what the
/// cloud assigned (URLs, ARNs); never settings, which may name secrets.
fn resource(resource: &crate::engine::Resource) -> serde_json::Value {
    serde_json::json!({
        "kind": resource.kind,
        "name": resource.name,
        "outputs": resource.outputs,
    })
}

/// The `deploy-kit.up/v1` document of a finished `up`, read back from the
/// state the engine recorded; `exit_code` is the post-`up` doctor's.
pub fn up_document(
    deployment: &crate::deployment::Deployment,
    exit_code: u8,
    seconds: f64,
    phases: crate::timings::Summary,
) -> Result<serde_json::Value, crate::CommandError> {
    let state_path = deployment.state_path();
    let state = crate::engine::State::load(&state_path)?;
    let resources: Vec<serde_json::Value> = state
        .iter()
        .flat_map(|state| state.resources.iter().map(resource))
        .collect();
    let url = state
        .as_ref()
        .and_then(|state| state.url().map(str::to_string));
    Ok(serde_json::json!({
        "schema": UP,
        "target": deployment.target_name,
        "environment": deployment.config.service.environment,
        "engine": state.as_ref().map(|state| state.engine.clone()),
        "state": state_path.display().to_string(),
        "url": url,
        "resources": resources,
        "exit_code": exit_code,
        "seconds": (seconds * 10.0).round() / 10.0,
        "phases": phases.rounded(),
    }))
}

/// The `deploy-kit.down/v1` document: what `down` removed (recorded before,
/// gone after) and what it kept.
pub fn down_document(
    deployment: &crate::deployment::Deployment,
    before: Option<&crate::engine::State>,
    exit_code: u8,
) -> Result<serde_json::Value, crate::CommandError> {
    let after = crate::engine::State::load(&deployment.state_path())?;
    let kept: Vec<&crate::engine::Resource> =
        after.iter().flat_map(|state| &state.resources).collect();
    let deleted: Vec<serde_json::Value> = before
        .iter()
        .flat_map(|state| &state.resources)
        .filter(|r| !kept.iter().any(|k| k.kind == r.kind && k.name == r.name))
        .map(resource)
        .collect();
    Ok(serde_json::json!({
        "schema": DOWN,
        "target": deployment.target_name,
        "environment": deployment.config.service.environment,
        "deleted": deleted,
        "kept": kept.into_iter().map(resource).collect::<Vec<_>>(),
        "exit_code": exit_code,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_file_exists_and_names_its_id() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas");
        for (id, file) in SCHEMAS {
            let text = std::fs::read_to_string(docs.join(file))
                .unwrap_or_else(|error| panic!("docs/schemas/{file}: {error}"));
            let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                schema["properties"]["schema"]["const"], *id,
                "docs/schemas/{file} pins `schema` to {id}"
            );
        }
    }
}
