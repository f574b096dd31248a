//! RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`, `GOOG4-RSA-SHA256`) from a
//! service-account PEM key, on ring.
//!
//! GCS V4 signed URLs and Google's JWT bearer grant both need it. The `rsa`
//! crate did this before and carries RUSTSEC-2023-0071 (a timing side channel
//! in its private-key operations, with no fixed release); ring, already in the
//! tree under rustls, signs in constant time. PKCS#1 v1.5 signatures are
//! deterministic, so Google's published signing vectors check this module
//! byte for byte (`storage::gcs` tests).

use base64::Engine;
use ring::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};

/// An RSA private key that signs with SHA-256 and PKCS#1 v1.5 padding.
pub struct RsaSigningKey {
    key_pair: RsaKeyPair,
    random: ring::rand::SystemRandom,
}

impl std::fmt::Debug for RsaSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RsaSigningKey({} bits)",
            self.key_pair.public().modulus_len() * 8
        )
    }
}

impl RsaSigningKey {
    /// Reads a PEM key: PKCS#8 (`BEGIN PRIVATE KEY`, what Google's key files
    /// hold) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
    ///
    /// ```
    /// let error = kit_service::storage::rsa_key::RsaSigningKey::from_pem("not a key").unwrap_err();
    /// assert!(error.contains("PEM"), "{error}");
    /// ```
    pub fn from_pem(pem: &str) -> Result<RsaSigningKey, String> {
        let (label, der) = pem_block(pem)?;
        let key_pair = match label.as_str() {
            "PRIVATE KEY" => RsaKeyPair::from_pkcs8(&der),
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(&der),
            other => {
                return Err(format!(
                    "`private_key` is a `{other}` PEM block, not an RSA private key"
                ));
            }
        }
        .map_err(|e| format!("`private_key` is not a usable RSA key: {e}"))?;
        Ok(RsaSigningKey {
            key_pair,
            random: ring::rand::SystemRandom::new(),
        })
    }

    /// Signs `message`: RSASSA-PKCS1-v1_5 over its SHA-256 digest.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut signature = vec![0u8; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(&RSA_PKCS1_SHA256, &self.random, message, &mut signature)
            // ring fails only for a wrongly sized output buffer, sized above.
            .expect("RSA signing with a buffer of the modulus length");
        signature
    }

    /// The public key as DER `RSAPublicKey`, for verifying signatures.
    pub fn public_key_der(&self) -> &[u8] {
        self.key_pair.public_key().as_ref()
    }
}

/// The label and the decoded body of the first PEM block in `text`.
fn pem_block(text: &str) -> Result<(String, Vec<u8>), String> {
    let malformed = || "`private_key` is not a PEM block (`-----BEGIN ...-----`)".to_string();
    let start = text.find("-----BEGIN ").ok_or_else(malformed)?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let (label, rest) = rest.split_once("-----").ok_or_else(malformed)?;
    let end_marker = format!("-----END {label}-----");
    let (body, _) = rest.split_once(&end_marker).ok_or_else(malformed)?;
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| format!("`private_key` PEM body is not base64: {e}"))?;
    Ok((label.to_string(), der))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RsaSigningKey {
        let json: serde_json::Value = serde_json::from_slice(include_bytes!(
            "../../tests/fixtures/gcs_service_account.json"
        ))
        .unwrap();
        RsaSigningKey::from_pem(json["private_key"].as_str().unwrap()).unwrap()
    }

    #[test]
    fn signatures_verify_with_the_public_key_and_are_deterministic() {
        let key = key();
        let signature = key.sign(b"message");
        assert_eq!(signature.len(), 256);
        assert_eq!(
            signature,
            key.sign(b"message"),
            "PKCS#1 v1.5 is deterministic"
        );
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key.public_key_der(),
        );
        public.verify(b"message", &signature).unwrap();
        assert!(public.verify(b"other", &signature).is_err());
    }

    #[test]
    fn non_keys_are_refused_with_the_reason() {
        let check = |pem: &str, expect: &str| {
            let error = RsaSigningKey::from_pem(pem).unwrap_err();
            assert!(error.contains(expect), "{pem:?}: {error}");
        };
        check("", "not a PEM block");
        check("-----BEGIN PRIVATE KEY-----\nAAAA", "not a PEM block");
        check(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----",
            "`CERTIFICATE`",
        );
        check(
            "-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----",
            "not base64",
        );
        check(
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            "not a usable RSA key",
        );
        assert!(!format!("{:?}", key()).contains("PRIVATE"));
    }
}
