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

    /// `context` shared: an anonymous caller's is one process-wide value,
    /// so an unauthenticated request allocates none.
    pub fn shared(context: AuthContext) -> std::sync::Arc<AuthContext> {
        static ANONYMOUS: std::sync::OnceLock<std::sync::Arc<AuthContext>> =
            std::sync::OnceLock::new();
        // Every field named, so a new one has to be considered here.
        let AuthContext {
            authenticated,
            principal,
            domain,
            claims,
        } = &context;
        if !authenticated && principal.is_empty() && domain.is_empty() && claims.is_empty() {
            ANONYMOUS
                .get_or_init(|| std::sync::Arc::new(AuthContext::default()))
                .clone()
        } else {
            std::sync::Arc::new(context)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::AuthContext;

    #[test]
    fn only_the_anonymous_context_is_shared() {
        let first = AuthContext::shared(AuthContext::anonymous());
        let second = AuthContext::shared(AuthContext::of_identity(""));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(*first, AuthContext::default());
        let mut claimed = AuthContext::anonymous();
        claimed.claims.insert("purpose".into(), "audit".into());
        let mut domained = AuthContext::anonymous();
        domained.domain = "grant".into();
        let vouched = AuthContext {
            authenticated: true,
            ..AuthContext::default()
        };
        for context in [AuthContext::of_identity("ci"), claimed, domained, vouched] {
            let shared = AuthContext::shared(context.clone());
            assert!(!Arc::ptr_eq(&shared, &first), "{context:?}");
            assert_eq!(*shared, context);
        }
    }
}
