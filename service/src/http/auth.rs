//! API-key authentication.
//!
//! A caller presents `Authorization: Bearer <key>` or `X-API-Key: <key>`. The
//! key's *name* (never the key) becomes the caller identity, which is bound
//! into stream tokens so one caller cannot continue another's stream. Keys are
//! compared in constant time, against every configured key, so timing reveals
//! neither a prefix nor which key matched.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use subtle::ConstantTimeEq;

/// Named API keys.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "ApiKeys({names:?})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    #[error("entry {0} is not `name=key`")]
    Shape(usize),
    #[error("entry {index} (`{name}`) has an empty name or key")]
    Empty { index: usize, name: String },
    #[error("key name `{0}` appears twice")]
    DuplicateName(String),
    #[error("keys `{0}` and `{1}` are identical")]
    DuplicateKey(String, String),
}

impl ApiKeys {
    /// Parses `name=key` entries separated by commas or newlines; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<ApiKeys, ApiKeyError> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        let mut seen = BTreeMap::new();
        let entries = text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (index, entry) in entries.enumerate() {
            let (name, key) = entry.split_once('=').ok_or(ApiKeyError::Shape(index + 1))?;
            let (name, key) = (name.trim(), key.trim());
            if name.is_empty() || key.is_empty() {
                return Err(ApiKeyError::Empty {
                    index: index + 1,
                    name: name.to_string(),
                });
            }
            if seen.insert(name.to_string(), ()).is_some() {
                return Err(ApiKeyError::DuplicateName(name.to_string()));
            }
            if let Some((other, _)) = keys.iter().find(|(_, k)| k.as_slice() == key.as_bytes()) {
                return Err(ApiKeyError::DuplicateKey(other.clone(), name.to_string()));
            }
            keys.push((name.to_string(), key.as_bytes().to_vec()));
        }
        Ok(ApiKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The name of the key equal to `presented`, checking every key in constant time.
    pub fn identify(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for (name, key) in &self.keys {
            if bool::from(key.as_slice().ct_eq(presented)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// What the request presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    Key(&'a [u8]),
    /// An `Authorization` header that is not a bearer token.
    Unsupported,
}

pub fn credential(headers: &HeaderMap) -> Credential<'_> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let bytes = value.as_bytes();
        return match bytes.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => {
                Credential::Key(trim(&bytes[7..]))
            }
            _ => Credential::Unsupported,
        };
    }
    match headers.get("x-api-key") {
        Some(value) => Credential::Key(trim(value.as_bytes())),
        None => Credential::None,
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map(|e| e + 1)
        .unwrap_or(start);
    &bytes[start..end]
}

/// Why a request was refused, with upstream's `AuthReason` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_credential",
            Refusal::Invalid => "invalid_credential",
        }
    }
}

/// The outcome for one request: an identity (`""` anonymous) or a refusal.
pub fn authenticate(keys: &ApiKeys, require: bool, headers: &HeaderMap) -> Result<String, Refusal> {
    match credential(headers) {
        Credential::Key(key) => keys
            .identify(key)
            .map(str::to_string)
            .ok_or(Refusal::Invalid),
        Credential::Unsupported => Err(Refusal::Invalid),
        Credential::None if require => Err(Refusal::Missing),
        Credential::None => Ok(String::new()),
    }
}

/// 401 as upstream shapes it: JSON body, `VGI-Auth-Reason`, `WWW-Authenticate`, no caching.
pub fn unauthorized(refusal: Refusal, realm: &str) -> Response {
    let detail = match refusal {
        Refusal::Missing => {
            "this server requires an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
        }
        Refusal::Invalid => "the API key presented is not valid",
    };
    let body =
        serde_json::json!({"error": "unauthorized", "reason": refusal.reason(), "detail": detail});
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "vgi-auth-reason",
        HeaderValue::from_static(refusal.reason()),
    );
    let challenge = format!("Bearer realm=\"{}\"", realm.replace('"', ""));
    headers.insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).unwrap_or(HeaderValue::from_static("Bearer")),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn parse_reports_the_bad_entry() {
        assert_eq!(
            ApiKeys::parse("ci=abc,ops").unwrap_err(),
            ApiKeyError::Shape(2)
        );
        assert_eq!(
            ApiKeys::parse("a=1,a=2").unwrap_err(),
            ApiKeyError::DuplicateName("a".into())
        );
        assert_eq!(
            ApiKeys::parse("a=1,b=1").unwrap_err(),
            ApiKeyError::DuplicateKey("a".into(), "b".into())
        );
        assert_eq!(
            ApiKeys::parse("# comment\nci = k1\nops=k2\n")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn identities_come_from_key_names() {
        let keys = ApiKeys::parse("ci=secret-one,ops=secret-two").unwrap();
        assert_eq!(
            authenticate(
                &keys,
                true,
                &headers(&[("authorization", "Bearer secret-two")])
            ),
            Ok("ops".into())
        );
        assert_eq!(
            authenticate(&keys, true, &headers(&[("x-api-key", "secret-one")])),
            Ok("ci".into())
        );
        assert_eq!(
            authenticate(&keys, true, &headers(&[("x-api-key", "secret")])),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            authenticate(&keys, true, &headers(&[("authorization", "Basic eDp5")])),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            authenticate(&keys, true, &headers(&[])),
            Err(Refusal::Missing)
        );
        assert_eq!(authenticate(&keys, false, &headers(&[])), Ok(String::new()));
    }

    #[test]
    fn debug_output_never_shows_keys() {
        let keys = ApiKeys::parse("ci=topsecret").unwrap();
        assert!(!format!("{keys:?}").contains("topsecret"));
    }
}
