//! The in-process keyed limiter: GCRA over 64 independently locked shards.
//!
//! Why not one map behind one mutex: every request of every caller took the
//! same lock, and once the map held 100k callers each new caller swept all of
//! them, so past 100k identities a request cost ten times as much. Here a
//! caller touches one shard, and a shard is swept (expired callers dropped)
//! only when it doubled since its last sweep or once per period, so each
//! entry is looked at a bounded number of times: the cost per request stays
//! flat as identities grow (figures in `docs/reliability.md`).
//!
//! Why GCRA: one `u64` per caller (the theoretical arrival time, TAT), the
//! same arithmetic as the shared store's Lua script, and an idle caller is
//! exactly a caller whose TAT has passed, so expiring it loses nothing.
//!
//! Memory is bounded by `max_keys`: callers are stored as a 64-bit SipHash of
//! their identity under a per-process random key (no strings, 16 bytes per
//! entry plus the table's slack), and a shard that is full after a sweep
//! puts new callers in one shared overflow bucket. A flood of fresh
//! addresses then limits only the flood, never the callers already tracked.
//! A collision of two callers' hashes (about 1 in 2^40 at a million callers,
//! not steerable without the key) would make them share a bucket.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Caller, Decision, RateLimit};

/// Shards of the map; a power of two.
const SHARDS: usize = 64;
/// A shard is not swept for growth below this many entries.
const MIN_SWEEP_LEN: usize = 1024;

/// GCRA parameters in nanoseconds: one request costs `interval`, a caller may
/// run `period` (= `interval` × requests) ahead of now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    pub interval: u64,
    pub period: u64,
    pub requests: u32,
}

impl Gcra {
    /// The parameters of `limit` in `unit` nanoseconds (1 for the local
    /// limiter, 1000 for the shared store's microseconds).
    pub(crate) fn of(limit: &RateLimit, unit: u64) -> Gcra {
        let per = (limit.per.as_nanos() / u128::from(unit)).min(u128::from(u64::MAX / 2)) as u64;
        let interval = (per / u64::from(limit.requests)).max(1);
        Gcra {
            interval,
            period: interval.saturating_mul(u64::from(limit.requests)),
            requests: limit.requests,
        }
    }

    /// The decision for a caller whose stored TAT is `tat` (`None`: never
    /// seen or expired), and the TAT to store when the request is allowed.
    pub(crate) fn decide(&self, tat: Option<u64>, now: u64, unit: u64) -> (Decision, u64) {
        let tat = tat.unwrap_or(now).max(now);
        let next = tat.saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.period {
            let wait = ahead - self.period;
            let per_second = 1_000_000_000 / unit;
            let seconds = wait.div_ceil(per_second).max(1);
            let decision = Decision {
                allowed: false,
                limit: self.requests,
                remaining: 0,
                retry_after: seconds,
            };
            return (decision, tat);
        }
        let decision = Decision {
            allowed: true,
            limit: self.requests,
            remaining: ((self.period - ahead) / self.interval).min(u64::from(u32::MAX)) as u32,
            retry_after: 0,
        };
        (decision, next)
    }
}

/// A hasher for keys that already are a SipHash output.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in anyway.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

type Tats = HashMap<u64, u64, BuildHasherDefault<Prehashed>>;

struct Shard {
    tats: Tats,
    /// TAT of the bucket new callers share once the shard is full.
    overflow: Option<u64>,
    /// Sweep when an insert finds the shard this large.
    sweep_at_len: usize,
    /// When the shard was last swept (ns since the limiter's epoch).
    swept_at: u64,
}

impl Shard {
    fn sweep(&mut self, now: u64) {
        self.tats.retain(|_, tat| *tat > now);
        if self.overflow.is_some_and(|tat| tat <= now) {
            self.overflow = None;
        }
        if self.tats.capacity() > 4 * self.tats.len().max(MIN_SWEEP_LEN) {
            self.tats.shrink_to(2 * self.tats.len());
        }
        self.sweep_at_len = (2 * self.tats.len()).max(MIN_SWEEP_LEN);
        self.swept_at = now;
    }
}

/// GCRA buckets by caller, sharded; memory bounded by `max_keys`.
pub struct LocalLimiter {
    gcra: Gcra,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    epoch: Instant,
    max_per_shard: usize,
    sweep_every: u64,
}

impl std::fmt::Debug for LocalLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("gcra", &self.gcra)
            .field("max_keys", &(self.max_per_shard * SHARDS))
            .finish()
    }
}

impl LocalLimiter {
    /// A limiter for `limit` tracking at most about `max_keys` callers.
    pub fn new(limit: RateLimit, max_keys: usize) -> LocalLimiter {
        let gcra = Gcra::of(&limit, 1);
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    tats: Tats::default(),
                    overflow: None,
                    sweep_at_len: MIN_SWEEP_LEN,
                    swept_at: 0,
                })
            })
            .collect();
        LocalLimiter {
            gcra,
            shards,
            hasher: RandomState::new(),
            epoch: Instant::now(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            sweep_every: gcra.period.max(Duration::from_secs(1).as_nanos() as u64),
        }
    }

    /// Counts one request of `caller`: allowed, or refused with the wait.
    pub fn check(&self, caller: &Caller) -> Decision {
        self.decide(caller, self.now(), true)
    }

    /// Whether a request of `caller` would be allowed, without counting it.
    pub fn peek(&self, caller: &Caller) -> Decision {
        self.decide(caller, self.now(), false)
    }

    /// Callers tracked now (expired ones included until their shard is swept).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).tats.len())
            .sum()
    }

    /// True when no caller is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every expired caller now (each shard in turn).
    pub fn sweep(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(|p| p.into_inner()).sweep(now);
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn decide(&self, caller: &Caller, now: u64, consume: bool) -> Decision {
        let hash = self.hasher.hash_one(caller);
        // Bits 32..38 pick the shard: hashbrown uses the low bits for the
        // bucket and the top 7 for its tags, so both keep their entropy.
        let index = (hash >> 32) as usize & (SHARDS - 1);
        let mut shard = self.shards[index].lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_sub(shard.swept_at) >= self.sweep_every {
            shard.sweep(now);
        }
        if let Some(tat) = shard.tats.get_mut(&hash) {
            let (decision, next) = self.gcra.decide(Some(*tat), now, 1);
            if consume && decision.allowed {
                *tat = next;
            }
            return decision;
        }
        if consume && shard.tats.len() >= shard.sweep_at_len {
            shard.sweep(now);
        }
        if shard.tats.len() >= self.max_per_shard {
            let (decision, next) = self.gcra.decide(shard.overflow, now, 1);
            if consume && decision.allowed {
                shard.overflow = Some(next);
            }
            return decision;
        }
        let (decision, next) = self.gcra.decide(None, now, 1);
        if consume && decision.allowed {
            shard.tats.insert(hash, next);
        }
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn limiter(requests: u32, seconds: u64, max_keys: usize) -> LocalLimiter {
        LocalLimiter::new(
            RateLimit {
                requests,
                per: Duration::from_secs(seconds),
            },
            max_keys,
        )
    }

    fn key(name: &str) -> Caller {
        Caller::key(name)
    }

    #[test]
    fn buckets_empty_and_refill() {
        let limiter = limiter(2, 10, 1000);
        let start = 5 * SECOND;
        assert_eq!(limiter.decide(&key("a"), start, true).remaining, 1);
        assert!(limiter.decide(&key("a"), start, true).allowed);
        let refused = limiter.decide(&key("a"), start, true);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, 5);
        assert!(
            limiter.decide(&key("b"), start, true).allowed,
            "callers have separate buckets"
        );
        assert!(limiter.decide(&key("a"), start + 5 * SECOND, true).allowed);
        assert!(!limiter.decide(&key("a"), start + 5 * SECOND, true).allowed);
    }

    #[test]
    fn peeking_counts_nothing() {
        let limiter = limiter(1, 60, 1000);
        for _ in 0..5 {
            assert!(limiter.decide(&key("a"), SECOND, false).allowed);
        }
        assert!(limiter.decide(&key("a"), SECOND, true).allowed);
        assert!(!limiter.decide(&key("a"), SECOND, false).allowed);
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn idle_callers_expire_and_memory_stays_bounded() {
        let limiter = limiter(10, 1, 64 * 1000);
        for n in 0..5_000 {
            limiter.decide(&Caller::key(&format!("c{n}")), SECOND, true);
        }
        assert_eq!(limiter.len(), 5_000);
        // One period later every one of them is idle: a sweep drops them all.
        limiter.decide(&key("late"), 3 * SECOND, true);
        let now = 3 * SECOND;
        for shard in limiter.shards.iter() {
            shard.lock().unwrap().sweep(now);
        }
        assert_eq!(limiter.len(), 1);
        // A flood of new callers past the cap shares the overflow buckets:
        // the table never holds more than the cap.
        let limiter = self::limiter(10, 1, 64 * 100);
        for n in 0..20_000 {
            limiter.decide(&Caller::key(&format!("flood{n}")), now, true);
        }
        assert!(limiter.len() <= 64 * 100, "{} tracked", limiter.len());
        let overflowed = limiter
            .shards
            .iter()
            .filter(|s| s.lock().unwrap().overflow.is_some())
            .count();
        assert!(overflowed > 0);
    }

    #[test]
    fn a_full_table_still_serves_the_callers_it_tracks() {
        let limiter = limiter(3, 60, 64);
        let tracked = key("tracked");
        assert!(limiter.decide(&tracked, SECOND, true).allowed);
        for n in 0..10_000 {
            limiter.decide(&Caller::key(&format!("flood{n}")), SECOND, true);
        }
        let decision = limiter.decide(&tracked, SECOND, true);
        assert!(decision.allowed);
        assert_eq!(decision.remaining, 1);
    }

    #[test]
    fn gcra_in_microseconds_matches_nanoseconds() {
        let limit = RateLimit {
            requests: 100,
            per: Duration::from_secs(60),
        };
        let (nano, micro) = (Gcra::of(&limit, 1), Gcra::of(&limit, 1000));
        assert_eq!(nano.interval, 600_000_000);
        assert_eq!(micro.interval, 600_000);
        let (a, _) = nano.decide(Some(61 * SECOND), SECOND, 1);
        let (b, _) = micro.decide(Some(61_000_000), 1_000_000, 1000);
        assert_eq!(a, b);
        assert_eq!(a.retry_after, 1);
    }
}
