//! Per-request cost of kit-service's in-process rate limiter as identities
//! grow (issue 13, item 6), beside the single-mutex limiter it replaced.
//! Prints figures; asserts nothing (timings belong in docs, not in tests).
//!
//! ```text
//! cargo run --release -p kit-bench --example limiter_cost
//! ```
//!
//! For each population of client addresses: the cost of a caller's first
//! request (the table grows), of a repeat request in random order (the table
//! at full size), the same from two threads at once, and the resident memory
//! the table added. The previous limiter swept its whole map on every new
//! caller once it held 100k, so filling it to 1M would take hours: its
//! first-request figure past 100k is measured over 2,000 callers and its
//! table is filled to 100k only.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kit_service::http::ratelimit::{Caller, DEFAULT_MAX_KEYS, LocalLimiter, RateLimit};

/// The limiter before issue 13 (commit 5505d58), kept for the comparison:
/// token buckets by formatted caller string in one map behind one mutex.
mod before {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Instant;

    use kit_service::http::ratelimit::RateLimit;

    struct Bucket {
        tokens: f64,
        updated: Instant,
    }

    pub struct RateLimiter {
        limit: RateLimit,
        buckets: Mutex<HashMap<String, Bucket>>,
    }

    const MAX_BUCKETS: usize = 100_000;

    impl RateLimiter {
        pub fn new(limit: RateLimit) -> Self {
            RateLimiter {
                limit,
                buckets: Mutex::new(HashMap::new()),
            }
        }

        pub fn check(&self, caller: &str) -> bool {
            let now = Instant::now();
            let capacity = f64::from(self.limit.requests);
            let rate = capacity / self.limit.per.as_secs_f64();
            let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(caller) {
                let full_after = self.limit.per;
                buckets.retain(|_, b| now.saturating_duration_since(b.updated) < full_after);
            }
            let bucket = buckets.entry(caller.to_string()).or_insert(Bucket {
                tokens: capacity,
                updated: now,
            });
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
            bucket.updated = now;
            if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                true
            } else {
                false
            }
        }
    }
}

const REPEATS: usize = 2_000_000;
/// 10,000 requests per 10^6 s: a caller's entry lives at least 100 s after
/// its last request (an idle GCRA entry expires once its TAT passes), so the
/// whole population stays in the table while it is measured, and no request
/// is refused.
const LIMIT: RateLimit = RateLimit {
    requests: 10_000,
    per: Duration::from_secs(1_000_000),
};

fn address(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + n as u32))
}

/// xorshift64: a random order of callers without a crate.
fn random_indices(count: usize, population: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.max(1);
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % population as u64) as usize
        })
        .collect()
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn per_request(elapsed: Duration, requests: usize) -> f64 {
    elapsed.as_nanos() as f64 / requests as f64
}

/// Two threads each running `requests` calls of `check` in their own order.
fn two_threads(requests: usize, population: usize, check: Arc<dyn Fn(usize) + Send + Sync>) -> f64 {
    let started = Instant::now();
    let workers: Vec<_> = (0..2u64)
        .map(|t| {
            let check = check.clone();
            std::thread::spawn(move || {
                for index in random_indices(requests, population, 0x9e37_79b9 + t) {
                    check(index);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    per_request(started.elapsed(), 2 * requests)
}

struct Row {
    first: f64,
    repeat: f64,
    parallel: f64,
    memory: u64,
}

fn after(population: usize) -> Row {
    let baseline = rss_bytes();
    let limiter = Arc::new(LocalLimiter::new(LIMIT, DEFAULT_MAX_KEYS));
    let started = Instant::now();
    for n in 0..population {
        std::hint::black_box(limiter.check(&Caller::ip(Some(address(n)))));
    }
    let first = per_request(started.elapsed(), population);
    let memory = rss_bytes().saturating_sub(baseline);
    assert_eq!(limiter.len(), population, "every caller is tracked");
    let order = random_indices(REPEATS, population, 7);
    let started = Instant::now();
    for index in order {
        std::hint::black_box(limiter.check(&Caller::ip(Some(address(index)))));
    }
    let repeat = per_request(started.elapsed(), REPEATS);
    let shared = limiter.clone();
    let parallel = two_threads(
        REPEATS / 2,
        population,
        Arc::new(move |index| {
            std::hint::black_box(shared.check(&Caller::ip(Some(address(index)))));
        }),
    );
    Row {
        first,
        repeat,
        parallel,
        memory,
    }
}

fn previous(population: usize) -> Row {
    let baseline = rss_bytes();
    let limiter = Arc::new(before::RateLimiter::new(LIMIT));
    let filled = population.min(100_000);
    let started = Instant::now();
    for n in 0..filled {
        std::hint::black_box(limiter.check(&format!("ip:{}", address(n))));
    }
    let mut first = per_request(started.elapsed(), filled);
    let memory = rss_bytes().saturating_sub(baseline);
    if population > filled {
        // Every new caller past 100k sweeps the whole map.
        let extra = 2_000;
        let started = Instant::now();
        for n in filled..filled + extra {
            std::hint::black_box(limiter.check(&format!("ip:{}", address(n))));
        }
        first = per_request(started.elapsed(), extra);
    }
    let tracked = filled + if population > filled { 2_000 } else { 0 };
    let order = random_indices(REPEATS, tracked, 7);
    let started = Instant::now();
    for index in order {
        std::hint::black_box(limiter.check(&format!("ip:{}", address(index))));
    }
    let repeat = per_request(started.elapsed(), REPEATS);
    let shared = limiter.clone();
    let parallel = two_threads(
        REPEATS / 2,
        tracked,
        Arc::new(move |index| {
            std::hint::black_box(shared.check(&format!("ip:{}", address(index))));
        }),
    );
    Row {
        first,
        repeat,
        parallel,
        memory,
    }
}

/// Each row runs in a fresh process (this program with `LIMITER POPULATION`),
/// so its resident memory is its own table's, not memory an earlier row freed.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, limiter, population] = args.as_slice() {
        let population: usize = population.parse().expect("a population");
        let row = match limiter.as_str() {
            "now" => after(population),
            _ => previous(population),
        };
        println!(
            "{:.0} | {:.0} | {:.0} | {:.1}",
            row.first,
            row.repeat,
            row.parallel,
            row.memory as f64 / (1 << 20) as f64
        );
        return;
    }
    println!(
        "limiter cost per request, {} ({} CPUs)",
        if cfg!(debug_assertions) {
            "debug build: use --release for the documented figures"
        } else {
            "release build"
        },
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| limiter | identities | first request (ns) | repeat request (ns) | repeat, 2 threads (ns/request) | table memory (MiB RSS) |"
    );
    println!("|---|---|---|---|---|---|");
    let program = std::env::current_exe().expect("this program's path");
    for population in [1_000, 100_000, 1_000_000] {
        for (name, limiter) in [
            ("sharded GCRA (now)", "now"),
            ("one mutex (before)", "before"),
        ] {
            let output = std::process::Command::new(&program)
                .args([limiter, &population.to_string()])
                .output()
                .expect("the measurement runs");
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
            let row = String::from_utf8_lossy(&output.stdout);
            println!("| {name} | {population} | {} |", row.trim());
        }
    }
}
