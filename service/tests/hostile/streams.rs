//! Finding: active streams died at `KIT_TOKEN_TTL`. The call token is minted
//! once at `/init` and never re-issued (the protocol has clients echo the
//! first one), and its expiry was checked on every turn, so a stream that
//! kept turning failed one TTL after it started. The cursor token, minted
//! every turn, now carries the stream's liveness: a busy stream outlives the
//! TTL, an idle one still expires.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use kit_service::client::Client;
use kit_service::{Ctx, Output, Producer, Protocol, RpcError, StreamInit};

use crate::support::{Posted, call_metadata, in_process, in_process_serving, ipc_body, post_arrow};

/// `KIT_TOKEN_TTL` of these tests; tokens carry whole seconds, so a token
/// is refused 2-3 s after it was minted.
const TTL: &str = "2";
const TURN_GAP: Duration = Duration::from_millis(700);

fn count(value: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::Int64,
        false,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![value]))]).unwrap()
}

fn value(value: f64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "value",
        DataType::Float64,
        false,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(vec![value]))]).unwrap()
}

#[tokio::test]
async fn a_producer_that_keeps_turning_outlives_the_token_ttl() {
    let service = in_process(&[("KIT_TOKEN_TTL", TTL)]).await;
    let client = Client::new(&service.url).unwrap();
    let started = Instant::now();
    let mut stream = client
        .producer(kit_service::conformance::NAME, "produce_n", count(9))
        .await
        .unwrap();
    let mut rows = 0;
    while let Some(batch) = stream.next_batch().await.unwrap_or_else(|error| {
        panic!(
            "turn failed after {:?} (TTL {TTL} s): {error}",
            started.elapsed()
        )
    }) {
        rows += batch.num_rows();
        tokio::time::sleep(TURN_GAP).await;
    }
    let elapsed = started.elapsed();
    eprintln!("producer: {rows} rows over {elapsed:?} with KIT_TOKEN_TTL={TTL}");
    assert_eq!(rows, 9);
    assert!(elapsed > Duration::from_secs(5), "ran only {elapsed:?}");
}

#[tokio::test]
async fn an_exchange_that_keeps_turning_outlives_the_token_ttl() {
    let service = in_process(&[("KIT_TOKEN_TTL", TTL)]).await;
    let client = Client::new(&service.url).unwrap();
    let started = Instant::now();
    let mut stream = client
        .exchange(
            kit_service::conformance::NAME,
            "exchange_accumulate",
            kit_service::client::no_params(),
        )
        .await
        .unwrap();
    let mut turns = 0i64;
    while started.elapsed() < Duration::from_millis(5500) {
        let output = stream.exchange(value(1.0)).await.unwrap_or_else(|error| {
            panic!(
                "turn {turns} failed after {:?} (TTL {TTL} s): {error}",
                started.elapsed()
            )
        });
        turns += 1;
        let exchanged = output
            .column_by_name("exchange_count")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(exchanged, turns);
        tokio::time::sleep(TURN_GAP).await;
    }
    eprintln!(
        "exchange: {turns} turns over {:?} with KIT_TOKEN_TTL={TTL}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_idle_stream_still_expires_with_a_clear_error() {
    let service = in_process(&[("KIT_TOKEN_TTL", TTL)]).await;
    let client = Client::new(&service.url).unwrap();
    let mut stream = client
        .producer(kit_service::conformance::NAME, "produce_n", count(5))
        .await
        .unwrap();
    stream.next_batch().await.unwrap().expect("the first batch");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let error = stream
        .next_batch()
        .await
        .expect_err("a turn after an idle TTL is refused");
    let rpc = error
        .rpc()
        .unwrap_or_else(|| panic!("an error batch: {error}"));
    assert_eq!(rpc.message, "State token expired", "{error}");
}

/// Publishes one batch to external storage on every turn and emits its URL.
#[derive(serde::Serialize, serde::Deserialize)]
struct PublishEachTurn {
    turns: i64,
    done: i64,
}

impl Producer for PublishEachTurn {
    async fn produce(&mut self, out: &mut Output, ctx: &Ctx) -> Result<(), RpcError> {
        if self.done == self.turns {
            out.finish();
            return Ok(());
        }
        let published = count(self.done);
        let reference = ctx.publish(published, false).await?;
        out.emit(RecordBatch::try_new(
            out.schema().clone(),
            vec![Arc::new(StringArray::from(vec![reference.location]))],
        )?)?;
        self.done += 1;
        Ok(())
    }
}

fn location_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "location",
        DataType::Utf8,
        false,
    )]))
}

#[tokio::test]
async fn every_stream_turn_has_the_storage_the_first_had() {
    let protocol = Protocol::builder("Publisher")
        .version("1.0.0")
        .producer(
            "publish_each_turn",
            "turns: int64",
            "",
            |_ctx, args| async move {
                let state = PublishEachTurn {
                    turns: args.get("turns")?,
                    done: 0,
                };
                Ok(StreamInit::new(location_schema(), state))
            },
        )
        .build()
        .unwrap();
    let service = in_process_serving(vec![protocol], &[]).await;
    let client = Client::new(&service.url).unwrap();
    let params = {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "turns",
            DataType::Int64,
            false,
        )]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![3]))]).unwrap()
    };
    let mut stream = client
        .producer("Publisher", "publish_each_turn", params)
        .await
        .unwrap();
    let mut locations = Vec::new();
    while let Some(batch) = stream
        .next_batch()
        .await
        .unwrap_or_else(|error| panic!("turn {} failed: {error}", locations.len() + 1))
    {
        let column = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        locations.push(column.value(0).to_string());
    }
    assert_eq!(locations.len(), 3, "{locations:?}");
    for location in &locations {
        assert!(location.contains("/__objects__/"), "{location}");
        let answer = crate::support::client().get(location).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{location}");
    }
}

/// Publishes each input batch to external storage and emits its URL.
#[derive(serde::Serialize, serde::Deserialize)]
struct PublishEachInput;

impl kit_service::Exchanger for PublishEachInput {
    async fn exchange(
        &mut self,
        input: RecordBatch,
        out: &mut Output,
        ctx: &Ctx,
    ) -> Result<(), RpcError> {
        let reference = ctx.publish(input, false).await?;
        out.emit(RecordBatch::try_new(
            out.schema().clone(),
            vec![Arc::new(StringArray::from(vec![reference.location]))],
        )?)
    }
}

/// Finding: an exchange turn whose input arrived as a `vgi_rpc.location`
/// pointer ran the method with a context rebuilt without the server's
/// storage, so `ctx.publish` answered "no external storage configured" on
/// exactly the turns that carried large inputs.
#[tokio::test]
async fn an_exchange_turn_with_a_pointer_input_has_the_storage_an_inline_one_has() {
    use kit_service::wire;
    let protocol =
        Protocol::builder("Publisher")
            .version("1.0.0")
            .exchange("publish_each_input", "", "", |_ctx, _args| async move {
                Ok(StreamInit::new(location_schema(), PublishEachInput)
                    .with_input(value(0.0).schema()))
            })
            .build()
            .unwrap();
    let service = in_process_serving(vec![protocol], &[]).await;
    let base = format!("{}/Publisher/publish_each_input", service.url);
    let init = post_arrow(
        &format!("{base}/init"),
        ipc_body(
            &kit_service::client::no_params(),
            &call_metadata("Publisher", "1.0.0", "publish_each_input"),
        ),
        &[],
    )
    .await;
    assert_eq!(init.status, 200, "{:?}", init.exception());
    let token = |posted: &Posted, key: &str| {
        posted
            .first(key)
            .unwrap_or_else(|| panic!("no `{key}` in the answer"))
    };
    let call = token(&init, wire::CALL_STATE_KEY);
    let mut state = token(&init, wire::STATE_KEY);
    let location_of = |posted: &Posted| {
        assert_eq!(posted.status, 200);
        let data = posted
            .batches()
            .find(|batch| batch.batch.num_rows() == 1)
            .unwrap_or_else(|| panic!("no output row; error: {:?}", posted.exception()));
        data.batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .value(0)
            .to_string()
    };

    // Turn 1: the input inline; the method stores it and answers its URL.
    let turn = post_arrow(
        &format!("{base}/exchange"),
        ipc_body(
            &value(2.5),
            &vec![
                (wire::STATE_KEY.into(), state.clone()),
                (wire::CALL_STATE_KEY.into(), call.clone()),
            ],
        ),
        &[],
    )
    .await;
    let stored = location_of(&turn);
    assert!(stored.contains("/__objects__/"), "{stored}");
    state = token(&turn, wire::STATE_KEY);

    // Turn 2: the same input as a pointer to what turn 1 stored.
    let pointer = RecordBatch::new_empty(value(0.0).schema());
    let turn = post_arrow(
        &format!("{base}/exchange"),
        ipc_body(
            &pointer,
            &vec![
                (wire::STATE_KEY.into(), state),
                (wire::CALL_STATE_KEY.into(), call),
                (wire::LOCATION_KEY.into(), stored.clone()),
            ],
        ),
        &[],
    )
    .await;
    let restored = location_of(&turn);
    assert!(restored.contains("/__objects__/"), "{restored}");
    assert_ne!(restored, stored, "each turn publishes its own object");
    let fetched = crate::support::client()
        .get(&restored)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200, "{restored}");
    let body = fetched.bytes().await.unwrap();
    let streams = wire::ipc::read_streams(&body).unwrap();
    let batch = &streams[0].batches[0].batch;
    let column = batch
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    assert_eq!(
        column.value(0),
        2.5,
        "the pointer's input reached the method"
    );
}
