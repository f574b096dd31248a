//! `deploy-kit plan <target>`: the offline doctor, then the target's files
//! rendered into `.deploy-kit/<environment>/<target>/`, then what `up` would
//! create, change or delete against the state the last `up` recorded, with
//! warnings about changes that lose data or break clients.
//!
//! Exit codes: 0 no change, 2 changes, 1 error (doctor errors included,
//! unless `--force`). `--json` prints the `deploy-kit.plan/v1` document.
//! Nothing here needs a cloud account or the `aws` feature.

use std::path::PathBuf;
use std::process::ExitCode;

use kit_checks::Mode;
use serde::Serialize;

use crate::CommandError;
use crate::deployment::Deployment;
use crate::engine::{self, Action, Plan, State};

/// Schema id of `plan --json`.
pub const PLAN_SCHEMA: &str = crate::output::PLAN;
/// The setting a missing function package leaves unknown.
const CODE_SETTING: &str = "code.sha256";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target (a name under `targets:` in deploy-kit.yaml).
    #[arg(env = "DEPLOY_KIT_TARGET")]
    pub target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the `deploy-kit.plan/v1` JSON document.
    #[arg(long)]
    pub json: bool,
    /// Plan even when the offline doctor reports errors.
    #[arg(long)]
    pub force: bool,
    /// A Lambda package (zip) whose code the plan compares (default: the
    /// last `deploy-kit build`'s, else the code is shown as "to build").
    #[arg(long, env = "DEPLOY_KIT_PACKAGE", value_name = "ZIP")]
    pub package: Option<PathBuf>,
    /// Read the live resources first: changes made outside deploy-kit are
    /// shown as drift, and the plan restores the config against what is live.
    #[arg(long)]
    pub refresh: bool,
    /// Where the state is kept, as for `up`: `local`, `s3://BUCKET/PREFIX`
    /// or `gs://BUCKET/PREFIX`; default `state:` in deploy-kit.yaml, else
    /// `local`. A remote state is pulled into the working copy first, as
    /// `up` pulls it, so the plan is made against what `up` will use.
    #[arg(long = "state", env = "DEPLOY_KIT_STATE", value_name = "LOCATION")]
    pub state: Option<String>,
}

/// The plan of one target, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct PlanDocument {
    pub schema: &'static str,
    pub target: String,
    pub environment: String,
    pub engine: String,
    /// The state compared against, relative to the working directory when possible.
    pub state: String,
    pub rendered: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render_error: Option<String>,
    /// With `--refresh`: what changed outside deploy-kit since the last `up`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<engine::Drift>,
    /// With `--refresh`: recorded resources the engine cannot read back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_refreshed: Vec<String>,
    pub changes: Vec<engine::Change>,
    pub warnings: Vec<String>,
    pub summary: Summary,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub create: usize,
    pub change: usize,
    pub delete: usize,
}

impl Summary {
    pub fn of(plan: &Plan) -> Summary {
        let count = |action| plan.changes.iter().filter(|c| c.action == action).count();
        Summary {
            create: count(Action::Create),
            change: count(Action::Change),
            delete: count(Action::Delete),
        }
    }
}

/// The plan of `desired` against `state`. Without a package hash the code is
/// not compared (the recorded hash is carried over).
pub fn plan_against(
    desired: &[engine::Resource],
    state: Option<&State>,
    package_known: bool,
) -> Plan {
    match state {
        Some(state) if !package_known => {
            let mut state = state.clone();
            for resource in &mut state.resources {
                resource.settings.remove(CODE_SETTING);
            }
            engine::diff(desired, Some(&state))
        }
        _ => engine::diff(desired, state),
    }
}

/// The text table: `+ create`, `~ change (field: old -> new)`, `- delete`.
pub fn render_text(document: &PlanDocument) -> String {
    let mut out = format!(
        "plan for target `{}` ({} engine, against `{}`)\n",
        document.target, document.engine, document.state
    );
    let show = |value: &Option<String>| value.clone().unwrap_or_else(|| "(none)".to_string());
    for drift in &document.drift {
        let address = format!("{}/{}", drift.kind, drift.name);
        if drift.missing {
            out.push_str(&format!("! drift {address}: deleted outside deploy-kit\n"));
        } else {
            let fields: Vec<String> = drift
                .fields
                .iter()
                .map(|f| format!("{}: {} -> {}", f.field, show(&f.old), show(&f.new)))
                .collect();
            out.push_str(&format!(
                "! drift {address}: changed outside deploy-kit ({})\n",
                fields.join(", ")
            ));
        }
    }
    for address in &document.not_refreshed {
        out.push_str(&format!(
            "? {address}: not read back (the engine cannot read it)\n"
        ));
    }
    if document.changes.is_empty() {
        out.push_str("no changes: the target matches the last `up`\n");
    }
    for change in &document.changes {
        let address = format!("{}/{}", change.kind, change.name);
        match change.action {
            Action::Create => out.push_str(&format!("+ create {address}\n")),
            Action::Delete => out.push_str(&format!("- delete {address}\n")),
            Action::Change => {
                let fields: Vec<String> = change
                    .fields
                    .iter()
                    .map(|f| format!("{}: {} -> {}", f.field, show(&f.old), show(&f.new)))
                    .collect();
                out.push_str(&format!("~ change {address} ({})\n", fields.join(", ")));
            }
        }
    }
    for warning in &document.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    let summary = document.summary;
    out.push_str(&format!(
        "{} to create, {} to change, {} to delete\n",
        summary.create, summary.change, summary.delete
    ));
    out
}

/// What the plan deploys, for its `artifact:` line: the image by digest,
/// the package's code hash, or "to build".
pub fn artifact_line(deployment: &Deployment, package_given: bool) -> String {
    use crate::build::ArtifactKind;
    let build_command = format!("deploy-kit build --target {}", deployment.target_name);
    match crate::build::ArtifactKind::of(deployment.target.platform) {
        Some(ArtifactKind::LambdaZip) if package_given => {
            "the package given with `--package`".into()
        }
        Some(ArtifactKind::LambdaZip | ArtifactKind::AzureFunctionsZip) => {
            match deployment.built.as_ref().and_then(|r| r.package.as_ref()) {
                Some(package) => format!(
                    "package sha256 {} (the last build, `{}`)",
                    package.sha256,
                    package.path.display()
                ),
                None => format!("to build (`{build_command}`, or `up` builds it)"),
            }
        }
        Some(ArtifactKind::Image) => {
            let image = deployment.config.service.image();
            if image.contains("@sha256:") {
                image
            } else {
                format!("`{image}` to build (`{build_command}`, or `up` builds it)")
            }
        }
        None => "built by the platform's own tooling".into(),
    }
}

/// Everything `plan` computes; `up` reuses it before applying.
pub fn compute(
    deployment: &Deployment,
    package: Option<&[u8]>,
    cwd: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(PlanDocument, Vec<engine::Resource>), CommandError> {
    compute_with(deployment, package, cwd, env, None)
}

/// [`compute`], with `refresh` reading the live resources first: the plan
/// is then made against the state as the cloud has it.
pub fn compute_with(
    deployment: &Deployment,
    package: Option<&[u8]>,
    cwd: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
    refresh: Option<&dyn engine::Engine>,
) -> Result<(PlanDocument, Vec<engine::Resource>), CommandError> {
    let hash = package.map(package_hash);
    compute_with_hash(deployment, hash.as_deref(), cwd, env, refresh)
}

/// [`compute`] from the package's code hash (Lambda's `CodeSha256`).
pub fn compute_with_hash(
    deployment: &Deployment,
    hash: Option<&str>,
    cwd: &std::path::Path,
    env: &dyn Fn(&str) -> Option<String>,
    refresh: Option<&dyn engine::Engine>,
) -> Result<(PlanDocument, Vec<engine::Resource>), CommandError> {
    let hash = hash.map(str::to_string);
    let (engine_name, desired) = deployment.desired(hash.as_deref(), env)?;
    let state_path = deployment.state_path();
    let mut state = State::load(&state_path)?;
    let (mut drift, mut not_refreshed) = (Vec::new(), Vec::new());
    if let (Some(engine), Some(recorded)) = (refresh, &state) {
        let (found, live, unread) = engine::refresh(engine, recorded)?;
        drift = found;
        not_refreshed = unread;
        state = Some(live);
    }
    let plan = plan_against(&desired, state.as_ref(), hash.is_some());
    let (rendered, render_error) = match deployment.render() {
        Ok(paths) => (paths.iter().map(|p| relative(p, cwd)).collect(), None),
        Err(error) => (Vec::new(), Some(error.message)),
    };
    let document = PlanDocument {
        schema: PLAN_SCHEMA,
        target: deployment.target_name.clone(),
        environment: deployment.config.service.environment.clone(),
        engine: engine_name.to_string(),
        state: relative(&state_path, cwd),
        rendered,
        render_error,
        summary: Summary::of(&plan),
        drift,
        not_refreshed,
        changes: plan.changes,
        warnings: plan.warnings,
    };
    Ok((document, desired))
}

/// Lambda's `CodeSha256` of a package (base64 SHA-256).
pub fn package_hash(package: &[u8]) -> String {
    use base64::Engine as _;
    use sha2::Digest;
    base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(package))
}

fn relative(path: &std::path::Path, cwd: &std::path::Path) -> String {
    path.strip_prefix(cwd).unwrap_or(path).display().to_string()
}

/// The offline doctor gate: its summary on stderr, and an error when it
/// found errors (the report goes to stderr too) unless `force`.
pub fn doctor_gate(
    deployment: &Deployment,
    force: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), CommandError> {
    let output = deployment.doctor(Mode::Offline, env)?;
    if output.exit_code == 1 && !force {
        eprint!("{}", output.text);
        return Err(CommandError::new(
            format!(
                "`deploy-kit doctor --offline` found errors in target `{}`",
                deployment.target_name
            ),
            "fix them (see the report above), or pass `--force` to go on anyway",
            1,
        ));
    }
    if let Some(summary) = &output.summary {
        eprintln!("doctor --offline: {summary}");
    }
    Ok(())
}

pub fn run(args: Args) -> ExitCode {
    crate::output::set_json(args.json);
    let env = |name: &str| std::env::var(name).ok();
    match plan(&args, &env) {
        Ok(code) => ExitCode::from(code),
        Err(mut error) => {
            // 2 means "changes" here, so every error is 1.
            error.exit_code = 1;
            error.report()
        }
    }
}

fn plan(args: &Args, env: &dyn Fn(&str) -> Option<String>) -> Result<u8, CommandError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let deployment = Deployment::load(args.config.as_deref(), args.target.as_deref(), &cwd)?;
    doctor_gate(&deployment, args.force, env)?;
    // No lock: a plan changes nothing but the working copy, which `up`
    // would replace the same way.
    let state = crate::state::StateArgs {
        location: args.state.clone(),
        lock_timeout: 0,
    };
    state
        .store(&deployment, env)?
        .sync_working(&deployment.state_path())?;
    // Plan never builds: it compares the given or last-built package, or
    // shows the artifact as "to build".
    let package = match &args.package {
        Some(path) => Some(std::fs::read(path).map_err(|error| {
            CommandError::new(
                format!(
                    "failed to read the Lambda package `{}`: {error}",
                    path.display()
                ),
                "pass an existing zip to `--package`, or leave it out",
                1,
            )
        })?),
        None => None,
    };
    let built_hash = deployment
        .built
        .as_ref()
        .and_then(|record| record.package.as_ref())
        .map(|package| package.code_sha256.clone());
    eprintln!(
        "artifact: {}",
        artifact_line(&deployment, package.is_some())
    );
    let refresher = if args.refresh {
        Some(refresh_engine(&deployment, env)?)
    } else {
        None
    };
    let refresher = refresher.as_deref();
    let (document, _) = match (&package, &built_hash) {
        (Some(package), _) => compute_with(&deployment, Some(package), &cwd, env, refresher)?,
        (None, Some(hash)) => compute_with_hash(&deployment, Some(hash), &cwd, env, refresher)?,
        (None, None) => compute_with(&deployment, None, &cwd, env, refresher)?,
    };
    if let Some(error) = &document.render_error {
        eprintln!("warning: rendering failed, the resource plan below is still complete: {error}");
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&document).expect("plan serializes")
        );
    } else {
        print!("{}", render_text(&document));
    }
    // Like `terraform plan -detailed-exitcode`: 0 nothing to do, 2 changes
    // (or drift), 1 error.
    Ok(
        if document.changes.is_empty() && document.drift.is_empty() {
            0
        } else {
            2
        },
    )
}

/// The engine that reads a target's live resources for `plan --refresh`.
fn refresh_engine(
    deployment: &Deployment,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn engine::Engine>, CommandError> {
    engine::target::open(deployment)?.reader(env)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::DeployConfig;
    use crate::engine::aws::AwsSettings;

    const CONFIG: &str = "version: 1
service: {name: vgi, environment: test}
targets:
  lambda: {platform: aws-lambda-function-url, region: eu-west-1, public: true}
storage:
  provider: s3
  bucket: vgi-data
  prefix: vgi-rpc/
  expiry_days: EXPIRY
  abort_multipart_days: 1
  credential: assumed-role
  session_seconds: 3600
  cors_origins: [https://app.example.com]
";

    fn desired(expiry: &str) -> Vec<engine::Resource> {
        let config = DeployConfig::parse(
            &CONFIG.replace("EXPIRY", expiry),
            Path::new("deploy-kit.yaml"),
        )
        .unwrap();
        let (name, target) = config.target(None).unwrap();
        AwsSettings::resolve(&config, name, target, &|_| None)
            .unwrap()
            .desired(Some("c29tZSBoYXNo"))
    }

    fn document(plan: Plan) -> PlanDocument {
        PlanDocument {
            schema: PLAN_SCHEMA,
            target: "lambda".into(),
            environment: "test".into(),
            engine: "aws".into(),
            state: ".deploy-kit/test/lambda/state.json".into(),
            rendered: Vec::new(),
            render_error: Some("rendering target `lambda` is not implemented yet".into()),
            summary: Summary::of(&plan),
            drift: Vec::new(),
            not_refreshed: Vec::new(),
            changes: plan.changes,
            warnings: plan.warnings,
        }
    }

    /// Snapshots the text and JSON plans of `desired` against `state`.
    fn check(name: &str, desired: &[engine::Resource], state: Option<&State>) {
        let document = document(plan_against(desired, state, true));
        insta::assert_snapshot!(format!("{name}_text"), render_text(&document));
        insta::assert_snapshot!(
            format!("{name}_json"),
            serde_json::to_string_pretty(&document).unwrap()
        );
    }

    fn applied(resources: Vec<engine::Resource>) -> State {
        State {
            resources,
            ..State::new("aws", "test", "lambda")
        }
    }

    #[test]
    fn plans_against_state_fixtures() {
        check("first_up", &desired("7"), None);
        check("no_change", &desired("7"), Some(&applied(desired("7"))));
        let mut old = desired("7");
        old.retain(|r| r.kind != engine::kind::ENDPOINT);
        old.push(engine::Resource::new(
            engine::kind::SECRET,
            "vgi/test/old-key",
        ));
        check(
            "shorter_expiry_and_new_key",
            &desired("1"),
            Some(&applied(old)),
        );
    }

    #[test]
    fn unknown_package_does_not_show_a_code_change() {
        let mut without_code = desired("7");
        for resource in &mut without_code {
            resource.settings.remove(CODE_SETTING);
        }
        let state = applied(desired("7"));
        assert!(plan_against(&without_code, Some(&state), false).is_empty());
        assert!(!plan_against(&without_code, Some(&state), true).is_empty());
    }
}
