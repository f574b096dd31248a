//! An in-process server for a user's protocols, plus a connected
//! [`Client`], so a crate's `cargo test` calls its methods over the real wire
//! (HTTP on a random loopback port, Arrow IPC, tokens, compression) in a few
//! lines:
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{Int64Array, RecordBatch};
//! use arrow_schema::{DataType, Field, Schema};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = kit_service::testing::TestServer::start([kit_service::demo::protocol()]).await;
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("n", DataType::Int64, false),
//!     Field::new("batch_rows", DataType::Int64, false),
//! ]));
//! let params = RecordBatch::try_new(schema, vec![
//!     Arc::new(Int64Array::from(vec![5])),
//!     Arc::new(Int64Array::from(vec![2])),
//! ]).unwrap();
//! let mut stream = server.client().producer("kit.Demo.v1", "count", params).await.unwrap();
//! let mut rows = 0;
//! while let Some(batch) = stream.next_batch().await.unwrap() {
//!     rows += batch.num_rows();
//! }
//! assert_eq!(rows, 5);
//! # });
//! ```
//!
//! The server is built by the same code as `serve` ([`crate::serve`]) from a
//! [`Config`], so what passes here passes in production. It stops when the
//! [`TestServer`] is dropped. Failing to start panics: a test fixture that
//! cannot run must fail loudly.

pub mod function_url;
pub mod lambda_runtime;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::config::Config;
use crate::http::Server;
use crate::rpc::Protocol;
use crate::serve::{Drain, build_server_at, serve_until};

/// A running in-process server on `127.0.0.1:<random port>`.
pub struct TestServer {
    url: String,
    address: SocketAddr,
    client: Client,
    server: Arc<Server>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    storage_dir: Option<PathBuf>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("url", &self.url)
            .finish()
    }
}

impl TestServer {
    /// Serves `protocols` with default settings (no auth, no external
    /// storage, a random signing key). Call inside a tokio runtime.
    pub async fn start(protocols: impl IntoIterator<Item = Protocol>) -> TestServer {
        TestServer::start_with_env(protocols, &[]).await
    }

    /// Serves `protocols` with the embedded `local` storage in a fresh
    /// temporary directory: results whose buffers reach `threshold_bytes`
    /// come back as pointers, which the connected client resolves.
    pub async fn start_with_storage(
        protocols: impl IntoIterator<Item = Protocol>,
        threshold_bytes: u64,
    ) -> TestServer {
        let dir =
            std::env::temp_dir().join(format!("kit-test-server-{}", crate::http::random_hex(8)));
        let threshold = threshold_bytes.to_string();
        let dir_text = dir.display().to_string();
        let mut server = TestServer::start_with_env(
            protocols,
            &[
                ("KIT_STORAGE", "local"),
                ("KIT_STORAGE_DIR", dir_text.as_str()),
                ("KIT_EXTERNALIZE_THRESHOLD_BYTES", threshold.as_str()),
            ],
        )
        .await;
        server.storage_dir = Some(dir);
        server
    }

    /// Serves `protocols` configured by `settings`: the service's environment
    /// variables (`KIT_API_KEYS`, `KIT_MAX_RESPONSE_BYTES`, ...; see
    /// `env-docs`), given as pairs instead of read from the process.
    pub async fn start_with_env(
        protocols: impl IntoIterator<Item = Protocol>,
        settings: &[(&str, &str)],
    ) -> TestServer {
        let env: HashMap<String, String> = settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = Config::from_env(&env, listen)
            .unwrap_or_else(|error| panic!("invalid test server settings: {error}"));
        TestServer::start_with_config(protocols, config).await
    }

    /// Serves `protocols` with a ready [`Config`] (its listen address is ignored).
    pub async fn start_with_config(
        protocols: impl IntoIterator<Item = Protocol>,
        config: Config,
    ) -> TestServer {
        let protocols: Vec<Protocol> = protocols.into_iter().collect();
        let versions: Vec<(String, String)> = protocols
            .iter()
            .filter_map(|p| Some((p.name().to_string(), p.version()?.to_string())))
            .collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|error| panic!("failed to bind 127.0.0.1:0: {error}"));
        let address = listener
            .local_addr()
            .unwrap_or_else(|error| panic!("failed to read the bound address: {error}"));
        let server = build_server_at(&config, protocols, "", address)
            .unwrap_or_else(|error| panic!("failed to open the test server's storage: {error}"));
        let (stop, signal) = tokio::sync::oneshot::channel::<()>();
        let drain = Drain {
            delay: Duration::ZERO,
            grace: Duration::from_secs(5),
        };
        tokio::spawn(serve_until(listener, server.clone(), drain, async move {
            let _ = signal.await;
        }));
        let url = format!("http://{address}");
        let mut client = Client::new(&url)
            .and_then(|c| c.with_fetch_allowlist([url.clone()]))
            .unwrap_or_else(|error| panic!("failed to build the test client: {error}"));
        for (name, version) in versions {
            client = client.with_protocol_version(name, version);
        }
        TestServer {
            url,
            address,
            client,
            server,
            stop: Some(stop),
            storage_dir: None,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// A client connected to this server, with the hosted protocols'
    /// versions declared and pointers to this server's storage allowed.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The server being served (its settings, metrics, storage).
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(dir) = &self.storage_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
