//! Google OAuth access tokens from a JSON credentials file.
//!
//! Two file types, the ones `gcloud` and the IAM console hand out:
//! `service_account` keys are exchanged with a signed JWT (RFC 7523, RS256,
//! the same grant `service/src/storage/gcs.rs` uses), `authorized_user`
//! files (`gcloud auth application-default login`) with their refresh token.
//! A token is cached until a minute before it expires. The private key and
//! tokens never appear in `Debug` output or errors.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use kit_service::storage::rsa_key::RsaSigningKey;

use super::GcpError;

/// Where a key's `token_uri` points when the file names none.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// One scope covers Storage, Secret Manager and Cloud Run.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// What the credentials file holds.
enum Grant {
    ServiceAccount {
        client_email: String,
        signer: Box<RsaSigningKey>,
    },
    AuthorizedUser {
        client_id: String,
        client_secret: String,
        refresh_token: String,
    },
}

/// Credentials loaded from a JSON file, with their cached access token.
pub struct Credentials {
    grant: Grant,
    token_uri: String,
    /// Which file they came from, for errors.
    origin: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let identity = match &self.grant {
            Grant::ServiceAccount { client_email, .. } => client_email.as_str(),
            Grant::AuthorizedUser { .. } => "authorized_user",
        };
        f.debug_struct("Credentials")
            .field("identity", &identity)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Parses a `service_account` or `authorized_user` JSON file; `origin`
    /// names it in errors.
    pub fn from_json(json: &[u8], origin: &str) -> Result<Credentials, GcpError> {
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(rename = "type")]
            kind: Option<String>,
            client_email: Option<String>,
            private_key: Option<String>,
            client_id: Option<String>,
            client_secret: Option<String>,
            refresh_token: Option<String>,
            token_uri: Option<String>,
        }
        let invalid = |message: String| GcpError::Credentials(format!("`{origin}`: {message}"));
        let file: File = serde_json::from_slice(json)
            .map_err(|e| invalid(format!("not a JSON credentials file: {e}")))?;
        let grant = match file.kind.as_deref() {
            Some("service_account") => {
                let (Some(client_email), Some(private_key)) = (file.client_email, file.private_key)
                else {
                    return Err(invalid(
                        "a `service_account` key needs `client_email` and `private_key`".into(),
                    ));
                };
                Grant::ServiceAccount {
                    client_email,
                    signer: Box::new(RsaSigningKey::from_pem(&private_key).map_err(invalid)?),
                }
            }
            Some("authorized_user") => {
                let (Some(client_id), Some(client_secret), Some(refresh_token)) =
                    (file.client_id, file.client_secret, file.refresh_token)
                else {
                    return Err(invalid(
                        "an `authorized_user` file needs `client_id`, `client_secret` and `refresh_token`"
                            .into(),
                    ));
                };
                Grant::AuthorizedUser {
                    client_id,
                    client_secret,
                    refresh_token,
                }
            }
            other => {
                return Err(invalid(format!(
                    "credentials of type `{}` are not supported; use a service-account key or `gcloud auth application-default login`",
                    other.unwrap_or("(none)")
                )));
            }
        };
        Ok(Credentials {
            grant,
            token_uri: file
                .token_uri
                .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_string()),
            origin: origin.to_string(),
            cached: Mutex::new(None),
        })
    }

    /// Reads the file a path names.
    pub fn from_file(path: &Path) -> Result<Credentials, GcpError> {
        let json = std::fs::read(path).map_err(|e| {
            GcpError::Credentials(format!(
                "failed to read credentials `{}`: {e}",
                path.display()
            ))
        })?;
        Credentials::from_json(&json, &path.display().to_string())
    }

    /// `GOOGLE_APPLICATION_CREDENTIALS`, else gcloud's application-default
    /// file; `None` when neither exists (only anonymous calls will work).
    pub fn discover(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Credentials>, GcpError> {
        if let Some(path) = env("GOOGLE_APPLICATION_CREDENTIALS").filter(|p| !p.trim().is_empty()) {
            return Credentials::from_file(Path::new(&path)).map(Some);
        }
        let gcloud_dir = env("CLOUDSDK_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                env("HOME")
                    .filter(|h| !h.is_empty())
                    .map(|home| Path::new(&home).join(".config/gcloud"))
            });
        match gcloud_dir.map(|dir| dir.join("application_default_credentials.json")) {
            Some(path) if path.exists() => Credentials::from_file(&path).map(Some),
            _ => Ok(None),
        }
    }

    /// An access token, from the cache or a fresh grant at `token_uri`.
    pub fn access_token(&self, agent: &ureq::Agent) -> Result<String, GcpError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        let form = self.grant_form(SystemTime::now());
        let response = agent
            .post(&self.token_uri)
            .config()
            .http_status_as_error(false)
            .build()
            .send_form(form.iter().map(|(k, v)| (*k, v.as_str())));
        let mut response = response.map_err(|e| {
            GcpError::Credentials(format!(
                "could not reach the token endpoint `{}`: {e}",
                self.token_uri
            ))
        })?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(GcpError::Credentials(format!(
                "the token endpoint `{}` refused the credentials in `{}` (HTTP {status}): {}",
                self.token_uri,
                self.origin,
                super::error_message(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
            expires_in: Option<u64>,
        }
        let token: Token = serde_json::from_slice(&body).map_err(|e| {
            GcpError::Credentials(format!(
                "the token endpoint `{}` answered without an access token: {e}",
                self.token_uri
            ))
        })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600).saturating_sub(60));
        *cached = Some((token.access_token.clone(), Instant::now() + lifetime));
        Ok(token.access_token)
    }

    /// The form fields of the token request.
    fn grant_form(&self, now: SystemTime) -> Vec<(&'static str, String)> {
        match &self.grant {
            Grant::ServiceAccount {
                client_email,
                signer,
            } => vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:jwt-bearer".to_string(),
                ),
                (
                    "assertion",
                    jwt_assertion(client_email, signer, &self.token_uri, now),
                ),
            ],
            Grant::AuthorizedUser {
                client_id,
                client_secret,
                refresh_token,
            } => vec![
                ("grant_type", "refresh_token".to_string()),
                ("client_id", client_id.clone()),
                ("client_secret", client_secret.clone()),
                ("refresh_token", refresh_token.clone()),
            ],
        }
    }
}

/// A signed JWT for the OAuth 2.0 JWT bearer grant, valid one hour.
fn jwt_assertion(
    client_email: &str,
    signer: &RsaSigningKey,
    audience: &str,
    now: SystemTime,
) -> String {
    use base64::Engine;
    let base64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let issued = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let header = base64url.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = base64url.encode(
        serde_json::json!({
            "iss": client_email,
            "scope": SCOPE,
            "aud": audience,
            "iat": issued,
            "exp": issued + 3600,
        })
        .to_string(),
    );
    let signing_input = format!("{header}.{claims}");
    let signature = base64url.encode(signer.sign(signing_input.as_bytes()));
    format!("{signing_input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = include_str!("../../tests/fixtures/gcp_service_account.json");

    #[test]
    fn service_account_jwt_carries_the_claims_and_verifies() {
        use base64::Engine;
        let credentials = Credentials::from_json(KEY.as_bytes(), "key.json").unwrap();
        let Grant::ServiceAccount { signer, .. } = &credentials.grant else {
            panic!("a service account");
        };
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let form = credentials.grant_form(now);
        assert_eq!(form[0].1, "urn:ietf:params:oauth:grant-type:jwt-bearer");
        let parts: Vec<&str> = form[1].1.split('.').collect();
        assert_eq!(parts.len(), 3);
        let base64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let claims: serde_json::Value =
            serde_json::from_slice(&base64url.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["scope"], SCOPE);
        assert_eq!(claims["aud"], credentials.token_uri);
        assert_eq!(claims["exp"], 1_700_003_600);
        let signature = base64url.decode(parts[2]).unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            signer.public_key_der(),
        )
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .unwrap();
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let credentials = Credentials::from_json(KEY.as_bytes(), "key.json").unwrap();
        let text = format!("{credentials:?}");
        assert!(!text.contains("PRIVATE"), "{text}");
        let user = br#"{"type":"authorized_user","client_id":"id","client_secret":"s3cr3t","refresh_token":"r3fr3sh"}"#;
        let text = format!("{:?}", Credentials::from_json(user, "adc.json").unwrap());
        assert!(
            !text.contains("s3cr3t") && !text.contains("r3fr3sh"),
            "{text}"
        );
    }

    #[test]
    fn unsupported_files_say_what_to_use() {
        let error = Credentials::from_json(br#"{"type":"external_account"}"#, "wif.json")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`wif.json`") && error.contains("external_account"),
            "{error}"
        );
        let error = Credentials::from_json(br#"{"type":"service_account"}"#, "k.json")
            .unwrap_err()
            .to_string();
        assert!(error.contains("client_email"), "{error}");
    }
}
