//! Finding: no header timeout, no idle timeout, no connection cap. Slow-header
//! and idle connections were never closed, and with a 512 fd limit 600 idle
//! connections locked every other client out.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Spawn, client, echo_request, post_echo, spawn};

/// A fresh client's `/readyz` and one `echo_bytes` call, within 5 s.
async fn served(base: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let fresh = client();
    let attempt = async {
        let ready = fresh
            .get(format!("{base}/readyz"))
            .send()
            .await
            .map_err(|e| format!("readyz: {e}"))?;
        if !ready.status().is_success() {
            return Err(format!("readyz: {}", ready.status()));
        }
        let answer = post_echo(&fresh, base, echo_request(b"still here"), None).await;
        match answer.echoed().as_deref() {
            Some(b"still here") => Ok(started.elapsed()),
            other => Err(format!("echo: {} {other:?}", answer.status)),
        }
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_512_fd_service_keeps_serving_under_600_idle_and_200_slow_header_connections() {
    let service = spawn(Spawn {
        max_open_files: Some(512),
        ..Spawn::default()
    });
    let address = service.address;
    // A server that stops accepting leaves connects hanging in the backlog:
    // each gets 500 ms, so the test stays bounded either way.
    let connect = || async move {
        tokio::time::timeout(Duration::from_millis(500), TcpStream::connect(address))
            .await
            .ok()
            .and_then(Result::ok)
    };
    let mut idle = Vec::new();
    for _ in 0..600 {
        if let Some(socket) = connect().await {
            idle.push(socket);
        }
    }
    let mut slow = Vec::new();
    for _ in 0..200 {
        if let Some(mut socket) = connect().await {
            let _ = socket
                .write_all(b"POST /ConformanceService/echo_bytes HTTP/1.1\r\nhost: x\r\n")
                .await;
            slow.push(socket);
        }
    }
    // Keep the slow ones trickling a header byte at a time while others call.
    let trickle = tokio::spawn(async move {
        for _ in 0..10 {
            for socket in slow.iter_mut() {
                let _ = socket.write_all(b"x").await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        slow
    });
    let mut latencies = Vec::new();
    for round in 0..5 {
        match served(&service.url).await {
            Ok(latency) => latencies.push(latency),
            Err(error) => panic!("round {round}: another client was not served: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _slow = trickle.await.unwrap();
    let fds = std::fs::read_dir(format!("/proc/{}/fd", service.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    eprintln!(
        "512-fd service, 600 idle + 200 slow-header connections: fresh clients served in {latencies:?}; service holds {fds} fds"
    );
    assert!(fds < 512, "{fds} descriptors open");
}

#[tokio::test]
async fn idle_and_slow_header_connections_are_closed_by_the_server() {
    let service = spawn(Spawn {
        env: &[("KIT_HEADER_TIMEOUT", "1"), ("KIT_IDLE_TIMEOUT", "2")],
        ..Spawn::default()
    });
    let started = Instant::now();
    let mut idle = TcpStream::connect(service.address).await.unwrap();
    let mut slow = TcpStream::connect(service.address).await.unwrap();
    slow.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    // A keep-alive connection that served one request, then went quiet.
    let mut kept = TcpStream::connect(service.address).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let read = kept.read(&mut buffer).await.unwrap();
    assert!(buffer[..read].starts_with(b"HTTP/1.1 200"));
    let mut closed_at = Vec::new();
    for (name, socket, within) in [
        ("slow-header", &mut slow, Duration::from_secs(4)),
        ("idle", &mut idle, Duration::from_secs(5)),
        ("keep-alive", &mut kept, Duration::from_secs(5)),
    ] {
        let closed = tokio::time::timeout(within, async {
            loop {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the {name} connection was still open after {:?}",
            started.elapsed()
        );
        closed_at.push((name, started.elapsed()));
    }
    eprintln!("closed by the server (header timeout 1 s, idle timeout 2 s): {closed_at:?}");
    // Idle keep-alive connections get the idle timeout, not the header timeout.
    assert!(
        closed_at[2].1 >= Duration::from_millis(1500),
        "{closed_at:?}"
    );
}
