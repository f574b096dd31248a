//! `deploy-kit`: parse, dispatch, print errors with a hint.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use deploy_kit::CommandError;

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
    /// Provision and deploy a target.
    Up { target: String },
    /// Remove what `up` made.
    Down { target: String },
    /// Check config, limits, keys and storage.
    Doctor,
    /// Signing-key management.
    Secrets,
    /// Render templates.
    Render,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match cli.command {
        Command::Init => "init",
        Command::Plan => "plan",
        Command::Up { .. } => "up",
        Command::Down { .. } => "down",
        Command::Doctor => "doctor",
        Command::Secrets => "secrets",
        Command::Render => "render",
    };
    let error = CommandError::NotImplemented(name);
    eprintln!("error: {error}");
    eprintln!("hint: run `kit-service serve` to host the service directly meanwhile");
    ExitCode::from(2)
}
