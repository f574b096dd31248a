//! Signed pointer URLs never leak: a pre-signed URL's query string (its
//! signature) and userinfo must not reach the caller's error, the service log,
//! the access log or `/metrics` when fetching the pointer fails.
//!
//! Regression: a failed fetch of a signed URL returned `X-Amz-Signature=...`
//! to the caller, in the message and the traceback. This runs the real binary
//! with a local storage stand-in on loopback, sends pointers that fail in each
//! way a fetch can (404, a refused redirect, a closed port, userinfo), then
//! greps every output the service has.

use std::io::BufRead;
use std::sync::Arc;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use kit_service::wire::ipc::StreamWriter;
use kit_service::wire::{self, Metadata};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "kit-redaction-secret-7f3a";

/// A pointer request for `echo_int` whose data lives at `location`.
fn pointer(location: &str) -> Vec<u8> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Int64,
        false,
    )]));
    let empty = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from(Vec::<i64>::new()))],
    )
    .unwrap();
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), "echo_int".into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "ConformanceService".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.0.0".into()),
        (wire::LOCATION_KEY.into(), location.into()),
    ];
    let mut out = Vec::new();
    let mut writer = StreamWriter::new(&mut out, &schema).unwrap();
    writer.write(&empty, &metadata).unwrap();
    writer.finish();
    out
}

/// A storage stand-in: `/redirect` answers 302 to a signed URL on a
/// non-public address (refused by the fetcher), everything else 404.
async fn storage() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = vec![0u8; 8192];
                let read = socket.read(&mut request).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&request[..read]);
                let response = if head.contains(" /redirect") {
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://169.254.169.254/x?X-Amz-Signature={SECRET}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_string()
                };
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    address
}

#[tokio::test]
async fn a_failed_fetch_of_a_signed_url_leaks_its_signature_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.jsonl");
    let stderr_path = dir.path().join("stderr.log");
    let store = storage().await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kit-service"))
        .args(["serve", "--listen", "127.0.0.1:0", "--conformance"])
        .env("KIT_STORAGE", "local")
        .env("KIT_STORAGE_DIR", dir.path().join("objects"))
        .env("KIT_URL_ALLOWLIST", "http://127.0.0.1")
        .env("KIT_ACCESS_LOG", &access_log)
        .env("KIT_LOG_FORMAT", "json")
        .env("KIT_FETCH_MAX_RETRIES", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("LISTENING ")
        .expect("LISTENING line")
        .to_string();

    let signed = format!("X-Amz-Credential=AKIA%2F{SECRET}&X-Amz-Signature={SECRET}");
    let locations = [
        format!("http://{store}/missing.arrow?{signed}"),
        format!("http://{store}/redirect?{signed}"),
        format!("http://127.0.0.1:1/closed.arrow?{signed}"),
        format!("http://user:{SECRET}@{store}/userinfo.arrow"),
        format!("http://{store}/fragment.arrow#{SECRET}"),
    ];
    let client = reqwest::Client::new();
    for location in &locations {
        let response = client
            .post(format!("{url}/ConformanceService/echo_int"))
            .header("content-type", wire::CONTENT_TYPE)
            .body(pointer(location))
            .send()
            .await
            .unwrap();
        let headers = format!("{:?}", response.headers());
        let body = response.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("ExternalLocation"),
            "no fetch error for {location}: {text}"
        );
        for leaked in [SECRET, "X-Amz-"] {
            assert!(
                !text.contains(leaked),
                "the response for {location} carries {leaked}: {text}"
            );
            assert!(
                !headers.contains(leaked),
                "a header for {location} carries {leaked}: {headers}"
            );
        }
    }
    let metrics = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("kit_requests_total"), "{metrics}");

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let service_log = std::fs::read_to_string(&stderr_path).unwrap();
    let access = std::fs::read_to_string(&access_log).unwrap();
    assert_eq!(
        access
            .lines()
            .filter(|l| l.contains("\"status\":\"error\""))
            .count(),
        locations.len(),
        "one error record per failed call: {access}"
    );
    for (name, text) in [
        ("the service log", &service_log),
        ("the access log", &access),
        ("/metrics", &metrics),
    ] {
        for leaked in [SECRET, "X-Amz-"] {
            assert!(!text.contains(leaked), "{name} carries {leaked}:\n{text}");
        }
    }
}
