//! The transport's status rules, driven through the router with `oneshot`
//! (no socket): every bad input gets the status and error kind the Python
//! reference gives (see `shared/reference/vgi-rpc-captures`), and the server
//! keeps serving. One test sends the same requests over a real socket, where
//! the accept loop calls the host without the router, and compares.

use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch, RecordBatchOptions, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kit_service::http::{HttpConfig, Server, app};
use kit_service::token::{KeyRing, SigningKey};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};
use tower::ServiceExt;

const PROTOCOL: &str = "kit.Demo.v1";

fn server_with(keys: KeyRing, config: HttpConfig) -> Arc<Server> {
    Server::new(vec![kit_service::demo::protocol()], config, keys)
}

fn server() -> Arc<Server> {
    server_with(
        KeyRing::new(SigningKey::new(vec![9u8; 32]), vec![], 3600),
        HttpConfig::default(),
    )
}

fn request_metadata(method: &str) -> Metadata {
    vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), PROTOCOL.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "1.0.0".into()),
    ]
}

fn ipc(schema: SchemaRef, batch: RecordBatch, metadata: Metadata) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    out
}

fn add_body(a: i64, b: i64, metadata: Metadata) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![a])),
            Arc::new(Int64Array::from(vec![b])),
        ],
    )
    .unwrap();
    ipc(schema, batch, metadata)
}

fn count_body(n: i64, rows: i64) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("n", DataType::Int64, false),
        Field::new("batch_rows", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![n])),
            Arc::new(Int64Array::from(vec![rows])),
        ],
    )
    .unwrap();
    ipc(schema, batch, request_metadata("count"))
}

fn token_body(metadata: Metadata) -> Vec<u8> {
    let schema = Arc::new(Schema::empty());
    let batch = RecordBatch::try_new_with_options(
        schema.clone(),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(0)),
    )
    .unwrap();
    ipc(schema, batch, metadata)
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn streams(&self) -> Vec<wire::IpcStream> {
        read_streams(&self.body).expect("response body is Arrow IPC")
    }

    /// The metadata of the EXCEPTION batch, if the body carries one.
    fn error(&self) -> Option<Metadata> {
        self.streams()
            .into_iter()
            .flat_map(|s| s.batches)
            .find(|b| b.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION"))
            .map(|b| b.metadata)
    }

    fn error_field(&self, key: &str) -> String {
        let error = self
            .error()
            .unwrap_or_else(|| panic!("no error batch in a {} response", self.status));
        wire::metadata_get(&error, key).unwrap_or("").to_string()
    }
}

async fn send(server: &Arc<Server>, request: Request<Body>) -> Reply {
    let response = app(server.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        headers
            .get_all("vgi-accept-max-response-bytes-support")
            .iter()
            .collect::<Vec<_>>(),
        vec!["true"],
        "capability header must appear exactly once"
    );
    Reply {
        status,
        headers,
        body,
    }
}

async fn post(server: &Arc<Server>, path: &str, body: Vec<u8>) -> Reply {
    let request = Request::post(path)
        .header("content-type", wire::CONTENT_TYPE)
        .body(Body::from(body))
        .unwrap();
    send(server, request).await
}

/// One bad-input case: the status, and the error type and kind in the body.
async fn check(
    server: &Arc<Server>,
    request: Request<Body>,
    status: StatusCode,
    error_type: &str,
    kind: &str,
) {
    let reply = send(server, request).await;
    assert_eq!(reply.status, status, "body: {:?}", reply.body);
    assert_eq!(
        reply.headers.get("content-type").unwrap(),
        wire::CONTENT_TYPE,
        "a {status} is an Arrow error stream"
    );
    let message = reply.error_field(wire::LOG_MESSAGE_KEY);
    assert!(
        message.starts_with(&format!("{error_type}: ")),
        "message {message:?} should start with {error_type}"
    );
    assert_eq!(reply.error_field(wire::ERROR_KIND_KEY), kind);
    // The server keeps serving after every bad input.
    let ok = post(
        server,
        &format!("/{PROTOCOL}/add"),
        add_body(1, 2, request_metadata("add")),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
}

fn raw(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn unary_call_returns_the_result() {
    let server = server();
    let reply = post(
        &server,
        &format!("/{PROTOCOL}/add"),
        add_body(2, 3, request_metadata("add")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get("x-vgi-rpc-error").is_none());
    let streams = reply.streams();
    let column = streams[0].batches[0]
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .clone();
    assert_eq!(column.value(0), 5);
    assert_eq!(reply.headers.get("x-request-id").unwrap().len(), 16);
}

#[tokio::test]
async fn method_errors_are_200_with_the_error_header() {
    let server = server();
    let reply = post(
        &server,
        &format!("/{PROTOCOL}/add"),
        add_body(i64::MAX, 1, request_metadata("add")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers.get("x-vgi-rpc-error").unwrap(), "true");
    assert_eq!(reply.error_field(wire::ERROR_CODE_KEY), "UNKNOWN");
    assert!(
        reply
            .error_field(wire::LOG_MESSAGE_KEY)
            .starts_with("ValueError: ")
    );
    // The error rides on the result schema.
    assert_eq!(reply.streams()[0].schema.field(0).name(), "result");
}

#[tokio::test]
async fn bad_inputs_get_the_reference_statuses() {
    let server = server();
    let add = format!("/{PROTOCOL}/add");
    let ct = wire::CONTENT_TYPE;
    check(
        &server,
        raw(&add, "application/octet-stream", "x"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "TypeError",
        "",
    )
    .await;
    check(
        &server,
        raw(&format!("/{PROTOCOL}/nope"), ct, "x"),
        StatusCode::NOT_FOUND,
        "MethodNotImplementedError",
        "method_not_implemented",
    )
    .await;
    check(
        &server,
        raw("/Nope/add", ct, "x"),
        StatusCode::NOT_FOUND,
        "ProtocolNotSupportedError",
        "protocol_not_supported",
    )
    .await;
    check(
        &server,
        raw("/a%2Eb/add", ct, "x"),
        StatusCode::NOT_FOUND,
        "ProtocolNotSpecifiedError",
        "protocol_not_supported",
    )
    .await;
    check(
        &server,
        raw("/__describe__", ct, ""),
        StatusCode::NOT_FOUND,
        "MethodNotImplementedError",
        "method_not_implemented",
    )
    .await;
    check(
        &server,
        raw(&add, ct, "not arrow"),
        StatusCode::BAD_REQUEST,
        "ArrowInvalid",
        "",
    )
    .await;
    let mut truncated = add_body(1, 2, request_metadata("add"));
    truncated.truncate(truncated.len() - 20);
    check(
        &server,
        raw(&add, ct, truncated),
        StatusCode::BAD_REQUEST,
        "ArrowInvalid",
        "",
    )
    .await;
    check(
        &server,
        raw(&format!("/{PROTOCOL}/count"), ct, ""),
        StatusCode::BAD_REQUEST,
        "TypeError",
        "",
    )
    .await;
    check(
        &server,
        raw(&format!("/{PROTOCOL}/add/init"), ct, ""),
        StatusCode::BAD_REQUEST,
        "TypeError",
        "",
    )
    .await;

    let mut no_method = request_metadata("add");
    no_method.retain(|(k, _)| k != wire::METHOD_KEY);
    check(
        &server,
        raw(&add, ct, add_body(1, 2, no_method)),
        StatusCode::BAD_REQUEST,
        "ProtocolError",
        "",
    )
    .await;
    check(
        &server,
        raw(&add, ct, add_body(1, 2, request_metadata("greet"))),
        StatusCode::BAD_REQUEST,
        "TypeError",
        "",
    )
    .await;
    let mut old_version = request_metadata("add");
    old_version.retain(|(k, _)| k != wire::PROTOCOL_VERSION_KEY);
    old_version.push((wire::PROTOCOL_VERSION_KEY.into(), "0.9.0".into()));
    check(
        &server,
        raw(&add, ct, add_body(1, 2, old_version)),
        StatusCode::BAD_REQUEST,
        "ProtocolVersionError",
        "protocol_version_mismatch",
    )
    .await;
}

#[tokio::test]
async fn schema_mismatches_are_400() {
    let server = server();
    let add = format!("/{PROTOCOL}/add");
    let nullable = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        nullable.clone(),
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Int64Array::from(vec![2])),
        ],
    )
    .unwrap();
    let reply = post(&server, &add, ipc(nullable, batch, request_metadata("add"))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_field(wire::LOG_MESSAGE_KEY),
        "TypeError: add() parameter 'a' expected nullable=False, but the request batch carried nullable=True"
    );

    let wrong_type = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Utf8, false),
        Field::new("b", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        wrong_type.clone(),
        vec![
            Arc::new(StringArray::from(vec!["1"])),
            Arc::new(Int64Array::from(vec![2])),
        ],
    )
    .unwrap();
    let reply = post(
        &server,
        &add,
        ipc(wrong_type, batch, request_metadata("add")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply
            .error_field(wire::LOG_MESSAGE_KEY)
            .contains("expected Arrow type int64 but the request batch carried utf8")
    );
}

#[tokio::test]
async fn compressed_requests_and_responses() {
    let server = server();
    let body = zstd::bulk::compress(&add_body(2, 2, request_metadata("add")), 1).unwrap();
    let request = Request::post(format!("/{PROTOCOL}/add"))
        .header("content-type", wire::CONTENT_TYPE)
        .header("content-encoding", "zstd")
        .header("accept-encoding", "zstd, gzip")
        .body(Body::from(body))
        .unwrap();
    let reply = send(&server, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers.get("content-encoding").unwrap(), "zstd");
    let decoded = zstd::stream::decode_all(reply.body.as_ref()).unwrap();
    assert!(read_streams(&Bytes::from(decoded)).is_ok());

    let corrupt = Request::post(format!("/{PROTOCOL}/add"))
        .header("content-type", wire::CONTENT_TYPE)
        .header("content-encoding", "zstd")
        .body(Body::from(&b"definitely not zstd"[..]))
        .unwrap();
    assert_eq!(send(&server, corrupt).await.status, StatusCode::BAD_REQUEST);
    let unknown = Request::post(format!("/{PROTOCOL}/add"))
        .header("content-type", wire::CONTENT_TYPE)
        .header("content-encoding", "br")
        .body(Body::from(&b"x"[..]))
        .unwrap();
    assert_eq!(
        send(&server, unknown).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
}

/// A large result is compressed off the async workers, on several threads
/// for zstd, and streamed piece by piece as it is produced, yet it is still
/// one zstd frame that declares its size: the reference client decodes it in
/// one call.
#[tokio::test]
async fn large_compressed_results_stream_as_one_frame() {
    let server = Server::new(
        kit_service::conformance::protocols(),
        HttpConfig::default(),
        KeyRing::new(SigningKey::new(vec![9u8; 32]), vec![], 3600),
    );
    let size = 6i64 << 20;
    for accept in ["zstd", "gzip"] {
        let request = Request::post("/ConformanceService/oversized_unary")
            .header("content-type", wire::CONTENT_TYPE)
            .header("accept-encoding", accept)
            .body(Body::from(conformance_request(
                "oversized_unary",
                Field::new("target_bytes", DataType::Int64, false),
                Arc::new(Int64Array::from(vec![size])),
            )))
            .unwrap();
        let reply = send(&server, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{accept}");
        assert_eq!(reply.headers.get("content-encoding").unwrap(), accept);
        let decoded = if accept == "zstd" {
            let body = reply.body.as_ref();
            assert_eq!(
                zstd::zstd_safe::find_frame_compressed_size(body).unwrap(),
                body.len(),
                "one frame"
            );
            let declared = zstd::zstd_safe::get_frame_content_size(body)
                .unwrap()
                .expect("the frame declares its size");
            zstd::bulk::decompress(body, declared as usize).unwrap()
        } else {
            let mut out = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(reply.body.as_ref()),
                &mut out,
            )
            .unwrap();
            out
        };
        let streams = read_streams(&Bytes::from(decoded)).unwrap();
        let received: usize = streams
            .iter()
            .flat_map(|s| &s.batches)
            .filter_map(|b| b.batch.columns().first())
            .filter_map(|c| c.as_any().downcast_ref::<arrow_array::BinaryArray>())
            .map(|c| c.value_data().len())
            .sum();
        assert_eq!(received as i64, size, "{accept}");
    }
}

/// Bodies below `compress_min_bytes` keep the negotiated coding but are stored
/// (a zstd frame of raw blocks, the body plus a few header bytes); larger
/// bodies are compressed; 0 compresses everything.
#[tokio::test]
async fn small_responses_are_stored_in_the_negotiated_coding() {
    async fn reply(
        server: &Arc<Server>,
        path: &str,
        body: Vec<u8>,
        accept: &str,
    ) -> (Vec<u8>, Vec<u8>) {
        let request = Request::post(path)
            .header("content-type", wire::CONTENT_TYPE)
            .header("accept-encoding", accept)
            .body(Body::from(body))
            .unwrap();
        let reply = send(server, request).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers.get("content-encoding").unwrap(), accept);
        let decoded = match accept {
            "zstd" => zstd::stream::decode_all(reply.body.as_ref()).unwrap(),
            _ => {
                let mut out = Vec::new();
                std::io::Read::read_to_end(
                    &mut flate2::read::GzDecoder::new(reply.body.as_ref()),
                    &mut out,
                )
                .unwrap();
                out
            }
        };
        assert!(read_streams(&Bytes::from(decoded.clone())).is_ok());
        (reply.body.to_vec(), decoded)
    }
    let add = format!("/{PROTOCOL}/add");
    let count = format!("/{PROTOCOL}/count/init");
    let default = server();
    for accept in ["zstd", "gzip"] {
        let (wire_body, decoded) = reply(
            &default,
            &add,
            add_body(2, 3, request_metadata("add")),
            accept,
        )
        .await;
        assert!(
            decoded.len() < 1024,
            "the add reply is a small body: {}",
            decoded.len()
        );
        assert!(
            wire_body.len() > decoded.len(),
            "{accept}: stored, not compressed"
        );
        assert!(
            wire_body.len() <= decoded.len() + 32,
            "{accept}: only framing added"
        );
        // 2,000 sequential int64 rows compress well.
        let (wire_body, decoded) = reply(&default, &count, count_body(2_000, 2_000), accept).await;
        assert!(decoded.len() > 16_000);
        assert!(
            wire_body.len() < decoded.len() / 2,
            "{accept}: large bodies are compressed"
        );
    }
    let always = server_with(
        KeyRing::ephemeral(3600),
        HttpConfig {
            compress_min_bytes: 0,
            ..HttpConfig::default()
        },
    );
    let (wire_body, decoded) = reply(
        &always,
        &add,
        add_body(2, 3, request_metadata("add")),
        "zstd",
    )
    .await;
    assert!(
        wire_body.len() < decoded.len(),
        "0 compresses even small bodies"
    );
}

#[tokio::test]
async fn request_and_response_limits() {
    let config = HttpConfig {
        max_request_bytes: Some(200),
        max_response_bytes: Some(65536),
        ..HttpConfig::default()
    };
    let server = server_with(KeyRing::ephemeral(3600), config);
    let reply = post(
        &server,
        &format!("/{PROTOCOL}/add"),
        add_body(1, 2, request_metadata("add")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.headers.get("vgi-max-request-bytes").unwrap(), "200");

    let server = server_with(
        KeyRing::ephemeral(3600),
        HttpConfig {
            max_response_bytes: Some(65536),
            ..HttpConfig::default()
        },
    );
    let request = Request::post(format!("/{PROTOCOL}/init"))
        .header("content-type", wire::CONTENT_TYPE)
        .header("vgi-accept-max-response-bytes", "12")
        .body(Body::from(count_body(1, 1)))
        .unwrap();
    assert_eq!(send(&server, request).await.status, StatusCode::BAD_REQUEST);
    let request = Request::post(format!("/{PROTOCOL}/count/init"))
        .header("content-type", wire::CONTENT_TYPE)
        .body(Body::from(count_body(20_000, 20_000)))
        .unwrap();
    let reply = send(&server, request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.error_field(wire::ERROR_CODE_KEY),
        "RESOURCE_EXHAUSTED"
    );
}

/// Walks a producer stream turn by turn, returning the rows and each turn's reply.
async fn start_count(server: &Arc<Server>) -> (Reply, String, String) {
    let reply = post(
        server,
        &format!("/{PROTOCOL}/count/init"),
        count_body(10, 4),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let streams = reply.streams();
    let token = streams[0]
        .batches
        .iter()
        .find(|b| b.get(wire::STATE_KEY).is_some())
        .expect("token batch");
    let cursor = token.get(wire::STATE_KEY).unwrap().to_string();
    let call = token.get(wire::CALL_STATE_KEY).unwrap().to_string();
    (reply, cursor, call)
}

fn continuation(cursor: &str, call: &str) -> Vec<u8> {
    token_body(vec![
        (wire::STATE_KEY.into(), cursor.into()),
        (wire::CALL_STATE_KEY.into(), call.into()),
    ])
}

#[tokio::test]
async fn producer_streams_are_lock_step() {
    let server = server();
    let (first, mut cursor, call) = start_count(&server).await;
    let data_batches = |reply: &Reply| {
        reply.streams()[0]
            .batches
            .iter()
            .filter(|b| b.batch.num_rows() > 0)
            .count()
    };
    assert_eq!(data_batches(&first), 1);
    let mut turns = 1;
    loop {
        let reply = post(
            &server,
            &format!("/{PROTOCOL}/count/exchange"),
            continuation(&cursor, &call),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert!(data_batches(&reply) <= 1);
        turns += 1;
        match reply.streams()[0]
            .batches
            .iter()
            .find_map(|b| b.get(wire::STATE_KEY).map(str::to_string))
        {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(
        turns, 3,
        "10 rows in slices of 4, finishing with the last batch"
    );
}

#[tokio::test]
async fn tampered_expired_and_foreign_tokens_are_400() {
    let server = server();
    let (_, cursor, call) = start_count(&server).await;
    let path = format!("/{PROTOCOL}/count/exchange");
    let token_error = |reply: &Reply| {
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        reply.error_field(wire::LOG_MESSAGE_KEY)
    };

    let mut tampered = cursor.clone().into_bytes();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == b'A' { b'B' } else { b'A' };
    let reply = post(
        &server,
        &path,
        continuation(&String::from_utf8(tampered).unwrap(), &call),
    )
    .await;
    assert_eq!(
        token_error(&reply),
        "RuntimeError: State token signature verification failed"
    );

    let reply = post(&server, &path, continuation("%%%", &call)).await;
    assert_eq!(token_error(&reply), "RuntimeError: Malformed state token");

    let reply = post(
        &server,
        &path,
        token_body(vec![(wire::CALL_STATE_KEY.into(), call.clone())]),
    )
    .await;
    assert_eq!(
        token_error(&reply),
        "RuntimeError: Missing state token in exchange request"
    );

    // A replica with another key rejects the token; one holding it as a previous key accepts it.
    let foreign = server_with(
        KeyRing::new(SigningKey::new(vec![1u8; 32]), vec![], 3600),
        HttpConfig::default(),
    );
    let reply = post(&foreign, &path, continuation(&cursor, &call)).await;
    assert_eq!(
        token_error(&reply),
        "RuntimeError: State token signature verification failed"
    );
    let rotated = server_with(
        KeyRing::new(
            SigningKey::new(vec![1u8; 32]),
            vec![SigningKey::new(vec![9u8; 32])],
            3600,
        ),
        HttpConfig::default(),
    );
    assert_eq!(
        post(&rotated, &path, continuation(&cursor, &call))
            .await
            .status,
        StatusCode::OK
    );

    // Tokens from a key ring with a 1-second lifetime expire.
    let short = server_with(
        KeyRing::new(SigningKey::new(vec![9u8; 32]), vec![], 1),
        HttpConfig::default(),
    );
    let (_, cursor, call) = start_count(&short).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let reply = post(&short, &path, continuation(&cursor, &call)).await;
    assert_eq!(token_error(&reply), "RuntimeError: State token expired");
}

#[tokio::test]
async fn health_and_verbs() {
    let server = server();
    let reply = send(
        &server,
        Request::get("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(json["status"], "ok");
    assert_eq!(json["protocol"], PROTOCOL);
    let reply = send(
        &server,
        Request::options("/health").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.headers.get("allow").unwrap(), "GET, HEAD");
    assert_eq!(
        reply.headers.get("cache-control").unwrap(),
        "public, max-age=300"
    );
    let reply = send(
        &server,
        Request::get(format!("/{PROTOCOL}/add"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    let reply = send(
        &server,
        Request::get("/elsewhere").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = send(
        &server,
        Request::get("/health")
            .header("x-request-id", "abc-123")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reply.headers.get("x-request-id").unwrap(), "abc-123");
}

#[tokio::test]
async fn huge_batch_requests_are_refused_not_allocated() {
    // Regression (found by fuzzing): `count` with an enormous batch_rows
    // allocated without bound and took the process down.
    let server = server();
    let reply = post(
        &server,
        &format!("/{PROTOCOL}/count/init"),
        count_body(i64::MAX, i64::MAX / 2),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        reply
            .error_field(wire::LOG_MESSAGE_KEY)
            .contains("batch_rows within")
    );
}

/// Regression (issue 13, item 7): 413, the bad-encoding 415, codec 400s,
/// 405 and unrouted 404s were Falcon-style JSON or HTML, which the vgi-rpc
/// client reports as "response is not a valid Arrow IPC stream" instead of
/// the error. Every client mistake is now an Arrow error stream.
#[tokio::test]
async fn transport_errors_are_arrow_error_streams() {
    let server = server_with(
        KeyRing::ephemeral(3600),
        HttpConfig {
            max_request_bytes: Some(4096),
            ..HttpConfig::default()
        },
    );
    let add = format!("/{PROTOCOL}/add");
    let ct = wire::CONTENT_TYPE;
    let encoded = |encoding: &str, body: Vec<u8>| {
        Request::post(&add)
            .header("content-type", ct)
            .header("content-encoding", encoding)
            .body(Body::from(body))
            .unwrap()
    };
    check(
        &server,
        raw(&add, ct, vec![0u8; 8192]),
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLargeError",
        "payload_too_large",
    )
    .await;
    let bomb = zstd::encode_all(&vec![0u8; 1 << 20][..], 3).unwrap();
    assert!(bomb.len() < 4096);
    check(
        &server,
        encoded("zstd", bomb),
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLargeError",
        "payload_too_large",
    )
    .await;
    check(
        &server,
        encoded("br", add_body(1, 2, request_metadata("add"))),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedEncodingError",
        "unsupported_encoding",
    )
    .await;
    for encoding in ["zstd", "gzip"] {
        check(
            &server,
            encoded(encoding, b"definitely not compressed".to_vec()),
            StatusCode::BAD_REQUEST,
            "ProtocolError",
            "invalid_content_encoding",
        )
        .await;
    }
    check(
        &server,
        Request::get(&add).body(Body::empty()).unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowedError",
        "method_not_allowed",
    )
    .await;
    check(
        &server,
        Request::delete("/health").body(Body::empty()).unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowedError",
        "method_not_allowed",
    )
    .await;
    check(
        &server,
        raw(&format!("/{PROTOCOL}/add/init/extra"), ct, ""),
        StatusCode::NOT_FOUND,
        "NotFoundError",
        "not_found",
    )
    .await;
    check(
        &server,
        raw(&format!("/{PROTOCOL}/nope"), ct, ""),
        StatusCode::NOT_FOUND,
        "MethodNotImplementedError",
        "method_not_implemented",
    )
    .await;
    let reply = send(&server, Request::get(&add).body(Body::empty()).unwrap()).await;
    assert_eq!(reply.headers.get("allow").unwrap(), "POST");
    assert_eq!(reply.error_field(wire::ERROR_CODE_KEY), "UNIMPLEMENTED");
    assert_eq!(
        reply.error_field(wire::REQUEST_ID_KEY),
        reply.headers.get("x-request-id").unwrap().to_str().unwrap(),
        "the error names the request id the header carries"
    );
}

/// Regression (issue 13, item 7): the embedded store's `__objects__` route
/// answered without the capability headers every other route carries.
#[tokio::test]
async fn objects_route_carries_the_capability_headers() {
    let dir = std::env::temp_dir().join(format!(
        "kit-objects-caps-{}",
        kit_service::http::random_hex(6)
    ));
    let env: std::collections::HashMap<String, String> = [
        ("KIT_STORAGE", "local"),
        ("KIT_STORAGE_DIR", dir.to_str().unwrap()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let config =
        kit_service::config::Config::from_env(&env, "127.0.0.1:0".parse().unwrap()).unwrap();
    let server = kit_service::serve::build_server_at(
        &config,
        vec![kit_service::demo::protocol()],
        "",
        "127.0.0.1:9".parse().unwrap(),
    )
    .unwrap();
    for request in [
        Request::get("/__objects__/vgi-rpc/nothing-here?sig=bad")
            .body(Body::empty())
            .unwrap(),
        Request::put("/__objects__/vgi-rpc/nothing-here")
            .body(Body::from("x"))
            .unwrap(),
    ] {
        // `send` asserts exactly one `VGI-Accept-Max-Response-Bytes-Support`.
        let reply = send(&server, request).await;
        assert!(reply.status.is_client_error(), "{}", reply.status);
        for name in [
            "vgi-externalization-enabled",
            "vgi-supported-encodings",
            "vgi-upload-url-support",
            "x-request-id",
        ] {
            assert!(reply.headers.contains_key(name), "missing {name}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One-column request for a `ConformanceService` method.
fn conformance_request(method: &str, field: Field, column: arrow_array::ArrayRef) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![field]));
    let batch = RecordBatch::try_new(schema.clone(), vec![column]).unwrap();
    let metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "ConformanceService".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
    ];
    ipc(schema, batch, metadata)
}

/// A `Point` record as Python's dataclass sends it: an IPC stream of `rows` rows.
fn point_bytes(rows: usize) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Float64, false),
        Field::new("y", DataType::Float64, false),
    ]));
    let column =
        || Arc::new(arrow_array::Float64Array::from(vec![1.5; rows])) as arrow_array::ArrayRef;
    let batch = RecordBatch::try_new(schema.clone(), vec![column(), column()]).unwrap();
    ipc(schema, batch, Vec::new())
}

#[tokio::test]
async fn record_parameters_are_decoded_strictly_before_the_method_runs() {
    // Regression: `echo_point` echoed junk bytes with 200; the reference
    // refuses a dataclass it cannot deserialize with 400 TypeError.
    let server = Server::new(
        kit_service::conformance::protocols(),
        HttpConfig::default(),
        KeyRing::new(SigningKey::new(vec![9u8; 32]), vec![], 3600),
    );
    let point = |bytes: &[u8]| {
        conformance_request(
            "echo_point",
            Field::new("point", DataType::Binary, false),
            Arc::new(arrow_array::BinaryArray::from(vec![bytes])),
        )
    };
    let ok = post(
        &server,
        "/ConformanceService/echo_point",
        point(&point_bytes(1)),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.error());
    for (bytes, says) in [
        (b"junk".to_vec(), "TypeError: Expected to read"),
        (
            point_bytes(2),
            "TypeError: echo_point() parameter 'point' expected a single-row",
        ),
        (
            [point_bytes(1), b"tail".to_vec()].concat(),
            "bytes after the record's IPC stream",
        ),
    ] {
        let reply = post(&server, "/ConformanceService/echo_point", point(&bytes)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let message = reply.error_field(wire::LOG_MESSAGE_KEY);
        assert!(message.contains(says), "{message}");
    }
    // A record on another schema: a BoundingBox's fields are not a Point's.
    let other = conformance_request(
        "echo_point",
        Field::new("point", DataType::Binary, false),
        Arc::new(arrow_array::BinaryArray::from(vec![
            ipc(
                Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
                RecordBatch::try_new(
                    Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)])),
                    vec![Arc::new(Int64Array::from(vec![1]))],
                )
                .unwrap(),
                Vec::new(),
            )
            .as_slice(),
        ])),
    );
    let reply = post(&server, "/ConformanceService/echo_point", other).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply
            .error_field(wire::LOG_MESSAGE_KEY)
            .contains("expected a record with schema")
    );
}

#[tokio::test]
async fn enum_parameters_refuse_non_members_before_the_method_runs() {
    // Regression: `echo_enum` echoed a non-member with 200 and
    // `echo_status_list` answered 200 with an error batch; the reference
    // refuses a string that names no `Status` while decoding (400 TypeError).
    let server = Server::new(
        kit_service::conformance::protocols(),
        HttpConfig::default(),
        KeyRing::new(SigningKey::new(vec![9u8; 32]), vec![], 3600),
    );
    let status = DataType::Dictionary(Box::new(DataType::Int16), Box::new(DataType::Utf8));
    let single = |value: &str| {
        let array: arrow_array::DictionaryArray<arrow_array::types::Int16Type> =
            vec![value].into_iter().collect();
        conformance_request(
            "echo_enum",
            Field::new("status", status.clone(), false),
            Arc::new(array),
        )
    };
    for member in ["ACTIVE", "active"] {
        let reply = post(&server, "/ConformanceService/echo_enum", single(member)).await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{member}: {:?}",
            reply.error()
        );
    }
    let reply = post(&server, "/ConformanceService/echo_enum", single("bogus")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        reply
            .error_field(wire::LOG_MESSAGE_KEY)
            .contains("'bogus' is not a valid Status name or value"),
        "{}",
        reply.error_field(wire::LOG_MESSAGE_KEY)
    );
    // Inside a list: one bad element refuses the call.
    let values: arrow_array::DictionaryArray<arrow_array::types::Int16Type> =
        vec!["PENDING", "nope"].into_iter().collect();
    let list = arrow_array::ListArray::new(
        Arc::new(Field::new("item", status.clone(), true)),
        arrow_buffer::OffsetBuffer::from_lengths([2]),
        Arc::new(values),
        None,
    );
    let request = conformance_request(
        "echo_status_list",
        Field::new(
            "statuses",
            arrow_array::Array::data_type(&list).clone(),
            false,
        ),
        Arc::new(list),
    );
    let reply = post(&server, "/ConformanceService/echo_status_list", request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.error_field(wire::LOG_MESSAGE_KEY).contains("'nope'"));
}

#[tokio::test]
async fn a_null_in_a_required_parameter_is_a_type_error() {
    let server = Server::new(
        kit_service::conformance::protocols(),
        HttpConfig::default(),
        KeyRing::new(SigningKey::new(vec![9u8; 32]), vec![], 3600),
    );
    // The field says required, the column holds a null: what pyarrow sends for `None`.
    let nullable = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Int64,
        true,
    )]));
    let batch = RecordBatch::try_new(
        nullable,
        vec![Arc::new(Int64Array::from(vec![None::<i64>]))],
    )
    .unwrap();
    let required = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Int64,
        false,
    )]));
    let metadata = vec![
        (wire::METHOD_KEY.into(), "echo_int".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "ConformanceService".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
    ];
    let reply = post(
        &server,
        "/ConformanceService/echo_int",
        ipc(required, batch, metadata),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reply.error_field(wire::LOG_MESSAGE_KEY),
        "TypeError: echo_int() parameter 'value' is not optional but got None"
    );
}

/// The accept loop calls the host directly (`connections::App::Host`), not
/// through [`app`]'s router as these tests do: over a real socket every kind
/// of answer is the same as the router's (status, headers but the `date`
/// hyper adds, body), and a HEAD answer is GET's head with no body.
#[tokio::test]
async fn the_socket_answers_as_the_router_does() {
    use http::Method;
    let server = server();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drain = kit_service::serve::Drain {
        delay: std::time::Duration::ZERO,
        grace: std::time::Duration::from_secs(5),
    };
    tokio::spawn(kit_service::serve::serve_until(
        listener,
        server.clone(),
        drain,
        async move {
            let _ = stopped.await;
        },
    ));
    let arrow = wire::CONTENT_TYPE;
    let add = add_body(40, 2, request_metadata("add"));
    let cases: Vec<(Method, String, Option<&str>, Vec<u8>)> = vec![
        (Method::GET, "/health".into(), None, vec![]),
        (Method::HEAD, "/health".into(), None, vec![]),
        (Method::OPTIONS, "/health".into(), None, vec![]),
        (Method::DELETE, "/health".into(), None, vec![]),
        (Method::GET, "/livez".into(), None, vec![]),
        (Method::HEAD, "/livez".into(), None, vec![]),
        (Method::GET, format!("/{PROTOCOL}/add"), None, vec![]),
        (Method::GET, "/elsewhere".into(), None, vec![]),
        (
            Method::POST,
            format!("/{PROTOCOL}/add"),
            Some(arrow),
            add.clone(),
        ),
        (
            Method::POST,
            format!("/{PROTOCOL}/nope"),
            Some(arrow),
            add.clone(),
        ),
        (
            Method::POST,
            format!("/{PROTOCOL}/add"),
            Some(arrow),
            b"garbage".to_vec(),
        ),
        (
            Method::POST,
            format!("/{PROTOCOL}/add"),
            Some("text/plain"),
            add,
        ),
        (Method::POST, "/__describe__".into(), Some(arrow), vec![]),
    ];
    let client = reqwest::Client::new();
    let mut get_lengths = std::collections::HashMap::new();
    for (index, (method, path, content_type, body)) in cases.into_iter().enumerate() {
        let request_id = format!("same-{index}");
        let mut socket = client
            .request(method.clone(), format!("http://{address}{path}"))
            .header("x-request-id", &request_id)
            .body(body.clone());
        let mut routed = Request::builder()
            .method(method.clone())
            .uri(&path)
            .header("x-request-id", &request_id);
        if let Some(content_type) = content_type {
            socket = socket.header("content-type", content_type);
            routed = routed.header("content-type", content_type);
        }
        let socket = socket.send().await.unwrap();
        let (status, mut headers) = (socket.status(), socket.headers().clone());
        let socket_body = socket.bytes().await.unwrap();
        let mut routed = routed.body(Body::from(body)).unwrap();
        routed
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                1,
            ))));
        let reply = app(server.clone()).oneshot(routed).await.unwrap();
        let case = format!("{method} {path}");
        assert_eq!(status, reply.status(), "{case}");
        assert!(
            headers.remove("date").is_some(),
            "{case}: hyper dates answers"
        );
        assert_eq!(&headers, reply.headers(), "{case}");
        let routed_body = reply.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(socket_body, routed_body, "{case}");
        let length = headers
            .get("content-length")
            .map(|v| v.to_str().unwrap().to_string());
        if method == Method::GET {
            get_lengths.insert(path, length);
        } else if method == Method::HEAD {
            assert!(socket_body.is_empty(), "{case}");
            assert!(length.is_some(), "{case}");
            assert_eq!(length, get_lengths[&path], "{case}: GET's length");
        }
    }
    stop.send(()).unwrap();
}
