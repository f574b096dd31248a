//! Fuzzes everything a request body reaches before method code: content
//! decoding, IPC framing, metadata and schema validation, token parsing.
//! The first byte picks the route and content coding; the rest is the body.
//! A crash, a panic that escapes to a worker or a hang here is a bug; any
//! HTTP status is fine.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use http::Request;
use kit_service::http::{HttpConfig, Server, app};
use kit_service::token::{KeyRing, SigningKey};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

fn server() -> &'static (tokio::runtime::Runtime, Arc<Server>) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Arc<Server>)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut protocols = kit_service::conformance::protocols();
        protocols.push(kit_service::demo::protocol());
        let config = HttpConfig { max_request_bytes: Some(1 << 20), ..HttpConfig::default() };
        let server = Server::new(protocols, config, KeyRing::new(SigningKey::new(vec![7; 32]), vec![], 3600));
        (runtime, server)
    })
}

const ROUTES: &[&str] = &[
    "/kit.Demo.v1/add",
    "/kit.Demo.v1/count/init",
    "/kit.Demo.v1/count/exchange",
    "/ConformanceService/echo_all_types",
    "/ConformanceService/exchange_scale/exchange",
    "/ConformanceService/produce_n/init",
    "/vgi_rpc.Reflection.v1/describe",
];

/// libFuzzer's panic hook aborts before unwinding, which would also abort on
/// the panics kit-service contains on purpose (arrow-ipc asserts on some
/// malformed buffers; `wire::ipc` turns those into a 400). Keep aborting on
/// every other panic.
fn abort_only_on_uncontained_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !kit_service::wire::ipc::panic_is_contained() {
                abort(info);
            }
        }));
    });
}

fuzz_target!(|data: &[u8]| {
    abort_only_on_uncontained_panics();
    let Some((&selector, body)) = data.split_first() else { return };
    // Raw IPC parsing on its own, then the whole request path.
    let _ = kit_service::wire::ipc::read_streams(&bytes::Bytes::copy_from_slice(body));
    let route = ROUTES[(selector as usize) % ROUTES.len()];
    let encoding = match selector >> 6 {
        1 => Some("zstd"),
        2 => Some("gzip"),
        _ => None,
    };
    let mut request = Request::post(route).header("content-type", "application/vnd.apache.arrow.stream");
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let request = request.body(Body::from(body.to_vec())).unwrap();
    let (runtime, server) = server();
    let response = runtime.block_on(app(server.clone()).oneshot(request)).unwrap();
    assert!(response.headers().contains_key("vgi-accept-max-response-bytes-support"));
});
