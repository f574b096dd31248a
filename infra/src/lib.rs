//! deploy-kit: the deploy tool's library. `main.rs` parses and dispatches;
//! commands live here so tests call them directly.
//!
//! [`config`] is the `deploy-kit.yaml` model, [`doctor`] turns it into
//! `kit_checks::Facts` and renders the report, [`replica`] is the HTTP probe
//! for `doctor --online`, [`up_local`] is `deploy-kit up local`. The other
//! commands are still the skeleton.

pub mod config;
pub mod doctor;
pub mod replica;
pub mod up_local;

/// The commands of `deploy-kit`, in the order the docs present them.
pub const COMMANDS: &[(&str, &str)] = &[
    ("init", "write a commented deploy-kit.yaml"),
    ("plan", "render and show what `up` would change"),
    (
        "up",
        "provision storage, the signing key and the platform target",
    ),
    ("down", "remove what `up` made"),
    (
        "doctor",
        "check config, limits, keys and storage before rollout",
    ),
    (
        "secrets",
        "rotate the signing key without breaking open streams",
    ),
    (
        "render",
        "render Dockerfiles, manifests and workflows from templates",
    ),
];

/// Every environment variable deploy-kit reads; each overrides the
/// `deploy-kit.yaml` value and is overridden by its flag.
pub const ENV_VARS: &[(&str, &str)] = &[
    (
        "DEPLOY_KIT_CONFIG",
        "Config file (`--config`); default `./deploy-kit.yaml`.",
    ),
    (
        "DEPLOY_KIT_TARGET",
        "Target to judge (`--target`); default `default_target`, or the only target.",
    ),
    (
        "DEPLOY_KIT_FORMAT",
        "Report format (`--format`): text, json, sarif, junit, github.",
    ),
    (
        "DEPLOY_KIT_FAIL_ON",
        "Lowest failing severity that exits 1 (`--fail-on`): error or warn.",
    ),
    (
        "DEPLOY_KIT_REPLICAS",
        "Comma-separated replica base URLs for `--online` (`--replica`).",
    ),
    (
        "DEPLOY_KIT_KIT_SERVICE",
        "The `kit-service` binary `up local` starts (`--kit-service`); default next to `deploy-kit`, then on `PATH`.",
    ),
    (
        "DEPLOY_KIT_TODAY",
        "The date waivers are judged against, `YYYY-MM-DD` (reproducible runs); default today (UTC).",
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`deploy-kit {0}` is not implemented yet")]
    NotImplemented(&'static str),
}
