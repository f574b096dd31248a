//! `conformance.Secondary.v1`: the second application protocol every
//! conformance worker hosts (`vgi_rpc/conformance/secondary.py`).
//!
//! It exists to make multi-protocol hosting observable: `echo_string` collides
//! with the primary's method of the same name but answers differently, the
//! protocol declares no `protocol_version` (so version gating must be per
//! binding), and `fail` / `fail_oversized` exercise the error model: codes,
//! kinds, typed details and the 4 KiB details cap.

use serde_json::{Value, json};

use crate::rpc::Protocol;
use crate::wire::{ErrorCode, RpcError};

pub const NAME: &str = "conformance.Secondary.v1";
/// What `echo_string` prepends, so a mis-route is a wrong answer.
pub const ECHO_PREFIX: &str = "secondary:";
/// Kind of the error `fail` answers with for a code outside the closed set.
pub const INVALID_CODE_KIND: &str = "invalid_code";
/// Kind `fail_oversized` raises.
pub const OVERSIZED_KIND: &str = "details_oversized";
/// Size of `fail_oversized`'s padding: over the cap on its own.
pub const OVERSIZED_PADDING_BYTES: usize = 5000;

/// The exception class upstream raises for these errors.
const STATUS_ERROR: &str = "StatusError";

/// `RetryInfo.to_json()`: a whole-number delay travels as an integer.
fn retry_info(delay_seconds: f64) -> Value {
    let whole = delay_seconds.fract() == 0.0 && delay_seconds.abs() < 9.0e15;
    let delay = if whole {
        json!(delay_seconds as i64)
    } else {
        json!(delay_seconds)
    };
    json!({"@type": "vgi_rpc.RetryInfo", "retry_delay_seconds": delay})
}

/// `expected_fail_details`: `ErrorInfo`, `RetryInfo` when positive, then the probe type.
pub fn fail_details(retry_delay_seconds: f64) -> Vec<Value> {
    let mut details = vec![json!({"@type": "vgi_rpc.ErrorInfo", "metadata": {"fixture": NAME}})];
    if retry_delay_seconds > 0.0 {
        details.push(retry_info(retry_delay_seconds));
    }
    details.push(json!({"@type": format!("{NAME}.Probe"), "note": "clients ignore detail types they do not know"}));
    details
}

/// `SecondaryImpl.fail`: always an error, shaped by the caller.
pub fn fail(code: &str, kind: &str, retry_delay_seconds: f64) -> RpcError {
    let Some(code_value) = ErrorCode::parse(code) else {
        return RpcError::new(
            STATUS_ERROR,
            format!(
                "{} is not a canonical error code",
                super::values::python_str_repr(code)
            ),
        )
        .with_code(ErrorCode::InvalidArgument)
        .with_kind(INVALID_CODE_KIND)
        .with_details(vec![json!({
            "@type": "vgi_rpc.BadRequest",
            "field_violations": [{"field": "code", "description": "must be a canonical code name"}],
        })]);
    };
    let message = format!("{NAME} fail: {code} {kind}");
    let mut error = RpcError::new(STATUS_ERROR, message.trim_end())
        .with_code(code_value)
        .with_details(fail_details(retry_delay_seconds));
    if !kind.is_empty() {
        error = error.with_kind(kind);
    }
    error
}

/// `SecondaryImpl.fail_oversized`: details over the cap, a small `RetryInfo` first.
pub fn fail_oversized() -> RpcError {
    RpcError::new(STATUS_ERROR, format!("{NAME} fail_oversized: details exceed 4 KiB"))
        .with_code(ErrorCode::ResourceExhausted)
        .with_kind(OVERSIZED_KIND)
        .with_details(vec![
            retry_info(1.0),
            json!({"@type": "vgi_rpc.ErrorInfo", "metadata": {"padding": "x".repeat(OVERSIZED_PADDING_BYTES)}}),
        ])
}

pub fn protocol() -> Protocol {
    Protocol::builder(NAME)
        .unary(
            "echo_string",
            "value: utf8",
            "result: utf8",
            |_ctx, args| async move {
                let value: String = args.get("value")?;
                Ok(format!("{ECHO_PREFIX}{value}"))
            },
        )
        .unary(
            "fail",
            "code: utf8, kind: utf8, retry_delay_seconds: float64",
            "",
            |_ctx, args| async move {
                let code: String = args.get("code")?;
                let kind: String = args.get("kind")?;
                let retry_delay_seconds: f64 = args.get("retry_delay_seconds")?;
                Err::<(), _>(fail(&code, &kind, retry_delay_seconds))
            },
        )
        .unary("fail_oversized", "", "", |_ctx, _args| async move {
            Err::<(), _>(fail_oversized())
        })
        .build()
        .unwrap_or_else(|errors| panic!("conformance.Secondary.v1 is well-formed: {errors:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_details_follow_the_reference_order() {
        let details = fail_details(1.5);
        assert_eq!(details.len(), 3);
        assert_eq!(details[1]["retry_delay_seconds"], json!(1.5));
        assert_eq!(fail_details(0.0).len(), 2);
        assert_eq!(retry_info(7.0)["retry_delay_seconds"].to_string(), "7");
    }

    #[test]
    fn unknown_codes_are_invalid_arguments() {
        let error = fail("BOGUS", "", 0.0);
        assert_eq!(error.code, ErrorCode::InvalidArgument);
        assert_eq!(error.message, "'BOGUS' is not a canonical error code");
        let error = fail("UNAVAILABLE", "", 0.0);
        assert_eq!(error.message, "conformance.Secondary.v1 fail: UNAVAILABLE");
        assert!(error.kind.is_none());
    }
}
