//! Finding: O(size) work ran on the async workers. Two bodies under 64 KiB
//! that decoded to 1 GiB froze `/readyz` for 6.3 s; two 100 MB responses
//! compressed at once blocked it for 1.8 s. A large body read by doubling
//! its buffer copied it on a worker too.

use std::time::{Duration, Instant};

use crate::support::{ReadyzProbe, Spawn, client, echo_request, spawn};

const MIB: u64 = 1 << 20;

/// 48 MB of bytes from a 16-symbol alphabet: compressible, not trivially.
fn payload() -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..48_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b"abcdefghijklmnop"[(state >> 60) as usize]
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_stays_fast_while_large_responses_are_compressed() {
    let service = spawn(Spawn::default());
    let body = bytes::Bytes::from(echo_request(&payload()));
    let probe = ReadyzProbe::start(&service.url);
    // Let the probe take a few samples first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let url = format!("{}/ConformanceService/echo_bytes", service.url);
        let body = body.clone();
        calls.spawn(async move {
            let response = client()
                .post(url)
                .header("content-type", kit_service::wire::CONTENT_TYPE)
                .header("accept-encoding", "gzip")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let coding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_string());
            let body = response.bytes().await.unwrap();
            (status, coding, body.len())
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = calls.join_next().await {
        answers.push(answer.unwrap());
    }
    let elapsed = started.elapsed();
    let (samples, p99, max) = probe.finish().await;
    eprintln!(
        "2 x 48 MB echoes compressed with gzip: {elapsed:?}, answers {answers:?}, peak RSS {} MiB, /readyz p99 {p99:?} max {max:?} over {samples} samples",
        service.peak_rss() / MIB
    );
    for (status, coding, length) in &answers {
        assert_eq!(*status, 200);
        assert_eq!(coding.as_deref(), Some("gzip"));
        assert!(*length < 40_000_000, "compressed: {length} bytes");
    }
    // gzip at level 6 takes seconds for 48 MB: on an async worker that is
    // how long `/readyz` waited. The bound leaves room for a loaded host.
    assert!(max < Duration::from_millis(500), "/readyz max {max:?}");
}
