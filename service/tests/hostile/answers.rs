//! Findings: a call's failure was answered differently depending on which
//! path it took.
//! - When storing a large stream batch failed (the externalized-bytes cap, or
//!   storage down), the method's logs were lost and the error stream had the
//!   empty schema, where a unary call kept both.
//! - A header that did not conform lost the logs written before it.
//! - Error answers ignored the response limit that results keep to: logs
//!   followed by a failure went out whole (on Lambda: over the payload cap).
//! - A pointer the server had no room to fetch was 503 with `Retry-After` on a
//!   unary call and 200 on an exchange turn, so a client retrying on 503 did
//!   not.

use std::sync::Arc;

use arrow_array::{Float64Array, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use kit_service::wire;
use kit_service::{Ctx, LogLevel, Output, Producer, Protocol, RpcError, StreamInit};

use crate::support::{
    Posted, Reply, call_metadata, counting_server, in_process_serving, ipc_body, post_arrow,
};

const NAME: &str = "Answers";
const VERSION: &str = "1.0.0";

fn value_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Float64,
        false,
    )]))
}

fn value(v: f64) -> RecordBatch {
    RecordBatch::try_new(value_schema(), vec![Arc::new(Float64Array::from(vec![v]))]).unwrap()
}

fn rows_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

fn rows(count: i64) -> RecordBatch {
    RecordBatch::try_new(
        rows_schema(),
        vec![Arc::new(Int64Array::from_iter_values(0..count))],
    )
    .unwrap()
}

/// Emits one small batch per turn, except turn `big_at`, which logs and
/// emits 10,000 rows (80 kB, over the tests' externalization threshold).
#[derive(serde::Serialize, serde::Deserialize)]
struct BigAt {
    turn: i64,
    big_at: i64,
}

impl Producer for BigAt {
    async fn produce(&mut self, out: &mut Output, ctx: &Ctx) -> Result<(), RpcError> {
        if self.turn == self.big_at {
            ctx.log(
                LogLevel::Info,
                format!("turn {} logs before its big batch", self.turn),
            );
            out.emit(rows(10_000))?;
        } else {
            out.emit(rows(1))?;
        }
        self.turn += 1;
        Ok(())
    }
}

/// Answers every input with the same 10,000 rows, after a log.
#[derive(serde::Serialize, serde::Deserialize)]
struct BigAnswers;

impl kit_service::Exchanger for BigAnswers {
    async fn exchange(
        &mut self,
        _input: RecordBatch,
        out: &mut Output,
        ctx: &Ctx,
    ) -> Result<(), RpcError> {
        ctx.log(LogLevel::Info, "the exchange logs before its big batch");
        out.emit(rows(10_000))
    }
}

/// Passes its input through.
#[derive(serde::Serialize, serde::Deserialize)]
struct Echo;

impl kit_service::Exchanger for Echo {
    async fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        out.emit(input)
    }
}

/// Logs 400 messages of 1 KiB, then fails.
#[derive(serde::Serialize, serde::Deserialize)]
struct LogsThenFails;

impl Producer for LogsThenFails {
    async fn produce(&mut self, _out: &mut Output, ctx: &Ctx) -> Result<(), RpcError> {
        log_400(ctx);
        Err(RpcError::value("failed after logging"))
    }
}

fn log_400(ctx: &Ctx) {
    for i in 0..400 {
        ctx.log(LogLevel::Info, format!("{i:03} {}", "x".repeat(1020)));
    }
}

fn protocol() -> Protocol {
    Protocol::builder(NAME)
        .version(VERSION)
        .producer("big_at", "big_at: int64", "", |_ctx, args| async move {
            let state = BigAt {
                turn: 0,
                big_at: args.get("big_at")?,
            };
            Ok(StreamInit::new(rows_schema(), state))
        })
        .exchange("big_answers", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(rows_schema(), BigAnswers).with_input(value_schema()))
        })
        .exchange("echo", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(value_schema(), Echo).with_input(value_schema()))
        })
        .producer("stream_logs_then_fails", "", "", |_ctx, _args| async move {
            Ok(StreamInit::new(rows_schema(), LogsThenFails))
        })
        .producer(
            "two_row_header",
            "",
            "h: int64",
            |ctx: Ctx, _args| async move {
                ctx.log(LogLevel::Info, "init logs before its header");
                Ok(StreamInit::new(rows_schema(), LogsThenFails).with_header(rows(2)))
            },
        )
        .unary(
            "log_then_big",
            "",
            "result: utf8",
            |ctx: Ctx, _args| async move {
                ctx.log(LogLevel::Info, "unary logs before its big result");
                Ok::<_, RpcError>("y".repeat(100_000))
            },
        )
        .unary(
            "logs_then_fails",
            "",
            "result: utf8",
            |ctx: Ctx, _args| async move {
                log_400(&ctx);
                Err::<String, _>(RpcError::value("failed after logging"))
            },
        )
        .unary(
            "two_logs_then_fails",
            "",
            "result: utf8",
            |ctx: Ctx, _args| async move {
                ctx.log(LogLevel::Info, "first");
                ctx.log(LogLevel::Info, "second");
                Err::<String, _>(RpcError::value("failed after two logs"))
            },
        )
        .unary(
            "huge_message",
            "",
            "result: utf8",
            |_ctx: Ctx, _args| async move {
                Err::<String, _>(RpcError::value(format!("é{}", "z".repeat(1 << 20))))
            },
        )
        .build()
        .unwrap()
}

fn no_params() -> RecordBatch {
    kit_service::client::no_params()
}

/// `POST {service}/Answers/{method}{endpoint}` with `batch` and `metadata`.
async fn post(
    service: &str,
    path: &str,
    batch: &RecordBatch,
    metadata: wire::Metadata,
    headers: &[(&str, &str)],
) -> Posted {
    let url = format!("{service}/{NAME}/{path}");
    post_arrow(&url, ipc_body(batch, &metadata), headers).await
}

async fn call(service: &str, method: &str, endpoint: &str, batch: &RecordBatch) -> Posted {
    let metadata = call_metadata(NAME, VERSION, method);
    post(
        service,
        &format!("{method}{endpoint}"),
        batch,
        metadata,
        &[],
    )
    .await
}

/// The stream tokens an `/init` or turn answered.
fn tokens(posted: &Posted) -> (String, Option<String>) {
    let state = posted
        .first(wire::STATE_KEY)
        .unwrap_or_else(|| panic!("no state token; error: {:?}", posted.exception()));
    (state, posted.first(wire::CALL_STATE_KEY))
}

async fn turn(
    service: &str,
    method: &str,
    input: &RecordBatch,
    state: String,
    call: &str,
    extra: &[(&str, &str)],
) -> Posted {
    let mut metadata: wire::Metadata = vec![
        (wire::STATE_KEY.into(), state),
        (wire::CALL_STATE_KEY.into(), call.to_string()),
    ];
    metadata.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    post(service, &format!("{method}/exchange"), input, metadata, &[]).await
}

/// A failed call's answer: 200, `X-VGI-RPC-Error`, the EXCEPTION batch on
/// the last stream, whose schema is `schema`.
fn assert_error_answer(posted: &Posted, schema: &SchemaRef, what: &str) -> String {
    assert_eq!(posted.status, 200, "{what}");
    assert_eq!(
        posted
            .headers
            .get("x-vgi-rpc-error")
            .and_then(|v| v.to_str().ok()),
        Some("true"),
        "{what}"
    );
    let last = posted.streams.last().expect("an error stream");
    assert_eq!(&last.schema, schema, "{what}: the error stream's schema");
    posted
        .exception()
        .unwrap_or_else(|| panic!("{what}: no EXCEPTION batch"))
}

#[tokio::test]
async fn a_failed_upload_keeps_the_logs_and_the_output_schema_on_every_path() {
    let service = in_process_serving(
        vec![protocol()],
        &[
            ("KIT_EXTERNALIZE_THRESHOLD_BYTES", "1024"),
            ("KIT_MAX_EXTERNALIZED_RESPONSE_BYTES", "2048"),
        ],
    )
    .await;
    let url = service.url.as_str();
    let utf8 = Arc::new(Schema::new(vec![Field::new(
        "result",
        DataType::Utf8,
        false,
    )]));
    let big_at = |at: i64| {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "big_at",
            DataType::Int64,
            false,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![at]))]).unwrap()
    };

    let unary = call(url, "log_then_big", "", &no_params()).await;
    let message = assert_error_answer(&unary, &utf8, "unary");
    assert!(
        message.contains("max_externalized_response_bytes"),
        "{message}"
    );
    assert_eq!(unary.logs(), ["unary logs before its big result"]);

    let init = call(url, "big_at", "/init", &big_at(0)).await;
    assert_error_answer(&init, &rows_schema(), "a producer's first turn, at /init");
    assert_eq!(init.logs(), ["turn 0 logs before its big batch"]);

    let init = call(url, "big_at", "/init", &big_at(1)).await;
    assert_eq!(init.status, 200, "{:?}", init.exception());
    let (state, call_token) = tokens(&init);
    let call_token = call_token.expect("a call token");
    let empty = RecordBatch::new_empty(wire::empty_schema());
    let later = turn(url, "big_at", &empty, state, &call_token, &[]).await;
    assert_error_answer(&later, &rows_schema(), "a producer's later turn");
    assert_eq!(later.logs(), ["turn 1 logs before its big batch"]);

    let init = call(url, "big_answers", "/init", &no_params()).await;
    let (state, call_token) = tokens(&init);
    let exchanged = turn(
        url,
        "big_answers",
        &value(1.0),
        state,
        &call_token.expect("a call token"),
        &[],
    )
    .await;
    assert_error_answer(&exchanged, &rows_schema(), "an exchange turn");
    assert_eq!(exchanged.logs(), ["the exchange logs before its big batch"]);
}

#[tokio::test]
async fn a_header_that_does_not_conform_keeps_the_logs_before_it() {
    let service = in_process_serving(vec![protocol()], &[]).await;
    let init = call(&service.url, "two_row_header", "/init", &no_params()).await;
    let message = assert_error_answer(&init, &wire::empty_schema(), "init");
    assert!(
        message.contains("a stream header must be one row, got 2"),
        "{message}"
    );
    assert_eq!(init.logs(), ["init logs before its header"]);
}

#[tokio::test]
async fn error_answers_keep_to_the_response_limit() {
    let service = in_process_serving(vec![protocol()], &[]).await;
    let url = service.url.as_str();
    let limit = 65_536usize;
    let header = [("vgi-accept-max-response-bytes", "65536")];
    let post_limited = |method: &'static str, endpoint: &'static str| {
        let metadata = call_metadata(NAME, VERSION, method);
        async move {
            post(
                url,
                &format!("{method}{endpoint}"),
                &no_params(),
                metadata,
                &header,
            )
            .await
        }
    };

    // 400 KiB of logs, then the failure: the error, and a note for the logs.
    for (method, endpoint, schema) in [
        (
            "logs_then_fails",
            "",
            Arc::new(Schema::new(vec![Field::new(
                "result",
                DataType::Utf8,
                false,
            )])) as SchemaRef,
        ),
        ("stream_logs_then_fails", "/init", rows_schema()),
    ] {
        let what = format!("{method}{endpoint}");
        let answer = post_limited(method, endpoint).await;
        assert!(
            answer.body.len() <= limit,
            "{what}: {} bytes over a {limit}-byte limit",
            answer.body.len()
        );
        let message = assert_error_answer(&answer, &schema, &what);
        assert_eq!(message, "ValueError: failed after logging", "{what}");
        let logs = answer.logs();
        assert_eq!(logs.len(), 1, "{what}: {logs:?}");
        assert!(
            logs[0].starts_with("400 log message(s) of this call left out")
                && logs[0].ends_with("over the response limit of 65536 bytes"),
            "{what}: {logs:?}"
        );
    }

    // Logs that fit stay.
    let answer = post_limited("two_logs_then_fails", "").await;
    assert_eq!(answer.logs(), ["first", "second"]);
    assert_eq!(
        answer.exception().as_deref(),
        Some("ValueError: failed after two logs")
    );

    // A message that alone would overshoot is cut, on a character boundary.
    let answer = post_limited("huge_message", "").await;
    assert!(answer.body.len() <= limit, "{} bytes", answer.body.len());
    let message = answer.exception().expect("the error");
    assert!(
        message.starts_with("ValueError: ézzz"),
        "{}",
        &message[..40]
    );
    assert!(
        message.ends_with("bytes cut to fit the response limit)"),
        "{}",
        &message[message.len() - 80..]
    );

    // Without a limit nothing is left out.
    let answer = call(url, "logs_then_fails", "", &no_params()).await;
    assert_eq!(answer.logs().len(), 400);
    assert!(answer.body.len() > 400 * 1024);
}

#[tokio::test]
async fn a_pointer_the_server_has_no_room_for_is_refused_alike_on_every_path() {
    // 1 MiB at the pointer, 512 KiB of room for request bytes in flight.
    let object = counting_server(
        "127.0.0.1",
        Reply::Body(Bytes::from(vec![0u8; 1 << 20]), None),
    )
    .await;
    let service = in_process_serving(
        vec![protocol()],
        &[
            ("KIT_URL_ALLOWLIST", "http://127.0.0.1"),
            ("KIT_MAX_INFLIGHT_BYTES", "524288"),
            ("KIT_MAX_REQUEST_BYTES", "65536"),
        ],
    )
    .await;
    let url = service.url.as_str();
    let location = format!("http://{}/obj", object.address);
    let retry_after = |posted: &Posted| {
        posted
            .headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };

    let mut pointer_metadata = call_metadata(NAME, VERSION, "echo");
    pointer_metadata.push((wire::LOCATION_KEY.into(), location.clone()));
    let pointer = RecordBatch::new_empty(value_schema());
    let refused_init = post(url, "echo/init", &pointer, pointer_metadata, &[]).await;
    assert_eq!(refused_init.status, 503, "{:?}", refused_init.exception());
    assert!(retry_after(&refused_init).is_some());
    let refusal = refused_init.exception().expect("the refusal");
    assert!(refusal.starts_with("ServerBusyError: "), "{refusal}");

    let init = call(url, "echo", "/init", &no_params()).await;
    let (state, call_token) = tokens(&init);
    let call_token = call_token.expect("a call token");
    let location_key = [(wire::LOCATION_KEY, location.as_str())];
    let refused = turn(
        url,
        "echo",
        &pointer,
        state.clone(),
        &call_token,
        &location_key,
    )
    .await;
    assert_eq!(refused.status, 503, "{:?}", refused.exception());
    assert_eq!(retry_after(&refused), retry_after(&refused_init));
    assert_eq!(refused.exception(), Some(refusal));

    // Nothing ran: the same turn, retried with its input inline, goes on.
    let retried = turn(url, "echo", &value(4.5), state, &call_token, &[]).await;
    assert_eq!(retried.status, 200, "{:?}", retried.exception());
    let echoed = retried
        .batches()
        .find(|b| b.batch.num_rows() == 1)
        .expect("the echoed row");
    let column = echoed
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(column.value(0), 4.5);
}
