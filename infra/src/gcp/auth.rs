//! Google OAuth access tokens, from the sources Google's client libraries
//! read (application-default credentials):
//! - `service_account` keys, exchanged with a signed JWT (RFC 7523, RS256,
//!   the same grant `service/src/storage/gcs.rs` uses);
//! - `authorized_user` files (`gcloud auth application-default login`),
//!   exchanged with their refresh token;
//! - `impersonated_service_account` files (`gcloud auth application-default
//!   login --impersonate-service-account SA`): the source credentials' token
//!   buys the service account's from IAM Credentials `generateAccessToken`;
//! - `external_account` files (workload identity federation, e.g. a CI
//!   OIDC token): the subject token from a file or URL is exchanged at
//!   Google's STS (RFC 8693), then optionally impersonated as above;
//! - the metadata server (GCE, Cloud Run, GKE; `GCE_METADATA_HOST`
//!   overrides its address) when no file is found.
//!
//! A token is cached until a minute before it expires. Private keys,
//! subject tokens and access tokens never appear in `Debug` output or errors.

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
    /// Workload identity federation.
    ExternalAccount {
        audience: String,
        subject_token_type: String,
        subject: SubjectSource,
        /// `generateAccessToken` of the service account to become, if any.
        impersonation_url: Option<String>,
    },
    /// Another credential's token, traded for a service account's.
    Impersonated {
        source: Box<Credentials>,
        impersonation_url: String,
        delegates: Vec<String>,
    },
    /// The instance's service account, from the metadata server (its
    /// token URL is `token_uri`).
    Metadata,
}

/// Where an `external_account` file's subject token comes from.
enum SubjectSource {
    /// A file (`credential_source.file`), refreshed by the platform.
    File {
        path: PathBuf,
        json_field: Option<String>,
    },
    /// A URL (`credential_source.url`) with headers.
    Url {
        url: String,
        headers: Vec<(String, String)>,
        json_field: Option<String>,
    },
}

/// Where `gcloud` and the metadata server point by default.
pub const METADATA_HOST: &str = "metadata.google.internal";
/// Google's STS token exchange.
pub const STS_TOKEN_URL: &str = "https://sts.googleapis.com/v1/token";

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
            Grant::ExternalAccount { audience, .. } => audience.as_str(),
            Grant::Impersonated {
                impersonation_url, ..
            } => impersonation_url.as_str(),
            Grant::Metadata => "metadata server",
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
            audience: Option<String>,
            subject_token_type: Option<String>,
            token_url: Option<String>,
            credential_source: Option<CredentialSource>,
            service_account_impersonation_url: Option<String>,
            source_credentials: Option<serde_json::Value>,
            #[serde(default)]
            delegates: Vec<String>,
        }
        #[derive(serde::Deserialize)]
        struct CredentialSource {
            file: Option<PathBuf>,
            url: Option<String>,
            #[serde(default)]
            headers: std::collections::BTreeMap<String, String>,
            format: Option<SourceFormat>,
        }
        #[derive(serde::Deserialize)]
        struct SourceFormat {
            #[serde(rename = "type")]
            kind: Option<String>,
            subject_token_field_name: Option<String>,
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
            Some("external_account") => {
                let (Some(audience), Some(subject_token_type), Some(source)) = (
                    file.audience,
                    file.subject_token_type,
                    file.credential_source,
                ) else {
                    return Err(invalid(
                        "an `external_account` file needs `audience`, `subject_token_type` and `credential_source`"
                            .into(),
                    ));
                };
                let json_field = match source.format {
                    Some(SourceFormat {
                        kind: Some(kind), ..
                    }) if kind == "text" => None,
                    Some(SourceFormat {
                        kind: Some(kind),
                        subject_token_field_name,
                    }) if kind == "json" => Some(subject_token_field_name.ok_or_else(|| {
                        invalid("`credential_source.format` of type `json` needs `subject_token_field_name`".into())
                    })?),
                    Some(SourceFormat { kind: Some(kind), .. }) => {
                        return Err(invalid(format!(
                            "`credential_source.format.type` `{kind}` is not `text` or `json`"
                        )));
                    }
                    _ => None,
                };
                let subject = match (source.file, source.url) {
                    (Some(path), None) => SubjectSource::File { path, json_field },
                    (None, Some(url)) => SubjectSource::Url {
                        url,
                        headers: source.headers.into_iter().collect(),
                        json_field,
                    },
                    _ => {
                        return Err(invalid(
                            "`credential_source` needs exactly one of `file` and `url` (executable and AWS sources are not supported; use a file written by your CI)"
                                .into(),
                        ));
                    }
                };
                Grant::ExternalAccount {
                    audience,
                    subject_token_type,
                    subject,
                    impersonation_url: file.service_account_impersonation_url,
                }
            }
            Some("impersonated_service_account") => {
                let (Some(impersonation_url), Some(source)) = (
                    file.service_account_impersonation_url,
                    file.source_credentials,
                ) else {
                    return Err(invalid(
                        "an `impersonated_service_account` file needs `service_account_impersonation_url` and `source_credentials`"
                            .into(),
                    ));
                };
                let source = Credentials::from_json(
                    source.to_string().as_bytes(),
                    &format!("{origin} (source_credentials)"),
                )?;
                Grant::Impersonated {
                    source: Box::new(source),
                    impersonation_url,
                    delegates: file.delegates,
                }
            }
            other => {
                return Err(invalid(format!(
                    "credentials of type `{}` are not supported; use a service-account key, `gcloud auth application-default login`, an `impersonated_service_account` or an `external_account` file",
                    other.unwrap_or("(none)")
                )));
            }
        };
        Ok(Credentials {
            grant,
            token_uri: file
                .token_uri
                .or(file.token_url)
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
            _ => Ok(Credentials::metadata(env)),
        }
    }

    /// The metadata server's credentials when it is there: `GCE_METADATA_HOST`
    /// names it, or the machine says it runs on Google Cloud (the DMI
    /// product name, as Google's client libraries check on Linux).
    pub fn metadata(env: &dyn Fn(&str) -> Option<String>) -> Option<Credentials> {
        let host = env("GCE_METADATA_HOST")
            .filter(|host| !host.trim().is_empty())
            .or_else(|| {
                std::fs::read_to_string("/sys/class/dmi/id/product_name")
                    .ok()
                    .filter(|name| name.contains("Google"))
                    .map(|_| METADATA_HOST.to_string())
            })?;
        Some(Credentials {
            grant: Grant::Metadata,
            token_uri: format!(
                "http://{host}/computeMetadata/v1/instance/service-accounts/default/token"
            ),
            origin: format!("the metadata server at `{host}`"),
            cached: Mutex::new(None),
        })
    }

    /// An access token, from the cache or a fresh grant.
    pub fn access_token(&self, agent: &ureq::Agent) -> Result<String, GcpError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, valid_until)) = cached.as_ref()
            && Instant::now() < *valid_until
        {
            return Ok(token.clone());
        }
        let (token, lifetime) = match &self.grant {
            Grant::ServiceAccount { .. } | Grant::AuthorizedUser { .. } => {
                let form = self.grant_form(SystemTime::now());
                self.token_request(agent, &self.token_uri, &form)?
            }
            Grant::ExternalAccount {
                audience,
                subject_token_type,
                subject,
                impersonation_url,
            } => {
                let subject_token = self.subject_token(agent, subject)?;
                let form = vec![
                    (
                        "grant_type",
                        "urn:ietf:params:oauth:grant-type:token-exchange".to_string(),
                    ),
                    ("audience", audience.clone()),
                    ("scope", SCOPE.to_string()),
                    (
                        "requested_token_type",
                        "urn:ietf:params:oauth:token-type:access_token".to_string(),
                    ),
                    ("subject_token", subject_token),
                    ("subject_token_type", subject_token_type.clone()),
                ];
                let federated = self.token_request(agent, &self.token_uri, &form)?;
                match impersonation_url {
                    None => federated,
                    Some(url) => self.impersonate(agent, url, &federated.0, &[])?,
                }
            }
            Grant::Impersonated {
                source,
                impersonation_url,
                delegates,
            } => {
                let source_token = source.access_token(agent)?;
                self.impersonate(agent, impersonation_url, &source_token, delegates)?
            }
            Grant::Metadata => {
                let url = format!("{}?scopes={}", self.token_uri, super::encode(SCOPE));
                let response = agent
                    .get(&url)
                    .header("Metadata-Flavor", "Google")
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .call();
                self.token_response(response, &self.token_uri)?
            }
        };
        *cached = Some((token.clone(), Instant::now() + lifetime));
        Ok(token)
    }

    /// POSTs a token form; the token and how long to keep it.
    fn token_request(
        &self,
        agent: &ureq::Agent,
        url: &str,
        form: &[(&'static str, String)],
    ) -> Result<(String, Duration), GcpError> {
        let response = agent
            .post(url)
            .config()
            .http_status_as_error(false)
            .build()
            .send_form(form.iter().map(|(k, v)| (*k, v.as_str())));
        self.token_response(response, url)
    }

    /// An OAuth token answer (`access_token`, `expires_in`).
    fn token_response(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        url: &str,
    ) -> Result<(String, Duration), GcpError> {
        #[derive(serde::Deserialize)]
        struct Token {
            access_token: String,
            expires_in: Option<u64>,
        }
        let body = self.answer(response, url)?;
        let token: Token = serde_json::from_slice(&body).map_err(|e| {
            GcpError::Credentials(format!(
                "the token endpoint `{url}` answered without an access token: {e}"
            ))
        })?;
        let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600).saturating_sub(60));
        Ok((token.access_token, lifetime))
    }

    /// The body of a 2xx answer; anything else is an error naming `url` and
    /// these credentials (never a token).
    fn answer(
        &self,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        url: &str,
    ) -> Result<Vec<u8>, GcpError> {
        let mut response = response.map_err(|e| {
            GcpError::Credentials(format!("could not reach the token endpoint `{url}`: {e}"))
        })?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_vec().unwrap_or_default();
        if !(200..300).contains(&status) {
            return Err(GcpError::Credentials(format!(
                "the token endpoint `{url}` refused the credentials in `{}` (HTTP {status}): {}",
                self.origin,
                super::error_message(&body)
            )));
        }
        Ok(body)
    }

    /// IAM Credentials `generateAccessToken` with `bearer`'s authority.
    fn impersonate(
        &self,
        agent: &ureq::Agent,
        url: &str,
        bearer: &str,
        delegates: &[String],
    ) -> Result<(String, Duration), GcpError> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Impersonated {
            access_token: String,
        }
        let mut request = serde_json::json!({"scope": [SCOPE], "lifetime": "3600s"});
        if !delegates.is_empty() {
            request["delegates"] = serde_json::json!(delegates);
        }
        let response = agent
            .post(url)
            .header("Authorization", &format!("Bearer {bearer}"))
            .header("Content-Type", "application/json")
            .config()
            .http_status_as_error(false)
            .build()
            .send(request.to_string().as_bytes());
        let body = self.answer(response, url)?;
        let token: Impersonated = serde_json::from_slice(&body).map_err(|e| {
            GcpError::Credentials(format!("`{url}` answered without an `accessToken`: {e}"))
        })?;
        // Asked for an hour; kept for 59 minutes.
        Ok((token.access_token, Duration::from_secs(3540)))
    }

    /// The federated subject token, read fresh for every exchange.
    fn subject_token(
        &self,
        agent: &ureq::Agent,
        subject: &SubjectSource,
    ) -> Result<String, GcpError> {
        let (text, json_field, from) = match subject {
            SubjectSource::File { path, json_field } => (
                std::fs::read_to_string(path).map_err(|e| {
                    GcpError::Credentials(format!(
                        "failed to read the subject token file `{}` named in `{}`: {e}",
                        path.display(),
                        self.origin
                    ))
                })?,
                json_field,
                path.display().to_string(),
            ),
            SubjectSource::Url {
                url,
                headers,
                json_field,
            } => {
                let mut request = agent.get(url);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let response = request.config().http_status_as_error(false).build().call();
                let body = self.answer(response, url)?;
                (
                    String::from_utf8_lossy(&body).into_owned(),
                    json_field,
                    url.clone(),
                )
            }
        };
        let token = match json_field {
            None => text.trim().to_string(),
            Some(field) => serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|value| value[field.as_str()].as_str().map(str::to_string))
                .ok_or_else(|| {
                    GcpError::Credentials(format!(
                        "the subject token from `{from}` is not JSON with a string `{field}`"
                    ))
                })?,
        };
        if token.is_empty() {
            return Err(GcpError::Credentials(format!(
                "the subject token from `{from}` is empty"
            )));
        }
        Ok(token)
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
            _ => Vec::new(),
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
            error.contains("`wif.json`") && error.contains("credential_source"),
            "{error}"
        );
        let error = Credentials::from_json(br#"{"type":"gdch_service_account"}"#, "x.json")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not supported"), "{error}");
        let error = Credentials::from_json(br#"{"type":"service_account"}"#, "k.json")
            .unwrap_err()
            .to_string();
        assert!(error.contains("client_email"), "{error}");
    }
}
