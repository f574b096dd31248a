//! `VGI-Proxy-Proof`: HMAC evidence that a request came through the
//! operator's own proxy, as upstream defines it (`vgi_rpc/http/_proof.py`,
//! `docs/proxy-proof-spec.md`).
//!
//! The proxy mints `v1.<kid>.<ts>.<nonce>.<mac>` per request, with
//! `mac = HMAC-SHA256(secret, "vgi.proxy.proof.v1\0kid\0ts\0nonce\0origin_id")`
//! (base64url without padding, 16-byte nonce); the worker knows its own
//! `origin_id`, which is never sent, so a proof made for one worker fails at
//! every other. The proof establishes the hop, never the caller: it is
//! checked before the API key and in addition to it. A platform's own front
//! proxy (Cloud Run, Fly, a Lambda URL) cannot mint one, so the feature is
//! off unless configured, for deployments whose own proxy (nginx with a
//! module, Envoy, a vgi-rpc proxy) holds the secret.
//!
//! Modes: `require` refuses a request without a valid proof (401,
//! `proxy_required`, the same detail whatever failed) and advertises
//! `VGI-Proxy-Proof-Required: true`; `allow` verifies and logs but never
//! refuses.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The request header carrying the proof.
pub const PROOF_HEADER: &str = "vgi-proxy-proof";
/// The capability header a `require` worker sends.
pub const PROOF_REQUIRED_HEADER: &str = "vgi-proxy-proof-required";
const DOMAIN: &[u8] = b"vgi.proxy.proof.v1";
const MAX_HEADER_BYTES: usize = 512;
const SECRET_LEN: usize = 32;
/// Upstream's `DEFAULT_CAPACITY` of the replay cache.
const REPLAY_CAPACITY: usize = 100_000;

/// Whether a missing or bad proof refuses the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofMode {
    /// Verify and log; serve either way.
    Allow,
    /// Refuse without a valid proof.
    Require,
}

/// Why a proof failed: upstream's reason codes. Logged, never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofFailure {
    NoProof,
    Malformed,
    UnknownKid,
    Expired,
    NotYetValid,
    BadMac,
    Replayed,
}

impl ProofFailure {
    /// The code upstream logs (`no_proof`, `bad_mac`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ProofFailure::NoProof => "no_proof",
            ProofFailure::Malformed => "malformed",
            ProofFailure::UnknownKid => "unknown_kid",
            ProofFailure::Expired => "expired",
            ProofFailure::NotYetValid => "not_yet_valid",
            ProofFailure::BadMac => "bad_mac",
            ProofFailure::Replayed => "replayed",
        }
    }
}

/// A bad `KIT_PROXY_PROOF_*` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofConfigError {
    #[error("`{0}` is not `kid:hex` (a 64-hex-digit secret)")]
    Entry(String),
    #[error("key id `{0}` must be 1-64 of `A-Za-z0-9_-`")]
    Kid(String),
    #[error("the secret of key id `{0}` must be 32 bytes (64 hex digits)")]
    SecretLength(String),
    #[error("no secret listed")]
    Empty,
    #[error("origin id `{0}` must be 1-255 of `A-Za-z0-9._:/-`")]
    Origin(String),
}

/// A worker's proof settings and its replay cache.
pub struct ProxyProof {
    mode: ProofMode,
    origin_id: String,
    secrets: Vec<(String, [u8; SECRET_LEN])>,
    skew_seconds: u64,
    replay: Option<NonceCache>,
}

impl std::fmt::Debug for ProxyProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.secrets.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("ProxyProof")
            .field("mode", &self.mode)
            .field("origin_id", &self.origin_id)
            .field("kids", &kids)
            .field("skew_seconds", &self.skew_seconds)
            .field("replay_cache", &self.replay.is_some())
            .finish()
    }
}

fn valid_kid(kid: &str) -> bool {
    (1..=64).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_origin(origin: &str) -> bool {
    (1..=255).contains(&origin.len())
        && origin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:/-".contains(&b))
}

/// Parses upstream's `kid:hex,kid:hex` secret list.
pub fn parse_secrets(text: &str) -> Result<Vec<(String, [u8; SECRET_LEN])>, ProofConfigError> {
    let mut secrets = Vec::new();
    for item in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let (kid, hex_secret) = item.split_once(':').ok_or_else(|| {
            ProofConfigError::Entry(
                item.split(':')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .take(16)
                    .collect(),
            )
        })?;
        if !valid_kid(kid) {
            return Err(ProofConfigError::Kid(kid.to_string()));
        }
        let secret = hex::decode(hex_secret.trim())
            .ok()
            .and_then(|bytes| <[u8; SECRET_LEN]>::try_from(bytes).ok())
            .ok_or_else(|| ProofConfigError::SecretLength(kid.to_string()))?;
        secrets.push((kid.to_string(), secret));
    }
    if secrets.is_empty() {
        return Err(ProofConfigError::Empty);
    }
    Ok(secrets)
}

impl ProxyProof {
    /// A verifier; `skew_seconds` is the half-width of the accepted window.
    pub fn new(
        mode: ProofMode,
        origin_id: &str,
        secrets: Vec<(String, [u8; SECRET_LEN])>,
        skew_seconds: u64,
        replay_cache: bool,
    ) -> Result<ProxyProof, ProofConfigError> {
        if !valid_origin(origin_id) {
            return Err(ProofConfigError::Origin(origin_id.to_string()));
        }
        if secrets.is_empty() {
            return Err(ProofConfigError::Empty);
        }
        Ok(ProxyProof {
            mode,
            origin_id: origin_id.to_string(),
            secrets,
            skew_seconds,
            replay: replay_cache.then(|| NonceCache::new(Duration::from_secs(skew_seconds))),
        })
    }

    pub fn mode(&self) -> ProofMode {
        self.mode
    }

    /// Checks the `VGI-Proxy-Proof` value (`None` when absent) at `now`
    /// (Unix seconds): cheap shape checks first, then the window, the MAC
    /// (constant time) and last the replay cache.
    pub fn verify(&self, header: Option<&[u8]>, now: i64) -> Result<(), ProofFailure> {
        let raw = header
            .filter(|h| !h.is_empty())
            .ok_or(ProofFailure::NoProof)?;
        if raw.len() > MAX_HEADER_BYTES || raw.contains(&b',') {
            return Err(ProofFailure::Malformed);
        }
        let token = std::str::from_utf8(raw).map_err(|_| ProofFailure::Malformed)?;
        let parts: Vec<&str> = token.split('.').collect();
        let [version, kid, ts, nonce, mac] = parts.as_slice() else {
            return Err(ProofFailure::Malformed);
        };
        let b64 = |text: &str, len: usize| {
            text.len() == len
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if *version != "v1"
            || !valid_kid(kid)
            || ts.is_empty()
            || ts.len() > 20
            || !ts.bytes().all(|b| b.is_ascii_digit())
            || !b64(nonce, 22)
            || !b64(mac, 43)
        {
            return Err(ProofFailure::Malformed);
        }
        let (_, secret) = self
            .secrets
            .iter()
            .find(|(k, _)| k == kid)
            .ok_or(ProofFailure::UnknownKid)?;
        let minted: i128 = ts.parse().map_err(|_| ProofFailure::Malformed)?;
        let age = i128::from(now) - minted;
        if age > i128::from(self.skew_seconds) {
            return Err(ProofFailure::Expired);
        }
        if -age > i128::from(self.skew_seconds) {
            return Err(ProofFailure::NotYetValid);
        }
        let received = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| ProofFailure::Malformed)?;
        let expected = mint_mac(secret, kid, ts, nonce, &self.origin_id);
        if !bool::from(expected.as_slice().ct_eq(&received)) {
            return Err(ProofFailure::BadMac);
        }
        if let Some(cache) = &self.replay
            && !cache.check_and_add(nonce)
        {
            return Err(ProofFailure::Replayed);
        }
        Ok(())
    }
}

fn mint_mac(secret: &[u8], kid: &str, ts: &str, nonce: &str, origin_id: &str) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac accepts any key length");
    for (index, part) in [
        DOMAIN,
        kid.as_bytes(),
        ts.as_bytes(),
        nonce.as_bytes(),
        origin_id.as_bytes(),
    ]
    .into_iter()
    .enumerate()
    {
        if index > 0 {
            mac.update(&[0]);
        }
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// Mints a proof as a proxy would (upstream's `mint_proof`), for tests and
/// for a proxy written against this crate.
///
/// ```
/// use kit_service::http::proxy_proof::{mint_proof, ProofMode, ProxyProof};
///
/// let secret = [0x11; 32];
/// let proof = ProxyProof::new(ProofMode::Require, "origin", vec![("px".into(), secret)], 30, true).unwrap();
/// let token = mint_proof(&secret, "px", "origin", 1_000, "AAAAAAAAAAAAAAAAAAAAAA");
/// assert_eq!(proof.verify(Some(token.as_bytes()), 1_010), Ok(()));
/// assert!(proof.verify(Some(token.as_bytes()), 1_010).is_err(), "a replay");
/// ```
pub fn mint_proof(secret: &[u8], kid: &str, origin_id: &str, now: i64, nonce: &str) -> String {
    let ts = now.to_string();
    let mac = mint_mac(secret, kid, &ts, nonce, origin_id);
    format!("v1.{kid}.{ts}.{nonce}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// Nonces seen within the window, bounded: overflow evicts the oldest
/// (upstream's `NonceCache`), so a burst of distinct nonces cannot grow the
/// process without limit.
struct NonceCache {
    ttl: Duration,
    entries: Mutex<Seen>,
}

/// The nonces remembered, and their order of arrival (= of expiry).
type Seen = (HashMap<String, Instant>, VecDeque<(String, Instant)>);

impl NonceCache {
    fn new(ttl: Duration) -> NonceCache {
        NonceCache {
            ttl,
            entries: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    /// `true` if `nonce` is fresh (and now remembered), `false` on a replay.
    fn check_and_add(&self, nonce: &str) -> bool {
        let now = Instant::now();
        let mut guard = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (seen, order) = &mut *guard;
        while let Some((oldest, expires)) = order.front() {
            if *expires > now {
                break;
            }
            seen.remove(oldest);
            order.pop_front();
        }
        if seen.contains_key(nonce) {
            return false;
        }
        while order.len() >= REPLAY_CAPACITY {
            if let Some((oldest, _)) = order.pop_front() {
                seen.remove(&oldest);
            }
        }
        let expires = now + self.ttl;
        seen.insert(nonce.to_string(), expires);
        order.push_back((nonce.to_string(), expires));
        true
    }
}

/// Upstream's operator note on every 401 of a `require` worker
/// (`build_proxy_hint`), word for word.
pub fn proxy_hint() -> &'static str {
    "This service only accepts requests that arrive through its configured reverse proxy, which must set the VGI-Proxy-Proof header. A rejection here is as likely to be a proxy that is not forwarding that header \u{2014} or a request that reached the service without passing through the proxy at all \u{2014} as it is a bad credential. Check the proxy configuration before rotating credentials."
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [0x11; 32];

    fn proof(replay: bool) -> ProxyProof {
        ProxyProof::new(
            ProofMode::Require,
            "conformance-origin",
            vec![("conformance-proxy".into(), SECRET)],
            30,
            replay,
        )
        .unwrap()
    }

    #[test]
    fn matches_upstreams_canonical_string() {
        // mint_proof(bytes.fromhex("11"*32), "conformance-proxy", "conformance-origin",
        //            now=1700000000, nonce="AAAAAAAAAAAAAAAAAAAAAA") from vgi-rpc 0.52.2.
        assert_eq!(
            mint_proof(
                &SECRET,
                "conformance-proxy",
                "conformance-origin",
                1_700_000_000,
                "AAAAAAAAAAAAAAAAAAAAAA"
            ),
            "v1.conformance-proxy.1700000000.AAAAAAAAAAAAAAAAAAAAAA.pbkCqAOjBHRZQEdGllYzePRph5t7AfpPDYCuvS5JqL8"
        );
    }

    #[test]
    fn every_failure_has_its_code() {
        let p = proof(true);
        let now = 1_700_000_000;
        let good = |ts: i64, nonce: &str| {
            mint_proof(
                &SECRET,
                "conformance-proxy",
                "conformance-origin",
                ts,
                nonce,
            )
        };
        let check = |token: Option<&str>, expect: Result<(), ProofFailure>| {
            assert_eq!(p.verify(token.map(str::as_bytes), now), expect, "{token:?}");
        };
        check(None, Err(ProofFailure::NoProof));
        check(Some("garbage"), Err(ProofFailure::Malformed));
        check(
            Some(&format!("{},x", good(now, "BBBBBBBBBBBBBBBBBBBBBB"))),
            Err(ProofFailure::Malformed),
        );
        check(
            Some(&good(now - 31, "CCCCCCCCCCCCCCCCCCCCCC")),
            Err(ProofFailure::Expired),
        );
        check(
            Some(&good(now + 31, "CCCCCCCCCCCCCCCCCCCCCC")),
            Err(ProofFailure::NotYetValid),
        );
        check(
            Some(&mint_proof(
                &SECRET,
                "conformance-proxy",
                "elsewhere",
                now,
                "DDDDDDDDDDDDDDDDDDDDDD",
            )),
            Err(ProofFailure::BadMac),
        );
        check(
            Some(&mint_proof(
                &SECRET,
                "other-kid",
                "conformance-origin",
                now,
                "DDDDDDDDDDDDDDDDDDDDDD",
            )),
            Err(ProofFailure::UnknownKid),
        );
        let token = good(now - 30, "EEEEEEEEEEEEEEEEEEEEEE");
        check(Some(&token), Ok(()));
        check(Some(&token), Err(ProofFailure::Replayed));
        let unreplayed = proof(false);
        let again = good(now, "FFFFFFFFFFFFFFFFFFFFFF");
        assert_eq!(unreplayed.verify(Some(again.as_bytes()), now), Ok(()));
        assert_eq!(unreplayed.verify(Some(again.as_bytes()), now), Ok(()));
    }

    #[test]
    fn secrets_parse_like_upstream() {
        let parsed =
            parse_secrets(&format!("a:{},b-2:{}", "11".repeat(32), "22".repeat(32))).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parse_secrets("a:1122"),
            Err(ProofConfigError::SecretLength("a".into()))
        );
        assert_eq!(
            parse_secrets("bad!:11"),
            Err(ProofConfigError::Kid("bad!".into()))
        );
        assert_eq!(parse_secrets(" "), Err(ProofConfigError::Empty));
    }
}
