//! A fake AWS Lambda Runtime API on `127.0.0.1:0`: it hands out the events a
//! test queues and reports what the function posts back. kit-service's own
//! `lambda` tests and `deploy-kit build`'s test of a packaged `bootstrap`
//! both run the real binary against it, so there is one fake, not two.
//!
//! It serves the four routes a custom runtime uses
//! (`/2018-06-01/runtime/invocation/next`, `.../{id}/response`,
//! `.../{id}/error`, `/2018-06-01/runtime/init/error`) with the headers the
//! real API sets. When its events run out, `next` blocks as Lambda does
//! between requests. Like Lambda, it refuses a response over
//! [`MAX_RESPONSE_BYTES`] with 413 and reports the invocation as failed
//! (`Function.ResponseSizeTooLarge`), so a test sees what a caller would.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use kit_service::testing::lambda_runtime::FakeRuntime;
//! let mut runtime = FakeRuntime::start(vec![]).await;
//! assert!(runtime.address().starts_with("127.0.0.1:"));
//! let nothing = tokio::time::timeout(std::time::Duration::from_millis(10), runtime.next_outcome()).await;
//! assert!(nothing.is_err(), "no invocation was handed out");
//! # });
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The function ARN the fake reports in `lambda-runtime-invoked-function-arn`.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:eu-west-1:123456789012:function:kit-service";

/// Lambda's cap on a synchronous invocation's response payload (6 MB).
pub const MAX_RESPONSE_BYTES: usize = 6 * 1024 * 1024;

/// What the function posted back for one request id (`init` for an init error).
#[derive(Debug)]
pub struct Outcome {
    pub request_id: String,
    /// `response` or `error`.
    pub kind: &'static str,
    /// The posted JSON, or the text as a JSON string when it was not JSON.
    pub body: Value,
}

struct Shared {
    events: Mutex<VecDeque<(String, Value)>>,
    /// Wakes a `next` long poll waiting for [`FakeRuntime::push`].
    arrived: tokio::sync::Notify,
    results: mpsc::UnboundedSender<Outcome>,
}

/// A running fake Runtime API; it stops with the tokio runtime that started it.
pub struct FakeRuntime {
    address: String,
    shared: Arc<Shared>,
    received: mpsc::UnboundedReceiver<Outcome>,
}

impl FakeRuntime {
    /// Serves `events` (request id, event JSON), in order.
    pub async fn start(events: Vec<(String, Value)>) -> FakeRuntime {
        let (results, received) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            events: Mutex::new(events.into()),
            arrived: tokio::sync::Notify::new(),
            results,
        });
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the fake Lambda Runtime API binds 127.0.0.1:0");
        let address = listener.local_addr().expect("a bound address").to_string();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeRuntime {
            address,
            shared,
            received,
        }
    }

    /// Queues one more event (request id, event JSON); a function waiting
    /// in its `next` long poll gets it at once.
    pub fn push(&self, request_id: String, event: Value) {
        self.shared
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_back((request_id, event));
        self.shared.arrived.notify_waiters();
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The next response or error the function posted.
    pub async fn next_outcome(&mut self) -> Outcome {
        self.received
            .recv()
            .await
            .expect("the fake runtime holds its sender")
    }

    /// [`FakeRuntime::next_outcome`] within `limit`; panics after it, naming it.
    pub async fn expect_outcome(&mut self, limit: Duration) -> Outcome {
        tokio::time::timeout(limit, self.next_outcome())
            .await
            .unwrap_or_else(|_| panic!("the function answered no invocation within {limit:?}"))
    }
}

/// A Lambda Function URL event (payload format 2.0): a POST to `path` with a
/// base64 `body`, as the Function URL sends it from `source_ip`.
pub fn function_url_event(path: &str, content_type: &str, body: &str, source_ip: &str) -> Value {
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {
            "content-type": content_type,
            "host": "abcdefghij.lambda-url.eu-west-1.on.aws",
            "x-forwarded-proto": "https",
            "x-forwarded-for": source_ip,
            "user-agent": "vgi-rpc-test",
        },
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "abcdefghij",
            "domainName": "abcdefghij.lambda-url.eu-west-1.on.aws",
            "domainPrefix": "abcdefghij",
            "http": {
                "method": "POST",
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": "vgi-rpc-test",
            },
            "requestId": "0f4e5c2a-1111-4b7a-9a53-1b2f0d8a0c01",
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 1767225600000u64,
        },
        "body": body,
        "isBase64Encoded": true,
    })
}

async fn next_invocation(State(shared): State<Arc<Shared>>) -> (HeaderMap, Bytes) {
    // Out of events: block the long poll like Lambda does between requests,
    // until `push` queues one.
    let (request_id, event) = loop {
        let arrived = shared.arrived.notified();
        let next = shared
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop_front();
        if let Some(next) = next {
            break next;
        }
        arrived.await;
    };
    let deadline = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_secs(60);
    let mut headers = HeaderMap::new();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set("lambda-runtime-aws-request-id", request_id);
    set(
        "lambda-runtime-deadline-ms",
        deadline.as_millis().to_string(),
    );
    set("lambda-runtime-invoked-function-arn", FUNCTION_ARN.into());
    set(
        "lambda-runtime-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1".into(),
    );
    set("content-type", "application/json".into());
    (headers, Bytes::from(event.to_string()))
}

async fn invocation_response(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    if body.len() > MAX_RESPONSE_BYTES {
        let error = json!({
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": format!(
                "Response payload size ({} bytes) exceeded maximum allowed payload size ({MAX_RESPONSE_BYTES} bytes).",
                body.len()
            ),
        });
        report(&shared, request_id, "error", error.to_string().as_bytes());
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    report(&shared, request_id, "response", &body)
}

async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    Path(request_id): Path<String>,
    body: Bytes,
) -> StatusCode {
    report(&shared, request_id, "error", &body)
}

async fn init_error(State(shared): State<Arc<Shared>>, body: Bytes) -> StatusCode {
    report(&shared, "init".into(), "error", &body)
}

fn report(shared: &Shared, request_id: String, kind: &'static str, body: &[u8]) -> StatusCode {
    let body = serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
    let _ = shared.results.send(Outcome {
        request_id,
        kind,
        body,
    });
    StatusCode::ACCEPTED
}
