//! What the hostile tests share: a kit-service in this process or as a child
//! process of the real binary, Arrow request bodies, and small loopback
//! servers that count what reaches them.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arrow_array::{BinaryArray, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use bytes::Bytes;
use kit_service::config::Config;
use kit_service::serve::{Drain, build_server_at, serve_until};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};

/// A kit-service served by this test process; stops when dropped.
pub struct InProcess {
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The `local` storage directory.
    pub dir: std::path::PathBuf,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn scratch_dir(label: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "kit-hostile-{label}-{}",
        kit_service::http::random_hex(6)
    ))
}

/// The conformance protocols with `local` storage (so pointers resolve) and `extra` env.
pub async fn in_process(extra: &[(&str, &str)]) -> InProcess {
    in_process_serving(kit_service::conformance::protocols(), extra).await
}

/// `protocols` with `local` storage and `extra` env.
pub async fn in_process_serving(
    protocols: Vec<kit_service::Protocol>,
    extra: &[(&str, &str)],
) -> InProcess {
    let dir = scratch_dir("inproc");
    let mut env: HashMap<String, String> = HashMap::from([
        ("KIT_STORAGE".into(), "local".into()),
        ("KIT_STORAGE_DIR".into(), dir.display().to_string()),
    ]);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_env(&env, "127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap();
    let server = build_server_at(&config, protocols, "", bound).unwrap();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain {
        delay: Duration::ZERO,
        grace: Duration::from_secs(2),
    };
    tokio::spawn(serve_until(listener, server, drain, async move {
        let _ = signal.await;
    }));
    InProcess {
        url: format!("http://{bound}"),
        stop: Some(stop),
        dir,
    }
}

/// `kit-service serve --conformance` as a child process; killed when dropped.
pub struct ChildService {
    pub url: String,
    pub address: SocketAddr,
    child: Child,
    /// The `local` storage directory (with `Spawn::storage`).
    pub dir: std::path::PathBuf,
}

impl ChildService {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:") * 1024
    }

    /// Resident set size now (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:") * 1024
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Options of [`spawn`].
#[derive(Default)]
pub struct Spawn<'a> {
    pub env: &'a [(&'a str, &'a str)],
    /// `ulimit -n` of the child.
    pub max_open_files: Option<u32>,
    /// Serve with `local` storage in a scratch directory.
    pub storage: bool,
}

/// Starts the real binary with a clean proxy environment plus `options.env`,
/// waits (at most 30 s) for its `LISTENING` line.
pub fn spawn(options: Spawn<'_>) -> ChildService {
    let dir = scratch_dir("child");
    let binary = env!("CARGO_BIN_EXE_kit-service");
    let mut command = match options.max_open_files {
        Some(limit) => {
            let mut command = Command::new("sh");
            command.args([
                "-c",
                &format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
                binary,
            ]);
            command
        }
        None => Command::new(binary),
    };
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--conformance"])
        .env("KIT_LOG_FORMAT", "text")
        .env("RUST_LOG", "warn");
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "no_proxy",
    ] {
        command.env_remove(name);
    }
    if options.storage {
        command
            .env("KIT_STORAGE", "local")
            .env("KIT_STORAGE_DIR", dir.display().to_string());
    }
    for (name, value) in options.env {
        command.env(name, value);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the kit-service binary starts");
    let stdout = child.stdout.take().unwrap();
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = line_tx.send(line);
        }
        // Keep reading so the child never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match line_rx.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("kit-service did not print LISTENING within 30 s");
        }
    };
    let url = line
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .trim_end_matches('/')
        .to_string();
    let address = url.trim_start_matches("http://").parse().unwrap();
    ChildService {
        url,
        address,
        child,
        dir,
    }
}

/// The schema of `ConformanceService.echo_bytes`.
pub fn echo_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "data",
        DataType::Binary,
        false,
    )]))
}

pub fn echo_metadata() -> Metadata {
    vec![
        (wire::METHOD_KEY.into(), "echo_bytes".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "ConformanceService".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
    ]
}

/// An IPC stream of one `echo_bytes` batch holding `data` (no metadata).
pub fn echo_object(data: &[u8]) -> Vec<u8> {
    let schema = echo_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(BinaryArray::from(vec![data]))],
    )
    .unwrap();
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &Vec::new()).unwrap();
    writer.finish();
    out
}

/// A full `echo_bytes` request carrying `data`.
pub fn echo_request(data: &[u8]) -> Vec<u8> {
    let schema = echo_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(BinaryArray::from(vec![data]))],
    )
    .unwrap();
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &echo_metadata()).unwrap();
    writer.finish();
    out
}

/// An `echo_bytes` request whose argument is a pointer to `location`.
pub fn pointer_request(location: &str) -> Vec<u8> {
    let schema = echo_schema();
    let batch = RecordBatch::new_empty(schema.clone());
    let mut metadata = echo_metadata();
    metadata.push((wire::LOCATION_KEY.into(), location.into()));
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    out
}

/// What a call answered.
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// `vgi_rpc.log_message` of the first error batch, if any.
    pub fn error_message(&self) -> Option<String> {
        let streams = read_streams(&self.body).ok()?;
        streams.iter().flat_map(|s| s.batches.iter()).find_map(|b| {
            (b.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION"))
                .then(|| b.get(wire::LOG_MESSAGE_KEY).unwrap_or_default().to_string())
        })
    }

    /// The `data` column of the first data batch, if any.
    pub fn echoed(&self) -> Option<Vec<u8>> {
        let streams = read_streams(&self.body).ok()?;
        let batch = streams
            .iter()
            .flat_map(|s| s.batches.iter())
            .find(|b| b.batch.num_rows() == 1)?;
        let column = batch
            .batch
            .column(0)
            .as_any()
            .downcast_ref::<BinaryArray>()?;
        Some(column.value(0).to_vec())
    }
}

/// POSTs an Arrow body to `{base}/ConformanceService/echo_bytes`.
pub async fn post_echo(
    client: &reqwest::Client,
    base: &str,
    body: Vec<u8>,
    encoding: Option<&str>,
) -> Answer {
    let mut request = client
        .post(format!("{base}/ConformanceService/echo_bytes"))
        .header("content-type", wire::CONTENT_TYPE)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.expect("the service answers");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap_or_default(),
    }
}

/// A client that never uses a proxy and never decodes bodies itself.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A loopback HTTP server at `ip:0` answering every request with `respond`,
/// counting the requests it sees.
pub struct CountingServer {
    pub address: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl CountingServer {
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// What a [`CountingServer`] answers.
#[derive(Clone)]
pub enum Reply {
    /// 200 with these bytes and optional `Content-Encoding`.
    Body(Bytes, Option<&'static str>),
    /// 302 to this location.
    Redirect(String),
}

pub async fn counting_server(ip: &str, reply: Reply) -> CountingServer {
    use axum::response::IntoResponse;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let handler = move || {
        let reply = reply.clone();
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            match reply {
                Reply::Body(bytes, encoding) => {
                    let mut response = bytes.into_response();
                    if let Some(encoding) = encoding {
                        response.headers_mut().insert(
                            http::header::CONTENT_ENCODING,
                            http::HeaderValue::from_static(encoding),
                        );
                    }
                    response
                }
                Reply::Redirect(location) => (
                    http::StatusCode::FOUND,
                    [(http::header::LOCATION, location)],
                )
                    .into_response(),
            }
        }
    };
    let router = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0"))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}:0: {e}"));
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    CountingServer { address, hits }
}

/// A TCP listener that records every connection and closes it: a proxy that
/// must see nothing.
pub async fn recording_listener() -> CountingServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    CountingServer { address, hits }
}

/// `decoded` bytes of zeros as concatenated zstd frames of 1 MiB each: a few
/// dozen bytes per MiB, built without compressing `decoded` bytes.
pub fn zstd_bomb(decoded: u64) -> Vec<u8> {
    let frame = zstd::bulk::compress(&vec![0u8; 1 << 20], 19).unwrap();
    frame.repeat((decoded >> 20) as usize)
}

/// `decoded` bytes of zeros as concatenated gzip members of 1 MiB each.
pub fn gzip_bomb(decoded: u64) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0u8; 1 << 20]).unwrap();
    let member = encoder.finish().unwrap();
    member.repeat((decoded >> 20) as usize)
}

/// Samples a child's RSS every 10 ms and kills it past `kill_above` bytes,
/// so a test against a regressed server fails instead of exhausting the host.
pub struct RssGuard {
    stop: Arc<std::sync::atomic::AtomicBool>,
    killed: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssGuard {
    pub fn new(pid: u32, kill_above: u64) -> RssGuard {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stop_flag, killed_flag) = (stop.clone(), killed.clone());
        let thread = std::thread::spawn(move || {
            while !stop_flag.load(Ordering::SeqCst) {
                if proc_status_kib(pid, "VmRSS:") * 1024 > kill_above {
                    // Our own child, by pid.
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    killed_flag.store(true, Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        RssGuard {
            stop,
            killed,
            thread: Some(thread),
        }
    }

    /// Whether the guard had to kill the service.
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }
}

impl Drop for RssGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Polls `GET {base}/readyz` every 10 ms until stopped; returns the latencies.
pub struct ReadyzProbe {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<Duration>>,
}

impl ReadyzProbe {
    pub fn start(base: &str) -> ReadyzProbe {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let url = format!("{base}/readyz");
        let task = tokio::spawn(async move {
            let client = client();
            let mut latencies = Vec::new();
            loop {
                let started = std::time::Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(10), client.get(&url).send())
                    .await
                    .is_ok_and(|r| r.is_ok_and(|r| r.status().is_success()));
                latencies.push(if ok {
                    started.elapsed()
                } else {
                    Duration::from_secs(10)
                });
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    _ = stopped.changed() => break,
                }
            }
            latencies
        });
        ReadyzProbe { stop, task }
    }

    /// Stops polling; returns (samples, p99, max).
    pub async fn finish(self) -> (usize, Duration, Duration) {
        let _ = self.stop.send(true);
        let mut latencies = self.task.await.unwrap();
        latencies.sort();
        let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        (latencies.len(), p99, *latencies.last().unwrap())
    }
}

/// Sends `POST path` with `Content-Length: length` and `length` zero bytes
/// over a raw socket (stopping early if the server closes), then reads the
/// status line. `None`: the connection was closed without a status.
pub async fn post_zeros(address: SocketAddr, path: &str, length: u64) -> Option<u16> {
    send_zeros(address, "POST", path, length).await
}

/// [`post_zeros`] with any method (`PUT` for uploads).
pub async fn send_zeros(address: SocketAddr, method: &str, path: &str, length: u64) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(address).await.ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {address}\r\ncontent-type: {}\r\ncontent-length: {length}\r\n\r\n",
        wire::CONTENT_TYPE
    );
    socket.write_all(head.as_bytes()).await.ok()?;
    let chunk = vec![0u8; 1 << 20];
    let mut sent = 0u64;
    while sent < length {
        let n = chunk.len().min((length - sent) as usize);
        if socket.write_all(&chunk[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
    }
    let mut response = vec![0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(30), socket.read(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response[..read]);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A full `oversized_unary` request for `target_bytes` zero bytes.
pub fn oversized_request(target_bytes: i64) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "target_bytes",
        DataType::Int64,
        false,
    )]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow_array::Int64Array::from(vec![target_bytes]))],
    )
    .unwrap();
    let mut metadata = echo_metadata();
    metadata[0].1 = "oversized_unary".into();
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    out
}

/// A server of `protocols` (open hosting) on 127.0.0.1; stops when dropped.
pub async fn serve_protocols(protocols: Vec<kit_service::Protocol>) -> InProcess {
    let server = kit_service::Server::new(
        protocols,
        kit_service::HttpConfig::default(),
        kit_service::token::KeyRing::ephemeral(3600),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bound = listener.local_addr().unwrap();
    let (stop, signal) = tokio::sync::oneshot::channel::<()>();
    let drain = Drain {
        delay: Duration::ZERO,
        grace: Duration::from_secs(2),
    };
    tokio::spawn(serve_until(listener, server, drain, async move {
        let _ = signal.await;
    }));
    InProcess {
        url: format!("http://{bound}"),
        stop: Some(stop),
        dir: scratch_dir("unused"),
    }
}

/// A one-row request with one `int64` parameter.
pub fn int64_request(
    protocol: &str,
    version: &str,
    method: &str,
    param: &str,
    value: i64,
) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new(param, DataType::Int64, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow_array::Int64Array::from(vec![value]))],
    )
    .unwrap();
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), protocol.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), version.into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    out
}

/// The value of a metric line starting with `prefix` in `/metrics`, summed.
pub async fn metric(base: &str, prefix: &str) -> f64 {
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One upload/download URL pair from `POST {base}/__upload_url__/init`.
pub async fn vend_upload_url(base: &str) -> (String, String) {
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
    let mut body = Vec::new();
    let mut writer = StreamWriter::new(&mut body, &schema).unwrap();
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
    let answer = client()
        .post(format!("{base}/__upload_url__/init"))
        .header("content-type", wire::CONTENT_TYPE)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "upload URLs are vended");
    let urls = read_streams(&answer.bytes().await.unwrap())
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
    (column(0), column(1))
}

/// The path and query of a URL on the service (`/__objects__/...?expires=..`).
pub fn path_and_query(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme[after_scheme.find('/').unwrap()..].to_string()
}

/// One IPC stream holding `batch` with `metadata` on it.
pub fn ipc_body(batch: &RecordBatch, metadata: &Metadata) -> Vec<u8> {
    let mut body = Vec::new();
    let mut writer = StreamWriter::new(&mut body, &batch.schema()).unwrap();
    writer.write(batch, metadata).unwrap();
    writer.finish();
    body
}

/// The dispatch metadata of a call to `protocol` (declared at `version`).
pub fn call_metadata(protocol: &str, version: &str, method: &str) -> Metadata {
    vec![
        (wire::METHOD_KEY.into(), method.into()),
        (
            wire::REQUEST_VERSION_KEY.into(),
            wire::REQUEST_VERSION.into(),
        ),
        (wire::PROTOCOL_KEY.into(), protocol.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), version.into()),
    ]
}

/// What an Arrow POST answered, its IPC streams read.
pub struct Posted {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub streams: Vec<kit_service::wire::ipc::IpcStream>,
}

impl Posted {
    /// Every batch of every stream, in order.
    pub fn batches(&self) -> impl Iterator<Item = &kit_service::wire::ipc::Batch> {
        self.streams.iter().flat_map(|stream| stream.batches.iter())
    }

    /// The first value of metadata `key` on any batch.
    pub fn first(&self, key: &str) -> Option<String> {
        self.batches().find_map(|b| b.get(key).map(str::to_string))
    }

    /// The messages of the log batches (not the EXCEPTION one).
    pub fn logs(&self) -> Vec<String> {
        self.batches()
            .filter(|b| b.get(wire::LOG_LEVEL_KEY).is_some_and(|l| l != "EXCEPTION"))
            .filter_map(|b| b.get(wire::LOG_MESSAGE_KEY).map(str::to_string))
            .collect()
    }

    /// The message of the EXCEPTION batch, if any.
    pub fn exception(&self) -> Option<String> {
        self.batches().find_map(|b| {
            (b.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION"))
                .then(|| b.get(wire::LOG_MESSAGE_KEY).unwrap_or_default().to_string())
        })
    }
}

/// POSTs an Arrow `body` to `url` with `headers`; the body must be Arrow.
pub async fn post_arrow(url: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Posted {
    let mut request = client()
        .post(url)
        .header("content-type", wire::CONTENT_TYPE)
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let answer = request.send().await.expect("the service answers");
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let body = answer.bytes().await.unwrap();
    let streams = read_streams(&body).unwrap_or_else(|error| {
        panic!(
            "{url} answered {status} with a body that is not Arrow ({error}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    Posted {
        status,
        headers,
        body,
        streams,
    }
}
