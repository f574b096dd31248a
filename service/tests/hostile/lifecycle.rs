//! Findings: 20 clients that disconnected mid-call left
//! `kit_in_flight_requests` at 20 for good and were missing from
//! `kit_requests_total`; a panicking handler's text reached the client.

use std::time::{Duration, Instant};

use kit_service::RpcError;
use kit_service::rpc::Protocol;
use tokio::io::AsyncWriteExt;

use crate::support::{client, int64_request, metric, serve_protocols};

fn hostile_protocol() -> Protocol {
    Protocol::builder("kit.Hostile.v1")
        .version("1.0.0")
        .unary(
            "boom",
            "x: int64",
            "result: int64",
            |_ctx, args| async move {
                let x: i64 = args.get("x")?;
                if x > 0 {
                    panic!("secret internal detail at 0xdeadbeef");
                }
                Ok::<i64, RpcError>(x)
            },
        )
        .build()
        .unwrap()
}

#[tokio::test]
async fn cancelled_calls_leave_the_in_flight_gauge_at_zero() {
    let service = serve_protocols(vec![kit_service::demo::protocol()]).await;
    let address = service.url.trim_start_matches("http://").to_string();
    let body = int64_request("kit.Demo.v1", "1.0.0", "sleep", "milliseconds", 5_000);
    let mut sockets = Vec::new();
    for _ in 0..20 {
        let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST /kit.Demo.v1/sleep HTTP/1.1\r\nhost: {address}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            kit_service::wire::CONTENT_TYPE,
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&body).await.unwrap();
        sockets.push(socket);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&service.url, "kit_in_flight_requests").await < 20.0 {
        assert!(
            Instant::now() < deadline,
            "the 20 calls never got in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(sockets);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let in_flight = metric(&service.url, "kit_in_flight_requests").await;
        let counted = metric(
            &service.url,
            "kit_requests_total{protocol=\"kit.Demo.v1\",method=\"sleep\",status=\"499\"}",
        )
        .await;
        if in_flight == 0.0 && counted == 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 s after the disconnects: in flight {in_flight}, counted {counted} (want 0 and 20)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_panicking_handler_costs_its_request_only() {
    let service = serve_protocols(vec![hostile_protocol(), kit_service::demo::protocol()]).await;
    let client = client();
    let call = |x: i64| {
        client
            .post(format!("{}/kit.Hostile.v1/boom", service.url))
            .header("content-type", kit_service::wire::CONTENT_TYPE)
            .header("x-request-id", format!("hostile-{x}"))
            .body(int64_request("kit.Hostile.v1", "1.0.0", "boom", "x", x))
            .send()
    };
    let response = call(1).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers().get("x-vgi-rpc-error").unwrap(), "true");
    let answer = crate::support::Answer {
        status: 200,
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap(),
    };
    let message = answer.error_message().expect("an error batch");
    assert!(
        message.contains("hostile-1"),
        "names the request id: {message}"
    );
    assert!(
        !answer.body.windows(6).any(|w| w == b"secret"),
        "no panic text"
    );
    // The same client (and pooled connection) keeps working.
    let response = call(0).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-vgi-rpc-error").is_none());
    assert_eq!(metric(&service.url, "kit_in_flight_requests").await, 0.0);
}

/// Finding: `kit_response_bytes_total` ("bytes as sent") counted a body of
/// 256 KiB or more compressed off the async workers by its uncompressed
/// size, and smaller ones by their compressed size.
#[tokio::test]
async fn response_bytes_count_what_went_on_the_wire_for_large_compressed_answers() {
    let service =
        crate::support::in_process(&[("KIT_EXTERNALIZE_THRESHOLD_BYTES", "67108864")]).await;
    let series = "kit_response_bytes_total{protocol=\"ConformanceService\",method=\"echo_bytes\"}";
    let mut on_the_wire = 0usize;
    for size in [10usize, 400_000] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let answer = client()
            .post(format!("{}/ConformanceService/echo_bytes", service.url))
            .header("content-type", kit_service::wire::CONTENT_TYPE)
            .header("accept-encoding", "zstd")
            .body(crate::support::echo_request(&data))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["content-encoding"], "zstd");
        // reqwest here has no decoders: these are the bytes as sent.
        let body = answer.bytes().await.unwrap();
        if size > 256 * 1024 {
            assert!(body.len() < size / 10, "{} bytes", body.len());
        }
        on_the_wire += body.len();
        assert_eq!(
            metric(&service.url, series).await as usize,
            on_the_wire,
            "after the {size}-byte echo"
        );
    }
}
