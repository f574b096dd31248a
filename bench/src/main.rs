//! kit-bench: kit-service against the Python reference server and, when
//! given, the crates.io `vgi-rpc` Rust crate, side by side on 127.0.0.1, in
//! one run.
//!
//! Starts every server, drives them with one Rust load client (HTTP/1.1
//! keep-alive, zstd request bodies like the Python client sends), and prints
//! one Markdown table with per-server medians, ratios against kit-service and
//! the targets:
//! - process start to first ready `GET /health`;
//! - small unary calls/s at 1 and 8 connections, p50 and p99 latency;
//! - server CPU per small call, from `/proc/<pid>/stat`;
//! - a ~100 MB result as a unary call and as a producer stream, with and
//!   without zstd: MB/s and peak server RSS (VmHWM, reset per phase through
//!   `/proc/<pid>/clear_refs`) as a multiple of the payload;
//! - `deploy-kit doctor --offline` and `deploy-kit plan` wall time;
//! - `--phases lambda` (not run by default): `kit-service lambda` from
//!   process start to its first answered invocation under the fake Runtime
//!   API, with and without storage and OTel (`cold_start.rs`);
//! - `--phases deploy` (not run by default): `deploy-kit up` of a crate made
//!   by `deploy-kit new`, cold, after a one-line change and unchanged, on
//!   moto + SeaweedFS (`deploy.rs`; run under `bash .ci/with-aws`);
//! - `--phases demo`: the typed `kit.Demo.v1` (`kit-service serve`) against
//!   the same protocol declared with schema strings (`kit-service serve
//!   --dynamic-demo`), both from the `--kit` binary: `add` calls/s, latency
//!   and CPU at 1 and 8 connections, and start to ready, with the ratio.
//!
//! Every phase runs `--repeat` rounds, servers interleaved within a round so
//! they share the same background load; cells are medians with the min-max
//! range of the rounds. Each row is printed as soon as it is measured, so a
//! failing later phase keeps the numbers of the earlier ones. Each large-result workload first runs `--warmup`
//! uncounted rounds per server (default 1), so cells compare steady state, not
//! a process's first touch of fresh pages. Bounded: each load phase runs `--seconds`, and every
//! server is killed at the end (also on error, through `Drop`). Usage:
//! `kit-bench --kit PATH --python PATH [--rust-peer PATH] [--deploy-kit PATH]`

mod cold_start;
mod deploy;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};

const USAGE: &str = "usage: kit-bench --kit PATH [--python PATH] [--rust-peer PATH] [--deploy-kit PATH] \
[--lambda-kit PATH] [--lambda-otel PATH] \
[--server-cpus LIST] [--client-cpus LIST] [--seconds N] [--repeat N] [--warmup N] [--starts N] [--cli-runs N] [--stream-rows N] [--phases start,load,large,cli,demo,lambda,deploy] [--workloads unary,unary-zstd,producer,producer-zstd]";

/// Every `--phases` name, in the order they run.
const PHASES: [&str; 7] = ["start", "load", "large", "cli", "demo", "lambda", "deploy"];

/// The phases run when `--phases` is not given: `lambda` needs a build with
/// the `lambda` feature and `deploy` needs moto and SeaweedFS
/// (`bash .ci/with-aws`), so they run only when asked for.
const DEFAULT_PHASES: [&str; 5] = ["start", "load", "large", "cli", "demo"];

struct Args {
    kit: String,
    python: Option<String>,
    rust_peer: Option<String>,
    deploy_kit: Option<String>,
    /// `kit-service` built with `--features lambda,s3` (`--phases lambda`).
    lambda_kit: Option<String>,
    /// The same with `otel` too.
    lambda_otel: Option<String>,
    seconds: u64,
    repeat: usize,
    warmup: usize,
    starts: usize,
    cli_runs: usize,
    stream_rows: i64,
    phases: Vec<String>,
    workloads: Vec<String>,
    /// CPUs every server process is pinned to (`taskset -c` list), so the
    /// load client and the server under test do not share cores.
    server_cpus: Option<String>,
    /// CPUs this process (the load client) is pinned to.
    client_cpus: Option<String>,
}

fn parse_args(raw: Vec<String>) -> Result<Args> {
    let mut args = Args {
        kit: String::new(),
        python: None,
        rust_peer: None,
        deploy_kit: None,
        lambda_kit: None,
        lambda_otel: None,
        seconds: 4,
        repeat: 3,
        warmup: 1,
        starts: 7,
        cli_runs: 21,
        stream_rows: 6_250_000,
        phases: DEFAULT_PHASES.map(String::from).to_vec(),
        workloads: Large::ALL.map(|w| w.name().to_string()).to_vec(),
        server_cpus: None,
        client_cpus: None,
    };
    let number = |flag: &str, value: &str| -> Result<u64> {
        value
            .parse()
            .with_context(|| format!("`{flag}` must be a number, got `{value}`"))
    };
    let mut iter = raw.into_iter();
    while let Some(flag) = iter.next() {
        let value = iter
            .next()
            .with_context(|| format!("`{flag}` needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--kit" => args.kit = value,
            "--python" => args.python = Some(value),
            "--rust-peer" => args.rust_peer = Some(value),
            "--deploy-kit" => args.deploy_kit = Some(value),
            "--lambda-kit" => args.lambda_kit = Some(value),
            "--lambda-otel" => args.lambda_otel = Some(value),
            "--server-cpus" => args.server_cpus = Some(cpu_list(&flag, value)?),
            "--client-cpus" => args.client_cpus = Some(cpu_list(&flag, value)?),
            "--seconds" => args.seconds = number(&flag, &value)?.max(1),
            "--repeat" => args.repeat = number(&flag, &value)?.max(1) as usize,
            "--warmup" => args.warmup = number(&flag, &value)? as usize,
            "--starts" => args.starts = number(&flag, &value)?.max(1) as usize,
            "--cli-runs" => args.cli_runs = number(&flag, &value)?.max(1) as usize,
            "--stream-rows" => args.stream_rows = number(&flag, &value)?.max(4) as i64,
            "--phases" => {
                args.phases = value.split(',').map(str::to_owned).collect();
                if let Some(unknown) = args.phases.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    bail!("unknown phase `{unknown}`\n{USAGE}");
                }
            }
            "--workloads" => {
                args.workloads = value.split(',').map(str::to_owned).collect();
                if let Some(unknown) = args
                    .workloads
                    .iter()
                    .find(|w| !Large::ALL.iter().any(|l| l.name() == w.as_str()))
                {
                    bail!("unknown workload `{unknown}`\n{USAGE}");
                }
            }
            other => bail!("unknown flag `{other}`\n{USAGE}"),
        }
    }
    if args.kit.is_empty() {
        bail!("`--kit` is required\n{USAGE}");
    }
    // Phases run programs from other directories (the CLI phase from a
    // temporary project), so a relative path must not depend on the cwd.
    args.kit = absolute("--kit", &args.kit)?;
    for (flag, path) in [
        ("--python", &mut args.python),
        ("--rust-peer", &mut args.rust_peer),
        ("--deploy-kit", &mut args.deploy_kit),
        ("--lambda-kit", &mut args.lambda_kit),
        ("--lambda-otel", &mut args.lambda_otel),
    ] {
        if let Some(path) = path {
            *path = absolute(flag, path)?;
        }
    }
    if args.deploy_kit.is_none() {
        // `cargo build --release -p deploy-kit` puts it next to kit-service.
        let sibling = std::path::Path::new(&args.kit).with_file_name("deploy-kit");
        if sibling.is_file() {
            args.deploy_kit = Some(sibling.to_string_lossy().into_owned());
        }
    }
    Ok(args)
}

/// A `taskset -c` CPU list (`1`, `0,2`, `2-3`), checked for its shape.
fn cpu_list(flag: &str, value: String) -> Result<String> {
    let valid = !value.is_empty()
        && value.split(',').all(|part| {
            let mut ends = part.splitn(2, '-');
            ends.all(|end| !end.is_empty() && end.bytes().all(|b| b.is_ascii_digit()))
        });
    if !valid {
        bail!("`{flag}` takes a CPU list such as `1`, `0,2` or `2-3`, got `{value}`");
    }
    Ok(value)
}

/// Pins this process, every thread it has and every thread it will start,
/// to `cpus` (`taskset -a -p`): the load client's runtime is already running.
fn pin_self(cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("failed to run `taskset` (util-linux) for `--client-cpus`")?;
    if !status.success() {
        bail!("`taskset -a -p -c {cpus}` failed: {status}");
    }
    Ok(())
}

/// `path` made absolute if it names a file by path (has a `/`); a bare name
/// is left for `PATH` to resolve.
fn absolute(flag: &str, path: &str) -> Result<String> {
    if !path.contains('/') {
        return Ok(path.to_string());
    }
    let canonical = std::fs::canonicalize(path)
        .with_context(|| format!("`{flag}` names `{path}`, which cannot be found"))?;
    Ok(canonical.to_string_lossy().into_owned())
}

/// Which implementation a server is; the column order of the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kit,
    Python,
    RustCrate,
    /// `kit-service serve`: the demo on typed methods.
    TypedDemo,
    /// `kit-service serve --dynamic-demo`: the demo declared with schema strings.
    DynamicDemo,
}

impl Kind {
    fn title(self) -> &'static str {
        match self {
            Kind::Kit => "kit-service",
            Kind::Python => "python",
            Kind::RustCrate => "vgi-rpc crate",
            Kind::TypedDemo => "typed demo",
            Kind::DynamicDemo => "string-typed demo",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Kind::Kit => "kit",
            Kind::Python => "python",
            Kind::RustCrate => "crate",
            Kind::TypedDemo => "typed",
            Kind::DynamicDemo => "string-typed",
        }
    }
}

/// How to start one server on a given port.
struct ServerSpec {
    kind: Kind,
    program: String,
    /// `--server-cpus`: started through `taskset -c`, which execs the
    /// server in place (same pid, so its CPU time is still read from /proc).
    cpus: Option<String>,
}

impl ServerSpec {
    fn command(&self, port: u16) -> Command {
        let mut command = match &self.cpus {
            Some(cpus) => {
                let mut command = Command::new("taskset");
                command.args(["-c", cpus, &self.program]);
                command
            }
            None => Command::new(&self.program),
        };
        match self.kind {
            Kind::Kit => {
                command
                    .args([
                        "serve",
                        "--conformance",
                        "--listen",
                        &format!("127.0.0.1:{port}"),
                    ])
                    // Access logs stay on (JSON, as deployed); only their output is discarded.
                    .env("KIT_LOG_FORMAT", "json")
                    .env("RUST_LOG", "info");
            }
            Kind::TypedDemo | Kind::DynamicDemo => {
                command.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
                if self.kind == Kind::DynamicDemo {
                    command.arg("--dynamic-demo");
                }
                command
                    .env("KIT_LOG_FORMAT", "json")
                    .env("RUST_LOG", "info");
            }
            Kind::Python | Kind::RustCrate => {
                command.args(["--http", &port.to_string()]);
            }
        }
        command
    }
}

/// A running server process and its base URL; killed on drop.
struct Server {
    kind: Kind,
    child: Child,
    url: String,
    start_to_ready: Duration,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Spawns the server and polls `GET /health` every 500 µs until it answers 2xx.
async fn start(spec: &ServerSpec) -> Result<Server> {
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let started = Instant::now();
    let child = spec
        .command(port)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("failed to start `{}`", spec.program))?;
    let mut server = Server {
        kind: spec.kind,
        child,
        url,
        start_to_ready: Duration::ZERO,
    };
    loop {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{} did not become ready within 60 s", spec.kind.title());
        }
        if let Some(status) = server.child.try_wait()? {
            bail!("{} exited before it was ready: {status}", spec.kind.title());
        }
        if let Ok(response) = client.get(format!("{}/health", server.url)).send().await
            && response.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    server.start_to_ready = started.elapsed();
    Ok(server)
}

/// A zstd request body calling `ConformanceService.method` (version 2.0.0).
fn request(method: &str, fields: Vec<Field>, columns: Vec<arrow_array::ArrayRef>) -> Vec<u8> {
    request_to("ConformanceService", "2.0.0", method, fields, columns)
}

/// A zstd request body calling `protocol.method`, declaring the protocol
/// version the server requires (`vgi_rpc.protocol_version`).
fn request_to(
    protocol: &str,
    version: &str,
    method: &str,
    fields: Vec<Field>,
    columns: Vec<arrow_array::ArrayRef>,
) -> Vec<u8> {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("valid request");
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (
            wire::REQUEST_VERSION_KEY.into(),
            wire::REQUEST_VERSION.into(),
        ),
        (wire::PROTOCOL_KEY.into(), protocol.into()),
        (wire::PROTOCOL_VERSION_KEY.into(), version.into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).expect("valid schema");
    writer.write(&batch, &metadata).expect("encodes");
    writer.finish();
    zstd::bulk::compress(&out, 1).expect("zstd")
}

/// One small unary call the load phases repeat: a path and a request body.
#[derive(Clone)]
struct SmallCall {
    path: &'static str,
    body: bytes::Bytes,
}

impl SmallCall {
    /// `ConformanceService.echo_string("hello")`.
    fn echo() -> SmallCall {
        SmallCall {
            path: "/ConformanceService/echo_string",
            body: request(
                "echo_string",
                vec![Field::new("value", DataType::Utf8, false)],
                vec![Arc::new(StringArray::from(vec!["hello"]))],
            )
            .into(),
        }
    }

    /// `kit.Demo.v1.add(40, 2)`, version 1.0.0.
    fn demo_add() -> SmallCall {
        SmallCall {
            path: "/kit.Demo.v1/add",
            body: request_to(
                kit_service::demo::NAME,
                "1.0.0",
                "add",
                vec![
                    Field::new("a", DataType::Int64, false),
                    Field::new("b", DataType::Int64, false),
                ],
                vec![
                    Arc::new(Int64Array::from(vec![40])),
                    Arc::new(Int64Array::from(vec![2])),
                ],
            )
            .into(),
        }
    }
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields
        .get(11)
        .and_then(|u| u.parse::<f64>().ok())
        .unwrap_or(0.0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
    // CLK_TCK is 100 on Linux x86_64.
    Ok(ticks / 100.0)
}

/// Resets the process's peak RSS (VmHWM) to its current RSS.
fn reset_peak_rss(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Peak resident set (VmHWM) in bytes since the last [`reset_peak_rss`].
fn peak_rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

struct Load {
    calls_per_second: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_call: Duration,
}

/// Repeats `call` on `connections` keep-alive connections for `seconds`.
/// Every answer must be a 2xx without an error batch (checked on the first
/// answer of each connection: decoding every one would load the client).
async fn load(server: &Server, call: &SmallCall, connections: usize, seconds: u64) -> Result<Load> {
    let body = call.body.clone();
    let url = format!("{}{}", server.url, call.path);
    let cpu_before = cpu_seconds(server.child.id())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(1)
            .build()?;
        let (url, body) = (url.clone(), body.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", wire::CONTENT_TYPE)
                    .header("content-encoding", "zstd")
                    .header("accept-encoding", "zstd, gzip")
                    .header("vgi-accept-max-response-bytes", "268435456")
                    .body(body.clone())
                    .send()
                    .await?;
                let status = response.status();
                if latencies.is_empty() {
                    check_no_error(
                        &read_streams(&body_of(response).await?).context("answer is Arrow IPC")?,
                    )?;
                } else {
                    response.bytes().await?;
                }
                if !status.is_success() {
                    anyhow::bail!("HTTP {status}");
                }
                latencies.push(started.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies = Vec::new();
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(server.child.id())? - cpu_before;
    latencies.sort();
    let calls = latencies.len().max(1);
    Ok(Load {
        calls_per_second: calls as f64 / elapsed,
        p50: latencies[calls / 2],
        p99: latencies[(calls * 99 / 100).min(calls - 1)],
        cpu_per_call: Duration::from_secs_f64(cpu / calls as f64),
    })
}

/// The ~100 MB result workloads.
#[derive(Clone, Copy)]
enum Large {
    Unary { compressed: bool },
    Producer { compressed: bool },
}

impl Large {
    const ALL: [Large; 4] = [
        Large::Unary { compressed: false },
        Large::Unary { compressed: true },
        Large::Producer { compressed: false },
        Large::Producer { compressed: true },
    ];

    fn label(self, megabytes: f64) -> String {
        let (shape, compressed) = match self {
            Large::Unary { compressed } => ("unary (`oversized_unary`, zeros)", compressed),
            Large::Producer { compressed } => (
                "producer stream (`produce_large_batches`, 4 batches)",
                compressed,
            ),
        };
        let coding = if compressed { "zstd" } else { "uncompressed" };
        format!("{megabytes:.0} MB {shape}, {coding}")
    }

    /// The `--workloads` name.
    fn name(self) -> &'static str {
        match self {
            Large::Unary { compressed: false } => "unary",
            Large::Unary { compressed: true } => "unary-zstd",
            Large::Producer { compressed: false } => "producer",
            Large::Producer { compressed: true } => "producer-zstd",
        }
    }

    fn compressed(self) -> bool {
        match self {
            Large::Unary { compressed } | Large::Producer { compressed } => compressed,
        }
    }
}

/// Reads a response body, undoing a zstd content coding.
async fn body_of(response: reqwest::Response) -> Result<bytes::Bytes> {
    body_into(response, &mut Receive::default()).await
}

/// The client's buffers, kept across calls and servers like a client that
/// keeps its receive buffer: the body as it arrived and, for a zstd body, what
/// it decodes to. A 25 MB turn then lands in pages that are already mapped
/// (the same for every server), so the client's first touches of fresh memory
/// are in no server's number.
#[derive(Default)]
struct Receive {
    raw: bytes::BytesMut,
    decoded: Vec<u8>,
}

impl Receive {
    /// Takes back the buffer of a body [`body_into`] returned, once nothing
    /// else holds it (every batch read from it is dropped).
    fn reclaim(&mut self, body: bytes::Bytes) {
        let Ok(buffer) = body.try_into_mut() else {
            return;
        };
        if self.raw.capacity() == 0 {
            self.raw = buffer;
        } else {
            self.decoded = buffer.into();
        }
    }
}

/// [`body_of`] into `buffers`. A zstd body that declares its content size
/// (every server's does) is decoded in one call into a buffer of that size,
/// as the Python client does; one without it, by streaming.
async fn body_into(mut response: reqwest::Response, buffers: &mut Receive) -> Result<bytes::Bytes> {
    let status = response.status();
    let zstd = response
        .headers()
        .get("content-encoding")
        .or_else(|| response.headers().get("x-vgi-content-encoding"))
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"zstd"));
    let mut buffer = std::mem::take(&mut buffers.raw);
    buffer.clear();
    buffer.reserve(response.content_length().unwrap_or(0) as usize);
    while let Some(chunk) = response.chunk().await? {
        buffer.extend_from_slice(&chunk);
    }
    let mut body = buffer.freeze();
    if zstd {
        let mut decoded = std::mem::take(&mut buffers.decoded);
        decoded.clear();
        match zstd::zstd_safe::get_frame_content_size(&body) {
            Ok(Some(size)) => {
                decoded.reserve(usize::try_from(size)?);
                zstd::bulk::Decompressor::new()?.decompress_to_buffer(&body[..], &mut decoded)?;
            }
            _ => {
                std::io::copy(
                    &mut zstd::stream::read::Decoder::new(&body[..])?,
                    &mut decoded,
                )?;
            }
        }
        // The raw buffer goes back now; the decoded one when the caller is done.
        buffers.raw = body.try_into_mut().unwrap_or_default();
        body = decoded.into();
    }
    if !status.is_success() {
        let streams = read_streams(&body).unwrap_or_default();
        check_no_error(&streams)?;
        bail!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        );
    }
    Ok(body)
}

/// Fails on an error batch (`vgi_rpc.log_level` = EXCEPTION) in a response.
fn check_no_error(streams: &[kit_service::wire::ipc::IpcStream]) -> Result<()> {
    for batch in streams.iter().flat_map(|s| &s.batches) {
        if batch.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION") {
            bail!(
                "server returned an error: {}",
                batch.get(wire::LOG_MESSAGE_KEY).unwrap_or("?")
            );
        }
    }
    Ok(())
}

/// Runs one large-result workload; returns (MB/s of Arrow payload, peak RSS / payload).
/// `receive` holds the client's buffers, kept across calls and servers.
async fn large(
    server: &Server,
    workload: Large,
    rows: i64,
    receive: &mut Receive,
) -> Result<(f64, f64)> {
    let client = reqwest::Client::new();
    let accept = if workload.compressed() {
        "zstd"
    } else {
        "identity"
    };
    let pid = server.child.id();
    reset_peak_rss(pid);
    let started = Instant::now();
    let payload = match workload {
        Large::Unary { .. } => {
            let bytes = rows * 16;
            let body = request(
                "oversized_unary",
                vec![Field::new("target_bytes", DataType::Int64, false)],
                vec![Arc::new(Int64Array::from(vec![bytes]))],
            );
            let response = client
                .post(format!("{}/ConformanceService/oversized_unary", server.url))
                .header("content-type", wire::CONTENT_TYPE)
                .header("content-encoding", "zstd")
                .header("accept-encoding", accept)
                .body(body)
                .send()
                .await?;
            let body = body_into(response, receive).await?;
            let streams = read_streams(&body).context("response is Arrow IPC")?;
            check_no_error(&streams)?;
            let received: usize = streams
                .iter()
                .flat_map(|s| &s.batches)
                .filter_map(|b| b.batch.columns().first())
                .filter_map(|c| c.as_any().downcast_ref::<arrow_array::BinaryArray>())
                .map(|c| c.value_data().len())
                .sum();
            drop(streams);
            receive.reclaim(body);
            if received as i64 != bytes {
                bail!("expected a {bytes}-byte result, got {received} bytes");
            }
            bytes
        }
        Large::Producer { .. } => producer(server, &client, accept, rows, receive).await? * 16,
    };
    let seconds = started.elapsed().as_secs_f64();
    let rss = peak_rss(pid) as f64;
    Ok((payload as f64 / 1e6 / seconds, rss / payload.max(1) as f64))
}

/// Drives `produce_large_batches` (4 batches of int64 index and value) to the
/// end; returns the rows received.
async fn producer(
    server: &Server,
    client: &reqwest::Client,
    accept: &str,
    rows: i64,
    receive: &mut Receive,
) -> Result<i64> {
    let batches = 4i64;
    let per_batch = rows / batches;
    let body = request(
        "produce_large_batches",
        vec![
            Field::new("rows_per_batch", DataType::Int64, false),
            Field::new("batch_count", DataType::Int64, false),
        ],
        vec![
            Arc::new(Int64Array::from(vec![per_batch])),
            Arc::new(Int64Array::from(vec![batches])),
        ],
    );
    let mut received = 0i64;
    // The call token comes with the first turn only; every exchange echoes it.
    let mut call: Option<String> = None;
    let mut response = client
        .post(format!(
            "{}/ConformanceService/produce_large_batches/init",
            server.url
        ))
        .header("content-type", wire::CONTENT_TYPE)
        .header("content-encoding", "zstd")
        .header("accept-encoding", accept)
        .body(body)
        .send()
        .await?;
    loop {
        let body = body_into(response, receive).await?;
        let streams = read_streams(&body).context("response is Arrow IPC")?;
        check_no_error(&streams)?;
        let mut state = None;
        for batch in streams.into_iter().flat_map(|s| s.batches) {
            received += batch.batch.num_rows() as i64;
            if let Some(value) = batch.get(wire::STATE_KEY) {
                state = Some(value.to_string());
            }
            if let Some(value) = batch.get(wire::CALL_STATE_KEY) {
                call = Some(value.to_string());
            }
        }
        // Every batch of this turn is dropped: take the buffer back.
        receive.reclaim(body);
        let Some(state) = state else { break };
        let mut token = vec![(wire::STATE_KEY.to_string(), state)];
        if let Some(call) = &call {
            token.push((wire::CALL_STATE_KEY.to_string(), call.clone()));
        }
        let schema = Arc::new(Schema::empty());
        let mut next = Vec::new();
        let mut writer = StreamWriter::new(&mut next, &schema)?;
        writer.write_metadata_only(&token)?;
        writer.finish();
        response = client
            .post(format!(
                "{}/ConformanceService/produce_large_batches/exchange",
                server.url
            ))
            .header("content-type", wire::CONTENT_TYPE)
            .header("accept-encoding", accept)
            .body(next)
            .send()
            .await?;
    }
    if received != per_batch * batches {
        bail!("expected {} rows, got {received}", per_batch * batches);
    }
    Ok(received)
}

/// Wall time of one CLI run, failing on an exit code outside `ok_codes`.
fn time_cli(
    program: &str,
    args: &[&str],
    dir: &std::path::Path,
    ok_codes: &[i32],
) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("failed to run `{program}`"))?;
    let elapsed = started.elapsed();
    if !status.code().is_some_and(|c| ok_codes.contains(&c)) {
        bail!("`{program} {}` exited with {status}", args.join(" "));
    }
    Ok(elapsed)
}

/// Samples of one metric per server, in the order of `Kind`s given.
struct Row {
    metric: String,
    unit: &'static str,
    /// Higher is better (calls/s, MB/s); lower otherwise.
    higher_is_better: bool,
    samples: Vec<(Kind, Vec<f64>)>,
    target: Option<Target>,
}

/// An issue target, judged on the table's base server's median.
enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// The base at least this multiple of `of`'s median when higher is
    /// better (calls/s), at most this multiple when lower is (milliseconds).
    Times {
        of: Kind,
        times: f64,
    },
}

impl Row {
    fn new(metric: impl Into<String>, unit: &'static str, higher_is_better: bool) -> Row {
        Row {
            metric: metric.into(),
            unit,
            higher_is_better,
            samples: Vec::new(),
            target: None,
        }
    }

    fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self
    }

    fn push(&mut self, kind: Kind, value: f64) {
        if std::env::var_os("KIT_BENCH_VERBOSE").is_some() {
            eprintln!(
                "{}: {}: {value:.3} {}",
                kind.short(),
                self.metric,
                self.unit
            );
        }
        match self.samples.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, values)) => values.push(value),
            None => self.samples.push((kind, vec![value])),
        }
    }

    fn median(&self, kind: Kind) -> Option<f64> {
        let (_, values) = self.samples.iter().find(|(k, _)| *k == kind)?;
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        Some(if sorted.len() % 2 == 0 {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        } else {
            sorted[middle]
        })
    }

    fn cell(&self, kind: Kind) -> String {
        let Some((_, values)) = self.samples.iter().find(|(k, _)| *k == kind) else {
            return "-".into();
        };
        let median = self.median(kind).unwrap_or(0.0);
        // Ratios are compared to a few percent: one more digit.
        let number = |value: f64| {
            if self.unit == "x" {
                format!("{value:.3}")
            } else {
                number(value)
            }
        };
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        if values.len() > 1 {
            format!(
                "{} {} ({}–{})",
                number(median),
                self.unit,
                number(min),
                number(max)
            )
        } else {
            format!("{} {}", number(median), self.unit)
        }
    }

    /// How many times better `base` is than `kind` (> 1: `base` is better).
    fn advantage(&self, base: Kind, kind: Kind) -> String {
        match (self.median(base), self.median(kind)) {
            (Some(ours), Some(other)) if ours > 0.0 && other > 0.0 => {
                let ratio = if self.higher_is_better {
                    ours / other
                } else {
                    other / ours
                };
                format!("{ratio:.3}x")
            }
            _ => "-".into(),
        }
    }

    fn verdict(&self, base: Kind) -> String {
        let Some(ours) = self.median(base) else {
            return String::new();
        };
        let (text, met) = match self.target {
            None => return String::new(),
            Some(Target::AtMost(limit)) => {
                (format!("≤ {} {}", number(limit), self.unit), ours <= limit)
            }
            Some(Target::AtLeast(floor)) => {
                (format!("≥ {} {}", number(floor), self.unit), ours >= floor)
            }
            Some(Target::Times { of, times }) => {
                let Some(other) = self.median(of) else {
                    return format!("{times}x {}: not measured", of.short());
                };
                if self.higher_is_better {
                    (format!("≥ {times}x {}", of.short()), ours >= times * other)
                } else {
                    (format!("≤ {times}x {}", of.short()), ours <= times * other)
                }
            }
        };
        format!("{text}: **{}**", if met { "met" } else { "missed" })
    }
}

fn number(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A Markdown table printed one row at a time, as each is measured: a
/// failure in a later phase leaves every earlier number on stdout. Columns:
/// each server's cell, and for every server but `base` how many times better
/// `base` is.
struct Table {
    kinds: Vec<Kind>,
    base: Kind,
    header_printed: bool,
}

impl Table {
    fn new(kinds: Vec<Kind>, base: Kind) -> Table {
        Table {
            kinds,
            base,
            header_printed: false,
        }
    }

    fn print(&mut self, row: &Row) {
        if !self.header_printed {
            let mut header = "| metric |".to_string();
            let mut rule = "|---|".to_string();
            for kind in &self.kinds {
                header += &format!(" {} |", kind.title());
                rule += "---|";
                if *kind != self.base {
                    header += &format!(" {} vs {} |", self.base.short(), kind.short());
                    rule += "---|";
                }
            }
            println!("\n{header} target ({}) |\n{rule}---|", self.base.title());
            self.header_printed = true;
        }
        let mut line = format!("| {} |", row.metric);
        for kind in &self.kinds {
            line += &format!(" {} |", row.cell(*kind));
            if *kind != self.base {
                line += &format!(" {} |", row.advantage(self.base, *kind));
            }
        }
        println!("{line} {} |", row.verdict(self.base));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(args: Args) -> Result<()> {
    let online = std::thread::available_parallelism().map_or(0, usize::from);
    if let Some(cpus) = &args.client_cpus {
        pin_self(cpus)?;
    }
    let cpus = args.server_cpus.clone();
    let mut specs = vec![ServerSpec {
        kind: Kind::Kit,
        program: args.kit.clone(),
        cpus: cpus.clone(),
    }];
    if let Some(program) = &args.python {
        specs.push(ServerSpec {
            kind: Kind::Python,
            program: program.clone(),
            cpus: cpus.clone(),
        });
    }
    if let Some(program) = &args.rust_peer {
        specs.push(ServerSpec {
            kind: Kind::RustCrate,
            program: program.clone(),
            cpus: cpus.clone(),
        });
    }
    let phase = |name: &str| args.phases.iter().any(|p| p == name);
    let mut table = Table::new(specs.iter().map(|s| s.kind).collect(), Kind::Kit);

    println!(
        "# kit-bench: {} rounds of {} s per load phase, {} uncounted warm-up round(s) per large result, {} starts, {} CLI runs\n",
        args.repeat, args.seconds, args.warmup, args.starts, args.cli_runs
    );
    println!(
        "Cells: median (min–max over rounds). `A vs B`: how many times better A is than B (> 1: A better).\n\
         Load average (1, 5, 15 min) before: {}.",
        loadavg()
    );
    println!(
        "CPUs: {online} available; servers on {}; load client on {}.",
        args.server_cpus.as_deref().unwrap_or("any"),
        args.client_cpus.as_deref().unwrap_or("any"),
    );

    if phase("start") {
        let mut row =
            Row::new("start to ready (`GET /health`)", "ms", false).target(Target::AtMost(50.0));
        for _ in 0..args.starts {
            for spec in &specs {
                let server = start(spec).await?;
                row.push(spec.kind, server.start_to_ready.as_secs_f64() * 1e3);
            }
        }
        table.print(&row);
    }

    let mut servers = Vec::new();
    if phase("load") || phase("large") {
        for spec in &specs {
            servers.push(start(spec).await?);
        }
    }

    if phase("load") {
        let echo = SmallCall::echo();
        for connections in [1usize, 8] {
            let mut rows = LoadRows::new("echo_string", connections);
            if connections == 8 {
                rows.calls = rows.calls.target(Target::Times {
                    of: Kind::RustCrate,
                    times: 2.0,
                });
            }
            rows.cpu = rows.cpu.target(Target::AtMost(50.0));
            for _ in 0..args.repeat {
                for server in &servers {
                    let result = load(server, &echo, connections, args.seconds)
                        .await
                        .with_context(|| {
                            format!("{} at {connections} conn", server.kind.title())
                        })?;
                    rows.push(server.kind, &result);
                }
            }
            rows.print(&mut table);
        }
    }

    if phase("large") {
        let megabytes = args.stream_rows as f64 * 16.0 / 1e6;
        for workload in Large::ALL
            .into_iter()
            .filter(|w| args.workloads.iter().any(|name| name == w.name()))
        {
            let mut speed = Row::new(workload.label(megabytes), "MB/s", true);
            if matches!(workload, Large::Producer { compressed: false }) {
                speed = speed.target(Target::AtLeast(1000.0));
            }
            let mut rss =
                Row::new("peak server RSS / payload", "x", false).target(Target::AtMost(1.5));
            let mut receive = Receive::default();
            // Uncounted rounds first: the steady state of a long-running
            // server, not its first touch of fresh pages, is what is compared.
            for _ in 0..args.warmup {
                for server in &servers {
                    if let Err(error) =
                        large(server, workload, args.stream_rows, &mut receive).await
                    {
                        eprintln!(
                            "{}: {} (warm-up): {error:#}",
                            server.kind.title(),
                            workload.label(megabytes)
                        );
                    }
                }
            }
            for _ in 0..args.repeat {
                for server in &servers {
                    match large(server, workload, args.stream_rows, &mut receive).await {
                        Ok((mbps, multiple)) => {
                            speed.push(server.kind, mbps);
                            rss.push(server.kind, multiple);
                        }
                        Err(error) => eprintln!(
                            "{}: {}: {error:#}",
                            server.kind.title(),
                            workload.label(megabytes)
                        ),
                    }
                }
            }
            table.print(&speed);
            table.print(&rss);
        }
    }
    drop(servers);

    if phase("cli") {
        match &args.deploy_kit {
            None => eprintln!("skipping the CLI rows: pass `--deploy-kit PATH`"),
            Some(program) => cli_rows(&args, program, &mut table)?,
        }
    }

    if phase("demo") {
        demo(&args).await?;
    }

    if phase("lambda") {
        cold_start::cold_start(&args).await?;
    }

    if phase("deploy") {
        deploy::deploy(&args).await?;
    }

    println!("\nLoad average (1, 5, 15 min) after: {}.", loadavg());
    Ok(())
}

/// Calls/s, p50, p99 and server CPU per call of one small call at one
/// connection count.
struct LoadRows {
    calls: Row,
    p50: Row,
    p99: Row,
    cpu: Row,
}

impl LoadRows {
    fn new(call: &str, connections: usize) -> LoadRows {
        LoadRows {
            calls: Row::new(format!("{call} calls/s, {connections} conn"), "/s", true),
            p50: Row::new(format!("p50 latency, {connections} conn"), "µs", false),
            p99: Row::new(format!("p99 latency, {connections} conn"), "µs", false),
            cpu: Row::new(
                format!("server CPU per call, {connections} conn"),
                "µs",
                false,
            ),
        }
    }

    fn push(&mut self, kind: Kind, result: &Load) {
        self.calls.push(kind, result.calls_per_second);
        self.p50.push(kind, result.p50.as_secs_f64() * 1e6);
        self.p99.push(kind, result.p99.as_secs_f64() * 1e6);
        self.cpu.push(kind, result.cpu_per_call.as_secs_f64() * 1e6);
    }

    fn print(&self, table: &mut Table) {
        for row in [&self.calls, &self.p50, &self.p99, &self.cpu] {
            table.print(row);
        }
    }
}

/// `deploy-kit doctor --offline` and `deploy-kit plan` wall time, in a
/// fresh project directory.
fn cli_rows(args: &Args, program: &str, table: &mut Table) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("kit-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| -> Result<()> {
        // A one-binary crate, as a user's project is: the doctor's ART001
        // finds the package with `cargo metadata`.
        std::fs::write(
            dir.join("Cargo.toml"),
            "[package]\nname = \"bench-service\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        )?;
        std::fs::create_dir_all(dir.join("src"))?;
        std::fs::write(dir.join("src/main.rs"), "fn main() {}\n")?;
        time_cli(program, &["init", "--force"], &dir, &[0])?;
        let mut doctor = Row::new("`deploy-kit doctor --offline` wall time", "ms", false);
        let mut plan = Row::new("`deploy-kit plan` wall time", "ms", false);
        for _ in 0..args.cli_runs {
            doctor.push(
                Kind::Kit,
                time_cli(program, &["doctor", "--offline"], &dir, &[0])?.as_secs_f64() * 1e3,
            );
            // Exit 2: the plan has changes to make (a fresh project: everything).
            plan.push(
                Kind::Kit,
                time_cli(
                    program,
                    &["plan", "--kit-service", &args.kit],
                    &dir,
                    &[0, 2],
                )?
                .as_secs_f64()
                    * 1e3,
            );
        }
        table.print(&doctor);
        table.print(&plan);
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `--phases demo`: the typed demo against the string-declared one, both
/// served by the `--kit` binary, in their own table. Start to ready takes
/// `--starts` alternating starts of each; every load round starts both
/// afresh and alternates which goes first, so neither always meets the
/// other's leftovers (page cache, CPU frequency, the other agents' builds).
async fn demo(args: &Args) -> Result<()> {
    let specs = [Kind::TypedDemo, Kind::DynamicDemo].map(|kind| ServerSpec {
        kind,
        program: args.kit.clone(),
        cpus: args.server_cpus.clone(),
    });
    let mut table = Table::new(specs.iter().map(|s| s.kind).collect(), Kind::TypedDemo);
    // "Within 3%" of the string-typed demo, as issue 12 asks.
    let within = |higher_is_better: bool| Target::Times {
        of: Kind::DynamicDemo,
        times: if higher_is_better { 0.97 } else { 1.03 },
    };
    println!(
        "\n## demo: typed `kit.Demo.v1` vs the string-declared one (`{} serve [--dynamic-demo]`)",
        args.kit
    );

    let mut ready =
        Row::new("demo start to ready (`GET /health`)", "ms", false).target(within(false));
    for round in 0..args.starts {
        for spec in ordered(&specs, round) {
            let server = start(spec).await?;
            ready.push(spec.kind, server.start_to_ready.as_secs_f64() * 1e3);
        }
    }
    table.print(&ready);
    table.print(&protocol_build(args.repeat));

    let add = SmallCall::demo_add();
    let mut rows = [1usize, 8].map(|connections| {
        let mut rows = LoadRows::new("`kit.Demo.v1.add`", connections);
        rows.calls = rows.calls.target(within(true));
        rows
    });
    for round in 0..args.repeat {
        let mut servers = Vec::new();
        for spec in ordered(&specs, round) {
            servers.push(start(spec).await?);
        }
        for (index, connections) in [1usize, 8].into_iter().enumerate() {
            for server in &servers {
                // Uncounted: the first connections and pages of a fresh process.
                if args.warmup > 0 {
                    load(server, &add, connections, 1).await?;
                }
                let result = load(server, &add, connections, args.seconds)
                    .await
                    .with_context(|| format!("{} at {connections} conn", server.kind.title()))?;
                rows[index].push(server.kind, &result);
            }
        }
    }
    for rows in &rows {
        rows.print(&mut table);
        table.print(
            &paired_ratio(&rows.calls, Kind::TypedDemo, Kind::DynamicDemo)
                .target(Target::AtLeast(0.97)),
        );
        // CPU per call: the server's own work, steadier than calls/s when
        // other processes take the cores.
        table.print(&paired_ratio(&rows.cpu, Kind::TypedDemo, Kind::DynamicDemo));
    }
    let in_process = in_process(args.repeat, args.seconds).await?;
    table.print(&in_process);
    table.print(&paired_ratio(
        &in_process,
        Kind::TypedDemo,
        Kind::DynamicDemo,
    ));
    Ok(())
}

/// `row`'s per-round ratio `ours / other`, as a row of `ours` (unit `x`): the
/// two servers of one round ran seconds apart, so their ratio drifts less with
/// the machine's background load than either number alone.
fn paired_ratio(row: &Row, ours: Kind, other: Kind) -> Row {
    let samples = |kind: Kind| {
        row.samples
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, values)| values.clone())
            .unwrap_or_default()
    };
    let mut ratio = Row::new(
        format!(
            "{}: {} / {} per round",
            row.metric,
            ours.short(),
            other.short()
        ),
        "x",
        row.higher_is_better,
    );
    for (a, b) in samples(ours).into_iter().zip(samples(other)) {
        if b > 0.0 {
            ratio.push(ours, a / b);
        }
    }
    ratio
}

/// Server time of one `kit.Demo.v1.add` through the whole router (decode,
/// dispatch, encode, access log; `tower::ServiceExt::oneshot`, no socket),
/// `rounds` alternating rounds of `seconds` each: the typed and the
/// string-declared dispatch without the kernel and the scheduler, whose noise
/// dominates the socket rows on a shared machine.
async fn in_process(rounds: usize, seconds: u64) -> Result<Row> {
    use tower::ServiceExt;
    let env: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let config = kit_service::config::Config::from_env(&env, "127.0.0.1:0".parse()?)?;
    let routers = [
        (Kind::TypedDemo, kit_service::demo::protocol()),
        (Kind::DynamicDemo, kit_service::demo::dynamic_protocol()),
    ]
    .map(|(kind, protocol)| {
        let server = kit_service::serve::build_server(&config, vec![protocol], "");
        server.hosting().readiness.set_ready();
        (kind, kit_service::app(server))
    });
    let add = SmallCall::demo_add();
    let mut row = Row::new(
        "in-process `add` through the router (oneshot, no socket)",
        "ns",
        false,
    )
    .target(Target::Times {
        of: Kind::DynamicDemo,
        times: 1.03,
    });
    for round in 0..rounds {
        let mut order: Vec<_> = routers.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (kind, router) in order {
            let deadline = Instant::now() + Duration::from_secs(seconds);
            let started = Instant::now();
            let mut calls = 0u64;
            while Instant::now() < deadline {
                for _ in 0..64 {
                    let request = http::Request::post(add.path)
                        .header("content-type", wire::CONTENT_TYPE)
                        .header("content-encoding", "zstd")
                        .body(axum::body::Body::from(add.body.clone()))?;
                    let response = router.clone().oneshot(request).await?;
                    if !response.status().is_success() {
                        bail!(
                            "{}: in-process `add` answered {}",
                            kind.title(),
                            response.status()
                        );
                    }
                    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
                    if calls == 0 {
                        check_no_error(&read_streams(&body).context("answer is Arrow IPC")?)?;
                    }
                    calls += 1;
                }
            }
            row.push(*kind, started.elapsed().as_nanos() as f64 / calls as f64);
        }
    }
    Ok(row)
}

/// Microseconds to build each demo `Protocol` (what start to ready spends on
/// the protocol itself: the typed one from Rust types, the other by parsing
/// schema strings), `rounds` alternating rounds of a quarter second each.
fn protocol_build(rounds: usize) -> Row {
    let builders: [(Kind, fn() -> kit_service::Protocol); 2] = [
        (Kind::TypedDemo, kit_service::demo::protocol),
        (Kind::DynamicDemo, kit_service::demo::dynamic_protocol),
    ];
    let mut row = Row::new("build the `Protocol` (in-process)", "µs", false);
    for round in 0..rounds {
        let mut order: Vec<_> = builders.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (kind, build) in order {
            let started = Instant::now();
            let mut builds = 0u32;
            while started.elapsed() < Duration::from_millis(250) {
                std::hint::black_box(build());
                builds += 1;
            }
            row.push(
                *kind,
                started.elapsed().as_secs_f64() * 1e6 / f64::from(builds),
            );
        }
    }
    row
}

/// `specs` in order on even rounds, reversed on odd ones.
fn ordered(specs: &[ServerSpec], round: usize) -> Vec<&ServerSpec> {
    let mut order: Vec<&ServerSpec> = specs.iter().collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// `kit-bench fetch URL`: one object fetched with a single GET and with
/// parallel ranges (default chunking and hedging), same run, ratios printed.
async fn fetch_comparison(url: &str) -> Result<()> {
    use kit_service::storage::fetch::Fetcher;
    use kit_service::storage::settings::FetchSettings;
    let base = FetchSettings {
        allowlist: vec!["http://127.0.0.1".into()],
        max_fetch_bytes: 4 << 30,
        max_decompressed_bytes: 4 << 30,
        timeout: Duration::from_secs(600),
        ..FetchSettings::default()
    };
    let single = Fetcher::new(FetchSettings {
        parallel_threshold_bytes: u64::MAX,
        ..base.clone()
    })?;
    let ranged = Fetcher::new(base)?;
    println!("| fetch | seconds | MB/s | requests | hedges |");
    println!("|---|---|---|---|---|");
    let mut seconds = Vec::new();
    for (name, fetcher) in [
        ("single GET", &single),
        ("parallel ranges", &ranged),
        ("single GET (again)", &single),
        ("parallel ranges (again)", &ranged),
    ] {
        let started = Instant::now();
        let body = fetcher.fetch(url, None).await?;
        let elapsed = started.elapsed().as_secs_f64();
        seconds.push(elapsed);
        let stats = fetcher.stats();
        println!(
            "| {name} | {elapsed:.2} | {:.0} | {} | {} |",
            body.len() as f64 / 1e6 / elapsed,
            stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            stats.hedges.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    println!(
        "\nbest single / best ranged: {:.2}x",
        seconds[0].min(seconds[2]) / seconds[1].min(seconds[3])
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.iter().any(|arg| arg == "--help" || arg == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    if raw.first().map(String::as_str) == Some("fetch") {
        let url = raw.get(1).context("usage: kit-bench fetch URL")?;
        return fetch_comparison(url).await;
    }
    run(parse_args(raw)?).await
}
