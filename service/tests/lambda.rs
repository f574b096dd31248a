#![cfg(feature = "lambda")]
//! `kit-service lambda` as AWS runs it: the real binary polls a fake Lambda
//! Runtime API on 127.0.0.1 for a Function URL event, an API Gateway REST (v1)
//! event and a bad request, and the test decodes what it posts back.
//!
//! Payload caps: results and requests over what fits Lambda's 6 MB once
//! base64-encoded are vgi-rpc errors naming `KIT_STORAGE` without storage,
//! and (feature `s3`, SeaweedFS started by `.ci/test`) a pointer the Python
//! client resolves with it.

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
        LambdaProcess::spawn_with(runtime_api, &[], &[])
    }

    /// `kit-service lambda ARGS` with `envs` added to the Lambda environment.
    fn spawn_with(runtime_api: &str, args: &[&str], envs: &[(&str, &str)]) -> LambdaProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_kit-service"))
            .arg("lambda")
            .args(args)
            .envs(envs.iter().copied())
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

/// A base64 request body calling `method` of `protocol` (version 2.0.0, the
/// conformance protocol's) with `batch`.
fn request_body(protocol: &str, method: &str, batch: &RecordBatch) -> String {
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), protocol.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &batch.schema()).unwrap();
    writer.write(batch, &metadata).unwrap();
    writer.finish();
    BASE64.encode(out)
}

/// A Function URL event calling the conformance `oversized_unary`, whose
/// result is one binary value of `bytes` zero bytes.
fn oversized_unary_event(bytes: i64) -> Value {
    let batch = RecordBatch::try_from_iter([(
        "target_bytes",
        Arc::new(Int64Array::from(vec![bytes])) as arrow_array::ArrayRef,
    )])
    .unwrap();
    let body = request_body(CONFORMANCE, "oversized_unary", &batch);
    lambda_runtime::function_url_event(
        &format!("/{CONFORMANCE}/oversized_unary"),
        wire::CONTENT_TYPE,
        &body,
        "203.0.113.7",
    )
}

/// A Function URL event calling the conformance `echo_bytes` with `bytes`
/// zero bytes: a request body of about that size.
fn echo_bytes_event(bytes: usize) -> Value {
    let batch = RecordBatch::try_from_iter([(
        "data",
        Arc::new(arrow_array::BinaryArray::from_vec(vec![
            &vec![0u8; bytes][..],
        ])) as arrow_array::ArrayRef,
    )])
    .unwrap();
    let body = request_body(CONFORMANCE, "echo_bytes", &batch);
    lambda_runtime::function_url_event(
        &format!("/{CONFORMANCE}/echo_bytes"),
        wire::CONTENT_TYPE,
        &body,
        "203.0.113.7",
    )
}

/// The conformance protocol (`kit-service lambda --conformance`).
const CONFORMANCE: &str = kit_service::conformance::NAME;

/// The EXCEPTION message of an error response.
fn error_message(response: &Value) -> String {
    let streams = arrow_body(response);
    let batch = streams
        .iter()
        .flat_map(|s| &s.batches)
        .find(|b| b.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION"))
        .unwrap_or_else(|| panic!("no EXCEPTION batch in {response}"));
    batch
        .get(wire::LOG_MESSAGE_KEY)
        .unwrap_or_default()
        .to_string()
}

/// Runs `events` through `kit-service lambda --conformance` with `envs`;
/// every outcome by request id.
async fn invoke_all(
    events: Vec<(String, Value)>,
    envs: &[(&str, &str)],
) -> HashMap<String, lambda_runtime::Outcome> {
    let expected = events.len();
    let mut runtime = FakeRuntime::start(events).await;
    let _process = LambdaProcess::spawn_with(runtime.address(), &["--conformance"], envs);
    let mut outcomes = HashMap::new();
    while outcomes.len() < expected {
        let outcome = runtime.expect_outcome(Duration::from_secs(120)).await;
        outcomes.insert(outcome.request_id.clone(), outcome);
    }
    outcomes
}

/// The raw body cap on Lambda: 6 MiB less a 64 KiB envelope, base64 (3 in 4).
const MAX_BODY: u64 = (6 * 1024 * 1024 - 64 * 1024) / 4 * 3;

#[tokio::test]
async fn without_storage_oversized_results_and_requests_are_vgi_rpc_errors_naming_kit_storage() {
    // 5 MB fits 6 MB raw but not once base64-encoded: before the cap knew
    // about base64, Lambda failed the invocation itself.
    let events = vec![
        ("result-5mb".to_string(), oversized_unary_event(5_000_000)),
        ("result-7mb".to_string(), oversized_unary_event(7_000_000)),
        ("result-small".to_string(), oversized_unary_event(1000)),
        ("request-4.7mb".to_string(), echo_bytes_event(4_700_000)),
    ];
    let outcomes = invoke_all(events, &[]).await;
    for id in ["result-5mb", "result-7mb"] {
        let outcome = &outcomes[id];
        assert_eq!(
            outcome.kind, "response",
            "{id}: a vgi-rpc error, not a failed invocation: {:?}",
            outcome.body
        );
        let response = &outcome.body;
        assert_eq!(
            response["statusCode"],
            200,
            "{id}: {}",
            error_message(response)
        );
        let message = error_message(response);
        assert!(
            message.contains("max_response_bytes") && message.contains(&format!("> {MAX_BODY})")),
            "{id}: {message}"
        );
        assert!(
            message.contains("`KIT_STORAGE`"),
            "{id}: names the setting: {message}"
        );
        assert_eq!(
            header(response, "vgi-max-response-bytes"),
            Some(MAX_BODY.to_string())
        );
    }
    let small = &outcomes["result-small"];
    assert_eq!(small.kind, "response");
    assert_eq!(small.body["statusCode"], 200);
    let streams = arrow_body(&small.body);
    let value = streams[0].batches[0]
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::BinaryArray>()
        .expect("`result: binary`")
        .value(0)
        .len();
    assert_eq!(value, 1000);

    let request = &outcomes["request-4.7mb"];
    assert_eq!(request.kind, "response", "{:?}", request.body);
    assert_eq!(
        request.body["statusCode"], 413,
        "the client's cue for an upload URL"
    );
    assert_eq!(
        header(&request.body, "vgi-max-request-bytes"),
        Some(MAX_BODY.to_string())
    );
    let message = error_message(&request.body);
    assert!(
        message.contains("max_request_bytes") && message.contains("`KIT_STORAGE`"),
        "{message}"
    );
}

#[tokio::test]
async fn a_raised_kit_max_response_bytes_does_not_lift_the_lambda_cap() {
    // The cap the tests above rely on: raising `KIT_MAX_RESPONSE_BYTES` does
    // not lift Lambda's, so the service keeps its own below it.
    let events = vec![("big".to_string(), oversized_unary_event(5_000_000))];
    let outcomes = invoke_all(events, &[("KIT_MAX_RESPONSE_BYTES", "104857600")]).await;
    let outcome = &outcomes["big"];
    assert_eq!(outcome.kind, "response", "{:?}", outcome.body);
    assert!(error_message(&outcome.body).contains("`KIT_STORAGE`"));
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
fn local_storage_on_lambda_needs_kit_public_url() {
    // No socket to build object URLs from: refused before the first poll.
    let output = Command::new(env!("CARGO_BIN_EXE_kit-service"))
        .arg("lambda")
        .env("AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9")
        .env("AWS_LAMBDA_FUNCTION_NAME", "kit-service")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("KIT_STORAGE", "local")
        .env_remove("KIT_PUBLIC_URL")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("`KIT_PUBLIC_URL`"), "{stderr}");
    assert!(stderr.contains("hint:"), "{stderr}");
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

/// SeaweedFS as `.ci/test` starts it (`start_seaweedfs` in `.ci/lib.sh`):
/// without it this fails, saying how to start it.
#[cfg(feature = "s3")]
fn seaweedfs_endpoint() -> String {
    let missing: Vec<&str> = [
        "KIT_TEST_S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ]
    .into_iter()
    .filter(|name| std::env::var(name).map_or(true, |v| v.is_empty()))
    .collect();
    assert!(
        missing.is_empty(),
        "{} not set: this test needs SeaweedFS. Run `.ci/test`, or start it by hand:\n  \
         source .ci/lib.sh && ensure_python && ensure_seaweedfs && start_seaweedfs \"$(mktemp -d)\"\n  \
         cargo test -p kit-service --features lambda,s3 --test lambda\n  stop_services",
        missing.join(", ")
    );
    std::env::var("KIT_TEST_S3_ENDPOINT").unwrap()
}

/// The vgi-rpc 0.52.2 venv of `.ci/lib.sh` `ensure_python`.
#[cfg(feature = "s3")]
fn python() -> std::path::PathBuf {
    let venv = std::env::var_os("VGI_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/deploy-kit/venv-py313-vgi-0.52.2")
        });
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "the vgi-rpc venv is missing at `{}`: create it with `source .ci/lib.sh && ensure_python` (or set VGI_VENV)",
        venv.display()
    );
    python
}

#[cfg(feature = "s3")]
#[tokio::test]
async fn with_s3_storage_a_result_over_6_mb_is_a_pointer_the_python_client_resolves() {
    use kit_service::storage::StorageSettings;
    use kit_service::storage::s3::{S3Storage, sdk};
    use kit_service::storage::settings::Provider;

    const BUCKET: &str = "kit-lambda";
    let endpoint = seaweedfs_endpoint();
    let prefix = format!("lambda-{}/", kit_service::http::random_hex(6));
    let mut settings = StorageSettings::local("unused", "http://unused");
    settings.provider = Provider::S3;
    settings.bucket = Some(BUCKET.into());
    settings.endpoint = Some(endpoint.clone());
    let storage = S3Storage::new(&settings).unwrap();
    if let Err(error) = storage
        .client()
        .await
        .create_bucket()
        .bucket(BUCKET)
        .send()
        .await
    {
        let code = sdk::error::ProvideErrorMetadata::code(&error).unwrap_or_default();
        assert!(
            matches!(code, "BucketAlreadyOwnedByYou" | "BucketAlreadyExists"),
            "creating bucket `{BUCKET}`: {}",
            sdk::error::DisplayErrorContext(&error)
        );
    }

    const RESULT: i64 = 7_000_000;
    let events = vec![
        ("result-7mb".to_string(), oversized_unary_event(RESULT)),
        ("request-4.7mb".to_string(), echo_bytes_event(4_700_000)),
    ];
    let outcomes = invoke_all(
        events,
        &[
            ("KIT_STORAGE", "s3"),
            ("KIT_STORAGE_BUCKET", BUCKET),
            ("KIT_STORAGE_PREFIX", &prefix),
            ("KIT_STORAGE_ENDPOINT", &endpoint),
            // Uncompressed, so the object is as large as the result.
            ("KIT_STORAGE_COMPRESSION", "off"),
        ],
    )
    .await;

    let outcome = &outcomes["result-7mb"];
    assert_eq!(outcome.kind, "response", "{:?}", outcome.body);
    assert_eq!(outcome.body["statusCode"], 200, "{}", outcome.body);
    let body = BASE64
        .decode(outcome.body["body"].as_str().expect("a body"))
        .unwrap();
    assert!(
        body.len() < 64 * 1024,
        "a pointer, not the {RESULT} bytes: {} bytes",
        body.len()
    );
    let streams = read_streams(&Bytes::from(body.clone())).unwrap();
    let pointer = &streams[0].batches[0];
    let location = pointer
        .get(wire::LOCATION_KEY)
        .expect("a pointer batch")
        .to_string();
    assert!(
        location.starts_with(&format!("{endpoint}/{BUCKET}/{prefix}")),
        "the object lies in the bucket under the prefix: {location}"
    );

    let file =
        std::env::temp_dir().join(format!("kit-lambda-pointer-{}.arrow", std::process::id()));
    std::fs::write(&file, &body).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/python/lambda_pointer.py"
    );
    let output = Command::new(python())
        .arg(script)
        .arg(&file)
        .arg(RESULT.to_string())
        .output()
        .expect("python runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "the Python client did not resolve the pointer:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // With storage, the 413 is the client's cue to retry through an upload URL.
    let request = &outcomes["request-4.7mb"];
    assert_eq!(request.body["statusCode"], 413, "{:?}", request.body);
    assert_eq!(
        header(&request.body, "vgi-max-request-bytes"),
        Some(MAX_BODY.to_string())
    );
    assert_eq!(
        header(&request.body, "vgi-upload-url-support").as_deref(),
        Some("true")
    );
}
