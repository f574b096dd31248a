//! `vgi-rpc-peer --http PORT`: the crates.io `vgi-rpc` 0.32 HTTP transport
//! serving the `ConformanceService` methods kit-bench drives
//! (`echo_string`, `oversized_unary`, `produce_large_batches`), with the crate's defaults
//! (response compression negotiated from `Accept-Encoding`, access log off).
//! Same URL shape as kit-service and the Python reference:
//! `/ConformanceService/{method}[/init|/exchange]`, `GET /health`.

use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use vgi_rpc::http::{serve_with_shutdown, HttpState};
use vgi_rpc::stream::{OutputCollector, ProducerState};
use vgi_rpc::{service, CallContext, Result, RpcServer, StreamState, VgiArrow};

struct ConformanceService;

/// `batch_count` batches of `rows_per_batch` rows of (index, index * 10),
/// like the Python reference's `produce_large_batches`.
#[derive(StreamState, Serialize, Deserialize)]
struct LargeBatches {
    rows_per_batch: i64,
    batch_count: i64,
    current: i64,
}

impl ProducerState for LargeBatches {
    fn produce(&mut self, out: &mut OutputCollector, _ctx: &CallContext) -> Result<()> {
        if self.current >= self.batch_count {
            out.finish();
            return Ok(());
        }
        let start = self.current * self.rows_per_batch;
        let index: Vec<i64> = (start..start + self.rows_per_batch).collect();
        let value: Vec<i64> = index.iter().map(|i| i * 10).collect();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(index)),
            Arc::new(Int64Array::from(value)),
        ];
        out.emit(RecordBatch::try_new(out.schema(), columns)?)?;
        self.current += 1;
        Ok(())
    }
    fn encode_state(&self) -> Result<Vec<u8>> {
        vgi_rpc::stream_codec::StreamStateCodec::encode(self)
    }
}

fn counter_schema(_request: &vgi_rpc::server::Request) -> Result<SchemaRef> {
    Ok(Arc::new(Schema::new(vec![
        Field::new("index", DataType::Int64, true),
        Field::new("value", DataType::Int64, true),
    ])))
}

#[service]
impl ConformanceService {
    /// Return the string unchanged.
    #[unary]
    fn echo_string(&self, value: String) -> Result<String> {
        Ok(value)
    }

    /// A `target_bytes`-byte binary result of zeros (the large unary result).
    #[unary]
    fn oversized_unary(&self, target_bytes: i64) -> Result<vgi_rpc::Bytes> {
        Ok(vgi_rpc::Bytes(vec![0u8; target_bytes.max(0) as usize]))
    }

    /// Stream `batch_count` batches of `rows_per_batch` rows.
    #[producer(state = LargeBatches, dynamic, schema_fn = counter_schema)]
    fn produce_large_batches(&self, rows_per_batch: i64, batch_count: i64) -> Result<LargeBatches> {
        Ok(LargeBatches {
            rows_per_batch,
            batch_count,
            current: 0,
        })
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = match (args.next().as_deref(), args.next()) {
        (Some("--http"), Some(port)) => port.parse().expect("PORT is a number"),
        _ => {
            eprintln!("usage: vgi-rpc-peer --http PORT");
            std::process::exit(64);
        }
    };
    let mut server = RpcServer::builder()
        .server_id("vgi-rpc-peer")
        .protocol_name("ConformanceService")
        .server_version("0.1.0")
        .build();
    ConformanceService::register_with(&mut server, Arc::new(ConformanceService));
    let state = HttpState::builder()
        .server(Arc::new(server))
        // A fixed key: this binary only ever serves a benchmark on loopback.
        .token_key(&[0x5a; 32])
        .build();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    serve_with_shutdown(state, listener).await
}
