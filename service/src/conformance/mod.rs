//! The conformance protocols `kit-service serve --conformance` hosts:
//! `ConformanceService` (protocol_version 2.0.0) and `conformance.Secondary.v1`.
//!
//! They are ports of the Python reference in `vgi_rpc.conformance` (0.52.2),
//! so the upstream `vgi-rpc-test` suites can check this server against the
//! same expectations as every other vgi-rpc implementation. Every method is
//! declared with exactly the reference's parameter, result and header schemas
//! (the protocol hashes are pinned in the tests below), and behaves as the
//! reference does on a server without external storage and without sticky
//! sessions: values, logs, error types and messages included.
//!
//! Dataclass parameters and results travel as `binary` cells holding a nested
//! IPC stream; echo methods return those bytes untouched.

mod auth_reason;
mod dataclasses;
mod identity;
mod secondary;
mod states;
mod values;

use std::future::{Ready, ready};

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};

use crate::wire::tokens::parse_schema;
use serde_json::{Map, Value};

use crate::rpc::{Args, Bytes, Ctx, List, Protocol, StreamInit};
use crate::wire::{LogLevel, RpcError};

use states::*;
use values::{CONFORMANCE_HEADER_SCHEMA, RICH_HEADER_SCHEMA, python_float_repr};

pub const NAME: &str = "ConformanceService";
pub const PROTOCOL_VERSION: &str = "2.0.0";
pub use auth_reason::{AuthReasonWorker, REASON_HEADER as AUTH_REASON_HEADER};
pub use identity::{HeaderAuthenticator, IdentityWorker, header_authenticator};
pub use secondary::NAME as SECONDARY_NAME;

/// Largest `oversized_unary` payload; the reference would try any size.
const MAX_OVERSIZED_BYTES: i64 = 1 << 30;

/// Both conformance protocols, primary first (registration order is contract).
pub fn protocols() -> Vec<Protocol> {
    vec![conformance_service(), secondary::protocol()]
}

/// A unary handler returning one parameter's column unchanged.
fn echo(
    parameter: &'static str,
) -> impl Fn(Ctx, Args) -> Ready<Result<ArrayRef, RpcError>> + Send + Sync + 'static {
    move |_ctx, args| ready(args.column(parameter))
}

fn runtime_error<T>(message: &str) -> Result<T, RpcError> {
    Err(RpcError::new("RuntimeError", message))
}

pub fn conformance_service() -> Protocol {
    let rich_header = RICH_HEADER_SCHEMA;
    let conformance_header = CONFORMANCE_HEADER_SCHEMA;
    Protocol::builder(NAME)
        .version(PROTOCOL_VERSION)
        // ------------------------------------------------------------------
        // Unary: scalar echo, external storage, void
        // ------------------------------------------------------------------
        .unary("echo_string", "value: utf8", "result: utf8", echo("value"))
        .unary("echo_bytes", "data: binary", "result: binary", echo("data"))
        .unary("oversized_unary", "target_bytes: int64", "result: binary", |_ctx, args| async move {
            let target_bytes: i64 = args.get("target_bytes")?;
            if target_bytes < 0 {
                return Err(RpcError::value("target_bytes must be non-negative"));
            }
            if target_bytes > MAX_OVERSIZED_BYTES {
                return Err(RpcError::new("MemoryError", format!("refusing to allocate {target_bytes} bytes (limit {MAX_OVERSIZED_BYTES})")));
            }
            Ok(Bytes(vec![0u8; target_bytes as usize]))
        })
        .unary("published_string", "value: utf8, include_sha256: bool", "result: utf8", |ctx, args| async move {
            let value: String = args.get("value")?;
            let include_sha256: bool = args.get("include_sha256")?;
            let schema = Arc::new(parse_schema("result: utf8").expect("static schema"));
            let reference = ctx
                .publish_cached(&value, include_sha256, || {
                    Ok(RecordBatch::try_new(schema, vec![Arc::new(arrow_array::StringArray::from(vec![value.clone()]))])?)
                })
                .await
                .map_err(|_| RpcError::new("RuntimeError", "published_string requires external storage"))?;
            Ok(reference)
        })
        .unary("echo_int", "value: int64", "result: int64", echo("value"))
        .unary("echo_float", "value: float64", "result: float64", echo("value"))
        .unary("echo_bool", "value: bool", "result: bool", echo("value"))
        .unary("void_noop", "", "", |_ctx, _args| async move { Ok(()) })
        .unary("void_with_param", "value: int64", "", |_ctx, _args| async move { Ok(()) })
        // ------------------------------------------------------------------
        // Unary: complex types, optionals, dataclasses
        // ------------------------------------------------------------------
        .unary("echo_enum", "status: dictionary<index:int16,value:utf8>", "result: dictionary<index:int16,value:utf8>", echo("status"))
        .unary("echo_list", "values: list<item?:utf8>", "result: list<item?:utf8>", echo("values"))
        .unary("echo_dict", "mapping: map<key:utf8,value?:int64>", "result: map<key:utf8,value?:int64>", echo("mapping"))
        .unary("echo_nested_list", "matrix: list<item?:list<item?:int64>>", "result: list<item?:list<item?:int64>>", echo("matrix"))
        .unary("echo_optional_string", "value?: utf8", "result?: utf8", echo("value"))
        .unary("echo_optional_int", "value?: int64", "result?: int64", echo("value"))
        .unary("echo_optional_point", "point?: binary", "result?: binary", echo("point"))
        .unary("echo_annotated_optional_int", "value?: int32", "result?: int32", echo("value"))
        .unary("echo_outer_optional_non_null", "value: int32", "result: int32", echo("value"))
        .unary("echo_point", "point: binary", "result: binary", echo("point"))
        .unary("echo_all_types", "data: binary", "result: binary", echo("data"))
        .unary("echo_bounding_box", "box: binary", "result: binary", echo("box"))
        .unary("inspect_point", "point: binary", "result: utf8", |_ctx, args| async move {
            let point: Bytes = args.get("point")?;
            dataclasses::inspect_point(&point.0)
        })
        // The dataclass parameters: strict, as the reference deserializes them.
        .record_param("echo_point", "point", dataclasses::POINT_SCHEMA)
        .record_param("echo_optional_point", "point", dataclasses::POINT_SCHEMA)
        .record_param("inspect_point", "point", dataclasses::POINT_SCHEMA)
        .record_param("echo_bounding_box", "box", dataclasses::BOUNDING_BOX_SCHEMA)
        .record_param("echo_all_types", "data", dataclasses::ALL_TYPES_SCHEMA)
        // ------------------------------------------------------------------
        // Unary: annotated and wide Arrow types
        // ------------------------------------------------------------------
        .unary("echo_int32", "value: int32", "result: int32", echo("value"))
        .unary("echo_float32", "value: float32", "result: float32", echo("value"))
        .unary("echo_int8", "value: int8", "result: int8", echo("value"))
        .unary("echo_int16", "value: int16", "result: int16", echo("value"))
        .unary("echo_uint8", "value: uint8", "result: uint8", echo("value"))
        .unary("echo_uint16", "value: uint16", "result: uint16", echo("value"))
        .unary("echo_uint32", "value: uint32", "result: uint32", echo("value"))
        .unary("echo_uint64", "value: uint64", "result: uint64", echo("value"))
        .unary("echo_date", "value: date32", "result: date32", echo("value"))
        .unary("echo_timestamp", "value: timestamp(us)", "result: timestamp(us)", echo("value"))
        .unary("echo_timestamp_utc", "value: timestamp(us,tz=UTC)", "result: timestamp(us,tz=UTC)", echo("value"))
        .unary("echo_time", "value: time64(us)", "result: time64(us)", echo("value"))
        .unary("echo_duration", "value: duration(us)", "result: duration(us)", echo("value"))
        .unary("echo_decimal", "value: decimal128(20,4)", "result: decimal128(20,4)", echo("value"))
        .unary("echo_large_string", "value: large_utf8", "result: large_utf8", echo("value"))
        .unary("echo_large_binary", "value: large_binary", "result: large_binary", echo("value"))
        .unary("echo_fixed_binary", "value: fixed_size_binary(8)", "result: fixed_size_binary(8)", echo("value"))
        .unary("echo_wide_types", "data: binary", "result: binary", echo("data"))
        .unary("echo_container_wide_types", "data: binary", "result: binary", echo("data"))
        .unary("echo_embedded_arrow", "data: binary", "result: binary", echo("data"))
        .unary("echo_deep_nested", "data: binary", "result: binary", echo("data"))
        .enum_param("echo_enum", "status", "Status", &values::STATUS_MEMBERS)
        .record_param("echo_wide_types", "data", dataclasses::WIDE_TYPES_SCHEMA)
        .record_param("echo_container_wide_types", "data", dataclasses::CONTAINER_WIDE_TYPES_SCHEMA)
        .record_param("echo_embedded_arrow", "data", dataclasses::EMBEDDED_ARROW_SCHEMA)
        .record_param("echo_deep_nested", "data", dataclasses::DEEP_NESTED_SCHEMA)
        .unary(
            "pack_nested_containers",
            "statuses: list<item?:dictionary<index:int16,value:utf8>>, points: list<item?:struct<x:float64,y:float64>>, \
             status_by_name: map<key:utf8,value?:dictionary<index:int16,value:utf8>>",
            "result: binary",
            |_ctx, args| async move {
                let packed = dataclasses::pack_nested_containers(
                    args.column("statuses")?.as_ref(),
                    args.column("points")?.as_ref(),
                    args.column("status_by_name")?.as_ref(),
                )?;
                Ok(Bytes(packed))
            },
        )
        .unary(
            "echo_status_list",
            "statuses: list<item?:dictionary<index:int16,value:utf8>>",
            "result: list<item?:dictionary<index:int16,value:utf8>>",
            |_ctx, args| async move {
                let statuses = args.column("statuses")?;
                dataclasses::check_status_list(statuses.as_ref())?;
                Ok(statuses)
            },
        )
        // Enum parameters: members checked while decoding, as the reference does.
        .enum_param("echo_status_list", "statuses", "Status", &values::STATUS_MEMBERS)
        .enum_param("pack_nested_containers", "statuses", "Status", &values::STATUS_MEMBERS)
        .enum_param("pack_nested_containers", "status_by_name", "Status", &values::STATUS_MEMBERS)
        .unary("echo_dict_encoded_string", "value: dictionary<index:int16,value:utf8>", "result: dictionary<index:int16,value:utf8>", echo("value"))
        // ------------------------------------------------------------------
        // Unary: multi-param, errors, logging
        // ------------------------------------------------------------------
        .unary("add_floats", "a: float64, b: float64", "result: float64", |_ctx, args| async move {
            Ok(args.get::<f64>("a")? + args.get::<f64>("b")?)
        })
        .unary("concatenate", "prefix: utf8, suffix: utf8, separator: utf8", "result: utf8", |_ctx, args| async move {
            let (prefix, suffix, separator): (String, String, String) = (args.get("prefix")?, args.get("suffix")?, args.get("separator")?);
            Ok(format!("{prefix}{separator}{suffix}"))
        })
        .unary("with_defaults", "required: int64, optional_str: utf8, optional_int: int64", "result: utf8", |_ctx, args| async move {
            let (required, optional_str, optional_int): (i64, String, i64) =
                (args.get("required")?, args.get("optional_str")?, args.get("optional_int")?);
            Ok(format!("required={required}, optional_str={optional_str}, optional_int={optional_int}"))
        })
        .unary("raise_value_error", "message: utf8", "result: utf8", |_ctx, args| async move {
            Err::<String, _>(RpcError::new("ValueError", args.get::<String>("message")?))
        })
        .unary("raise_runtime_error", "message: utf8", "result: utf8", |_ctx, args| async move {
            Err::<String, _>(RpcError::new("RuntimeError", args.get::<String>("message")?))
        })
        .unary("raise_type_error", "message: utf8", "result: utf8", |_ctx, args| async move {
            Err::<String, _>(RpcError::new("TypeError", args.get::<String>("message")?))
        })
        .unary("echo_with_info_log", "value: utf8", "result: utf8", |ctx, args| async move {
            let value: String = args.get("value")?;
            ctx.log(LogLevel::Info, format!("info: {value}"));
            Ok(value)
        })
        .unary("echo_with_multi_logs", "value: utf8", "result: utf8", |ctx, args| async move {
            let value: String = args.get("value")?;
            ctx.log(LogLevel::Debug, format!("debug: {value}"));
            ctx.log(LogLevel::Info, format!("info: {value}"));
            ctx.log(LogLevel::Warn, format!("warn: {value}"));
            Ok(value)
        })
        .unary("echo_with_log_extras", "value: utf8", "result: utf8", |ctx, args| async move {
            let value: String = args.get("value")?;
            let mut extra = Map::new();
            extra.insert("source".into(), Value::String("conformance".into()));
            extra.insert("detail".into(), Value::String(value.clone()));
            ctx.log_with(LogLevel::Info, format!("info: {value}"), extra);
            Ok(value)
        })
        .unary("echo_with_all_log_levels", "value: utf8", "result: utf8", |ctx, args| async move {
            let value: String = args.get("value")?;
            for level in [LogLevel::Trace, LogLevel::Debug, LogLevel::Info, LogLevel::Warn, LogLevel::Error] {
                ctx.log(level, format!("{}: {value}", level.as_str().to_lowercase()));
            }
            Ok(value)
        })
        // ------------------------------------------------------------------
        // Producer streams
        // ------------------------------------------------------------------
        .producer("produce_n", "count: int64", "", |_ctx, args| async move {
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), CounterState { count: args.get("count")?, current: 0 }))
        })
        .producer("produce_tick_metadata", "count: int64", "", |_ctx, args| async move {
            Ok(StreamInit::new(TICK_SCHEMA.clone(), TickMetadataState { count: args.get("count")?, current: 0 }))
        })
        .producer("produce_empty", "", "", |_ctx, _args| async move { Ok(StreamInit::new(COUNTER_SCHEMA.clone(), EmptyProducerState)) })
        .producer("produce_single", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), SingleProducerState { emitted: false }))
        })
        .producer("produce_large_batches", "rows_per_batch: int64, batch_count: int64", "", |_ctx, args| async move {
            let state = LargeProducerState { rows_per_batch: args.get("rows_per_batch")?, batch_count: args.get("batch_count")?, current: 0 };
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), state))
        })
        .producer("produce_annotated_batches", "count: int64, rows_per_batch: int64", "", |_ctx, args| async move {
            let state = AnnotatedProducerState { count: args.get("count")?, rows_per_batch: args.get("rows_per_batch")?, current: 0 };
            Ok(StreamInit::new(ANNOTATED_SCHEMA.clone(), state))
        })
        .producer("produce_with_logs", "count: int64", "", |_ctx, args| async move {
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), LoggingProducerState { count: args.get("count")?, current: 0 }))
        })
        .producer("produce_error_mid_stream", "emit_before_error: int64", "", |_ctx, args| async move {
            let state = ErrorAfterNState { emit_before_error: args.get("emit_before_error")?, current: 0 };
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), state))
        })
        .producer("produce_error_on_init", "", "", |_ctx, _args| async move {
            runtime_error::<StreamInit<CounterState>>("intentional init error")
        })
        .producer("produce_oversized_batch", "rows_per_batch: int64", "", |_ctx, args| async move {
            let state = OversizedBatchState { rows_per_batch: args.get("rows_per_batch")?, emitted: false };
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), state))
        })
        .producer("produce_with_header", "count: int64", conformance_header, |_ctx, args| async move {
            let count: i64 = args.get("count")?;
            let header = dataclasses::conformance_header(count, format!("producing {count} batches"))?;
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), CounterState { count, current: 0 }).with_header(header))
        })
        .producer("produce_with_header_and_logs", "count: int64", conformance_header, |ctx, args| async move {
            let count: i64 = args.get("count")?;
            ctx.log(LogLevel::Info, "stream init log");
            let header = dataclasses::conformance_header(count, format!("producing {count} with logs"))?;
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), CounterState { count, current: 0 }).with_header(header))
        })
        // ------------------------------------------------------------------
        // Exchange streams
        // ------------------------------------------------------------------
        .exchange("exchange_scale", "factor: float64", "", |_ctx, args| async move {
            let state = ScaleExchangeState { factor: args.get("factor")? };
            Ok(StreamInit::new(SCALE_SCHEMA.clone(), state).with_input(SCALE_SCHEMA.clone()))
        })
        .exchange("exchange_accumulate", "", "", |_ctx, _args| async move {
            let state = AccumulatingExchangeState { running_sum: 0.0, exchange_count: 0 };
            Ok(StreamInit::new(ACCUMULATE_OUTPUT_SCHEMA.clone(), state).with_input(SCALE_SCHEMA.clone()))
        })
        .exchange("exchange_with_logs", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(SCALE_SCHEMA.clone(), LoggingExchangeState).with_input(SCALE_SCHEMA.clone()))
        })
        .exchange("exchange_error_on_nth", "fail_on: int64", "", |_ctx, args| async move {
            let state = FailOnExchangeNState { fail_on: args.get("fail_on")?, exchange_count: 0 };
            Ok(StreamInit::new(SCALE_SCHEMA.clone(), state).with_input(SCALE_SCHEMA.clone()))
        })
        .exchange("exchange_zero_columns", "", "", |_ctx, _args| async move {
            let empty = crate::wire::empty_schema();
            Ok(StreamInit::new(empty.clone(), ZeroColumnExchangeState { call_count: 0 }).with_input(empty))
        })
        .exchange("exchange_input_metadata", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(INPUT_METADATA_OUTPUT_SCHEMA.clone(), InputMetadataExchangeState).with_input(SCALE_SCHEMA.clone()))
        })
        .exchange("exchange_error_on_init", "", "", |_ctx, _args| async move {
            runtime_error::<StreamInit<ScaleExchangeState>>("intentional exchange init error")
        })
        .exchange("exchange_oversized", "rows_per_batch: int64", "", |_ctx, args| async move {
            let state = OversizedExchangeState { rows_per_batch: args.get("rows_per_batch")? };
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), state).with_input(SCALE_SCHEMA.clone()))
        })
        .exchange("exchange_with_header", "factor: float64", conformance_header, |_ctx, args| async move {
            let factor: f64 = args.get("factor")?;
            let header = dataclasses::conformance_header(0, format!("scale by {}", python_float_repr(factor)))?;
            let init = StreamInit::new(SCALE_SCHEMA.clone(), ScaleExchangeState { factor });
            Ok(init.with_input(SCALE_SCHEMA.clone()).with_header(header))
        })
        // ------------------------------------------------------------------
        // Cancellation
        // ------------------------------------------------------------------
        .producer("cancellable_producer", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), CancellableProducerState { current: 0 }))
        })
        .exchange("cancellable_exchange", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(SCALE_SCHEMA.clone(), CancellableExchangeState).with_input(SCALE_SCHEMA.clone()))
        })
        .unary("cancel_probe_counters", "", "result: list<item?:int64>", |_ctx, _args| async move {
            Ok(List(cancel_probe_snapshot().to_vec()))
        })
        .unary("reset_cancel_probe", "", "", |_ctx, _args| async move {
            reset_cancel_probe();
            Ok(())
        })
        // ------------------------------------------------------------------
        // Dynamic streams with rich headers
        // ------------------------------------------------------------------
        .producer("produce_with_rich_header", "seed: int64, count: int64", rich_header, |_ctx, args| async move {
            let (seed, count): (i64, i64) = (args.get("seed")?, args.get("count")?);
            Ok(StreamInit::new(COUNTER_SCHEMA.clone(), CounterState { count, current: 0 }).with_header(dataclasses::rich_header(seed)?))
        })
        .producer(
            "produce_dynamic_schema",
            "seed: int64, count: int64, include_strings: bool, include_floats: bool",
            rich_header,
            |_ctx, args| async move {
                let seed: i64 = args.get("seed")?;
                let state = DynamicProducerState {
                    count: args.get("count")?,
                    include_strings: args.get("include_strings")?,
                    include_floats: args.get("include_floats")?,
                    current: 0,
                };
                let schema = dynamic_schema(state.include_strings, state.include_floats);
                Ok(StreamInit::new(schema, state).with_header(dataclasses::rich_header(seed)?))
            },
        )
        .exchange("exchange_cast_compatible", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(SCALE_SCHEMA.clone(), ScaleExchangeState { factor: 1.0 }).with_input(SCALE_SCHEMA.clone()))
        })
        .exchange("exchange_with_rich_header", "seed: int64, factor: float64", rich_header, |_ctx, args| async move {
            let (seed, factor): (i64, f64) = (args.get("seed")?, args.get("factor")?);
            let init = StreamInit::new(SCALE_SCHEMA.clone(), ScaleExchangeState { factor });
            Ok(init.with_input(SCALE_SCHEMA.clone()).with_header(dataclasses::rich_header(seed)?))
        })
        // ------------------------------------------------------------------
        // Sticky sessions: not supported here, so these fail exactly as the
        // reference does on a transport without sticky sessions, and the
        // capability-gated sticky tests skip.
        // ------------------------------------------------------------------
        .unary("open_counter", "initial: int64", "result: int64", |_ctx, _args| async move {
            runtime_error::<i64>("sticky sessions not available on this transport")
        })
        .unary("increment_counter", "by: int64", "result: int64", |_ctx, _args| async move { runtime_error::<i64>(NO_STICKY_COUNTER) })
        .unary("close_counter", "", "result: int64", |_ctx, _args| async move { runtime_error::<i64>(NO_STICKY_COUNTER) })
        .producer("stream_session_counter", "count: int64", "", |_ctx, args| async move {
            let state = SessionCounterProducerState { count: args.get("count")?, current: 0 };
            Ok(StreamInit::new(SESSION_COUNTER_OUTPUT_SCHEMA.clone(), state))
        })
        .exchange("exchange_session_counter", "", "", |_ctx, _args| async move {
            let init = StreamInit::new(SESSION_COUNTER_OUTPUT_SCHEMA.clone(), SessionCounterExchangeState);
            Ok(init.with_input(SESSION_COUNTER_INPUT_SCHEMA.clone()))
        })
        .build()
        .unwrap_or_else(|errors| panic!("ConformanceService is well-formed: {errors:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reflection::protocol_hash;

    #[test]
    fn protocol_hashes_match_upstream() {
        let protocols = protocols();
        assert_eq!(protocols[0].name(), NAME);
        assert_eq!(protocols[0].version(), Some(PROTOCOL_VERSION));
        assert_eq!(
            protocol_hash(&protocols[0]),
            "05479410c96f34410a2b10a4f6a49d59dcfd9d6d1d45ce9a9807d060a3bd6014"
        );
        assert_eq!(protocols[1].name(), SECONDARY_NAME);
        assert_eq!(protocols[1].version(), None);
        assert_eq!(
            protocol_hash(&protocols[1]),
            "58557cf1611546ad22d1c379bc3ce1b04166082f78375e9fc959f0086347eab6"
        );
    }

    #[test]
    fn every_reference_method_is_declared() {
        assert_eq!(conformance_service().methods().count(), 90);
    }
}
