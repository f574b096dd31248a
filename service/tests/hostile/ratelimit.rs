//! Rate limits that hold (issue 13, item 6): failed API keys throttled per
//! client address before any key is compared, and one limit shared by two
//! replicas through a real `redis-server` (Debian's package; `.ci/test`
//! installs it). A missing `redis-server` fails these tests: it is not a skip.

use std::future::Future;
use std::net::{IpAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kit_service::wire;

use crate::support::{self, Spawn};

/// A `redis-server` on a free loopback port, with no persistence; killed on drop.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        Redis::start_on(port)
    }

    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "`redis-server` could not be started ({error}): install Debian's `redis-server` package (`.ci/test` does: `apt-get install redis-server`)"
                )
            });
        let mut redis = Redis { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on 127.0.0.1:{port} within 10 s"
            );
            assert!(
                matches!(redis.child.try_wait(), Ok(None)),
                "redis-server exited at start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn answers_ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client whose connections come from `source` (any 127/8 address is local).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// One `echo_bytes` call presenting `key`.
async fn call(client: &reqwest::Client, base: &str, key: &str) -> support::Answer {
    let response = client
        .post(format!("{base}/ConformanceService/echo_bytes"))
        .header("content-type", wire::CONTENT_TYPE)
        .header("x-api-key", key)
        .body(support::echo_request(b"x"))
        .send()
        .await
        .expect("the service answers");
    support::Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.unwrap_or_default(),
    }
}

/// `vgi_rpc.error_kind` of the first error batch.
fn error_kind(answer: &support::Answer) -> Option<String> {
    let streams = wire::ipc::read_streams(&answer.body).ok()?;
    streams.iter().flat_map(|s| s.batches.iter()).find_map(|b| {
        (b.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION"))
            .then(|| b.get(wire::ERROR_KIND_KEY).unwrap_or_default().to_string())
    })
}

/// Runs `call(0..total)`, `concurrency` at a time; the results in any order.
async fn concurrently<T, F, Fut>(total: usize, concurrency: usize, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let call = Arc::new(call);
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (next, call) = (next.clone(), call.clone());
        workers.spawn(async move {
            let mut results = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= total {
                    return results;
                }
                results.push(call(n).await);
            }
        });
    }
    let mut results = Vec::with_capacity(total);
    while let Some(batch) = workers.join_next().await {
        results.extend(batch.expect("a worker panicked"));
    }
    results
}

async fn metrics(base: &str) -> String {
    support::client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn remaining(answer: &support::Answer) -> u64 {
    answer.headers["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Finding: 2,000 wrong keys in 0.85 s, all 401; the limiter ran after auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_are_throttled_per_address_before_the_key_is_compared() {
    const ALLOWED_FAILURES: usize = 10;
    const CONCURRENCY: usize = 8;
    let service = support::in_process(&[
        ("KIT_API_KEYS", "ci=the-right-key-0123456789"),
        ("KIT_AUTH_FAILURE_LIMIT", "10/60"),
    ])
    .await;
    let attacker = client_from("127.0.0.1");
    let started = Instant::now();
    let (client, url) = (attacker.clone(), service.url.clone());
    let answers = concurrently(2000, CONCURRENCY, move |n| {
        let (client, url) = (client.clone(), url.clone());
        async move { call(&client, &url, &format!("guess-{n:06}")).await }
    })
    .await;
    let elapsed = started.elapsed();
    let unauthorized = answers.iter().filter(|a| a.status == 401).count();
    let throttled: Vec<&support::Answer> = answers.iter().filter(|a| a.status == 429).collect();
    println!(
        "2000 wrong keys from one address in {:.2} s: {unauthorized} compared (401), {} throttled (429) before comparison",
        elapsed.as_secs_f64(),
        throttled.len()
    );
    assert_eq!(unauthorized + throttled.len(), 2000, "only 401 and 429");
    // Attempts already past the throttle when the last allowed failure is
    // counted may still be compared: at most one per concurrent request.
    assert!(
        (ALLOWED_FAILURES..=ALLOWED_FAILURES + CONCURRENCY).contains(&unauthorized),
        "{unauthorized} keys compared, configured {ALLOWED_FAILURES}"
    );
    for answer in &throttled {
        let retry_after: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
        assert_eq!(answer.headers["content-type"], wire::CONTENT_TYPE);
    }
    assert_eq!(error_kind(throttled[0]).as_deref(), Some("auth_throttled"));
    // From the throttled address even the right key is not compared.
    let blocked = call(&attacker, &service.url, "the-right-key-0123456789").await;
    assert_eq!(blocked.status, 429);
    // Another address with the right key is served.
    let other = call(
        &client_from("127.0.0.2"),
        &service.url,
        "the-right-key-0123456789",
    )
    .await;
    assert_eq!(other.status, 200, "{:?}", other.error_message());
    assert_eq!(other.echoed().as_deref(), Some(&b"x"[..]));
    let text = metrics(&service.url).await;
    assert_eq!(
        metric(&text, "kit_auth_throttled_total"),
        throttled.len() as u64 + 1
    );
}

/// Sends `total` calls with `key` over `replicas` in turn, `concurrency` at
/// a time; returns how many were allowed (200) and refused (429).
async fn spread(
    replicas: &[String],
    key: &str,
    total: usize,
    concurrency: usize,
) -> (usize, usize) {
    let client = support::client();
    let (replicas, key) = (replicas.to_vec(), key.to_string());
    let statuses = concurrently(total, concurrency, move |n| {
        let (client, url) = (client.clone(), replicas[n % replicas.len()].clone());
        let key = key.clone();
        async move { call(&client, &url, &key).await.status }
    })
    .await;
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(allowed + refused, total, "only 200 and 429: {statuses:?}");
    (allowed, refused)
}

/// Finding: the limit was per process, so N replicas allowed N times it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_enforce_one_limit() {
    const LIMIT: usize = 100;
    let redis = Redis::start();
    let url = redis.url();
    // 100 per hour: one request refills every 36 s, longer than this test.
    let env = [
        ("KIT_API_KEYS", "ci=shared-key-0123456789"),
        ("KIT_RATE_LIMIT", "100/3600"),
        ("KIT_RATE_LIMIT_STORE", url.as_str()),
    ];
    let first = support::spawn(Spawn {
        env: &env,
        ..Spawn::default()
    });
    let second = support::spawn(Spawn {
        env: &env,
        ..Spawn::default()
    });
    let replicas = [first.url.clone(), second.url.clone()];
    let started = Instant::now();
    let (allowed, refused) = spread(&replicas, "shared-key-0123456789", 4 * LIMIT, 8).await;
    println!(
        "shared limit {LIMIT}/3600 over 2 replicas and redis: {allowed} allowed, {refused} refused of {} in {:.2} s",
        4 * LIMIT,
        started.elapsed().as_secs_f64()
    );
    assert!(
        (LIMIT..=LIMIT + 1).contains(&allowed),
        "one limit across replicas: {allowed} allowed, limit {LIMIT}"
    );

    // The same two replicas without the store: each keeps its own count.
    let local_env = [
        ("KIT_API_KEYS", "ci=shared-key-0123456789"),
        ("KIT_RATE_LIMIT", "100/3600"),
    ];
    let first = support::spawn(Spawn {
        env: &local_env,
        ..Spawn::default()
    });
    let second = support::spawn(Spawn {
        env: &local_env,
        ..Spawn::default()
    });
    let (allowed, _) = spread(
        &[first.url.clone(), second.url.clone()],
        "shared-key-0123456789",
        4 * LIMIT,
        8,
    )
    .await;
    println!(
        "the same without KIT_RATE_LIMIT_STORE: {allowed} allowed of {}",
        4 * LIMIT
    );
    assert_eq!(
        allowed,
        2 * LIMIT,
        "in process, each replica allows the limit"
    );
}

/// What a failing store means is configuration: `open` keeps serving under
/// the replica's own limit, `closed` refuses with 503 and says why, and both
/// use the store again once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_store_fails_open_or_closed_as_configured() {
    let redis = Redis::start();
    let url = redis.url();
    let env = |failure: &'static str| -> [(&str, &str); 4] {
        [
            ("KIT_API_KEYS", "ci=store-key-0123456789"),
            ("KIT_RATE_LIMIT", "1000/60"),
            ("KIT_RATE_LIMIT_STORE", url.as_str()),
            ("KIT_RATE_LIMIT_STORE_FAILURE", failure),
        ]
    };
    let open_env = env("open");
    let closed_env = env("closed");
    let open = support::spawn(Spawn {
        env: &open_env,
        ..Spawn::default()
    });
    let closed = support::spawn(Spawn {
        env: &closed_env,
        ..Spawn::default()
    });
    let client = support::client();
    let key = "store-key-0123456789";
    let before = [
        call(&client, &open.url, key).await,
        call(&client, &closed.url, key).await,
    ];
    assert!(before.iter().all(|a| a.status == 200), "with redis up");
    assert_eq!(
        before.iter().map(remaining).collect::<Vec<_>>(),
        [999, 998],
        "both replicas count in redis"
    );
    let port = redis.stop();

    for _ in 0..5 {
        let served = call(&client, &open.url, key).await;
        assert_eq!(
            served.status,
            200,
            "fail-open serves: {:?}",
            served.error_message()
        );
    }
    let refused = call(&client, &closed.url, key).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.headers["content-type"], wire::CONTENT_TYPE);
    assert_eq!(
        error_kind(&refused).as_deref(),
        Some("rate_limit_store_unavailable")
    );
    let message = refused.error_message().unwrap();
    assert!(
        message.contains("KIT_RATE_LIMIT_STORE_FAILURE=closed"),
        "{message}"
    );
    assert!(
        !message.contains("127.0.0.1"),
        "the store address stays in the log: {message}"
    );
    assert!(
        metric(
            &metrics(&open.url).await,
            "kit_rate_limit_store_errors_total"
        ) >= 5
    );
    assert!(
        metric(
            &metrics(&closed.url).await,
            "kit_rate_limit_store_errors_total"
        ) >= 1
    );

    // Back on the same port (empty: no persistence): after the 1 s pause
    // both decide in redis again. The open replica's own limiter counted 5
    // calls (its next would leave 994); redis, restarted, counts from zero.
    let _redis = Redis::start_on(port);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let answer = call(&client, &closed.url, key).await;
    assert_eq!(answer.status, 200, "{:?}", answer.error_message());
    assert_eq!(remaining(&answer), 999);
    let answer = call(&client, &open.url, key).await;
    assert_eq!(answer.status, 200);
    assert_eq!(remaining(&answer), 998, "decided in redis, not in process");
}

/// Finding: requests refused at admission (401, the auth throttle's and the
/// rate limit's 429) never reached `kit_requests_total` or the request
/// duration, where a 415 or 404 after routing did: a credential-stuffing
/// run or a client over its limit was invisible in the request metrics.
#[tokio::test]
async fn refusals_at_admission_are_counted_like_every_answer() {
    let service = support::in_process(&[
        ("KIT_API_KEYS", "ci=the-right-key-0123456789"),
        ("KIT_AUTH_FAILURE_LIMIT", "2/60"),
        ("KIT_RATE_LIMIT", "2/3600"),
    ])
    .await;
    let (this, other) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    let statuses = [
        call(&this, &service.url, "wrong-key-one").await.status,
        call(&this, &service.url, "wrong-key-two").await.status,
        call(&this, &service.url, "wrong-key-three").await.status,
        call(&other, &service.url, "the-right-key-0123456789")
            .await
            .status,
        call(&other, &service.url, "the-right-key-0123456789")
            .await
            .status,
        call(&other, &service.url, "the-right-key-0123456789")
            .await
            .status,
    ];
    assert_eq!(statuses, [401, 401, 429, 200, 200, 429]);
    let text = metrics(&service.url).await;
    let requests = |protocol: &str, method: &str, status: u16| {
        metric(
            &text,
            &format!(
                "kit_requests_total{{protocol=\"{protocol}\",method=\"{method}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(requests("-", "-", 401), 2, "{text}");
    assert_eq!(requests("-", "-", 429), 2, "{text}");
    assert_eq!(
        requests("ConformanceService", "echo_bytes", 200),
        2,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "kit_request_duration_seconds_count{protocol=\"-\",method=\"-\"}"
        ),
        4,
        "{text}"
    );
}
