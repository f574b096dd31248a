//! Running the router on a TCP listener, with readiness and a graceful drain.
//!
//! Shutdown sequence on SIGTERM (or Ctrl-C): `/readyz` flips to 503 at once;
//! the server keeps serving for `KIT_DRAIN_DELAY` so load balancers notice;
//! then it stops accepting, lets in-flight requests and stream turns finish,
//! and exits 0. Whatever is still running when `KIT_SHUTDOWN_GRACE` ends is
//! cut off. Streams survive a drain because their state lives in tokens:
//! the client's next turn goes to another replica holding the same key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::connections::App;
use crate::http::hosting::{Hosting, Readiness};
use crate::http::ratelimit::{RateLimit, RateLimiter, SharedStore};
use crate::http::{HttpConfig, Server};
use crate::metrics::Metrics;
use crate::rpc::Protocol;

/// What `kit-service serve` hosts, configured from `config`.
pub fn build_server(config: &Config, protocols: Vec<Protocol>, prefix: &str) -> Arc<Server> {
    let mut http = HttpConfig {
        prefix: normalize_prefix(prefix),
        max_request_bytes: config.max_request_bytes,
        max_response_bytes: config.max_response_bytes,
        enable_reflection: config.reflection,
        enable_probe: config.probe,
        response_compression: config.response_compression,
        compress_min_bytes: config.compress_min_bytes as usize,
        limit_hint: config.limit_hint.clone(),
        ..HttpConfig::default()
    };
    if let Some(id) = &config.server_id {
        http.server_id = id.clone();
    }
    let store = config.rate_limit_store.as_deref().map(|url| {
        Arc::new(SharedStore::open(url).expect("`Config::from_env` validated the store URL"))
    });
    let limiter = |namespace: &'static str, limit: RateLimit| {
        let limiter = RateLimiter::in_process(namespace, limit, config.rate_limit_max_keys);
        match &store {
            Some(store) => limiter.with_store(store.clone(), config.rate_limit_store_failure),
            None => limiter,
        }
    };
    let hosting = Hosting {
        api_keys: config.api_keys.clone(),
        authenticator: None,
        proxy_proof: config.proxy_proof.clone(),
        require_auth: config.require_auth,
        rate_limiter: config.rate_limit.map(|limit| limiter("requests", limit)),
        auth_throttle: config
            .auth_failure_limit
            .map(|limit| limiter("auth-failures", limit)),
        trusted_proxies: config.trusted_proxies.clone(),
        cors_origins: config.cors_origins.clone(),
        request_timeout: config.request_timeout,
        read_timeout: config.read_timeout,
        metrics: Arc::new(Metrics::new()),
        readiness: Arc::new(Readiness::default()),
        key_fingerprint: config.keys.primary().fingerprint(),
        key_ephemeral: config.keys.is_ephemeral(),
        limits: crate::limits::Limits {
            budget: crate::limits::Budget::new(config.max_inflight_bytes),
            heavy: crate::limits::HeavyPool::new(config.codec_threads),
            connections: config.connections,
        },
        access_log: None,
    };
    Server::with_hosting(protocols, http, config.keys.clone(), hosting)
}

/// `vgi_rpc.Identity.v2` for a run: the host's hooks (`identity`) and the
/// deployment's `KIT_GRANT_KEYS` together. Appends the protocol (only the
/// methods configured; nothing at all when neither is) to `protocols`, and
/// returns the authenticator to install: `authenticator` (or the API keys)
/// followed by the grant and `resolve_token` bearers when either applies.
pub fn host_identity(
    config: &Config,
    protocols: &mut Vec<crate::rpc::Protocol>,
    authenticator: Option<Arc<dyn crate::http::auth::Authenticator>>,
    identity: Option<crate::identity::Identity>,
) -> Option<Arc<dyn crate::http::auth::Authenticator>> {
    use crate::http::auth::ApiKeyAuthenticator;
    use crate::identity::Identity;
    use crate::identity::bearer::IdentityAuthenticator;
    let identity = match (identity, config.grant_keys.clone()) {
        (Some(identity), Some(keys)) if identity.grant_keys().is_none() => {
            Some(identity.with_grant_keys(keys))
        }
        (Some(identity), _) => Some(identity),
        (None, Some(keys)) => Some(
            Identity::builder()
                .grant_keys(keys)
                .build()
                .unwrap_or_else(|error| unreachable!("grant keys alone always configure: {error}")),
        ),
        (None, None) => None,
    };
    let Some(identity) = identity.map(Arc::new) else {
        return authenticator;
    };
    tracing::info!(methods = ?identity.offered_methods(), grant_keys = ?identity.grant_keys().map(|k| k.key_ids()), "hosting vgi_rpc.Identity.v2");
    protocols.extend(identity.protocol());
    if !IdentityAuthenticator::applies(&identity) {
        return authenticator;
    }
    let base = authenticator.unwrap_or_else(|| {
        Arc::new(ApiKeyAuthenticator {
            keys: config.api_keys.clone(),
            require: config.require_auth,
        })
    });
    Some(Arc::new(IdentityAuthenticator::new(base, identity)))
}

/// Scopes of `keys` that name a protocol or method `server` does not host,
/// as messages naming the variable and the key (a typo there would refuse
/// every call of that key with `insufficient_scope`).
pub fn unknown_scopes(keys: &crate::http::auth::ApiKeys, server: &Server) -> Vec<String> {
    use kit_checks::api_keys::Scope;
    let mut problems = Vec::new();
    for key in keys.facts() {
        for text in &key.scopes {
            let known = match Scope::parse(text) {
                Some(Scope::All) | None => true,
                Some(Scope::Protocol(protocol)) => server.hosts(&protocol, None),
                Some(Scope::Method(protocol, method)) => server.hosts(&protocol, Some(&method)),
            };
            if !known {
                problems.push(format!(
                    "`KIT_API_KEYS`: key `{}`: scope `{text}` names no hosted protocol or method",
                    key.name
                ));
            }
        }
    }
    problems
}

/// [`build_server`] plus external storage, once the listening address is known
/// (the `local` backend builds its object URLs from it).
pub fn build_server_at(
    config: &Config,
    protocols: Vec<Protocol>,
    prefix: &str,
    bound: SocketAddr,
) -> Result<Arc<Server>, crate::storage::StorageError> {
    attach_storage(config, build_server(config, protocols, prefix), bound)
}

/// Adds the configured external storage (if any) to a freshly built server.
pub fn attach_storage(
    config: &Config,
    server: Arc<Server>,
    bound: SocketAddr,
) -> Result<Arc<Server>, crate::storage::StorageError> {
    let host = if bound.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), bound.port())
    } else {
        bound
    };
    let service_url = format!("http://{host}{}", server.config().prefix);
    attach_storage_at(config, server, &service_url)
}

/// [`attach_storage`] where the service's own URL is already known:
/// `service_url` is where clients reach this service, used only by the `local`
/// backend for its object URLs when `KIT_PUBLIC_URL` is not set
/// (`kit-service lambda` has no socket and passes `KIT_PUBLIC_URL` itself).
pub fn attach_storage_at(
    config: &Config,
    server: Arc<Server>,
    service_url: &str,
) -> Result<Arc<Server>, crate::storage::StorageError> {
    let Some(settings) = &config.storage else {
        return Ok(server);
    };
    let external = crate::storage::open(settings, config.fetch.clone(), &config.keys, service_url)?;
    Ok(server.with_external(external))
}

/// `""`, or `/x` with no trailing slash.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// Drain timings.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    pub delay: Duration,
    pub grace: Duration,
}

/// Serves until SIGTERM or Ctrl-C, then drains as described in the module docs.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    drain: Drain,
) -> std::io::Result<()> {
    serve_until(listener, server, drain, shutdown_signal()).await
}

/// [`serve`] with the shutdown trigger supplied by the caller (tests).
pub async fn serve_until(
    listener: TcpListener,
    server: Arc<Server>,
    drain: Drain,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let readiness = server.hosting().readiness.clone();
    readiness.set_ready();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        signal.await;
        readiness.start_draining();
        tracing::info!(
            delay_seconds = drain.delay.as_secs(),
            grace_seconds = drain.grace.as_secs(),
            "shutdown signal received: readiness is 503, draining"
        );
        tokio::time::sleep(drain.delay).await;
        let _ = stop_tx.send(());
        tokio::time::sleep(drain.grace.saturating_sub(drain.delay)).await;
        let _ = grace_tx.send(());
    });
    let limits = server.hosting().limits.connections;
    let metrics = server.hosting().metrics.clone();
    let serving =
        crate::connections::serve(listener, App::Host(server), limits, metrics, async move {
            let _ = stop_rx.await;
        });
    tokio::select! {
        result = serving => result,
        _ = grace_rx => {
            tracing::warn!("drain grace elapsed with requests still in flight; exiting");
            Ok(())
        }
    }
}

/// SIGTERM or Ctrl-C. The handlers are registered when this is called, not
/// when the future is first polled, so call it before announcing readiness: a
/// SIGTERM that arrives right after `LISTENING` must drain, not kill.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let interrupt = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        let terminate = async move {
            match terminate {
                Some(mut signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            _ = interrupt => {}
            _ = terminate => {}
        }
    }
}
