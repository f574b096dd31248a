#![cfg(feature = "otel")]
//! OpenTelemetry export as an operator runs it: a real `kit-service serve`
//! with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a fake OTLP/HTTP receiver on
//! 127.0.0.1. SIGTERM flushes the spans; the test looks for the callers' raw
//! trace and span ids in the protobuf export requests it captured.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kit_service::wire::ipc::StreamWriter;
use kit_service::wire::{self, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PROTOCOL: &str = "kit.Demo.v1";

/// Export requests received on `POST /v1/traces`, as raw protobuf bytes.
type Exports = Arc<Mutex<Vec<Vec<u8>>>>;

async fn receive_traces(
    State(exports): State<Exports>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(&'static str, &'static str); 1], Bytes) {
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf"),
        "OTLP/HTTP with protobuf encoding"
    );
    exports.lock().unwrap().push(body.to_vec());
    // An empty ExportTraceServiceResponse: everything accepted.
    (
        StatusCode::OK,
        [("content-type", "application/x-protobuf")],
        Bytes::new(),
    )
}

async fn start_receiver() -> (String, Exports) {
    let exports = Exports::default();
    let app = Router::new()
        .route("/v1/traces", post(receive_traces))
        .with_state(exports.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, exports)
}

/// A `kit-service serve` process; killed when dropped, stderr shown on failure.
struct ServiceProcess {
    child: Child,
    address: String,
}

impl ServiceProcess {
    fn spawn(endpoint: &str) -> ServiceProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kit-service"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env("OTEL_SERVICE_NAME", "kit-otel-test")
            .env("KIT_LOG_FORMAT", "text")
            .env("VGI_SIGNING_KEY", "k".repeat(32))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("`kit-service serve` starts");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .trim()
            .strip_prefix("LISTENING http://")
            .unwrap_or_else(|| panic!("no LISTENING line: {line:?}"))
            .to_string();
        ServiceProcess { child, address }
    }

    /// SIGTERM, then the exit status (the drain and the span flush run first).
    async fn terminate(&mut self) -> Option<i32> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return exit.code();
            }
            assert!(
                Instant::now() < deadline,
                "kit-service exits within 30 s of SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking()
            && let Some(mut stderr) = self.child.stderr.take()
        {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            eprintln!("kit-service stderr:\n{text}");
        }
    }
}

fn add_body(extra_metadata: &[(&str, &str)]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Int64, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(Int64Array::from(vec![2])),
            Arc::new(Int64Array::from(vec![3])),
        ],
    )
    .unwrap();
    let mut metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), "add".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), PROTOCOL.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "1.0.0".into()),
    ];
    for (key, value) in extra_metadata {
        metadata.push((key.to_string(), value.to_string()));
    }
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    out
}

/// One `add` call over a fresh connection; returns the raw HTTP response.
async fn call_add(address: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut request = format!(
        "POST /{PROTOCOL}/add HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
        wire::CONTENT_TYPE,
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn traceparent(trace_id: &str, span_id: &str) -> String {
    format!("00-{trace_id}-{span_id}-01")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_spans_continue_the_callers_trace() {
    // From the header; the batch's different context must lose to it.
    let header_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let header_parent = "00f067aa0ba902b7";
    let overruled_trace = "0af7651916cd43dd8448eb211c80319c";
    let overruled_parent = "b7ad6b7169203331";
    // From the batch metadata only, as the Python client also sends it.
    let batch_trace = "5c1c63257de34c67a4ef2f3a6a1e0b9d";
    let batch_parent = "a3ce929d0e0e4736";

    let (endpoint, exports) = start_receiver().await;
    let mut service = ServiceProcess::spawn(&endpoint);

    let from_header = call_add(
        &service.address,
        &[
            ("traceparent", &traceparent(header_trace, header_parent)),
            ("x-request-id", "otel-header-call"),
        ],
        &add_body(&[(
            "traceparent",
            &traceparent(overruled_trace, overruled_parent),
        )]),
    )
    .await;
    assert!(from_header.starts_with("HTTP/1.1 200"), "{from_header}");
    let from_batch = call_add(
        &service.address,
        &[("x-request-id", "otel-batch-call")],
        &add_body(&[("traceparent", &traceparent(batch_trace, batch_parent))]),
    )
    .await;
    assert!(from_batch.starts_with("HTTP/1.1 200"), "{from_batch}");

    assert_eq!(service.terminate().await, Some(0));
    let exported: Vec<u8> = exports.lock().unwrap().concat();
    assert!(
        !exported.is_empty(),
        "the shutdown flush posted spans to /v1/traces"
    );
    let raw = |hex_text: &str| hex::decode(hex_text).unwrap();
    for (what, id) in [
        ("header trace id", header_trace),
        ("header parent span id", header_parent),
        ("batch trace id", batch_trace),
        ("batch parent span id", batch_parent),
    ] {
        assert!(
            contains(&exported, &raw(id)),
            "{what} {id} was not exported"
        );
    }
    assert!(
        !contains(&exported, &raw(overruled_trace)),
        "the traceparent header wins over the batch metadata"
    );
    for text in [
        "kit-otel-test",
        "kit.Demo.v1/add",
        "otel-header-call",
        "otel-batch-call",
    ] {
        assert!(
            contains(&exported, text.as_bytes()),
            "`{text}` missing from the export"
        );
    }
}

#[test]
fn a_bad_otlp_endpoint_exits_64() {
    let output = Command::new(env!("CARGO_BIN_EXE_kit-service"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`not a url`"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("LISTENING"));
}
