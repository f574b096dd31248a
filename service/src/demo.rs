//! The protocol `kit-service serve` hosts by default: small enough to read in
//! one screen, and it exercises a unary call, a log, an error, an async wait
//! and a producer. It is written the way a user writes a service: one trait
//! declares the protocol ([`Demo`]), one type implements it ([`DemoService`]),
//! and the schemas are generated from the Rust signatures.
//!
//! ```
//! use kit_service::demo::{Demo, DemoService};
//!
//! let protocol = DemoService.into_protocol();
//! assert_eq!(protocol.name(), "kit.Demo.v1");
//! let add = protocol.method("add").unwrap();
//! assert_eq!(
//!     kit_service::wire::tokens::schema_text(add.params()),
//!     "a: int64, b: int64"
//! );
//! assert_eq!(add.doc(), "Adds two integers; an overflow is a `ValueError`.");
//! ```
//!
//! [`dynamic_protocol`] is the same protocol declared the older way, with
//! schema strings and arguments looked up by name: the same wire (a test pins
//! the typed schemas to it), kept so that `kit-bench --phases demo` can compare
//! the two dispatch paths in one run (`kit-service serve --dynamic-demo`).

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::rpc::{Ctx, Output, Produce, Producer, Protocol, RowProducer, Rows, StreamInit};
use crate::wire::{LogLevel, RpcError};

/// The demo protocol's name.
pub const NAME: &str = "kit.Demo.v1";

/// Largest batch one `count` turn builds (8 MiB of int64).
pub const MAX_BATCH_ROWS: i64 = 1 << 20;

/// The demo protocol, `kit.Demo.v1` version 1.0.0.
#[crate::service(name = "kit.Demo.v1", version = "1.0.0")]
pub trait Demo {
    /// Waits `milliseconds` (0..=60000) without blocking the runtime and
    /// returns it: shows async handlers, and lets tests hold a request in
    /// flight across a drain or a timeout.
    async fn sleep(&self, ctx: &Ctx, milliseconds: i64) -> Result<i64, RpcError>;

    /// Adds two integers; an overflow is a `ValueError`.
    async fn add(&self, ctx: &Ctx, a: i64, b: i64) -> Result<i64, RpcError>;

    /// Says hello to `name`, and logs that it did.
    async fn greet(&self, ctx: &Ctx, name: String) -> Result<String, RpcError>;

    /// Streams the integers `0..n`, `batch_rows` per batch.
    async fn count(&self, ctx: &Ctx, n: i64, batch_rows: i64) -> Result<Produce<Count>, RpcError>;
}

/// The demo's implementation; it holds no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoService;

impl Demo for DemoService {
    async fn sleep(&self, _ctx: &Ctx, milliseconds: i64) -> Result<i64, RpcError> {
        if !(0..=60_000).contains(&milliseconds) {
            return Err(RpcError::value("milliseconds must be within 0..=60000"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(milliseconds as u64)).await;
        Ok(milliseconds)
    }

    async fn add(&self, _ctx: &Ctx, a: i64, b: i64) -> Result<i64, RpcError> {
        a.checked_add(b)
            .ok_or_else(|| RpcError::value(format!("{a} + {b} overflows int64")))
    }

    async fn greet(&self, ctx: &Ctx, name: String) -> Result<String, RpcError> {
        ctx.log(LogLevel::Info, format!("greeting {name}"));
        Ok(format!("hello, {name}"))
    }

    async fn count(&self, _ctx: &Ctx, n: i64, batch_rows: i64) -> Result<Produce<Count>, RpcError> {
        // A caller must not be able to make one turn allocate without bound.
        if n < 0 || !(1..=MAX_BATCH_ROWS).contains(&batch_rows) {
            return Err(RpcError::value(format!(
                "n must be >= 0 and batch_rows within 1..={MAX_BATCH_ROWS}"
            )));
        }
        Ok(Produce::new(Count {
            next: 0,
            end: n,
            step: batch_rows,
        }))
    }
}

/// One row of `count`'s output: `value: int64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, crate::ArrowRecord)]
pub struct CountRow {
    /// The number counted.
    pub value: i64,
}

/// `count`'s state between turns: counts from `next` up to `end`, one batch of
/// `step` rows per turn.
#[derive(Debug, Serialize, Deserialize)]
pub struct Count {
    next: i64,
    end: i64,
    step: i64,
}

impl RowProducer for Count {
    type Row = CountRow;

    async fn produce(&mut self, out: &mut Rows<'_, CountRow>, _ctx: &Ctx) -> Result<(), RpcError> {
        let stop = (self.next + self.step).min(self.end);
        out.emit((self.next..stop).map(|value| CountRow { value }).collect())?;
        self.next = stop;
        if self.next >= self.end {
            out.finish();
        }
        Ok(())
    }
}

/// The demo protocol, served by [`DemoService`].
pub fn protocol() -> Protocol {
    DemoService.into_protocol()
}

/// `count`'s state in [`dynamic_protocol`]: builds its batches by hand, as
/// the demo did before it was typed.
#[derive(Debug, Serialize, Deserialize)]
struct DynamicCount(Count);

impl Producer for DynamicCount {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        let count = &mut self.0;
        let stop = (count.next + count.step).min(count.end);
        let values: Vec<i64> = (count.next..stop).collect();
        let batch = RecordBatch::try_new(
            out.schema().clone(),
            vec![Arc::new(Int64Array::from(values))],
        )?;
        out.emit(batch)?;
        count.next = stop;
        if count.next >= count.end {
            out.finish();
        }
        Ok(())
    }
}

/// The demo protocol declared with schema strings, arguments looked up by
/// name (the demo as it was before [`Demo`]): the same name, version, methods
/// and wire schemas as [`protocol`], and the same answers.
///
/// Kept as the baseline `kit-bench --phases demo` measures the typed dispatch
/// against (`kit-service serve --dynamic-demo` hosts it), and as the string
/// declarations the typed schemas are tested to match.
///
/// ```
/// use kit_service::reflection::protocol_hash;
///
/// let (typed, strings) = (kit_service::demo::protocol(), kit_service::demo::dynamic_protocol());
/// assert_eq!(protocol_hash(&typed), protocol_hash(&strings));
/// ```
pub fn dynamic_protocol() -> Protocol {
    Protocol::builder(NAME)
        .version("1.0.0")
        .unary(
            "sleep",
            "milliseconds: int64",
            "result: int64",
            |_ctx, args| async move {
                let milliseconds: i64 = args.get("milliseconds")?;
                if !(0..=60_000).contains(&milliseconds) {
                    return Err(RpcError::value("milliseconds must be within 0..=60000"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(milliseconds as u64)).await;
                Ok(milliseconds)
            },
        )
        .unary(
            "add",
            "a: int64, b: int64",
            "result: int64",
            |_ctx, args| async move {
                let (a, b): (i64, i64) = (args.get("a")?, args.get("b")?);
                a.checked_add(b)
                    .ok_or_else(|| RpcError::value(format!("{a} + {b} overflows int64")))
            },
        )
        .unary(
            "greet",
            "name: utf8",
            "result: utf8",
            |ctx, args| async move {
                let name: String = args.get("name")?;
                ctx.log(LogLevel::Info, format!("greeting {name}"));
                Ok(format!("hello, {name}"))
            },
        )
        .producer(
            "count",
            "n: int64, batch_rows: int64",
            "",
            |_ctx, args| async move {
                let (n, step): (i64, i64) = (args.get("n")?, args.get("batch_rows")?);
                // A caller must not be able to make one turn allocate without bound.
                if n < 0 || !(1..=MAX_BATCH_ROWS).contains(&step) {
                    return Err(RpcError::value(format!(
                        "n must be >= 0 and batch_rows within 1..={MAX_BATCH_ROWS}"
                    )));
                }
                let schema = Arc::new(Schema::new(vec![Field::new(
                    "value",
                    DataType::Int64,
                    false,
                )]));
                Ok(StreamInit::new(
                    schema,
                    DynamicCount(Count {
                        next: 0,
                        end: n,
                        step,
                    }),
                ))
            },
        )
        .build()
        .expect("the string-declared demo protocol is well-formed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reflection::protocol_hash;
    use crate::rpc::ArrowRecord;
    use crate::wire::ipc::schema_message;

    #[test]
    fn typed_demo_keeps_the_string_declared_wire() {
        let (typed, strings) = (protocol(), dynamic_protocol());
        assert_eq!(typed.version(), strings.version());
        assert_eq!(protocol_hash(&typed), protocol_hash(&strings));
        let names = |p: &Protocol| {
            p.methods()
                .map(|m| m.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&typed), names(&strings));
        for (typed, string) in typed.methods().zip(strings.methods()) {
            // Byte-equal IPC schema messages: reflection serves exactly these.
            assert_eq!(
                schema_message(typed.params()),
                schema_message(string.params()),
                "{}",
                typed.name()
            );
            assert_eq!(typed.result(), string.result(), "{}", typed.name());
            assert_eq!(
                typed.result().map(|s| schema_message(s)),
                string.result().map(|s| schema_message(s))
            );
            assert_eq!(typed.header(), string.header(), "{}", typed.name());
            assert_eq!(typed.stream_kind(), string.stream_kind());
        }
        assert_eq!(
            CountRow::schema().as_ref(),
            &Schema::new(vec![Field::new("value", DataType::Int64, false)])
        );
    }
}
