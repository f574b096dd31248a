//! The `vgi_rpc.Identity.v2` conformance workers: the fixed deployment
//! policy of upstream's `vgi_rpc/conformance/identity_fixture.py`
//! (IDENTITY_CONFORMANCE_FIXTURE.md), hosted by kit-service's own
//! [`crate::identity`] so the wheel's `_identity_pytest` and `_grant_pytest`
//! groups test kit's guards, sealing and bearer acceptance, not a stand-in.
//!
//! Three workers, one binary, each a hidden flag of `kit-service serve`:
//!
//! - `--conformance-identity`: the fixture resolver and minter;
//! - `--conformance-identity-introspect-only`: the resolver alone (the
//!   narrowed protocol);
//! - `--conformance-grant`: the resolver and the fixture grant keys, no mint
//!   hook (kit mints sealed grants), plus `conformance.Whoami.v1`.
//!
//! **The authentication here is header-driven and trivially spoofable by
//! anyone who can reach the port** (`X-Conformance-Principal`,
//! `X-Conformance-Auth-Time`): it gives the suite a deterministic caller
//! without an identity provider. It is a test fixture and must never be
//! deployed; the flag is hidden from `--help`.

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Map, Value, json};

use crate::http::auth::{Authenticator, Refusal, Target};
use crate::identity::grant::GrantKeys;
use crate::identity::{HookError, Identity, IssuedGrant, MintRequest, TokenIdentity};
use crate::rpc::{AuthContext, Protocol};

/// The header naming the authenticated principal; absent means unauthenticated.
pub const PRINCIPAL_HEADER: &str = "x-conformance-principal";
/// The header carried verbatim into the `auth_time` claim.
pub const AUTH_TIME_HEADER: &str = "x-conformance-auth-time";
/// The single principal on the introspector allowlist.
pub const INTROSPECTOR_PRINCIPAL: &str = "conformance-introspector";
/// The identity every resolvable credential maps to.
pub const SUBJECT_PRINCIPAL: &str = "subject@conformance.example";
const SUBJECT_TOKEN_NAME: &str = "conformance-subject";
const SUBJECT_TTL: i64 = 300;
const TOKEN_UNKNOWN: &str = "conformance-unknown-token";
const TOKEN_UNAVAILABLE: &str = "conformance-unavailable-token";
const UNAVAILABLE_RETRY_AFTER: u32 = 5;
const TOKEN_AUTH_UNAVAILABLE: &str = "conformance-auth-unavailable-token";
const AUTH_UNAVAILABLE_RETRY_AFTER: u32 = 7;
const TOKEN_ZERO_TTL: &str = "conformance-zero-ttl-token";
const TOKEN_MINIMAL: &str = "conformance-minimal-token";
const TOKEN_PADDED_PROBE: &str = "  conformance-padded-probe  ";
const TOKEN_PADDED_PROBE_NAME: &str = "conformance-padded";
const GRANT_TOKEN_PREFIX: &str = "conformance-grant-for:";
const SCOPE_SEPARATOR: &str = "|";
/// 2030-01-01T00:00:00Z.
const GRANT_EXPIRES_AT: i64 = 1_893_456_000;
const GRANT_ID: &str = "conformance-grant-id";
const REFUSED_PURPOSE: &str = "conformance-refused";
const MINIMAL_PURPOSE: &str = "conformance-minimal";
const AUTH_UNAVAILABLE_PURPOSE: &str = "conformance-auth-unavailable";
/// The grant worker's audience and lifetime ceiling.
const GRANT_AUDIENCE: &str = "conformance";
const GRANT_MAX_TTL: i64 = 3600;
/// The probe protocol of the grant worker.
pub const WHOAMI_NAME: &str = "conformance.Whoami.v1";

/// Which identity worker to host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityWorker {
    /// Resolver and minter (`conformance_http_identity_port`).
    Both,
    /// Resolver only (`conformance_http_identity_introspect_only_port`).
    IntrospectOnly,
    /// Resolver, sealed grants with the fixture keys, `conformance.Whoami.v1`
    /// (`conformance_http_grant_port`).
    Grant,
}

impl IdentityWorker {
    /// The worker's identity configuration.
    ///
    /// ```
    /// use kit_service::conformance::IdentityWorker;
    ///
    /// assert_eq!(IdentityWorker::Both.identity().offered_methods(), ["introspect_token", "issue_grant"]);
    /// assert_eq!(IdentityWorker::IntrospectOnly.identity().offered_methods(), ["introspect_token"]);
    /// assert!(IdentityWorker::Grant.identity().grant_keys().is_some());
    /// ```
    pub fn identity(self) -> Identity {
        let builder = Identity::builder()
            .resolve_token(&[INTROSPECTOR_PRINCIPAL], resolve_token)
            .max_auth_age(900.0);
        let builder = match self {
            IdentityWorker::Both => builder.mint_grant(mint_grant),
            IdentityWorker::IntrospectOnly => builder,
            IdentityWorker::Grant => builder.grant_keys(grant_keys()),
        };
        builder
            .build()
            .expect("the conformance identity policy is well-formed")
    }

    /// The application protocols the worker hosts: the conformance pair,
    /// plus `conformance.Whoami.v1` on the grant worker.
    pub fn protocols(self) -> Vec<Protocol> {
        let mut protocols = super::protocols();
        if self == IdentityWorker::Grant {
            protocols.push(whoami());
        }
        protocols
    }
}

/// `conformance_resolve_token`: resolves everything but the probes, so a
/// refusal can only come from a guard.
fn resolve_token(token: &str) -> Result<Option<TokenIdentity>, HookError> {
    let subject = || TokenIdentity::new(SUBJECT_PRINCIPAL).with_token_name(SUBJECT_TOKEN_NAME);
    match token {
        TOKEN_UNAVAILABLE => Err(HookError::Unavailable {
            detail: "conformance: mapping store unreachable".into(),
            retry_after: UNAVAILABLE_RETRY_AFTER,
        }),
        TOKEN_AUTH_UNAVAILABLE => Err(HookError::Unavailable {
            detail: "conformance: authority unreachable".into(),
            retry_after: AUTH_UNAVAILABLE_RETRY_AFTER,
        }),
        TOKEN_UNKNOWN => Ok(None),
        TOKEN_ZERO_TTL => Ok(Some(subject().with_ttl_seconds(0))),
        TOKEN_MINIMAL => Ok(Some(TokenIdentity::new(SUBJECT_PRINCIPAL))),
        TOKEN_PADDED_PROBE => Ok(Some(
            TokenIdentity::new(SUBJECT_PRINCIPAL)
                .with_token_name(TOKEN_PADDED_PROBE_NAME)
                .with_ttl_seconds(SUBJECT_TTL),
        )),
        _ => Ok(Some(subject().with_ttl_seconds(SUBJECT_TTL))),
    }
}

/// `conformance_mint_grant`: ignores the requested lifetime (a constant
/// expiry is assertable exactly) and echoes principal and scopes.
fn mint_grant(request: &MintRequest<'_>) -> Result<IssuedGrant, HookError> {
    match request.purpose {
        AUTH_UNAVAILABLE_PURPOSE => Err(HookError::Unavailable {
            detail: "conformance: grant store unreachable".into(),
            retry_after: AUTH_UNAVAILABLE_RETRY_AFTER,
        }),
        REFUSED_PURPOSE => Err(HookError::Refused(
            "conformance: this purpose is refused".into(),
        )),
        purpose => {
            let token = format!(
                "{GRANT_TOKEN_PREFIX}{}{SCOPE_SEPARATOR}{}",
                request.principal,
                request.scopes.join(",")
            );
            let grant = IssuedGrant::new(token, GRANT_EXPIRES_AT);
            Ok(if purpose == MINIMAL_PURPOSE {
                grant
            } else {
                grant.with_grant_id(GRANT_ID)
            })
        }
    }
}

/// The published fixture keys: bytes 0x10..0x2f mint, 0x30..0x4f (the
/// rotated-out key) still verifies.
fn grant_keys() -> GrantKeys {
    let key = |start: u8| -> [u8; 32] { std::array::from_fn(|i| start + i as u8) };
    GrantKeys::new(vec![key(0x10), key(0x30)], GRANT_AUDIENCE, GRANT_MAX_TTL)
        .expect("the fixture grant keys are distinct")
}

/// `conformance.Whoami.v1`: reports the request's `AuthContext` as
/// canonical JSON (sorted keys), `domain` and `principal` `""` when absent.
fn whoami() -> Protocol {
    Protocol::builder(WHOAMI_NAME)
        .unary("whoami", "", "result: utf8", |ctx, _args| async move {
            let auth = ctx.auth();
            Ok(json!({
                "authenticated": auth.authenticated,
                "claims": Value::Object(auth.claims.clone()),
                "domain": auth.domain,
                "principal": auth.principal,
            })
            .to_string())
        })
        .build()
        .unwrap_or_else(|errors| panic!("conformance.Whoami.v1 is well-formed: {errors:?}"))
}

/// The fixture's authenticator: `X-Conformance-Principal` is the caller,
/// `X-Conformance-Auth-Time` goes verbatim into `auth_time`; without the
/// principal header the caller is anonymous (and a bearer it carries is
/// left to the identity bearers). Never deploy this.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use kit_service::conformance::HeaderAuthenticator;
/// use kit_service::http::auth::{Authenticator, Target};
///
/// let mut headers = HeaderMap::new();
/// assert!(!HeaderAuthenticator.authenticate_context(&headers, Target::Other).unwrap().authenticated);
/// headers.insert("x-conformance-principal", HeaderValue::from_static("ann"));
/// headers.insert("x-conformance-auth-time", HeaderValue::from_static("not-a-timestamp"));
/// let caller = HeaderAuthenticator.authenticate_context(&headers, Target::Other).unwrap();
/// assert_eq!(caller.claims["auth_time"], "not-a-timestamp");
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderAuthenticator;

impl Authenticator for HeaderAuthenticator {
    fn authenticate(&self, headers: &HeaderMap, target: Target<'_>) -> Result<String, Refusal> {
        self.authenticate_context(headers, target)
            .map(|caller| caller.principal)
    }

    fn authenticate_context(
        &self,
        headers: &HeaderMap,
        _target: Target<'_>,
    ) -> Result<AuthContext, Refusal> {
        let text = |name: &str| {
            headers
                .get(name)
                .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        };
        let Some(principal) = text(PRINCIPAL_HEADER).filter(|p| !p.is_empty()) else {
            return Ok(AuthContext::anonymous());
        };
        let mut claims = Map::new();
        if let Some(auth_time) = text(AUTH_TIME_HEADER) {
            claims.insert("auth_time".into(), Value::String(auth_time));
        }
        Ok(AuthContext {
            authenticated: true,
            principal,
            domain: String::new(),
            claims,
        })
    }
}

/// The fixture authenticator, shared by the three workers.
pub fn header_authenticator() -> Arc<dyn Authenticator> {
    Arc::new(HeaderAuthenticator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::grant::grant_key_id;
    use crate::reflection::protocol_hash;

    #[test]
    fn whoami_hash_matches_upstreams_pin() {
        assert_eq!(
            protocol_hash(&whoami()),
            "a280333ba72432020e162cab388a78355969a30aa74f0665ad9d2932d7a10b8f"
        );
    }

    #[test]
    fn the_fixture_keys_are_the_published_ones() {
        let keys = grant_keys();
        let current: [u8; 32] = std::array::from_fn(|i| 0x10 + i as u8);
        assert_eq!(keys.key_ids()[0], hex::encode(grant_key_id(&current)));
        assert_eq!(keys.len(), 2);
    }
}
