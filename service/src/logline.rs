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
    let mut line = String::with_capacity(LINE_CAPACITY);
    format_line(&mut line, event);
    writer.write_str(&line)
}

/// Room for an access line without growing (they run to about 300 bytes).
const LINE_CAPACITY: usize = 384;

/// The whole line, built in one `String` with plain appends: every piece
/// written through the formatter's `Writer` (a `dyn fmt::Write`) or with
/// `write!` cost a dynamic call or a pass of `core::fmt`, and a line has
/// some fifty pieces.
fn format_line(line: &mut String, event: &Event<'_>) {
    let metadata = event.metadata();
    line.push_str("{\"timestamp\":\"");
    timestamp(line, std::time::SystemTime::now());
    line.push_str("\",\"level\":\"");
    line.push_str(metadata.level().as_str());
    line.push_str("\",\"fields\":{");
    event.record(&mut Fields {
        out: line,
        first: true,
    });
    line.push_str("},\"target\":");
    escape(line, metadata.target());
    line.push_str("}\n");
}

thread_local! {
    /// The second this thread last wrote a timestamp in, and its text up to
    /// the seconds (`2026-12-07T06:20:11`): lines in the same second reuse it.
    static SECOND: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((u64::MAX, String::new())) };
}

/// Writes `now` as the stock formatter does (`SystemTime`'s RFC 3339 in UTC
/// with microseconds: `2026-12-07T06:20:11.123456Z`), formatting the date
/// and time of day once per second and thread.
fn timestamp(out: &mut String, now: std::time::SystemTime) {
    let Ok(since_epoch) = now.duration_since(std::time::UNIX_EPOCH) else {
        // Before 1970: the stock formatter's text, whatever it is.
        let _ = SystemTime.format_time(&mut Writer::new(out));
        return;
    };
    let seconds = since_epoch.as_secs();
    SECOND.with(|second| {
        let (known, text) = &mut *second.borrow_mut();
        if *known != seconds {
            text.clear();
            let days = seconds / 86_400;
            let (year, month, day) = civil_from_days(days);
            let in_day = seconds % 86_400;
            // Writing to a `String` cannot fail.
            let _ = write!(
                text,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                in_day / 3600,
                in_day / 60 % 60,
                in_day % 60
            );
            *known = seconds;
        }
        out.push_str(text);
    });
    let mut micros = since_epoch.subsec_micros();
    let mut digits = [b'0'; 8];
    digits[0] = b'.';
    digits[7] = b'Z';
    for digit in digits[1..7].iter_mut().rev() {
        *digit += (micros % 10) as u8;
        micros /= 10;
    }
    out.push_str(std::str::from_utf8(&digits).expect("ASCII digits"));
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for non-negative days).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes `"name":value` pairs straight into the line.
struct Fields<'a> {
    out: &'a mut String,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        escape(self.out, field.name());
        self.out.push(':');
    }

    /// A value written by its `Display` or `Debug`, as a JSON string.
    fn text(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        self.key(field);
        self.out.push('"');
        // Writing to a `String` cannot fail.
        let _ = Escaped(&mut *self.out).write_fmt(value);
        self.out.push('"');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        escape(self.out, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        self.out.push_str(itoa::Buffer::new().format(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.out.push_str(if value { "true" } else { "false" });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            // The shortest text that reads back as `value`, as serde_json
            // (and so the stock JSON formatter) writes it.
            self.out.push_str(zmij::Buffer::new().format_finite(value));
        } else {
            // JSON has no NaN or infinity; serde_json writes null too.
            self.out.push_str("null");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.text(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // `message` and `%display` values arrive here; both print as text.
        self.text(field, format_args!("{value:?}"));
    }
}

/// Writes `text` as a JSON string literal (RFC 8259 section 7).
fn escape(out: &mut String, text: &str) {
    out.push('"');
    // Writing to a `String` cannot fail.
    let _ = Escaped(&mut *out).write_str(text);
    out.push('"');
}

/// True when `text` holds a byte a JSON string must escape: a control
/// character, `"` or `\\`. Eight bytes at a time (every access line runs its
/// keys and values through here); each test below is nonzero exactly when
/// some byte of the word matches.
fn needs_escape(text: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Some byte below `n` (n <= 128): "hasless" from Bit Twiddling Hacks.
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGHS;
    let equal = |word: u64, byte: u8| below(word ^ (ONES * u64::from(byte)), 1);
    let mut words = text.chunks_exact(8);
    for chunk in &mut words {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if below(word, 0x20) | equal(word, b'"') | equal(word, b'\\') != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// A writer that escapes what goes through it as the inside of a JSON
/// string, so formatted values need no buffer of their own.
struct Escaped<'a, W: fmt::Write>(&'a mut W);

impl<W: fmt::Write> fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let out = &mut *self.0;
        if !needs_escape(text.as_bytes()) {
            return out.write_str(text);
        }
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
            out.write_str(&text[start..index])?;
            if replacement.is_empty() {
                write!(out, "\\u{byte:04x}")?;
            } else {
                out.write_str(replacement)?;
            }
            start = index + 1;
        }
        out.write_str(&text[start..])
    }
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
    fn the_word_scan_finds_exactly_the_bytes_json_escapes() {
        let escaped = |b: u8| b < 0x20 || b == b'"' || b == b'\\';
        // Every byte at every place of a 19-byte text (two whole words and a
        // tail), among plain ASCII and among bytes with the high bit set,
        // alone and after a second byte that is or is not escaped.
        for background in [b'a', 0xff, 0x80, b'!', b'#', b'[', b']'] {
            for byte in 0..=255u8 {
                for place in 0..19 {
                    let mut text = vec![background; 19];
                    text[place] = byte;
                    assert_eq!(
                        needs_escape(&text),
                        escaped(byte) || escaped(background),
                        "byte {byte:#x} at {place} among {background:#x}"
                    );
                    for other in [0x1f, 0x20, b'"', 0x7f, 0xe2] {
                        text[(place + 5) % 19] = other;
                        let expected = (0..19).any(|i| escaped(text[i]));
                        assert_eq!(needs_escape(&text), expected, "{text:x?}");
                    }
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("répondre à « ça »".as_bytes()));
    }

    #[test]
    fn timestamps_are_the_stock_formatters() {
        let at = |seconds: u64, micros: u64| {
            let mut text = String::new();
            let time = std::time::UNIX_EPOCH
                + std::time::Duration::from_micros(seconds * 1_000_000 + micros);
            timestamp(&mut text, time);
            text
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(1_709_251_199, 999_999), "2024-02-29T23:59:59.999999Z");
        assert_eq!(at(1_709_251_200, 0), "2024-03-01T00:00:00.000000Z");
        assert_eq!(at(4_102_444_800, 1), "2100-01-01T00:00:00.000001Z");
        // The same second again (kept text), then the next one.
        assert_eq!(at(1_796_625_611, 5), "2026-12-07T06:40:11.000005Z");
        assert_eq!(at(1_796_625_611, 6), "2026-12-07T06:40:11.000006Z");
        assert_eq!(at(1_796_625_612, 0), "2026-12-07T06:40:12.000000Z");
        // Day after day for four centuries, each date follows the last by
        // the calendar's own rules (month lengths, leap years).
        let leap =
            |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
        let mut last = civil_from_days(0);
        assert_eq!(last, (1970, 1, 1));
        for days in 1..146_097 * 4 {
            let (year, month, day) = last;
            let length = match month {
                2 if leap(year) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let next = if day < length {
                (year, month, day + 1)
            } else if month < 12 {
                (year, month + 1, 1)
            } else {
                (year + 1, 1, 1)
            };
            assert_eq!(civil_from_days(days), next, "day {days}");
            last = next;
        }
        // And now, against `SystemTime` itself (retried across a second boundary).
        let mut seen = Vec::new();
        for _ in 0..3 {
            let mut stock = String::new();
            SystemTime
                .format_time(&mut Writer::new(&mut stock))
                .unwrap();
            let mut ours = String::new();
            timestamp(&mut ours, std::time::SystemTime::now());
            if ours[..19] == stock[..19] {
                assert_eq!(ours.len(), stock.len(), "{ours} vs {stock}");
                assert!(ours.ends_with('Z') && ours.as_bytes()[19] == b'.', "{ours}");
                return;
            }
            seen.push((ours, stock));
        }
        panic!("our timestamps differ from the stock formatter's: {seen:?}");
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
                shown = %nasty,
                failure = &std::io::Error::other(nasty) as &(dyn std::error::Error + 'static),
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
        assert_eq!(
            fields["shown"], nasty,
            "a Display value is escaped as it is written"
        );
        assert_eq!(fields["failure"], nasty, "an error value too");
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
