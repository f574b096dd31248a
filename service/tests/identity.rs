//! `vgi_rpc.Identity.v2` over the router (`oneshot`): absent by default,
//! hosted by `KIT_GRANT_KEYS` or a host's hooks, sealed grants accepted as
//! bearers after the API keys (and refused with upstream's reasons when
//! tampered, expired or sealed with a key the deployment does not hold),
//! introspection only for allowlisted callers, a resolver outage a 503.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kit_service::config::Config;
use kit_service::http::auth::now_unix_seconds;
use kit_service::http::{Server, app};
use kit_service::identity::grant::{GrantKeys, mint_grant_token};
use kit_service::identity::{HookError, Identity, PROTOCOL_NAME, TokenIdentity};
use kit_service::serve::{build_server, host_identity};
use kit_service::wire::ipc::{StreamWriter, read_streams, read_whole_stream};
use kit_service::wire::tokens::parse_schema;
use kit_service::wire::{self, Metadata};
use tower::ServiceExt;

const KEY: [u8; 32] = [0x42; 32];
const API_KEYS: &str = "proxy=proxy-key-123,ci=ci-key-456";

fn config(vars: &[(&str, &str)]) -> Config {
    let env: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_env(&env, "127.0.0.1:0".parse().unwrap()).expect("valid test config")
}

/// The server `kit-service serve` would build for `vars` and the host's `identity`.
fn server(vars: &[(&str, &str)], identity: Option<Identity>) -> Arc<Server> {
    let config = config(vars);
    let mut protocols = vec![kit_service::demo::protocol()];
    let authenticator = host_identity(&config, &mut protocols, None, identity);
    let mut server = build_server(&config, protocols, "");
    if let Some(authenticator) = authenticator {
        server = server.with_authenticator(authenticator);
    }
    server.hosting().readiness.set_ready();
    server
}

fn grant_env() -> String {
    base64::engine::general_purpose::STANDARD.encode(KEY)
}

fn request(
    protocol: &str,
    method: &str,
    schema: &str,
    columns: Vec<ArrayRef>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let schema = Arc::new(parse_schema(schema).unwrap());
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let mut metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), protocol.into()),
    ];
    if protocol == "kit.Demo.v1" {
        metadata.push((wire::PROTOCOL_VERSION_KEY.into(), "1.0.0".into()));
    }
    let mut body = Vec::new();
    let mut writer = StreamWriter::new(&mut body, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    let mut request =
        Request::post(format!("/{protocol}/{method}")).header("content-type", wire::CONTENT_TYPE);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Body::from(body)).unwrap()
}

fn add(headers: &[(&str, &str)]) -> Request<Body> {
    request(
        "kit.Demo.v1",
        "add",
        "a: int64, b: int64",
        vec![
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(Int64Array::from(vec![2])),
        ],
        headers,
    )
}

fn introspect(token: &str, headers: &[(&str, &str)]) -> Request<Body> {
    request(
        PROTOCOL_NAME,
        "introspect_token",
        "token: utf8",
        vec![Arc::new(StringArray::from(vec![token]))],
        headers,
    )
}

fn issue_grant(headers: &[(&str, &str)]) -> Request<Body> {
    let mut scopes = ListBuilder::new(StringBuilder::new());
    scopes.values().append_value("read");
    scopes.append(true);
    request(
        PROTOCOL_NAME,
        "issue_grant",
        "purpose: utf8, scopes: list<item?:utf8>, ttl_seconds: int64",
        vec![
            Arc::new(StringArray::from(vec!["nightly"])),
            Arc::new(scopes.finish()),
            Arc::new(Int64Array::from(vec![600])),
        ],
        headers,
    )
}

async fn send(
    server: &Arc<Server>,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = app(server.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

/// The `error_kind` of a 200 answer, or `None` for a result.
fn error_kind(body: &Bytes) -> Option<String> {
    read_streams(body)
        .unwrap()
        .iter()
        .flat_map(|stream| stream.batches.iter())
        .find_map(|batch| batch.get(wire::ERROR_KIND_KEY).map(str::to_string))
}

/// The one-row record in the `result` cell of a 200 answer.
fn result_record(body: &Bytes) -> RecordBatch {
    let streams = read_streams(body).unwrap();
    let batch = &streams[0]
        .batches
        .iter()
        .find(|b| b.batch.num_rows() == 1)
        .expect("a result row")
        .batch;
    let cell = batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::BinaryArray>()
        .unwrap()
        .value(0);
    read_whole_stream(cell).unwrap().batches[0].batch.clone()
}

fn text(record: &RecordBatch, column: &str) -> String {
    record
        .column_by_name(column)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .value(0)
        .to_string()
}

fn mint(keys: &GrantKeys, now: i64, ttl: i64) -> String {
    mint_grant_token(
        keys,
        "ann",
        &["read".into()],
        "nightly",
        ttl,
        now,
        None,
        None,
    )
    .unwrap()
    .0
}

#[tokio::test]
async fn identity_is_absent_by_default() {
    let server = server(&[("KIT_API_KEYS", API_KEYS)], None);
    assert!(!server.hosts(PROTOCOL_NAME, None));
    let (status, _, _) = send(&server, issue_grant(&[("x-api-key", "ci-key-456")])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // An empty configuration hosts nothing either.
    let server = self::server(&[], Some(Identity::builder().build().unwrap()));
    assert!(!server.hosts(PROTOCOL_NAME, None));
}

#[tokio::test]
async fn grant_keys_host_issue_grant_only_and_grants_authenticate_after_api_keys() {
    let env = grant_env();
    let server = server(
        &[
            ("KIT_API_KEYS", API_KEYS),
            ("KIT_GRANT_KEYS", &env),
            ("KIT_GRANT_AUDIENCE", "acme"),
        ],
        None,
    );
    assert!(server.hosts(PROTOCOL_NAME, Some("issue_grant")));
    assert!(!server.hosts(PROTOCOL_NAME, Some("introspect_token")));
    let keys = GrantKeys::new(vec![KEY], "acme", 604_800).unwrap();
    let now = now_unix_seconds();

    // API keys still work, and a grant minted with the deployment's key is a bearer.
    assert_eq!(
        send(&server, add(&[("x-api-key", "ci-key-456")])).await.0,
        StatusCode::OK
    );
    let grant = format!("Bearer {}", mint(&keys, now, 600));
    assert_eq!(
        send(&server, add(&[("authorization", &grant)])).await.0,
        StatusCode::OK
    );

    // A static API key proves no recent login, and a grant never mints a grant.
    for headers in [
        [("x-api-key", "ci-key-456")],
        [("authorization", grant.as_str())],
    ] {
        let (status, _, body) = send(&server, issue_grant(&headers)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(error_kind(&body).as_deref(), Some("stale_auth"));
    }
}

#[tokio::test]
async fn bad_grants_are_refused_with_upstreams_reasons_and_never_fall_through() {
    let env = grant_env();
    let server = server(
        &[("KIT_API_KEYS", API_KEYS), ("KIT_GRANT_KEYS", &env)],
        None,
    );
    let keys = GrantKeys::new(vec![KEY], "", 604_800).unwrap();
    let now = now_unix_seconds();
    let good = mint(&keys, now, 600);
    let middle = good.len() - 10;
    let swapped = if &good[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    let tampered = format!("{}{swapped}{}", &good[..middle], &good[middle + 1..]);
    let stranger = mint(
        &GrantKeys::new(vec![[0x77; 32]], "", 604_800).unwrap(),
        now,
        600,
    );
    let elsewhere = mint(
        &GrantKeys::new(vec![KEY], "elsewhere", 604_800).unwrap(),
        now,
        600,
    );
    let expired = mint(&keys, now - 3000, 60);
    for (token, reason) in [
        (tampered, "invalid_credential"),
        (stranger, "invalid_credential"),
        (elsewhere, "invalid_credential"),
        (format!("{good}="), "invalid_credential"),
        (expired, "expired_credential"),
    ] {
        let (status, headers, _) = send(
            &server,
            add(&[("authorization", &format!("Bearer {token}"))]),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(headers["vgi-auth-reason"], reason, "{token}");
    }
}

fn resolving_identity() -> Identity {
    Identity::builder()
        .resolve_token(&["proxy"], |token| match token {
            "down" => Err(HookError::Unavailable {
                detail: "store down".into(),
                retry_after: 9,
            }),
            "unknown" => Ok(None),
            _ => Ok(Some(
                TokenIdentity::new("subject").with_token_name("opaque"),
            )),
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn introspection_answers_allowlisted_callers_only() {
    let server = server(
        &[("KIT_API_KEYS", API_KEYS), ("KIT_REQUIRE_AUTH", "false")],
        Some(resolving_identity()),
    );
    let (status, _, body) = send(
        &server,
        introspect("opaque-token", &[("x-api-key", "proxy-key-123")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let record = result_record(&body);
    assert_eq!(
        (text(&record, "principal"), text(&record, "token_name")),
        ("subject".into(), "opaque".into())
    );

    for headers in [vec![("x-api-key", "ci-key-456")], vec![]] {
        let (status, _, body) = send(&server, introspect("opaque-token", &headers)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            error_kind(&body).as_deref(),
            Some("introspection_refused"),
            "{headers:?}"
        );
    }
    let (_, _, body) = send(
        &server,
        introspect("a.b.c", &[("x-api-key", "proxy-key-123")]),
    )
    .await;
    assert_eq!(error_kind(&body).as_deref(), Some("token_unresolved"));
}

#[tokio::test]
async fn resolved_bearers_authenticate_and_an_outage_is_503_not_401() {
    let env = grant_env();
    let server = server(
        &[("KIT_API_KEYS", API_KEYS), ("KIT_GRANT_KEYS", &env)],
        Some(resolving_identity()),
    );
    assert_eq!(
        send(&server, add(&[("authorization", "Bearer opaque")]))
            .await
            .0,
        StatusCode::OK
    );
    // A grant-shaped bearer that does not verify stops at the verifier: the
    // resolver would have accepted it.
    let keys = GrantKeys::new(vec![[0x77; 32]], "", 604_800).unwrap();
    let stranger = format!("Bearer {}", mint(&keys, now_unix_seconds(), 600));
    assert_eq!(
        send(&server, add(&[("authorization", &stranger)])).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, headers, _) = send(&server, add(&[("authorization", "Bearer unknown")])).await;
    assert_eq!(
        (status, headers["vgi-auth-reason"].to_str().unwrap()),
        (StatusCode::UNAUTHORIZED, "invalid_credential")
    );
    // A JWS is never routed to the resolver, which would have accepted it.
    let (status, _, _) = send(&server, add(&[("authorization", "Bearer a.b.c")])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, headers, _) = send(&server, add(&[("authorization", "Bearer down")])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "9");
    // Without any credential the API keys still decide.
    let (status, headers, _) = send(&server, add(&[])).await;
    assert_eq!(
        (status, headers["vgi-auth-reason"].to_str().unwrap()),
        (StatusCode::UNAUTHORIZED, "missing_credential")
    );
}
