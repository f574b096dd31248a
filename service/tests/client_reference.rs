//! The Rust client against the Python reference server (`vgi-rpc-conformance
//! --http`, vgi-rpc 0.52.2, with its fake storage for pointer results), and
//! the same checks against kit-service's conformance protocols: unary calls,
//! logs, a void result, errors with their type and message, producer and
//! exchange streams, a stream header, and a result fetched from storage.
//!
//! The reference needs the CI venv (`.ci/lib.sh` `ensure_python`; `VGI_VENV`
//! overrides its path). Without it this test fails: it is never skipped.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use arrow_array::{
    Array, ArrayRef, BinaryArray, Float64Array, Int64Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema};
use kit_service::client::{Client, Compression, MethodKind};

const CONFORMANCE: &str = "ConformanceService";

/// A child process killed when dropped.
struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv() -> PathBuf {
    let path = std::env::var_os("VGI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/deploy-kit/venv-py313-vgi-0.52.2")
        });
    assert!(
        path.join("bin/vgi-rpc-conformance").is_file(),
        "the vgi-rpc 0.52.2 venv is missing at `{}`: create it with `source .ci/lib.sh && ensure_python` (or set VGI_VENV)",
        path.display()
    );
    path
}

/// Starts `command` and waits for the `PORT:<n>` line it prints once bound.
fn start(mut command: Command, label: &str) -> (Process, u16) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("failed to start {label}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let process = Process { child };
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(port) = line.trim().strip_prefix("PORT:") {
                let _ = sender.send(port.trim().parse::<u16>().ok());
                return;
            }
        }
        let _ = sender.send(None);
    });
    let port = receiver
        .recv_timeout(Duration::from_secs(60))
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("{label} did not print `PORT:<n>`"));
    (process, port)
}

fn batch(fields: Vec<Field>, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

fn one<A: Array + 'static>(name: &str, data_type: DataType, array: A) -> RecordBatch {
    batch(
        vec![Field::new(name, data_type, false)],
        vec![Arc::new(array)],
    )
}

fn column<A: Array + Clone + 'static>(batch: &RecordBatch, name: &str) -> A {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column `{name}` in {:?}", batch.schema()))
        .as_any()
        .downcast_ref::<A>()
        .unwrap_or_else(|| panic!("column `{name}` has another type"))
        .clone()
}

/// Every check, against any server hosting `ConformanceService` with
/// external storage at a threshold of 4 KiB.
async fn check(client: &Client, server: &str) {
    // Unary, in every request coding.
    for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
        let reply = client
            .clone()
            .with_compression(compression)
            .unary(
                CONFORMANCE,
                "echo_string",
                one("value", DataType::Utf8, StringArray::from(vec!["héllo"])),
            )
            .await
            .unwrap_or_else(|e| panic!("{server}: echo_string {compression:?}: {e}"));
        assert_eq!(
            column::<StringArray>(&reply.batch, "result").value(0),
            "héllo"
        );
    }
    let reply = client
        .unary(
            CONFORMANCE,
            "echo_int",
            one("value", DataType::Int64, Int64Array::from(vec![-7])),
        )
        .await
        .unwrap_or_else(|e| panic!("{server}: echo_int: {e}"));
    assert_eq!(column::<Int64Array>(&reply.batch, "result").value(0), -7);

    // Logs arrive before the result.
    let reply = client
        .unary(
            CONFORMANCE,
            "echo_with_info_log",
            one("value", DataType::Utf8, StringArray::from(vec!["x"])),
        )
        .await
        .unwrap_or_else(|e| panic!("{server}: echo_with_info_log: {e}"));
    assert!(!reply.logs.is_empty(), "{server}: no log");

    // A void result: a batch without columns.
    let reply = client
        .unary(CONFORMANCE, "void_noop", kit_service::client::no_params())
        .await
        .unwrap_or_else(|e| panic!("{server}: void_noop: {e}"));
    assert_eq!(reply.batch.num_columns(), 0, "{server}");

    // An error raised by the method: its type and message.
    let error = client
        .unary(
            CONFORMANCE,
            "raise_value_error",
            one(
                "message",
                DataType::Utf8,
                StringArray::from(vec!["boom from the test"]),
            ),
        )
        .await
        .expect_err("raise_value_error raises");
    let rpc = error.rpc().unwrap_or_else(|| panic!("{server}: {error:?}"));
    assert_eq!(rpc.error_type, "ValueError", "{server}");
    assert_eq!(rpc.message, "boom from the test", "{server}");

    // A result above the threshold comes back as a pointer and is fetched.
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let reply = client
        .unary(
            CONFORMANCE,
            "echo_bytes",
            one(
                "data",
                DataType::Binary,
                BinaryArray::from_vec(vec![payload.as_slice()]),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{server}: echo_bytes: {e}"));
    assert!(
        reply.location.is_some(),
        "{server}: the result came back inline"
    );
    assert_eq!(
        column::<BinaryArray>(&reply.batch, "result").value(0),
        payload.as_slice()
    );

    // A producer: every batch, then the end.
    let mut stream = client
        .producer(
            CONFORMANCE,
            "produce_n",
            one("count", DataType::Int64, Int64Array::from(vec![5])),
        )
        .await
        .unwrap_or_else(|e| panic!("{server}: produce_n: {e}"));
    let mut indexes = Vec::new();
    while let Some(batch) = stream.next_batch().await.unwrap() {
        indexes.extend(
            column::<Int64Array>(&batch, "index")
                .values()
                .iter()
                .copied(),
        );
    }
    assert_eq!(indexes, [0, 1, 2, 3, 4], "{server}");

    // A producer with a header.
    let mut stream = client
        .producer(
            CONFORMANCE,
            "produce_with_header",
            one("count", DataType::Int64, Int64Array::from(vec![2])),
        )
        .await
        .unwrap_or_else(|e| panic!("{server}: produce_with_header: {e}"));
    let header = stream.header().expect("a header").clone();
    assert_eq!(
        column::<Int64Array>(&header, "total_expected").value(0),
        2,
        "{server}"
    );
    let mut rows = 0;
    while let Some(batch) = stream.next_batch().await.unwrap() {
        rows += batch.num_rows();
    }
    assert_eq!(rows, 2, "{server}");

    // An error in the middle of a producer.
    let mut stream = client
        .producer(
            CONFORMANCE,
            "produce_error_mid_stream",
            one(
                "emit_before_error",
                DataType::Int64,
                Int64Array::from(vec![1]),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{server}: produce_error_mid_stream: {e}"));
    let mut outcome = Ok(());
    for _ in 0..5 {
        match stream.next_batch().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    let error = outcome.expect_err("the producer fails after one batch");
    assert!(error.rpc().is_some(), "{server}: {error:?}");

    // An exchange: one output per input, in order.
    let mut exchange = client
        .exchange(
            CONFORMANCE,
            "exchange_scale",
            one("factor", DataType::Float64, Float64Array::from(vec![2.0])),
        )
        .await
        .unwrap_or_else(|e| panic!("{server}: exchange_scale: {e}"));
    for input in [vec![1.0, 2.5], vec![-4.0]] {
        let expected: Vec<f64> = input.iter().map(|v| v * 2.0).collect();
        let output = exchange
            .exchange(batch(
                vec![Field::new("value", DataType::Float64, true)],
                vec![Arc::new(Float64Array::from(input))],
            ))
            .await
            .unwrap_or_else(|e| panic!("{server}: exchange turn: {e}"));
        assert_eq!(
            column::<Float64Array>(&output, "value").values().to_vec(),
            expected,
            "{server}"
        );
    }
    exchange.close().await.unwrap();

    // Reflection: the protocols, and a method's schemas.
    let listed = client
        .list_protocols()
        .await
        .unwrap_or_else(|e| panic!("{server}: list_protocols: {e}"));
    assert!(
        listed
            .protocols
            .iter()
            .any(|p| p.name == CONFORMANCE && p.version == "2.0.0"),
        "{server}: {listed:?}"
    );
    let described = client.describe(CONFORMANCE).await.unwrap();
    let echo = described.method("echo_int").expect("echo_int is described");
    assert_eq!(echo.kind, MethodKind::Unary);
    assert_eq!(echo.params.field(0).data_type(), &DataType::Int64);
    assert_eq!(
        described.method("exchange_scale").unwrap().kind,
        MethodKind::Exchange
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_client_speaks_to_the_python_reference_server() {
    let venv = venv();
    let mut storage = Command::new(venv.join("bin/python"));
    storage.args(["-m", "vgi_rpc.conformance.fake_storage", "--port", "0"]);
    let (_storage, storage_port) = start(storage, "the reference fake storage");
    let mut reference = Command::new(venv.join("bin/vgi-rpc-conformance"));
    reference.args([
        "--http".to_string(),
        "0".to_string(),
        "--describe".to_string(),
        "--fake-storage".to_string(),
        format!("http://127.0.0.1:{storage_port}"),
        "--externalize-threshold".to_string(),
        "4096".to_string(),
    ]);
    let (_reference, port) = start(reference, "vgi-rpc-conformance --http");
    let client = Client::new(&format!("http://127.0.0.1:{port}"))
        .unwrap()
        .with_fetch_allowlist([format!("http://127.0.0.1:{storage_port}")])
        .unwrap();
    runtime().block_on(check(&client, "the Python reference"));
}

#[test]
fn the_same_checks_pass_against_kit_service_conformance() {
    runtime().block_on(async {
        let server = kit_service::testing::TestServer::start_with_storage(
            kit_service::conformance::protocols(),
            4096,
        )
        .await;
        // A plain client, as against the reference: the version comes from reflection.
        let client = Client::new(server.url())
            .unwrap()
            .with_fetch_allowlist([server.url().to_string()])
            .unwrap();
        check(&client, "kit-service").await;
    });
}
