//! Running the router on a TCP listener with a graceful drain on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::http::{HttpConfig, Server, app};
use crate::rpc::Protocol;

/// What `kit-service serve` hosts.
pub fn build_server(config: &Config, protocols: Vec<Protocol>, prefix: &str) -> Arc<Server> {
    let mut http = HttpConfig {
        prefix: normalize_prefix(prefix),
        max_request_bytes: config.max_request_bytes,
        max_response_bytes: config.max_response_bytes,
        enable_reflection: config.reflection,
        ..HttpConfig::default()
    };
    if let Some(id) = &config.server_id {
        http.server_id = id.clone();
    }
    Server::new(protocols, http, config.keys.clone())
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

/// Serves until SIGTERM or Ctrl-C, then lets in-flight requests finish within the grace.
pub async fn serve(
    listener: TcpListener,
    server: Arc<Server>,
    grace: Duration,
) -> std::io::Result<()> {
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutdown signal received, draining"
        );
        let _ = drained_tx.send(());
    };
    let serving = axum::serve(listener, app(server)).with_graceful_shutdown(shutdown);
    let serving = tokio::spawn(async move { serving.await });
    tokio::pin!(drained_rx);
    tokio::select! {
        result = serving => result.map_err(std::io::Error::other)?,
        _ = async { let _ = (&mut drained_rx).await; tokio::time::sleep(grace).await } => {
            tracing::warn!("drain grace elapsed with requests still in flight; exiting");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        #[cfg(unix)]
        {
            if let Ok(mut signal) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                signal.recv().await;
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
