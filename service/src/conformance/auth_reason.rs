//! The worker behind upstream's `conformance_http_auth_reason_port` fixture:
//! it refuses every call, with the reason its `X-Conformance-Auth-Reason`
//! header asks for, so `TestUnauthorized` can see each code of the closed set
//! on the wire. Upstream builds it the same way, as an `authenticate` hook
//! raising `AuthFailure(reason)`. Real keys reach `expired_credential` and
//! `insufficient_scope` through `KIT_API_KEYS` expiry and scopes; this worker
//! only proves the 401 envelope carries every code.

use http::HeaderMap;

use crate::http::auth::{Authenticator, Refusal, Target};

/// The request header naming the reason to refuse with.
pub const REASON_HEADER: &str = "x-conformance-auth-reason";

/// Refuses every request: with the reason its [`REASON_HEADER`] names when
/// that is one a request may ask for, else with the unclassified fallback
/// (`proxy_required` is never request-driven).
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use kit_service::conformance::AuthReasonWorker;
/// use kit_service::http::auth::{Authenticator, Refusal, Target};
///
/// let mut headers = HeaderMap::new();
/// assert_eq!(AuthReasonWorker.authenticate(&headers, Target::Other), Err(Refusal::Unauthorized));
/// headers.insert("x-conformance-auth-reason", HeaderValue::from_static("expired_credential"));
/// assert_eq!(AuthReasonWorker.authenticate(&headers, Target::Other), Err(Refusal::Expired));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthReasonWorker;

impl Authenticator for AuthReasonWorker {
    fn authenticate(&self, headers: &HeaderMap, _target: Target<'_>) -> Result<String, Refusal> {
        let requested = headers
            .get(REASON_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::trim);
        Err(match requested {
            Some("missing_credential") => Refusal::Missing,
            Some("invalid_credential") => Refusal::Invalid,
            Some("expired_credential") => Refusal::Expired,
            Some("insufficient_scope") => Refusal::InsufficientScope,
            _ => Refusal::Unauthorized,
        })
    }
}
