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
//! Two modes share the key ring, the key ids and rotation (`KIT_TOKEN_MODE`):
//!
//! * **signed** (the default): readable by the caller, tamper-proof.
//!   `1 | kind u8 | key id [8] | issued_at u64le | expires_at u64le | payload | HMAC-SHA256 tag [32]`
//! * **sealed**: XChaCha20-Poly1305, so the caller can no longer read the
//!   method's state (a count, a cursor, an upstream credential).
//!   `2 | kind u8 | key id [8] | 1 | nonce [24] | ciphertext+tag`, where the
//!   part from the second `1` on is upstream's AEAD envelope byte for byte
//!   (`vgi_rpc.crypto.seal_bytes`: envelope version, 24-byte random nonce,
//!   libsodium's `ciphertext || tag` layout), the plaintext is
//!   `issued_at u64le | expires_at u64le | payload`, and the associated data
//!   binds the kind, the protocol, the method, the caller identity and the
//!   10-byte header. The AEAD key is derived from the ring key (HMAC with a
//!   label), so the HMAC and the AEAD never use the same key. Upstream
//!   tokens carry no key id and frame their plaintext differently, so the
//!   two servers' tokens are not interchangeable; they need not be, as only
//!   the server that minted a token reads it.
//!
//! Either mode opens both kinds of token, so switching modes is a plain
//! rolling change: streams opened before it keep working. Both are standard
//! base64, and both fail the same way: `Malformed` for bytes that are not a
//! token, `BadSignature` for a token this ring did not mint for this binding
//! (tampered, wrong key, wrong caller), `Expired` only once it is authentic.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const SEALED_VERSION: u8 = 2;
const KEY_ID_LEN: usize = 8;
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 2 + KEY_ID_LEN + 8 + 8;
const DOMAIN: &[u8] = b"kit.vgi_rpc.token.v1\0";
/// Associated-data domain of sealed tokens.
const SEALED_DOMAIN: &[u8] = b"kit.vgi_rpc.token.sealed.v1\0";
/// `version | kind | key id` in front of upstream's AEAD envelope.
const SEALED_HEADER_LEN: usize = 2 + KEY_ID_LEN;
/// Upstream's envelope (`vgi_rpc.crypto`): version byte, nonce, Poly1305 tag.
const ENVELOPE_VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const AEAD_TAG_LEN: usize = 16;
const TIMES_LEN: usize = 16;

/// How stream tokens are minted (`KIT_TOKEN_MODE`); both are always opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenMode {
    /// HMAC-SHA256: the caller can read the state, not change it.
    #[default]
    Signed,
    /// XChaCha20-Poly1305: the caller can neither read nor change it.
    Sealed,
}

impl TokenMode {
    /// `signed` or `sealed`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenMode::Signed => "signed",
            TokenMode::Sealed => "sealed",
        }
    }
}
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
    /// The XChaCha20-Poly1305 key of sealed tokens, derived from `secret`.
    seal_key: [u8; 32],
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
        let mut mac = HmacSha256::new_from_slice(&secret).expect("hmac accepts any key length");
        mac.update(b"kit.vgi_rpc.token.seal-key.v1");
        let seal_key = mac.finalize().into_bytes().into();
        SigningKey {
            secret,
            id,
            seal_key,
        }
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

/// Upstream's AEAD envelope (`vgi_rpc.crypto.seal_bytes`), shared by sealed
/// stream tokens and sealed grants (`identity::grant`):
/// `version 1 | nonce [24] | XChaCha20-Poly1305(plaintext, aad) (ciphertext || tag [16])`.
/// `nonce` is random unless given (test vectors only).
pub(crate) fn seal_envelope(
    key: &[u8; 32],
    plaintext: &[u8],
    aad: &[u8],
    nonce: Option<[u8; NONCE_LEN]>,
) -> Vec<u8> {
    let nonce = nonce.unwrap_or_else(|| {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random source failed");
        nonce
    });
    let cipher = <XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(key.into());
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 seals any length an envelope can have");
    let mut envelope = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    envelope.push(ENVELOPE_VERSION);
    envelope.extend_from_slice(&nonce);
    envelope.extend_from_slice(&sealed);
    envelope
}

/// Why an envelope did not open; one answer for every cause on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnvelopeError;

/// Opens [`seal_envelope`]'s output: a wrong version, a short envelope, a
/// wrong key, wrong associated data and a changed byte all fail alike.
pub(crate) fn open_envelope(
    key: &[u8; 32],
    envelope: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    if envelope.len() < 1 + NONCE_LEN + AEAD_TAG_LEN || envelope[0] != ENVELOPE_VERSION {
        return Err(EnvelopeError);
    }
    let cipher = <XChaCha20Poly1305 as chacha20poly1305::KeyInit>::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(&envelope[1..1 + NONCE_LEN]),
            Payload {
                msg: &envelope[1 + NONCE_LEN..],
                aad,
            },
        )
        .map_err(|_| EnvelopeError)
}

/// The associated data of a sealed token: everything it is bound to.
fn sealed_aad(kind: TokenKind, binding: Binding<'_>, header: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + header.len());
    aad.extend_from_slice(SEALED_DOMAIN);
    aad.push(kind as u8);
    for part in [binding.protocol, binding.method, binding.identity] {
        aad.extend_from_slice(&(part.len() as u32).to_le_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(header);
    aad
}

/// The primary key signs; every key (primary and previous) verifies.
#[derive(Debug, Clone)]
pub struct KeyRing {
    primary: SigningKey,
    previous: Vec<SigningKey>,
    ephemeral: bool,
    ttl_seconds: u64,
    mode: TokenMode,
}

impl KeyRing {
    pub fn new(primary: SigningKey, previous: Vec<SigningKey>, ttl_seconds: u64) -> Self {
        KeyRing {
            primary,
            previous,
            ephemeral: false,
            ttl_seconds,
            mode: TokenMode::Signed,
        }
    }

    /// The same ring minting tokens in `mode` (it opens both modes either way).
    pub fn with_mode(mut self, mode: TokenMode) -> Self {
        self.mode = mode;
        self
    }

    /// How this ring mints tokens.
    pub fn mode(&self) -> TokenMode {
        self.mode
    }

    /// A random per-process key: fine on one instance, broken across several.
    pub fn ephemeral(ttl_seconds: u64) -> Self {
        KeyRing {
            primary: SigningKey::random(),
            previous: Vec::new(),
            ephemeral: true,
            ttl_seconds,
            mode: TokenMode::Signed,
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

    /// Signs (or seals, in [`TokenMode::Sealed`]) `payload` and returns the base64 token.
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
        if self.mode == TokenMode::Sealed {
            return self.seal_sealed(kind, binding, payload, issued_at, expires_at);
        }
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

    fn seal_sealed(
        &self,
        kind: TokenKind,
        binding: Binding<'_>,
        payload: &[u8],
        issued_at: u64,
        expires_at: u64,
    ) -> String {
        let mut token = Vec::with_capacity(
            SEALED_HEADER_LEN + 1 + NONCE_LEN + TIMES_LEN + payload.len() + AEAD_TAG_LEN,
        );
        token.push(SEALED_VERSION);
        token.push(kind as u8);
        token.extend_from_slice(&self.primary.id);
        let aad = sealed_aad(kind, binding, &token);
        let mut plaintext = Vec::with_capacity(TIMES_LEN + payload.len());
        plaintext.extend_from_slice(&issued_at.to_le_bytes());
        plaintext.extend_from_slice(&expires_at.to_le_bytes());
        plaintext.extend_from_slice(payload);
        token.extend_from_slice(&seal_envelope(
            &self.primary.seal_key,
            &plaintext,
            &aad,
            None,
        ));
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
        if raw.first() == Some(&SEALED_VERSION) {
            return self.open_sealed(kind, binding, &raw, now);
        }
        if raw.len() < HEADER_LEN + TAG_LEN || raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        if raw[1] != kind as u8 {
            return Err(TokenError::BadSignature);
        }
        let key = self
            .key(&raw[2..2 + KEY_ID_LEN])
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

impl KeyRing {
    fn key(&self, id: &[u8]) -> Option<&SigningKey> {
        std::iter::once(&self.primary)
            .chain(self.previous.iter())
            .find(|key| key.id == id)
    }

    fn open_sealed(
        &self,
        kind: TokenKind,
        binding: Binding<'_>,
        raw: &[u8],
        now: u64,
    ) -> Result<Vec<u8>, TokenError> {
        let body_start = SEALED_HEADER_LEN + 1 + NONCE_LEN;
        if raw.len() < body_start + TIMES_LEN + AEAD_TAG_LEN
            || raw[SEALED_HEADER_LEN] != ENVELOPE_VERSION
        {
            return Err(TokenError::Malformed);
        }
        if raw[1] != kind as u8 {
            return Err(TokenError::BadSignature);
        }
        let key = self
            .key(&raw[2..SEALED_HEADER_LEN])
            .ok_or(TokenError::BadSignature)?;
        let aad = sealed_aad(kind, binding, &raw[..SEALED_HEADER_LEN]);
        let plaintext = open_envelope(&key.seal_key, &raw[SEALED_HEADER_LEN..], &aad)
            .map_err(|_| TokenError::BadSignature)?;
        let mut expires = [0u8; 8];
        expires.copy_from_slice(&plaintext[8..TIMES_LEN]);
        if u64::from_le_bytes(expires) < now {
            return Err(TokenError::Expired);
        }
        Ok(plaintext[TIMES_LEN..].to_vec())
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

    fn sealed(secret: &[u8]) -> KeyRing {
        ring(secret).with_mode(TokenMode::Sealed)
    }

    #[test]
    fn sealed_tokens_hide_the_state_and_keep_the_binding() {
        let keys = sealed(&[7u8; 32]);
        let state = br#"{"count":3,"current":2}"#;
        let token = keys.seal(TokenKind::Cursor, BINDING, state);
        let raw = STANDARD.decode(&token).unwrap();
        assert_eq!(raw[0], SEALED_VERSION);
        // Upstream's AEAD envelope follows the 10-byte header.
        assert_eq!(raw[SEALED_HEADER_LEN], ENVELOPE_VERSION);
        assert_eq!(
            raw.len(),
            SEALED_HEADER_LEN + 1 + NONCE_LEN + TIMES_LEN + state.len() + AEAD_TAG_LEN
        );
        // Needles of five bytes and more: the ciphertext is random, and a
        // two-byte one (`{"`, as this once had) turns up in it about one run
        // in 800.
        for needle in [&b"count"[..], b"current", br#"{"count":3"#] {
            assert!(
                !raw.windows(needle.len()).any(|w| w == needle),
                "state readable"
            );
        }
        let signed = ring(&[7u8; 32]).seal(TokenKind::Cursor, BINDING, state);
        let signed_raw = STANDARD.decode(&signed).unwrap();
        assert!(
            signed_raw.windows(5).any(|w| w == b"count"),
            "the control: signed tokens show it"
        );
        // Two seals of the same state differ (random nonce).
        assert_ne!(token, keys.seal(TokenKind::Cursor, BINDING, state));
        check(keys.open(TokenKind::Cursor, BINDING, &token), Ok(state));
        for other in [
            Binding {
                method: "n",
                ..BINDING
            },
            Binding {
                protocol: "Q",
                ..BINDING
            },
            Binding {
                identity: "mallory",
                ..BINDING
            },
        ] {
            check(
                keys.open(TokenKind::Cursor, other, &token),
                Err(TokenError::BadSignature),
            );
        }
        check(
            keys.open(TokenKind::Call, BINDING, &token),
            Err(TokenError::BadSignature),
        );
    }

    #[test]
    fn sealed_tokens_fail_like_signed_ones() {
        let keys = sealed(&[7u8; 32]);
        let token = keys.seal(TokenKind::Cursor, BINDING, b"state");
        let raw = STANDARD.decode(&token).unwrap();
        // Every single flipped bit, header included, is refused.
        for index in 0..raw.len() {
            let mut tampered = raw.clone();
            tampered[index] ^= 1;
            let result = keys.open(TokenKind::Cursor, BINDING, &STANDARD.encode(&tampered));
            assert!(
                matches!(
                    result,
                    Err(TokenError::BadSignature | TokenError::Malformed)
                ),
                "byte {index}: {result:?}"
            );
        }
        for cut in [1, 5, SEALED_HEADER_LEN + 1 + NONCE_LEN, raw.len() - 1] {
            let result = keys.open(TokenKind::Cursor, BINDING, &STANDARD.encode(&raw[..cut]));
            assert!(
                matches!(
                    result,
                    Err(TokenError::BadSignature | TokenError::Malformed)
                ),
                "cut at {cut}: {result:?}"
            );
        }
        check(
            keys.open(TokenKind::Cursor, BINDING, &STANDARD.encode(&raw[..12])),
            Err(TokenError::Malformed),
        );
        check(
            sealed(&[8u8; 32]).open(TokenKind::Cursor, BINDING, &token),
            Err(TokenError::BadSignature),
        );
        let old = keys.seal_at(TokenKind::Cursor, BINDING, b"x", 1000);
        check(
            keys.open_at(TokenKind::Cursor, BINDING, &old, 1000 + 3600),
            Ok(b"x"),
        );
        check(
            keys.open_at(TokenKind::Cursor, BINDING, &old, 1000 + 3601),
            Err(TokenError::Expired),
        );
        check(
            keys.open_ignoring_expiry(TokenKind::Cursor, BINDING, &old),
            Ok(b"x"),
        );
    }

    #[test]
    fn rotation_and_mode_switches_keep_open_tokens_working() {
        for mode in [TokenMode::Signed, TokenMode::Sealed] {
            let old = ring(&[1u8; 32]).with_mode(mode);
            let token = old.seal(TokenKind::Call, BINDING, b"x");
            // Promoted: the new key mints, the old one still opens.
            let rotated = KeyRing::new(
                SigningKey::new(vec![2u8; 32]),
                vec![SigningKey::new(vec![1u8; 32])],
                3600,
            )
            .with_mode(mode);
            check(rotated.open(TokenKind::Call, BINDING, &token), Ok(b"x"));
            let fresh = rotated.seal(TokenKind::Call, BINDING, b"y");
            check(
                old.open(TokenKind::Call, BINDING, &fresh),
                Err(TokenError::BadSignature),
            );
            // Retired: the old key's tokens stop opening.
            let retired = ring(&[2u8; 32]).with_mode(mode);
            check(
                retired.open(TokenKind::Call, BINDING, &token),
                Err(TokenError::BadSignature),
            );
            check(retired.open(TokenKind::Call, BINDING, &fresh), Ok(b"y"));
        }
        // Either mode opens the other's tokens, so switching is a rolling change.
        let signed = ring(&[3u8; 32]).seal(TokenKind::Cursor, BINDING, b"s");
        let sealed_token = sealed(&[3u8; 32]).seal(TokenKind::Cursor, BINDING, b"e");
        check(
            sealed(&[3u8; 32]).open(TokenKind::Cursor, BINDING, &signed),
            Ok(b"s"),
        );
        check(
            ring(&[3u8; 32]).open(TokenKind::Cursor, BINDING, &sealed_token),
            Ok(b"e"),
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
