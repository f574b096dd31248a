//! The whole `main` of a service binary: a user's crate writes
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     kit_service::host::main([kit_service::demo::protocol()])
//! }
//! ```
//!
//! and gets every command the `kit-service` binary has: `serve` (TCP, with
//! health, metrics, auth, rate limits, storage and a graceful drain, all set
//! by the environment; see `env-docs`), `lambda` (with the `lambda` feature),
//! `doctor` and `env-docs`. The command's name is the binary's file name.
//!
//! A host with more than one protocol set adds alternatives, each a flag of
//! `serve` and `lambda`; `kit-service` itself is one such host:
//!
//! ```no_run
//! use kit_service::host::Host;
//!
//! fn main() -> std::process::ExitCode {
//!     Host::new([kit_service::demo::protocol()])
//!         .alternative(
//!             "conformance",
//!             "Host ConformanceService and conformance.Secondary.v1 instead of the demo protocol",
//!             kit_service::conformance::protocols,
//!         )
//!         .main()
//! }
//! ```
//!
//! A binary may also install kit-service's allocator, as `kit-service` does
//! (huge pages for large Arrow buffers, see [`crate::alloc`]):
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: kit_service::alloc::HugePageAlloc = kit_service::alloc::HugePageAlloc;
//! # fn main() {}
//! ```
//!
//! Exit codes: 0 after a clean drain, 64 for bad configuration (every bad
//! variable is reported, before any port is bound), 2 for a command this
//! build lacks, 1 for any other failure; `doctor` exits 0/1/2/3.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Arg, ArgAction, ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::config::{Config, ProcessEnv};
use crate::http::Server;
use crate::http::auth::Authenticator;
use crate::identity::Identity;
use crate::rpc::Protocol;

/// Bytes present in every binary built with the `lambda` feature (the
/// `lambda` subcommand exists either way, so `--help` cannot tell), so a
/// build tool can tell from the file alone, even for an architecture it
/// cannot run, that `lambda` serves invocations. `deploy-kit build` looks
/// for them before it zips a Lambda package.
pub const LAMBDA_FEATURE_MARKER: &[u8] = b"kit-service:lambda-runtime:v1";

/// Runs the service binary for `protocols` (`protocols[0]` is the primary
/// one, named by `/health`): parses `std::env::args_os`, runs the command,
/// returns its exit code.
pub fn main(protocols: impl IntoIterator<Item = Protocol>) -> ExitCode {
    Host::new(protocols).main()
}

type Factory = Box<dyn FnOnce() -> Vec<Protocol>>;
type IdentityFactory = Box<dyn FnOnce() -> Identity>;

/// The protocols a run hosts, the authenticator replacing API keys, and
/// the `vgi_rpc.Identity.v2` hooks, if any.
type Hosted = (
    Vec<Protocol>,
    Option<Arc<dyn Authenticator>>,
    Option<Identity>,
);

/// A set of protocols chosen by a flag of `serve` and `lambda`.
struct Alternative {
    flag: String,
    help: String,
    /// Left out of `--help`: for flags that exist for benchmarks and tests.
    hidden: bool,
    protocols: Factory,
    /// Replaces API-key authentication for this set (see [`Host::authenticator`]).
    authenticator: Option<Arc<dyn Authenticator>>,
    /// `vgi_rpc.Identity.v2` for this set (see [`Host::identity`]).
    identity: Option<IdentityFactory>,
}

/// The service binary's command line, for hosts that need more than
/// [`main`]: a fixed name, a version, alternative protocol sets.
pub struct Host {
    name: Option<String>,
    version: Option<String>,
    about: Option<String>,
    protocols: Vec<Protocol>,
    /// `vgi_rpc.Identity.v2` for the default set.
    identity: Option<IdentityFactory>,
    alternatives: Vec<Alternative>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("name", &self.name)
            .field(
                "protocols",
                &self
                    .protocols
                    .iter()
                    .map(Protocol::name)
                    .collect::<Vec<_>>(),
            )
            .field(
                "alternatives",
                &self
                    .alternatives
                    .iter()
                    .map(|a| a.flag.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Host {
    /// A host serving `protocols` unless an alternative's flag is given.
    pub fn new(protocols: impl IntoIterator<Item = Protocol>) -> Host {
        Host {
            name: None,
            version: None,
            about: None,
            protocols: protocols.into_iter().collect(),
            identity: None,
            alternatives: Vec::new(),
        }
    }

    /// The command's name in help and hints (default: the binary's file name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The version `--version` prints, e.g. `env!("CARGO_PKG_VERSION")`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// The one-line description `--help` shows.
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// Adds `--<flag>` to `serve` and `lambda`: serve what `protocols`
    /// returns instead of the default set. Built only when chosen.
    pub fn alternative(
        mut self,
        flag: impl Into<String>,
        help: impl Into<String>,
        protocols: impl FnOnce() -> Vec<Protocol> + 'static,
    ) -> Self {
        self.alternatives.push(Alternative {
            flag: flag.into(),
            help: help.into(),
            hidden: false,
            protocols: Box::new(protocols),
            authenticator: None,
            identity: None,
        });
        self
    }

    /// [`Host::alternative`], but left out of `--help`: a flag kept for
    /// benchmarks and tests rather than for users (`kit-service serve
    /// --dynamic-demo` hosts the string-declared demo, which `kit-bench`
    /// compares with the typed one).
    ///
    /// ```
    /// use std::process::ExitCode;
    /// use kit_service::host::Host;
    ///
    /// let host = Host::new([kit_service::demo::protocol()])
    ///     .name("acme")
    ///     .hidden_alternative("dynamic-demo", "the string-declared demo", || {
    ///         vec![kit_service::demo::dynamic_protocol()]
    ///     });
    /// // Hidden from `--help`, still accepted.
    /// assert_eq!(host.run(["acme", "serve", "--dynamic-demo", "--help"]), ExitCode::SUCCESS);
    /// ```
    pub fn hidden_alternative(
        self,
        flag: impl Into<String>,
        help: impl Into<String>,
        protocols: impl FnOnce() -> Vec<Protocol> + 'static,
    ) -> Self {
        let mut host = self.alternative(flag, help, protocols);
        if let Some(added) = host.alternatives.last_mut() {
            added.hidden = true;
        }
        host
    }

    /// Makes the alternative added last authenticate callers with
    /// `authenticator` instead of `KIT_API_KEYS` (upstream's `authenticate`
    /// hook). `kit-service serve --conformance-auth-reason` uses it for the
    /// conformance suite's auth-reason worker.
    ///
    /// ```
    /// use std::process::ExitCode;
    /// use std::sync::Arc;
    /// use kit_service::host::Host;
    ///
    /// let host = Host::new([kit_service::demo::protocol()])
    ///     .name("acme")
    ///     .hidden_alternative("refuse-all", "refuse every call", || vec![kit_service::demo::protocol()])
    ///     .authenticator(Arc::new(kit_service::conformance::AuthReasonWorker));
    /// assert_eq!(host.run(["acme", "serve", "--refuse-all", "--help"]), ExitCode::SUCCESS);
    /// ```
    ///
    /// # Panics
    ///
    /// When no alternative was added before.
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.alternatives
            .last_mut()
            .expect("Host::authenticator applies to the alternative added last: add one first")
            .authenticator = Some(authenticator);
        self
    }

    /// Hosts `vgi_rpc.Identity.v2` with the hooks `identity` builds, for the
    /// alternative added last, or for the default protocol set when none
    /// was added. Only the methods whose hook is configured are hosted, and
    /// grants or resolved credentials are then also accepted as bearers
    /// after the API keys (or the set's authenticator). Without this (and
    /// without `KIT_GRANT_KEYS`) no identity protocol is hosted at all.
    ///
    /// ```
    /// use std::process::ExitCode;
    /// use kit_service::host::Host;
    /// use kit_service::identity::{Identity, TokenIdentity};
    ///
    /// let host = Host::new([kit_service::demo::protocol()]).name("acme").identity(|| {
    ///     Identity::builder()
    ///         .resolve_token(&["edge-proxy"], |token| Ok((token == "k1").then(|| TokenIdentity::new("ann"))))
    ///         .build()
    ///         .expect("an allowlist is given")
    /// });
    /// assert_eq!(host.run(["acme", "serve", "--help"]), ExitCode::SUCCESS);
    /// ```
    pub fn identity(mut self, identity: impl FnOnce() -> Identity + 'static) -> Self {
        match self.alternatives.last_mut() {
            Some(alternative) => alternative.identity = Some(Box::new(identity)),
            None => self.identity = Some(Box::new(identity)),
        }
        self
    }

    /// Parses `std::env::args_os` and runs the command.
    pub fn main(self) -> ExitCode {
        self.run(std::env::args_os())
    }

    /// Parses `args` (the first is the program name) and runs the command.
    ///
    /// ```
    /// use std::process::ExitCode;
    /// use kit_service::host::Host;
    ///
    /// let host = Host::new([kit_service::demo::protocol()]).name("acme");
    /// // Prints the environment-variable reference, as `acme env-docs` does.
    /// assert_eq!(host.run(["acme", "env-docs"]), ExitCode::SUCCESS);
    /// ```
    pub fn run<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let name = self.name.clone().unwrap_or_else(|| binary_name(&args));
        let command = self.command(&name);
        let matches = match command.try_get_matches_from(args) {
            Ok(matches) => matches,
            Err(error) => {
                let _ = error.print();
                return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
            }
        };
        let cli = match Cli::from_arg_matches(&matches) {
            Ok(cli) => cli,
            Err(error) => {
                let _ = error.print();
                return ExitCode::from(2);
            }
        };
        let chosen = matches
            .subcommand()
            .map(|(_, sub)| self.chosen(sub))
            .unwrap_or(None);
        let Host {
            protocols,
            identity,
            alternatives,
            ..
        } = self;
        let protocols = move || match chosen.and_then(|index| alternatives.into_iter().nth(index)) {
            Some(alternative) => (
                (alternative.protocols)(),
                alternative.authenticator,
                alternative.identity.map(|build| build()),
            ),
            None => (protocols, None, identity.map(|build| build())),
        };
        match cli.command {
            Command::EnvDocs => {
                print!("{}", crate::config::variables_markdown());
                ExitCode::SUCCESS
            }
            Command::Serve(args) => serve(&name, args, protocols()),
            Command::Doctor(args) => doctor(args, &protocols().0),
            #[cfg(feature = "lambda")]
            Command::Lambda(args) => lambda(&name, args, protocols),
            #[cfg(not(feature = "lambda"))]
            Command::Lambda { .. } => {
                eprintln!("error: this {name} was built without AWS Lambda support");
                eprintln!(
                    "hint: enable the `lambda` feature of kit-service and rebuild (for kit-service itself: cargo build --release -p kit-service --features lambda), then run `{name} lambda`"
                );
                ExitCode::from(2)
            }
        }
    }

    /// The clap command: the derived one, named, plus one flag per alternative.
    fn command(&self, name: &str) -> clap::Command {
        let mut command = Cli::command()
            .name(name.to_string())
            .bin_name(name.to_string());
        if let Some(version) = &self.version {
            command = command.version(version.clone());
        }
        if let Some(about) = &self.about {
            command = command.about(about.clone());
        }
        let flags: Vec<String> = self.alternatives.iter().map(|a| a.flag.clone()).collect();
        for subcommand in ["serve", "lambda"] {
            for alternative in &self.alternatives {
                let others: Vec<String> = flags
                    .iter()
                    .filter(|f| **f != alternative.flag)
                    .cloned()
                    .collect();
                let arg = Arg::new(alternative.flag.clone())
                    .long(alternative.flag.clone())
                    .help(alternative.help.clone())
                    .action(ArgAction::SetTrue)
                    .hide(alternative.hidden)
                    .conflicts_with_all(others);
                command = command.mut_subcommand(subcommand, |sub| sub.arg(arg));
            }
        }
        command
    }

    /// Which alternative the subcommand's flags chose, if any.
    fn chosen(&self, sub: &ArgMatches) -> Option<usize> {
        self.alternatives.iter().position(|alternative| {
            sub.try_get_one::<bool>(&alternative.flag)
                .ok()
                .flatten()
                .copied()
                .unwrap_or(false)
        })
    }
}

/// The file name of argv[0], without extension (`kit-service`).
fn binary_name(args: &[OsString]) -> String {
    args.first()
        .map(std::path::Path::new)
        .and_then(|path| path.file_stem())
        .map(|stem| stem.to_string_lossy().into_owned())
        .filter(|stem| !stem.is_empty())
        .unwrap_or_else(|| "kit-service".to_string())
}

#[derive(Parser)]
#[command(about = "vgi-rpc HTTP host")]
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
    /// Serve vgi-rpc on AWS Lambda: not in this build, rebuild with the `lambda` feature.
    #[cfg(not(feature = "lambda"))]
    #[command(disable_help_flag = true)]
    Lambda {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to bind; `PORT` overrides the port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// URL path prefix for every route (default: none, as upstream).
    #[arg(long, default_value = "")]
    prefix: String,
}

/// `lambda`: `serve` without the socket, so no `--listen`.
#[cfg(feature = "lambda")]
#[derive(Args)]
struct LambdaArgs {
    /// URL path prefix for every route, e.g. `/prod` for an API Gateway stage.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// `doctor`: the checks deploy-kit runs, on what this container sees.
#[derive(Args)]
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

fn doctor(args: DoctorArgs, protocols: &[Protocol]) -> ExitCode {
    let format = match args.format.as_str() {
        "json" => kit_checks::render::Format::Json,
        _ => kit_checks::render::Format::Text,
    };
    let fail_on = match args.fail_on.as_str() {
        "warn" => kit_checks::Severity::Warn,
        _ => kit_checks::Severity::Error,
    };
    let (text, code) = crate::doctor::run(&ProcessEnv, args.listen, protocols, format, fail_on);
    if code == 2 {
        eprint!("{text}");
    } else {
        print!("{text}");
    }
    ExitCode::from(code)
}

/// Config, logs and traces, and the server: what `serve` and `lambda` share.
fn start(
    name: &str,
    listen: SocketAddr,
    prefix: &str,
    (mut protocols, authenticator, identity): Hosted,
    platform: fn(&mut Config),
) -> Result<(Config, crate::telemetry::Telemetry, Arc<Server>), ExitCode> {
    let config = match Config::from_env(&ProcessEnv, listen) {
        Ok(mut config) => {
            platform(&mut config);
            config
        }
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("hint: run `{name} env-docs` for every variable and its format");
            return Err(ExitCode::from(64));
        }
    };
    let telemetry = match crate::telemetry::init(&ProcessEnv, config.log_json) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!("hint: {}", error.hint());
            return Err(ExitCode::from(64));
        }
    };
    if config.keys.is_ephemeral() {
        tracing::warn!(
            "no signing key configured (VGI_SIGNING_KEY or VGI_SIGNING_KEY_FILE): using a random per-process key. \
             Stream tokens will NOT verify across replicas or restarts; multi-instance deployments will reject each other's tokens"
        );
    }
    let authenticator =
        crate::serve::host_identity(&config, &mut protocols, authenticator, identity);
    let confidential = crate::doctor::confidential_state(&protocols);
    let mut server = crate::serve::build_server(&config, protocols, prefix);
    let unknown = crate::serve::unknown_scopes(&config.api_keys, &server);
    if !unknown.is_empty() {
        for problem in &unknown {
            eprintln!("error: {problem}");
        }
        eprintln!(
            "hint: a scope is `protocol/method` or `protocol/*` of a hosted protocol; run `{name} serve` and `deploy-kit call URL` to list them"
        );
        return Err(ExitCode::from(64));
    }
    if !confidential.is_empty() && config.keys.mode() == crate::token::TokenMode::Signed {
        tracing::warn!(
            methods = %confidential.join(", "),
            "these streams declare confidential state, and KIT_TOKEN_MODE is signed: callers can read their state (doctor KEY007); set KIT_TOKEN_MODE=sealed"
        );
    }
    let now = crate::http::auth::now_unix_seconds();
    for key in config.api_keys.facts() {
        if let Some(expires) = &key.expires
            && kit_checks::api_keys::Expiry::parse(expires).is_some_and(|e| e.unix_seconds() <= now)
        {
            tracing::warn!(key = %key.name, %expires, "API key has expired: calls with it are refused with expired_credential");
        }
    }
    if let Some(authenticator) = authenticator {
        server = server.with_authenticator(authenticator);
    }
    if let Some(path) = &config.access_log {
        match crate::access_log::AccessLog::open(path) {
            Ok(log) => server = server.with_access_log(log),
            Err(error) => {
                eprintln!("error: {error}");
                eprintln!("hint: point `KIT_ACCESS_LOG` at a writable file, or unset it");
                return Err(ExitCode::from(64));
            }
        }
    }
    Ok((config, telemetry, server))
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| {
            eprintln!("error: failed to start the async runtime: {error}");
            ExitCode::FAILURE
        })
}

fn serve(name: &str, args: ServeArgs, protocols: Hosted) -> ExitCode {
    let (config, telemetry, server) =
        match start(name, args.listen, &args.prefix, protocols, |_| {}) {
            Ok(started) => started,
            Err(code) => return code,
        };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
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
        let server = match crate::serve::attach_storage(&config, server, bound) {
            Ok(server) => server,
            Err(error) => {
                eprintln!("error: {error}");
                eprintln!("hint: run `{name} env-docs` for the KIT_STORAGE_* variables");
                return ExitCode::from(64);
            }
        };
        let signal = crate::serve::shutdown_signal();
        tracing::info!(%address, prefix = %server.config().prefix, "listening");
        println!("LISTENING http://{address}{}", server.config().prefix);
        match crate::serve::serve_until(
            listener,
            server,
            crate::serve::Drain {
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
fn lambda(name: &str, args: LambdaArgs, protocols: impl FnOnce() -> Hosted) -> ExitCode {
    let missing = crate::lambda::missing_environment(&ProcessEnv);
    if !missing.is_empty() {
        eprintln!(
            "error: not running inside AWS Lambda: `{}` not set",
            missing.join("`, `")
        );
        eprintln!(
            "hint: deploy with `{name} lambda` as the function's command; run `{name} serve` anywhere else"
        );
        return ExitCode::from(64);
    }
    // `PORT` means nothing here: the listen address is never bound.
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let started = start(
        name,
        listen,
        &args.prefix,
        protocols(),
        crate::lambda::fit_limits,
    );
    let (config, telemetry, server) = match started {
        Ok(started) => started,
        Err(code) => return code,
    };
    let service_url = match config.storage.as_ref().map(crate::lambda::service_url) {
        None => String::new(),
        Some(Ok(url)) => url,
        Some(Err(error)) => {
            eprintln!("error: {error}");
            eprintln!(
                "hint: set `KIT_PUBLIC_URL` to the Function URL, or use `KIT_STORAGE=s3`: a Lambda instance's `/tmp` is its own"
            );
            return ExitCode::from(64);
        }
    };
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let code = runtime.block_on(async move {
        // As `serve` does; no backend calls the network here (S3 builds its
        // client on first use), so init stays local.
        let server = match crate::serve::attach_storage_at(&config, server, &service_url) {
            Ok(server) => server,
            Err(error) => {
                eprintln!("error: {error}");
                eprintln!("hint: run `{name} env-docs` for the KIT_STORAGE_* variables");
                return ExitCode::from(64);
            }
        };
        tracing::info!(
            prefix = %server.config().prefix,
            storage = config.storage.as_ref().map(|s| s.provider.as_str()),
            max_request_bytes = server.config().max_request_bytes,
            max_response_bytes = server.config().max_response_bytes,
            "serving Lambda invocations"
        );
        match crate::lambda::run(server).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: the Lambda runtime failed: {error}");
                ExitCode::FAILURE
            }
        }
    });
    telemetry.shutdown();
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Host {
        Host::new(Vec::new())
            .alternative("conformance", "other protocols", Vec::new)
            .hidden_alternative("dynamic-demo", "for benchmarks", Vec::new)
    }

    #[test]
    fn the_name_comes_from_the_binary() {
        assert_eq!(binary_name(&["/usr/bin/acme-rpc".into()]), "acme-rpc");
        assert_eq!(binary_name(&["acme.exe".into()]), "acme");
        assert_eq!(binary_name(&[]), "kit-service");
    }

    #[test]
    fn alternatives_are_flags_of_serve_and_lambda() {
        let command = host().command("acme");
        for sub in ["serve", "lambda"] {
            let matches = command
                .clone()
                .try_get_matches_from(["acme", sub, "--conformance"])
                .unwrap_or_else(|e| panic!("{sub}: {e}"));
            let (_, sub_matches) = matches.subcommand().unwrap();
            assert_eq!(host().chosen(sub_matches), Some(0), "{sub}");
        }
        let plain = command.try_get_matches_from(["acme", "serve"]).unwrap();
        assert_eq!(host().chosen(plain.subcommand().unwrap().1), None);
    }

    #[test]
    fn hidden_alternatives_are_accepted_but_not_listed() {
        let mut command = host().command("acme");
        let matches = command
            .clone()
            .try_get_matches_from(["acme", "serve", "--dynamic-demo"])
            .unwrap();
        assert_eq!(host().chosen(matches.subcommand().unwrap().1), Some(1));
        let help = command
            .find_subcommand_mut("serve")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(help.contains("--conformance"), "{help}");
        assert!(!help.contains("--dynamic-demo"), "{help}");
        let both =
            command.try_get_matches_from(["acme", "serve", "--conformance", "--dynamic-demo"]);
        assert!(both.is_err(), "alternatives exclude each other");
    }

    #[test]
    fn bad_arguments_exit_2() {
        assert_eq!(
            host().run(["acme", "serve", "--no-such-flag"]),
            ExitCode::from(2)
        );
    }
}
