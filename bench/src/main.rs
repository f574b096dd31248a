//! kit-bench: kit-service against the Python reference server, side by side,
//! on 127.0.0.1, in one run.
//!
//! Starts both servers, drives them with one Rust load client (HTTP/1.1
//! keep-alive, zstd request bodies like the Python client sends), and prints
//! per-server figures and ratios against kit-service:
//! - start to first ready response;
//! - small unary calls/s at 1 and 8 connections, p50 and p99 latency;
//! - server CPU per small call, from `/proc/<pid>/stat`;
//! - a large producer result (MB/s) and peak server RSS as a multiple of it.
//!
//! Bounded: every phase runs for a fixed duration or call count and both
//! servers are killed at the end. Usage:
//! `kit-bench --kit target/release/kit-service --python .venv/bin/vgi-rpc-conformance`

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow_array::{Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::{self, Metadata};

struct Args {
    kit: String,
    python: String,
    seconds: u64,
    stream_rows: i64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        kit: String::new(),
        python: String::new(),
        seconds: 5,
        stream_rows: 6_250_000,
    };
    let mut iter = std::env::args().skip(1);
    while let Some(flag) = iter.next() {
        let value = iter
            .next()
            .with_context(|| format!("`{flag}` needs a value"))?;
        match flag.as_str() {
            "--kit" => args.kit = value,
            "--python" => args.python = value,
            "--seconds" => args.seconds = value.parse().context("`--seconds` must be a number")?,
            "--stream-rows" => {
                args.stream_rows = value.parse().context("`--stream-rows` must be a number")?
            }
            other => bail!(
                "unknown flag `{other}`; usage: kit-bench --kit PATH --python PATH [--seconds N] [--stream-rows N]"
            ),
        }
    }
    if args.kit.is_empty() || args.python.is_empty() {
        bail!("usage: kit-bench --kit PATH_TO_KIT_SERVICE --python PATH_TO_VGI_RPC_CONFORMANCE");
    }
    Ok(args)
}

/// A server process and its base URL.
struct Server {
    name: &'static str,
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

async fn start(name: &'static str, mut command: Command, port: u16) -> Result<Server> {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("failed to start {name}"))?;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    loop {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{name} did not become ready within 60 s");
        }
        if let Ok(response) = client.get(format!("{url}/health")).send().await
            && response.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(Server {
        name,
        child,
        url,
        start_to_ready: started.elapsed(),
    })
}

fn request(method: &str, fields: Vec<Field>, columns: Vec<arrow_array::ArrayRef>) -> Vec<u8> {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns).expect("valid request");
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "ConformanceService".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).expect("valid schema");
    writer.write(&batch, &metadata).expect("encodes");
    writer.finish();
    zstd::bulk::compress(&out, 1).expect("zstd")
}

fn echo_request() -> Vec<u8> {
    request(
        "echo_string",
        vec![Field::new("value", DataType::Utf8, false)],
        vec![Arc::new(StringArray::from(vec!["hello"]))],
    )
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

/// Peak resident set (VmHWM) in bytes, including children (the Python server may fork).
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

async fn load(server: &Server, connections: usize, seconds: u64) -> Result<Load> {
    let body = bytes::Bytes::from(echo_request());
    let url = format!("{}/ConformanceService/echo_string", server.url);
    let cpu_before = cpu_seconds(server.child.id())?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
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
                response.bytes().await?;
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
    let cpu = cpu_seconds(server.child.id())? - cpu_before;
    latencies.sort();
    let calls = latencies.len().max(1);
    Ok(Load {
        calls_per_second: calls as f64 / seconds as f64,
        p50: latencies[calls / 2],
        p99: latencies[(calls * 99 / 100).min(calls - 1)],
        cpu_per_call: Duration::from_secs_f64(cpu / calls as f64),
    })
}

/// A producer stream of `rows` int64 rows (`produce_large_batches`, 4 batches):
/// returns MB/s of Arrow payload and peak RSS over payload.
async fn stream(server: &Server, rows: i64) -> Result<(f64, f64)> {
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
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut payload = 0u64;
    let mut response = client
        .post(format!(
            "{}/ConformanceService/produce_large_batches/init",
            server.url
        ))
        .header("content-type", wire::CONTENT_TYPE)
        .header("content-encoding", "zstd")
        .header("accept-encoding", "identity")
        .body(body)
        .send()
        .await?
        .bytes()
        .await?;
    loop {
        let streams = read_streams(&response).context("response is Arrow IPC")?;
        let mut token = None;
        for batch in streams.into_iter().flat_map(|s| s.batches) {
            if batch.batch.num_rows() > 0 {
                payload += batch.batch.get_array_memory_size() as u64;
            }
            if let (Some(state), Some(call)) =
                (batch.get(wire::STATE_KEY), batch.get(wire::CALL_STATE_KEY))
            {
                token = Some((state.to_string(), call.to_string()));
            } else if let Some(state) = batch.get(wire::STATE_KEY) {
                token = Some((
                    state.to_string(),
                    token.map(|(_, c): (String, String)| c).unwrap_or_default(),
                ));
            }
        }
        let Some((state, call)) = token else { break };
        let schema = Arc::new(Schema::empty());
        let mut next = Vec::new();
        let mut writer = StreamWriter::new(&mut next, &schema)?;
        writer.write_metadata_only(&vec![
            (wire::STATE_KEY.into(), state),
            (wire::CALL_STATE_KEY.into(), call),
        ])?;
        writer.finish();
        response = client
            .post(format!(
                "{}/ConformanceService/produce_large_batches/exchange",
                server.url
            ))
            .header("content-type", wire::CONTENT_TYPE)
            .header("accept-encoding", "identity")
            .body(next)
            .send()
            .await?
            .bytes()
            .await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss = peak_rss(server.child.id()) as f64;
    Ok((payload as f64 / 1e6 / seconds, rss / payload.max(1) as f64))
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
    let mut raw = std::env::args().skip(1);
    if raw.next().as_deref() == Some("fetch") {
        let url = raw.next().context("usage: kit-bench fetch URL")?;
        return fetch_comparison(&url).await;
    }
    let args = parse_args()?;
    let kit_port = free_port()?;
    let mut kit_command = Command::new(&args.kit);
    kit_command
        .args([
            "serve",
            "--conformance",
            "--listen",
            &format!("127.0.0.1:{kit_port}"),
        ])
        .env("KIT_LOG_FORMAT", "json")
        .env("RUST_LOG", "warn");
    let kit = start("kit-service", kit_command, kit_port).await?;
    let python_port = free_port()?;
    let mut python_command = Command::new(&args.python);
    python_command.args(["--http", &python_port.to_string()]);
    let python = start("python-reference", python_command, python_port).await?;

    println!("# kit-bench: kit-service vs the Python reference (vgi-rpc 0.52.2, waitress)\n");
    println!("| metric | kit-service | python | python / kit |");
    println!("|---|---|---|---|");
    let row = |metric: &str, kit: f64, python: f64, unit: &str| {
        println!(
            "| {metric} | {kit:.2} {unit} | {python:.2} {unit} | {:.2}x |",
            python / kit
        );
    };
    row(
        "start to ready",
        kit.start_to_ready.as_secs_f64() * 1e3,
        python.start_to_ready.as_secs_f64() * 1e3,
        "ms",
    );
    for connections in [1, 8] {
        let k = load(&kit, connections, args.seconds).await?;
        let p = load(&python, connections, args.seconds).await?;
        row(
            &format!("echo_string calls/s, {connections} conn"),
            k.calls_per_second,
            p.calls_per_second,
            "/s",
        );
        row(
            &format!("p50 latency, {connections} conn"),
            k.p50.as_secs_f64() * 1e6,
            p.p50.as_secs_f64() * 1e6,
            "µs",
        );
        row(
            &format!("p99 latency, {connections} conn"),
            k.p99.as_secs_f64() * 1e6,
            p.p99.as_secs_f64() * 1e6,
            "µs",
        );
        row(
            &format!("server CPU per call, {connections} conn"),
            k.cpu_per_call.as_secs_f64() * 1e6,
            p.cpu_per_call.as_secs_f64() * 1e6,
            "µs",
        );
    }
    let (kit_mbps, kit_rss) = stream(&kit, args.stream_rows).await?;
    let (python_mbps, python_rss) = stream(&python, args.stream_rows).await?;
    let megabytes = args.stream_rows as f64 * 16.0 / 1e6;
    row(
        &format!("producer stream ~{megabytes:.0} MB, uncompressed"),
        kit_mbps,
        python_mbps,
        "MB/s",
    );
    row("peak server RSS / payload", kit_rss, python_rss, "x");
    for server in [&kit, &python] {
        eprintln!(
            "{}: {} (pid {})",
            server.name,
            server.url,
            server.child.id()
        );
    }
    Ok(())
}
