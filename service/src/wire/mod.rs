//! The vgi-rpc wire vocabulary: metadata keys, error and log batches, and the
//! IPC framing they ride in. Nothing here knows HTTP.

pub mod ipc;
pub mod tokens;

use std::sync::Arc;

use arrow_schema::{Schema, SchemaRef};
use http::StatusCode;
use serde_json::{Map, Value};

pub use ipc::{Batch, IpcStream, Metadata, StreamWriter, metadata_get};

pub fn metadata_get_owned(metadata: &Metadata, key: &str) -> Option<String> {
    metadata_get(metadata, key).map(str::to_string)
}

pub const CONTENT_TYPE: &str = "application/vnd.apache.arrow.stream";
pub const REQUEST_VERSION: &str = "1";

pub const METHOD_KEY: &str = "vgi_rpc.method";
pub const REQUEST_VERSION_KEY: &str = "vgi_rpc.request_version";
pub const PROTOCOL_KEY: &str = "vgi_rpc.protocol";
pub const PROTOCOL_VERSION_KEY: &str = "vgi_rpc.protocol_version";
pub const STATE_KEY: &str = "vgi_rpc.stream_state#b64";
pub const CALL_STATE_KEY: &str = "vgi_rpc.call_state#b64";
pub const CANCEL_KEY: &str = "vgi_rpc.cancel";
pub const LOG_LEVEL_KEY: &str = "vgi_rpc.log_level";
pub const LOG_MESSAGE_KEY: &str = "vgi_rpc.log_message";
pub const LOG_EXTRA_KEY: &str = "vgi_rpc.log_extra";
pub const ERROR_CODE_KEY: &str = "vgi_rpc.error_code";
pub const ERROR_KIND_KEY: &str = "vgi_rpc.error_kind";
pub const ERROR_DETAILS_KEY: &str = "vgi_rpc.error_details";
pub const SERVER_ID_KEY: &str = "vgi_rpc.server_id";
pub const REQUEST_ID_KEY: &str = "vgi_rpc.request_id";
pub const LOCATION_KEY: &str = "vgi_rpc.location";
pub const LOCATION_SHA256_KEY: &str = "vgi_rpc.location.sha256";
/// Stamped on a resolved pointer's metadata: the URL it was fetched from.
pub const LOCATION_SOURCE_KEY: &str = "vgi_rpc.location.source";
/// Stamped on a resolved pointer's metadata: how long the fetch took, in ms.
pub const LOCATION_FETCH_MS_KEY: &str = "vgi_rpc.location.fetch_ms";

/// Framework keys that are never shown to application code as user metadata.
pub const FRAMEWORK_KEYS: &[&str] = &[
    METHOD_KEY,
    REQUEST_VERSION_KEY,
    PROTOCOL_KEY,
    PROTOCOL_VERSION_KEY,
    STATE_KEY,
    CALL_STATE_KEY,
    CANCEL_KEY,
];

/// Error details over this size are dropped entirely, as upstream does.
pub const MAX_ERROR_DETAILS_BYTES: usize = 4096;

/// Tracebacks are cut at this many characters, as upstream does.
pub const MAX_TRACEBACK_CHARS: usize = 16_000;

pub fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}

/// gRPC's canonical codes, by the names that travel in `vgi_rpc.error_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    Cancelled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::Cancelled,
        ErrorCode::Unknown,
        ErrorCode::InvalidArgument,
        ErrorCode::DeadlineExceeded,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::PermissionDenied,
        ErrorCode::ResourceExhausted,
        ErrorCode::FailedPrecondition,
        ErrorCode::Aborted,
        ErrorCode::OutOfRange,
        ErrorCode::Unimplemented,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::DataLoss,
        ErrorCode::Unauthenticated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::AlreadyExists => "ALREADY_EXISTS",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::FailedPrecondition => "FAILED_PRECONDITION",
            ErrorCode::Aborted => "ABORTED",
            ErrorCode::OutOfRange => "OUT_OF_RANGE",
            ErrorCode::Unimplemented => "UNIMPLEMENTED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::DataLoss => "DATA_LOSS",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    pub fn parse(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
    }
}

/// An error that travels to the client as an EXCEPTION batch.
///
/// `status` is the HTTP status: 200 for errors raised by method code (the
/// body still carries the error, because intermediaries drop 5xx bodies),
/// 4xx for client mistakes found before dispatch.
#[derive(Debug, Clone)]
pub struct RpcError {
    /// Upstream's exception class name, e.g. `ValueError`, `ProtocolError`.
    pub error_type: String,
    pub message: String,
    pub code: ErrorCode,
    pub kind: Option<String>,
    pub details: Vec<Value>,
    pub status: StatusCode,
}

impl RpcError {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        RpcError {
            error_type: error_type.into(),
            message: message.into(),
            code: ErrorCode::Unknown,
            kind: None,
            details: Vec::new(),
            status: StatusCode::OK,
        }
    }

    /// A failure inside method code (`ValueError` in upstream terms).
    pub fn value(message: impl Into<String>) -> Self {
        RpcError::new("ValueError", message)
    }

    /// A client mistake found before dispatch: 400 with the given upstream type.
    pub fn bad_request(error_type: &str, message: impl Into<String>) -> Self {
        RpcError::new(error_type, message).with_status(StatusCode::BAD_REQUEST)
    }

    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }

    pub fn with_kind(mut self, kind: impl Into<String>) -> Self {
        self.kind = Some(kind.into());
        self
    }

    pub fn with_details(mut self, details: Vec<Value>) -> Self {
        self.details = details;
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The metadata of the EXCEPTION batch.
    pub fn to_metadata(&self, server_id: &str, request_id: &str) -> Metadata {
        self.to_metadata_from(server_id, request_id, None)
    }

    /// Like [`RpcError::to_metadata`]; `origin` (`protocol/method`) names the
    /// call in the synthesized traceback.
    pub fn to_metadata_from(
        &self,
        server_id: &str,
        request_id: &str,
        origin: Option<&str>,
    ) -> Metadata {
        let mut extra = Map::new();
        extra.insert(
            "exception_type".into(),
            Value::String(self.error_type.clone()),
        );
        extra.insert(
            "exception_message".into(),
            Value::String(self.message.clone()),
        );
        extra.insert(
            "error_code".into(),
            Value::String(self.code.as_str().into()),
        );
        if let Some(kind) = &self.kind {
            extra.insert("error_kind".into(), Value::String(kind.clone()));
        }
        let details = self.details_json();
        if let Some(details) = &details {
            extra.insert(
                "error_details".into(),
                serde_json::from_str(details).unwrap_or(Value::Null),
            );
        }
        extra.insert(
            "traceback".into(),
            Value::String(self.synthesized_traceback(origin)),
        );
        let mut metadata = vec![
            (LOG_LEVEL_KEY.to_string(), "EXCEPTION".to_string()),
            (
                LOG_MESSAGE_KEY.to_string(),
                format!("{}: {}", self.error_type, self.message),
            ),
            (LOG_EXTRA_KEY.to_string(), Value::Object(extra).to_string()),
            (ERROR_CODE_KEY.to_string(), self.code.as_str().to_string()),
        ];
        if let Some(kind) = &self.kind {
            metadata.push((ERROR_KIND_KEY.to_string(), kind.clone()));
        }
        if let Some(details) = details {
            metadata.push((ERROR_DETAILS_KEY.to_string(), details));
        }
        metadata.push((SERVER_ID_KEY.to_string(), server_id.to_string()));
        metadata.push((REQUEST_ID_KEY.to_string(), request_id.to_string()));
        metadata
    }

    /// Tracebacks are part of every error on every transport (`log_extra.traceback`);
    /// Rust has no Python stack to send, so, as the protocol asks of stackless
    /// ports, this is a synthesized one naming the call and the error.
    fn synthesized_traceback(&self, origin: Option<&str>) -> String {
        let location = origin.map(|o| format!("  in {o}\n")).unwrap_or_default();
        let text = format!(
            "Traceback (synthesized by kit-service, no stack):\n{location}{}: {}\n",
            self.error_type, self.message
        );
        match text.char_indices().nth(MAX_TRACEBACK_CHARS) {
            Some((cut, _)) => text[..cut].to_string(),
            None => text,
        }
    }

    /// Serialized details, or `None` when there are none or they exceed the cap.
    fn details_json(&self) -> Option<String> {
        if self.details.is_empty() {
            return None;
        }
        let text = Value::Array(self.details.clone()).to_string();
        (text.len() <= MAX_ERROR_DETAILS_BYTES).then_some(text)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for RpcError {}

impl From<arrow_schema::ArrowError> for RpcError {
    fn from(error: arrow_schema::ArrowError) -> Self {
        RpcError::new("ArrowInvalid", error.to_string())
    }
}

/// Client-directed log levels (EXCEPTION is reserved for errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
            LogLevel::Trace => "TRACE",
        }
    }
}

/// A log message for the client, sent as a zero-row batch before the data.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
    pub extra: Map<String, Value>,
}

impl LogRecord {
    pub fn to_metadata(&self, server_id: &str, request_id: &str) -> Metadata {
        let mut metadata = vec![
            (LOG_LEVEL_KEY.to_string(), self.level.as_str().to_string()),
            (LOG_MESSAGE_KEY.to_string(), self.message.clone()),
        ];
        if !self.extra.is_empty() {
            metadata.push((
                LOG_EXTRA_KEY.to_string(),
                Value::Object(self.extra.clone()).to_string(),
            ));
        }
        metadata.push((SERVER_ID_KEY.to_string(), server_id.to_string()));
        metadata.push((REQUEST_ID_KEY.to_string(), request_id.to_string()));
        metadata
    }
}

/// Application metadata: everything on a batch that is not a framework key.
pub fn user_metadata(metadata: &Metadata) -> Metadata {
    metadata
        .iter()
        .filter(|(k, _)| !FRAMEWORK_KEYS.contains(&k.as_str()))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_metadata_carries_code_kind_and_ids() {
        let error = RpcError::new("MethodNotImplementedError", "no method")
            .with_code(ErrorCode::Unimplemented)
            .with_kind("method_not_implemented");
        let metadata = error.to_metadata("srv", "req");
        let get = |k: &str| ipc::metadata_get(&metadata, k).unwrap().to_string();
        assert_eq!(get(LOG_LEVEL_KEY), "EXCEPTION");
        assert_eq!(get(LOG_MESSAGE_KEY), "MethodNotImplementedError: no method");
        assert_eq!(get(ERROR_CODE_KEY), "UNIMPLEMENTED");
        assert_eq!(get(ERROR_KIND_KEY), "method_not_implemented");
        assert_eq!(get(REQUEST_ID_KEY), "req");
        let extra: Value = serde_json::from_str(&get(LOG_EXTRA_KEY)).unwrap();
        assert_eq!(extra["exception_type"], "MethodNotImplementedError");
        let traceback = extra["traceback"].as_str().unwrap();
        assert!(
            traceback.ends_with("MethodNotImplementedError: no method\n"),
            "{traceback}"
        );
        let located = error.to_metadata_from("srv", "req", Some("P/m"));
        assert!(
            ipc::metadata_get(&located, LOG_EXTRA_KEY)
                .unwrap()
                .contains("in P/m")
        );
    }

    #[test]
    fn oversized_details_are_dropped_whole() {
        let big = serde_json::json!({"@type": "x", "pad": "a".repeat(5000)});
        let error =
            RpcError::value("boom").with_details(vec![serde_json::json!({"@type": "small"}), big]);
        let metadata = error.to_metadata("s", "r");
        assert!(ipc::metadata_get(&metadata, ERROR_DETAILS_KEY).is_none());
    }
}
