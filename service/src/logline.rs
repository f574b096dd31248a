//! The JSON log line, written directly.
//!
//! Output has the same shape as `tracing-subscriber`'s JSON format, so log
//! pipelines see no difference:
//! `{"timestamp":"…Z","level":"INFO","fields":{"message":"rpc",…},"target":"…"}`.
//! The access line is written once per request. The generic formatter routes
//! every field through serde and a map serializer, which was 8% of a small
//! call's server CPU (docs/benchmarks.md). This writer escapes the fields
//! straight into the line buffer instead. An event inside a span goes to the
//! stock formatter, which also writes its `span` and `spans` keys.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent};
use tracing_subscriber::registry::LookupSpan;

/// `FormatEvent` for JSON lines: direct for events outside spans, the stock
/// JSON formatter otherwise.
pub struct JsonLines {
    stock: Format<Json>,
}

impl Default for JsonLines {
    fn default() -> Self {
        JsonLines {
            stock: Format::default().json(),
        }
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if ctx.lookup_current().is_some() {
            return self.stock.format_event(ctx, writer, event);
        }
        write_line(&mut writer, event)
    }
}

fn write_line(writer: &mut Writer<'_>, event: &Event<'_>) -> fmt::Result {
    let metadata = event.metadata();
    writer.write_str("{\"timestamp\":\"")?;
    SystemTime.format_time(writer)?;
    write!(
        writer,
        "\",\"level\":\"{}\",\"fields\":{{",
        metadata.level()
    )?;
    let mut fields = Fields {
        out: String::with_capacity(256),
        first: true,
    };
    event.record(&mut fields);
    writer.write_str(&fields.out)?;
    writer.write_str("},\"target\":")?;
    let mut target = String::with_capacity(metadata.target().len() + 2);
    escape(&mut target, metadata.target());
    writer.write_str(&target)?;
    writer.write_str("}\n")
}

/// Collects `"name":value` pairs.
struct Fields {
    out: String,
    first: bool,
}

impl Fields {
    fn key(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        escape(&mut self.out, field.name());
        self.out.push(':');
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        escape(&mut self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.out, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.out, "{value}");
        } else {
            // JSON has no NaN or infinity; serde_json writes null too.
            self.out.push_str("null");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.key(field);
        escape(&mut self.out, &value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        // `message` and `%display` values arrive here; both print as text.
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        escape(&mut self.out, &text);
    }
}

/// Appends `text` as a JSON string literal (RFC 8259 section 7).
fn escape(out: &mut String, text: &str) {
    out.push('"');
    let mut start = 0;
    for (index, byte) in text.bytes().enumerate() {
        let replacement = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&text[start..index]);
        if replacement.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(replacement);
        }
        start = index + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn lines(log: impl FnOnce()) -> Vec<serde_json::Value> {
        let capture = Capture::default();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .event_format(JsonLines::default())
            .with_writer(capture.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, log);
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
            .collect()
    }

    #[test]
    fn lines_are_json_in_the_stock_shape() {
        let nasty = "quote \" backslash \\ newline \n tab \t bell \u{7} é";
        let logged = lines(|| {
            tracing::info!(
                target: "kit_service::access",
                request_id = %"abc123",
                protocol = "P",
                status = 200u16,
                delta = -3i64,
                duration_ms = 0.25f64,
                nan = f64::NAN,
                error = false,
                text = nasty,
                "rpc"
            );
            tracing::warn!("plain {}", 7);
        });
        assert_eq!(logged.len(), 2);
        let access = &logged[0];
        assert_eq!(access["level"], "INFO");
        assert_eq!(access["target"], "kit_service::access");
        let fields = &access["fields"];
        assert_eq!(fields["message"], "rpc");
        assert_eq!(fields["request_id"], "abc123");
        assert_eq!(fields["protocol"], "P");
        assert_eq!(fields["status"], 200);
        assert_eq!(fields["delta"], -3);
        assert_eq!(fields["duration_ms"], 0.25);
        assert!(fields["nan"].is_null());
        assert_eq!(fields["error"], false);
        assert_eq!(fields["text"], nasty, "escaping round-trips");
        let timestamp = access["timestamp"].as_str().unwrap();
        assert!(
            timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );
        assert_eq!(logged[1]["level"], "WARN");
        assert_eq!(logged[1]["fields"]["message"], "plain 7");
    }

    #[test]
    fn events_in_spans_keep_the_span_keys() {
        let logged = lines(|| {
            let span = tracing::info_span!("request", id = 5);
            let _entered = span.enter();
            tracing::info!(answer = 42, "inside");
        });
        assert_eq!(logged[0]["fields"]["answer"], 42);
        assert_eq!(logged[0]["span"]["name"], "request");
        assert_eq!(logged[0]["span"]["id"], 5);
    }
}
