//! Per-caller rate limiting: `N` requests per `SECONDS`, per API key, else per
//! client IP; and the failed-authentication throttle, per client IP.
//!
//! Each limiter decides in process ([`local::LocalLimiter`], sharded GCRA with
//! bounded memory) unless a shared store is configured
//! (`KIT_RATE_LIMIT_STORE`, [`shared::SharedStore`]): then every replica asks
//! the same Redis and one limit holds across them. When that store fails,
//! `KIT_RATE_LIMIT_STORE_FAILURE` decides: `open` falls back to this
//! replica's own limiter (never unlimited), `closed` refuses with 503.
//!
//! The client IP is the socket peer unless the peer is a configured trusted
//! proxy, in which case the right-most untrusted `X-Forwarded-For` hop is
//! used; an untrusted client cannot pick its bucket. IPv6 clients are limited
//! per /64, the block one subscriber usually holds, so rotating addresses
//! inside it buys nothing.

pub mod local;
pub mod shared;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use local::LocalLimiter;
pub use shared::{SharedStore, StoreError};

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

impl std::fmt::Display for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.requests, self.per.as_secs())
    }
}

/// Who a limit counts: an API key's name, a client address, or nobody known.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// The name of the API key presented (never the key).
    Key(Arc<str>),
    /// An IPv4 address, or the /64 of an IPv6 address.
    Ip(IpAddr),
    /// No peer address (router tests without a socket).
    Unknown,
}

impl Caller {
    /// The caller holding the API key named `name`.
    pub fn key(name: &str) -> Caller {
        Caller::Key(Arc::from(name))
    }

    /// The caller at `address`: IPv4 as is (also when mapped into IPv6),
    /// IPv6 cut to its /64.
    pub fn ip(address: Option<IpAddr>) -> Caller {
        match address {
            None => Caller::Unknown,
            Some(IpAddr::V4(v4)) => Caller::Ip(IpAddr::V4(v4)),
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Caller::Ip(IpAddr::V4(v4)),
                None => Caller::Ip(IpAddr::V6((u128::from(v6) & !0u128 << 64).into())),
            },
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Key(name) => write!(f, "key:{name}"),
            Caller::Ip(IpAddr::V6(v6)) => write!(f, "ip:{v6}/64"),
            Caller::Ip(address) => write!(f, "ip:{address}"),
            Caller::Unknown => f.write_str("unknown"),
        }
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

/// What a failing shared store means (`KIT_RATE_LIMIT_STORE_FAILURE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreFailure {
    /// Decide with this replica's own limiter (the limit then holds per replica).
    #[default]
    Open,
    /// Refuse the request with 503 + `Retry-After`.
    Closed,
}

impl StoreFailure {
    /// Parses `open` or `closed`.
    pub fn parse(text: &str) -> Result<StoreFailure, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "open" => Ok(StoreFailure::Open),
            "closed" => Ok(StoreFailure::Closed),
            other => Err(format!("expected `open` or `closed`, got `{other}`")),
        }
    }
}

/// How a limiter came to its answer.
#[derive(Debug)]
pub enum Verdict {
    /// Decided by the shared store, or in process when there is none.
    Decided(Decision),
    /// The shared store failed and `open` let this replica decide.
    Fallback(Decision, StoreError),
    /// The shared store failed and `closed` refuses the request.
    Unavailable(StoreError),
}

impl Verdict {
    /// The decision, unless the store failed closed.
    pub fn decision(&self) -> Option<Decision> {
        match self {
            Verdict::Decided(decision) | Verdict::Fallback(decision, _) => Some(*decision),
            Verdict::Unavailable(_) => None,
        }
    }
}

/// Callers tracked in process by default (`KIT_RATE_LIMIT_MAX_KEYS`): 16
/// bytes an entry, about 35 MiB of table at a million callers (measured by
/// `bench/examples/limiter_cost.rs`).
pub const DEFAULT_MAX_KEYS: usize = 1 << 20;

/// One limit over many callers, in process or in a shared store.
#[derive(Debug)]
pub struct RateLimiter {
    namespace: &'static str,
    limit: RateLimit,
    local: LocalLimiter,
    shared: Option<(Arc<SharedStore>, StoreFailure)>,
}

impl RateLimiter {
    /// An in-process limiter (requests namespace, default key cap).
    pub fn new(limit: RateLimit) -> Self {
        RateLimiter::in_process("requests", limit, DEFAULT_MAX_KEYS)
    }

    /// An in-process limiter named `namespace` tracking about `max_keys` callers.
    pub fn in_process(namespace: &'static str, limit: RateLimit, max_keys: usize) -> Self {
        RateLimiter {
            namespace,
            limit,
            local: LocalLimiter::new(limit, max_keys),
            shared: None,
        }
    }

    /// The same limiter deciding in `store`, with `failure` when it fails.
    pub fn with_store(mut self, store: Arc<SharedStore>, failure: StoreFailure) -> Self {
        self.shared = Some((store, failure));
        self
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// The in-process limiter (the whole limiter without a store).
    pub fn local(&self) -> &LocalLimiter {
        &self.local
    }

    /// Counts one request of `caller`.
    pub async fn check(&self, caller: &Caller) -> Verdict {
        self.decide(caller, true).await
    }

    /// Whether a request of `caller` would be allowed, counting nothing.
    pub async fn peek(&self, caller: &Caller) -> Verdict {
        self.decide(caller, false).await
    }

    async fn decide(&self, caller: &Caller, consume: bool) -> Verdict {
        let local = || {
            if consume {
                self.local.check(caller)
            } else {
                self.local.peek(caller)
            }
        };
        let Some((store, failure)) = &self.shared else {
            return Verdict::Decided(local());
        };
        match store
            .decide(self.namespace, caller, &self.limit, consume)
            .await
        {
            Ok(decision) => Verdict::Decided(decision),
            Err(error) => match failure {
                StoreFailure::Open => Verdict::Fallback(local(), error),
                StoreFailure::Closed => Verdict::Unavailable(error),
            },
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
    fn ipv6_callers_are_counted_per_64_and_mapped_v4_as_v4() {
        let a = Caller::ip(Some("2001:db8:1:2:aaaa::1".parse().unwrap()));
        let b = Caller::ip(Some("2001:db8:1:2:bbbb::9".parse().unwrap()));
        let other = Caller::ip(Some("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.to_string(), "ip:2001:db8:1:2::/64");
        assert_eq!(
            Caller::ip(Some("::ffff:198.51.100.7".parse().unwrap())),
            Caller::ip(Some("198.51.100.7".parse().unwrap()))
        );
        assert_eq!(Caller::key("ci").to_string(), "key:ci");
        assert_eq!(Caller::ip(None), Caller::Unknown);
    }

    #[tokio::test]
    async fn a_closed_store_refuses_and_an_open_one_falls_back_to_the_replica() {
        let limit = RateLimit {
            requests: 1,
            per: Duration::from_secs(60),
        };
        // Port 1 on loopback: nothing listens, the connect fails at once.
        let store = Arc::new(SharedStore::open("redis://127.0.0.1:1").unwrap());
        let closed = RateLimiter::new(limit).with_store(store.clone(), StoreFailure::Closed);
        assert!(matches!(
            closed.check(&Caller::key("a")).await,
            Verdict::Unavailable(_)
        ));
        let open = RateLimiter::new(limit).with_store(store, StoreFailure::Open);
        let first = open.check(&Caller::key("a")).await;
        assert!(
            matches!(first, Verdict::Fallback(d, _) if d.allowed),
            "{first:?}"
        );
        let second = open.check(&Caller::key("a")).await;
        assert!(
            matches!(second, Verdict::Fallback(d, _) if !d.allowed),
            "the replica's own limit still holds: {second:?}"
        );
        assert_eq!(StoreFailure::parse("CLOSED"), Ok(StoreFailure::Closed));
        assert!(StoreFailure::parse("maybe").is_err());
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
