//! Typed methods: what `#[kit_service::service]` generates code against.
//!
//! A trait method's return type `Result<X, RpcError>` decides what kind of
//! method it is, through [`MethodOutput`]: an [`ArrowValue`] is a unary method
//! with a `result` of that type, `()` a void unary method, [`Produce`] a
//! producer stream of [`RowProducer::Row`] rows, [`Exchange`] an exchange
//! stream of [`RowExchanger::Input`] rows in and [`RowExchanger::Row`] rows
//! out. The schemas are built once, from the types, when the protocol is
//! built; the generated handler reads each parameter by position with
//! [`Args::decode`] and converts the result without a string lookup.
//!
//! Stream state stays serde-serialized into the signed token between turns,
//! exactly as with [`super::Producer`] and [`super::Exchanger`].

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::value::{ArrowRecord, ArrowValue, ValueError, schema_of};
use super::{
    Args, BoxFuture, Ctx, ErasedInit, MethodKind, Output, ProtocolBuilder, Reply, StreamKind,
    StreamTurn, decode_state, encode_state,
};
use crate::wire::{ErrorCode, Metadata, RpcError};

impl Args {
    /// Parameter `name` of `method`, declared at position `index`, as a `T`.
    ///
    /// The server has already checked names, types and top-level nulls against
    /// the declared schema; this reads the cell by position and reports what
    /// that check cannot see (a null inside a struct or list) as a `TypeError`
    /// naming the parameter and both types.
    pub fn decode<T: ArrowValue>(
        &self,
        method: &str,
        index: usize,
        name: &str,
    ) -> Result<T, RpcError> {
        let bad = |message: String| {
            RpcError::new(
                "TypeError",
                format!("{method}() parameter `{name}`: {message}"),
            )
            .with_code(ErrorCode::InvalidArgument)
        };
        let batch = &self.batch;
        let column = match batch.schema_ref().fields().get(index) {
            Some(field) if field.name() == name => batch.column(index),
            _ => batch.column_by_name(name).ok_or_else(|| {
                bad(format!(
                    "missing, expected `{}`",
                    crate::wire::tokens::field_text(&T::top_level_field(name))
                ))
            })?,
        };
        if column.is_empty() {
            return Err(bad("the request batch has no rows".into()));
        }
        match T::top_level_from_cell(column.as_ref(), 0) {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(bad(ValueError::null::<T>().to_string())),
            Err(error) => Err(bad(error.to_string())),
        }
    }
}

/// What a typed method returns inside `Result<_, RpcError>`, and so what kind
/// of method it is. Implemented for every [`ArrowValue`] (unary), `()` (void
/// unary), [`Produce`] and [`Exchange`].
pub trait MethodOutput: Sized + Send + 'static {
    /// Adds method `name` with parameters `params` to `builder`; `handler`
    /// decodes the parameters and calls the user's method.
    fn register<F, Fut>(
        builder: ProtocolBuilder,
        name: &str,
        params: SchemaRef,
        handler: F,
    ) -> ProtocolBuilder
    where
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Self, RpcError>> + Send + 'static;
}

/// A unary method whose `result` column has `T`'s type.
impl<T: ArrowValue> MethodOutput for T {
    fn register<F, Fut>(
        builder: ProtocolBuilder,
        name: &str,
        params: SchemaRef,
        handler: F,
    ) -> ProtocolBuilder
    where
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Self, RpcError>> + Send + 'static,
    {
        let result = schema_of(vec![T::top_level_field("result")]);
        let handler = Arc::new(
            move |ctx: Ctx, args: Args| -> BoxFuture<'static, Result<Reply, RpcError>> {
                let future = handler(ctx, args);
                Box::pin(
                    async move { Ok(Reply::Value(T::top_level_to_column(vec![future.await?])?)) },
                )
            },
        );
        builder.method_with_schema(
            name,
            params,
            MethodKind::Unary {
                result: Some(result),
                handler,
            },
        )
    }
}

/// A void unary method.
impl MethodOutput for () {
    fn register<F, Fut>(
        builder: ProtocolBuilder,
        name: &str,
        params: SchemaRef,
        handler: F,
    ) -> ProtocolBuilder
    where
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Self, RpcError>> + Send + 'static,
    {
        let handler = Arc::new(
            move |ctx: Ctx, args: Args| -> BoxFuture<'static, Result<Reply, RpcError>> {
                let future = handler(ctx, args);
                Box::pin(async move {
                    future.await?;
                    Ok(Reply::Void)
                })
            },
        );
        builder.method_with_schema(
            name,
            params,
            MethodKind::Unary {
                result: None,
                handler,
            },
        )
    }
}

/// The header a stream sends before its first batch: `()` for none, or a
/// `#[derive(ArrowRecord)]` struct (one row, one column per field).
pub trait StreamHeader: Sized + Send + 'static {
    /// The header schema, `None` when the stream has no header.
    fn header_schema() -> Option<SchemaRef>;

    /// The header as its one-row batch of `schema` (from [`StreamHeader::header_schema`]).
    fn into_header(self, schema: Option<&SchemaRef>) -> Result<Option<RecordBatch>, ValueError>;

    /// The header read back from the batch a client received.
    fn from_header(batch: Option<&RecordBatch>) -> Result<Self, ValueError>;
}

/// No header.
impl StreamHeader for () {
    fn header_schema() -> Option<SchemaRef> {
        None
    }

    fn into_header(self, _schema: Option<&SchemaRef>) -> Result<Option<RecordBatch>, ValueError> {
        Ok(None)
    }

    fn from_header(_batch: Option<&RecordBatch>) -> Result<Self, ValueError> {
        Ok(())
    }
}

impl<T: ArrowRecord> StreamHeader for T {
    fn header_schema() -> Option<SchemaRef> {
        Some(T::schema())
    }

    fn into_header(self, schema: Option<&SchemaRef>) -> Result<Option<RecordBatch>, ValueError> {
        let schema = schema.cloned().unwrap_or_else(T::schema);
        T::to_batch_in(schema, vec![self]).map(Some)
    }

    fn from_header(batch: Option<&RecordBatch>) -> Result<Self, ValueError> {
        let missing = || ValueError::MissingField {
            field: "header".into(),
            expected: crate::wire::tokens::schema_text(&T::schema()),
            received: "no header".into(),
        };
        T::from_batch(batch.ok_or_else(missing)?)?
            .into_iter()
            .next()
            .ok_or_else(missing)
    }
}

/// Emits typed rows from a stream turn.
pub struct Rows<'a, R> {
    out: &'a mut Output,
    rows: PhantomData<fn(R)>,
}

impl<'a, R: ArrowRecord> Rows<'a, R> {
    /// Wraps the turn's [`Output`], whose schema is `R`'s.
    pub fn new(out: &'a mut Output) -> Self {
        Rows {
            out,
            rows: PhantomData,
        }
    }

    /// Sends `rows` as one batch (each field one column).
    pub fn emit(&mut self, rows: Vec<R>) -> Result<(), RpcError> {
        self.emit_with_metadata(rows, Vec::new())
    }

    /// Sends `rows` as one batch with application metadata on its IPC message.
    pub fn emit_with_metadata(&mut self, rows: Vec<R>, metadata: Metadata) -> Result<(), RpcError> {
        let batch = R::to_batch_in(self.out.schema().clone(), rows)?;
        self.out.emit_with_metadata(batch, metadata)
    }

    /// Ends the stream after this turn (rows emitted in the same turn are still sent).
    pub fn finish(&mut self) {
        self.out.finish();
    }

    /// Whether [`Rows::finish`] was called in this turn.
    pub fn is_finished(&self) -> bool {
        self.out.is_finished()
    }

    /// The untyped output, for emitting a prepared [`RecordBatch`] of `R`'s schema.
    pub fn output(&mut self) -> &mut Output {
        self.out
    }
}

/// A producer stream's state, typed: each turn emits rows of [`RowProducer::Row`]
/// or finishes. The state is serialized into the stream token between turns.
pub trait RowProducer: Serialize + DeserializeOwned + Send + 'static {
    /// One row of the stream's output.
    type Row: ArrowRecord;

    /// One turn: emit at most one batch of rows, or finish.
    fn produce(
        &mut self,
        out: &mut Rows<'_, Self::Row>,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<(), RpcError>> + Send;

    /// Called when the client cancels; errors are ignored, as upstream does.
    fn on_cancel(&mut self, _ctx: &Ctx) {}
}

/// An exchange stream's state, typed: each turn reads the rows of one input
/// batch and emits one batch of [`RowExchanger::Row`].
pub trait RowExchanger: Serialize + DeserializeOwned + Send + 'static {
    /// One row of each input batch.
    type Input: ArrowRecord;
    /// One row of each output batch.
    type Row: ArrowRecord;

    /// One turn: read `input`, emit one batch of rows.
    fn exchange(
        &mut self,
        input: Vec<Self::Input>,
        out: &mut Rows<'_, Self::Row>,
        ctx: &Ctx,
    ) -> impl Future<Output = Result<(), RpcError>> + Send;

    /// Called when the client cancels; errors are ignored, as upstream does.
    fn on_cancel(&mut self, _ctx: &Ctx) {}
}

/// What a producer-stream method returns: the initial state and, when `H` is
/// not `()`, the header.
pub struct Produce<S, H = ()> {
    state: S,
    header: H,
}

impl<S: RowProducer> Produce<S> {
    /// A producer stream without a header, starting from `state`.
    pub fn new(state: S) -> Self {
        Produce { state, header: () }
    }
}

impl<S: RowProducer, H: ArrowRecord> Produce<S, H> {
    /// A producer stream that sends `header` first, starting from `state`.
    pub fn with_header(state: S, header: H) -> Self {
        Produce { state, header }
    }
}

/// What an exchange-stream method returns: the initial state and, when `H` is
/// not `()`, the header.
pub struct Exchange<S, H = ()> {
    state: S,
    header: H,
}

impl<S: RowExchanger> Exchange<S> {
    /// An exchange stream without a header, starting from `state`.
    pub fn new(state: S) -> Self {
        Exchange { state, header: () }
    }
}

impl<S: RowExchanger, H: ArrowRecord> Exchange<S, H> {
    /// An exchange stream that sends `header` first, starting from `state`.
    pub fn with_header(state: S, header: H) -> Self {
        Exchange { state, header }
    }
}

/// Registers a stream method whose init yields `(state, header)`.
fn register_stream<S, H, F, Fut, T>(
    builder: ProtocolBuilder,
    name: &str,
    params: SchemaRef,
    shape: StreamShape,
    handler: F,
    split: fn(T) -> (S, H),
    turn: Arc<dyn StreamTurn>,
) -> ProtocolBuilder
where
    S: Serialize + Send + 'static,
    H: StreamHeader,
    T: Send + 'static,
    F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, RpcError>> + Send + 'static,
{
    let header = H::header_schema();
    let StreamShape {
        kind,
        output,
        input,
    } = shape;
    let header_schema = header.clone();
    let init = Arc::new(
        move |ctx: Ctx, args: Args| -> BoxFuture<'static, Result<ErasedInit, RpcError>> {
            let future = handler(ctx, args);
            let (output, input, header) = (output.clone(), input.clone(), header_schema.clone());
            Box::pin(async move {
                let (state, header_value) = split(future.await?);
                Ok(ErasedInit {
                    state: encode_state(&state)?,
                    output_schema: output,
                    input_schema: input,
                    header: header_value.into_header(header.as_ref())?,
                })
            })
        },
    );
    builder.method_with_schema(
        name,
        params,
        MethodKind::Stream {
            kind,
            header,
            init,
            turn,
        },
    )
}

struct StreamShape {
    kind: StreamKind,
    output: SchemaRef,
    input: Option<SchemaRef>,
}

impl<S: RowProducer, H: StreamHeader> MethodOutput for Produce<S, H> {
    fn register<F, Fut>(
        builder: ProtocolBuilder,
        name: &str,
        params: SchemaRef,
        handler: F,
    ) -> ProtocolBuilder
    where
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Self, RpcError>> + Send + 'static,
    {
        let shape = StreamShape {
            kind: StreamKind::Producer,
            output: S::Row::schema(),
            input: None,
        };
        register_stream(
            builder,
            name,
            params,
            shape,
            handler,
            |p: Self| (p.state, p.header),
            Arc::new(RowProducerTurn::<S>(PhantomData)),
        )
    }
}

impl<S: RowExchanger, H: StreamHeader> MethodOutput for Exchange<S, H> {
    fn register<F, Fut>(
        builder: ProtocolBuilder,
        name: &str,
        params: SchemaRef,
        handler: F,
    ) -> ProtocolBuilder
    where
        F: Fn(Ctx, Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Self, RpcError>> + Send + 'static,
    {
        let shape = StreamShape {
            kind: StreamKind::Exchange,
            output: S::Row::schema(),
            input: Some(S::Input::schema()),
        };
        register_stream(
            builder,
            name,
            params,
            shape,
            handler,
            |e: Self| (e.state, e.header),
            Arc::new(RowExchangeTurn::<S>(PhantomData)),
        )
    }
}

struct RowProducerTurn<S>(PhantomData<fn() -> S>);
struct RowExchangeTurn<S>(PhantomData<fn() -> S>);

impl<S: RowProducer> StreamTurn for RowProducerTurn<S> {
    fn turn<'a>(
        &'a self,
        state: &'a [u8],
        _input: Option<RecordBatch>,
        out: &'a mut Output,
        ctx: &'a Ctx,
    ) -> BoxFuture<'a, Result<Vec<u8>, RpcError>> {
        Box::pin(async move {
            let mut state: S = decode_state(state)?;
            state.produce(&mut Rows::new(out), ctx).await?;
            encode_state(&state)
        })
    }

    fn cancel(&self, state: &[u8], ctx: &Ctx) {
        if let Ok(mut state) = decode_state::<S>(state) {
            state.on_cancel(ctx);
        }
    }
}

impl<S: RowExchanger> StreamTurn for RowExchangeTurn<S> {
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
            let rows = S::Input::from_batch(&input).map_err(|e| {
                RpcError::new("TypeError", format!("exchange input: {e}"))
                    .with_code(ErrorCode::InvalidArgument)
            })?;
            state.exchange(rows, &mut Rows::new(out), ctx).await?;
            encode_state(&state)
        })
    }

    fn cancel(&self, state: &[u8], ctx: &Ctx) {
        if let Ok(mut state) = decode_state::<S>(state) {
            state.on_cancel(ctx);
        }
    }
}
