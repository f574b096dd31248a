//! Per-caller rate limiting: `N` requests per `SECONDS`, per API key, else per
//! client IP.
//!
//! A token bucket per caller, in process memory: with N workers or replicas
//! the effective limit is N times the configured one (the seeds' deployment
//! guides say the same of theirs). The client IP is the socket peer unless the
//! peer is a configured trusted proxy, in which case the right-most untrusted
//! `X-Forwarded-For` hop is used; an untrusted client cannot pick its bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `N/SECONDS`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
}

impl RateLimit {
    /// Parses `N/SECONDS` (`off` is handled by the caller).
    pub fn parse(text: &str) -> Result<RateLimit, String> {
        let (n, seconds) = text
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("expected `N/SECONDS` or `off`, got `{text}`"))?;
        let requests: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{n}` is not a request count"))?;
        let seconds: u64 = seconds
            .trim()
            .parse()
            .map_err(|_| format!("`{seconds}` is not a number of seconds"))?;
        if requests == 0 || seconds == 0 {
            return Err("both N and SECONDS must be positive".into());
        }
        Ok(RateLimit {
            requests,
            per: Duration::from_secs(seconds),
        })
    }
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until a request would be allowed (0 when allowed).
    pub retry_after: u64,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by caller key.
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// Idle buckets are dropped once the map grows past this many callers.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, caller: &str) -> Decision {
        self.check_at(caller, Instant::now())
    }

    fn check_at(&self, caller: &str, now: Instant) -> Decision {
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
            Decision {
                allowed: true,
                limit: self.limit.requests,
                remaining: bucket.tokens.floor() as u32,
                retry_after: 0,
            }
        } else {
            let wait = ((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64;
            Decision {
                allowed: false,
                limit: self.limit.requests,
                remaining: 0,
                retry_after: wait,
            }
        }
    }
}

/// A CIDR block of trusted proxies (`10.0.0.0/8`, `127.0.0.1`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let text = text.trim();
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}` has an invalid prefix length"))?,
            None => max,
        };
        Ok(Cidr { network, prefix })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

/// The client address: the peer, or the right-most untrusted hop of
/// `X-Forwarded-For` when the peer is a trusted proxy.
pub fn client_ip(
    peer: Option<IpAddr>,
    forwarded_for: Option<&str>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let hops: Vec<IpAddr> = forwarded_for
        .unwrap_or("")
        .split(',')
        .filter_map(|h| h.trim().parse().ok())
        .collect();
    Some(
        hops.into_iter()
            .rev()
            .find(|ip| !is_trusted(*ip))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_limits() {
        assert_eq!(
            RateLimit::parse("10/60").unwrap(),
            RateLimit {
                requests: 10,
                per: Duration::from_secs(60)
            }
        );
        assert!(RateLimit::parse("10").is_err());
        assert!(RateLimit::parse("0/1").is_err());
        assert!(RateLimit::parse("x/1").is_err());
    }

    #[test]
    fn buckets_empty_and_refill() {
        let limiter = RateLimiter::new(RateLimit {
            requests: 2,
            per: Duration::from_secs(10),
        });
        let start = Instant::now();
        assert_eq!(limiter.check_at("a", start).remaining, 1);
        assert!(limiter.check_at("a", start).allowed);
        let refused = limiter.check_at("a", start);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 5);
        assert!(
            limiter.check_at("b", start).allowed,
            "callers have separate buckets"
        );
        assert!(
            limiter
                .check_at("a", start + Duration::from_secs(5))
                .allowed
        );
    }

    #[test]
    fn forwarded_for_is_honoured_only_from_trusted_proxies() {
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(
            client_ip(Some(outsider), Some("1.2.3.4"), &trusted),
            Some(outsider)
        );
        assert_eq!(
            client_ip(
                Some(proxy),
                Some("1.2.3.4, 198.51.100.7, 10.0.0.5"),
                &trusted
            ),
            Some("198.51.100.7".parse().unwrap())
        );
        assert_eq!(client_ip(Some(proxy), None, &trusted), Some(proxy));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
    }
}
