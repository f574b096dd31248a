//! API-key authentication.
//!
//! A caller presents `Authorization: Bearer <key>` or `X-API-Key: <key>`. The
//! key's *name* (never the key) becomes the caller identity, which is bound
//! into stream tokens so one caller cannot continue another's stream. Keys are
//! compared in constant time, against every configured key, so timing reveals
//! neither a prefix nor which key matched.

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use kit_checks::api_keys::{self, KeyEntry, KeyEntryError};
use subtle::ConstantTimeEq;

use crate::rpc::AuthContext;

/// The API key header, parsed once.
const API_KEY: http::HeaderName = http::HeaderName::from_static("x-api-key");

/// Named API keys, each with an optional expiry and scopes (the entry
/// format of [`kit_checks::api_keys`]).
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<KeyEntry>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|k| k.name.as_str()).collect();
        write!(f, "ApiKeys({names:?})")
    }
}

/// Why `KIT_API_KEYS` (or its file) was refused.
pub type ApiKeyError = KeyEntryError;

impl ApiKeys {
    /// Parses `name=key[;expires=...][;scopes=...]` entries separated by
    /// commas or newlines; `#` starts a comment line.
    pub fn parse(text: &str) -> Result<ApiKeys, ApiKeyError> {
        Ok(ApiKeys {
            keys: api_keys::parse(text)?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Every key's name, expiry and scopes (never the key), for the doctor.
    pub fn facts(&self) -> Vec<api_keys::KeyFacts> {
        self.keys.iter().map(api_keys::KeyFacts::from).collect()
    }

    /// The entry whose key equals `presented`, checking every key in constant time.
    pub fn entry(&self, presented: &[u8]) -> Option<&KeyEntry> {
        let mut found = None;
        for entry in &self.keys {
            if bool::from(entry.key.as_bytes().ct_eq(presented)) {
                found = Some(entry);
            }
        }
        found
    }

    /// The name of the key equal to `presented`, checking every key in constant time.
    pub fn identify(&self, presented: &[u8]) -> Option<&str> {
        self.entry(presented).map(|e| e.name.as_str())
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
    match headers.get(API_KEY) {
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

/// What a request asks to call, read from its path, for scope checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `{prefix}/{protocol}/{method}[/init|/exchange]`.
    Method { protocol: &'a str, method: &'a str },
    /// `{prefix}/__upload_url__/init`: upload URLs for a large request, which
    /// any valid key may ask for (the call that follows is scope-checked).
    Upload,
    /// Anything else (an unknown route); a scoped key may not reach it.
    Other,
}

impl<'a> Target<'a> {
    /// The target of `path` under the route `prefix` (`""` or `/vgi`).
    pub fn of(prefix: &str, path: &'a str) -> Target<'a> {
        let Some(rest) = path.strip_prefix(prefix).and_then(|r| r.strip_prefix('/')) else {
            return Target::Other;
        };
        let mut parts = rest.split('/');
        // Up to four segments: a fourth means the path is none of these.
        let segments = [parts.next(), parts.next(), parts.next(), parts.next()];
        match segments {
            [Some("__upload_url__"), Some("init"), None, None] => Target::Upload,
            [Some(protocol), Some(method), None, None]
            | [
                Some(protocol),
                Some(method),
                Some("init" | "exchange"),
                None,
            ] if !protocol.is_empty() && !method.is_empty() => Target::Method { protocol, method },
            _ => Target::Other,
        }
    }
}

/// Why a request was refused, with upstream's `AuthReason` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No credential at all.
    Missing,
    /// A credential that matches no key (or is not a bearer token).
    Invalid,
    /// A known key past its `expires`.
    Expired,
    /// A known, unexpired key whose scopes do not cover the target.
    InsufficientScope,
    /// Refused without a finer reason (upstream's fallback; custom authenticators).
    Unauthorized,
    /// No valid `VGI-Proxy-Proof`: the same refusal whatever failed.
    ProxyRequired,
    /// Whether the credential is good is not knowable now (an identity
    /// store is down): 503 with `Retry-After`, never 401, so a blip does
    /// not log a fleet out (upstream's `AuthUnavailableError`).
    Unavailable {
        /// Seconds the caller should wait, sent as `Retry-After`.
        retry_after: u32,
    },
}

impl Refusal {
    /// The `VGI-Auth-Reason` code.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "missing_credential",
            Refusal::Invalid => "invalid_credential",
            Refusal::Expired => "expired_credential",
            Refusal::InsufficientScope => "insufficient_scope",
            Refusal::Unauthorized => "unauthorized",
            Refusal::ProxyRequired => "proxy_required",
            // Never a 401 reason: the refusal is a 503.
            Refusal::Unavailable { .. } => "unavailable",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Refusal::Missing => {
                "this server requires an API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
            }
            Refusal::Invalid => "the API key presented is not valid",
            Refusal::Expired => "the API key presented has expired",
            Refusal::InsufficientScope => "the API key presented may not call this method",
            Refusal::Unauthorized => "authentication rejected",
            Refusal::ProxyRequired => "proxy proof required",
            Refusal::Unavailable { .. } => "identity lookup unavailable",
        }
    }
}

/// A replacement for API-key authentication, as upstream's `authenticate`
/// hook: it sees the request's headers and target and returns the caller
/// identity (`""` anonymous, bound into stream tokens) or a refusal, which
/// becomes the standard 401.
///
/// ```
/// use http::HeaderMap;
/// use kit_service::http::auth::{Authenticator, Refusal, Target};
///
/// struct OnlyHealthy;
/// impl Authenticator for OnlyHealthy {
///     fn authenticate(&self, headers: &HeaderMap, _target: Target<'_>) -> Result<String, Refusal> {
///         match headers.get("x-team") {
///             Some(team) => Ok(team.to_str().unwrap_or_default().to_string()),
///             None => Err(Refusal::Missing),
///         }
///     }
/// }
/// assert_eq!(OnlyHealthy.authenticate(&HeaderMap::new(), Target::Other), Err(Refusal::Missing));
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// The caller's identity, or why the request is refused.
    fn authenticate(&self, headers: &HeaderMap, target: Target<'_>) -> Result<String, Refusal>;

    /// The whole [`AuthContext`] (claims, domain) for an authenticator that
    /// knows more than a name; by default [`Authenticator::authenticate`]'s
    /// identity, authenticated when not empty.
    fn authenticate_context(
        &self,
        headers: &HeaderMap,
        target: Target<'_>,
    ) -> Result<AuthContext, Refusal> {
        self.authenticate(headers, target)
            .map(|identity| AuthContext::of_identity(&identity))
    }
}

/// API-key authentication ([`authenticate`] at the current time) as an
/// [`Authenticator`], for composing it with others (the identity bearers of
/// `identity::bearer`).
#[derive(Debug, Clone)]
pub struct ApiKeyAuthenticator {
    /// The configured keys.
    pub keys: ApiKeys,
    /// Whether a request without a key is refused.
    pub require: bool,
}

impl Authenticator for ApiKeyAuthenticator {
    fn authenticate(&self, headers: &HeaderMap, target: Target<'_>) -> Result<String, Refusal> {
        authenticate(
            &self.keys,
            self.require,
            headers,
            target,
            now_unix_seconds(),
        )
    }
}

/// Seconds since the Unix epoch, the clock key expiry is judged by.
pub fn now_unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The outcome for one request: an identity (`""` anonymous) or a refusal.
/// A known key is then judged by its expiry (at `now`, Unix seconds) and
/// its scopes against `target`, in that order.
pub fn authenticate(
    keys: &ApiKeys,
    require: bool,
    headers: &HeaderMap,
    target: Target<'_>,
    now: i64,
) -> Result<String, Refusal> {
    match credential(headers) {
        Credential::Key(key) => {
            let entry = keys.entry(key).ok_or(Refusal::Invalid)?;
            if entry.expired_at(now) {
                return Err(Refusal::Expired);
            }
            let allowed = match target {
                _ if entry.scopes.is_empty() => true,
                Target::Upload => true,
                Target::Method { protocol, method } => entry.allows(protocol, method),
                Target::Other => false,
            };
            if !allowed {
                return Err(Refusal::InsufficientScope);
            }
            Ok(entry.name.clone())
        }
        Credential::Unsupported => Err(Refusal::Invalid),
        Credential::None if require => Err(Refusal::Missing),
        Credential::None => Ok(String::new()),
    }
}

/// 401 as upstream shapes it: JSON body, `VGI-Auth-Reason`, `WWW-Authenticate`,
/// no caching; on a worker that requires a proxy proof (`proxy_required`
/// here is configuration, never the request), `VGI-Auth-Proxy-Required`
/// and the operator note in `proxy_hint`, on every 401.
pub fn unauthorized(refusal: Refusal, realm: &str, proxy_required: bool) -> Response {
    let mut body = serde_json::json!({"error": "unauthorized", "reason": refusal.reason(), "detail": refusal.detail()});
    if proxy_required {
        body["proxy_hint"] = super::proxy_proof::proxy_hint().into();
    }
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
    if proxy_required {
        headers.insert("vgi-auth-proxy-required", HeaderValue::from_static("true"));
    }
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

    const ANY: Target<'static> = Target::Method {
        protocol: "kit.Demo.v1",
        method: "add",
    };

    fn authenticate(keys: &ApiKeys, require: bool, headers: &HeaderMap) -> Result<String, Refusal> {
        super::authenticate(keys, require, headers, ANY, now_unix_seconds())
    }

    #[test]
    fn parse_reports_the_bad_entry() {
        assert_eq!(
            ApiKeys::parse("ci=abc,ops").unwrap_err(),
            ApiKeyError::Shape(2)
        );
        assert_eq!(
            ApiKeys::parse("# comment\nci = k1\nops=k2\n")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn expired_keys_are_refused_as_expired_from_their_first_second() {
        let keys = ApiKeys::parse("old=k-old;expires=2026-01-01,new=k-new").unwrap();
        let at = |now: i64| {
            super::authenticate(&keys, true, &headers(&[("x-api-key", "k-old")]), ANY, now)
        };
        let expiry = 1_767_225_600; // 2026-01-01T00:00:00Z
        assert_eq!(at(expiry - 1), Ok("old".into()));
        assert_eq!(at(expiry), Err(Refusal::Expired));
        assert_eq!(
            super::authenticate(
                &keys,
                true,
                &headers(&[("x-api-key", "k-new")]),
                ANY,
                expiry
            ),
            Ok("new".into())
        );
    }

    #[test]
    fn targets_are_read_from_the_path() {
        let method = |protocol, method| Target::Method { protocol, method };
        assert_eq!(Target::of("/vgi", "/vgi/p/m"), method("p", "m"));
        assert_eq!(Target::of("", "/p/m/init"), method("p", "m"));
        assert_eq!(Target::of("/vgi", "/vgi/p/m/exchange"), method("p", "m"));
        assert_eq!(
            Target::of("/vgi", "/vgi/__upload_url__/init"),
            Target::Upload
        );
        for other in [
            "/vgi/p/m/other",
            "/vgi/p/m/init/x",
            "/vgi/__upload_url__/init/x",
            "/vgi/p",
            "/vgi/p/",
            "/vgi//m",
            "/vgi",
            "/else/p/m",
        ] {
            assert_eq!(Target::of("/vgi", other), Target::Other, "{other}");
        }
    }

    #[test]
    fn scoped_keys_reach_only_their_methods() {
        let keys = ApiKeys::parse("adder=k1;scopes=kit.Demo.v1/add other.P/*,all=k2").unwrap();
        let check = |key: &str, path: &str| {
            super::authenticate(
                &keys,
                true,
                &headers(&[("x-api-key", key)]),
                Target::of("/vgi", path),
                0,
            )
        };
        assert_eq!(check("k1", "/vgi/kit.Demo.v1/add"), Ok("adder".into()));
        assert_eq!(check("k1", "/vgi/other.P/x/init"), Ok("adder".into()));
        assert_eq!(check("k1", "/vgi/other.P/x/exchange"), Ok("adder".into()));
        assert_eq!(check("k1", "/vgi/__upload_url__/init"), Ok("adder".into()));
        for refused in [
            "/vgi/kit.Demo.v1/greet",
            "/vgi/kit.Demo.v1/count/init",
            "/vgi/kit.Demo.v1",
            "/elsewhere/kit.Demo.v1/add",
            "/vgi/__describe__",
        ] {
            assert_eq!(
                check("k1", refused),
                Err(Refusal::InsufficientScope),
                "{refused}"
            );
        }
        assert_eq!(check("k2", "/vgi/kit.Demo.v1/greet"), Ok("all".into()));
        assert_eq!(check("k3", "/vgi/kit.Demo.v1/add"), Err(Refusal::Invalid));
    }

    #[test]
    fn every_refusal_has_its_own_reason_header() {
        let reasons: Vec<String> = [
            Refusal::Missing,
            Refusal::Invalid,
            Refusal::Expired,
            Refusal::InsufficientScope,
            Refusal::Unauthorized,
        ]
        .into_iter()
        .map(|refusal| {
            let response = unauthorized(refusal, "kit.Demo.v1", false);
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            response.headers()["vgi-auth-reason"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
        assert_eq!(
            reasons,
            [
                "missing_credential",
                "invalid_credential",
                "expired_credential",
                "insufficient_scope",
                "unauthorized"
            ]
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
