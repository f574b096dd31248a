//! `deploy-kit`: parse, dispatch, print errors with a hint.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use deploy_kit::CommandError;
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
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented deploy-kit.yaml.
    Init,
    /// Render and show what `up` would change.
    Plan,
    /// Provision and deploy a target (`local`: run kit-service here).
    Up(UpArgs),
    /// Remove what `up` made.
    Down { target: String },
    /// Check config, limits, keys and storage.
    Doctor(DoctorArgs),
    /// Signing-key management.
    Secrets,
    /// Render templates.
    Render,
}

#[derive(clap::Args)]
struct UpArgs {
    /// Target to bring up; only `local` so far.
    target: String,
    /// The `kit-service` binary; default: next to `deploy-kit`, then on `PATH`.
    #[arg(long, env = "DEPLOY_KIT_KIT_SERVICE", value_name = "PATH")]
    kit_service: Option<PathBuf>,
    /// Loopback port to serve on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Stop the service after the doctor and exit with the doctor's code.
    #[arg(long)]
    no_wait: bool,
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
    let name = match cli.command {
        Command::Doctor(args) => return doctor(args),
        Command::Init => "init",
        Command::Plan => "plan",
        Command::Up(args) if args.target == "local" => return up_local(args),
        Command::Up(_) => "up",
        Command::Down { .. } => "down",
        Command::Secrets => "secrets",
        Command::Render => "render",
    };
    let error = CommandError::NotImplemented(name);
    eprintln!("error: {error}");
    eprintln!("hint: run `kit-service serve` to host the service directly meanwhile");
    ExitCode::from(2)
}

fn up_local(args: UpArgs) -> ExitCode {
    match deploy_kit::up_local::run(&deploy_kit::up_local::UpLocalRequest {
        kit_service: args.kit_service,
        port: args.port,
        wait: !args.no_wait,
    }) {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("hint: {}", error.hint());
            ExitCode::from(error.exit_code())
        }
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
