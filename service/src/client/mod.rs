//! A vgi-rpc client over HTTP, speaking the wire exactly as the Python
//! reference client (`vgi_rpc.http.http_connect`, 0.52.2) does: unary calls,
//! producer and exchange streams, logs, errors, zstd/gzip bodies both ways,
//! API keys, and results that come back as pointers to external storage.
//!
//! ```
//! # async fn demo() -> Result<(), kit_service::client::ClientError> {
//! use std::sync::Arc;
//! use arrow_array::{Int64Array, RecordBatch};
//! use arrow_schema::{DataType, Field, Schema};
//!
//! let server = kit_service::testing::TestServer::start([kit_service::demo::protocol()]).await;
//! let schema = Arc::new(Schema::new(vec![
//!     Field::new("a", DataType::Int64, false),
//!     Field::new("b", DataType::Int64, false),
//! ]));
//! let params = RecordBatch::try_new(schema, vec![
//!     Arc::new(Int64Array::from(vec![40])),
//!     Arc::new(Int64Array::from(vec![2])),
//! ]).expect("matching columns");
//! let reply = server.client().unary("kit.Demo.v1", "add", params).await?;
//! let sum = reply.batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
//! assert_eq!(sum.value(0), 42);
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! Streams are stateless on the server: every turn is one POST that carries
//! the signed state tokens of the previous answer, so a [`ProducerStream`] or
//! [`ExchangeStream`] can be continued on any replica sharing the signing key
//! ([`ProducerStream::move_to`]).
//!
//! Pointer URLs come from the network, so they are fetched with the bounded,
//! validated fetcher of [`crate::storage::fetch`]: https and public addresses
//! only, unless a URL prefix is allowed with [`Client::with_fetch_allowlist`]
//! (a local store on `http://127.0.0.1`, for example).

pub mod reflection;
pub mod typed;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{Schema, SchemaRef};
use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value};

use crate::http::codec::{self, Codec};
use crate::storage::fetch::{FetchError, Fetcher};
use crate::storage::settings::FetchSettings;
use crate::wire::ipc::{IpcStream, read_stream, read_streams};
use crate::wire::{self, ErrorCode, LogLevel, LogRecord, Metadata, RpcError, StreamWriter};

pub use reflection::{
    MethodDescription, MethodKind, ProtocolDescription, ProtocolSummary, ServerDescription,
};

/// The response size this client accepts, sent as `VGI-Accept-Max-Response-Bytes`
/// (the Python client's default, 256 MiB); larger decoded bodies are refused.
pub const ACCEPT_MAX_RESPONSE_BYTES: u64 = 256 * 1024 * 1024;

/// zstd level of compressed request bodies (the Python client's default).
const ZSTD_LEVEL: i32 = 1;

/// How request bodies are compressed. Responses in zstd or gzip are always
/// accepted (`Accept-Encoding: zstd, gzip`), whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Identity request bodies.
    None,
    /// `Content-Encoding: zstd`, level 1: what the Python client sends by default.
    #[default]
    Zstd,
    /// `Content-Encoding: gzip`.
    Gzip,
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL given to [`Client::new`] or [`Client::at`] is unusable.
    #[error("invalid base URL `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The server answered with a vgi-rpc error batch (a method failure, a
    /// rejected request, an unknown method, ...): its type, message, code,
    /// kind and details, and the HTTP status it came with.
    #[error("{0}")]
    Rpc(RpcError),
    /// The request did not get an answer (connection refused, timeout, reset).
    #[error("POST `{url}` failed: {message}")]
    Transport {
        /// The URL posted to.
        url: String,
        /// The transport error and its causes.
        message: String,
        /// True when the server could not be reached at all (connect error or timeout).
        unreachable: bool,
    },
    /// A 401: the API key is missing or wrong.
    #[error("`{url}` refused the credentials (HTTP 401, `{reason}`): {detail}")]
    Unauthorized {
        /// The URL posted to.
        url: String,
        /// The `VGI-Auth-Reason` code, e.g. `missing_credential`.
        reason: String,
        /// The server's explanation.
        detail: String,
    },
    /// A non-success status whose body is not a vgi-rpc error stream.
    #[error("`{url}` answered HTTP {status}: {body}")]
    Http {
        /// The URL posted to.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The start of the body, as text.
        body: String,
    },
    /// The answer does not follow the vgi-rpc wire protocol.
    #[error("the answer of `{url}` breaks the vgi-rpc protocol: {message}")]
    Protocol {
        /// The URL posted to.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// A result that came back as an external-storage pointer could not be fetched.
    #[error("fetching an external-storage result failed: {0}")]
    Fetch(#[from] FetchError),
    /// The parameters (or an exchange input) could not be encoded as Arrow IPC.
    #[error("failed to encode the request: {0}")]
    Encode(String),
    /// The stream already ended; it takes no more turns.
    #[error("the stream `{method}` has already finished")]
    StreamFinished {
        /// The stream's method name.
        method: String,
    },
}

impl ClientError {
    /// The server's error batch, if this is one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc(error) => Some(error),
            _ => None,
        }
    }

    /// True when the server could not be reached (nothing was answered).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Transport {
                unreachable: true,
                ..
            }
        )
    }
}

/// The answer of a unary call.
#[derive(Debug, Clone)]
pub struct Response {
    /// The one-row result batch (`result: <type>`); no columns for a void method.
    pub batch: RecordBatch,
    /// Log messages the method sent, in order.
    pub logs: Vec<LogRecord>,
    /// Where the result was fetched from, when it came back as an
    /// external-storage pointer.
    pub location: Option<String>,
}

/// A vgi-rpc HTTP client for one server (base URL plus path prefix). Cheap to
/// clone: the connection pool and settings are shared.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    base_url: String,
    http: reqwest::Client,
    timeout: Option<Duration>,
    api_key: Option<String>,
    compression: Compression,
    fetch_settings: FetchSettings,
    fetcher: Fetcher,
    /// Protocol versions declared by the caller, sent as `vgi_rpc.protocol_version`.
    declared: HashMap<String, String>,
    /// Versions learned from reflection, for protocols the caller declared none for.
    discovered: Arc<tokio::sync::Mutex<Option<HashMap<String, String>>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url)
            .field("api_key", &self.inner.api_key.as_ref().map(|_| "<set>"))
            .field("compression", &self.inner.compression)
            .finish()
    }
}

impl Client {
    /// A client for the server at `base_url`, e.g. `http://127.0.0.1:8080`,
    /// or with the server's path prefix, `https://api.example.com/vgi`.
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let base_url = checked_base_url(base_url)?;
        let fetch_settings = FetchSettings::default();
        let inner = Inner {
            base_url,
            http: http_client(None)?,
            timeout: None,
            api_key: None,
            compression: Compression::default(),
            fetcher: fetcher(&fetch_settings)?,
            fetch_settings,
            declared: HashMap::new(),
            discovered: Arc::default(),
        };
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The same client (settings, connection pool) for another server, such
    /// as a second replica of the same service.
    pub fn at(&self, base_url: &str) -> Result<Client, ClientError> {
        let mut inner = (*self.inner).clone();
        inner.base_url = checked_base_url(base_url)?;
        inner.discovered = Arc::default();
        Ok(Client {
            inner: Arc::new(inner),
        })
    }

    /// The base URL calls go to (no trailing slash).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// Sends `key` as `Authorization: Bearer <key>` on every call.
    pub fn with_api_key(self, key: impl Into<String>) -> Self {
        self.change(|inner| inner.api_key = Some(key.into()))
    }

    /// How request bodies are compressed (default [`Compression::Zstd`], as
    /// the Python client). zstd and gzip responses are always accepted.
    pub fn with_compression(self, compression: Compression) -> Self {
        self.change(|inner| inner.compression = compression)
    }

    /// Gives up on a request (one HTTP round trip) after `timeout`.
    pub fn with_timeout(self, timeout: Duration) -> Result<Self, ClientError> {
        let http = http_client(Some(timeout))?;
        Ok(self.change(|inner| {
            inner.http = http;
            inner.timeout = Some(timeout);
        }))
    }

    /// Declares the version of `protocol` this caller speaks, sent as
    /// `vgi_rpc.protocol_version` (the server checks major and minor). A
    /// protocol without a declared version gets the version the server
    /// lists through reflection, asked once per client.
    pub fn with_protocol_version(
        self,
        protocol: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        self.change(|inner| {
            inner.declared.insert(protocol.into(), version.into());
        })
    }

    /// Limits of the fetch of external-storage results (sizes, timeout,
    /// retries); defaults are vgi-rpc's `FetchConfig`.
    pub fn with_fetch_settings(self, settings: FetchSettings) -> Result<Self, ClientError> {
        let fetcher = fetcher(&settings)?;
        Ok(self.change(|inner| {
            inner.fetcher = fetcher;
            inner.fetch_settings = settings;
        }))
    }

    /// URL prefixes (`http://127.0.0.1`, `http://minio.internal:9000`) whose
    /// pointers are fetched even though they are not https or not public.
    /// Without this, a pointer to loopback or a private address is refused.
    pub fn with_fetch_allowlist<I, S>(self, prefixes: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut settings = self.inner.fetch_settings.clone();
        settings
            .allowlist
            .extend(prefixes.into_iter().map(Into::into));
        self.with_fetch_settings(settings)
    }

    fn change(mut self, edit: impl FnOnce(&mut Inner)) -> Self {
        let inner = Arc::make_mut(&mut self.inner);
        edit(inner);
        // Another key may see another answer: learn the versions again.
        inner.discovered = Arc::default();
        self
    }

    /// Calls the unary method `protocol.method` with the one-row `params`
    /// batch (one column per parameter, in declaration order, with the
    /// declared types and nullability; a batch without columns for a
    /// parameterless method).
    pub async fn unary(
        &self,
        protocol: &str,
        method: &str,
        params: RecordBatch,
    ) -> Result<Response, ClientError> {
        let version = self.protocol_version(protocol).await;
        self.unary_with_version(protocol, method, &params, version)
            .await
    }

    /// [`Client::unary`] with the `vgi_rpc.protocol_version` to send.
    async fn unary_with_version(
        &self,
        protocol: &str,
        method: &str,
        params: &RecordBatch,
        version: Option<String>,
    ) -> Result<Response, ClientError> {
        let body = request_body(protocol, method, params, version)?;
        let url = self.url(protocol, method, None);
        let streams = self.post(&url, body).await?;
        let [stream] = <[IpcStream; 1]>::try_from(streams).map_err(|streams| {
            protocol_error(
                &url,
                format!("a unary answer is one IPC stream, got {}", streams.len()),
            )
        })?;
        let mut turn = Turn::default();
        self.absorb(&url, stream, Tokens::Separate, &mut turn)
            .await?;
        let batch = match turn.data.len() {
            1 => turn.data.remove(0),
            0 => return Err(protocol_error(&url, "no result batch in the answer".into())),
            n => {
                return Err(protocol_error(
                    &url,
                    format!("a unary answer carries one result batch, got {n}"),
                ));
            }
        };
        Ok(Response {
            batch,
            logs: turn.logs,
            location: turn.location,
        })
    }

    /// Starts the producer stream `protocol.method`; read its batches with
    /// [`ProducerStream::next_batch`].
    pub async fn producer(
        &self,
        protocol: &str,
        method: &str,
        params: RecordBatch,
    ) -> Result<ProducerStream, ClientError> {
        let init = self.init(protocol, method, &params).await?;
        let finished = init.state.is_none();
        Ok(ProducerStream {
            client: self.clone(),
            protocol: protocol.to_string(),
            method: method.to_string(),
            header: init.header,
            pending: init.data.into(),
            state: init.state,
            call: init.call,
            finished,
            logs: init.logs,
            server_id: init.server_id,
        })
    }

    /// Starts the exchange stream `protocol.method`; send inputs with
    /// [`ExchangeStream::exchange`].
    pub async fn exchange(
        &self,
        protocol: &str,
        method: &str,
        params: RecordBatch,
    ) -> Result<ExchangeStream, ClientError> {
        let init = self.init(protocol, method, &params).await?;
        let url = self.url(protocol, method, Some("init"));
        let (Some(state), Some(call)) = (init.state, init.call) else {
            return Err(protocol_error(
                &url,
                "the answer to an exchange `/init` carries no state tokens (is the method a producer?)"
                    .into(),
            ));
        };
        Ok(ExchangeStream {
            client: self.clone(),
            protocol: protocol.to_string(),
            method: method.to_string(),
            header: init.header,
            state: Some(state),
            call,
            logs: init.logs,
        })
    }

    /// `POST .../init`: the optional header stream, then the first turn.
    async fn init(
        &self,
        protocol: &str,
        method: &str,
        params: &RecordBatch,
    ) -> Result<Turn, ClientError> {
        let version = self.protocol_version(protocol).await;
        let body = request_body(protocol, method, params, version)?;
        let url = self.url(protocol, method, Some("init"));
        let mut streams = self.post(&url, body).await?;
        let mut turn = Turn::default();
        if streams.len() > 2 || streams.is_empty() {
            return Err(protocol_error(
                &url,
                format!(
                    "a stream's `/init` answer is one or two IPC streams, got {}",
                    streams.len()
                ),
            ));
        }
        if streams.len() == 2 {
            let header = streams.remove(0);
            self.absorb(&url, header, Tokens::Separate, &mut turn)
                .await?;
            let batch = match turn.data.len() {
                1 => turn.data.remove(0),
                n => {
                    return Err(protocol_error(
                        &url,
                        format!("a stream header is one batch, got {n}"),
                    ));
                }
            };
            turn.header = Some(batch);
        }
        let output = streams.remove(0);
        self.absorb(&url, output, Tokens::Separate, &mut turn)
            .await?;
        Ok(turn)
    }

    /// The declared version, else the one reflection lists (asked once).
    async fn protocol_version(&self, protocol: &str) -> Option<String> {
        if let Some(version) = self.inner.declared.get(protocol) {
            return Some(version.clone());
        }
        if protocol == crate::reflection::NAME {
            return None;
        }
        let mut discovered = self.inner.discovered.lock().await;
        if discovered.is_none() {
            match reflection::list_protocols(self).await {
                Ok(server) => {
                    *discovered = Some(
                        server
                            .protocols
                            .into_iter()
                            .filter(|p| !p.version.is_empty())
                            .map(|p| (p.name, p.version))
                            .collect(),
                    );
                }
                // A server without reflection gets no version, and answers
                // with its own precise error if it needs one.
                Err(ClientError::Rpc(_)) => *discovered = Some(HashMap::new()),
                // Not reachable or not authorized: the call itself will say
                // so; ask again next time.
                Err(_) => return None,
            }
        }
        discovered.as_ref()?.get(protocol).cloned()
    }

    fn url(&self, protocol: &str, method: &str, endpoint: Option<&str>) -> String {
        match endpoint {
            Some(endpoint) => format!("{}/{protocol}/{method}/{endpoint}", self.inner.base_url),
            None => format!("{}/{protocol}/{method}", self.inner.base_url),
        }
    }

    /// One POST: compress, send, decode, split into IPC streams, and turn an
    /// error batch or a non-Arrow failure into an error.
    async fn post(&self, url: &str, body: Vec<u8>) -> Result<Vec<IpcStream>, ClientError> {
        let mut request = self
            .inner
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, wire::CONTENT_TYPE)
            .header(http::header::ACCEPT_ENCODING, codec::SUPPORTED)
            .header(
                "vgi-accept-max-response-bytes",
                ACCEPT_MAX_RESPONSE_BYTES.to_string(),
            );
        let body = match self.inner.compression {
            Compression::None => body,
            Compression::Zstd => {
                request = request.header(http::header::CONTENT_ENCODING, "zstd");
                codec::encode(Codec::Zstd, &body, ZSTD_LEVEL)
            }
            Compression::Gzip => {
                request = request.header(http::header::CONTENT_ENCODING, "gzip");
                codec::encode(Codec::Gzip, &body, ZSTD_LEVEL)
            }
        };
        if let Some(key) = &self.inner.api_key {
            request = request.bearer_auth(key);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|error| ClientError::Transport {
                url: url.to_string(),
                // reqwest's own text repeats the URL; its causes say what happened.
                message: match std::error::Error::source(&error) {
                    Some(cause) => error_chain(cause),
                    None => error.to_string(),
                },
                unreachable: error.is_connect() || error.is_timeout(),
            })?;
        let status = response.status();
        let headers = response.headers().clone();
        let raw = read_body(response, url).await?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(unauthorized(url, &headers, &raw));
        }
        let encoding = ["content-encoding", "x-vgi-content-encoding"]
            .iter()
            .find_map(|name| headers.get(*name)?.to_str().ok())
            .filter(|e| !e.trim().is_empty() && !e.eq_ignore_ascii_case("identity"));
        let decoded = match encoding {
            None => raw,
            Some(name) => {
                let codec = Codec::parse(name).ok_or_else(|| {
                    protocol_error(url, format!("unsupported Content-Encoding `{name}`"))
                })?;
                let limit = ACCEPT_MAX_RESPONSE_BYTES as usize;
                Bytes::from(codec::decode(codec, &raw, limit).map_err(|e| {
                    protocol_error(url, format!("the body could not be decoded: {e}"))
                })?)
            }
        };
        let streams = match read_streams(&decoded) {
            Ok(streams) => streams,
            Err(error) if status.is_success() => {
                return Err(protocol_error(
                    url,
                    format!("the body is not an Arrow IPC stream: {error}"),
                ));
            }
            Err(_) => {
                return Err(ClientError::Http {
                    url: url.to_string(),
                    status: status.as_u16(),
                    body: snippet(&decoded),
                });
            }
        };
        for stream in &streams {
            for batch in &stream.batches {
                if batch.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION") {
                    return Err(ClientError::Rpc(rpc_error(&batch.metadata, status)));
                }
            }
        }
        if !status.is_success() {
            return Err(ClientError::Http {
                url: url.to_string(),
                status: status.as_u16(),
                body: snippet(&decoded),
            });
        }
        Ok(streams)
    }

    /// Sorts one answer stream's batches into logs, tokens and data,
    /// resolving an external-storage pointer in place of its batches.
    async fn absorb(
        &self,
        url: &str,
        stream: IpcStream,
        tokens: Tokens,
        turn: &mut Turn,
    ) -> Result<(), ClientError> {
        for batch in stream.batches {
            if batch.batch.num_rows() == 0
                && batch.get(wire::LOG_LEVEL_KEY).is_none()
                && let Some(location) = batch.get(wire::LOCATION_KEY)
            {
                take_tokens(&batch.metadata, turn);
                let fetched = self
                    .inner
                    .fetcher
                    .fetch(location, batch.get(wire::LOCATION_SHA256_KEY))
                    .await?;
                let (inner, _) = read_stream(&fetched, 0).map_err(|e| {
                    protocol_error(
                        url,
                        format!("the object at `{location}` is not an Arrow IPC stream: {e}"),
                    )
                })?;
                if inner.schema.fields() != stream.schema.fields() {
                    return Err(protocol_error(
                        url,
                        format!(
                            "the object at `{location}` has schema {:?}, the pointer batch {:?}",
                            inner.schema, stream.schema
                        ),
                    ));
                }
                turn.location = Some(location.to_string());
                for inner_batch in inner.batches {
                    if inner_batch.get(wire::LOCATION_KEY).is_some() {
                        return Err(protocol_error(
                            url,
                            format!("the object at `{location}` points to another object"),
                        ));
                    }
                    sort(inner_batch, tokens, turn, true)?;
                }
                continue;
            }
            sort(batch, tokens, turn, false)?;
        }
        Ok(())
    }
}

/// Where a stream answer puts its cursor token: on a zero-row batch of its
/// own (producers, every `/init`), or on the data batch (exchange turns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tokens {
    Separate,
    OnData,
}

/// What one answer carried.
#[derive(Debug, Default)]
struct Turn {
    header: Option<RecordBatch>,
    data: Vec<RecordBatch>,
    logs: Vec<LogRecord>,
    state: Option<String>,
    call: Option<String>,
    server_id: Option<String>,
    location: Option<String>,
}

fn take_tokens(metadata: &Metadata, turn: &mut Turn) {
    if let Some(state) = wire::metadata_get(metadata, wire::STATE_KEY) {
        turn.state = Some(state.to_string());
    }
    if let Some(call) = wire::metadata_get(metadata, wire::CALL_STATE_KEY) {
        turn.call = Some(call.to_string());
    }
}

/// Batch classification, as the Python stream readers do it: tokens, then
/// logs and errors (zero-row batches with a log level), then data.
fn sort(
    batch: wire::Batch,
    tokens: Tokens,
    turn: &mut Turn,
    fetched: bool,
) -> Result<(), ClientError> {
    let has_state = batch.get(wire::STATE_KEY).is_some();
    take_tokens(&batch.metadata, turn);
    if batch.batch.num_rows() == 0 {
        if let Some(level) = batch.get(wire::LOG_LEVEL_KEY) {
            if let Some(server) = batch.get(wire::SERVER_ID_KEY) {
                turn.server_id = Some(server.to_string());
            }
            if level == "EXCEPTION" {
                return Err(ClientError::Rpc(rpc_error(
                    &batch.metadata,
                    http::StatusCode::OK,
                )));
            }
            turn.logs.push(log_record(&batch.metadata, level));
            return Ok(());
        }
        if has_state && tokens == Tokens::Separate && !fetched {
            return Ok(());
        }
    }
    turn.data.push(batch.batch);
    Ok(())
}

/// The rows of a producer stream, one batch per turn.
#[derive(Debug)]
pub struct ProducerStream {
    client: Client,
    protocol: String,
    method: String,
    header: Option<RecordBatch>,
    pending: std::collections::VecDeque<RecordBatch>,
    state: Option<String>,
    call: Option<String>,
    finished: bool,
    logs: Vec<LogRecord>,
    server_id: Option<String>,
}

impl ProducerStream {
    /// The stream header (one row), when the method declares one.
    pub fn header(&self) -> Option<&RecordBatch> {
        self.header.as_ref()
    }

    /// The next batch, or `None` once the server ended the stream. Each call
    /// past the first turn is one `POST .../exchange` carrying the tokens.
    pub async fn next_batch(&mut self) -> Result<Option<RecordBatch>, ClientError> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Ok(Some(batch));
            }
            if self.finished {
                return Ok(None);
            }
            let turn = self.turn(false).await?;
            self.pending.extend(turn.data);
        }
    }

    /// Every log message the stream sent so far, in order.
    pub fn logs(&self) -> &[LogRecord] {
        &self.logs
    }

    /// The `server_id` of the replica that served the latest turn, taken from
    /// that turn's logs (the server stamps it on log and error batches only);
    /// `None` when the latest turn logged nothing.
    pub fn server_id(&self) -> Option<&str> {
        self.server_id.as_deref()
    }

    /// True once the server sent a turn without a next state token.
    pub fn is_finished(&self) -> bool {
        self.finished && self.pending.is_empty()
    }

    /// Sends the following turns through `client` instead: another replica
    /// that shares the signing key continues the stream from its tokens.
    pub fn move_to(&mut self, client: &Client) {
        self.client = client.clone();
    }

    /// Asks the server to cancel the stream (`vgi_rpc.cancel`); it runs the
    /// state's cancel hook. A finished stream sends nothing.
    pub async fn cancel(mut self) -> Result<(), ClientError> {
        if self.finished {
            return Ok(());
        }
        self.turn(true).await.map(|_| ())
    }

    async fn turn(&mut self, cancel: bool) -> Result<Turn, ClientError> {
        let Some(state) = self.state.take() else {
            self.finished = true;
            return Err(ClientError::StreamFinished {
                method: self.method.clone(),
            });
        };
        let mut metadata: Metadata = vec![(wire::STATE_KEY.into(), state)];
        if let Some(call) = &self.call {
            metadata.push((wire::CALL_STATE_KEY.into(), call.clone()));
        }
        if cancel {
            metadata.push((wire::CANCEL_KEY.into(), "1".into()));
        }
        let body = encode(&RecordBatch::new_empty(wire::empty_schema()), &metadata)?;
        let client = self.client.clone();
        let url = client.url(&self.protocol, &self.method, Some("exchange"));
        let result = async {
            let streams = client.post(&url, body).await?;
            let mut turn = Turn::default();
            for stream in streams {
                client
                    .absorb(&url, stream, Tokens::Separate, &mut turn)
                    .await?;
            }
            Ok::<_, ClientError>(turn)
        }
        .await;
        let turn = match result {
            Ok(turn) => turn,
            Err(error) => {
                // An error ends the stream: there is no token to continue from.
                self.finished = true;
                return Err(error);
            }
        };
        self.logs.extend(turn.logs.iter().cloned());
        self.server_id = turn.server_id.clone();
        self.state = turn.state.clone();
        self.finished = self.state.is_none();
        Ok(turn)
    }
}

/// A bidirectional stream: one output batch for each input batch.
#[derive(Debug)]
pub struct ExchangeStream {
    client: Client,
    protocol: String,
    method: String,
    header: Option<RecordBatch>,
    state: Option<String>,
    call: String,
    logs: Vec<LogRecord>,
}

impl ExchangeStream {
    /// The stream header (one row), when the method declares one.
    pub fn header(&self) -> Option<&RecordBatch> {
        self.header.as_ref()
    }

    /// Every log message the stream sent so far, in order.
    pub fn logs(&self) -> &[LogRecord] {
        &self.logs
    }

    /// Sends `input` (on the method's input schema) and returns the output
    /// batch of that turn.
    pub async fn exchange(&mut self, input: RecordBatch) -> Result<RecordBatch, ClientError> {
        let Some(state) = self.state.take() else {
            return Err(ClientError::StreamFinished {
                method: self.method.clone(),
            });
        };
        let metadata: Metadata = vec![
            (wire::STATE_KEY.into(), state),
            (wire::CALL_STATE_KEY.into(), self.call.clone()),
        ];
        let body = encode(&input, &metadata)?;
        let url = self
            .client
            .url(&self.protocol, &self.method, Some("exchange"));
        let streams = self.client.post(&url, body).await?;
        let mut turn = Turn::default();
        for stream in streams {
            self.client
                .absorb(&url, stream, Tokens::OnData, &mut turn)
                .await?;
        }
        self.logs.extend(turn.logs);
        self.state = turn.state;
        match turn.data.len() {
            1 => Ok(turn.data.remove(0)),
            n => Err(protocol_error(
                &url,
                format!("an exchange turn answers one batch, got {n}"),
            )),
        }
    }

    /// Ends the stream. As with the Python client this sends nothing: the
    /// server keeps no state, and the tokens expire on their own.
    pub async fn close(self) -> Result<(), ClientError> {
        Ok(())
    }
}

/// The request IPC stream: the parameters with the dispatch metadata.
fn request_body(
    protocol: &str,
    method: &str,
    params: &RecordBatch,
    version: Option<String>,
) -> Result<Vec<u8>, ClientError> {
    let mut metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (
            wire::REQUEST_VERSION_KEY.into(),
            wire::REQUEST_VERSION.into(),
        ),
        (wire::PROTOCOL_KEY.into(), protocol.into()),
    ];
    if let Some(version) = version {
        metadata.push((wire::PROTOCOL_VERSION_KEY.into(), version));
    }
    encode(params, &metadata)
}

fn checked_base_url(base_url: &str) -> Result<String, ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: base_url.to_string(),
        reason,
    };
    let parsed = url::Url::parse(base_url).map_err(|e| invalid(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "the scheme must be http or https, not `{}`",
            parsed.scheme()
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("a base URL has no query or fragment".into()));
    }
    Ok(base_url.trim_end_matches('/').to_string())
}

fn http_client(timeout: Option<Duration>) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder.build().map_err(|e| ClientError::Transport {
        url: String::new(),
        message: format!("failed to build the HTTP client: {e}"),
        unreachable: false,
    })
}

fn fetcher(settings: &FetchSettings) -> Result<Fetcher, ClientError> {
    Ok(Fetcher::new(settings.clone())?)
}

/// One IPC stream holding `batch` with `metadata` on it.
fn encode(batch: &RecordBatch, metadata: &Metadata) -> Result<Vec<u8>, ClientError> {
    let encode_error = |e: arrow_schema::ArrowError| ClientError::Encode(e.to_string());
    let mut out = Vec::new();
    let schema: SchemaRef = batch.schema();
    let mut writer = StreamWriter::new(&mut out, &schema).map_err(encode_error)?;
    writer.write(batch, metadata).map_err(encode_error)?;
    writer.finish();
    Ok(out)
}

async fn read_body(mut response: reqwest::Response, url: &str) -> Result<Bytes, ClientError> {
    let limit = ACCEPT_MAX_RESPONSE_BYTES;
    let too_large = |size: u64| {
        protocol_error(
            url,
            format!("the body is {size} bytes, above the accepted {limit} bytes"),
        )
    };
    if let Some(length) = response.content_length()
        && length > limit
    {
        return Err(too_large(length));
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|error| ClientError::Transport {
            url: url.to_string(),
            message: error_chain(&error),
            unreachable: error.is_timeout(),
        })?
    {
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn unauthorized(url: &str, headers: &reqwest::header::HeaderMap, body: &[u8]) -> ClientError {
    let json: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let reason = headers
        .get("vgi-auth-reason")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| json["reason"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unauthorized".into());
    let detail = json["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| snippet(body));
    ClientError::Unauthorized {
        url: url.to_string(),
        reason,
        detail,
    }
}

fn protocol_error(url: &str, message: String) -> ClientError {
    ClientError::Protocol {
        url: url.to_string(),
        message,
    }
}

/// The start of a body, as text, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.trim().to_string()
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// An EXCEPTION batch as the Python client reads it: the type and message
/// from `log_extra` (else from `log_message`), code, kind and details from
/// the top-level keys first, then from `log_extra`.
fn rpc_error(metadata: &Metadata, status: http::StatusCode) -> RpcError {
    let get = |key: &str| wire::metadata_get(metadata, key);
    let extra: Map<String, Value> = get(wire::LOG_EXTRA_KEY)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let log_message = get(wire::LOG_MESSAGE_KEY).unwrap_or("");
    let error_type = extra
        .get("exception_type")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| log_message.split_once(": ").map(|(t, _)| t.to_string()))
        .unwrap_or_else(|| "RpcError".to_string());
    let message = extra
        .get("exception_message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| {
            log_message
                .strip_prefix(&format!("{error_type}: "))
                .unwrap_or(log_message)
                .to_string()
        });
    let code = get(wire::ERROR_CODE_KEY)
        .or_else(|| extra.get("error_code").and_then(Value::as_str))
        .and_then(ErrorCode::parse)
        .unwrap_or(ErrorCode::Unknown);
    let kind = get(wire::ERROR_KIND_KEY).map(str::to_string).or_else(|| {
        extra
            .get("error_kind")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let details = get(wire::ERROR_DETAILS_KEY)
        .and_then(|text| serde_json::from_str::<Vec<Value>>(text).ok())
        .or_else(|| {
            extra
                .get("error_details")
                .and_then(Value::as_array)
                .cloned()
        })
        .unwrap_or_default();
    let mut error = RpcError::new(error_type, message)
        .with_code(code)
        .with_details(details)
        .with_status(status);
    if let Some(kind) = kind {
        error = error.with_kind(kind);
    }
    error
}

fn log_record(metadata: &Metadata, level: &str) -> LogRecord {
    let level = match level {
        "ERROR" => LogLevel::Error,
        "WARN" | "WARNING" => LogLevel::Warn,
        "DEBUG" => LogLevel::Debug,
        "TRACE" => LogLevel::Trace,
        _ => LogLevel::Info,
    };
    let extra = wire::metadata_get(metadata, wire::LOG_EXTRA_KEY)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    LogRecord {
        level,
        message: wire::metadata_get(metadata, wire::LOG_MESSAGE_KEY)
            .unwrap_or("")
            .to_string(),
        extra,
    }
}

/// An empty parameter batch, for methods without parameters.
pub fn no_params() -> RecordBatch {
    RecordBatch::new_empty(Arc::new(Schema::empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_batches_read_like_the_python_client() {
        let sent = RpcError::new("ValueError", "boom: twice")
            .with_code(ErrorCode::InvalidArgument)
            .with_kind("bad_input")
            .with_details(vec![serde_json::json!({"@type": "x"})]);
        let read = rpc_error(
            &sent.to_metadata("srv", "req"),
            http::StatusCode::BAD_REQUEST,
        );
        assert_eq!(read.error_type, "ValueError");
        assert_eq!(read.message, "boom: twice");
        assert_eq!(read.code, ErrorCode::InvalidArgument);
        assert_eq!(read.kind.as_deref(), Some("bad_input"));
        assert_eq!(read.details.len(), 1);
        assert_eq!(read.status, http::StatusCode::BAD_REQUEST);
    }

    #[test]
    fn base_urls_are_checked_and_trimmed() {
        assert_eq!(
            checked_base_url("http://127.0.0.1:8080/vgi/").unwrap(),
            "http://127.0.0.1:8080/vgi"
        );
        for bad in ["127.0.0.1:8080", "ftp://x/", "http://x/?a=1", "not a url"] {
            assert!(checked_base_url(bad).is_err(), "{bad}");
        }
    }
}
