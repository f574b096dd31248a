//! `kit-service`: parse, set up, dispatch. Logic lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kit_service::config::{Config, ProcessEnv};

#[derive(Parser)]
#[command(name = "kit-service", version, about = "vgi-rpc HTTP host")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve vgi-rpc over HTTP.
    Serve(ServeArgs),
    /// Print the environment-variable reference (docs/configuration.md table).
    EnvDocs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to bind; `PORT` overrides the port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// URL path prefix for every route (default: none, as upstream).
    #[arg(long, default_value = "")]
    prefix: String,
    /// Host ConformanceService and conformance.Secondary.v1 instead of the demo protocol.
    #[arg(long)]
    conformance: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::EnvDocs => {
            print!("{}", kit_service::config::variables_markdown());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match Config::from_env(&ProcessEnv, args.listen) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("hint: run `kit-service env-docs` for every variable and its format");
            return ExitCode::from(64);
        }
    };
    init_logging(config.log_json);
    if config.keys.is_ephemeral() {
        tracing::warn!(
            "no signing key configured (VGI_SIGNING_KEY or VGI_SIGNING_KEY_FILE): using a random per-process key. \
             Stream tokens will NOT verify across replicas or restarts; multi-instance deployments will reject each other's tokens"
        );
    }
    let protocols = if args.conformance {
        kit_service::conformance::protocols()
    } else {
        vec![kit_service::demo::protocol()]
    };
    let server = kit_service::serve::build_server(&config, protocols, &args.prefix);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: failed to bind `{}`: {error}", config.listen);
                eprintln!("hint: pick a free port with `--listen 127.0.0.1:0` or set `PORT`");
                return ExitCode::FAILURE;
            }
        };
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(%address, prefix = %server.config().prefix, "listening");
        println!("LISTENING http://{address}{}", server.config().prefix);
        match kit_service::serve::serve(
            listener,
            server,
            kit_service::serve::Drain {
                delay: config.drain_delay,
                grace: Duration::from_secs(config.shutdown_grace_seconds),
            },
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: server failed: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
