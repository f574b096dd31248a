//! `vgi_rpc.Identity.v2`: resolving an opaque credential to the principal it
//! authenticates as (`introspect_token`), and minting a standing grant for
//! the calling user (`issue_grant`), as the upstream wheel defines them
//! (`vgi_rpc/rpc/_token_identity.py`, `vgi_rpc/grants.py`,
//! `vgi_rpc/http/_grant_auth.py`, 0.52.2).
//!
//! Off by default, and absent rather than hosted-and-refusing: a server
//! hosts the protocol only when a host configures a hook ([`Identity`],
//! through `host::Host::identity`) or the deployment sets grant keys
//! (`KIT_GRANT_KEYS`), and only the methods whose hook exists. The framework
//! owns the guards, identical in every deployment and catastrophic to get
//! wrong; the host owns the policy (what a credential resolves to, whether a
//! grant is minted):
//!
//! - `introspect_token`: the caller must be on the introspector allowlist
//!   (checked first, so an unauthorized caller learns nothing about the
//!   credential); then a credential that is blank, over 4096 UTF-8 bytes as
//!   it arrived, or JWS-shaped once trimmed is refused before the resolver
//!   runs; the resolver gets the credential untrimmed. Every rejection of
//!   the credential is the same `token_unresolved` with the same message.
//!   Not rate limited: the allowlist is the control.
//! - `issue_grant`: no subject parameter (the subject is the caller); the
//!   caller must carry an `auth_time` claim younger than `max_auth_age`, so a
//!   grant (which carries none) never mints a grant.
//!
//! Errors carry upstream's five `error_kind`s and codes; `identity_unavailable`
//! carries a `vgi_rpc.RetryInfo` with the hook's hint. Sealed grants
//! ([`grant`]) and bearer acceptance ([`bearer`]) close the loop over HTTP.

pub mod bearer;
pub mod grant;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use serde_json::{Value, json};

use crate::rpc::{AuthContext, Bytes, List, Protocol};
use crate::wire::tokens::parse_schema;
use crate::wire::{ErrorCode, RpcError};
use grant::GrantKeys;

/// The protocol's reserved routing name.
pub const PROTOCOL_NAME: &str = "vgi_rpc.Identity.v2";
/// Longest credential `introspect_token` (and bearer resolution) looks at, in UTF-8 bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Default freshness ceiling for minting, in seconds (upstream's default).
pub const DEFAULT_MAX_AUTH_AGE: f64 = 900.0;
/// `TokenIdentity.ttl_seconds` when the resolver leaves it out.
pub const DEFAULT_TTL_SECONDS: i64 = 300;

const TOKEN_IDENTITY_SCHEMA: &str = "principal: utf8, token_name: utf8, ttl_seconds: int64";
const ISSUED_GRANT_SCHEMA: &str = "token: utf8, expires_at: timestamp(us,tz=UTC), grant_id: utf8";

/// The identity an opaque credential authenticates as. Never carries claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The canonical principal, as this worker would derive it.
    pub principal: String,
    /// A name for the credential for audit trails (never the credential); default `""`.
    pub token_name: String,
    /// How long the asker may cache the answer (0: not at all); default 300.
    pub ttl_seconds: i64,
}

impl TokenIdentity {
    /// An identity with only the principal given: the other fields take
    /// their documented defaults (`""` and 300).
    ///
    /// ```
    /// let identity = kit_service::identity::TokenIdentity::new("ann").with_ttl_seconds(0);
    /// assert_eq!((identity.token_name.as_str(), identity.ttl_seconds), ("", 0));
    /// ```
    pub fn new(principal: impl Into<String>) -> TokenIdentity {
        TokenIdentity {
            principal: principal.into(),
            token_name: String::new(),
            ttl_seconds: DEFAULT_TTL_SECONDS,
        }
    }

    /// The same identity with a credential name.
    pub fn with_token_name(mut self, token_name: impl Into<String>) -> Self {
        self.token_name = token_name.into();
        self
    }

    /// The same identity with a cache lifetime; zero is kept as zero.
    pub fn with_ttl_seconds(mut self, ttl_seconds: i64) -> Self {
        self.ttl_seconds = ttl_seconds;
        self
    }

    /// The result cell: a one-row IPC stream, as upstream's dataclass travels.
    pub fn to_ipc(&self) -> Result<Vec<u8>, RpcError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.principal.as_str()])),
            Arc::new(StringArray::from(vec![self.token_name.as_str()])),
            Arc::new(Int64Array::from(vec![self.ttl_seconds])),
        ];
        one_row(TOKEN_IDENTITY_SCHEMA, columns)
    }
}

/// A minted standing delegation credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedGrant {
    /// The credential, opaque to the framework; never logged.
    pub token: String,
    /// When the worker stops honouring it: microseconds since the Unix
    /// epoch, UTC (`timestamp[us, tz=UTC]` on the wire).
    pub expires_at_micros: i64,
    /// Correlation handle for the audit trail; default `""`.
    pub grant_id: String,
}

impl IssuedGrant {
    /// A grant expiring at `expires_at` Unix seconds, with no grant id.
    ///
    /// ```
    /// let grant = kit_service::identity::IssuedGrant::new("t", 1_893_456_000).with_grant_id("g");
    /// assert_eq!(grant.expires_at_micros, 1_893_456_000_000_000);
    /// ```
    pub fn new(token: impl Into<String>, expires_at: i64) -> IssuedGrant {
        IssuedGrant {
            token: token.into(),
            expires_at_micros: expires_at.saturating_mul(1_000_000),
            grant_id: String::new(),
        }
    }

    /// The same grant with a correlation handle.
    pub fn with_grant_id(mut self, grant_id: impl Into<String>) -> Self {
        self.grant_id = grant_id.into();
        self
    }

    /// The result cell: a one-row IPC stream with a non-null UTC timestamp.
    pub fn to_ipc(&self) -> Result<Vec<u8>, RpcError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.token.as_str()])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![self.expires_at_micros]).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![self.grant_id.as_str()])),
        ];
        one_row(ISSUED_GRANT_SCHEMA, columns)
    }
}

fn one_row(schema: &str, columns: Vec<ArrayRef>) -> Result<Vec<u8>, RpcError> {
    let schema = Arc::new(parse_schema(schema).expect("static schema"));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(crate::wire::ipc::stream_bytes(&schema, &[batch])?)
}

/// What a hook reports instead of an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HookError {
    /// The answer is not knowable now (a backing store is down): transient,
    /// `identity_unavailable` with `retry_after` as its `RetryInfo`, and a
    /// 503 with `Retry-After` when it happens while authenticating a bearer.
    /// Upstream has two spellings (`IdentityUnavailableError` and the
    /// transport-auth `AuthUnavailableError`, which it translates); kit has
    /// this one, so there is nothing to translate.
    #[error("identity lookup unavailable: {detail}")]
    Unavailable {
        /// Operator-facing text; never the credential.
        detail: String,
        /// Seconds the caller should wait.
        retry_after: u32,
    },
    /// The minter declines (`grant_refused`).
    #[error("grant refused: {0}")]
    Refused(String),
}

/// One of the five outcomes upstream puts on the wire besides a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IdentityError {
    /// The caller may not introspect (definitive).
    #[error("{0}")]
    IntrospectionRefused(String),
    /// The credential did not resolve: unknown, blank, over-long and
    /// JWS-shaped are one answer with one message (definitive).
    #[error("unresolved")]
    TokenUnresolved,
    /// The caller has not authenticated recently enough to mint (actionable).
    #[error("{0}")]
    StaleAuth(String),
    /// The worker declined to mint (definitive).
    #[error("{0}")]
    GrantRefused(String),
    /// Not knowable now (transient).
    #[error("{detail}")]
    Unavailable {
        /// Operator-facing text.
        detail: String,
        /// Seconds the caller should wait.
        retry_after: u32,
    },
}

impl IdentityError {
    /// The wire `error_kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            IdentityError::IntrospectionRefused(_) => "introspection_refused",
            IdentityError::TokenUnresolved => "token_unresolved",
            IdentityError::StaleAuth(_) => "stale_auth",
            IdentityError::GrantRefused(_) => "grant_refused",
            IdentityError::Unavailable { .. } => "identity_unavailable",
        }
    }

    /// The exception type upstream raises, which travels as `exception_type`.
    fn error_type(&self) -> &'static str {
        match self {
            IdentityError::IntrospectionRefused(_) => "IntrospectionRefusedError",
            IdentityError::TokenUnresolved => "TokenUnresolvedError",
            IdentityError::StaleAuth(_) => "StaleAuthError",
            IdentityError::GrantRefused(_) => "GrantRefusedError",
            IdentityError::Unavailable { .. } => "IdentityUnavailableError",
        }
    }

    fn code(&self) -> ErrorCode {
        match self {
            IdentityError::IntrospectionRefused(_) | IdentityError::GrantRefused(_) => {
                ErrorCode::PermissionDenied
            }
            IdentityError::TokenUnresolved => ErrorCode::NotFound,
            IdentityError::StaleAuth(_) => ErrorCode::Unauthenticated,
            IdentityError::Unavailable { .. } => ErrorCode::Unavailable,
        }
    }
}

impl From<HookError> for IdentityError {
    fn from(error: HookError) -> Self {
        match error {
            HookError::Unavailable {
                detail,
                retry_after,
            } => IdentityError::Unavailable {
                detail: if detail.is_empty() {
                    "identity lookup unavailable".into()
                } else {
                    detail
                },
                retry_after,
            },
            HookError::Refused(detail) => IdentityError::GrantRefused(detail),
        }
    }
}

impl From<IdentityError> for RpcError {
    fn from(error: IdentityError) -> Self {
        let mut rpc = RpcError::new(error.error_type(), error.to_string())
            .with_code(error.code())
            .with_kind(error.kind());
        if let IdentityError::Unavailable { retry_after, .. } = &error {
            rpc = rpc.with_details(vec![
                json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": retry_after}),
            ]);
        }
        rpc
    }
}

/// `(credential) -> identity`: `Ok(None)` means the store answered and the
/// credential is unknown.
pub type ResolveFn = dyn Fn(&str) -> Result<Option<TokenIdentity>, HookError> + Send + Sync;

/// What the framework hands a mint hook: the caller is the subject, always.
#[derive(Debug, Clone, Copy)]
pub struct MintRequest<'a> {
    /// The caller's authenticated principal.
    pub principal: &'a str,
    /// Why the grant is wanted.
    pub purpose: &'a str,
    /// What it may do; the host interprets them.
    pub scopes: &'a [String],
    /// The requested lifetime; a request, not an instruction.
    pub ttl_seconds: i64,
}

/// `(request) -> grant`.
pub type MintFn = dyn Fn(&MintRequest<'_>) -> Result<IssuedGrant, HookError> + Send + Sync;

/// Why an [`Identity`] configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityConfigError {
    /// A resolver with an empty allowlist: there is no permissive default,
    /// because "any authenticated caller" makes introspection an open oracle.
    #[error(
        "`introspect_principals` must name at least one principal: allowing any authenticated caller lets any user resolve any other user's credential to its owner"
    )]
    NoIntrospectors,
    /// A non-positive freshness ceiling.
    #[error("`max_auth_age` must be positive")]
    MaxAuthAge,
}

/// Builds an [`Identity`].
#[derive(Default)]
pub struct IdentityBuilder {
    resolve: Option<Arc<ResolveFn>>,
    principals: BTreeSet<String>,
    mint: Option<Arc<MintFn>>,
    max_auth_age: Option<f64>,
    grant_keys: Option<GrantKeys>,
}

impl IdentityBuilder {
    /// Hosts `introspect_token` with `resolve`, callable by `principals` only.
    /// A server hosting it also accepts credentials `resolve` resolves as
    /// bearers (domain `token`).
    pub fn resolve_token<F>(mut self, principals: &[&str], resolve: F) -> Self
    where
        F: Fn(&str) -> Result<Option<TokenIdentity>, HookError> + Send + Sync + 'static,
    {
        self.resolve = Some(Arc::new(resolve));
        self.principals = principals
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| p.to_string())
            .collect();
        self
    }

    /// Hosts `issue_grant` with the host's own minter.
    pub fn mint_grant<F>(mut self, mint: F) -> Self
    where
        F: Fn(&MintRequest<'_>) -> Result<IssuedGrant, HookError> + Send + Sync + 'static,
    {
        self.mint = Some(Arc::new(mint));
        self
    }

    /// Sealed grants: without a mint hook the framework mints them itself,
    /// and the server accepts them back as bearers (domain `grant`).
    pub fn grant_keys(mut self, keys: GrantKeys) -> Self {
        self.grant_keys = Some(keys);
        self
    }

    /// How recently (seconds) a caller must have authenticated to mint.
    pub fn max_auth_age(mut self, seconds: f64) -> Self {
        self.max_auth_age = Some(seconds);
        self
    }

    /// Checks the configuration; an empty one builds an identity hosting nothing.
    pub fn build(self) -> Result<Identity, IdentityConfigError> {
        if self.resolve.is_some() && self.principals.is_empty() {
            return Err(IdentityConfigError::NoIntrospectors);
        }
        let max_auth_age = self.max_auth_age.unwrap_or(DEFAULT_MAX_AUTH_AGE);
        if max_auth_age.is_nan() || max_auth_age <= 0.0 {
            return Err(IdentityConfigError::MaxAuthAge);
        }
        Ok(Identity {
            resolve: self.resolve,
            principals: self.principals,
            mint: self.mint,
            max_auth_age,
            grant_keys: self.grant_keys,
        })
    }
}

/// A deployment's `vgi_rpc.Identity.v2`: guards here, policy in the hooks.
///
/// ```
/// use kit_service::identity::{Identity, IdentityError, TokenIdentity};
/// use kit_service::rpc::AuthContext;
///
/// let identity = Identity::builder()
///     .resolve_token(&["proxy"], |token| Ok((token == "k1").then(|| TokenIdentity::new("ann"))))
///     .build()
///     .unwrap();
/// assert_eq!(identity.offered_methods(), ["introspect_token"]);
/// let proxy = AuthContext::of_identity("proxy");
/// assert_eq!(identity.introspect_token("k1", &proxy).unwrap().principal, "ann");
/// assert_eq!(identity.introspect_token("k2", &proxy), Err(IdentityError::TokenUnresolved));
/// let outsider = AuthContext::of_identity("ann");
/// assert_eq!(identity.introspect_token("k1", &outsider).unwrap_err().kind(), "introspection_refused");
/// ```
pub struct Identity {
    resolve: Option<Arc<ResolveFn>>,
    principals: BTreeSet<String>,
    mint: Option<Arc<MintFn>>,
    max_auth_age: f64,
    grant_keys: Option<GrantKeys>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("methods", &self.offered_methods())
            .field("introspectors", &self.principals)
            .field("max_auth_age", &self.max_auth_age)
            .field("grant_keys", &self.grant_keys)
            .finish()
    }
}

impl Identity {
    /// Starts a configuration.
    pub fn builder() -> IdentityBuilder {
        IdentityBuilder::default()
    }

    /// The same identity with sealed grants configured (the deployment's
    /// `KIT_GRANT_KEYS` added to a host's hooks).
    pub fn with_grant_keys(mut self, keys: GrantKeys) -> Self {
        self.grant_keys = Some(keys);
        self
    }

    /// The methods this configuration answers, in declaration order; a
    /// method without its hook is not hosted at all.
    pub fn offered_methods(&self) -> Vec<&'static str> {
        let mut offered = Vec::new();
        if self.resolve.is_some() {
            offered.push("introspect_token");
        }
        if self.mint.is_some() || self.grant_keys.is_some() {
            offered.push("issue_grant");
        }
        offered
    }

    /// The sealed-grant keys, when configured.
    pub fn grant_keys(&self) -> Option<&GrantKeys> {
        self.grant_keys.as_ref()
    }

    /// Whether bearers are resolved through the host's `resolve_token`.
    pub fn resolves_tokens(&self) -> bool {
        self.resolve.is_some()
    }

    /// `introspect_token`'s guards, in upstream's order, then the resolver.
    pub fn introspect_token(
        &self,
        token: &str,
        caller: &AuthContext,
    ) -> Result<TokenIdentity, IdentityError> {
        let Some(resolve) = &self.resolve else {
            return Err(IdentityError::IntrospectionRefused(
                "this worker does not resolve credentials".into(),
            ));
        };
        // Authorization first: an unauthorized caller learns nothing about
        // the credential, including how long looking at it took.
        if !caller.authenticated || !self.principals.contains(&caller.principal) {
            return Err(IdentityError::IntrospectionRefused(
                "caller is not an introspector".into(),
            ));
        }
        reject_unresolvable(token)?;
        match resolve(token) {
            Ok(Some(identity)) => Ok(identity),
            Ok(None) => Err(IdentityError::TokenUnresolved),
            Err(error) => Err(error.into()),
        }
    }

    /// `issue_grant`'s freshness guard, then the minter (the host's, or
    /// sealed grants), at `now` (Unix seconds, fractional).
    pub fn issue_grant(
        &self,
        purpose: &str,
        scopes: &[String],
        ttl_seconds: i64,
        caller: &AuthContext,
        now: f64,
    ) -> Result<IssuedGrant, IdentityError> {
        if self.mint.is_none() && self.grant_keys.is_none() {
            return Err(IdentityError::GrantRefused(
                "this worker does not mint grants".into(),
            ));
        }
        check_freshness(caller, self.max_auth_age, now)?;
        let request = MintRequest {
            principal: &caller.principal,
            purpose,
            scopes,
            ttl_seconds,
        };
        match (&self.mint, &self.grant_keys) {
            (Some(mint), _) => Ok(mint(&request)?),
            (None, Some(keys)) => sealed_mint(keys, &request, now as i64),
            (None, None) => unreachable!("checked above"),
        }
    }

    /// The protocol hosting exactly [`Identity::offered_methods`], or `None`
    /// when there is none (absent, never hosted-and-refusing).
    pub fn protocol(self: &Arc<Self>) -> Option<Protocol> {
        let offered = self.offered_methods();
        if offered.is_empty() {
            return None;
        }
        let mut builder = Protocol::builder(PROTOCOL_NAME);
        if offered.contains(&"introspect_token") {
            let identity = self.clone();
            builder = builder.unary(
                "introspect_token",
                "token: utf8",
                "result: binary",
                move |ctx, args| {
                    let identity = identity.clone();
                    async move {
                        let token: String = args.get("token")?;
                        let resolved = identity.introspect_token(&token, ctx.auth())?;
                        Ok(Bytes(resolved.to_ipc()?))
                    }
                },
            );
        }
        if offered.contains(&"issue_grant") {
            let identity = self.clone();
            builder = builder.unary(
                "issue_grant",
                "purpose: utf8, scopes: list<item?:utf8>, ttl_seconds: int64",
                "result: binary",
                move |ctx, args| {
                    let identity = identity.clone();
                    async move {
                        let purpose: String = args.get("purpose")?;
                        let List(scopes): List<Option<String>> = args.get("scopes")?;
                        let scopes: Vec<String> = scopes
                            .into_iter()
                            .collect::<Option<_>>()
                            .ok_or_else(|| IdentityError::GrantRefused("a scope is null".into()))?;
                        let ttl_seconds: i64 = args.get("ttl_seconds")?;
                        let grant = identity.issue_grant(
                            &purpose,
                            &scopes,
                            ttl_seconds,
                            ctx.auth(),
                            now(),
                        )?;
                        Ok(Bytes(grant.to_ipc()?))
                    }
                },
            );
        }
        Some(
            builder
                .build()
                .unwrap_or_else(|errors| panic!("vgi_rpc.Identity.v2 is well-formed: {errors:?}")),
        )
    }

    /// Resolves a bearer with the host's `resolve_token` under the same
    /// shape guards `introspect_token` applies (no allowlist: the caller
    /// is presenting its own credential).
    pub(crate) fn resolve_bearer(&self, token: &str) -> Result<Option<TokenIdentity>, HookError> {
        let Some(resolve) = &self.resolve else {
            return Ok(None);
        };
        if reject_unresolvable(token).is_err() {
            return Ok(None);
        }
        resolve(token)
    }
}

fn sealed_mint(
    keys: &GrantKeys,
    request: &MintRequest<'_>,
    now: i64,
) -> Result<IssuedGrant, IdentityError> {
    if request.ttl_seconds <= 0 {
        return Err(IdentityError::GrantRefused(
            "ttl_seconds must be positive".into(),
        ));
    }
    let (token, claims) = grant::mint_grant_token(
        keys,
        request.principal,
        request.scopes,
        request.purpose,
        request.ttl_seconds,
        now,
        None,
        None,
    )
    .map_err(|error| IdentityError::GrantRefused(error.to_string()))?;
    Ok(IssuedGrant::new(token, claims.expires_at).with_grant_id(claims.grant_id))
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whitespace trimmed before the JWS shape test: Unicode `White_Space`
/// (which covers the spec's floor, U+0009-U+000D, U+0020, U+0085, U+00A0)
/// plus U+001C-U+001F, as Python's `str.strip` trims. Wider is safe: it can
/// only add refusals.
fn is_trimmed(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Three dot-separated base64url segments, the last possibly empty: a JWS,
/// validated locally against a key set and never routed to a resolver.
pub fn is_jws_shaped(candidate: &str) -> bool {
    let segment = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let parts: Vec<&str> = candidate.split('.').collect();
    matches!(parts.as_slice(), [a, b, c] if !a.is_empty() && !b.is_empty() && segment(a) && segment(b) && segment(c))
}

/// The credential guards: blank once trimmed, over [`MAX_TOKEN_BYTES`] as
/// it arrived, or JWS-shaped once trimmed. One answer for all three.
fn reject_unresolvable(token: &str) -> Result<(), IdentityError> {
    let candidate = token.trim_matches(is_trimmed);
    if candidate.is_empty() || token.len() > MAX_TOKEN_BYTES || is_jws_shaped(candidate) {
        return Err(IdentityError::TokenUnresolved);
    }
    Ok(())
}

/// The caller's `auth_time`, or `stale_auth` when it is missing, unusable
/// or older than `max_auth_age` at `now`.
fn check_freshness(
    caller: &AuthContext,
    max_auth_age: f64,
    now: f64,
) -> Result<f64, IdentityError> {
    if !caller.authenticated || caller.principal.is_empty() {
        return Err(IdentityError::StaleAuth(
            "caller is not authenticated".into(),
        ));
    }
    let auth_time = match caller.claims.get("auth_time") {
        None | Some(Value::Null) => {
            return Err(IdentityError::StaleAuth(
                "credential carries no auth_time; only a recently authenticated user may mint a grant".into(),
            ));
        }
        Some(Value::Number(number)) => number.as_f64(),
        Some(Value::String(text)) => text.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    let Some(auth_time) = auth_time.filter(|t| t.is_finite()) else {
        return Err(IdentityError::StaleAuth(
            "credential carries an unusable auth_time".into(),
        ));
    };
    let age = now - auth_time;
    if age > max_auth_age {
        return Err(IdentityError::StaleAuth(format!(
            "last authentication was {age:.0}s ago, which exceeds the {max_auth_age:.0}s ceiling for minting a grant; re-authenticate"
        )));
    }
    Ok(auth_time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reflection::protocol_hash;

    fn caller(principal: &str, auth_time: Option<&str>) -> AuthContext {
        let mut auth = AuthContext::of_identity(principal);
        if let Some(time) = auth_time {
            auth.claims
                .insert("auth_time".into(), Value::String(time.into()));
        }
        auth
    }

    /// Resolves everything but `unknown` and `down`, as upstream's fixture
    /// does, so a refusal can only come from a guard.
    fn identity() -> Identity {
        Identity::builder()
            .resolve_token(&["proxy"], |token| match token {
                "unknown" => Ok(None),
                "down" => Err(HookError::Unavailable {
                    detail: "store down".into(),
                    retry_after: 7,
                }),
                other => Ok(Some(
                    TokenIdentity::new("subject").with_token_name(format!("<{other}>")),
                )),
            })
            .mint_grant(|request| {
                if request.purpose == "no" {
                    return Err(HookError::Refused("policy".into()));
                }
                Ok(IssuedGrant::new(
                    format!("for:{}", request.principal),
                    1_893_456_000,
                ))
            })
            .build()
            .unwrap()
    }

    /// The digests upstream pins (`identity_fixture.py`), read from the
    /// protocol kit hosts for each method set.
    #[test]
    fn protocol_hashes_match_upstreams_pinned_digests() {
        let both = Arc::new(identity()).protocol().unwrap();
        assert_eq!(
            protocol_hash(&both),
            "145267755ff90d5c3313d79c7ff771306f2530626380d01cb0e57a951d0f9ec3"
        );
        let introspect_only = Arc::new(
            Identity::builder()
                .resolve_token(&["p"], |_| Ok(None))
                .build()
                .unwrap(),
        );
        assert_eq!(
            protocol_hash(&introspect_only.protocol().unwrap()),
            "4039fbf6db3e64ae234e0be605b977477150ace892f10b6c691920eaf925e7ac"
        );
        let keys = GrantKeys::new(vec![[1; 32]], "", 60).unwrap();
        let grant_only = Arc::new(Identity::builder().grant_keys(keys).build().unwrap());
        assert_eq!(
            protocol_hash(&grant_only.protocol().unwrap()),
            "4199df7403c9ca1a02c4c524b405a999eb1489614a1480873ffc23a0e5b0d312"
        );
        assert!(
            Arc::new(Identity::builder().build().unwrap())
                .protocol()
                .is_none()
        );
    }

    #[test]
    fn introspection_is_authorized_before_the_credential_is_looked_at() {
        let identity = identity();
        for token in ["unknown", "a.b.c", "   ", &"x".repeat(5000), "down"] {
            assert_eq!(
                identity
                    .introspect_token(token, &caller("outsider", None))
                    .unwrap_err()
                    .kind(),
                "introspection_refused"
            );
            assert_eq!(
                identity
                    .introspect_token(token, &AuthContext::anonymous())
                    .unwrap_err()
                    .kind(),
                "introspection_refused"
            );
        }
    }

    #[test]
    fn padded_jws_oversize_and_blank_credentials_never_reach_the_resolver() {
        let identity = identity();
        let proxy = caller("proxy", None);
        let jws = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";
        for pad in ['\t', '\n', '\u{b}', '\u{c}', '\r', ' ', '\u{85}', '\u{a0}'] {
            for token in [
                format!("{pad}{jws}"),
                format!("{jws}{pad}"),
                format!("{pad}{jws}{pad}"),
            ] {
                assert_eq!(
                    identity.introspect_token(&token, &proxy),
                    Err(IdentityError::TokenUnresolved)
                );
            }
        }
        let multibyte = "é".repeat(2100);
        let padded = format!("x{}", " ".repeat(9000));
        for token in [
            "",
            " ",
            "\t\r\n",
            &"a".repeat(5000),
            &multibyte,
            &padded,
            "unknown",
        ] {
            let refused = identity.introspect_token(token, &proxy).unwrap_err();
            assert_eq!(refused, IdentityError::TokenUnresolved);
            assert_eq!(RpcError::from(refused).message, "unresolved");
        }
        for token in ["two.segments", "a.b.c.d", "sk_live_abc123"] {
            assert_eq!(
                identity.introspect_token(token, &proxy).unwrap().principal,
                "subject"
            );
        }
        // The resolver gets the credential as sent, never the trimmed form.
        assert_eq!(
            identity
                .introspect_token("  k  ", &proxy)
                .unwrap()
                .token_name,
            "<  k  >"
        );
    }

    #[test]
    fn an_outage_is_transient_with_the_hooks_retry_hint() {
        let error = RpcError::from(
            identity()
                .introspect_token("down", &caller("proxy", None))
                .unwrap_err(),
        );
        assert_eq!(error.error_type, "IdentityUnavailableError");
        assert_eq!(error.kind.as_deref(), Some("identity_unavailable"));
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert_eq!(
            error.details,
            vec![json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": 7})]
        );
    }

    #[test]
    fn only_a_recently_authenticated_caller_mints_for_itself() {
        let identity = identity();
        let at = 10_000.0;
        let fresh = caller("ann", Some("9940"));
        assert_eq!(
            identity
                .issue_grant("p", &[], 60, &fresh, at)
                .unwrap()
                .token,
            "for:ann"
        );
        for stale in [
            caller("ann", None),
            caller("ann", Some("not-a-timestamp")),
            caller("ann", Some("1000")),
            caller("ann", Some("NaN")),
            AuthContext::anonymous(),
        ] {
            assert_eq!(
                identity
                    .issue_grant("p", &[], 60, &stale, at)
                    .unwrap_err()
                    .kind(),
                "stale_auth"
            );
        }
        assert_eq!(
            identity
                .issue_grant("no", &[], 60, &fresh, at)
                .unwrap_err()
                .kind(),
            "grant_refused"
        );
    }

    #[test]
    fn sealed_grants_mint_for_the_caller_and_verify() {
        let keys = GrantKeys::new(vec![[3; 32]], "aud", 3600).unwrap();
        let identity = Identity::builder()
            .grant_keys(keys.clone())
            .build()
            .unwrap();
        let fresh = caller("ann", Some("9990"));
        let grant = identity
            .issue_grant("nightly", &["read".into()], 10_000_000, &fresh, 10_000.0)
            .unwrap();
        let claims = grant::verify_grant_token(&keys, &grant.token, 10_000).unwrap();
        assert_eq!(
            (claims.principal.as_str(), claims.expires_at),
            ("ann", 10_000 + 3600)
        );
        assert_eq!(grant.expires_at_micros, claims.expires_at * 1_000_000);
        assert_eq!(grant.grant_id, claims.grant_id);
        assert_eq!(
            identity
                .issue_grant("p", &[], 0, &fresh, 10_000.0)
                .unwrap_err()
                .kind(),
            "grant_refused"
        );
    }

    #[test]
    fn a_resolver_needs_an_allowlist() {
        let built = Identity::builder()
            .resolve_token(&[""], |_| Ok(None))
            .build();
        assert_eq!(built.unwrap_err(), IdentityConfigError::NoIntrospectors);
    }
}
