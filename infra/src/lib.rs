//! deploy-kit: the deploy tool's library. `main.rs` parses and dispatches;
//! commands live here so tests call them directly.
//!
//! [`config`] is the `deploy-kit.yaml` model, [`artifact`] resolves the
//! cargo package and binary it deploys, [`doctor`] turns it into
//! `kit_checks::Facts` and renders the report, [`replica`] is the HTTP probe
//! for `doctor --online`, [`up_local`] is `deploy-kit up local`, [`render`]
//! fills in `templates/` (and gives `plan` its files), [`init`] writes a
//! commented config for a platform, [`call`] calls a running service's
//! methods from the shell. Each command module owns its
//! clap `Args` and a `run` that returns the exit code.

pub mod artifact;
pub mod build;
pub mod call;
pub mod config;
pub mod deployment;
pub mod doctor;
pub mod down;
pub mod engine;
#[cfg(feature = "gcp")]
pub mod gcp;
pub mod init;
pub mod new;
pub mod output;
pub mod plan;
pub mod regions;
pub mod releases;
pub mod render;
pub mod replica;
#[cfg(feature = "aws")]
pub mod s3_probe;
pub mod secrets;
pub mod service_config;
pub mod state;
pub mod storage_probe;
pub mod synthetic;
pub mod ticker;
pub mod timings;
pub mod up;
pub mod up_local;

/// The commands of `deploy-kit`, in the order the docs present them.
pub const COMMANDS: &[(&str, &str)] = &[
    (
        "new",
        "create a crate for your own service: typed methods, a test, deploy-kit.yaml",
    ),
    ("init", "write a commented deploy-kit.yaml"),
    (
        "build",
        "build the target's artifact: a checked Lambda zip, or an image pushed by digest",
    ),
    ("plan", "render and show what `up` would change"),
    (
        "up",
        "provision storage, the signing key and the platform target",
    ),
    (
        "releases",
        "list what each `up` and `rollback` put live, marking the live one",
    ),
    (
        "rollback",
        "return traffic to an earlier release, then run the post-`up` check",
    ),
    ("down", "remove what `up` made"),
    (
        "state",
        "show, pull or push a target's state; break a stale lock",
    ),
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
    (
        "call",
        "list a service's methods, call one and print the result",
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
        "A prebuilt service binary (`--kit-service`) that `up` runs or packages instead of building `service.package` with cargo; without a cargo workspace the default is `service.binary` next to `deploy-kit`, then on `PATH`.",
    ),
    (
        "DEPLOY_KIT_RUNTIME",
        "How `up` runs a compose target (`--runtime`): `processes` (default: nginx and the replicas on 127.0.0.1) or `container` (`docker compose` / `podman compose`).",
    ),
    (
        "DEPLOY_KIT_NGINX",
        "The `nginx` binary a compose target's `processes` runtime starts (`--nginx`); default on `PATH`, then `/usr/sbin`.",
    ),
    (
        "DEPLOY_KIT_ENV",
        "Environment under `environments:` in deploy-kit.yaml (`--env`); default `service.environment`.",
    ),
    (
        "DEPLOY_KIT_STATE",
        "Where targets' state and locks are kept (`--state`): `local`, `s3://BUCKET/PREFIX` or `gs://BUCKET/PREFIX`; default `state:` in deploy-kit.yaml, else `local`.",
    ),
    (
        "DEPLOY_KIT_LOCK_TIMEOUT",
        "Seconds `up`, `down` and `state push` wait for another run's lock (`--lock-timeout`); default 0: fail at once with exit 3.",
    ),
    (
        "DEPLOY_KIT_API_KEY",
        "API key (Bearer) `doctor --online` sends to replicas that require auth for the OPS003 probe calls, and `call` sends with every call (`--api-key`).",
    ),
    (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "GCP targets and the GCS probe: a `service_account` key or `authorized_user` JSON file; default gcloud's application-default file (`$CLOUDSDK_CONFIG` or `~/.config/gcloud`).",
    ),
    (
        "STORAGE_EMULATOR_HOST",
        "GCS endpoint override (`host:port` or a URL), as Google's client libraries read it; wins over `storage.endpoint`. Plain `http://` endpoints are called without a token.",
    ),
    (
        "DEPLOY_KIT_SECRET_MANAGER_ENDPOINT",
        "Secret Manager endpoint override (tests point it at a fake); default `https://secretmanager.googleapis.com`.",
    ),
    (
        "DEPLOY_KIT_CLOUD_RUN_ENDPOINT",
        "Cloud Run Admin API endpoint override (tests point it at a fake); default `https://run.googleapis.com`.",
    ),
    (
        "DEPLOY_KIT_KIT_PATH",
        "A deploy-kit checkout `new` makes the crate depend on by path (`--kit-path`); default the published `kit-service`.",
    ),
    (
        "DEPLOY_KIT_REGISTRY_CA",
        "`build`: a PEM file of CA certificates trusted for registries instead of the public roots (a registry with a private CA).",
    ),
    (
        "DEPLOY_KIT_INSECURE_REGISTRIES",
        "`build`: comma-separated `host:port`s of registries spoken to over plain HTTP (credentials included); default none.",
    ),
    (
        "DEPLOY_KIT_LAMBDA_INLINE_LIMIT_BYTES",
        "`build` and `up` on Lambda: packages bigger than this go through deploy-kit's artifact bucket in S3 instead of the request; default Lambda's 50 MB, may only be lowered (tests).",
    ),
    (
        "DEPLOY_KIT_REGISTRY_CHUNK_BYTES",
        "`build`: blobs larger than this go up in chunks of this size (PATCH), smaller ones in one PUT; default 16 MiB.",
    ),
    (
        "DOCKER_CONFIG",
        "`build`: the directory of `config.json` with registry credentials (`auths`, `credHelpers`, `credsStore`); default `~/.docker`.",
    ),
    (
        "REGISTRY_AUTH_FILE",
        "`build`: a podman/skopeo auth file read before docker's `config.json`.",
    ),
    (
        "DEPLOY_KIT_TODAY",
        "The date waivers are judged against, `YYYY-MM-DD` (reproducible runs); default today (UTC).",
    ),
];

/// How to get a deploy-kit that talks to AWS (the default build does).
pub const AWS_REBUILD: &str = "cargo install --path infra --features aws";

/// How to get a deploy-kit that talks to Google Cloud (the default build does).
pub const GCP_REBUILD: &str = "cargo install --path infra --features gcp";

/// A failed command: what went wrong, the exact next step, and the exit code
/// the command documents for it. `main.rs` prints `error:` and `hint:` lines.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub message: String,
    pub hint: String,
    pub exit_code: u8,
}

impl CommandError {
    pub fn new(message: impl Into<String>, hint: impl Into<String>, exit_code: u8) -> CommandError {
        CommandError {
            message: message.into(),
            hint: hint.into(),
            exit_code,
        }
    }

    /// Prints the error and its hint to stderr and returns the exit code.
    pub fn report(&self) -> std::process::ExitCode {
        if output::json() {
            output::document(&output::error_document(
                &self.message,
                &self.hint,
                self.exit_code,
            ));
        }
        eprintln!("error: {}", self.message);
        if !self.hint.is_empty() {
            eprintln!("hint: {}", self.hint);
        }
        std::process::ExitCode::from(self.exit_code)
    }
}
