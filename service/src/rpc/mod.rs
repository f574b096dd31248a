//! Defining vgi-rpc services in Rust.
//!
//! A [`Protocol`] is a named set of methods with Arrow schemas. The usual way
//! to write one is a trait of `async fn`s under [`crate::service`]: the
//! parameter, result, header and row schemas are generated from the Rust
//! types ([`value`]), the server decodes the parameters, and a typed client
//! (`{Trait}Client`) comes with it. A method's return type picks its kind
//! ([`MethodOutput`]): a value ([`ArrowValue`]) or `()` for a unary method,
//! [`Produce`] for a producer stream, [`Exchange`] for an exchange stream.
//!
//! ```
//! use kit_service::{ArrowRecord, Ctx, Produce, RowProducer, Rows, RpcError};
//! use serde::{Deserialize, Serialize};
//!
//! /// A point; `label` is nullable because it is an `Option`.
//! #[derive(ArrowRecord, Debug, Clone, PartialEq)]
//! pub struct Point {
//!     pub x: f64,
//!     pub y: f64,
//!     pub label: Option<String>,
//! }
//!
//! #[kit_service::service(name = "demo.Geometry.v1", version = "1.0.0")]
//! pub trait Geometry {
//!     /// Moves a point by `dx`, `dy`.
//!     async fn shift(&self, ctx: &Ctx, point: Point, dx: f64, dy: f64) -> Result<Point, RpcError>;
//!     /// Streams `n` points on the diagonal.
//!     async fn diagonal(&self, n: u32) -> Result<Produce<Diagonal>, RpcError>;
//! }
//!
//! /// The state of `diagonal` between turns, serialized into the stream token.
//! #[derive(Serialize, Deserialize)]
//! pub struct Diagonal {
//!     next: u32,
//!     n: u32,
//! }
//!
//! impl RowProducer for Diagonal {
//!     type Row = Point;
//!     async fn produce(&mut self, out: &mut Rows<'_, Point>, _ctx: &Ctx) -> Result<(), RpcError> {
//!         if self.next == self.n {
//!             out.finish();
//!             return Ok(());
//!         }
//!         let v = f64::from(self.next);
//!         out.emit(vec![Point { x: v, y: v, label: None }])?;
//!         self.next += 1;
//!         Ok(())
//!     }
//! }
//!
//! struct Plane;
//!
//! impl Geometry for Plane {
//!     async fn shift(&self, _ctx: &Ctx, point: Point, dx: f64, dy: f64) -> Result<Point, RpcError> {
//!         Ok(Point { x: point.x + dx, y: point.y + dy, ..point })
//!     }
//!     async fn diagonal(&self, n: u32) -> Result<Produce<Diagonal>, RpcError> {
//!         Ok(Produce::new(Diagonal { next: 0, n }))
//!     }
//! }
//!
//! let protocol = Plane.into_protocol();
//! let shift = protocol.method("shift").unwrap();
//! assert_eq!(
//!     kit_service::wire::tokens::schema_text(shift.params()),
//!     // A record parameter travels as Python's dataclasses do: one row of IPC.
//!     "point: binary, dx: float64, dy: float64"
//! );
//! assert_eq!(
//!     kit_service::wire::tokens::type_token(&<Point as kit_service::rpc::value::ArrowValue>::data_type()),
//!     "struct<x:float64,y:float64,label?:utf8>"
//! );
//! assert_eq!(shift.doc(), "Moves a point by `dx`, `dy`.");
//!
//! // Over the wire, with the generated client:
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = kit_service::testing::TestServer::start([protocol]).await;
//! let geometry = GeometryClient::new(server.client().clone());
//! let moved = geometry.shift(Point { x: 1.0, y: 2.0, label: None }, 0.5, -2.0).await.unwrap();
//! assert_eq!((moved.x, moved.y), (1.5, 0.0));
//! let points = geometry.diagonal(3).await.unwrap().collect().await.unwrap();
//! assert_eq!(points.len(), 3);
//! # });
//! ```
//!
//! A parameter whose type has no Arrow mapping is a compile error in the
//! crate that declares the protocol:
//!
//! ```compile_fail
//! use kit_service::{Ctx, RpcError};
//!
//! #[kit_service::service(name = "demo.Clock.v1")]
//! pub trait Clock {
//!     // `Duration` is not an `ArrowValue`.
//!     async fn wait(&self, ctx: &Ctx, duration: std::time::Duration) -> Result<(), RpcError>;
//! }
//! ```
//!
//! and so is calling the generated client with a wrong type:
//!
//! ```compile_fail
//! # use kit_service::{Ctx, RpcError};
//! # #[kit_service::service(name = "demo.Math.v1")]
//! # pub trait Math {
//! #     async fn add(&self, ctx: &Ctx, a: i64, b: i64) -> Result<i64, RpcError>;
//! # }
//! async fn call(math: MathClient) {
//!     let _ = math.add("1", 2).await;
//! }
//! ```
//!
//! The dynamic form declares schemas as type-token text (`"a: int64, b?: utf8"`)
//! and reads arguments by name; the conformance protocols use it, because
//! they must spell types no Rust type maps to:
//!
//! ```
//! use kit_service::rpc::Protocol;
//!
//! let protocol = Protocol::builder("demo.Calculator.v1")
//!     .unary("add", "a: int64, b: int64", "result: int64", |_ctx, args| async move {
//!         Ok(args.get::<i64>("a")? + args.get::<i64>("b")?)
//!     })
//!     .build()
//!     .expect("a well-formed declaration");
//! assert_eq!(protocol.method("add").unwrap().params().fields().len(), 2);
//! ```
//!
//! Streams are state machines ([`RowProducer`], [`RowExchanger`], or the
//! batch-level [`Producer`], [`Exchanger`]) whose state is serialized into
//! the signed cursor token between turns, so any replica can serve any turn.
//!
//! Invariant: handlers run on the tokio runtime and must not block it; CPU-heavy
//! work belongs in `tokio::task::spawn_blocking` inside the handler. Under
//! `kit-service serve` with `KIT_CONNECTION_THREADS` set, that runtime is the
//! connection's own single-threaded one (nothing steals its work, and
//! `tokio::task::block_in_place` panics).

mod auth_context;
pub mod convert;
pub mod typed;
pub mod value;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow_schema::{Schema, SchemaRef};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use auth_context::AuthContext;
pub use convert::{Bytes, FromArrow, List, ToArrow};
pub use typed::{Exchange, MethodOutput, Produce, RowExchanger, RowProducer, Rows, StreamHeader};
pub use value::{ArrowRecord, ArrowValue, ValueError};

use crate::wire::tokens::{TokenError, parse_schema};
use crate::wire::{LogLevel, LogRecord, Metadata, RpcError, metadata_get_owned};

/// A boxed, sendable future: what erased handlers return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Per-call context: logs for the client, caller identity, request metadata.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<CtxInner>,
}

struct CtxInner {
    logs: Mutex<Vec<LogRecord>>,
    identity: String,
    auth: Arc<AuthContext>,
    request_id: String,
    metadata: Metadata,
    response_limit: Option<u64>,
    external: Option<Arc<crate::storage::External>>,
}

impl Ctx {
    /// `auth` is what authentication decided (claims, domain); `identity`
    /// stays the principal bound into stream tokens.
    pub(crate) fn new(
        identity: String,
        auth: Arc<AuthContext>,
        request_id: String,
        metadata: Metadata,
        response_limit: Option<u64>,
    ) -> Self {
        Ctx {
            inner: Arc::new(CtxInner {
                logs: Mutex::new(Vec::new()),
                auth,
                identity,
                request_id,
                metadata,
                response_limit,
                external: None,
            }),
        }
    }

    pub(crate) fn with_external(mut self, external: Option<Arc<crate::storage::External>>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.external = external;
        }
        self
    }

    /// Publishes a one-row result batch to external storage once and returns a
    /// reference every later call can return without uploading again (upstream's
    /// `publish_external`). `key` names the cached value; `include_sha256` adds
    /// a digest to the pointer.
    pub async fn publish_cached(
        &self,
        key: &str,
        include_sha256: bool,
        batch: impl FnOnce() -> Result<RecordBatch, RpcError>,
    ) -> Result<ExternalRef, RpcError> {
        let Some(external) = self.inner.external.as_ref() else {
            return Err(RpcError::new(
                "RuntimeError",
                "this server has no external storage configured",
            ));
        };
        external.publish_cached(key, include_sha256, batch).await
    }

    /// Uploads a one-row result batch to external storage now (no caching) and
    /// returns the reference to reply with; `include_sha256` adds a digest.
    pub async fn publish(
        &self,
        batch: RecordBatch,
        include_sha256: bool,
    ) -> Result<ExternalRef, RpcError> {
        let Some(external) = self.inner.external.as_ref() else {
            return Err(RpcError::new(
                "RuntimeError",
                "this server has no external storage configured",
            ));
        };
        external.publish(batch, include_sha256).await
    }

    /// Sends a log message to the client, ahead of this call's result.
    pub fn log(&self, level: LogLevel, message: impl Into<String>) {
        self.log_with(level, message, Map::new());
    }

    /// Like [`Ctx::log`], with extra key/value pairs (`log_extra`).
    pub fn log_with(&self, level: LogLevel, message: impl Into<String>, extra: Map<String, Value>) {
        let record = LogRecord {
            level,
            message: message.into(),
            extra,
        };
        self.inner
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }

    /// The authenticated caller (`""` when anonymous).
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// What authentication decided about the caller: whether it is
    /// authenticated, its principal, the domain that vouched for it and its
    /// claims (upstream's `ctx.auth`).
    pub fn auth(&self) -> &AuthContext {
        &self.inner.auth
    }

    /// The id of this request (`X-Request-Id`), also stamped on logs and errors.
    pub fn request_id(&self) -> &str {
        &self.inner.request_id
    }

    /// Application metadata of the request batch (framework keys removed).
    pub fn metadata(&self) -> &Metadata {
        &self.inner.metadata
    }

    /// One application metadata value of the request batch, by key.
    pub fn metadata_value(&self, key: &str) -> Option<String> {
        metadata_get_owned(&self.inner.metadata, key)
    }

    /// The response budget of this call in bytes, if one applies.
    pub fn response_limit(&self) -> Option<u64> {
        self.inner.response_limit
    }

    /// The logs so far, left in place.
    pub(crate) fn peek_logs(&self) -> Vec<LogRecord> {
        self.inner
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn take_logs(&self) -> Vec<LogRecord> {
        std::mem::take(&mut *self.inner.logs.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The parameters of a call: one row, one column per declared parameter.
#[derive(Debug, Clone)]
pub struct Args {
    batch: RecordBatch,
}

impl Args {
    pub(crate) fn new(batch: RecordBatch) -> Self {
        Args { batch }
    }

    /// A parameter as a Rust value; a type mismatch is a `TypeError` for the client.
    pub fn get<T: FromArrow>(&self, name: &str) -> Result<T, RpcError> {
        let column = self.column(name)?;
        T::from_arrow(column.as_ref(), 0)
            .map_err(|e| RpcError::new("TypeError", format!("parameter '{name}': {e}")))
    }

    /// A parameter as its raw one-row Arrow column.
    pub fn column(&self, name: &str) -> Result<ArrayRef, RpcError> {
        self.batch
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| RpcError::new("TypeError", format!("missing parameter '{name}'")))
    }

    /// The whole one-row parameter batch.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }
}

/// What a unary handler returns; anything [`ToArrow`] converts into it.
pub enum Reply {
    /// The `result` cell, a one-row column of the declared result type.
    Value(ArrayRef),
    /// A method returning nothing.
    Void,
    /// A pointer to a batch already in external storage.
    External(ExternalRef),
}

/// A batch published to external storage: what a pointer batch carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRef {
    /// The URL the client fetches the batch from.
    pub location: String,
    /// The batch's SHA-256, hex, when the pointer carries one.
    pub sha256: Option<String>,
}

impl IntoReply for ExternalRef {
    fn into_reply(self, _result: Option<&Schema>) -> Result<Reply, RpcError> {
        Ok(Reply::External(self))
    }
}

/// Converts what a dynamic unary handler returns into its [`Reply`].
pub trait IntoReply {
    /// The reply for a method whose result schema is `result` (`None` or empty: void).
    fn into_reply(self, result: Option<&Schema>) -> Result<Reply, RpcError>;
}

impl<T: ToArrow> IntoReply for T {
    fn into_reply(self, result: Option<&Schema>) -> Result<Reply, RpcError> {
        let Some(schema) = result.filter(|s| !s.fields().is_empty()) else {
            return Ok(Reply::Void);
        };
        self.to_arrow(schema.field(0).data_type()).map(Reply::Value)
    }
}

/// Unit is the void result.
impl ToArrow for () {
    fn to_arrow(self, data_type: &arrow_schema::DataType) -> Result<ArrayRef, RpcError> {
        Ok(arrow_array::new_null_array(data_type, 1))
    }
}

/// Collects what one stream turn emits.
pub struct Output {
    schema: SchemaRef,
    pub(crate) batches: Vec<(RecordBatch, Metadata)>,
    pub(crate) finished: bool,
}

impl Output {
    pub(crate) fn new(schema: SchemaRef) -> Self {
        Output {
            schema,
            batches: Vec::new(),
            finished: false,
        }
    }

    /// The stream's output schema; emitted batches must have it.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Emits a batch of the output schema.
    pub fn emit(&mut self, batch: RecordBatch) -> Result<(), RpcError> {
        self.emit_with_metadata(batch, Vec::new())
    }

    /// Emits a batch with application metadata on its IPC message.
    pub fn emit_with_metadata(
        &mut self,
        batch: RecordBatch,
        metadata: Metadata,
    ) -> Result<(), RpcError> {
        let batch = conform(batch, &self.schema)?;
        self.batches.push((batch, metadata));
        Ok(())
    }

    /// Ends the stream after this turn (a batch emitted in the same turn is still sent).
    pub fn finish(&mut self) {
        self.finished = true;
    }

    /// Whether [`Output::finish`] was called in this turn.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

/// Brings an emitted batch onto the declared schema: same columns in order,
/// casting where the types are compatible.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, RpcError> {
    if batch.schema() == *schema {
        return Ok(batch);
    }
    let mut columns = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = batch.column_by_name(field.name()).ok_or_else(|| {
            RpcError::new(
                "TypeError",
                format!(
                    "emitted batch lacks column '{}' of the output schema",
                    field.name()
                ),
            )
        })?;
        let column = if column.data_type() == field.data_type() {
            column.clone()
        } else {
            arrow_cast::cast(column, field.data_type())?
        };
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// A producer stream: each turn emits at most one batch or finishes.
pub trait Producer: Serialize + DeserializeOwned + Send + 'static {
    /// One turn: emit at most one batch, or finish.
    fn produce(
        &mut self,
        out: &mut Output,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<(), RpcError>> + Send;

    /// Called when the client cancels; errors are ignored, as upstream does.
    fn on_cancel(&mut self, _ctx: &Ctx) {}
}

/// An exchange stream: each turn takes one input batch and emits one batch.
pub trait Exchanger: Serialize + DeserializeOwned + Send + 'static {
    /// One turn: read `input`, emit one batch.
    fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<(), RpcError>> + Send;

    /// Called when the client cancels; errors are ignored, as upstream does.
    fn on_cancel(&mut self, _ctx: &Ctx) {}
}

/// What a stream method's init handler returns.
pub struct StreamInit<S> {
    /// The first turn's state.
    pub state: S,
    /// The schema of every output batch.
    pub output_schema: SchemaRef,
    /// Exchange streams only: the schema each input batch must have.
    pub input_schema: Option<SchemaRef>,
    /// The one-row header batch, for methods that declare a header schema.
    pub header: Option<RecordBatch>,
}

impl<S> StreamInit<S> {
    /// A stream with output schema `output_schema`, starting from `state`.
    pub fn new(output_schema: SchemaRef, state: S) -> Self {
        StreamInit {
            state,
            output_schema,
            input_schema: None,
            header: None,
        }
    }

    /// Sets the input schema (exchange streams).
    pub fn with_input(mut self, input_schema: SchemaRef) -> Self {
        self.input_schema = Some(input_schema);
        self
    }

    /// Sends `header` (one row of the declared header schema) before the first batch.
    pub fn with_header(mut self, header: RecordBatch) -> Self {
        self.header = Some(header);
        self
    }
}

/// Whether a stream method is a producer or an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Emits batches until it finishes; the client sends no input.
    Producer,
    /// One output batch per input batch.
    Exchange,
}

impl StreamKind {
    /// The wire name: `producer` or `exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Producer => "producer",
            StreamKind::Exchange => "exchange",
        }
    }
}

/// A stream init with its state already serialized.
pub(crate) struct ErasedInit {
    pub state: Vec<u8>,
    pub output_schema: SchemaRef,
    pub input_schema: Option<SchemaRef>,
    pub header: Option<RecordBatch>,
}

pub(crate) type UnaryFn =
    dyn Fn(Ctx, Args) -> BoxFuture<'static, Result<Reply, RpcError>> + Send + Sync;
type InitFn = dyn Fn(Ctx, Args) -> BoxFuture<'static, Result<ErasedInit, RpcError>> + Send + Sync;

/// One turn of a stream, over serialized state.
pub(crate) trait StreamTurn: Send + Sync {
    fn turn<'a>(
        &'a self,
        state: &'a [u8],
        input: Option<RecordBatch>,
        out: &'a mut Output,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>>;
    fn cancel(&self, state: &[u8], ctx: &Ctx);
}

struct ProducerTurn<S>(std::marker::PhantomData<fn() -> S>);
struct ExchangeTurn<S>(std::marker::PhantomData<fn() -> S>);

fn decode_state<S: DeserializeOwned>(state: &[u8]) -> Result<S, RpcError> {
    serde_json::from_slice(state)
        .map_err(|e| RpcError::new("RuntimeError", format!("Failed to deserialize state: {e}")))
}

fn encode_state<S: Serialize>(state: &S) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(state)
        .map_err(|e| RpcError::new("RuntimeError", format!("Failed to serialize state: {e}")))
}

impl<S: Producer> StreamTurn for ProducerTurn<S> {
    fn turn<'a>(
        &'a self,
        state: &'a [u8],
        _input: Option<RecordBatch>,
        out: &'a mut Output,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>> {
        Box::pin(async move {
            let mut state: S = decode_state(state)?;
            state.produce(out, ctx).await?;
            encode_state(&state)
        })
    }

    fn cancel(&self, state: &[u8], ctx: &Ctx) {
        if let Ok(mut state) = decode_state::<S>(state) {
            state.on_cancel(ctx);
        }
    }
}

impl<S: Exchanger> StreamTurn for ExchangeTurn<S> {
    fn turn<'a>(
        &'a self,
        state: &'a [u8],
        input: Option<RecordBatch>,
        out: &'a mut Output,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>> {
        Box::pin(async move {
            let mut state: S = decode_state(state)?;
            let input = input.ok_or_else(|| {
                RpcError::new("RuntimeError", "exchange turn without an input batch")
            })?;
            state.exchange(input, out, ctx).await?;
            encode_state(&state)
        })
    }

    fn cancel(&self, state: &[u8], ctx: &Ctx) {
        if let Ok(mut state) = decode_state::<S>(state) {
            state.on_cancel(ctx);
        }
    }
}

/// How a method is called.
pub(crate) enum MethodKind {
    Unary {
        result: Option<SchemaRef>,
        handler: Arc<UnaryFn>,
    },
    Stream {
        kind: StreamKind,
        header: Option<SchemaRef>,
        init: Arc<InitFn>,
        turn: Arc<dyn StreamTurn>,
    },
}

/// A parameter whose strings must name enum members ([`ProtocolBuilder::enum_param`]).
#[derive(Debug, Clone)]
pub(crate) struct EnumParam {
    pub param: String,
    pub enum_name: String,
    pub members: Vec<String>,
}

/// Whether `data_type` has a dictionary of strings in it, at any depth.
fn holds_dictionary_strings(data_type: &arrow_schema::DataType) -> bool {
    use arrow_schema::DataType;
    match data_type {
        DataType::Dictionary(_, value) => matches!(**value, DataType::Utf8 | DataType::LargeUtf8),
        DataType::List(child)
        | DataType::LargeList(child)
        | DataType::FixedSizeList(child, _)
        | DataType::Map(child, _) => holds_dictionary_strings(child.data_type()),
        DataType::Struct(fields) => fields
            .iter()
            .any(|f| holds_dictionary_strings(f.data_type())),
        _ => false,
    }
}

/// One method of a [`Protocol`]: its name, schemas and handler.
pub struct Method {
    pub(crate) name: String,
    pub(crate) params: SchemaRef,
    pub(crate) kind: MethodKind,
    pub(crate) doc: String,
    /// `binary` parameters that hold a record: an IPC stream of one row on
    /// this schema, checked before the handler runs
    /// ([`ProtocolBuilder::record_param`]).
    pub(crate) records: Vec<(String, SchemaRef)>,
    /// Parameters whose dictionary-encoded strings must name an enum member
    /// ([`ProtocolBuilder::enum_param`]).
    pub(crate) enums: Vec<EnumParam>,
    /// The author says this stream's state may hold secrets
    /// ([`Protocol::with_confidential_state`]).
    pub(crate) confidential_state: bool,
}

impl Method {
    /// Whether the method's author declared that its stream state may hold
    /// secrets, which signed (readable) tokens would show the caller.
    pub fn confidential_state(&self) -> bool {
        self.confidential_state
    }

    /// The wire name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parameter schema: one field per parameter, in order.
    pub fn params(&self) -> &SchemaRef {
        &self.params
    }

    /// Whether this is a stream method.
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, MethodKind::Stream { .. })
    }

    /// `None` for void methods and streams.
    pub fn result(&self) -> Option<&SchemaRef> {
        match &self.kind {
            MethodKind::Unary { result, .. } => result.as_ref(),
            MethodKind::Stream { .. } => None,
        }
    }

    /// The header schema of a stream that declares one.
    pub fn header(&self) -> Option<&SchemaRef> {
        match &self.kind {
            MethodKind::Stream { header, .. } => header.as_ref(),
            MethodKind::Unary { .. } => None,
        }
    }

    /// The method's description (from its doc comment, for typed methods).
    pub fn doc(&self) -> &str {
        &self.doc
    }

    /// Producer or exchange, for stream methods.
    pub fn stream_kind(&self) -> Option<StreamKind> {
        match &self.kind {
            MethodKind::Stream { kind, .. } => Some(*kind),
            MethodKind::Unary { .. } => None,
        }
    }
}

/// A named set of methods, served at `{prefix}/{name}/{method}`.
pub struct Protocol {
    pub(crate) name: String,
    pub(crate) version: Option<String>,
    pub(crate) methods: BTreeMap<String, Method>,
    /// Reflection is exempt from the protocol-version gate.
    pub(crate) version_exempt: bool,
    /// Operational protocols (`kit.Probe.v1`) are served but not listed by reflection.
    pub(crate) unlisted: bool,
}

impl Protocol {
    /// Declares that the stream state of `method` may hold secrets (an
    /// upstream credential, another tenant's cursor): a signed token would
    /// show it to the caller. The doctor (KEY007) and the startup log then
    /// ask for `KIT_TOKEN_MODE=sealed`. Works on typed and built protocols
    /// alike; an unknown method is ignored.
    ///
    /// ```
    /// let protocol = kit_service::demo::protocol().with_confidential_state("count");
    /// assert!(protocol.method("count").unwrap().confidential_state());
    /// assert!(!protocol.method("add").unwrap().confidential_state());
    /// ```
    pub fn with_confidential_state(mut self, method: &str) -> Self {
        if let Some(m) = self.methods.get_mut(method) {
            m.confidential_state = true;
        }
        self
    }

    /// Starts declaring the protocol `name` (e.g. `acme.Orders.v1`).
    pub fn builder(name: impl Into<String>) -> ProtocolBuilder {
        ProtocolBuilder {
            name: name.into(),
            version: None,
            methods: BTreeMap::new(),
            errors: Vec::new(),
            parsed: BTreeMap::new(),
            version_exempt: false,
            unlisted: false,
        }
    }

    /// The protocol name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The declared `MAJOR.MINOR.PATCH` version, if any.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Every method, by name.
    pub fn methods(&self) -> impl Iterator<Item = &Method> {
        self.methods.values()
    }

    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&Method> {
        self.methods.get(name)
    }
}

#[derive(Debug, thiserror::Error)]
/// A mistake in a protocol declaration, found by [`ProtocolBuilder::build`].
pub enum DefinitionError {
    #[error("protocol name `{0}` must match ^[A-Za-z_][A-Za-z0-9_.]*$ and be at most 255 bytes")]
    /// The protocol name breaks the charset or length rule.
    ProtocolName(String),
    #[error("protocol version `{0}` is not MAJOR.MINOR.PATCH")]
    /// The version is not canonical semver.
    Version(String),
    #[error("method `{method}`: {source}")]
    /// A schema declaration does not parse.
    Schema {
        /// The method whose declaration is wrong.
        method: String,
        /// Why it does not parse.
        source: TokenError,
    },
    #[error("method `{0}` is declared twice")]
    /// Two methods share a name.
    Duplicate(String),
    #[error("method name `{0}` must not be empty or start with `_`")]
    /// A method name is empty or reserved.
    MethodName(String),
    #[error("`record_param`: method `{method}` has no `binary` parameter `{param}`")]
    /// [`ProtocolBuilder::record_param`] names no binary parameter of a declared method.
    RecordParam {
        /// The method named.
        method: String,
        /// The parameter named.
        param: String,
    },
    #[error(
        "`enum_param`: method `{method}` has no parameter `{param}` holding dictionary-encoded strings"
    )]
    /// [`ProtocolBuilder::enum_param`] names no parameter with a
    /// `dictionary<..., utf8>` inside.
    EnumParam {
        /// The method named.
        method: String,
        /// The parameter named.
        param: String,
    },
}

/// Builds a [`Protocol`]; schema mistakes are reported together by [`ProtocolBuilder::build`].
pub struct ProtocolBuilder {
    name: String,
    version: Option<String>,
    methods: BTreeMap<String, Method>,
    errors: Vec<DefinitionError>,
    /// Each schema text parsed so far: methods repeat `result: utf8` and the
    /// like (102 distinct texts among the conformance service's 159).
    parsed: BTreeMap<String, SchemaRef>,
    version_exempt: bool,
    unlisted: bool,
}

impl ProtocolBuilder {
    /// Declares `protocol_version`; clients must then send the same MAJOR.MINOR.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Served, but left out of reflection's protocol list.
    pub(crate) fn unlisted(mut self) -> Self {
        self.unlisted = true;
        self
    }

    pub(crate) fn version_exempt(mut self) -> Self {
        self.version_exempt = true;
        self
    }

    fn schema(&mut self, method: &str, text: &str) -> SchemaRef {
        if let Some(schema) = self.parsed.get(text) {
            return schema.clone();
        }
        match parse_schema(text) {
            Ok(schema) => {
                let schema = Arc::new(schema);
                self.parsed.insert(text.to_string(), schema.clone());
                schema
            }
            Err(source) => {
                self.errors.push(DefinitionError::Schema {
                    method: method.to_string(),
                    source,
                });
                Arc::new(Schema::empty())
            }
        }
    }

    fn add(&mut self, name: &str, params: &str, kind: impl FnOnce(&mut Self) -> MethodKind) {
        let params = self.schema(name, params);
        let kind = kind(self);
        self.insert(name, params, kind);
    }

    /// Adds a method whose schemas were built from Rust types (see [`typed`]).
    pub(crate) fn method_with_schema(
        mut self,
        name: &str,
        params: SchemaRef,
        kind: MethodKind,
    ) -> Self {
        self.insert(name, params, kind);
        self
    }

    fn insert(&mut self, name: &str, params: SchemaRef, kind: MethodKind) {
        if name.is_empty() || name.starts_with('_') {
            self.errors
                .push(DefinitionError::MethodName(name.to_string()));
        }
        if self.methods.contains_key(name) {
            self.errors
                .push(DefinitionError::Duplicate(name.to_string()));
        }
        self.methods.insert(
            name.to_string(),
            Method {
                name: name.to_string(),
                params,
                kind,
                doc: String::new(),
                records: Vec::new(),
                enums: Vec::new(),
                confidential_state: false,
            },
        );
    }

    /// Declares that the dictionary-encoded strings in `param` of `method`
    /// (the column itself, or inside its lists, maps and structs) name
    /// members of the enum `enum_name`, as a Python `Enum` parameter
    /// travels; `members` lists every accepted string (names and values). A
    /// call with any other string is refused before the handler runs, with a
    /// 400 `TypeError`, as the Python reference refuses it while decoding.
    ///
    /// ```
    /// use kit_service::rpc::Protocol;
    ///
    /// let protocol = Protocol::builder("demo.Tickets.v1")
    ///     .unary("echo_status", "status: dictionary<index:int16,value:utf8>", "result: dictionary<index:int16,value:utf8>",
    ///         |_ctx, args| async move { args.column("status") })
    ///     .enum_param("echo_status", "status", "Status", &["OPEN", "open", "CLOSED", "closed"])
    ///     .build()
    ///     .expect("a well-formed declaration");
    /// assert!(protocol.method("echo_status").is_some());
    /// assert!(Protocol::builder("demo.Tickets.v1").enum_param("missing", "s", "S", &["A"]).build().is_err());
    /// ```
    pub fn enum_param(
        mut self,
        method: &str,
        param: &str,
        enum_name: &str,
        members: &[&str],
    ) -> Self {
        let holds_strings = self.methods.get(method).and_then(|m| {
            m.params
                .field_with_name(param)
                .ok()
                .map(|f| holds_dictionary_strings(f.data_type()))
        });
        match (holds_strings, self.methods.get_mut(method)) {
            (Some(true), Some(entry)) => entry.enums.push(EnumParam {
                param: param.to_string(),
                enum_name: enum_name.to_string(),
                members: members.iter().map(|m| m.to_string()).collect(),
            }),
            _ => self.errors.push(DefinitionError::EnumParam {
                method: method.to_string(),
                param: param.to_string(),
            }),
        }
        self
    }

    /// Declares that the `binary` parameter `param` of `method` carries a
    /// record, as a Python `ArrowSerializableDataclass` travels: an IPC stream
    /// of exactly one row on `schema` (type tokens). A call whose bytes are no
    /// such stream is refused before the handler runs, with a 400 `TypeError`,
    /// as the Python reference refuses a dataclass it cannot deserialize.
    ///
    /// ```
    /// use kit_service::rpc::{Bytes, Protocol};
    ///
    /// let protocol = Protocol::builder("demo.Geometry.v1")
    ///     .unary("echo_point", "point: binary", "result: binary", |_ctx, args| async move {
    ///         args.get::<Bytes>("point")
    ///     })
    ///     .record_param("echo_point", "point", "x: float64, y: float64")
    ///     .build()
    ///     .expect("a well-formed declaration");
    /// assert!(protocol.method("echo_point").is_some());
    /// assert!(Protocol::builder("demo.Geometry.v1").record_param("missing", "p", "x: int64").build().is_err());
    /// ```
    pub fn record_param(mut self, method: &str, param: &str, schema: &str) -> Self {
        let record = self.schema(method, schema);
        let declared = self.methods.get(method).map(|m| {
            m.params
                .field_with_name(param)
                .map(|f| f.data_type() == &arrow_schema::DataType::Binary)
        });
        match declared {
            Some(Ok(true)) => {
                if let Some(entry) = self.methods.get_mut(method) {
                    entry.records.push((param.to_string(), record));
                }
            }
            _ => self.errors.push(DefinitionError::RecordParam {
                method: method.to_string(),
                param: param.to_string(),
            }),
        }
        self
    }

    /// A unary method. `result` is `"result: <type>"`, or `""` for a void method.
    pub fn unary<F, Fut, R>(mut self, name: &str, params: &str, result: &str, handler: F) -> Self
    where
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
        R: IntoReply + 'static,
    {
        let result_schema = (!result.trim().is_empty()).then(|| self.schema(name, result));
        let shape = result_schema.clone();
        let handler = Arc::new(
            move |ctx: Ctx, args: Args| -> BoxFuture<'static, Result<Reply, RpcError>> {
                let shape = shape.clone();
                let future = handler(ctx, args);
                Box::pin(async move { future.await?.into_reply(shape.as_deref()) })
            },
        );
        self.add(name, params, |_| MethodKind::Unary {
            result: result_schema,
            handler,
        });
        self
    }

    /// A producer stream. `header` is the header schema, or `""` for none.
    pub fn producer<S, F, Fut>(self, name: &str, params: &str, header: &str, init: F) -> Self
    where
        S: Producer,
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<StreamInit<S>, RpcError>> + Send + 'static,
    {
        self.stream(
            name,
            params,
            header,
            StreamKind::Producer,
            init,
            Arc::new(ProducerTurn::<S>(std::marker::PhantomData)),
        )
    }

    /// An exchange stream; the init must set [`StreamInit::with_input`].
    pub fn exchange<S, F, Fut>(self, name: &str, params: &str, header: &str, init: F) -> Self
    where
        S: Exchanger,
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<StreamInit<S>, RpcError>> + Send + 'static,
    {
        self.stream(
            name,
            params,
            header,
            StreamKind::Exchange,
            init,
            Arc::new(ExchangeTurn::<S>(std::marker::PhantomData)),
        )
    }

    fn stream<S, F, Fut>(
        mut self,
        name: &str,
        params: &str,
        header: &str,
        kind: StreamKind,
        init: F,
        turn: Arc<dyn StreamTurn>,
    ) -> Self
    where
        S: Serialize + Send + 'static,
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<StreamInit<S>, RpcError>> + Send + 'static,
    {
        let header_schema = (!header.trim().is_empty()).then(|| self.schema(name, header));
        let init = Arc::new(
            move |ctx: Ctx, args: Args| -> BoxFuture<'static, Result<ErasedInit, RpcError>> {
                let future = init(ctx, args);
                Box::pin(async move {
                    let started = future.await?;
                    Ok(ErasedInit {
                        state: encode_state(&started.state)?,
                        output_schema: started.output_schema,
                        input_schema: started.input_schema,
                        header: started.header,
                    })
                })
            },
        );
        self.add(name, params, |_| MethodKind::Stream {
            kind,
            header: header_schema,
            init,
            turn,
        });
        self
    }

    /// Attaches a one-line description to the most recently added method.
    pub fn doc(mut self, method: &str, doc: &str) -> Self {
        if let Some(m) = self.methods.get_mut(method) {
            m.doc = doc.to_string();
        }
        self
    }

    /// The protocol, or every mistake found in its declaration.
    pub fn build(mut self) -> Result<Protocol, Vec<DefinitionError>> {
        if !valid_protocol_name(&self.name) {
            self.errors
                .insert(0, DefinitionError::ProtocolName(self.name.clone()));
        }
        if let Some(version) = &self.version
            && parse_version(version).is_none()
        {
            self.errors.push(DefinitionError::Version(version.clone()));
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        Ok(Protocol {
            name: self.name,
            version: self.version,
            methods: self.methods,
            version_exempt: self.version_exempt,
            unlisted: self.unlisted,
        })
    }
}

/// `^[A-Za-z_][A-Za-z0-9_.]*$`, at most 255 bytes.
pub fn valid_protocol_name(name: &str) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok
        && name.len() <= 255
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// Canonical semver `MAJOR.MINOR.PATCH` (no leading zeros, no suffix).
pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    // One pass over the bytes: every request's declared version comes here.
    let mut parts = [0u64; 3];
    let mut index = 0;
    let mut digits = 0;
    let mut leading_zero = false;
    for byte in text.bytes() {
        match byte {
            b'0'..=b'9' => {
                if leading_zero {
                    return None;
                }
                leading_zero = digits == 0 && byte == b'0';
                digits += 1;
                parts[index] = parts[index]
                    .checked_mul(10)?
                    .checked_add(u64::from(byte - b'0'))?;
            }
            b'.' if digits > 0 && index < 2 => {
                index += 1;
                digits = 0;
                leading_zero = false;
            }
            _ => return None,
        }
    }
    (index == 2 && digits > 0).then_some((parts[0], parts[1], parts[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_reports_every_bad_declaration() {
        let errors = Protocol::builder("9bad")
            .unary("a", "x: int65", "result: int64", |_ctx, _args| async {
                Ok(1i64)
            })
            .unary("_hidden", "", "", |_ctx, _args| async { Ok(()) })
            .build()
            .err()
            .unwrap();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }

    #[test]
    fn versions_are_canonical_semver() {
        assert_eq!(parse_version("2.0.0"), Some((2, 0, 0)));
        assert_eq!(parse_version("2.0"), None);
        assert_eq!(parse_version("2.0.0.1"), None);
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("01.0.0"), None);
        assert_eq!(parse_version("1.0.0-rc1"), None);
        assert_eq!(parse_version("1.10.200"), Some((1, 10, 200)));
        assert_eq!(parse_version("0.0.0"), Some((0, 0, 0)));
        assert_eq!(parse_version("1.00.0"), None);
        assert_eq!(parse_version("1..0"), None);
        assert_eq!(parse_version(".1.0"), None);
        assert_eq!(parse_version("1.0."), None);
        assert_eq!(parse_version("+1.0.0"), None);
        assert_eq!(
            parse_version("1.0.18446744073709551615"),
            Some((1, 0, u64::MAX))
        );
        assert_eq!(parse_version("1.0.18446744073709551616"), None);
    }

    #[test]
    fn protocol_names_follow_the_charset() {
        assert!(valid_protocol_name("acme.Orders.v2"));
        assert!(!valid_protocol_name("a%2Fb"));
        assert!(!valid_protocol_name(""));
    }
}
