//! `kit_service::client` against kit-service in-process
//! (`kit_service::testing::TestServer`, real sockets): the demo protocol,
//! compression both ways, API keys, pointers through the local store,
//! reflection, and a stream continued on a second replica.

use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use kit_service::client::{Client, ClientError, Compression, MethodKind};
use kit_service::testing::TestServer;
use kit_service::wire::{ErrorCode, LogLevel};

const DEMO: &str = "kit.Demo.v1";
const KEY: &str = "hex:5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592";

fn batch(columns: &[(&str, ArrayRef)]) -> RecordBatch {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, array)| Field::new(*name, array.data_type().clone(), false))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.iter().map(|(_, a)| a.clone()).collect(),
    )
    .unwrap()
}

fn int(value: i64) -> ArrayRef {
    Arc::new(Int64Array::from(vec![value]))
}

fn ints(batch: &RecordBatch) -> Vec<i64> {
    batch
        .column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec()
}

async fn add(client: &Client, a: i64, b: i64) -> Result<i64, ClientError> {
    let reply = client
        .unary(DEMO, "add", batch(&[("a", int(a)), ("b", int(b))]))
        .await?;
    Ok(ints(&reply.batch)[0])
}

#[tokio::test]
async fn unary_calls_return_results_logs_and_errors() {
    let server = TestServer::start([kit_service::demo::protocol()]).await;
    assert_eq!(add(server.client(), 40, 2).await.unwrap(), 42);

    let name: ArrayRef = Arc::new(StringArray::from(vec!["ada"]));
    let reply = server
        .client()
        .unary(DEMO, "greet", batch(&[("name", name)]))
        .await
        .unwrap();
    let text = reply
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(text.value(0), "hello, ada");
    assert_eq!(reply.logs.len(), 1);
    assert_eq!(reply.logs[0].level, LogLevel::Info);
    assert_eq!(reply.logs[0].message, "greeting ada");
    assert!(reply.location.is_none());

    let error = add(server.client(), i64::MAX, 1).await.unwrap_err();
    let rpc = error.rpc().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(rpc.error_type, "ValueError");
    assert_eq!(rpc.message, format!("{} + 1 overflows int64", i64::MAX));
    assert_eq!(rpc.status, http::StatusCode::OK);
}

#[tokio::test]
async fn client_mistakes_come_back_as_typed_errors() {
    let server = TestServer::start([kit_service::demo::protocol()]).await;
    let client = server.client();
    let error = client
        .unary(DEMO, "nope", batch(&[("a", int(1))]))
        .await
        .unwrap_err();
    let rpc = error.rpc().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(rpc.code, ErrorCode::Unimplemented);
    assert_eq!(rpc.status, http::StatusCode::NOT_FOUND);

    let wrong: ArrayRef = Arc::new(StringArray::from(vec!["1"]));
    let error = client
        .unary(DEMO, "add", batch(&[("a", wrong), ("b", int(1))]))
        .await
        .unwrap_err();
    let rpc = error.rpc().unwrap_or_else(|| panic!("{error:?}"));
    assert_eq!(rpc.error_type, "TypeError");
    assert_eq!(rpc.status, http::StatusCode::BAD_REQUEST);
    assert!(rpc.message.contains("'a'"), "{}", rpc.message);

    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let error = add(&Client::new(&unreachable).unwrap(), 1, 2)
        .await
        .unwrap_err();
    assert!(error.is_unreachable(), "{error:?}");
}

#[tokio::test]
async fn every_request_coding_is_understood() {
    let server = TestServer::start([kit_service::demo::protocol()]).await;
    for compression in [Compression::None, Compression::Zstd, Compression::Gzip] {
        let client = server.client().clone().with_compression(compression);
        assert_eq!(add(&client, 1, 2).await.unwrap(), 3, "{compression:?}");
    }
    // Large enough for the server to compress its answer (zstd, as accepted).
    let mut stream = server
        .client()
        .producer(
            DEMO,
            "count",
            batch(&[("n", int(50_000)), ("batch_rows", int(50_000))]),
        )
        .await
        .unwrap();
    let first = stream.next_batch().await.unwrap().unwrap();
    assert_eq!(first.num_rows(), 50_000);
    assert_eq!(ints(&first)[49_999], 49_999);
}

#[tokio::test]
async fn producers_stream_every_batch_then_end() {
    let server = TestServer::start([kit_service::demo::protocol()]).await;
    let mut stream = server
        .client()
        .producer(
            DEMO,
            "count",
            batch(&[("n", int(7)), ("batch_rows", int(3))]),
        )
        .await
        .unwrap();
    assert!(stream.header().is_none());
    let mut seen = Vec::new();
    while let Some(batch) = stream.next_batch().await.unwrap() {
        seen.push(ints(&batch));
    }
    assert_eq!(seen, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    assert!(stream.is_finished());
    assert!(stream.next_batch().await.unwrap().is_none());
}

#[tokio::test]
async fn the_api_key_is_sent_and_a_refusal_is_typed() {
    let server = TestServer::start_with_env(
        [kit_service::demo::protocol()],
        &[
            ("KIT_API_KEYS", "tests=s3cret-test-key"),
            ("KIT_REQUIRE_AUTH", "true"),
        ],
    )
    .await;
    let error = add(server.client(), 1, 2).await.unwrap_err();
    assert!(
        matches!(&error, ClientError::Unauthorized { reason, .. } if reason == "missing_credential"),
        "{error:?}"
    );
    let keyed = server.client().clone().with_api_key("s3cret-test-key");
    assert_eq!(add(&keyed, 1, 2).await.unwrap(), 3);
    // A client that learns the version through reflection: refused first,
    // then keyed, it asks again rather than remembering the refusal.
    let plain = Client::new(server.url()).unwrap();
    assert!(add(&plain, 1, 2).await.is_err());
    assert_eq!(
        add(&plain.with_api_key("s3cret-test-key"), 2, 2)
            .await
            .unwrap(),
        4
    );
}

#[tokio::test]
async fn large_results_are_fetched_from_the_local_store() {
    let server = TestServer::start_with_storage([kit_service::demo::protocol()], 4096).await;
    let mut stream = server
        .client()
        .producer(
            DEMO,
            "count",
            batch(&[("n", int(10_000)), ("batch_rows", int(10_000))]),
        )
        .await
        .unwrap();
    let rows = stream.next_batch().await.unwrap().unwrap();
    assert_eq!(ints(&rows), (0..10_000).collect::<Vec<_>>());

    // The probe's `external` always goes through storage: a unary pointer.
    let reply = server
        .client()
        .clone()
        .with_protocol_version(kit_service::probe::NAME, kit_service::probe::VERSION)
        .unary(
            kit_service::probe::NAME,
            "external",
            batch(&[("bytes", int(100_000)), ("seed", int(9))]),
        )
        .await
        .unwrap();
    let location = reply.location.expect("the result came back as a pointer");
    assert!(location.starts_with(server.url()), "{location}");
    let bytes = reply
        .batch
        .column(0)
        .as_any()
        .downcast_ref::<arrow_array::BinaryArray>()
        .unwrap();
    assert_eq!(bytes.value(0), kit_service::probe::pattern(100_000, 9));

    // A client that allows no loopback URL refuses the same pointer.
    let strict = Client::new(server.url())
        .unwrap()
        .with_protocol_version(kit_service::probe::NAME, kit_service::probe::VERSION);
    let error = strict
        .unary(
            kit_service::probe::NAME,
            "external",
            batch(&[("bytes", int(100)), ("seed", int(9))]),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Fetch(kit_service::storage::fetch::FetchError::Refused { .. })
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn reflection_lists_protocols_and_method_schemas() {
    let server = TestServer::start([kit_service::demo::protocol()]).await;
    let listed = server.client().list_protocols().await.unwrap();
    let names: Vec<&str> = listed.protocols.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["kit.Demo.v1", "vgi_rpc.Reflection.v1"]);
    let demo = server.client().describe(DEMO).await.unwrap();
    assert_eq!(demo.version, "1.0.0");
    let add_method = demo.method("add").unwrap();
    assert_eq!(add_method.kind, MethodKind::Unary);
    assert_eq!(add_method.params.field(0).name(), "a");
    assert_eq!(add_method.params.field(1).data_type(), &DataType::Int64);
    assert!(!add_method.params.field(0).is_nullable());
    assert_eq!(
        add_method.result.as_ref().unwrap().field(0).name(),
        "result"
    );
    assert_eq!(demo.method("count").unwrap().kind, MethodKind::Producer);
    assert!(demo.method("count").unwrap().result.is_none());
    // Both answers carry the protocol's hash (cached by the server), twice
    // the same: what a client pins to detect a changed protocol.
    let hash = kit_service::reflection::protocol_hash(&kit_service::demo::protocol());
    assert_eq!(hash.len(), 64, "{hash}");
    assert_eq!(demo.hash, hash);
    assert_eq!(listed.protocols[0].hash, hash);
    let again = server.client().describe(DEMO).await.unwrap();
    assert_eq!(again.hash, hash);
    let reflection = server
        .client()
        .describe("vgi_rpc.Reflection.v1")
        .await
        .unwrap();
    assert_eq!(reflection.hash.len(), 64, "{}", reflection.hash);
    assert_ne!(reflection.hash, hash);
    assert_eq!(listed.protocols[1].hash, reflection.hash);

    let error = server.client().describe("acme.Nope.v1").await.unwrap_err();
    assert_eq!(error.rpc().unwrap().error_type, "ProtocolNotSupportedError");

    // Without a declared version the client asks reflection for it.
    let plain = Client::new(server.url()).unwrap();
    assert_eq!(add(&plain, 2, 3).await.unwrap(), 5);
}

#[tokio::test]
async fn a_stream_moves_to_a_replica_sharing_the_key() {
    let settings = [("VGI_SIGNING_KEY", KEY)];
    let first = TestServer::start_with_env([kit_service::demo::protocol()], &settings).await;
    let second = TestServer::start_with_env([kit_service::demo::protocol()], &settings).await;
    let mut stream = first
        .client()
        .producer(
            DEMO,
            "count",
            batch(&[("n", int(4)), ("batch_rows", int(1))]),
        )
        .await
        .unwrap();
    assert_eq!(ints(&stream.next_batch().await.unwrap().unwrap()), [0]);
    // With the first replica gone, only the second can serve the next turns.
    drop(first);
    stream.move_to(second.client());
    let mut rest = Vec::new();
    while let Some(batch) = stream.next_batch().await.unwrap() {
        rest.extend(ints(&batch));
    }
    assert_eq!(rest, [1, 2, 3]);
}

/// Everything one demo protocol answers to a fixed set of calls, as text.
async fn demo_answers(protocol: kit_service::rpc::Protocol) -> Vec<String> {
    let server = TestServer::start([protocol]).await;
    let client = server.client();
    let mut answers = vec![
        format!("{:?}", add(client, 40, 2).await.map_err(|e| e.to_string())),
        format!(
            "{:?}",
            add(client, i64::MAX, 1).await.map_err(|e| e.to_string())
        ),
    ];
    let name: ArrayRef = Arc::new(StringArray::from(vec!["ada"]));
    let reply = client
        .unary(DEMO, "greet", batch(&[("name", name)]))
        .await
        .unwrap();
    answers.push(format!("{:?} {:?}", reply.batch, reply.logs));
    let sleep = client
        .unary(DEMO, "sleep", batch(&[("milliseconds", int(-1))]))
        .await
        .unwrap_err();
    answers.push(sleep.to_string());
    let mut stream = client
        .producer(
            DEMO,
            "count",
            batch(&[("n", int(5)), ("batch_rows", int(2))]),
        )
        .await
        .unwrap();
    while let Some(rows) = stream.next_batch().await.unwrap() {
        answers.push(format!("{:?}", ints(&rows)));
    }
    answers
}

#[tokio::test]
async fn typed_and_string_declared_demos_answer_alike() {
    let typed = demo_answers(kit_service::demo::protocol()).await;
    let strings = demo_answers(kit_service::demo::dynamic_protocol()).await;
    assert_eq!(typed, strings);
    assert_eq!(typed[0], "Ok(42)");
    assert_eq!(&typed[4..], ["[0, 1]", "[2, 3]", "[4]"]);
}
