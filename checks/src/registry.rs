//! The registry: every check's stable id, alias, severity and words.
//!
//! Ids never change meaning once released (CI configs and waivers name them);
//! aliases are the readable form and are accepted wherever an id is.
//! `docs/checks.md` is generated from this table, so the words live here once.

use serde::Serialize;

use crate::Severity;

/// Whether a check needs the live world (storage, replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Offline,
    Online,
}

/// One registered check.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Check {
    pub id: &'static str,
    pub alias: &'static str,
    pub severity: Severity,
    pub mode: Mode,
    /// What is wrong, in one line.
    pub message: &'static str,
    /// The exact command or setting that fixes it.
    pub hint: &'static str,
    /// Why it matters.
    pub rationale: &'static str,
}

/// Where the generated docs live, relative to the repository root.
pub const DOCS_PATH: &str = "docs/checks.md";
/// Base of `helpUri` in SARIF.
pub const DOCS_URL: &str = "https://github.com/deploy-kit/deploy-kit/blob/main/docs/checks.md";

impl Check {
    /// The heading anchor in `docs/checks.md` (`key001-no-shared-signing-key`).
    pub fn anchor(&self) -> String {
        format!("{}-{}", self.id.to_ascii_lowercase(), self.alias)
    }

    pub fn docs_url(&self) -> String {
        format!("{DOCS_URL}#{}", self.anchor())
    }
}

/// Finds a check by id (`KEY001`, any case) or alias (`no-shared-signing-key`).
pub fn find(name: &str) -> Option<&'static Check> {
    CHECKS
        .iter()
        .find(|c| c.id.eq_ignore_ascii_case(name) || c.alias == name)
}

const fn check(
    id: &'static str,
    alias: &'static str,
    severity: Severity,
    mode: Mode,
    message: &'static str,
    hint: &'static str,
    rationale: &'static str,
) -> Check {
    Check {
        id,
        alias,
        severity,
        mode,
        message,
        hint,
        rationale,
    }
}

use Mode::{Offline, Online};
use Severity::{Error, Warn};

/// Every check, in report order.
pub const CHECKS: &[Check] = &[
    check(
        "KEY001",
        "no-shared-signing-key",
        Error,
        Offline,
        "no shared signing key on a target with more than one instance or worker",
        "set `signing_key.source: secret` and `signing_key.secret: <reference>` in deploy-kit.yaml (the service reads `VGI_SIGNING_KEY`/`VGI_SIGNING_KEY_FILE`); create one with `openssl rand -hex 32`",
        "Stream state tokens are HMAC-signed. Without a shared key every process draws a random one, so a stream turn routed to another instance or worker fails signature verification.",
    ),
    check(
        "KEY002",
        "weak-signing-key",
        Error,
        Offline,
        "signing key shorter than 32 bytes, low in entropy, or a known placeholder",
        "generate a new key with `openssl rand -hex 32` and store it as `hex:<value>` in the secret store",
        "A short or guessable key lets anyone forge stream state tokens, and with them the server-side state of every stream.",
    ),
    check(
        "KEY003",
        "literal-signing-key",
        Error,
        Offline,
        "signing key written as a literal in config or manifests instead of coming from a secret store",
        "remove the literal and use `signing_key.source: secret` (k8s: `valueFrom.secretKeyRef`; Cloud Run: `--set-secrets VGI_SIGNING_KEY=<secret>:latest`)",
        "Config files and manifests end up in git, CI logs and image layers; a key found there must be treated as leaked.",
    ),
    check(
        "KEY004",
        "replica-key-mismatch",
        Error,
        Online,
        "replicas report different signing key fingerprints",
        "give every replica the same `VGI_SIGNING_KEY` (one secret version) and restart them; compare `curl -s <replica>/healthz | jq .signing_key`",
        "A stream opened on one replica and continued on another fails whenever their keys differ, which looks like random 401s under load.",
    ),
    check(
        "KEY005",
        "unfinished-key-rotation",
        Warn,
        Offline,
        "previous signing keys kept longer than the token lifetime requires",
        "finish the rotation with `deploy-kit secrets rotate --target <target> --phase retire`, or remove the retired key from `signing_key.previous` (service: `VGI_SIGNING_KEY_PREVIOUS`), once `token_ttl_seconds` has passed since the rotation",
        "A previous key only has to verify tokens minted before the rotation; after one token lifetime it only widens the window for a leaked old key.",
    ),
    check(
        "KEY006",
        "tokens-never-expire",
        Error,
        Offline,
        "stream tokens never expire (`token_ttl_seconds: 0`) on a target with more than one instance or worker",
        "set `signing_key.token_ttl_seconds` (service: `KIT_TOKEN_TTL`) to the longest a stream may stay idle, e.g. `3600`; busy streams outlive it because every turn mints a fresh token",
        "A token that never expires can be replayed on any replica for as long as the key lives, and no key rotation can retire the previous key while such tokens may still be in use.",
    ),
    check(
        "KEY007",
        "readable-secret-state",
        Warn,
        Offline,
        "a stream whose state may hold secrets sends it in signed (readable) tokens",
        "set `KIT_TOKEN_MODE=sealed` on the service (same signing key and rotation; streams already open keep working)",
        "Signed tokens stop a caller from changing a stream's state, not from reading it: the state travels to the client base64-encoded. A method that declared its state confidential (`Protocol::with_confidential_state`) needs sealed (XChaCha20-Poly1305) tokens.",
    ),
    check(
        "LIM001",
        "request-limit-over-platform",
        Error,
        Offline,
        "max request bytes above the platform's request limit less headroom",
        "set `limits.max_request_bytes` (service: `KIT_MAX_REQUEST_BYTES`) at or below the usable limit the message names",
        "Clients size requests by the advertised `VGI-Max-Request-Bytes`; when it exceeds what the platform accepts, large calls die with a platform 413 the client cannot interpret.",
    ),
    check(
        "LIM002",
        "response-limit-no-headroom",
        Error,
        Offline,
        "response limit or externalization threshold leaves no headroom under the platform's response limit",
        "set `limits.max_response_bytes` (service: `KIT_MAX_RESPONSE_BYTES`) and `limits.externalize_threshold_bytes` below the usable response limit",
        "A response over the platform limit is cut by the platform, not turned into a clean `RESOURCE_EXHAUSTED` error or an external-storage pointer.",
    ),
    check(
        "LIM003",
        "timeout-over-platform",
        Error,
        Offline,
        "request or stream timeout above the platform's timeout",
        "set `limits.request_timeout_seconds` (service: `KIT_REQUEST_TIMEOUT`) and `limits.stream_timeout_seconds` at or below the platform timeout",
        "The platform kills the request first, so the client sees a gateway error instead of the service's own timeout error.",
    ),
    check(
        "LIM004",
        "size-limited-without-storage",
        Warn,
        Offline,
        "size-limited platform with no external storage configured",
        "add a `storage:` block (provider, bucket, prefix) to deploy-kit.yaml so large results and uploads go through object storage",
        "Without external storage, any batch above the platform's body limit fails; with it, the service returns a pointer and the data bypasses the platform.",
    ),
    check(
        "LIM005",
        "small-requests-without-upload-urls",
        Warn,
        Offline,
        "upload URLs are off while max request bytes is small",
        "set `limits.upload_urls: true` (requires `storage:`) or raise `limits.max_request_bytes`",
        "With a small request limit and no upload URLs, clients have no way to send large inputs at all.",
    ),
    check(
        "STO001",
        "storage-unreachable",
        Error,
        Online,
        "bucket unreachable or credentials rejected",
        "check `storage.bucket`, `storage.endpoint` and the credentials of the service identity (`aws s3 ls s3://<bucket>` / `gcloud storage ls gs://<bucket>`)",
        "Every externalized result and upload depends on the bucket; a misconfigured one breaks exactly the large calls.",
    ),
    check(
        "STO002",
        "storage-round-trip",
        Error,
        Online,
        "put, get, delete round trip against the bucket fails",
        "grant the service identity put/get/delete on `<bucket>/<prefix>*` (S3: `s3:PutObject`, `s3:GetObject`, `s3:DeleteObject`; GCS: `roles/storage.objectUser`)",
        "Listing a bucket proves little: the service writes, reads back and deletes objects under its prefix.",
    ),
    check(
        "STO003",
        "insecure-download-urls",
        Error,
        Offline,
        "download URLs handed to clients are not https",
        "set `storage.endpoint` to an `https://` URL",
        "Presigned URLs are bearer credentials and carry result data; over plain HTTP both can be read and altered in transit.",
    ),
    check(
        "STO004",
        "no-lifecycle-expiry",
        Warn,
        Offline,
        "no lifecycle expiration rule covers the prefix the service writes",
        "set `storage.expiry_days: 1` (deploy-kit creates the rule for `storage.prefix`); by hand: an expiration rule whose filter prefix is the service prefix",
        "vgi-rpc never deletes externalized objects; without an expiration rule the bucket grows forever and old results stay readable.",
    ),
    check(
        "STO005",
        "no-abort-multipart-rule",
        Warn,
        Offline,
        "no lifecycle rule aborts incomplete multipart uploads",
        "set `storage.abort_multipart_days: 1` in deploy-kit.yaml",
        "Interrupted large uploads leave invisible multipart parts that are billed until aborted.",
    ),
    check(
        "STO006",
        "presign-ttl-over-credential",
        Error,
        Offline,
        "presign TTL longer than the signing credential can grant",
        "lower `storage.presign_ttl_seconds` to at most the credential's limit the message names, or sign with a longer-lived credential",
        "A presigned URL dies with the credential that signed it; clients then get 403s on URLs that claim to be valid.",
    ),
    check(
        "STO007",
        "bucket-cors-missing",
        Warn,
        Offline,
        "CORS origins are set but the bucket has no CORS rule for browser uploads",
        "set `storage.cors_origins` to the origins in `cors.origins` (deploy-kit applies them to the bucket)",
        "Browsers upload straight to the presigned URL; without a bucket CORS rule for the page's origin the upload is blocked.",
    ),
    check(
        "STO008",
        "invalid-bucket-name",
        Error,
        Offline,
        "the bucket name breaks the storage provider's naming rules",
        "rename `storage.bucket` (service: `KIT_STORAGE_BUCKET`) as the message says: S3 3-63 lowercase letters, digits, `.` and `-`; R2 and Azure no `.`; GCS also `_`, never `goog...`",
        "The provider refuses the name only when `deploy-kit up` creates the bucket or the service first uploads, long after `plan` said yes.",
    ),
    check(
        "STO009",
        "empty-storage-prefix",
        Error,
        Offline,
        "`storage.prefix` is empty, so the lifecycle rule and the service's objects span the whole bucket",
        "set `storage.prefix: vgi-rpc/` (service: `KIT_STORAGE_PREFIX`) or another prefix used by nothing else in the bucket",
        "The expiration rule deploy-kit creates filters on the prefix: an empty one expires every object in the bucket, including data that is not the service's.",
    ),
    check(
        "SEC001",
        "auth-not-required",
        Error,
        Offline,
        "auth is not required on a public target or non-loopback bind",
        "set `auth.required: true` with `auth.api_keys` from a secret (service: `KIT_API_KEYS_FILE`, `KIT_REQUIRE_AUTH=true`)",
        "Anyone who can reach the port can call every method and consume the platform's compute and storage.",
    ),
    check(
        "SEC002",
        "cors-wildcard-with-auth",
        Error,
        Offline,
        "CORS allows any origin (`*`) while auth is on",
        "list the allowed origins in `cors.origins` (service: `KIT_CORS_ORIGINS=https://app.example.com`)",
        "A wildcard lets any web page drive the API with whatever credential a visitor's browser holds.",
    ),
    check(
        "SEC003",
        "reflection-in-production",
        Warn,
        Offline,
        "reflection/describe is on in production",
        "set `reflection: false` (service: `KIT_REFLECTION=false`)",
        "Reflection publishes every method and schema, a map for anyone probing the service.",
    ),
    check(
        "SEC004",
        "no-rate-limit",
        Warn,
        Offline,
        "no rate limit on a public target",
        "set `rate_limit: 100/60` (service: `KIT_RATE_LIMIT=100/60`)",
        "A public endpoint without a rate limit can be run up to the platform's scaling limit and billed accordingly.",
    ),
    check(
        "SEC005",
        "debug-enabled",
        Error,
        Offline,
        "tracebacks or debug output are on",
        "set `debug: false` and `tracebacks: false` (service: unset `RUST_LOG=debug`/`trace`)",
        "Debug output and tracebacks leak internals (paths, queries, sometimes secrets) to logs and clients.",
    ),
    check(
        "SEC006",
        "api-key-expiring",
        Warn,
        Offline,
        "an API key has expired or expires within 14 days",
        "issue a new key, add it to the API-keys secret (`name=key;expires=YYYY-MM-DD`), hand it to the caller, then remove the old entry and roll the replicas",
        "An expired key is refused with `expired_credential`: its caller stops working on that date. Warning ahead of time leaves room to rotate without an outage; an expired entry left in the secret is dead weight.",
    ),
    check(
        "OPS001",
        "missing-health-probes",
        Warn,
        Offline,
        "rendered manifests lack liveness/readiness probes",
        "add `livenessProbe: {httpGet: {path: /livez, port: 8080}}` and `readinessProbe: {httpGet: {path: /readyz, port: 8080}}` (compose: `healthcheck:` on `/healthz`)",
        "Without readiness the platform routes traffic to starting or draining processes; without liveness a wedged process is never replaced.",
    ),
    check(
        "OPS002",
        "shutdown-grace-over-platform",
        Warn,
        Offline,
        "shutdown grace longer than the platform's termination grace",
        "set `limits.shutdown_grace_seconds` (service: `KIT_SHUTDOWN_GRACE`) below the platform's grace, or raise `terminationGracePeriodSeconds`",
        "The platform sends SIGKILL when its grace ends; in-flight requests the drain meant to finish are cut off anyway.",
    ),
    check(
        "OPS003",
        "synthetic-probe",
        Warn,
        Online,
        "synthetic probe failed: a call through external storage, or a stream continued on another replica",
        "run `deploy-kit doctor --online --explain OPS003` and fix the failing step it names",
        "Only an end-to-end call proves that externalization and cross-replica streams work together in the deployed system.",
    ),
    check(
        "OPS004",
        "smoke-after-up",
        Error,
        Online,
        "the deployed service failed its smoke test: it answered a call without a key while auth is required, a real call with the key failed, or a result did not come back through external storage",
        "fix the step the message names and run `deploy-kit up` again, or return traffic to the previous release with `deploy-kit rollback TARGET`; `DEPLOY_KIT_API_KEY` is the key the smoke test sends",
        "A deployment that provisioned cleanly can still refuse every caller, serve without authentication, or lose large results; only calls against the deployed URL show it before traffic moves.",
    ),
    check(
        "CFG001",
        "service-rejects-setting",
        Error,
        Offline,
        "a setting deploy-kit renders for the service is refused by the service's own configuration parser",
        "fix the deploy-kit.yaml key behind the variable the message names (e.g. `rate_limit: 100/60` for `KIT_RATE_LIMIT`); `kit-service env-docs` lists every variable and its format",
        "The service parses its environment once at start and exits 64 on any bad variable; caught here, the mistake fails `plan` instead of every replica of the deploy.",
    ),
    check(
        "ART001",
        "service-artifact-missing",
        Error,
        Offline,
        "the cargo package, bin target or feature deploy-kit builds is not in the workspace",
        "set `service.package`, `service.binary`, `service.features` and `service.workspace` in deploy-kit.yaml to what `cargo metadata --no-deps --format-version 1` lists; a platform feature (`lambda`, `s3`) goes in the package's `[features]`, e.g. `lambda = [\"kit-service/lambda\"]`",
        "Every Dockerfile, function package and local run builds `cargo build -p <package> --bin <binary> --features ...`; a name that does not exist fails the image build long after `plan` said yes.",
    ),
    check(
        "DOC001",
        "expired-waiver",
        Warn,
        Offline,
        "a waiver in deploy-kit.yaml has expired",
        "fix the finding, or renew the waiver with a new `expires:` date at most 90 days ahead",
        "Waivers are temporary by design: an expired one re-raises its finding so that nothing stays silenced forever.",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_and_aliases_are_unique_and_well_formed() {
        let mut seen = HashSet::new();
        for check in CHECKS {
            assert!(seen.insert(check.id), "duplicate {}", check.id);
            assert!(seen.insert(check.alias), "duplicate {}", check.alias);
            assert_eq!(check.id.len(), 6, "{}", check.id);
            assert!(
                check
                    .alias
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '-' || c.is_ascii_digit()),
                "{} is not kebab-case",
                check.alias
            );
            assert!(!check.message.ends_with('.') && !check.hint.is_empty());
        }
        assert_eq!(find("key001").unwrap().alias, "no-shared-signing-key");
        assert_eq!(find("replica-key-mismatch").unwrap().id, "KEY004");
        assert!(find("NOPE01").is_none());
    }
}
