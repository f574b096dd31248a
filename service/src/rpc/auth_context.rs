//! What authentication decided about a caller, as a handler sees it
//! (upstream's `AuthContext`). Most methods need only the principal
//! ([`super::Ctx::identity`]); `vgi_rpc.Identity.v2`'s guards also read
//! whether the caller authenticated at all and its `auth_time` claim.

use serde_json::{Map, Value};

/// The caller as authentication left it.
///
/// ```
/// use kit_service::rpc::AuthContext;
///
/// assert!(!AuthContext::anonymous().authenticated);
/// let ci = AuthContext::of_identity("ci");
/// assert!(ci.authenticated);
/// assert_eq!(ci.principal, "ci");
/// assert!(!AuthContext::of_identity("").authenticated);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthContext {
    /// Whether any authenticator vouched for the caller.
    pub authenticated: bool,
    /// The caller's principal (`""` when anonymous); the identity bound into
    /// stream tokens and rate limits.
    pub principal: String,
    /// Which authenticator vouched: `""` for API keys and hosts' own
    /// authenticators, `grant` for a sealed grant, `token` for a credential
    /// the host's `resolve_token` resolved.
    pub domain: String,
    /// What the authenticator knows beyond the principal (`auth_time`, a
    /// grant's `grant_id`, `scopes` and `purpose`, ...).
    pub claims: Map<String, Value>,
}

impl AuthContext {
    /// No caller at all.
    pub fn anonymous() -> AuthContext {
        AuthContext::default()
    }

    /// An API key's name or an authenticator's identity string: authenticated
    /// exactly when it is not empty, no claims.
    pub fn of_identity(identity: &str) -> AuthContext {
        AuthContext {
            authenticated: !identity.is_empty(),
            principal: identity.to_string(),
            ..AuthContext::default()
        }
    }
}
