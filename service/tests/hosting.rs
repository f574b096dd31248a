//! Production hosting: auth, rate limits, probes, metrics, CORS, timeouts and
//! the graceful drain. Router cases use `oneshot`; the drain binds 127.0.0.1.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch, RecordBatchOptions};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use axum::body::Body;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kit_service::config::Config;
use kit_service::http::{Server, app};
use kit_service::serve::{Drain, build_server, serve_until};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

const PROTOCOL: &str = "kit.Demo.v1";

fn server(vars: &[(&str, &str)]) -> Arc<Server> {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = Config::from_env(&env, "127.0.0.1:0".parse().unwrap()).expect("valid test config");
    let server = build_server(&config, vec![kit_service::demo::protocol()], "");
    server.hosting().readiness.set_ready();
    server
}

fn metadata(method: &str) -> Metadata {
    vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), PROTOCOL.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "1.0.0".into()),
    ]
}

fn ipc(columns: &[(&str, i64)], metadata: Metadata) -> Vec<u8> {
    let schema: SchemaRef = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(name, _)| Field::new(*name, DataType::Int64, false))
            .collect::<Vec<_>>(),
    ));
    let arrays = columns
        .iter()
        .map(|(_, v)| Arc::new(Int64Array::from(vec![*v])) as _)
        .collect();
    let batch = if columns.is_empty() {
        RecordBatch::try_new_with_options(
            schema.clone(),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(0)),
        )
        .unwrap()
    } else {
        RecordBatch::try_new(schema.clone(), arrays).unwrap()
    };
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    out
}

fn rpc(path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut request = Request::post(path).header("content-type", wire::CONTENT_TYPE);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body)).unwrap()
}

fn add(headers: &[(&str, &str)]) -> Request<Body> {
    rpc(
        &format!("/{PROTOCOL}/add"),
        ipc(&[("a", 1), ("b", 2)], metadata("add")),
        headers,
    )
}

async fn send(
    server: &Arc<Server>,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = app(server.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test]
async fn api_keys_gate_rpc_but_not_probes() {
    let server = server(&[("KIT_API_KEYS", "ci=key-one-123,ops=key-two-456")]);
    let (status, headers, body) = send(&server, add(&[])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers.get("vgi-auth-reason").unwrap(),
        "missing_credential"
    );
    assert_eq!(
        headers.get("www-authenticate").unwrap(),
        "Bearer realm=\"kit.Demo.v1\""
    );
    assert_eq!(
        headers
            .get("vgi-accept-max-response-bytes-support")
            .unwrap(),
        "true"
    );
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["reason"], "missing_credential");

    let (status, headers, _) = send(&server, add(&[("authorization", "Bearer wrong")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers.get("vgi-auth-reason").unwrap(),
        "invalid_credential"
    );
    assert_eq!(
        send(&server, add(&[("authorization", "Bearer key-one-123")]))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        send(&server, add(&[("x-api-key", "key-two-456")])).await.0,
        StatusCode::OK
    );

    for path in ["/health", "/healthz", "/livez", "/readyz", "/metrics"] {
        assert_eq!(
            send(&server, get(path)).await.0,
            StatusCode::OK,
            "{path} must stay open"
        );
    }
    let metrics = String::from_utf8(send(&server, get("/metrics")).await.2.to_vec()).unwrap();
    assert!(metrics.contains("kit_auth_failures_total 2"), "{metrics}");
}

#[tokio::test]
async fn expired_and_out_of_scope_keys_get_their_own_reasons() {
    let server = server(&[(
        "KIT_API_KEYS",
        "old=key-old-123;expires=2020-01-01,adder=key-add-456;scopes=kit.Demo.v1/add,\
         counter=key-count-789;expires=2999-01-01T00:00:00Z;scopes=kit.Demo.v1/count",
    )]);
    let refused = |headers: &http::HeaderMap, body: &Bytes, reason: &str| {
        assert_eq!(headers.get("vgi-auth-reason").unwrap(), reason);
        assert_eq!(headers.get("cache-control").unwrap(), "no-store");
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["reason"], reason);
        assert_eq!(json["error"], "unauthorized");
    };
    let (status, headers, body) = send(&server, add(&[("x-api-key", "key-old-123")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    refused(&headers, &body, "expired_credential");

    let (status, _, body) = send(&server, add(&[("x-api-key", "key-add-456")])).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let greet = rpc(
        &format!("/{PROTOCOL}/greet"),
        ipc(&[], metadata("greet")),
        &[("x-api-key", "key-add-456")],
    );
    let (status, headers, body) = send(&server, greet).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    refused(&headers, &body, "insufficient_scope");

    // A stream's init and every exchange turn are checked against the scope.
    let count = |key: &'static str| {
        rpc(
            &format!("/{PROTOCOL}/count/init"),
            ipc(&[("n", 3), ("batch_rows", 1)], metadata("count")),
            &[("x-api-key", key)],
        )
    };
    let (status, headers, body) = send(&server, count("key-add-456")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    refused(&headers, &body, "insufficient_scope");
    let (status, _, body) = send(&server, count("key-count-789")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, headers, body) = send(&server, add(&[("x-api-key", "key-count-789")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    refused(&headers, &body, "insufficient_scope");
}

#[tokio::test]
async fn proxy_proof_gates_before_the_api_key_and_every_401_says_so() {
    use kit_service::http::proxy_proof::mint_proof;
    let secrets = format!("edge:{}", "11".repeat(32));
    let require = server(&[
        ("KIT_PROXY_PROOF", "require"),
        ("KIT_PROXY_PROOF_ORIGIN", "worker-a"),
        ("KIT_PROXY_PROOF_SECRETS", &secrets),
        ("KIT_API_KEYS", "ci=key-one-123"),
    ]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let proof = |nonce: &str| mint_proof(&[0x11; 32], "edge", "worker-a", now, nonce);
    // No proof: refused as proxy_required whatever the key.
    let (status, headers, body) = send(&require, add(&[("x-api-key", "key-one-123")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers.get("vgi-auth-reason").unwrap(), "proxy_required");
    assert_eq!(headers.get("vgi-auth-proxy-required").unwrap(), "true");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        json["proxy_hint"]
            .as_str()
            .unwrap()
            .contains("VGI-Proxy-Proof")
    );
    // A proof for another worker is the same refusal, word for word.
    let foreign = mint_proof(
        &[0x11; 32],
        "edge",
        "worker-b",
        now,
        "BBBBBBBBBBBBBBBBBBBBBB",
    );
    let (_, _, other) = send(
        &require,
        add(&[("x-api-key", "key-one-123"), ("vgi-proxy-proof", &foreign)]),
    )
    .await;
    assert_eq!(other, body);
    // A valid proof, then the key is judged; the 401 still carries the note.
    let (status, headers, _) = send(
        &require,
        add(&[("vgi-proxy-proof", &proof("AAAAAAAAAAAAAAAAAAAAAA"))]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers.get("vgi-auth-reason").unwrap(),
        "missing_credential"
    );
    assert_eq!(headers.get("vgi-auth-proxy-required").unwrap(), "true");
    let valid = proof("CCCCCCCCCCCCCCCCCCCCCC");
    let call = || {
        add(&[
            ("vgi-proxy-proof", valid.as_str()),
            ("x-api-key", "key-one-123"),
        ])
    };
    assert_eq!(send(&require, call()).await.0, StatusCode::OK);
    // The same proof again is a replay.
    assert_eq!(send(&require, call()).await.0, StatusCode::UNAUTHORIZED);
    // Probes stay open and advertise the requirement.
    let (status, headers, _) = send(&require, get("/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("vgi-proxy-proof-required").unwrap(), "true");

    let allow = server(&[
        ("KIT_PROXY_PROOF", "allow"),
        ("KIT_PROXY_PROOF_ORIGIN", "worker-a"),
        ("KIT_PROXY_PROOF_SECRETS", &secrets),
    ]);
    let (status, headers, _) = send(&allow, add(&[])).await;
    assert_eq!(status, StatusCode::OK, "allow mode never refuses");
    assert!(headers.get("vgi-proxy-proof-required").is_none());
    let off = server(&[]);
    let (status, _, _) = send(&off, add(&[("vgi-proxy-proof", "garbage")])).await;
    assert_eq!(status, StatusCode::OK, "off ignores the header");
}

#[test]
fn bad_key_expiry_or_scope_exits_64_naming_the_variable() {
    for (keys, expected) in [
        ("ci=s3cret-key;expires=next-week", "`expires=next-week`"),
        ("ci=s3cret-key;scopes=kit.Demo.v1", "scope `kit.Demo.v1`"),
        (
            "ci=s3cret-key;scopes=kit.Demo.v1/adds",
            "scope `kit.Demo.v1/adds` names no hosted",
        ),
        (
            "ci=s3cret-key;scopes=kit.Dmeo.v1/*",
            "scope `kit.Dmeo.v1/*` names no hosted",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_kit-service"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("KIT_API_KEYS", keys)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{keys}: {stderr}");
        assert!(stderr.contains("KIT_API_KEYS"), "{stderr}");
        assert!(
            stderr.contains(expected),
            "{expected} missing from:\n{stderr}"
        );
        assert!(!stderr.contains("s3cret-key"), "the key leaked:\n{stderr}");
        assert!(!stderr.contains("LISTENING"));
    }
}

#[tokio::test]
async fn stream_tokens_are_bound_to_the_caller() {
    let server = server(&[("KIT_API_KEYS", "ci=key-one-123,ops=key-two-456")]);
    let init = rpc(
        &format!("/{PROTOCOL}/count/init"),
        ipc(&[("n", 10), ("batch_rows", 2)], metadata("count")),
        &[("x-api-key", "key-one-123")],
    );
    let (status, _, body) = send(&server, init).await;
    assert_eq!(status, StatusCode::OK);
    let streams = read_streams(&body).unwrap();
    let token = streams[0]
        .batches
        .iter()
        .find(|b| b.get(wire::STATE_KEY).is_some())
        .unwrap();
    let continuation = ipc(
        &[],
        vec![
            (
                wire::STATE_KEY.into(),
                token.get(wire::STATE_KEY).unwrap().into(),
            ),
            (
                wire::CALL_STATE_KEY.into(),
                token.get(wire::CALL_STATE_KEY).unwrap().into(),
            ),
        ],
    );
    let path = format!("/{PROTOCOL}/count/exchange");
    let (status, _, _) = send(
        &server,
        rpc(&path, continuation.clone(), &[("x-api-key", "key-two-456")]),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "another caller must not continue the stream"
    );
    let (status, _, _) = send(
        &server,
        rpc(&path, continuation, &[("x-api-key", "key-one-123")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

/// Runs `count` (n=10, 2 rows a turn) to its end on `server`; returns every
/// cursor token it was handed, base64-decoded.
async fn count_to_the_end(server: &Arc<Server>) -> Vec<Vec<u8>> {
    use base64::Engine;
    let init = rpc(
        &format!("/{PROTOCOL}/count/init"),
        ipc(&[("n", 10), ("batch_rows", 2)], metadata("count")),
        &[],
    );
    let (status, _, mut body) = send(server, init).await;
    assert_eq!(status, StatusCode::OK);
    let mut tokens = Vec::new();
    let mut rows = 0;
    let mut call_token = None;
    loop {
        let streams = read_streams(&body).unwrap();
        let batches = &streams[0].batches;
        rows += batches.iter().map(|b| b.batch.num_rows()).sum::<usize>();
        let Some(cursor) = batches.iter().find_map(|b| b.get(wire::STATE_KEY)) else {
            break;
        };
        if call_token.is_none() {
            call_token = batches
                .iter()
                .find_map(|b| b.get(wire::CALL_STATE_KEY))
                .map(str::to_string);
        }
        tokens.push(
            base64::engine::general_purpose::STANDARD
                .decode(cursor)
                .unwrap(),
        );
        let continuation = ipc(
            &[],
            vec![
                (wire::STATE_KEY.into(), cursor.into()),
                (wire::CALL_STATE_KEY.into(), call_token.clone().unwrap()),
            ],
        );
        let (status, _, next) = send(
            server,
            rpc(&format!("/{PROTOCOL}/count/exchange"), continuation, &[]),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&next));
        body = next;
    }
    assert_eq!(rows, 10, "every row arrives in either mode");
    tokens
}

#[tokio::test]
async fn sealed_tokens_hide_a_streams_state_from_the_caller() {
    let key = ("VGI_SIGNING_KEY", "0123456789abcdef0123456789abcdef-state");
    let readable = |tokens: &[Vec<u8>]| {
        tokens
            .iter()
            .any(|t| t.windows(4).any(|w| w == b"next") || t.windows(3).any(|w| w == b"end"))
    };
    let signed = count_to_the_end(&server(&[key])).await;
    assert!(!signed.is_empty());
    assert!(
        readable(&signed),
        "the control: signed tokens show `count`'s state"
    );
    let sealed = count_to_the_end(&server(&[key, ("KIT_TOKEN_MODE", "sealed")])).await;
    assert!(!sealed.is_empty());
    assert!(!readable(&sealed), "a sealed token shows the state");
    assert!(
        sealed.iter().all(|t| t[0] == 2),
        "sealed tokens carry version 2"
    );
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let server = server(&[("KIT_RATE_LIMIT", "2/60")]);
    let (status, headers, _) = send(&server, add(&[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers.get("x-ratelimit-limit").unwrap(), "2");
    assert_eq!(headers.get("x-ratelimit-remaining").unwrap(), "1");
    assert_eq!(send(&server, add(&[])).await.0, StatusCode::OK);
    let (status, headers, body) = send(&server, add(&[])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers.get("retry-after").unwrap(), "30");
    assert_eq!(headers.get("x-ratelimit-remaining").unwrap(), "0");
    let error = read_streams(&body).unwrap().remove(0).batches.remove(0);
    assert_eq!(error.get(wire::ERROR_CODE_KEY), Some("RESOURCE_EXHAUSTED"));
    assert_eq!(error.get(wire::ERROR_KIND_KEY), Some("rate_limited"));
    // Probes are not rate limited.
    assert_eq!(send(&server, get("/healthz")).await.0, StatusCode::OK);
}

#[tokio::test]
async fn healthz_reports_the_key_fingerprint_not_the_key() {
    let key = "k".repeat(40);
    let server = server(&[("VGI_SIGNING_KEY", key.as_str())]);
    let (_, _, body) = send(&server, get("/healthz")).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let fingerprint = json["signing_key"]["fingerprint"].as_str().unwrap();
    assert_eq!(fingerprint.len(), 16);
    assert_eq!(json["signing_key"]["ephemeral"], false);
    assert!(!String::from_utf8_lossy(&body).contains(&key));
    // The running executable's digest tells two builds apart.
    let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    let expected: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&exe)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    assert_eq!(json["binary"]["sha256"], format!("sha256:{expected}"));
    // The same key on another replica reports the same fingerprint.
    let (_, _, other) = send(&server_for_key(&key), get("/healthz")).await;
    let other: serde_json::Value = serde_json::from_slice(&other).unwrap();
    assert_eq!(
        other["signing_key"]["fingerprint"],
        json["signing_key"]["fingerprint"]
    );
}

fn server_for_key(key: &str) -> Arc<Server> {
    server(&[("VGI_SIGNING_KEY", key)])
}

#[tokio::test]
async fn metrics_count_requests_by_method_and_status() {
    let server = server(&[]);
    send(&server, add(&[])).await;
    send(
        &server,
        rpc(&format!("/{PROTOCOL}/add"), b"garbage".to_vec(), &[]),
    )
    .await;
    let text = String::from_utf8(send(&server, get("/metrics")).await.2.to_vec()).unwrap();
    assert!(
        text.contains(
            "kit_requests_total{protocol=\"kit.Demo.v1\",method=\"add\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kit_requests_total{protocol=\"kit.Demo.v1\",method=\"add\",status=\"400\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "kit_request_duration_seconds_count{protocol=\"kit.Demo.v1\",method=\"add\"} 2"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn cors_preflight_and_headers() {
    let server = server(&[("KIT_CORS_ORIGINS", "https://app.example")]);
    let preflight = Request::options(format!("/{PROTOCOL}/add"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = send(&server, preflight).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    assert_eq!(
        headers.get("access-control-allow-headers").unwrap(),
        "content-type"
    );
    let (_, headers, _) = send(&server, add(&[("origin", "https://app.example")])).await;
    assert!(
        headers
            .get("access-control-expose-headers")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("X-VGI-RPC-Error")
    );
    let (_, headers, _) = send(&server, add(&[("origin", "https://evil.example")])).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn slow_requests_get_504() {
    let server = server(&[("KIT_REQUEST_TIMEOUT", "1")]);
    let sleep = rpc(
        &format!("/{PROTOCOL}/sleep"),
        ipc(&[("milliseconds", 3000)], metadata("sleep")),
        &[],
    );
    let (status, _, body) = send(&server, sleep).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let error = read_streams(&body).unwrap().remove(0).batches.remove(0);
    assert_eq!(error.get(wire::ERROR_CODE_KEY), Some("DEADLINE_EXCEEDED"));
}

async fn raw_http(address: std::net::SocketAddr, request: Vec<u8>) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn raw_post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
        wire::CONTENT_TYPE,
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_flips_readiness() {
    let server = server(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain {
        delay: Duration::from_millis(600),
        grace: Duration::from_secs(10),
    };
    let serving = tokio::spawn(serve_until(listener, server.clone(), drain, async move {
        let _ = signal.await;
    }));
    let ready = raw_http(
        address,
        b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    let body = ipc(&[("milliseconds", 1200)], metadata("sleep"));
    let in_flight = tokio::spawn(raw_http(
        address,
        raw_post(&format!("/{PROTOCOL}/sleep"), &body),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    trigger.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let draining = raw_http(
        address,
        b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec(),
    )
    .await;
    assert!(draining.starts_with("HTTP/1.1 503"), "{draining}");
    assert!(draining.contains("draining"));

    let finished = in_flight.await.unwrap();
    assert!(
        finished.starts_with("HTTP/1.1 200"),
        "the in-flight call completes: {finished}"
    );
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("server exits after the drain")
        .unwrap()
        .unwrap();
}

/// Reads one HTTP/1.1 response with a content-length body off `stream`.
async fn read_response(stream: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .map(|v| v.trim().parse::<usize>().unwrap())
                .unwrap_or(0);
            if out.len() >= end + 4 + length {
                return text;
            }
        }
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(n > 0, "connection closed mid-response: {text}");
        out.extend_from_slice(&buffer[..n]);
    }
}

/// The 502 a proxy gives when it writes a POST onto an idle keep-alive
/// connection the draining server has just closed: the drain must serve
/// that request (telling the peer to close) rather than slam the socket.
#[tokio::test]
async fn drain_serves_requests_on_idle_keep_alive_connections_then_closes_them() {
    let server = server(&[]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (trigger, signal) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain {
        delay: Duration::ZERO,
        grace: Duration::from_secs(20),
    };
    let serving = tokio::spawn(serve_until(listener, server.clone(), drain, async move {
        let _ = signal.await;
    }));
    let body = ipc(&[("milliseconds", 1)], metadata("sleep"));
    let keep_alive_post = {
        let mut request = format!(
            "POST /{PROTOCOL}/sleep HTTP/1.1\r\nhost: x\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            wire::CONTENT_TYPE,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(&body);
        request
    };
    // Two keep-alive connections, each used once and now idle.
    let mut reused = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut quiet = tokio::net::TcpStream::connect(address).await.unwrap();
    for stream in [&mut reused, &mut quiet] {
        stream.write_all(&keep_alive_post).await.unwrap();
        let response = read_response(stream).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(!response.to_ascii_lowercase().contains("connection: close"));
    }
    trigger.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // New connections are refused: the listener is closed.
    assert!(tokio::net::TcpStream::connect(address).await.is_err());
    // The idle connection still answers its next request, then closes.
    reused.write_all(&keep_alive_post).await.unwrap();
    let response = read_response(&mut reused).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    let mut rest = Vec::new();
    reused.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // The one nobody uses is closed once quiet; then the server exits.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), quiet.read_to_end(&mut rest))
        .await
        .expect("a quiet connection is closed during the drain")
        .unwrap();
    assert!(rest.is_empty());
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .expect("server exits after the drain")
        .unwrap()
        .unwrap();
}

#[test]
fn bad_configuration_exits_64_before_binding() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_kit-service"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KIT_MAX_REQUEST_BYTES", "lots")
        .env("VGI_SIGNING_KEY", "short")
        .env("KIT_RATE_LIMIT", "fast")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for name in ["KIT_MAX_REQUEST_BYTES", "VGI_SIGNING_KEY", "KIT_RATE_LIMIT"] {
        assert!(stderr.contains(name), "{name} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("LISTENING"));
    assert!(stderr.contains("hint:"));
}

#[test]
fn sigterm_exits_zero() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kit-service"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("KIT_LOG_FORMAT", "text")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("LISTENING http://127.0.0.1:"), "{line}");
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("random per-process key"),
        "the ephemeral-key warning is loud: {stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "text logs to a pipe carry no ANSI escapes: {stderr:?}"
    );
}

#[tokio::test]
async fn an_oversized_body_gets_its_413_even_while_still_sending() {
    // Regression: the server answered 413 and closed while a 4 MiB body was
    // still arriving, so the Python client saw a dropped connection instead of
    // the 413 that makes it retry through an upload URL.
    let server = server(&[("KIT_MAX_REQUEST_BYTES", "1048576")]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain {
        delay: Duration::ZERO,
        grace: Duration::from_secs(5),
    };
    tokio::spawn(serve_until(listener, server, drain, async move {
        let _ = signal.await;
    }));
    let body = vec![0u8; 4 * 1024 * 1024];
    let response = raw_http(address, raw_post(&format!("/{PROTOCOL}/add"), &body)).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "{}",
        &response[..response.len().min(200)]
    );
    let _ = stop.send(());
}
