//! External storage through real sockets on 127.0.0.1: pointer batches with
//! the local backend, the fetch client's integrity and safety rules, and
//! hedging against a server that delays one range.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow_array::{BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use kit_service::config::Config;
use kit_service::serve::{Drain, build_server_at, serve_until};
use kit_service::storage::fetch::{FetchError, Fetcher};
use kit_service::storage::settings::FetchSettings;
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};

struct Running {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    dir: std::path::PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// kit-service (conformance protocols) with local storage on a free port.
async fn start(extra: &[(&str, &str)]) -> Running {
    let dir = std::env::temp_dir().join(format!(
        "kit-storage-test-{}",
        kit_service::http::random_hex(6)
    ));
    let mut env: HashMap<String, String> = HashMap::from([
        ("KIT_STORAGE".into(), "local".into()),
        ("KIT_STORAGE_DIR".into(), dir.display().to_string()),
        ("KIT_EXTERNALIZE_THRESHOLD_BYTES".into(), "65536".into()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_env(&env, "127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap();
    let server =
        build_server_at(&config, kit_service::conformance::protocols(), "", bound).unwrap();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain {
        delay: Duration::ZERO,
        grace: Duration::from_secs(5),
    };
    tokio::spawn(serve_until(listener, server, drain, async move {
        let _ = signal.await;
    }));
    Running {
        url: format!("http://{bound}"),
        stop: Some(stop),
        dir,
    }
}

fn loopback_fetcher() -> Fetcher {
    Fetcher::new(FetchSettings {
        allowlist: vec!["http://127.0.0.1".into()],
        ..FetchSettings::default()
    })
    .unwrap()
}

fn echo_bytes_request(data: &[u8]) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "data",
        DataType::Binary,
        false,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(BinaryArray::from(vec![data]))],
    )
    .unwrap();
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), "echo_bytes".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "ConformanceService".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    out
}

async fn call_echo(url: &str, data: &[u8]) -> wire::Batch {
    let response = reqwest::Client::new()
        .post(format!("{url}/ConformanceService/echo_bytes"))
        .header("content-type", wire::CONTENT_TYPE)
        .body(echo_bytes_request(data))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("vgi-externalization-enabled")
            .unwrap(),
        "true"
    );
    assert_eq!(
        response.headers().get("vgi-upload-url-support").unwrap(),
        "true"
    );
    let body = response.bytes().await.unwrap();
    read_streams(&body).unwrap().remove(0).batches.remove(0)
}

#[tokio::test]
async fn large_results_travel_as_pointers_and_verify() {
    let server = start(&[]).await;
    let data: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let pointer = call_echo(&server.url, &data).await;
    assert_eq!(
        pointer.batch.num_rows(),
        0,
        "the body carries a zero-row pointer"
    );
    let location = pointer
        .get(wire::LOCATION_KEY)
        .expect("vgi_rpc.location")
        .to_string();
    let sha256 = pointer
        .get(wire::LOCATION_SHA256_KEY)
        .expect("sha256")
        .to_string();
    assert!(
        location.contains("/__objects__/vgi-rpc/"),
        "objects live under the prefix: {location}"
    );

    let fetched = loopback_fetcher()
        .fetch(&location, Some(&sha256))
        .await
        .unwrap();
    let stream = read_streams(&fetched).unwrap().remove(0);
    let column = stream.batches[0]
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<BinaryArray>()
        .unwrap()
        .value(0)
        .to_vec();
    assert!(column == data, "byte-identical");

    // A wrong checksum is a clear error, and so is a tampered URL.
    let wrong = loopback_fetcher()
        .fetch(&location, Some(&"0".repeat(64)))
        .await
        .unwrap_err();
    assert!(matches!(wrong, FetchError::Checksum { .. }), "{wrong}");
    let tampered = location.replace("sig=", "sig=00");
    let refused = loopback_fetcher().fetch(&tampered, None).await.unwrap_err();
    assert!(
        matches!(refused, FetchError::Status { status: 403, .. }),
        "{refused}"
    );

    // Small results stay inline.
    let small = call_echo(&server.url, b"tiny").await;
    assert_eq!(small.batch.num_rows(), 1);
    assert!(small.get(wire::LOCATION_KEY).is_none());
}

#[tokio::test]
async fn corrupted_objects_fail_their_checksum() {
    let server = start(&[]).await;
    let data = vec![42u8; 512 * 1024];
    let pointer = call_echo(&server.url, &data).await;
    let location = pointer.get(wire::LOCATION_KEY).unwrap().to_string();
    let sha256 = pointer.get(wire::LOCATION_SHA256_KEY).unwrap().to_string();
    let key = location
        .split("/__objects__/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap();
    let path = server.dir.join(key);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 100;
    bytes[last] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let error = loopback_fetcher()
        .fetch(&location, Some(&sha256))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("SHA-256 checksum mismatch"),
        "{error}"
    );
}

#[tokio::test]
async fn compressed_objects_are_decoded() {
    let server = start(&[("KIT_EXTERNALIZE_COMPRESSION", "zstd:3")]).await;
    let data = vec![7u8; 1024 * 1024];
    let pointer = call_echo(&server.url, &data).await;
    let location = pointer.get(wire::LOCATION_KEY).unwrap().to_string();
    let head = reqwest::Client::new().head(&location).send().await.unwrap();
    assert_eq!(
        head.headers().get(header::CONTENT_ENCODING).unwrap(),
        "zstd"
    );
    assert!(
        head.content_length().unwrap_or(u64::MAX) < 64 * 1024
            || head
                .headers()
                .get(header::CONTENT_LENGTH)
                .unwrap()
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                < 64 * 1024
    );
    let fetched = loopback_fetcher()
        .fetch(&location, pointer.get(wire::LOCATION_SHA256_KEY))
        .await
        .unwrap();
    assert!(fetched.len() > data.len());
}

#[tokio::test]
async fn upload_urls_carry_requests_over_the_request_limit() {
    let server = start(&[("KIT_MAX_REQUEST_BYTES", "65536")]).await;
    let client = reqwest::Client::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    let direct = client
        .post(format!("{}/ConformanceService/echo_bytes", server.url))
        .header("content-type", wire::CONTENT_TYPE)
        .body(echo_bytes_request(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Vend a URL pair, PUT the raw request there, send a pointer instead.
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::Int64,
        true,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow_array::Int64Array::from(vec![1]))],
    )
    .unwrap();
    let mut vend = Vec::new();
    let mut writer = StreamWriter::new(&mut vend, &schema).unwrap();
    writer
        .write(
            &batch,
            &vec![
                (wire::METHOD_KEY.into(), "__upload_url__".into()),
                (wire::REQUEST_VERSION_KEY.into(), "1".into()),
            ],
        )
        .unwrap();
    writer.finish();
    let vended = client
        .post(format!("{}/__upload_url__/init", server.url))
        .header("content-type", wire::CONTENT_TYPE)
        .body(vend)
        .send()
        .await
        .unwrap();
    assert_eq!(vended.status(), StatusCode::OK);
    let urls = read_streams(&vended.bytes().await.unwrap())
        .unwrap()
        .remove(0)
        .batches
        .remove(0)
        .batch;
    let column = |i: usize| {
        urls.column(i)
            .as_any()
            .downcast_ref::<arrow_array::StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    };
    let (upload_url, download_url) = (column(0), column(1));
    let put = client
        .put(&upload_url)
        .header("content-type", wire::CONTENT_TYPE)
        .body(echo_bytes_request(&data))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);

    let pointer_schema = Arc::new(Schema::new(vec![Field::new(
        "data",
        DataType::Binary,
        false,
    )]));
    let empty = RecordBatch::new_empty(pointer_schema.clone());
    let mut metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), "echo_bytes".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "ConformanceService".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
    ];
    metadata.push((wire::LOCATION_KEY.into(), download_url));
    let mut body = Vec::new();
    let mut writer = StreamWriter::new(&mut body, &pointer_schema).unwrap();
    writer.write(&empty, &metadata).unwrap();
    writer.finish();
    let response = client
        .post(format!("{}/ConformanceService/echo_bytes", server.url))
        .header("content-type", wire::CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let result = read_streams(&response.bytes().await.unwrap())
        .unwrap()
        .remove(0)
        .batches
        .remove(0);
    let location = result
        .get(wire::LOCATION_KEY)
        .expect("the 300 kB echo comes back as a pointer")
        .to_string();
    let fetched = loopback_fetcher()
        .fetch(&location, result.get(wire::LOCATION_SHA256_KEY))
        .await
        .unwrap();
    let echoed = read_streams(&fetched)
        .unwrap()
        .remove(0)
        .batches
        .remove(0)
        .batch;
    assert_eq!(
        echoed
            .column(0)
            .as_any()
            .downcast_ref::<BinaryArray>()
            .unwrap()
            .value(0),
        data.as_slice()
    );
}

/// A range server that serves `data` and stalls every request for the first
/// range once, so only a hedge can finish that chunk quickly.
#[derive(Clone)]
struct SlowRange {
    data: Bytes,
    stalled: Arc<AtomicUsize>,
    redirect_to: Option<String>,
    /// The first range's first request stalls 1 s (not 5) and its second,
    /// the hedge, fails at once.
    failing_hedge: bool,
}

async fn ranged(State(state): State<SlowRange>, headers: HeaderMap) -> Response {
    if let Some(target) = &state.redirect_to {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::FOUND;
        response
            .headers_mut()
            .insert(header::LOCATION, target.parse().unwrap());
        return response;
    }
    let total = state.data.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.strip_prefix("bytes="));
    let Some((start, end)) = range.and_then(|r| r.split_once('-')) else {
        let mut response = Response::new(Body::from(state.data.clone()));
        response
            .headers_mut()
            .insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
        return response;
    };
    let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
    if start == 0 && end > 0 {
        match state.stalled.fetch_add(1, Ordering::SeqCst) {
            0 if state.failing_hedge => tokio::time::sleep(Duration::from_secs(1)).await,
            0 => tokio::time::sleep(Duration::from_secs(5)).await,
            1 if state.failing_hedge => {
                let mut response = Response::new(Body::from("overloaded"));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                return response;
            }
            _ => {}
        }
    }
    let mut response = Response::new(Body::from(state.data.slice(start..=end.min(total - 1))));
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    response.headers_mut().insert(
        header::CONTENT_RANGE,
        format!("bytes {start}-{end}/{total}").parse().unwrap(),
    );
    response
}

async fn serve_ranges(state: SlowRange) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new().fallback(ranged).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test]
async fn a_stalled_range_is_hedged() {
    let data = Bytes::from(
        (0..16 * 1024 * 1024u32)
            .map(|i| (i % 253) as u8)
            .collect::<Vec<u8>>(),
    );
    let stalled = Arc::new(AtomicUsize::new(0));
    let address = serve_ranges(SlowRange {
        data: data.clone(),
        stalled: stalled.clone(),
        redirect_to: None,
        failing_hedge: false,
    })
    .await;
    let fetcher = Fetcher::new(FetchSettings {
        allowlist: vec!["http://127.0.0.1".into()],
        parallel_threshold_bytes: 1024 * 1024,
        chunk_size_bytes: 1024 * 1024,
        max_parallel_requests: 4,
        ..FetchSettings::default()
    })
    .unwrap();
    let started = Instant::now();
    let fetched = fetcher
        .fetch(&format!("http://{address}/object"), None)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(fetched == data, "parallel ranges reassemble the object");
    assert!(
        fetcher.stats().hedges.load(Ordering::SeqCst) >= 1,
        "the stalled chunk was hedged"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "the hedge won over the 5 s stall: {elapsed:?}"
    );
}

/// Finding: a hedge that failed fast failed its chunk, though the request it
/// duplicated was on its way to succeed: the chunk was asked for a third
/// time (a retry spent), and with no retries left the whole fetch failed.
#[tokio::test]
async fn a_failing_hedge_leaves_the_chunk_to_the_request_it_duplicated() {
    let data = Bytes::from(
        (0..16 * 1024 * 1024u32)
            .map(|i| (i % 241) as u8)
            .collect::<Vec<u8>>(),
    );
    let requests = Arc::new(AtomicUsize::new(0));
    let address = serve_ranges(SlowRange {
        data: data.clone(),
        stalled: requests.clone(),
        redirect_to: None,
        failing_hedge: true,
    })
    .await;
    let fetcher = Fetcher::new(FetchSettings {
        allowlist: vec!["http://127.0.0.1".into()],
        parallel_threshold_bytes: 1024 * 1024,
        chunk_size_bytes: 1024 * 1024,
        max_parallel_requests: 4,
        ..FetchSettings::default()
    })
    .unwrap();
    let fetched = fetcher
        .fetch(&format!("http://{address}/object"), None)
        .await
        .unwrap_or_else(|error| panic!("the stalled request still delivers: {error}"));
    assert!(fetched == data, "parallel ranges reassemble the object");
    assert_eq!(fetcher.stats().hedges.load(Ordering::SeqCst), 1);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the first range was asked for twice: the stalled request and its hedge (503)"
    );
}

#[tokio::test]
async fn redirects_to_forbidden_targets_are_refused() {
    let address = serve_ranges(SlowRange {
        data: Bytes::from_static(b"x"),
        stalled: Arc::new(AtomicUsize::new(1)),
        redirect_to: Some("http://169.254.169.254/latest/meta-data/".into()),
        failing_hedge: false,
    })
    .await;
    let error = loopback_fetcher()
        .fetch(&format!("http://{address}/object"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Refused { .. }), "{error}");
    assert!(error.to_string().contains("169.254.169.254"), "{error}");
    // A redirect to loopback outside the allowlisted origin is refused too.
    let bouncer = serve_ranges(SlowRange {
        data: Bytes::from_static(b"x"),
        stalled: Arc::new(AtomicUsize::new(1)),
        redirect_to: Some("http://localhost:9/secret".into()),
        failing_hedge: false,
    })
    .await;
    let only_bouncer = Fetcher::new(FetchSettings {
        allowlist: vec![format!("http://{bouncer}")],
        ..FetchSettings::default()
    })
    .unwrap();
    let error = only_bouncer
        .fetch(&format!("http://{bouncer}/object"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Refused { .. }), "{error}");
    assert!(error.to_string().contains("localhost"), "{error}");
    // Without the allowlist, plain http and loopback are refused before any connection.
    let strict = Fetcher::new(FetchSettings::default()).unwrap();
    assert!(matches!(
        strict
            .fetch(&format!("http://{address}/object"), None)
            .await,
        Err(FetchError::Refused { .. })
    ));
}

#[tokio::test]
async fn fetch_limits_are_enforced() {
    let data = Bytes::from(vec![1u8; 2 * 1024 * 1024]);
    let address = serve_ranges(SlowRange {
        data,
        stalled: Arc::new(AtomicUsize::new(1)),
        redirect_to: None,
        failing_hedge: false,
    })
    .await;
    let fetcher = Fetcher::new(FetchSettings {
        allowlist: vec!["http://127.0.0.1".into()],
        max_fetch_bytes: 1024 * 1024,
        ..FetchSettings::default()
    })
    .unwrap();
    let error = fetcher
        .fetch(&format!("http://{address}/object"), None)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::TooLarge { .. }), "{error}");
}
