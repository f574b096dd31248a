//! `deploy-kit render <what>`: the files a target deploys from, rendered from
//! the templates in `templates/` with minijinja.
//!
//! Templates are embedded with `include_str!` so the binary works anywhere,
//! and rendered with `UndefinedBehavior::Strict`: a template that names a
//! setting that does not exist fails with the template, line and expression
//! instead of rendering an empty string. Templates see only [`Settings`],
//! resolved from `deploy-kit.yaml` in [`settings`]; secret values never enter
//! it, so no rendered file can carry one (a literal `signing_key.value` is
//! referenced as the secret `<name>-signing-key`, like `source: secret`).
//!
//! `plan` and `up` call [`render_target`]; the CLI adds `--check`, which
//! compares with the files on disk and exits 1 listing stale ones, in the way
//! of `cargo dist generate --check`.

mod settings;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kit_checks::platform::Platform;
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior, Value};

pub use settings::{
    ArtifactSettings, CONTAINER_PORT, Delivery, NginxOptions, PROXY_BODY_HEADROOM_BYTES,
    RenderOptions, SecretSettings, Settings, SettingsError, TERMINATION_MARGIN_SECONDS,
    secret_name_of, service_environment,
};

use crate::CommandError;
use crate::config::{DEFAULT_CONFIG_FILE, DeployConfig};

/// One rendered file, relative to the target's output directory
/// (`.deploy-kit/<environment>/<target>/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: PathBuf,
    pub contents: String,
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../templates/", $name)))),*]
    };
}

/// Every template, by its path under `templates/`.
pub const TEMPLATES: &[(&str, &str)] = templates![
    "docker/Dockerfile.j2",
    "docker/Dockerfile.dockerignore.j2",
    "pulumi/stack.yaml.j2",
    "pulumi/_aws-bucket.yaml.j2",
    "pulumi/_gcs-bucket.yaml.j2",
    "pulumi/aws-lambda.yaml.j2",
    "pulumi/cloud-run.yaml.j2",
    "pulumi/azure-functions.yaml.j2",
    "pulumi/kubernetes.yaml.j2",
    "k8s/deployment.yaml.j2",
    "k8s/service.yaml.j2",
    "k8s/ingress.yaml.j2",
    "k8s/pdb.yaml.j2",
    "k8s/hpa.yaml.j2",
    "k8s/servicemonitor.yaml.j2",
    "compose/compose.yaml.j2",
    "nginx/nginx.conf.j2",
    "fly/fly.toml.j2",
    "railway/railway.json.j2",
    "railway/railway.env.j2",
    "azure/host.json.j2",
    "azure/function.json.j2",
    "github/deploy-kit-doctor.yml.j2",
    "init/deploy-kit.yaml.j2",
];

/// Where the doctor workflow goes, relative to the output directory.
pub const WORKFLOW_PATH: &str = ".github/workflows/deploy-kit-doctor.yml";

/// What `deploy-kit render` produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// Everything the target deploys from (what `plan` writes): Dockerfile,
    /// Pulumi program and stack config, platform manifests.
    Target,
    /// The target's Dockerfile and its Dockerfile.dockerignore (build from
    /// the cargo workspace root, `service.workspace`).
    Dockerfile,
    /// Pulumi.yaml and Pulumi.<environment>.yaml (lambda, cloud-run, azure, kubernetes).
    Pulumi,
    /// k8s/*.yaml: Deployment, Service, Ingress, PDB, HPA, ServiceMonitor.
    K8s,
    /// compose.yaml and its nginx.conf (compose targets).
    Compose,
    /// nginx.conf for any target; see --upstream, --listen, --plain-http.
    Nginx,
    /// fly.toml.
    Fly,
    /// railway.json and railway.env.
    Railway,
    /// host.json and rpc/function.json (Azure Functions custom handler).
    Azure,
    /// .github/workflows/deploy-kit-doctor.yml: doctor as SARIF on every target.
    Workflow,
    /// Every target into DIR/<target>/, plus the workflow.
    All,
}

impl What {
    fn name(self) -> &'static str {
        match self {
            What::Target => "target",
            What::Dockerfile => "dockerfile",
            What::Pulumi => "pulumi",
            What::K8s => "k8s",
            What::Compose => "compose",
            What::Nginx => "nginx",
            What::Fly => "fly",
            What::Railway => "railway",
            What::Azure => "azure",
            What::Workflow => "workflow",
            What::All => "all",
        }
    }

    fn parts(self) -> &'static [Part] {
        match self {
            What::Dockerfile => &[Part::Dockerfile],
            What::Pulumi => &[Part::Pulumi],
            What::K8s => &[Part::Kubernetes],
            What::Compose => &[Part::Compose, Part::Nginx],
            What::Nginx => &[Part::Nginx],
            What::Fly => &[Part::Fly],
            What::Railway => &[Part::Railway],
            What::Azure => &[Part::Azure],
            What::Target | What::Workflow | What::All => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Dockerfile,
    Pulumi,
    Kubernetes,
    Compose,
    Nginx,
    Fly,
    Railway,
    Azure,
}

/// One file a platform renders: output path, template, part.
struct Planned {
    path: String,
    template: &'static str,
    part: Part,
}

fn planned(path: impl Into<String>, template: &'static str, part: Part) -> Planned {
    Planned {
        path: path.into(),
        template,
        part,
    }
}

/// The files `platform` renders; an error for platforms without templates.
fn plan_files(platform: Platform, settings: &Settings) -> Result<Vec<Planned>, CommandError> {
    let stack = format!("Pulumi.{}.yaml", settings.service.environment);
    let dockerfile = || {
        [
            planned("Dockerfile", "docker/Dockerfile.j2", Part::Dockerfile),
            planned(
                "Dockerfile.dockerignore",
                "docker/Dockerfile.dockerignore.j2",
                Part::Dockerfile,
            ),
        ]
    };
    let pulumi = |program: &'static str| {
        [
            planned("Pulumi.yaml", program, Part::Pulumi),
            planned(stack.clone(), "pulumi/stack.yaml.j2", Part::Pulumi),
        ]
    };
    let mut files = Vec::new();
    match platform {
        Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl => {
            files.extend(dockerfile());
            files.extend(pulumi("pulumi/aws-lambda.yaml.j2"));
        }
        Platform::CloudRun => {
            files.extend(dockerfile());
            files.extend(pulumi("pulumi/cloud-run.yaml.j2"));
        }
        Platform::AzureFunctions => {
            files.push(planned("host.json", "azure/host.json.j2", Part::Azure));
            files.push(planned(
                "rpc/function.json",
                "azure/function.json.j2",
                Part::Azure,
            ));
            files.extend(pulumi("pulumi/azure-functions.yaml.j2"));
        }
        Platform::Fly => {
            files.extend(dockerfile());
            files.push(planned("fly.toml", "fly/fly.toml.j2", Part::Fly));
        }
        Platform::Railway => {
            files.extend(dockerfile());
            files.push(planned(
                "railway.json",
                "railway/railway.json.j2",
                Part::Railway,
            ));
            files.push(planned(
                "railway.env",
                "railway/railway.env.j2",
                Part::Railway,
            ));
        }
        Platform::Kubernetes => {
            files.extend(dockerfile());
            for name in ["deployment", "service"] {
                files.push(kubernetes_file(name));
            }
            if settings.target.public {
                files.push(kubernetes_file("ingress"));
            }
            for name in ["pdb", "hpa", "servicemonitor"] {
                files.push(kubernetes_file(name));
            }
            files.extend(pulumi("pulumi/kubernetes.yaml.j2"));
        }
        Platform::Compose => {
            files.extend(dockerfile());
            files.push(planned(
                "compose.yaml",
                "compose/compose.yaml.j2",
                Part::Compose,
            ));
            files.push(planned("nginx.conf", "nginx/nginx.conf.j2", Part::Nginx));
        }
        Platform::CloudFunctions | Platform::CloudflareWorkers => {
            return Err(CommandError::new(
                format!(
                    "`render` has no templates for platform `{}` (target `{}`)",
                    platform.name(),
                    settings.target.name
                ),
                "deploy the container to `cloud-run` (Cloud Functions 2nd gen runs on it), or put Cloudflare Workers in front of a `cloud-run` or `fly` target; see docs/render.md",
                2,
            ));
        }
    }
    Ok(files)
}

fn kubernetes_file(name: &str) -> Planned {
    let template = match name {
        "deployment" => "k8s/deployment.yaml.j2",
        "service" => "k8s/service.yaml.j2",
        "ingress" => "k8s/ingress.yaml.j2",
        "pdb" => "k8s/pdb.yaml.j2",
        "hpa" => "k8s/hpa.yaml.j2",
        _ => "k8s/servicemonitor.yaml.j2",
    };
    planned(format!("k8s/{name}.yaml"), template, Part::Kubernetes)
}

/// The minijinja environment: every template, strict undefined, no
/// auto-escaping (nothing here is HTML), block tags on their own lines.
pub fn environment(templates: &[(&'static str, &'static str)]) -> Environment<'static> {
    let mut environment = Environment::new();
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    environment.set_auto_escape_callback(|_| AutoEscape::None);
    environment.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .expect("the default delimiters are valid"),
    );
    for (name, source) in templates {
        environment
            .add_template(name, source)
            .unwrap_or_else(|error| panic!("template `templates/{name}` does not parse: {error}"));
    }
    environment
}

/// Renders template `name` of `environment` with `context`, turning
/// minijinja errors into a message that names template, line and expression.
pub fn render_template(
    environment: &Environment<'_>,
    name: &str,
    context: Value,
) -> Result<String, CommandError> {
    let template = environment.get_template(name).map_err(|error| {
        CommandError::new(
            format!("no template `templates/{name}`: {error}"),
            "templates are embedded at build time; list them in `TEMPLATES` in infra/src/render.rs",
            1,
        )
    })?;
    template
        .render(context)
        .map_err(|error| template_error(name, &error))
}

fn template_error(name: &str, error: &minijinja::Error) -> CommandError {
    let template = error.name().unwrap_or(name);
    let line = error
        .line()
        .map(|l| format!(" line {l}"))
        .unwrap_or_default();
    let expression = error
        .template_source()
        .zip(error.range())
        .and_then(|(source, range)| source.get(range))
        .map(|text| format!(" `{}`", text.trim()))
        .unwrap_or_default();
    let what = match error.kind() {
        ErrorKind::UndefinedError => format!("undefined variable{expression}"),
        _ => format!(
            "{}{expression}{}",
            error.kind(),
            error
                .detail()
                .map(|detail| format!(": {detail}"))
                .unwrap_or_default()
        ),
    };
    CommandError::new(
        format!("failed to render `templates/{template}`{line}: {what}"),
        "templates may only use the resolved settings (`Settings` in infra/src/render/settings.rs); fix the template or add the setting",
        1,
    )
}

fn header_context(settings: &Settings, template: &str, scope: &str) -> Value {
    let generated_by = format!(
        "Generated by `deploy-kit render` from {} ({scope}) and templates/{template}.",
        settings.config_file
    );
    let do_not_edit = "Do not edit: change the template or the config and run `deploy-kit render` (docs/render.md).";
    minijinja::context! {
        generated_by => generated_by,
        do_not_edit => do_not_edit,
        ..Value::from(minijinja::value::Serde(settings))
    }
}

fn resolve(
    config: &DeployConfig,
    target: &str,
    options: &RenderOptions,
) -> Result<Settings, CommandError> {
    Settings::resolve(config, target, options)
        .map_err(|error| CommandError::new(error.message, error.hint, 2))
}

fn render_planned(
    settings: &Settings,
    files: &[Planned],
) -> Result<Vec<RenderedFile>, CommandError> {
    let environment = environment(TEMPLATES);
    let scope = format!("target `{}`", settings.target.name);
    files
        .iter()
        .map(|file| {
            Ok(RenderedFile {
                path: PathBuf::from(&file.path),
                contents: render_template(
                    &environment,
                    file.template,
                    header_context(settings, file.template, &scope),
                )?,
            })
        })
        .collect()
}

/// Everything a target deploys from: the Pulumi YAML program and its stack
/// config, the Dockerfile, and the platform's manifests.
pub fn render_target(
    config: &DeployConfig,
    target: &str,
) -> Result<Vec<RenderedFile>, CommandError> {
    render_target_with(config, target, &RenderOptions::default())
}

/// [`render_target`] with render flags (config name, nginx options).
pub fn render_target_with(
    config: &DeployConfig,
    target: &str,
    options: &RenderOptions,
) -> Result<Vec<RenderedFile>, CommandError> {
    render_parts(config, target, options, What::Target)
}

/// The files of `what` for one target (`what` is not `all` or `workflow`).
pub fn render_parts(
    config: &DeployConfig,
    target: &str,
    options: &RenderOptions,
    what: What,
) -> Result<Vec<RenderedFile>, CommandError> {
    let mut settings = resolve(config, target, options)?;
    let platform = config.targets[target].platform;
    let mut files = plan_files(platform, &settings)?;
    settings.kubernetes_files = files
        .iter()
        .filter(|file| file.part == Part::Kubernetes)
        .map(|file| file.path.clone())
        .collect();
    if what != What::Target {
        let parts = what.parts();
        files.retain(|file| parts.contains(&file.part));
        if what == What::Nginx && files.is_empty() {
            files.push(planned("nginx.conf", "nginx/nginx.conf.j2", Part::Nginx));
        }
        if files.is_empty() {
            return Err(CommandError::new(
                format!(
                    "target `{target}` (platform `{}`) renders no `{}` files",
                    platform.name(),
                    what.name()
                ),
                format!(
                    "see what it renders with `deploy-kit render target --target {target}`, or pick a target of another platform"
                ),
                2,
            ));
        }
    }
    render_planned(&settings, &files)
}

/// The GitHub Actions workflow running the doctor on every target.
pub fn render_workflow(
    config: &DeployConfig,
    options: &RenderOptions,
) -> Result<RenderedFile, CommandError> {
    let first = config.targets.keys().next().ok_or_else(|| {
        CommandError::new(
            "`targets` is empty",
            "define at least one target in deploy-kit.yaml",
            2,
        )
    })?;
    let settings = resolve(config, first, options)?;
    let template = "github/deploy-kit-doctor.yml.j2";
    Ok(RenderedFile {
        path: PathBuf::from(WORKFLOW_PATH),
        contents: render_template(
            &environment(TEMPLATES),
            template,
            header_context(&settings, template, "all targets"),
        )?,
    })
}

/// Every target under `<target>/`, plus the workflow. Targets whose platform
/// has no templates are skipped and returned with the reason.
pub fn render_all(
    config: &DeployConfig,
    options: &RenderOptions,
) -> Result<(Vec<RenderedFile>, Vec<String>), CommandError> {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    for target in config.targets.keys() {
        match render_target_with(config, target, options) {
            Ok(rendered) => files.extend(rendered.into_iter().map(|file| RenderedFile {
                path: Path::new(target).join(file.path),
                contents: file.contents,
            })),
            Err(error) if error.exit_code == 2 => skipped.push(error.message),
            Err(error) => return Err(error),
        }
    }
    files.push(render_workflow(config, options)?);
    Ok((files, skipped))
}

/// A file whose committed copy differs from what would be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleFile {
    pub path: PathBuf,
    pub missing: bool,
}

/// The files of `files` that are missing or different under `dir`.
pub fn stale_files(files: &[RenderedFile], dir: &Path) -> Vec<StaleFile> {
    files
        .iter()
        .filter_map(|file| match std::fs::read_to_string(dir.join(&file.path)) {
            Ok(text) if text == file.contents => None,
            Ok(_) => Some(StaleFile {
                path: dir.join(&file.path),
                missing: false,
            }),
            Err(_) => Some(StaleFile {
                path: dir.join(&file.path),
                missing: true,
            }),
        })
        .collect()
}

/// Writes `files` under `dir`, creating directories.
pub fn write_files(files: &[RenderedFile], dir: &Path) -> Result<(), CommandError> {
    for file in files {
        let path = dir.join(&file.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| {
                CommandError::new(
                    format!("failed to create `{}`: {error}", parent.display()),
                    "check that the output directory is writable, or pass another `--output-dir`",
                    1,
                )
            })?;
        }
        std::fs::write(&path, &file.contents).map_err(|error| {
            CommandError::new(
                format!("failed to write `{}`: {error}", path.display()),
                "check that the output directory is writable, or pass another `--output-dir`",
                1,
            )
        })?;
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Output goes to .deploy-kit/<environment>/<target>/ next to the config (all: \
.deploy-kit/<environment>/<target>/ for each target; workflow: the config's directory), \
or to --output-dir. Dockerfiles build from the cargo workspace root (`service.workspace`): \
docker build -f <dir>/Dockerfile <workspace>

Examples:
  deploy-kit render target --target production
  deploy-kit render all --config examples/kubernetes.yaml --output-dir examples/rendered/kubernetes --check
  deploy-kit render nginx --upstream 127.0.0.1:9001 --upstream 127.0.0.1:9002 \\
      --listen 127.0.0.1:8088 --plain-http --output-dir /tmp/nginx
  nginx -p /tmp/nginx -c /tmp/nginx/nginx.conf -g 'daemon off;'

Exit codes: 0 rendered (or fresh with --check), 1 stale files (--check) or a render \
failure, 2 usage or config error.")]
pub struct Args {
    /// What to render.
    #[arg(value_enum)]
    pub what: What,
    /// Target (a name under `targets:`); default `default_target`, or the only target.
    #[arg(long, env = "DEPLOY_KIT_TARGET")]
    pub target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory to write into (see below for the defaults).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Write nothing; exit 1 listing files that are missing or differ.
    #[arg(long)]
    pub check: bool,
    /// nginx upstream `HOST:PORT` (repeatable); default the target's replicas
    /// (compose: `<name>-N:8080`, else 127.0.0.1:8080).
    #[arg(long = "upstream", value_name = "HOST:PORT")]
    pub upstreams: Vec<String>,
    /// nginx `listen` address (`443`, `127.0.0.1:8443`); default 443 with TLS
    /// (plus a redirect on 80), 80 with --plain-http.
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// nginx serves plain HTTP: no TLS (loopback tests, TLS terminated in front).
    #[arg(long)]
    pub plain_http: bool,
    /// TLS certificate path as nginx sees it.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/nginx/tls/tls.crt",
        conflicts_with = "plain_http"
    )]
    pub tls_certificate: String,
    /// TLS private key path as nginx sees it.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/nginx/tls/tls.key",
        conflicts_with = "plain_http"
    )]
    pub tls_certificate_key: String,
}

impl Args {
    /// The command that refreshes what `--check` found stale.
    fn refresh_command(&self) -> String {
        let mut command = format!("deploy-kit render {}", self.what.name());
        if let Some(config) = &self.config {
            let _ = write!(command, " --config {}", config.display());
        }
        if let Some(target) = &self.target {
            let _ = write!(command, " --target {target}");
        }
        if let Some(dir) = &self.output_dir {
            let _ = write!(command, " --output-dir {}", dir.display());
        }
        for upstream in &self.upstreams {
            let _ = write!(command, " --upstream {upstream}");
        }
        if let Some(listen) = &self.listen {
            let _ = write!(command, " --listen {listen}");
        }
        if self.plain_http {
            command.push_str(" --plain-http");
        }
        command
    }
}

/// Loads the config named by `--config`, else `./deploy-kit.yaml` (exit 2 on errors).
pub fn load_config(path: Option<&Path>) -> Result<(DeployConfig, PathBuf), CommandError> {
    let path = path
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE));
    if !path.exists() {
        return Err(CommandError::new(
            format!("no config file `{}`", path.display()),
            "pass `--config FILE`, set `DEPLOY_KIT_CONFIG`, or write one with `deploy-kit init`",
            2,
        ));
    }
    let mut config = DeployConfig::load(&path).map_err(|error| {
        CommandError::new(
            error.to_string(),
            "fix the file; every key is described in the example `deploy-kit.yaml`",
            2,
        )
    })?;
    let dir = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::artifact::fill_defaults(&mut config, dir)?;
    Ok((config, path))
}

/// Renders (or checks) what `args` asks for; the exit code as documented.
pub fn render(args: &Args) -> Result<String, CommandError> {
    let (config, config_path) = load_config(args.config.as_deref())?;
    let options = RenderOptions {
        config_name: config_path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| DEFAULT_CONFIG_FILE.into()),
        nginx: NginxOptions {
            upstreams: args.upstreams.clone(),
            listen: args.listen.clone(),
            plain_http: args.plain_http,
            tls_certificate: Some(args.tls_certificate.clone()),
            tls_certificate_key: Some(args.tls_certificate_key.clone()),
        },
    };
    let base = config_path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let environment_dir = base.join(".deploy-kit").join(&config.service.environment);
    let mut notes = String::new();
    let (files, default_dir) = match args.what {
        What::All => {
            let (files, skipped) = render_all(&config, &options)?;
            for reason in skipped {
                let _ = writeln!(notes, "skipped: {reason}");
            }
            (files, environment_dir)
        }
        What::Workflow => (vec![render_workflow(&config, &options)?], base),
        what => {
            let (target, _) = config.target(args.target.as_deref()).map_err(|message| {
                CommandError::new(
                    message,
                    "name a target with `--target NAME` or `DEPLOY_KIT_TARGET`",
                    2,
                )
            })?;
            let files = render_parts(&config, target, &options, what)?;
            (files, environment_dir.join(target))
        }
    };
    let dir = args.output_dir.clone().unwrap_or(default_dir);
    if args.check {
        let stale = stale_files(&files, &dir);
        if stale.is_empty() {
            let _ = writeln!(
                notes,
                "{} rendered file(s) in {} are fresh",
                files.len(),
                dir.display()
            );
            return Ok(notes);
        }
        let mut message = format!("{} rendered file(s) are stale:", stale.len());
        for file in &stale {
            let _ = write!(
                message,
                "\n  {} ({})",
                file.path.display(),
                if file.missing { "missing" } else { "differs" }
            );
        }
        return Err(CommandError::new(
            message,
            format!("refresh them with `{}`", args.refresh_command()),
            1,
        ));
    }
    write_files(&files, &dir)?;
    for file in &files {
        let _ = writeln!(notes, "wrote {}", dir.join(&file.path).display());
    }
    Ok(notes)
}

pub fn run(args: Args) -> ExitCode {
    match render(&args) {
        Ok(notes) => {
            eprint!("{notes}");
            ExitCode::SUCCESS
        }
        Err(error) => error.report(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        // `environment` panics naming the template that does not parse.
        let environment = environment(TEMPLATES);
        for (name, _) in TEMPLATES {
            assert!(environment.get_template(name).is_ok(), "{name}");
        }
    }
}
