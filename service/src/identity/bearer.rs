//! Identity credentials accepted as bearers, closing the loop upstream's
//! `vgi_rpc/http/_grant_auth.py` closes: a sealed grant `issue_grant` minted,
//! or a credential the host's `resolve_token` resolves, authenticates a
//! later request as an ordinary `Authorization: Bearer`.
//!
//! The order is upstream's: the deployment's own authenticator (API keys or
//! a host's [`Authenticator`]) first, then sealed grants (a prefix check),
//! then `resolve_token`. Routing is by prefix and strict both ways: a
//! `vgig1.` bearer that does not verify is a 401 (`invalid_credential`, or
//! `expired_credential` once proven authentic) and never reaches the
//! resolver; any other bearer never reaches the grant verifier. A resolver
//! outage is a 503 with the hook's `Retry-After`, never a 401. A request
//! with no bearer keeps whatever the deployment's authenticator decided
//! (anonymous stays anonymous).

use std::sync::Arc;

use http::{HeaderMap, header};
use serde_json::{Map, Value};

use super::grant::{GRANT_TOKEN_PREFIX, verify_grant_token};
use super::{HookError, Identity};
use crate::http::auth::{Authenticator, Refusal, Target, now_unix_seconds};
use crate::rpc::AuthContext;

/// `AuthContext.domain` of a grant-authenticated request.
pub const GRANT_AUTH_DOMAIN: &str = "grant";
/// `AuthContext.domain` of a request authenticated through `resolve_token`.
pub const TOKEN_AUTH_DOMAIN: &str = "token";

/// The deployment's authenticator followed by the identity bearers.
///
/// ```
/// use std::sync::Arc;
/// use http::{HeaderMap, HeaderValue};
/// use kit_service::http::auth::{ApiKeyAuthenticator, ApiKeys, Authenticator, Target};
/// use kit_service::identity::{Identity, TokenIdentity, bearer::IdentityAuthenticator};
///
/// let identity = Identity::builder()
///     .resolve_token(&["proxy"], |token| Ok((token == "opaque").then(|| TokenIdentity::new("ann"))))
///     .build()
///     .unwrap();
/// let keys = ApiKeyAuthenticator { keys: ApiKeys::parse("ci=k1").unwrap(), require: true };
/// let auth = IdentityAuthenticator::new(Arc::new(keys), Arc::new(identity));
/// let mut headers = HeaderMap::new();
/// headers.insert("authorization", HeaderValue::from_static("Bearer opaque"));
/// let caller = auth.authenticate_context(&headers, Target::Other).unwrap();
/// assert_eq!((caller.principal.as_str(), caller.domain.as_str()), ("ann", "token"));
/// headers.insert("authorization", HeaderValue::from_static("Bearer k1"));
/// assert_eq!(auth.authenticate(&headers, Target::Other).unwrap(), "ci");
/// ```
pub struct IdentityAuthenticator {
    base: Arc<dyn Authenticator>,
    identity: Arc<Identity>,
}

impl IdentityAuthenticator {
    /// `base` first, then `identity`'s grants and resolver.
    pub fn new(base: Arc<dyn Authenticator>, identity: Arc<Identity>) -> IdentityAuthenticator {
        IdentityAuthenticator { base, identity }
    }

    /// Whether `identity` feeds authentication at all (grant keys or a
    /// resolver); without either the base authenticator is used unchanged.
    pub fn applies(identity: &Identity) -> bool {
        identity.grant_keys().is_some() || identity.resolves_tokens()
    }

    fn identity_bearer(&self, token: &str) -> Result<Option<AuthContext>, Refusal> {
        if token.starts_with(GRANT_TOKEN_PREFIX) {
            let Some(keys) = self.identity.grant_keys() else {
                return Ok(None);
            };
            return match verify_grant_token(keys, token, now_unix_seconds()) {
                Ok(claims) => {
                    let mut map = Map::new();
                    map.insert("grant_id".into(), Value::String(claims.grant_id));
                    map.insert(
                        "scopes".into(),
                        Value::Array(claims.scopes.into_iter().map(Value::String).collect()),
                    );
                    map.insert("purpose".into(), Value::String(claims.purpose));
                    Ok(Some(AuthContext {
                        authenticated: true,
                        principal: claims.principal,
                        domain: GRANT_AUTH_DOMAIN.into(),
                        claims: map,
                    }))
                }
                Err(error) if error.is_expired() => Err(Refusal::Expired),
                Err(_) => Err(Refusal::Invalid),
            };
        }
        match self.identity.resolve_bearer(token) {
            Ok(Some(resolved)) => {
                let mut map = Map::new();
                map.insert("token_name".into(), Value::String(resolved.token_name));
                Ok(Some(AuthContext {
                    authenticated: true,
                    principal: resolved.principal,
                    domain: TOKEN_AUTH_DOMAIN.into(),
                    claims: map,
                }))
            }
            Ok(None) => Ok(None),
            Err(HookError::Unavailable { retry_after, .. }) => {
                Err(Refusal::Unavailable { retry_after })
            }
            // A resolver has no refusal of its own: "not mine" is `None`.
            Err(HookError::Refused(_)) => Ok(None),
        }
    }
}

/// The credential of `Authorization: Bearer <credential>`, if that is what
/// the request carries.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let scheme = value.get(..7)?;
    scheme.eq_ignore_ascii_case("bearer ").then(|| &value[7..])
}

impl Authenticator for IdentityAuthenticator {
    fn authenticate(&self, headers: &HeaderMap, target: Target<'_>) -> Result<String, Refusal> {
        self.authenticate_context(headers, target)
            .map(|caller| caller.principal)
    }

    fn authenticate_context(
        &self,
        headers: &HeaderMap,
        target: Target<'_>,
    ) -> Result<AuthContext, Refusal> {
        let decided = self.base.authenticate_context(headers, target);
        let token = match (&decided, bearer(headers)) {
            (Ok(caller), _) if caller.authenticated => return decided,
            (_, None) => return decided,
            (_, Some(token)) => token,
        };
        match self.identity_bearer(token)? {
            Some(caller) => Ok(caller),
            // Nothing accepted the credential the request carried.
            None => Err(decided.err().unwrap_or(Refusal::Invalid)),
        }
    }
}
