//! The protocol `kit-service serve` hosts by default: small enough to read in
//! one screen, and it exercises a unary call, a log, an error, an async wait
//! and a producer.

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use serde::{Deserialize, Serialize};

use crate::rpc::{Ctx, Output, Producer, Protocol, StreamInit};
use crate::wire::{LogLevel, RpcError};

pub const NAME: &str = "kit.Demo.v1";

/// Largest batch one `count` turn builds (8 MiB of int64).
pub const MAX_BATCH_ROWS: i64 = 1 << 20;

/// Counts from `next` up to `end`, one batch of `step` rows per turn.
#[derive(Serialize, Deserialize)]
struct Count {
    next: i64,
    end: i64,
    step: i64,
}

impl Producer for Count {
    async fn produce(&mut self, out: &mut Output, _ctx: &Ctx) -> Result<(), RpcError> {
        let stop = (self.next + self.step).min(self.end);
        let values: Vec<i64> = (self.next..stop).collect();
        let batch = RecordBatch::try_new(
            out.schema().clone(),
            vec![Arc::new(Int64Array::from(values))],
        )?;
        out.emit(batch)?;
        self.next = stop;
        if self.next >= self.end {
            out.finish();
        }
        Ok(())
    }
}

pub fn protocol() -> Protocol {
    Protocol::builder(NAME)
        .version("1.0.0")
        // Waits without blocking the runtime: shows async handlers, and lets
        // tests hold a request in flight across a drain or a timeout.
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
                    Count {
                        next: 0,
                        end: n,
                        step,
                    },
                ))
            },
        )
        .build()
        .expect("the demo protocol is well-formed")
}
