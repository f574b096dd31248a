//! Stream states of `ConformanceService`, one per reference state class in
//! `vgi_rpc/conformance/_types.py`, with the same fields, output rows, logs
//! and error messages.
//!
//! States are serialized into the signed cursor token between turns, so every
//! float field is stored by its bit pattern: JSON cannot carry NaN or the
//! infinities, and `factor=inf` must survive a turn as it does upstream.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use arrow_array::{
    ArrayRef, Float64Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use super::values::declared_schema;
use crate::rpc::{Ctx, Exchanger, Output, Producer};
use crate::wire::{LogLevel, RpcError};

/// `_COUNTER_SCHEMA`: `{index, value}` rows (pyarrow fields default to nullable).
pub static COUNTER_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema("index?: int64, value?: int64"));
/// `_SCALE_INPUT_SCHEMA` / `_SCALE_OUTPUT_SCHEMA` (also the logging exchange's).
pub static SCALE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| declared_schema("value?: float64"));
/// `_ACCUM_OUTPUT_SCHEMA`.
pub static ACCUMULATE_OUTPUT_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema("running_sum?: float64, exchange_count?: int64"));
/// `_ANNOTATED_SCHEMA`.
pub static ANNOTATED_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema("value?: int64"));
/// Output of `produce_tick_metadata`.
pub static TICK_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema("index?: int64, seen?: utf8"));
/// `_INPUT_METADATA_OUTPUT_SCHEMA`.
pub static INPUT_METADATA_OUTPUT_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema("seen?: utf8, keys?: utf8"));
/// `_SESSION_COUNTER_OUTPUT_SCHEMA`.
pub static SESSION_COUNTER_OUTPUT_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema("value?: int64"));
/// `_SESSION_COUNTER_EXCHANGE_INPUT_SCHEMA`.
pub static SESSION_COUNTER_INPUT_SCHEMA: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema("by?: int64"));

/// The application metadata key `produce_tick_metadata` reports.
pub const TICK_METADATA_KEY: &str = "vgi.conformance.tick";
/// `INPUT_METADATA_KEY`: what `exchange_input_metadata` reports the value of.
pub const INPUT_METADATA_KEY: &str = "vgi.conformance.input";
/// `ANNOTATED_EMIT_LABEL`: deliberately non-ASCII.
pub const ANNOTATED_EMIT_LABEL: &str = "\u{00fc}n\u{00ef}code-\u{03bb}";
/// What every sticky-session method reports on a server without sticky sessions.
pub const NO_STICKY_COUNTER: &str = "no sticky counter bound to this request";

/// Rows one generated batch may hold: the reference would try to allocate
/// whatever a caller asks for; here an absurd request is a `MemoryError`.
const MAX_GENERATED_ROWS: i64 = 1 << 26;

/// Stores an `f64` by its bits so NaN and the infinities survive JSON.
mod float_bits {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        u64::deserialize(deserializer).map(f64::from_bits)
    }
}

// ---------------------------------------------------------------------------
// Cancellation observability (`_CancelProbe`): process-wide counters.
// ---------------------------------------------------------------------------

static PRODUCE_CALLS: AtomicU64 = AtomicU64::new(0);
static EXCHANGE_CALLS: AtomicU64 = AtomicU64::new(0);
static ON_CANCEL_CALLS: AtomicU64 = AtomicU64::new(0);

/// `[produce_calls, exchange_calls, on_cancel_calls]`.
pub fn cancel_probe_snapshot() -> [i64; 3] {
    [&PRODUCE_CALLS, &EXCHANGE_CALLS, &ON_CANCEL_CALLS]
        .map(|counter| i64::try_from(counter.load(Ordering::SeqCst)).unwrap_or(i64::MAX))
}

pub fn reset_cancel_probe() {
    for counter in [&PRODUCE_CALLS, &EXCHANGE_CALLS, &ON_CANCEL_CALLS] {
        counter.store(0, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Batch helpers
// ---------------------------------------------------------------------------

fn overflow() -> RpcError {
    RpcError::new("OverflowError", "Python int too large to convert to C long")
}

/// Python's `list(range(start, start + rows))`, refusing absurd sizes.
fn index_range(start: i64, rows: i64) -> Result<Vec<i64>, RpcError> {
    if rows > MAX_GENERATED_ROWS {
        return Err(RpcError::new(
            "MemoryError",
            format!("refusing to generate {rows} rows in one batch (limit {MAX_GENERATED_ROWS})"),
        ));
    }
    let end = start.checked_add(rows.max(0)).ok_or_else(overflow)?;
    Ok((start..end).collect())
}

/// `{"index": indices, "value": [i * 10 for i in indices]}` on `schema`.
fn counter_batch(schema: &SchemaRef, indices: Vec<i64>) -> Result<RecordBatch, RpcError> {
    let values = indices
        .iter()
        .map(|i| i.checked_mul(10).ok_or_else(overflow))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(indices)),
            Arc::new(Int64Array::from(values)),
        ],
    )?)
}

fn single_column(schema: &SchemaRef, column: ArrayRef) -> Result<RecordBatch, RpcError> {
    Ok(RecordBatch::try_new(schema.clone(), vec![column])?)
}

fn float_column(input: &RecordBatch, name: &str) -> Result<Float64Array, RpcError> {
    let column = input.column_by_name(name).ok_or_else(|| {
        RpcError::new(
            "KeyError",
            format!("Field \"{name}\" does not exist in schema"),
        )
    })?;
    let column = if column.data_type() == &DataType::Float64 {
        column.clone()
    } else {
        arrow_cast::cast(column, &DataType::Float64)?
    };
    Ok(column.as_primitive::<Float64Type>().clone())
}

// ---------------------------------------------------------------------------
// Producer states
// ---------------------------------------------------------------------------

/// `CounterState` (and `HeaderProducerState`, which is identical): `count`
/// batches of `{index, value}`.
#[derive(Serialize, Deserialize)]
pub struct CounterState {
    pub count: i64,
    pub current: i64,
}

impl Producer for CounterState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.current >= self.count {
            out.finish();
            return Ok(());
        }
        out.emit(counter_batch(out.schema(), vec![self.current])?)?;
        self.current += 1;
        Ok(())
    }
}

/// `TickMetadataState`: reports the tick's `vgi.conformance.tick` metadata.
#[derive(Serialize, Deserialize)]
pub struct TickMetadataState {
    pub count: i64,
    pub current: i64,
}

impl Producer for TickMetadataState {
    async fn produce(&mut self, out: &mut Output, ctx: &Ctx) -> Result<(), RpcError> {
        let seen = ctx.metadata_value(TICK_METADATA_KEY).unwrap_or_default();
        let batch = RecordBatch::try_new(
            out.schema().clone(),
            vec![
                Arc::new(Int64Array::from(vec![self.current])),
                Arc::new(StringArray::from(vec![seen])),
            ],
        )?;
        out.emit(batch)?;
        self.current += 1;
        if self.current >= self.count {
            out.finish();
        }
        Ok(())
    }
}

/// `EmptyProducerState`: finishes at once.
#[derive(Serialize, Deserialize)]
pub struct EmptyProducerState;

impl Producer for EmptyProducerState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        out.finish();
        Ok(())
    }
}

/// `SingleProducerState`: one batch, then finish.
#[derive(Serialize, Deserialize)]
pub struct SingleProducerState {
    pub emitted: bool,
}

impl Producer for SingleProducerState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.emitted {
            out.finish();
            return Ok(());
        }
        self.emitted = true;
        out.emit(counter_batch(out.schema(), vec![0])?)
    }
}

/// `LargeProducerState`: `batch_count` batches of `rows_per_batch` rows.
#[derive(Serialize, Deserialize)]
pub struct LargeProducerState {
    pub rows_per_batch: i64,
    pub batch_count: i64,
    pub current: i64,
}

impl Producer for LargeProducerState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.current >= self.batch_count {
            out.finish();
            return Ok(());
        }
        let offset = self
            .current
            .checked_mul(self.rows_per_batch)
            .ok_or_else(overflow)?;
        out.emit(counter_batch(
            out.schema(),
            index_range(offset, self.rows_per_batch)?,
        )?)?;
        self.current += 1;
        Ok(())
    }
}

/// `AnnotatedProducerState`: every batch carries distinct custom metadata.
#[derive(Serialize, Deserialize)]
pub struct AnnotatedProducerState {
    pub count: i64,
    pub rows_per_batch: i64,
    pub current: i64,
}

impl Producer for AnnotatedProducerState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.current >= self.count {
            out.finish();
            return Ok(());
        }
        let base = self.current.checked_mul(1_000_000).ok_or_else(overflow)?;
        let values = index_range(base, self.rows_per_batch)?;
        let metadata = vec![
            (
                "conformance.batch_index".to_string(),
                self.current.to_string(),
            ),
            (
                "conformance.batch_total".to_string(),
                self.count.to_string(),
            ),
            (
                "conformance.emit_label".to_string(),
                ANNOTATED_EMIT_LABEL.to_string(),
            ),
        ];
        let batch = single_column(out.schema(), Arc::new(Int64Array::from(values)))?;
        out.emit_with_metadata(batch, metadata)?;
        self.current += 1;
        Ok(())
    }
}

/// `OversizedBatchState`: one batch of `rows_per_batch` rows, then finish.
#[derive(Serialize, Deserialize)]
pub struct OversizedBatchState {
    pub rows_per_batch: i64,
    pub emitted: bool,
}

impl Producer for OversizedBatchState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.emitted {
            out.finish();
            return Ok(());
        }
        out.emit(counter_batch(
            out.schema(),
            index_range(0, self.rows_per_batch)?,
        )?)?;
        self.emitted = true;
        Ok(())
    }
}

/// `LoggingProducerState`: an INFO log before each batch.
#[derive(Serialize, Deserialize)]
pub struct LoggingProducerState {
    pub count: i64,
    pub current: i64,
}

impl Producer for LoggingProducerState {
    async fn produce(&mut self, out: &mut Output, ctx: &Ctx) -> Result<(), RpcError> {
        if self.current >= self.count {
            out.finish();
            return Ok(());
        }
        ctx.log(LogLevel::Info, format!("producing batch {}", self.current));
        out.emit(counter_batch(out.schema(), vec![self.current])?)?;
        self.current += 1;
        Ok(())
    }
}

/// `ErrorAfterNState`: fails after `emit_before_error` batches.
#[derive(Serialize, Deserialize)]
pub struct ErrorAfterNState {
    pub emit_before_error: i64,
    pub current: i64,
}

impl Producer for ErrorAfterNState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.current >= self.emit_before_error {
            return Err(RpcError::new(
                "RuntimeError",
                format!("intentional error after {} batches", self.emit_before_error),
            ));
        }
        out.emit(counter_batch(out.schema(), vec![self.current])?)?;
        self.current += 1;
        Ok(())
    }
}

/// `build_dynamic_schema`: `index`, then optionally `label` and `score`.
pub fn dynamic_schema(include_strings: bool, include_floats: bool) -> SchemaRef {
    let mut fields = vec![Field::new("index", DataType::Int64, true)];
    if include_strings {
        fields.push(Field::new("label", DataType::Utf8, true));
    }
    if include_floats {
        fields.push(Field::new("score", DataType::Float64, true));
    }
    Arc::new(Schema::new(fields))
}

/// `DynamicProducerState`: rows whose columns depend on the flags.
#[derive(Serialize, Deserialize)]
pub struct DynamicProducerState {
    pub count: i64,
    pub include_strings: bool,
    pub include_floats: bool,
    pub current: i64,
}

impl Producer for DynamicProducerState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.current >= self.count {
            out.finish();
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(vec![self.current]))];
        if self.include_strings {
            columns.push(Arc::new(StringArray::from(vec![format!(
                "row-{}",
                self.current
            )])));
        }
        if self.include_floats {
            columns.push(Arc::new(Float64Array::from(vec![
                self.current as f64 * 1.5,
            ])));
        }
        out.emit(RecordBatch::try_new(out.schema().clone(), columns)?)?;
        self.current += 1;
        Ok(())
    }
}

/// `CancellableProducerState`: never finishes; counts produce and cancel calls.
#[derive(Serialize, Deserialize)]
pub struct CancellableProducerState {
    pub current: i64,
}

impl Producer for CancellableProducerState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        PRODUCE_CALLS.fetch_add(1, Ordering::SeqCst);
        out.emit(counter_batch(out.schema(), vec![self.current])?)?;
        self.current += 1;
        Ok(())
    }

    fn on_cancel(&mut self, _ctx: &Ctx) {
        ON_CANCEL_CALLS.fetch_add(1, Ordering::SeqCst);
    }
}

/// `SessionCounterProducerState`: needs a sticky session, which this server
/// never binds, so any turn that would emit fails as upstream does without one.
#[derive(Serialize, Deserialize)]
pub struct SessionCounterProducerState {
    pub count: i64,
    pub current: i64,
}

impl Producer for SessionCounterProducerState {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.current >= self.count {
            out.finish();
            return Ok(());
        }
        Err(RpcError::new("RuntimeError", NO_STICKY_COUNTER))
    }
}

// ---------------------------------------------------------------------------
// Exchange states
// ---------------------------------------------------------------------------

/// `ScaleExchangeState`: multiplies `value` by `factor`.
#[derive(Serialize, Deserialize)]
pub struct ScaleExchangeState {
    #[serde(with = "float_bits")]
    pub factor: f64,
}

impl Exchanger for ScaleExchangeState {
    async fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        let factor = self.factor;
        let scaled: Float64Array = float_column(&input, "value")?.unary(|value| value * factor);
        out.emit(single_column(out.schema(), Arc::new(scaled))?)
    }
}

/// `AccumulatingExchangeState`: running sum and exchange count.
#[derive(Serialize, Deserialize)]
pub struct AccumulatingExchangeState {
    #[serde(with = "float_bits")]
    pub running_sum: f64,
    pub exchange_count: i64,
}

impl Exchanger for AccumulatingExchangeState {
    async fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        let values = float_column(&input, "value")?;
        // `pc.sum` of no valid values is null, and `float += None` is a TypeError upstream.
        let column_sum = values
            .iter()
            .flatten()
            .fold(None, |sum: Option<f64>, value| {
                Some(sum.unwrap_or(0.0) + value)
            });
        let column_sum = column_sum.ok_or_else(|| {
            RpcError::new(
                "TypeError",
                "unsupported operand type(s) for +=: 'float' and 'NoneType'",
            )
        })?;
        self.running_sum += column_sum;
        self.exchange_count += 1;
        let batch = RecordBatch::try_new(
            out.schema().clone(),
            vec![
                Arc::new(Float64Array::from(vec![self.running_sum])),
                Arc::new(Int64Array::from(vec![self.exchange_count])),
            ],
        )?;
        out.emit(batch)
    }
}

/// `LoggingExchangeState`: INFO and DEBUG logs, then echo.
#[derive(Serialize, Deserialize)]
pub struct LoggingExchangeState;

impl Exchanger for LoggingExchangeState {
    async fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        ctx: &Ctx,
    ) -> Result<(), RpcError> {
        ctx.log(LogLevel::Info, "exchange processing");
        ctx.log(LogLevel::Debug, "exchange debug");
        out.emit(input)
    }
}

/// `InputMetadataExchangeState`: reports the input batch's application metadata.
#[derive(Serialize, Deserialize)]
pub struct InputMetadataExchangeState;

impl Exchanger for InputMetadataExchangeState {
    async fn exchange(
        &mut self,
        _input: RecordBatch,
        out: &mut Output,
        ctx: &Ctx,
    ) -> Result<(), RpcError> {
        let seen = ctx.metadata_value(INPUT_METADATA_KEY).unwrap_or_default();
        let mut keys: Vec<&str> = ctx.metadata().iter().map(|(key, _)| key.as_str()).collect();
        keys.sort_unstable();
        let batch = RecordBatch::try_new(
            out.schema().clone(),
            vec![
                Arc::new(StringArray::from(vec![seen])),
                Arc::new(StringArray::from(vec![keys.join(",")])),
            ],
        )?;
        out.emit(batch)
    }
}

/// `ZeroColumnExchangeState`: zero columns in, zero columns out.
#[derive(Serialize, Deserialize)]
pub struct ZeroColumnExchangeState {
    pub call_count: i64,
}

impl Exchanger for ZeroColumnExchangeState {
    async fn exchange(
        &mut self,
        _input: RecordBatch,
        out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        self.call_count += 1;
        let empty = RecordBatch::try_new_with_options(
            Arc::new(Schema::empty()),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(0)),
        )?;
        out.emit(empty)
    }
}

/// `FailOnExchangeNState`: echoes until the `fail_on`-th exchange, which fails.
#[derive(Serialize, Deserialize)]
pub struct FailOnExchangeNState {
    pub fail_on: i64,
    pub exchange_count: i64,
}

impl Exchanger for FailOnExchangeNState {
    async fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        self.exchange_count += 1;
        if self.exchange_count >= self.fail_on {
            return Err(RpcError::new(
                "RuntimeError",
                format!("intentional error on exchange {}", self.exchange_count),
            ));
        }
        out.emit(input)
    }
}

/// `OversizedExchangeState`: `rows_per_batch` `{index, value}` rows per input.
#[derive(Serialize, Deserialize)]
pub struct OversizedExchangeState {
    pub rows_per_batch: i64,
}

impl Exchanger for OversizedExchangeState {
    async fn exchange(
        &mut self,
        _input: RecordBatch,
        out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        out.emit(counter_batch(
            out.schema(),
            index_range(0, self.rows_per_batch)?,
        )?)
    }
}

/// `CancellableExchangeState`: echo; counts exchange and cancel calls.
#[derive(Serialize, Deserialize)]
pub struct CancellableExchangeState;

impl Exchanger for CancellableExchangeState {
    async fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        EXCHANGE_CALLS.fetch_add(1, Ordering::SeqCst);
        out.emit(input)
    }

    fn on_cancel(&mut self, _ctx: &Ctx) {
        ON_CANCEL_CALLS.fetch_add(1, Ordering::SeqCst);
    }
}

/// `SessionCounterExchangeState`: needs a sticky session, which is never bound here.
#[derive(Serialize, Deserialize)]
pub struct SessionCounterExchangeState;

impl Exchanger for SessionCounterExchangeState {
    async fn exchange(
        &mut self,
        _input: RecordBatch,
        _out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        // Upstream checks `ctx.session` before reading the input.
        Err(RpcError::new("RuntimeError", NO_STICKY_COUNTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_state_survives_non_finite_values() {
        let state = ScaleExchangeState {
            factor: f64::INFINITY,
        };
        let json = serde_json::to_vec(&state).unwrap();
        let back: ScaleExchangeState = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.factor, f64::INFINITY);
    }

    #[test]
    fn generated_ranges_follow_python_range() {
        assert_eq!(index_range(5, 3).unwrap(), vec![5, 6, 7]);
        assert!(index_range(0, -2).unwrap().is_empty());
        assert!(index_range(i64::MAX, 2).is_err());
        assert!(index_range(0, MAX_GENERATED_ROWS + 1).is_err());
    }
}
