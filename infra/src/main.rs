//! `deploy-kit`: parse, dispatch, print errors with a hint.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use deploy_kit::doctor::{DoctorRequest, OutputFormat};
use kit_checks::render::Format;
use kit_checks::{Mode, Severity};

#[derive(Parser)]
#[command(
    name = "deploy-kit",
    version,
    about = "take a vgi-rpc service from laptop to production"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Environment under `environments:` in deploy-kit.yaml (`staging`,
    /// `production`); default `service.environment`.
    #[arg(
        long = "env",
        global = true,
        env = "DEPLOY_KIT_ENV",
        value_name = "NAME"
    )]
    environment: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Create a crate for your own vgi-rpc service (typed methods, a test, deploy-kit.yaml).
    New(deploy_kit::new::Args),
    /// Write a commented deploy-kit.yaml.
    Init(deploy_kit::init::Args),
    /// Build the target's artifact: a checked Lambda zip, or an OCI image pushed by digest.
    Build(deploy_kit::build::Args),
    /// Render a target and show what `up` would create, change or delete.
    Plan(deploy_kit::plan::Args),
    /// Provision and deploy a target (`local`: build and run the service here).
    Up(deploy_kit::up::Args),
    /// List a target's releases (what each `up` and `rollback` put live).
    Releases(deploy_kit::releases::ReleasesArgs),
    /// Return traffic to an earlier release (default: the one before the live one).
    Rollback(deploy_kit::releases::RollbackArgs),
    /// Remove what `up` made.
    Down(deploy_kit::down::Args),
    /// Check config, limits, keys and storage.
    Doctor(DoctorArgs),
    /// A target's state and its lock: `show`, `pull`, `push`, `unlock`.
    State(deploy_kit::state::command::Args),
    /// Signing-key management (`secrets rotate`).
    Secrets(deploy_kit::secrets::Args),
    /// Render templates: Dockerfiles, nginx, compose, Kubernetes, Pulumi, CI workflow.
    Render(deploy_kit::render::Args),
    /// List a service's protocols and methods, or call one (`PROTOCOL.METHOD name=value ...`).
    Call(deploy_kit::call::Args),
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
    Sarif,
    Junit,
    Github,
    /// The registry as docs/checks.md (with `--list-checks`).
    Markdown,
}

#[derive(Clone, Copy, ValueEnum)]
enum FailOnArg {
    Error,
    Warn,
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// Judge config, environment and rendered files only (the default).
    #[arg(long, conflicts_with = "online")]
    offline: bool,
    /// Also probe live replicas and storage.
    #[arg(long)]
    online: bool,
    /// Target to judge.
    #[arg(long, env = "DEPLOY_KIT_TARGET")]
    target: Option<String>,
    /// Config file.
    #[arg(long, env = "DEPLOY_KIT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, env = "DEPLOY_KIT_FORMAT", default_value = "text")]
    format: FormatArg,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Lowest severity of a failure that exits 1.
    #[arg(long, value_enum, env = "DEPLOY_KIT_FAIL_ON", default_value = "error")]
    fail_on: FailOnArg,
    /// List every check and exit.
    #[arg(long)]
    list_checks: bool,
    /// Explain one check (id or alias) and exit.
    #[arg(long, value_name = "ID")]
    explain: Option<String>,
    /// Ignore waivers in deploy-kit.yaml.
    #[arg(long)]
    no_waivers: bool,
    /// Replica base URL for `--online` (repeatable); replaces the target's `replicas`.
    #[arg(
        long = "replica",
        value_name = "URL",
        env = "DEPLOY_KIT_REPLICAS",
        value_delimiter = ','
    )]
    replicas: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(environment) = &cli.environment {
        deploy_kit::config::select_environment(environment);
    }
    match cli.command {
        Command::Doctor(args) => doctor(args),
        Command::New(args) => deploy_kit::new::run(args),
        Command::Init(args) => deploy_kit::init::run(args),
        Command::Build(args) => deploy_kit::build::run(args),
        Command::Plan(args) => deploy_kit::plan::run(args),
        Command::Up(args) => deploy_kit::up::run(args),
        Command::Releases(args) => deploy_kit::releases::run_releases(args),
        Command::Rollback(args) => deploy_kit::releases::run_rollback(args),
        Command::Down(args) => deploy_kit::down::run(args),
        Command::State(args) => deploy_kit::state::command::run(args),
        Command::Secrets(args) => deploy_kit::secrets::run(args),
        Command::Render(args) => deploy_kit::render::run(args),
        Command::Call(args) => deploy_kit::call::run(args),
    }
}

fn doctor(args: DoctorArgs) -> ExitCode {
    let request = DoctorRequest {
        config: args.config,
        target: args.target,
        mode: if args.online {
            Mode::Online
        } else {
            Mode::Offline
        },
        format: match args.format {
            FormatArg::Text => OutputFormat::Report(Format::Text),
            FormatArg::Json => OutputFormat::Report(Format::Json),
            FormatArg::Sarif => OutputFormat::Report(Format::Sarif),
            FormatArg::Junit => OutputFormat::Report(Format::Junit),
            FormatArg::Github => OutputFormat::Report(Format::Github),
            FormatArg::Markdown => OutputFormat::Markdown,
        },
        fail_on: match args.fail_on {
            FailOnArg::Error => Severity::Error,
            FailOnArg::Warn => Severity::Warn,
        },
        apply_waivers: !args.no_waivers,
        replicas: args.replicas,
        today: std::env::var("DEPLOY_KIT_TODAY")
            .ok()
            .filter(|v| !v.is_empty()),
        list_checks: args.list_checks,
        explain: args.explain,
        prebuilt_binary: None,
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let output = match deploy_kit::doctor::doctor(&request, &cwd, &|name| std::env::var(name).ok())
    {
        Ok(output) => output,
        Err(error) => {
            eprintln!("error: {}", error.message);
            eprintln!("hint: {}", error.hint);
            return ExitCode::from(2);
        }
    };
    match &args.output {
        None => print!("{}", output.text),
        Some(path) => {
            if let Err(error) = std::fs::write(path, &output.text) {
                eprintln!("error: failed to write `{}`: {error}", path.display());
                eprintln!("hint: check that the directory exists and is writable");
                return ExitCode::from(2);
            }
            eprintln!("wrote {}", path.display());
            if let Some(summary) = &output.summary {
                eprintln!("{summary}");
            }
        }
    }
    ExitCode::from(output.exit_code)
}
