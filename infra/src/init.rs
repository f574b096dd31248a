//! `deploy-kit init`: writes a commented `deploy-kit.yaml` tuned to one
//! platform, from `templates/init/deploy-kit.yaml.j2`.
//!
//! The numbers come from [`Platform::limits`] (the same table the doctor
//! judges against), so a fresh file passes `deploy-kit doctor --offline`:
//! body limits keep the 10% headroom, timeouts and shutdown grace fit the
//! platform, and storage, auth and a shared signing key are configured.
//! Secrets appear only as references (`gcp:projects/.../secrets/...`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use kit_checks::platform::{Limits, Platform, human_bytes};
use serde::Serialize;

use crate::CommandError;
use crate::render::{TEMPLATES, environment, render_template};

/// The largest body the example allows where the platform allows more.
const DEFAULT_BODY_BYTES: u64 = 30_000_000;
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;
const DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = 25;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Platform the file is tuned to.
    #[arg(long = "target", value_name = "PLATFORM", default_value = "cloud-run",
          value_parser = clap::builder::PossibleValuesParser::new(Platform::ALL.iter().map(|p| p.name())))]
    pub platform: String,
    /// File to write; `-` prints to stdout.
    #[arg(long, value_name = "FILE", default_value = "deploy-kit.yaml")]
    pub output: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
    /// `service.name`: names every resource deploy-kit creates.
    #[arg(long, default_value = "kit-service")]
    pub name: String,
    /// `service.package`: the cargo package that builds the service; left
    /// out, it is the workspace's only package with one bin target.
    #[arg(long)]
    pub package: Option<String>,
    /// Print the `deploy-kit.init/v1` document (what was written) on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What the init template sees.
#[derive(Debug, Serialize)]
struct InitSettings {
    platform: &'static str,
    platform_summary: String,
    name: String,
    package: Option<String>,
    target: &'static str,
    instances: u32,
    bind: Option<String>,
    region: Option<&'static str>,
    project: Option<&'static str>,
    max_request_bytes: u64,
    max_response_bytes: u64,
    externalize_threshold_bytes: u64,
    request_timeout_seconds: u64,
    shutdown_grace_seconds: u64,
    platform_request_bytes: Option<String>,
    platform_timeout: Option<u64>,
    platform_grace: Option<u64>,
    storage_provider: &'static str,
    storage_endpoint: Option<&'static str>,
    storage_credential: &'static str,
    signing_key_reference: String,
    api_keys_reference: String,
}

/// A body limit under `platform`'s, with headroom, rounded down to a million.
fn body_limit(limit: Option<u64>) -> u64 {
    match limit {
        Some(limit) => (Limits::usable(limit) / 1_000_000 * 1_000_000).min(DEFAULT_BODY_BYTES),
        None => DEFAULT_BODY_BYTES,
    }
}

fn settings(platform: Platform, name: &str, package: Option<&str>) -> InitSettings {
    let limits = platform.limits();
    let request = body_limit(limits.request_bytes);
    let response = body_limit(limits.response_bytes);
    let timeout = limits
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT_SECONDS, |t| t.min(DEFAULT_TIMEOUT_SECONDS));
    // Leave two seconds between our drain and the platform's SIGKILL.
    let grace = limits
        .termination_grace_seconds
        .map_or(DEFAULT_SHUTDOWN_GRACE_SECONDS, |g| {
            g.saturating_sub(2).clamp(1, DEFAULT_SHUTDOWN_GRACE_SECONDS)
        });
    let (cloud, region, project) = match platform {
        Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl => {
            ("aws", Some("eu-west-1"), None)
        }
        Platform::CloudRun | Platform::CloudFunctions => {
            ("gcp", Some("europe-west1"), Some("my-project"))
        }
        Platform::AzureFunctions => ("azure", Some("westeurope"), None),
        Platform::Fly => ("fly", Some("ams"), None),
        Platform::CloudflareWorkers => ("cloudflare", None, None),
        Platform::Railway => ("railway", None, None),
        Platform::Kubernetes => ("k8s", None, None),
        Platform::Compose => ("compose", None, None),
    };
    let reference = |what: &str| match cloud {
        "gcp" => format!("gcp:projects/my-project/secrets/{name}-{what}"),
        _ => format!("{cloud}:{name}-{what}"),
    };
    let (storage_provider, storage_endpoint, storage_credential) = match platform {
        Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl => {
            ("s3", None, "instance-role")
        }
        Platform::CloudRun | Platform::CloudFunctions => ("gcs", None, "service-account"),
        Platform::CloudflareWorkers => (
            "r2",
            Some("https://ACCOUNT_ID.r2.cloudflarestorage.com"),
            "static-keys",
        ),
        Platform::Kubernetes => ("s3", None, "instance-role"),
        Platform::Fly | Platform::Railway => ("s3", None, "static-keys"),
        Platform::AzureFunctions | Platform::Compose => (
            "s3-compatible",
            Some("https://storage.example.com"),
            "static-keys",
        ),
    };
    let lambda = matches!(
        platform,
        Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl
    );
    let summary = [
        limits
            .request_bytes
            .map(|b| format!("{} requests", human_bytes(b))),
        limits
            .timeout_seconds
            .map(|t| format!("{t} s {} timeout", limits.timeout_kind)),
        limits
            .termination_grace_seconds
            .map(|g| format!("{g} s SIGTERM grace")),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    InitSettings {
        platform: platform.name(),
        platform_summary: if summary.is_empty() {
            "no body or time limits".into()
        } else {
            summary.join(", ")
        },
        name: name.to_string(),
        package: package.map(str::to_string),
        target: "production",
        instances: match platform {
            Platform::Kubernetes => 3,
            Platform::Compose | Platform::Fly | Platform::Railway => 2,
            _ => 10,
        },
        bind: (!lambda && platform != Platform::CloudflareWorkers)
            .then(|| "0.0.0.0:8080".to_string()),
        region,
        project,
        max_request_bytes: request,
        max_response_bytes: response,
        externalize_threshold_bytes: (response / 4).min(8_000_000),
        request_timeout_seconds: timeout,
        shutdown_grace_seconds: grace,
        platform_request_bytes: limits.request_bytes.map(human_bytes),
        platform_timeout: limits.timeout_seconds,
        platform_grace: limits.termination_grace_seconds,
        storage_provider,
        storage_endpoint,
        storage_credential,
        signing_key_reference: reference("signing-key"),
        api_keys_reference: reference("api-keys"),
    }
}

/// The commented `deploy-kit.yaml` for `platform`, leaving `service.package`
/// to its default (the workspace's only package with one bin target).
pub fn init_text(platform: Platform, name: &str) -> Result<String, CommandError> {
    init_text_for(platform, name, None)
}

/// [`init_text`] with `service.package` written out when given.
pub fn init_text_for(
    platform: Platform,
    name: &str,
    package: Option<&str>,
) -> Result<String, CommandError> {
    render_template(
        &environment(TEMPLATES),
        "init/deploy-kit.yaml.j2",
        minijinja::Value::from(minijinja::value::Serde(settings(platform, name, package))),
    )
}

pub fn run(args: Args) -> ExitCode {
    crate::output::set_json(args.json);
    match init(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report(),
    }
}

fn init(args: &Args) -> Result<(), CommandError> {
    let platform = Platform::from_name(&args.platform).ok_or_else(|| {
        CommandError::new(
            format!("unknown platform `{}`", args.platform),
            "run `deploy-kit init --help` for the platforms",
            2,
        )
    })?;
    let text = init_text_for(platform, &args.name, args.package.as_deref())?;
    // The file must load as the docs promise; a failure here is our bug.
    crate::config::DeployConfig::parse(&text, &args.output).map_err(|error| {
        CommandError::new(
            format!("the generated file does not parse: {error}"),
            "report this bug; meanwhile copy the repository's commented deploy-kit.yaml",
            1,
        )
    })?;
    if args.output.as_os_str() == "-" {
        if args.json {
            return Err(CommandError::new(
                "`--json` and `--output -` both want stdout",
                "write the file (`--output deploy-kit.yaml`) and read `written` from the document",
                2,
            ));
        }
        print!("{text}");
        let _ = std::io::stdout().flush();
        return Ok(());
    }
    if args.output.exists() && !args.force {
        return Err(CommandError::new(
            format!("`{}` exists", args.output.display()),
            format!(
                "pass `--force` to overwrite it: deploy-kit init --target {} --output {} --force",
                platform.name(),
                args.output.display()
            ),
            2,
        ));
    }
    std::fs::write(&args.output, &text).map_err(|error| {
        CommandError::new(
            format!("failed to write `{}`: {error}", args.output.display()),
            "check that the directory exists and is writable",
            2,
        )
    })?;
    let next = format!(
        "deploy-kit doctor --offline --config {}",
        args.output.display()
    );
    eprintln!(
        "wrote {} for {}; next: {next}",
        args.output.display(),
        platform.name(),
    );
    if args.json {
        crate::output::document(&serde_json::json!({
            "schema": crate::output::INIT,
            "platform": platform.name(),
            "service": args.name,
            "written": [args.output.display().to_string()],
            "next": next,
        }));
    }
    Ok(())
}
