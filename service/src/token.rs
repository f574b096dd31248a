//! Stream state tokens: HMAC-SHA256 over a small binary envelope, verified
//! against a key ring.
//!
//! HTTP streams are stateless on the server: every turn's state travels to the
//! client and back. The token is therefore the one thing an attacker can edit,
//! so it is signed, expires, and is bound to the protocol, the method and the
//! caller identity (these go into the MAC, not into the token). Tokens carry
//! the id of the key that signed them, so after a rotation the previous keys
//! keep verifying open streams while only the primary signs.
//!
//! Envelope (before standard base64):
//! `version u8 | kind u8 | key id [8] | issued_at u64le | expires_at u64le | payload | tag [32]`

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 8;
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 2 + KEY_ID_LEN + 8 + 8;
const DOMAIN: &[u8] = b"kit.vgi_rpc.token.v1\0";
/// Minimum signing key length; shorter keys are refused at startup.
pub const MIN_KEY_BYTES: usize = 32;

/// Which of the two stream tokens this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Minted every turn: the producer/exchange state.
    Cursor = 1,
    /// Minted once at `/init`: schemas, limits, call id.
    Call = 2,
}

/// What a token is bound to; a token verifies only for the same binding.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    pub protocol: &'a str,
    pub method: &'a str,
    pub identity: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Malformed state token")]
    Malformed,
    #[error("State token signature verification failed")]
    BadSignature,
    #[error("State token expired")]
    Expired,
}

/// One signing key and its public id.
#[derive(Clone)]
pub struct SigningKey {
    secret: Vec<u8>,
    id: [u8; KEY_ID_LEN],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", hex::encode(self.id))
    }
}

impl SigningKey {
    pub fn new(secret: Vec<u8>) -> Self {
        let digest = Sha256::digest([b"kit-key-id\0".as_slice(), &secret].concat());
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest[..KEY_ID_LEN]);
        SigningKey { secret, id }
    }

    pub fn random() -> Self {
        let mut secret = vec![0u8; 32];
        getrandom::fill(&mut secret).expect("the operating system's random source failed");
        SigningKey::new(secret)
    }

    pub fn len(&self) -> usize {
        self.secret.len()
    }

    pub fn is_empty(&self) -> bool {
        self.secret.is_empty()
    }

    /// A non-secret fingerprint: first 16 hex digits of HMAC(key, "kit-fingerprint").
    /// Replicas that share a key report the same value on `/healthz`.
    pub fn fingerprint(&self) -> String {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("hmac accepts any key length");
        mac.update(b"kit-fingerprint");
        hex::encode(&mac.finalize().into_bytes()[..8])
    }

    /// HMAC(key, label || 0 || text): a purpose-bound derivation, so a value
    /// made for one use (a storage URL) can never verify as another (a token).
    pub fn derive(&self, label: &str, text: &str) -> Vec<u8> {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("hmac accepts any key length");
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(text.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn mac(&self, kind: TokenKind, binding: Binding<'_>, signed: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(&self.secret).expect("hmac accepts any key length");
        mac.update(DOMAIN);
        mac.update(&[kind as u8]);
        for part in [binding.protocol, binding.method, binding.identity] {
            mac.update(&(part.len() as u32).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac.update(signed);
        mac
    }
}

/// The primary key signs; every key (primary and previous) verifies.
#[derive(Debug, Clone)]
pub struct KeyRing {
    primary: SigningKey,
    previous: Vec<SigningKey>,
    ephemeral: bool,
    ttl_seconds: u64,
}

impl KeyRing {
    pub fn new(primary: SigningKey, previous: Vec<SigningKey>, ttl_seconds: u64) -> Self {
        KeyRing {
            primary,
            previous,
            ephemeral: false,
            ttl_seconds,
        }
    }

    /// A random per-process key: fine on one instance, broken across several.
    pub fn ephemeral(ttl_seconds: u64) -> Self {
        KeyRing {
            primary: SigningKey::random(),
            previous: Vec::new(),
            ephemeral: true,
            ttl_seconds,
        }
    }

    pub fn is_ephemeral(&self) -> bool {
        self.ephemeral
    }

    pub fn primary(&self) -> &SigningKey {
        &self.primary
    }

    pub fn previous(&self) -> &[SigningKey] {
        &self.previous
    }

    pub fn ttl_seconds(&self) -> u64 {
        self.ttl_seconds
    }

    /// Signs `payload` and returns the base64 token.
    pub fn seal(&self, kind: TokenKind, binding: Binding<'_>, payload: &[u8]) -> String {
        self.seal_at(kind, binding, payload, now())
    }

    fn seal_at(
        &self,
        kind: TokenKind,
        binding: Binding<'_>,
        payload: &[u8],
        issued_at: u64,
    ) -> String {
        let expires_at = if self.ttl_seconds == 0 {
            u64::MAX
        } else {
            issued_at.saturating_add(self.ttl_seconds)
        };
        let mut token = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
        token.push(VERSION);
        token.push(kind as u8);
        token.extend_from_slice(&self.primary.id);
        token.extend_from_slice(&issued_at.to_le_bytes());
        token.extend_from_slice(&expires_at.to_le_bytes());
        token.extend_from_slice(payload);
        let tag = self
            .primary
            .mac(kind, binding, &token)
            .finalize()
            .into_bytes();
        token.extend_from_slice(&tag);
        STANDARD.encode(token)
    }

    /// Verifies a token and returns its payload.
    ///
    /// The signature is checked before the expiry, so a forged expiry is a
    /// signature failure, never a misleading "expired".
    pub fn open(
        &self,
        kind: TokenKind,
        binding: Binding<'_>,
        token: &str,
    ) -> Result<Vec<u8>, TokenError> {
        self.open_at(kind, binding, token, now())
    }

    /// Verifies a token's signature and binding and returns its payload,
    /// whatever its expiry.
    ///
    /// Only for the call token of a stream: it is minted once at `/init` and
    /// the protocol never re-issues it (clients echo the first one), so its
    /// own expiry would end every stream at the TTL however busy it is. The
    /// stream's liveness is carried by the cursor token instead, which is
    /// minted fresh on every turn, checked with [`KeyRing::open`], and names
    /// the call id that the caller must match against this payload. An idle
    /// stream therefore still expires one TTL after its last turn.
    pub fn open_ignoring_expiry(
        &self,
        kind: TokenKind,
        binding: Binding<'_>,
        token: &str,
    ) -> Result<Vec<u8>, TokenError> {
        self.open_at(kind, binding, token, 0)
    }

    fn open_at(
        &self,
        kind: TokenKind,
        binding: Binding<'_>,
        token: &str,
        now: u64,
    ) -> Result<Vec<u8>, TokenError> {
        let raw = STANDARD
            .decode(token.trim())
            .map_err(|_| TokenError::Malformed)?;
        if raw.len() < HEADER_LEN + TAG_LEN || raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        if raw[1] != kind as u8 {
            return Err(TokenError::BadSignature);
        }
        let key_id = &raw[2..2 + KEY_ID_LEN];
        let key = std::iter::once(&self.primary)
            .chain(self.previous.iter())
            .find(|key| key.id == key_id)
            .ok_or(TokenError::BadSignature)?;
        let (signed, tag) = raw.split_at(raw.len() - TAG_LEN);
        // `verify_slice` compares in constant time.
        key.mac(kind, binding, signed)
            .verify_slice(tag)
            .map_err(|_| TokenError::BadSignature)?;
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&raw[2 + KEY_ID_LEN + 8..HEADER_LEN]);
        if u64::from_le_bytes(expires) < now {
            return Err(TokenError::Expired);
        }
        Ok(signed[HEADER_LEN..].to_vec())
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BINDING: Binding<'static> = Binding {
        protocol: "P",
        method: "m",
        identity: "",
    };

    fn ring(secret: &[u8]) -> KeyRing {
        KeyRing::new(SigningKey::new(secret.to_vec()), vec![], 3600)
    }

    fn check(result: Result<Vec<u8>, TokenError>, expect: Result<&[u8], TokenError>) {
        assert_eq!(result.as_deref().map_err(Clone::clone), expect);
    }

    #[test]
    fn roundtrip_and_binding() {
        let keys = ring(&[7u8; 32]);
        let token = keys.seal(TokenKind::Cursor, BINDING, b"state");
        check(keys.open(TokenKind::Cursor, BINDING, &token), Ok(b"state"));
        let other_method = Binding {
            method: "n",
            ..BINDING
        };
        check(
            keys.open(TokenKind::Cursor, other_method, &token),
            Err(TokenError::BadSignature),
        );
        let other_caller = Binding {
            identity: "mallory",
            ..BINDING
        };
        check(
            keys.open(TokenKind::Cursor, other_caller, &token),
            Err(TokenError::BadSignature),
        );
        check(
            keys.open(TokenKind::Call, BINDING, &token),
            Err(TokenError::BadSignature),
        );
    }

    #[test]
    fn tampering_is_detected() {
        let keys = ring(&[7u8; 32]);
        let token = keys.seal(TokenKind::Cursor, BINDING, b"state");
        let mut raw = STANDARD.decode(&token).unwrap();
        let last = raw.len() - TAG_LEN - 1;
        raw[last] ^= 1;
        check(
            keys.open(TokenKind::Cursor, BINDING, &STANDARD.encode(&raw)),
            Err(TokenError::BadSignature),
        );
        check(
            keys.open(TokenKind::Cursor, BINDING, "!!!"),
            Err(TokenError::Malformed),
        );
        check(
            keys.open(TokenKind::Cursor, BINDING, "AAAA"),
            Err(TokenError::Malformed),
        );
    }

    #[test]
    fn foreign_keys_fail_and_previous_keys_verify() {
        let old = ring(&[1u8; 32]);
        let token = old.seal(TokenKind::Call, BINDING, b"x");
        check(
            ring(&[2u8; 32]).open(TokenKind::Call, BINDING, &token),
            Err(TokenError::BadSignature),
        );
        let rotated = KeyRing::new(
            SigningKey::new(vec![2u8; 32]),
            vec![SigningKey::new(vec![1u8; 32])],
            3600,
        );
        check(rotated.open(TokenKind::Call, BINDING, &token), Ok(b"x"));
    }

    #[test]
    fn expiry_is_enforced_after_the_signature() {
        let keys = ring(&[3u8; 32]);
        let token = keys.seal_at(TokenKind::Cursor, BINDING, b"x", 1000);
        check(
            keys.open_at(TokenKind::Cursor, BINDING, &token, 1000 + 3600),
            Ok(b"x"),
        );
        check(
            keys.open_at(TokenKind::Cursor, BINDING, &token, 1000 + 3601),
            Err(TokenError::Expired),
        );
    }

    #[test]
    fn call_tokens_can_be_opened_past_their_expiry_but_not_forged() {
        let keys = ring(&[3u8; 32]);
        let token = keys.seal_at(TokenKind::Call, BINDING, b"call", 1000);
        check(
            keys.open_at(TokenKind::Call, BINDING, &token, 1000 + 7200),
            Err(TokenError::Expired),
        );
        check(
            keys.open_ignoring_expiry(TokenKind::Call, BINDING, &token),
            Ok(b"call"),
        );
        let other_caller = Binding {
            identity: "mallory",
            ..BINDING
        };
        check(
            keys.open_ignoring_expiry(TokenKind::Call, other_caller, &token),
            Err(TokenError::BadSignature),
        );
        check(
            ring(&[4u8; 32]).open_ignoring_expiry(TokenKind::Call, BINDING, &token),
            Err(TokenError::BadSignature),
        );
    }

    #[test]
    fn fingerprints_differ_per_key_and_hide_it() {
        let a = SigningKey::new(vec![1u8; 32]);
        assert_eq!(a.fingerprint().len(), 16);
        assert_ne!(
            a.fingerprint(),
            SigningKey::new(vec![2u8; 32]).fingerprint()
        );
        assert!(!a.fingerprint().contains("0101"));
    }
}
