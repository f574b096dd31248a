//! `--phases lambda`: Lambda cold start. `kit-service lambda` (the
//! `--lambda-kit` binary, default `--kit`) polls kit-service's fake Runtime
//! API (`kit_service::testing::lambda_runtime`) on 127.0.0.1, which hands it
//! one Function URL event calling `kit.Demo.v1.add(40, 2)`. The row is the
//! wall time from spawning the process to the fake receiving the answer:
//! init (config, logs, protocols, storage, runtime client) and the first
//! invocation, `--starts` times per variant (interleaved), median and range:
//! - no external storage;
//! - `KIT_STORAGE=s3` with `KIT_STORAGE_ENDPOINT` at a loopback listener this
//!   phase opens and counts requests on: the count beside the row shows that
//!   nothing contacts storage before (or during) the first invocation, which
//!   does not externalize; the SDK client is built on first use;
//! - with `--lambda-otel PATH` (a build with the `otel` feature), that build
//!   unconfigured, and with `OTEL_EXPORTER_OTLP_ENDPOINT` at a counting
//!   loopback collector: the
//!   spans of each invocation are exported before its response, by design
//!   (Lambda freezes the process between invocations).
//!
//! Also prints each binary's size. The bench builds no binary itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use kit_service::testing::lambda_runtime::{FakeRuntime, function_url_event};

use super::{Args, Kind, Row, Table, Target, request_to};

/// A loopback HTTP server that answers 200 to everything and counts requests.
struct Recorder {
    url: String,
    requests: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start() -> Result<Recorder> {
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        let app = axum::Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "" }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Recorder { url, requests })
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// One way of starting the function.
struct Variant {
    label: &'static str,
    program: String,
    env: Vec<(&'static str, String)>,
    /// What counts the requests this variant may send at init.
    recorder: Option<Recorder>,
}

/// The Function URL event the first invocation answers.
fn add_event() -> serde_json::Value {
    let body = request_to(
        kit_service::demo::NAME,
        "1.0.0",
        "add",
        vec![
            arrow_schema::Field::new("a", arrow_schema::DataType::Int64, false),
            arrow_schema::Field::new("b", arrow_schema::DataType::Int64, false),
        ],
        vec![
            Arc::new(arrow_array::Int64Array::from(vec![40])),
            Arc::new(arrow_array::Int64Array::from(vec![2])),
        ],
    );
    let body = base64::engine::general_purpose::STANDARD.encode(body);
    let mut event = function_url_event(
        "/kit.Demo.v1/add",
        kit_service::wire::CONTENT_TYPE,
        &body,
        "203.0.113.7",
    );
    event["headers"]["content-encoding"] = "zstd".into();
    event
}

/// Spawn to first answer of one start of `variant`.
async fn first_answer(variant: &Variant) -> Result<Duration> {
    let mut runtime = FakeRuntime::start(vec![("first".into(), add_event())]).await;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&variant.program)
        .arg("lambda")
        .env("AWS_LAMBDA_RUNTIME_API", runtime.address())
        .env("AWS_LAMBDA_FUNCTION_NAME", "kit-bench")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("VGI_SIGNING_KEY", "k".repeat(32))
        .env("KIT_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(variant.env.iter().map(|(k, v)| (k, v)))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("failed to start `{} lambda`", variant.program))?;
    let outcome = tokio::select! {
        outcome = runtime.next_outcome() => outcome,
        status = child.wait() => {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await;
            }
            bail!("`{} lambda` exited with {} before answering:\n{stderr}", variant.program, status?);
        }
        _ = tokio::time::sleep(Duration::from_secs(60)) => bail!("no answer within 60 s"),
    };
    let elapsed = started.elapsed();
    let _ = child.kill().await;
    if outcome.kind != "response" || outcome.body["statusCode"] != 200 {
        bail!("the first invocation failed: {}", outcome.body);
    }
    Ok(elapsed)
}

fn size_mb(program: &str) -> String {
    std::fs::metadata(program)
        .map(|m| format!("{:.1} MB", m.len() as f64 / 1e6))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// The phase: one table, a row per variant, printed once every start ran.
pub(crate) async fn cold_start(args: &Args) -> Result<()> {
    let program = args.lambda_kit.clone().unwrap_or_else(|| args.kit.clone());
    let bytes = std::fs::read(&program).with_context(|| format!("reading `{program}`"))?;
    let marker = kit_service::host::LAMBDA_FEATURE_MARKER;
    if !bytes.windows(marker.len()).any(|w| w == marker) {
        bail!(
            "`{program}` was built without the `lambda` feature: pass `--lambda-kit PATH` \
             (`cargo build --release -p kit-service --features lambda,s3`)"
        );
    }
    println!(
        "\n## lambda: process start to the first answered invocation (`{program} lambda`, fake Runtime API)\n"
    );
    println!("Binary: `{program}`, {}.", size_mb(&program));
    let storage = Recorder::start().await?;
    let mut variants = vec![
        Variant {
            label: "no storage",
            program: program.clone(),
            env: Vec::new(),
            recorder: None,
        },
        Variant {
            label: "`KIT_STORAGE=s3`, endpoint a counting loopback listener",
            program: program.clone(),
            env: vec![
                ("KIT_STORAGE", "s3".into()),
                ("KIT_STORAGE_BUCKET", "kit-bench".into()),
                ("KIT_STORAGE_ENDPOINT", storage.url.clone()),
                ("AWS_ACCESS_KEY_ID", "kit-bench".into()),
                ("AWS_SECRET_ACCESS_KEY", "kit-bench".into()),
            ],
            recorder: Some(storage),
        },
    ];
    if let Some(otel) = &args.lambda_otel {
        println!("OTel binary: `{otel}`, {}.", size_mb(otel));
        variants.push(Variant {
            label: "OTel build, no storage, OTel not configured",
            program: otel.clone(),
            env: Vec::new(),
            recorder: None,
        });
        let collector = Recorder::start().await?;
        variants.push(Variant {
            label: "OTel build, no storage, `OTEL_EXPORTER_OTLP_ENDPOINT` a counting loopback collector",
            program: otel.clone(),
            env: vec![("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.clone())],
            recorder: Some(collector),
        });
    } else {
        println!(
            "OTel: not measured (pass `--lambda-otel PATH`, a build with `--features lambda,s3,otel`)."
        );
    }
    // Interleaved: start 1 of every variant, then start 2, ..., so they share
    // the machine's background load.
    let mut rows: Vec<Option<Row>> = variants
        .iter()
        .map(|variant| {
            Some(
                Row::new(
                    format!("start to first answer, {}", variant.label),
                    "ms",
                    false,
                )
                .target(Target::AtMost(20.0)),
            )
        })
        .collect();
    for _ in 0..args.starts {
        for (variant, row) in variants.iter().zip(rows.iter_mut()) {
            let Some(measured) = row else { continue };
            match first_answer(variant).await {
                Ok(elapsed) => measured.push(Kind::Kit, elapsed.as_secs_f64() * 1e3),
                Err(error) => {
                    eprintln!("lambda: {}: {error:#}", variant.label);
                    *row = None;
                }
            }
        }
    }
    let mut table = Table::new(vec![Kind::Kit], Kind::Kit);
    for (variant, row) in variants.iter().zip(rows) {
        let Some(mut row) = row else { continue };
        if let Some(recorder) = &variant.recorder {
            row.metric += &format!(
                " ({} requests to it over {} starts)",
                recorder.requests(),
                args.starts
            );
        }
        table.print(&row);
    }
    Ok(())
}
