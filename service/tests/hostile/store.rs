//! Finding: the embedded object store (`KIT_STORAGE=local`, served under
//! `__objects__`) held uploads in memory with no read timeout (512 MiB ->
//! 1 GiB RSS, no `KIT_MAX_UPLOAD_BYTES` by default), read the whole file for
//! every Range GET (8 x 8 MiB ranges of a 256 MiB object -> 1.46 GiB RSS) and
//! never deleted expired objects. Stream turns after the first had no
//! storage at all.

use std::time::{Duration, Instant};

use crate::support::{RssGuard, Spawn, client, path_and_query, send_zeros, spawn, vend_upload_url};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// What the service may reach while moving hundreds of MiB through the store.
const PEAK_RSS_LIMIT: u64 = 128 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_mib_upload_streams_to_disk() {
    let service = spawn(Spawn {
        storage: true,
        ..Spawn::default()
    });
    let guard = RssGuard::new(service.pid(), 2 * GIB);
    let (upload, _) = vend_upload_url(&service.url).await;
    let started = Instant::now();
    let status = send_zeros(service.address, "PUT", &path_and_query(&upload), 512 * MIB).await;
    let elapsed = started.elapsed();
    let peak = service.peak_rss();
    eprintln!(
        "512 MiB upload, no KIT_MAX_UPLOAD_BYTES: status {status:?} in {elapsed:?}, peak RSS {} MiB",
        peak / MIB
    );
    assert!(!guard.killed(), "the service passed 2 GiB and was killed");
    assert_eq!(status, Some(204));
    let stored: u64 = walk(&service.dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
        .map(|p| p.metadata().unwrap().len())
        .sum();
    assert_eq!(stored, 512 * MIB, "the whole object is on disk");
    assert!(peak < PEAK_RSS_LIMIT, "peak RSS {} MiB", peak / MIB);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_ranges_of_a_256_mib_object_are_read_where_they_lie() {
    let service = spawn(Spawn {
        storage: true,
        ..Spawn::default()
    });
    let guard = RssGuard::new(service.pid(), 2 * GIB);
    let (upload, download) = vend_upload_url(&service.url).await;
    let status = send_zeros(service.address, "PUT", &path_and_query(&upload), 256 * MIB).await;
    assert_eq!(status, Some(204));
    let started = Instant::now();
    let mut ranges = tokio::task::JoinSet::new();
    for index in 0..8u64 {
        let url = download.clone();
        ranges.spawn(async move {
            let start = index * 32 * MIB + index;
            let end = start + 8 * MIB - 1;
            let answer = client()
                .get(&url)
                .header("range", format!("bytes={start}-{end}"))
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let range = answer
                .headers()
                .get("content-range")
                .map(|v| v.to_str().unwrap().to_string());
            let body = answer.bytes().await.unwrap();
            assert_eq!(status, 206);
            assert_eq!(
                range.as_deref(),
                Some(format!("bytes {start}-{end}/{}", 256 * MIB).as_str())
            );
            assert_eq!(body.len() as u64, 8 * MIB);
            assert!(body.iter().all(|b| *b == 0));
        });
    }
    while let Some(done) = ranges.join_next().await {
        done.unwrap();
    }
    let elapsed = started.elapsed();
    let peak = service.peak_rss();
    eprintln!(
        "8 concurrent 8 MiB ranges of a 256 MiB object: {elapsed:?}, peak RSS {} MiB (upload included)",
        peak / MIB
    );
    assert!(!guard.killed(), "the service passed 2 GiB and was killed");
    assert!(peak < PEAK_RSS_LIMIT, "peak RSS {} MiB", peak / MIB);
}

#[tokio::test]
async fn a_stalled_upload_gets_408_and_a_capped_one_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let service = spawn(Spawn {
        storage: true,
        env: &[
            ("KIT_READ_TIMEOUT", "1"),
            ("KIT_MAX_UPLOAD_BYTES", "1048576"),
        ],
        ..Spawn::default()
    });
    let (upload, _) = vend_upload_url(&service.url).await;
    let path = path_and_query(&upload);

    let mut socket = tokio::net::TcpStream::connect(service.address)
        .await
        .unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: 1000\r\n\r\n0123456789",
        service.address
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("the server answers a stalled upload")
        .unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer[..read]);
    eprintln!("stalled upload, KIT_READ_TIMEOUT=1: answered in {elapsed:?}");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");

    // Past the cap without a declared length: refused mid-stream.
    let status = send_zeros(service.address, "PUT", &path, 8 * MIB).await;
    assert_eq!(status, Some(413));
    let leftovers = walk(&service.dir);
    assert!(
        leftovers.is_empty(),
        "nothing is left behind: {leftovers:?}"
    );
}

#[tokio::test]
async fn objects_past_their_expiry_are_deleted_by_the_sweep() {
    let service = spawn(Spawn {
        storage: true,
        env: &[
            ("KIT_STORAGE_EXPIRY_DAYS", "1"),
            ("KIT_STORAGE_SWEEP_INTERVAL", "1"),
        ],
        ..Spawn::default()
    });
    let (old_upload, old_download) = vend_upload_url(&service.url).await;
    let (fresh_upload, fresh_download) = vend_upload_url(&service.url).await;
    for upload in [&old_upload, &fresh_upload] {
        let status = send_zeros(service.address, "PUT", &path_and_query(upload), 1000).await;
        assert_eq!(status, Some(204));
    }
    let key = |url: &str| {
        let path = path_and_query(url);
        let key = path.split_once("/__objects__/").unwrap().1;
        key.split_once('?').unwrap().0.to_string()
    };
    let old = service.dir.join(key(&old_download));
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let started = Instant::now();
    while old.exists() && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "an object 2 days old, KIT_STORAGE_EXPIRY_DAYS=1, sweep every 1 s: deleted after {:?}",
        started.elapsed()
    );
    assert!(!old.exists(), "the expired object is deleted");
    let status = |url: String| async move { client().get(url).send().await.unwrap().status() };
    assert_eq!(status(old_download).await, 404);
    assert_eq!(status(fresh_download).await, 200, "a fresh object stays");
    assert!(service.dir.join(key(&fresh_upload)).exists());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                pending.push(entry.path());
            } else {
                found.push(entry.path());
            }
        }
    }
    found
}
