//! deploy-kit: the deploy tool's library. `main.rs` parses and dispatches;
//! commands live here so tests call them directly.
//!
//! This is the skeleton laid by the wire-core issue: the command surface is
//! fixed, the commands themselves land with the doctor and deploy issues.

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

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`deploy-kit {0}` is not implemented yet")]
    NotImplemented(&'static str),
}
