//! `kit-service`: parse, set up, dispatch. Logic lives in the library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kit_service::config::{Config, ProcessEnv};

#[global_allocator]
static GLOBAL: kit_service::alloc::HugePageAlloc = kit_service::alloc::HugePageAlloc;

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
    /// Run the deploy-kit doctor checks on this environment (exit 0/1/2/3).
    Doctor(DoctorArgs),
    /// Serve vgi-rpc on AWS Lambda (Function URL, API Gateway v1 and v2 events).
    #[cfg(feature = "lambda")]
    Lambda(LambdaArgs),
    /// Serve vgi-rpc on AWS Lambda: not in this build, rebuild with `--features lambda`.
    #[cfg(not(feature = "lambda"))]
    #[command(disable_help_flag = true)]
    Lambda {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
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

/// `kit-service lambda`: `serve` without the socket, so no `--listen`.
#[cfg(feature = "lambda")]
#[derive(clap::Args)]
struct LambdaArgs {
    /// URL path prefix for every route, e.g. `/prod` for an API Gateway stage.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Host ConformanceService and conformance.Secondary.v1 instead of the demo protocol.
    #[arg(long)]
    conformance: bool,
}

/// `kit-service doctor`: the checks deploy-kit runs, on what this container sees.
#[derive(clap::Args)]
struct DoctorArgs {
    /// Report format.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    format: String,
    /// Lowest severity of a failure that exits 1.
    #[arg(long, value_parser = ["error", "warn"], default_value = "error")]
    fail_on: String,
    /// The address `serve` would bind; `PORT` overrides the port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
}

fn doctor(args: DoctorArgs) -> ExitCode {
    let format = match args.format.as_str() {
        "json" => kit_checks::render::Format::Json,
        _ => kit_checks::render::Format::Text,
    };
    let fail_on = match args.fail_on.as_str() {
        "warn" => kit_checks::Severity::Warn,
        _ => kit_checks::Severity::Error,
    };
    let (text, code) = kit_service::doctor::run(&ProcessEnv, args.listen, format, fail_on);
    if code == 2 {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::EnvDocs => {
            print!("{}", kit_service::config::variables_markdown());
            ExitCode::SUCCESS
        }
        Command::Serve(args) => serve(args),
        Command::Doctor(args) => doctor(args),
        #[cfg(feature = "lambda")]
        Command::Lambda(args) => lambda(args),
        #[cfg(not(feature = "lambda"))]
        Command::Lambda { .. } => {
            eprintln!("error: this kit-service was built without AWS Lambda support");
            eprintln!(
                "hint: cargo build --release -p kit-service --features lambda, then run `kit-service lambda`"
            );
            ExitCode::from(2)
        }
    }
}

/// Config, logs and traces, and the server: what `serve` and `lambda` share.
fn start(
    listen: SocketAddr,
    prefix: &str,
    conformance: bool,
) -> Result<
    (
        Config,
        kit_service::telemetry::Telemetry,
        std::sync::Arc<kit_service::Server>,
    ),
    ExitCode,
> {
    let config = match Config::from_env(&ProcessEnv, listen) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("hint: run `kit-service env-docs` for every variable and its format");
            return Err(ExitCode::from(64));
        }
    };
    let telemetry = match kit_service::telemetry::init(&ProcessEnv, config.log_json) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!(
                "hint: set `OTEL_EXPORTER_OTLP_ENDPOINT` to the collector's base URL, e.g. `http://localhost:4318`"
            );
            return Err(ExitCode::from(64));
        }
    };
    if config.keys.is_ephemeral() {
        tracing::warn!(
            "no signing key configured (VGI_SIGNING_KEY or VGI_SIGNING_KEY_FILE): using a random per-process key. \
             Stream tokens will NOT verify across replicas or restarts; multi-instance deployments will reject each other's tokens"
        );
    }
    let protocols = if conformance {
        kit_service::conformance::protocols()
    } else {
        vec![kit_service::demo::protocol()]
    };
    let server = kit_service::serve::build_server(&config, protocols, prefix);
    Ok((config, telemetry, server))
}

fn serve(args: ServeArgs) -> ExitCode {
    let (config, telemetry, server) = match start(args.listen, &args.prefix, args.conformance) {
        Ok(started) => started,
        Err(code) => return code,
    };
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
    let code = runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!("error: failed to bind `{}`: {error}", config.listen);
                eprintln!("hint: pick a free port with `--listen 127.0.0.1:0` or set `PORT`");
                return ExitCode::FAILURE;
            }
        };
        let bound = match listener.local_addr() {
            Ok(bound) => bound,
            Err(error) => {
                eprintln!("error: failed to read the bound address: {error}");
                return ExitCode::FAILURE;
            }
        };
        let address = bound.to_string();
        let server = match kit_service::serve::attach_storage(&config, server, bound) {
            Ok(server) => server,
            Err(error) => {
                eprintln!("error: {error}");
                eprintln!("hint: run `kit-service env-docs` for the KIT_STORAGE_* variables");
                return ExitCode::from(64);
            }
        };
        let signal = kit_service::serve::shutdown_signal();
        tracing::info!(%address, prefix = %server.config().prefix, "listening");
        println!("LISTENING http://{address}{}", server.config().prefix);
        match kit_service::serve::serve_until(
            listener,
            server,
            kit_service::serve::Drain {
                delay: config.drain_delay,
                grace: Duration::from_secs(config.shutdown_grace_seconds),
            },
            signal,
        )
        .await
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: server failed: {error}");
                ExitCode::FAILURE
            }
        }
    });
    telemetry.shutdown();
    code
}

#[cfg(feature = "lambda")]
fn lambda(args: LambdaArgs) -> ExitCode {
    let missing = kit_service::lambda::missing_environment(&ProcessEnv);
    if !missing.is_empty() {
        eprintln!(
            "error: not running inside AWS Lambda: `{}` not set",
            missing.join("`, `")
        );
        eprintln!(
            "hint: deploy with `kit-service lambda` as the function's command; run `kit-service serve` anywhere else"
        );
        return ExitCode::from(64);
    }
    // `PORT` means nothing here: the listen address is never bound.
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let (_config, telemetry, server) = match start(listen, &args.prefix, args.conformance) {
        Ok(started) => started,
        Err(code) => return code,
    };
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
    tracing::info!(prefix = %server.config().prefix, "serving Lambda invocations");
    let result = runtime.block_on(kit_service::lambda::run(server));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: the Lambda runtime failed: {error}");
            ExitCode::FAILURE
        }
    }
}
