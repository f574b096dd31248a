#![cfg(feature = "lambda")]
//! `kit-service lambda` as AWS runs it: the real binary polls a fake Lambda
//! Runtime API on 127.0.0.1 for a Function URL event, an API Gateway REST (v1)
//! event and a bad request, and the test decodes what it posts back.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use axum::body::Bytes;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use kit_service::testing::lambda_runtime::{self, FakeRuntime};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};
use serde_json::{Value, json};

const PROTOCOL: &str = "kit.Demo.v1";

/// The `kit-service lambda` process; killed when dropped, its stderr shown if
/// the test failed.
struct LambdaProcess(Child);

impl LambdaProcess {
    fn spawn(runtime_api: &str) -> LambdaProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_kit-service"))
            .arg("lambda")
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", "kit-service")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            // REST APIs name a stage; drop it from the path instead of `--prefix /prod`.
            .env("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true")
            .env("KIT_RATE_LIMIT", "100/60")
            .env("KIT_LOG_FORMAT", "text")
            .env("VGI_SIGNING_KEY", "k".repeat(32))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("`kit-service lambda` starts");
        LambdaProcess(child)
    }
}

impl Drop for LambdaProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking()
            && let Some(mut stderr) = self.0.stderr.take()
        {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            eprintln!("kit-service lambda stderr:\n{text}");
        }
    }
}

fn add_request(a: i64, b: i64) -> String {
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
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), "add".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), PROTOCOL.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "1.0.0".into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    BASE64.encode(out)
}

/// A Function URL event calling `add`.
fn function_url_event(content_type: &str, body: &str, source_ip: &str) -> Value {
    lambda_runtime::function_url_event(&format!("/{PROTOCOL}/add"), content_type, body, source_ip)
}

/// An API Gateway REST API proxy event (v1) on stage `prod`.
fn api_gateway_v1_event(body: &str, source_ip: &str) -> Value {
    let path = format!("/{PROTOCOL}/add");
    json!({
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": "POST",
        "headers": {
            "Content-Type": wire::CONTENT_TYPE,
            "Host": "wt6mne2s9k.execute-api.eu-west-1.amazonaws.com",
            "X-Request-ID": "apigw-v1-call",
        },
        "multiValueHeaders": {
            "Content-Type": [wire::CONTENT_TYPE],
            "Host": ["wt6mne2s9k.execute-api.eu-west-1.amazonaws.com"],
            "X-Request-ID": ["apigw-v1-call"],
        },
        "queryStringParameters": null,
        "multiValueQueryStringParameters": null,
        "pathParameters": {"proxy": format!("{PROTOCOL}/add")},
        "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012",
            "resourceId": "us4z18",
            "stage": "prod",
            "requestId": "41b45ea3-70b5-11e6-b7bd-69b5aaebc7d9",
            "requestTimeEpoch": 1767225600000u64,
            "identity": {"sourceIp": source_ip, "userAgent": "vgi-rpc-test"},
            "resourcePath": "/{proxy+}",
            "httpMethod": "POST",
            "apiId": "wt6mne2s9k",
            "path": format!("/prod{path}"),
        },
        "body": body,
        "isBase64Encoded": true,
    })
}

/// A response header from either response shape (v2 `headers`, v1 also
/// `multiValueHeaders`), matched case-insensitively.
fn header(response: &Value, name: &str) -> Option<String> {
    for field in ["headers", "multiValueHeaders"] {
        if let Some(map) = response[field].as_object() {
            for (key, value) in map {
                if key.eq_ignore_ascii_case(name) {
                    return match value {
                        Value::Array(values) => values[0].as_str().map(str::to_string),
                        other => other.as_str().map(str::to_string),
                    };
                }
            }
        }
    }
    None
}

/// The Arrow IPC streams of a base64-encoded response body.
fn arrow_body(response: &Value) -> Vec<wire::IpcStream> {
    assert_eq!(
        response["isBase64Encoded"], true,
        "Arrow bodies are binary: {response}"
    );
    let bytes = BASE64
        .decode(response["body"].as_str().expect("a body"))
        .expect("base64 body");
    read_streams(&Bytes::from(bytes)).expect("response body is Arrow IPC")
}

fn check_add_result(response: &Value, expected: i64) {
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(
        header(response, "vgi-accept-max-response-bytes-support").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(response, "content-type").as_deref(),
        Some(wire::CONTENT_TYPE)
    );
    assert!(header(response, "x-vgi-rpc-error").is_none(), "{response}");
    let streams = arrow_body(response);
    let result = streams[0].batches[0]
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("`result: int64`")
        .value(0);
    assert_eq!(result, expected);
}

#[tokio::test]
async fn lambda_answers_function_url_and_api_gateway_events() {
    let events = vec![
        (
            "invoke-function-url".to_string(),
            function_url_event(wire::CONTENT_TYPE, &add_request(2, 3), "203.0.113.7"),
        ),
        (
            "invoke-apigw-v1".to_string(),
            api_gateway_v1_event(&add_request(40, 2), "198.51.100.9"),
        ),
        (
            "invoke-wrong-content-type".to_string(),
            function_url_event("application/json", &BASE64.encode(b"{}"), "203.0.113.7"),
        ),
    ];
    let expected = events.len();
    let mut runtime = FakeRuntime::start(events).await;
    let _process = LambdaProcess::spawn(runtime.address());

    let mut outcomes = HashMap::new();
    while outcomes.len() < expected {
        let outcome = runtime.expect_outcome(Duration::from_secs(60)).await;
        assert_eq!(outcome.kind, "response", "{outcome:?}");
        outcomes.insert(outcome.request_id, outcome.body);
    }

    let function_url = &outcomes["invoke-function-url"];
    check_add_result(function_url, 5);
    // Rate limits key on the event's source IP, as behind a socket.
    assert_eq!(
        header(function_url, "x-ratelimit-remaining").as_deref(),
        Some("99")
    );

    let rest = &outcomes["invoke-apigw-v1"];
    check_add_result(rest, 42);
    assert_eq!(
        header(rest, "x-request-id").as_deref(),
        Some("apigw-v1-call")
    );
    assert_eq!(header(rest, "x-ratelimit-remaining").as_deref(), Some("99"));

    let refused = &outcomes["invoke-wrong-content-type"];
    assert_eq!(refused["statusCode"], 415, "{refused}");
    assert_eq!(
        header(refused, "vgi-accept-max-response-bytes-support").as_deref(),
        Some("true")
    );
    assert_eq!(
        header(refused, "x-ratelimit-remaining").as_deref(),
        Some("98"),
        "the second call from 203.0.113.7"
    );
    let error = arrow_body(refused).remove(0).batches.remove(0);
    assert_eq!(error.get(wire::LOG_LEVEL_KEY), Some("EXCEPTION"));
    assert!(
        error
            .get(wire::LOG_MESSAGE_KEY)
            .unwrap_or_default()
            .contains("Content-Type"),
        "{:?}",
        error.metadata
    );
}

#[test]
fn lambda_outside_lambda_explains_itself() {
    let output = Command::new(env!("CARGO_BIN_EXE_kit-service"))
        .arg("lambda")
        .env_remove("AWS_LAMBDA_RUNTIME_API")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AWS_LAMBDA_RUNTIME_API"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
}
