//! Google Cloud over its REST APIs (feature `gcp`): one small HTTP client
//! with Google's auth, and the three APIs `deploy-kit up` needs for a
//! `cloud-run` or `cloud-functions` target: Cloud Storage JSON API
//! ([`storage`]), Secret Manager v1 ([`secrets`]) and Cloud Run Admin v2
//! ([`run`]). [`probe`] is the doctor's `StorageProbe` on top of [`storage`].
//!
//! Why not the Google SDK crates: they are async, large, and none of them
//! covers all three APIs at once, while each call here is one JSON request.
//! The client is ureq (blocking, like the doctor's probes) with rustls.
//!
//! Auth follows the client-library conventions ([`auth`]):
//! - `GOOGLE_APPLICATION_CREDENTIALS` names a JSON file: a `service_account`
//!   key (OAuth JWT bearer grant, RFC 7523), an `authorized_user` file from
//!   `gcloud auth application-default login` (refresh-token grant), an
//!   `impersonated_service_account` file, or an `external_account` file
//!   (workload identity federation: STS token exchange, then optional
//!   impersonation).
//! - Without it, the application-default file under
//!   `~/.config/gcloud/application_default_credentials.json` is used, then
//!   the metadata server (`GCE_METADATA_HOST`, or on Google Cloud).
//! - Requests to a plain `http://` endpoint (an emulator or a test fake on
//!   loopback) are sent without a token: a bearer token never travels in
//!   clear text, and emulators ignore it anyway.
//!
//! Endpoints are overridable so tests can aim every API at 127.0.0.1:
//! `STORAGE_EMULATOR_HOST` (the convention of Google's client libraries),
//! `DEPLOY_KIT_SECRET_MANAGER_ENDPOINT` and `DEPLOY_KIT_CLOUD_RUN_ENDPOINT`.

pub mod auth;
pub mod probe;
pub mod run;
pub mod secrets;
pub mod state;
pub mod storage;

use std::time::Duration;

use ureq::http;

pub use auth::Credentials;

/// Where the Cloud Storage JSON API lives unless overridden.
pub const STORAGE_ENDPOINT: &str = "https://storage.googleapis.com";
/// Where Secret Manager lives unless `DEPLOY_KIT_SECRET_MANAGER_ENDPOINT` says otherwise.
pub const SECRET_MANAGER_ENDPOINT: &str = "https://secretmanager.googleapis.com";
/// Where the Cloud Run Admin API lives unless `DEPLOY_KIT_CLOUD_RUN_ENDPOINT` says otherwise.
pub const CLOUD_RUN_ENDPOINT: &str = "https://run.googleapis.com";

/// Why a call to a Google API failed.
#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    /// The API could not be asked: DNS, connect, TLS, timeout.
    #[error("could not reach `{url}`: {message}")]
    Unreachable { url: String, message: String },
    /// The API answered with an error status.
    #[error("{action} failed with HTTP {status}: {message}")]
    Status {
        action: String,
        status: u16,
        message: String,
    },
    /// No usable credentials, or the token endpoint refused them.
    #[error("{0}")]
    Credentials(String),
    /// The API answered 2xx with a body we could not read.
    #[error("{action}: unexpected response: {message}")]
    Decode { action: String, message: String },
}

impl GcpError {
    /// The resource does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, GcpError::Status { status: 404, .. })
    }

    /// The resource exists already (HTTP 409), e.g. a bucket or secret created twice.
    pub fn is_conflict(&self) -> bool {
        matches!(self, GcpError::Status { status: 409, .. })
    }

    /// The caller's credentials were refused (HTTP 401 or 403, or the token exchange).
    pub fn is_denied(&self) -> bool {
        matches!(
            self,
            GcpError::Status {
                status: 401 | 403,
                ..
            } | GcpError::Credentials(_)
        )
    }
}

/// One API answer with a 2xx status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; an empty body reads as `null`.
    pub fn json(&self, action: &str) -> Result<serde_json::Value, GcpError> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|error| GcpError::Decode {
            action: action.to_string(),
            message: format!("not JSON: {error}"),
        })
    }
}

/// A request body and its content type.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    pub content_type: &'a str,
    pub bytes: &'a [u8],
}

/// The HTTP client every API module shares: one agent, one credential.
pub struct Client {
    agent: ureq::Agent,
    credentials: Option<Credentials>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// `credentials: None` sends every request anonymously (emulators, fakes).
    pub fn new(credentials: Option<Credentials>) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(120)))
            .user_agent(concat!("deploy-kit/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Client { agent, credentials }
    }

    /// Sends one request. `action` names it in errors (``get bucket `b` ``).
    /// A non-2xx answer becomes [`GcpError::Status`] carrying Google's
    /// `error.message` when the body has one.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<Body<'_>>,
        action: &str,
    ) -> Result<Reply, GcpError> {
        let mut builder = http::Request::builder().method(method).uri(url);
        if !url.starts_with("http://") {
            let Some(credentials) = &self.credentials else {
                return Err(GcpError::Credentials(format!(
                    "no Google credentials for `{url}`: set `GOOGLE_APPLICATION_CREDENTIALS` to a service-account key, or run `gcloud auth application-default login`"
                )));
            };
            let token = credentials.access_token(&self.agent)?;
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let unreachable = |message: String| GcpError::Unreachable {
            url: url.to_string(),
            message,
        };
        let result = match body {
            Some(body) => {
                let request = builder
                    .header("content-type", body.content_type)
                    .body(body.bytes)
                    .map_err(|e| unreachable(e.to_string()))?;
                self.agent.run(request)
            }
            None => {
                let request = builder.body(()).map_err(|e| unreachable(e.to_string()))?;
                self.agent.run(request)
            }
        };
        let mut response = result.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .map_err(|e| unreachable(format!("reading the response: {e}")))?;
        if (200..300).contains(&status) {
            return Ok(Reply {
                status,
                body: bytes,
            });
        }
        Err(GcpError::Status {
            action: action.to_string(),
            status,
            message: error_message(&bytes),
        })
    }

    /// Sends JSON (or nothing) and reads JSON back.
    pub fn json(
        &self,
        method: &str,
        url: &str,
        body: Option<&serde_json::Value>,
        action: &str,
    ) -> Result<serde_json::Value, GcpError> {
        let text = body.map(|value| value.to_string());
        let body = text.as_ref().map(|text| Body {
            content_type: "application/json",
            bytes: text.as_bytes(),
        });
        self.send(method, url, body, action)?.json(action)
    }
}

/// Google's JSON error envelope `{"error": {"message": ...}}`, else the
/// start of the body as text.
fn error_message(body: &[u8]) -> String {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(message) = value
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .or_else(|| value.get("error_description").and_then(|m| m.as_str()))
    {
        return message.to_string();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    text.chars().take(300).collect()
}

/// Percent-encodes one path segment or query value (RFC 3986 unreserved
/// characters pass), so object names with `/` stay one segment.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An endpoint from an override: `host:port` (the `STORAGE_EMULATOR_HOST`
/// form) gains `http://`; a trailing `/` is dropped.
pub fn endpoint_from_override(value: &str) -> String {
    let value = value.trim().trim_end_matches('/');
    if value.contains("://") {
        value.to_string()
    } else {
        format!("http://{value}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_stay_one_path_segment() {
        assert_eq!(encode("vgi-rpc/a b.arrow"), "vgi-rpc%2Fa%20b.arrow");
        assert_eq!(encode("plain-name_1.~"), "plain-name_1.~");
    }

    #[test]
    fn emulator_host_gains_a_scheme() {
        assert_eq!(
            endpoint_from_override("localhost:9023"),
            "http://localhost:9023"
        );
        assert_eq!(
            endpoint_from_override("http://127.0.0.1:9023/"),
            "http://127.0.0.1:9023"
        );
        assert_eq!(
            endpoint_from_override("https://storage.example.com"),
            "https://storage.example.com"
        );
    }

    #[test]
    fn error_messages_come_from_googles_envelope() {
        assert_eq!(
            error_message(br#"{"error":{"code":404,"message":"No such bucket: b"}}"#),
            "No such bucket: b"
        );
        assert_eq!(
            error_message(br#"{"error":"invalid_grant","error_description":"Invalid JWT"}"#),
            "Invalid JWT"
        );
        assert_eq!(error_message(b""), "(empty body)");
        assert_eq!(error_message(b"Not Found"), "Not Found");
    }
}
