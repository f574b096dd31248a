//! The vgi-rpc access log: one JSON line per RPC call, in the shape of
//! upstream's `access_log.schema.json` (the `vgi_rpc.access` logger).
//!
//! Written to the file `KIT_ACCESS_LOG` names, apart from the service's own
//! log on stderr, so that tools built for vgi-rpc's access records (the
//! upstream validator, dashboards keyed on `protocol_hash`) read kit-service's
//! unchanged. A stream writes one record per turn (its init and every
//! continuation), all sharing a `stream_id`. Records describe a call, never its
//! payload: no parameter values and no state tokens, only their sizes, as the
//! schema requires. Error messages are the ones the caller received, which
//! name pointer URLs only redacted.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

/// Why the access log could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("cannot open the access log `{path}`: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// An append-only JSONL file of access records.
#[derive(Debug)]
pub struct AccessLog {
    file: Mutex<std::fs::File>,
}

/// One RPC call, as the access log records it.
#[derive(Debug, Clone, Default)]
pub struct AccessRecord<'a> {
    pub server_id: &'a str,
    pub protocol: &'a str,
    /// `sha256` hex of the protocol's canonical description.
    pub protocol_hash: &'a str,
    pub method: &'a str,
    /// A stream method (its init and every turn), not a unary one.
    pub stream: bool,
    /// The stream's id (32 lowercase hex), shared by all its turns.
    pub stream_id: Option<&'a str>,
    /// The authenticated caller; `""` when anonymous.
    pub principal: &'a str,
    pub remote_addr: Option<std::net::SocketAddr>,
    pub duration: Duration,
    pub request_id: &'a str,
    pub http_status: u16,
    /// `(error type, message, canonical code)` of a failed call.
    pub error: Option<(&'a str, &'a str, &'a str)>,
    pub request_bytes: u64,
    pub response_bytes: Option<u64>,
}

impl AccessLog {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> Result<AccessLog, AccessLogError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AccessLogError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(AccessLog {
            file: Mutex::new(file),
        })
    }

    /// Appends one record as a single line. A failed write is reported on the
    /// service log and never fails the call it describes.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let mut line = record.to_json().to_string();
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(error) = file.write_all(line.as_bytes()) {
            tracing::warn!(%error, "failed to write an access log record");
        }
    }
}

impl AccessRecord<'_> {
    /// The record as upstream's schema spells it.
    ///
    /// ```
    /// use kit_service::access_log::AccessRecord;
    /// let record = AccessRecord {
    ///     server_id: "abc123",
    ///     protocol: "kit.Demo.v1",
    ///     protocol_hash: &"0".repeat(64),
    ///     method: "add",
    ///     request_id: "req-1",
    ///     http_status: 200,
    ///     ..AccessRecord::default()
    /// };
    /// let json = record.to_json();
    /// assert_eq!(json["logger"], "vgi_rpc.access");
    /// assert_eq!(json["method_type"], "unary");
    /// assert_eq!(json["status"], "ok");
    /// assert_eq!(json["error_type"], "");
    /// assert_eq!(json["authenticated"], false);
    /// ```
    pub fn to_json(&self) -> Value {
        let status = if self.error.is_some() { "error" } else { "ok" };
        let mut record = Map::new();
        let mut put = |key: &str, value: Value| {
            record.insert(key.to_string(), value);
        };
        put("timestamp", json!(rfc3339_millis(SystemTime::now())));
        put("level", json!("INFO"));
        put("logger", json!("vgi_rpc.access"));
        put(
            "message",
            json!(format!("{}.{} {status}", self.protocol, self.method)),
        );
        put("server_id", json!(self.server_id));
        put("server_version", json!(env!("CARGO_PKG_VERSION")));
        put("protocol", json!(self.protocol));
        put("protocol_hash", json!(self.protocol_hash));
        put("method", json!(self.method));
        put(
            "method_type",
            json!(if self.stream { "stream" } else { "unary" }),
        );
        if let Some(stream_id) = self.stream_id {
            put("stream_id", json!(stream_id));
        }
        put("principal", json!(self.principal));
        put(
            "auth_domain",
            json!(if self.principal.is_empty() {
                ""
            } else {
                "api_key"
            }),
        );
        put("authenticated", json!(!self.principal.is_empty()));
        put(
            "remote_addr",
            json!(
                self.remote_addr
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default()
            ),
        );
        put(
            "duration_ms",
            json!((self.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
        );
        put("status", json!(status));
        put("request_id", json!(self.request_id));
        put("http_status", json!(self.http_status));
        put("request_bytes", json!(self.request_bytes));
        if let Some(bytes) = self.response_bytes {
            put("response_bytes", json!(bytes));
        }
        match self.error {
            Some((error_type, message, code)) => {
                put("error_type", json!(error_type));
                // The schema requires a non-empty message on an error record.
                let message = if message.is_empty() {
                    error_type
                } else {
                    message
                };
                put("error_message", json!(message));
                put("error_code", json!(code));
            }
            None => put("error_type", json!("")),
        }
        Value::Object(record)
    }
}

/// `2026-04-26T15:30:45.123Z`.
fn rfc3339_millis(time: SystemTime) -> String {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let utc = crate::storage::signing::Utc::from_unix(since.as_secs() as i64);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_millisecond_precision_in_utc() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_777_217_445_123);
        assert_eq!(rfc3339_millis(time), "2026-04-26T15:30:45.123Z");
    }

    #[test]
    fn an_error_record_carries_type_message_and_code() {
        let record = AccessRecord {
            protocol: "p",
            method: "m",
            stream: true,
            stream_id: Some("00112233445566778899aabbccddeeff"),
            error: Some(("ValueError", "", "INVALID_ARGUMENT")),
            ..AccessRecord::default()
        };
        let json = record.to_json();
        assert_eq!(json["status"], "error");
        assert_eq!(json["error_type"], "ValueError");
        assert_eq!(json["error_message"], "ValueError");
        assert_eq!(json["error_code"], "INVALID_ARGUMENT");
        assert_eq!(json["method_type"], "stream");
        assert_eq!(json["stream_id"], "00112233445566778899aabbccddeeff");
    }

    #[test]
    fn a_record_is_one_line_appended() {
        let dir = std::env::temp_dir().join(format!("kit-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.jsonl");
        let log = AccessLog::open(&path).unwrap();
        let record = AccessRecord {
            protocol: "p",
            method: "m",
            ..AccessRecord::default()
        };
        log.write(&record);
        log.write(&record);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
