//! A Lambda Function URL on `127.0.0.1:0` in front of the real
//! `kit-service lambda` process: each HTTP request becomes a Function URL
//! event (payload format 2.0) handed to the function through the fake
//! Runtime API ([`super::lambda_runtime`]), and the function's answer
//! becomes the HTTP response, as AWS does it (a function error is a 502).
//! deploy-kit's AWS tests put it behind the URL `up` smoke-tests, so the
//! calls reach the binary with the configuration deploy-kit deployed.
//!
//! The process starts on the first request, with only the variables the
//! `environment` callback returns then (e.g. what moto holds for the
//! function after `up`); the callback runs again for every request, and
//! the process is restarted when its answer changed (a new deployment).
//! The process is killed when the front is dropped.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use kit_service::testing::function_url::FunctionUrl;
//! let front = FunctionUrl::start(
//!     "target/debug/kit-service".into(),
//!     Box::new(|| vec![("VGI_SIGNING_KEY".into(), "k".repeat(32))]),
//! )
//! .await;
//! assert!(front.url().starts_with("http://127.0.0.1:"));
//! assert!(!front.started(), "the process waits for the first request");
//! # });
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::lambda_runtime::{FakeRuntime, Outcome};

/// The variables the function process starts with.
pub type Environment = Box<dyn Fn() -> Vec<(String, String)> + Send + Sync>;

/// One process of the function, with a fake Runtime API of its own (a
/// killed process's long poll must not take the next one's events).
struct Sandbox {
    child: Child,
    environment: Vec<(String, String)>,
    push: tokio::sync::mpsc::UnboundedSender<(String, Value)>,
}

struct Front {
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Outcome>>>>,
    binary: PathBuf,
    environment: Environment,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    next_id: AtomicU64,
}

/// A running front; the process and the servers stop when it is dropped
/// (the servers with the tokio runtime that started them).
pub struct FunctionUrl {
    url: String,
    front: Arc<Front>,
}

impl FunctionUrl {
    /// Serves on `127.0.0.1:0`; `binary lambda` starts on the first request.
    pub async fn start(binary: PathBuf, environment: Environment) -> FunctionUrl {
        let front = Arc::new(Front {
            waiting: Arc::new(Mutex::new(HashMap::new())),
            binary,
            environment,
            sandbox: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        });
        let app = Router::new().fallback(invoke).with_state(front.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the Function URL front binds 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("a bound address"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FunctionUrl { url, front }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether a function process is running (a request arrived).
    pub fn started(&self) -> bool {
        self.front
            .sandbox
            .try_lock()
            .map(|sandbox| sandbox.is_some())
            .unwrap_or(true)
    }
}

impl Drop for FunctionUrl {
    fn drop(&mut self) {
        if let Ok(mut sandbox) = self.front.sandbox.try_lock()
            && let Some(mut sandbox) = sandbox.take()
        {
            let _ = sandbox.child.kill();
            let _ = sandbox.child.wait();
        }
    }
}

impl Front {
    /// Where to queue events: the running process, or a new one when none
    /// runs or its variables changed (a new deployment: Lambda gives a new
    /// version a fresh sandbox).
    async fn sandbox(&self) -> Result<tokio::sync::mpsc::UnboundedSender<(String, Value)>, String> {
        let environment = (self.environment)();
        let mut sandbox = self.sandbox.lock().await;
        if let Some(running) = sandbox.as_mut() {
            let alive = matches!(running.child.try_wait(), Ok(None));
            if alive && running.environment == environment {
                return Ok(running.push.clone());
            }
            let _ = running.child.kill();
            let _ = running.child.wait();
            *sandbox = None;
        }
        let mut runtime = FakeRuntime::start(Vec::new()).await;
        let child = Command::new(&self.binary)
            .arg("lambda")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(environment.iter().cloned())
            .env("AWS_LAMBDA_RUNTIME_API", runtime.address())
            .env("AWS_LAMBDA_FUNCTION_NAME", "kit-service")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "live")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("failed to start `{} lambda`: {e}", self.binary.display()))?;
        // One task owns this sandbox's runtime: it queues events and routes
        // each outcome to the request waiting for it; it ends with the sandbox.
        let (push, mut pushed) = tokio::sync::mpsc::unbounded_channel::<(String, Value)>();
        let waiting = self.waiting.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = pushed.recv() => match event {
                        Some((id, event)) => runtime.push(id, event),
                        None => return,
                    },
                    outcome = runtime.next_outcome() => {
                        let waiter = waiting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&outcome.request_id);
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(outcome);
                        }
                    }
                }
            }
        });
        *sandbox = Some(Sandbox {
            child,
            environment,
            push: push.clone(),
        });
        Ok(push)
    }

    /// The exit status of a process that died; it is forgotten, so the
    /// next request starts a new one.
    async fn exited(&self) -> Option<std::process::ExitStatus> {
        let mut sandbox = self.sandbox.lock().await;
        let status = sandbox.as_mut()?.child.try_wait().ok().flatten()?;
        *sandbox = None;
        Some(status)
    }
}

/// The Function URL event of one HTTP request (payload format 2.0).
pub fn request_event(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    request_id: &str,
) -> Value {
    let mut merged: HashMap<String, String> = HashMap::new();
    for (name, value) in headers {
        let value = value.to_str().unwrap_or_default();
        merged
            .entry(name.as_str().to_ascii_lowercase())
            .and_modify(|have| {
                have.push(',');
                have.push_str(value);
            })
            .or_insert_with(|| value.to_string());
    }
    let user_agent = merged.get("user-agent").cloned().unwrap_or_default();
    json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": uri.path(),
        "rawQueryString": uri.query().unwrap_or_default(),
        "headers": merged,
        "requestContext": {
            "accountId": "anonymous",
            "apiId": "loopback",
            "domainName": "loopback.lambda-url.us-east-1.on.aws",
            "domainPrefix": "loopback",
            "http": {
                "method": method.as_str(),
                "path": uri.path(),
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": user_agent,
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": "01/Jan/2026:00:00:00 +0000",
            "timeEpoch": 1767225600000u64,
        },
        "body": base64::engine::general_purpose::STANDARD.encode(body),
        "isBase64Encoded": true,
    })
}

async fn invoke(
    State(front): State<Arc<Front>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let push = match front.sandbox().await {
        Ok(push) => push,
        Err(error) => return plain(StatusCode::BAD_GATEWAY, error),
    };
    let id = format!("front-{:08}", front.next_id.fetch_add(1, Ordering::Relaxed));
    let (sender, receiver) = oneshot::channel();
    front
        .waiting
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id.clone(), sender);
    let event = request_event(&method, &uri, &headers, &body, &id);
    if push.send((id, event)).is_err() {
        return plain(StatusCode::BAD_GATEWAY, "the fake runtime stopped".into());
    }
    // Wait for the answer, noticing a process that died (an init error
    // exits it) instead of waiting out the timeout.
    let mut receiver = receiver;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match tokio::time::timeout(std::time::Duration::from_millis(200), &mut receiver).await {
            Ok(Ok(outcome)) => return response_of(outcome),
            Ok(Err(_)) => {
                return plain(StatusCode::BAD_GATEWAY, "the fake runtime stopped".into());
            }
            Err(_) => {}
        }
        if let Some(status) = front.exited().await {
            return plain(
                StatusCode::BAD_GATEWAY,
                format!("the function process exited ({status}) before answering"),
            );
        }
        if tokio::time::Instant::now() >= deadline {
            return plain(
                StatusCode::GATEWAY_TIMEOUT,
                "the function did not answer within 60 s".into(),
            );
        }
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

/// The HTTP response of a function's answer: a `response` carries
/// `statusCode`, `headers`, `cookies`, `body`, `isBase64Encoded`; an
/// `error` is a 502, as a Function URL answers it.
fn response_of(outcome: Outcome) -> Response {
    if outcome.kind != "response" {
        return plain(StatusCode::BAD_GATEWAY, outcome.body.to_string());
    }
    let answer = &outcome.body;
    let Some(status) = answer["statusCode"].as_u64() else {
        // A bare JSON value is sent as the body with 200.
        return plain(StatusCode::OK, answer.to_string());
    };
    let text = answer["body"].as_str().unwrap_or_default();
    let body = if answer["isBase64Encoded"].as_bool() == Some(true) {
        match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(bytes) => bytes,
            Err(error) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("the function's body is not base64: {error}"),
                );
            }
        }
    } else {
        text.as_bytes().to_vec()
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::from_u16(status as u16).unwrap_or(StatusCode::BAD_GATEWAY);
    if let Some(headers) = answer["headers"].as_object() {
        for (name, value) in headers {
            if let (Ok(name), Some(Ok(value))) = (
                HeaderName::try_from(name.as_str()),
                value.as_str().map(HeaderValue::from_str),
            ) {
                response.headers_mut().append(name, value);
            }
        }
    }
    if let Some(cookies) = answer["cookies"].as_array() {
        for cookie in cookies.iter().filter_map(Value::as_str) {
            if let Ok(value) = HeaderValue::from_str(cookie) {
                response
                    .headers_mut()
                    .append(axum::http::header::SET_COOKIE, value);
            }
        }
    }
    response
}
