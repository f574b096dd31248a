//! Finding: memory was bounded by the attacker, not by configuration. A 33 KB
//! zstd body decoded to 1 GiB and was held; an uncompressed 1 GiB body was
//! read whole; a 608-byte request whose pointer named a 132 KB zstd object
//! allocated 6.2 GiB (`KIT_FETCH_MAX_DECOMPRESSED_BYTES` defaulted to 4 GiB).

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::support::{
    ReadyzProbe, Reply, RssGuard, Spawn, client, counting_server, gzip_bomb, pointer_request,
    post_echo, post_zeros, spawn, zstd_bomb,
};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// The figure the issue sets for the service under bombs, with its defaults.
const PEAK_RSS_LIMIT: u64 = 256 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_request_bombs_are_refused_within_the_memory_budget() {
    let service = spawn(Spawn::default());
    let guard = RssGuard::new(service.pid(), 2 * GIB);
    let zstd = Bytes::from(zstd_bomb(GIB));
    let gzip = Bytes::from(gzip_bomb(GIB));
    let probe = ReadyzProbe::start(&service.url);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..20 {
        let (body, encoding) = if index % 2 == 0 {
            (zstd.clone(), "zstd")
        } else {
            (gzip.clone(), "gzip")
        };
        let url = service.url.clone();
        calls.spawn(async move {
            post_echo(&client(), &url, body.to_vec(), Some(encoding))
                .await
                .status
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = calls.join_next().await {
        statuses.push(status.unwrap());
    }
    let elapsed = started.elapsed();
    let (samples, p99, max) = probe.finish().await;
    let peak = service.peak_rss();
    eprintln!(
        "20 bombs (1 GiB decoded each): {elapsed:?}, statuses {statuses:?}, peak RSS {} MiB, /readyz p99 {p99:?} max {max:?} over {samples} samples",
        peak / MIB
    );
    assert!(!guard.killed(), "the service passed 2 GiB and was killed");
    assert!(
        statuses.iter().all(|s| *s == 413 || *s == 503),
        "every bomb refused: {statuses:?}"
    );
    assert!(peak < PEAK_RSS_LIMIT, "peak RSS {} MiB", peak / MIB);
    assert!(p99 < Duration::from_millis(250), "/readyz p99 {p99:?}");
}

#[tokio::test]
async fn an_uncompressed_body_stops_at_the_default_cap() {
    let service = spawn(Spawn::default());
    let guard = RssGuard::new(service.pid(), 2 * GIB);
    let status = post_zeros(service.address, "/ConformanceService/echo_bytes", 512 * MIB).await;
    let peak = service.peak_rss();
    eprintln!(
        "512 MiB uncompressed body: status {status:?}, peak RSS {} MiB",
        peak / MIB
    );
    assert!(!guard.killed());
    assert_eq!(status, Some(413));
    assert!(peak < 192 * MIB, "peak RSS {} MiB", peak / MIB);
}

#[tokio::test]
async fn a_pointer_to_a_4_gib_zstd_object_is_refused_cheaply() {
    let object = counting_server(
        "127.0.0.1",
        Reply::Body(Bytes::from(zstd_bomb(4 * GIB)), Some("zstd")),
    )
    .await;
    let service = spawn(Spawn {
        storage: true,
        env: &[("KIT_URL_ALLOWLIST", "http://127.0.0.1")],
        ..Spawn::default()
    });
    let guard = RssGuard::new(service.pid(), 2 * GIB);
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let url = service.url.clone();
        let location = format!("http://{}/bomb", object.address);
        calls.spawn(
            async move { post_echo(&client(), &url, pointer_request(&location), None).await },
        );
    }
    let mut answers = Vec::new();
    while let Some(answer) = calls.join_next().await {
        answers.push(answer.unwrap());
    }
    let peak = service.peak_rss();
    eprintln!(
        "4 pointers to a 4 GiB zstd object: {:?}, peak RSS {} MiB, answers {:?}",
        started.elapsed(),
        peak / MIB,
        answers
            .iter()
            .map(|a| (a.status, a.error_message()))
            .collect::<Vec<_>>()
    );
    assert!(!guard.killed(), "the service passed 2 GiB and was killed");
    for answer in &answers {
        let message = answer.error_message().expect("an error batch");
        assert!(
            message.contains("exceeded max_decompressed_bytes") || message.contains("budget"),
            "{message}"
        );
    }
    assert!(peak < PEAK_RSS_LIMIT, "peak RSS {} MiB", peak / MIB);
}
