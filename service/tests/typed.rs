//! A protocol written the typed way (`#[kit_service::service]`, derived
//! structs): every method kind round-trips through the generated client over
//! real HTTP, and bad input sent to the router (`oneshot`, no socket) gets a
//! vgi-rpc error naming the parameter, the expected and the received type,
//! never a panic or a 500. A record as a whole parameter or result travels
//! as vgi-rpc's Python client sends a dataclass: `binary` holding an IPC
//! stream of one row; nested in a list or a record, it is a `struct`.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, Field, Fields, Schema};
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kit_service::client::ClientError;
use kit_service::http::{HttpConfig, Server, app};
use kit_service::rpc::Bytes;
use kit_service::rpc::value::{ArrowRecord, ArrowValue};
use kit_service::testing::TestServer;
use kit_service::token::{KeyRing, SigningKey};
use kit_service::wire::ipc::{StreamWriter, read_streams};
use kit_service::wire::tokens::{schema_text, type_token};
use kit_service::wire::{self, Metadata};
use kit_service::{Ctx, Exchange, LogLevel, Produce, RowExchanger, RowProducer, Rows, RpcError};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

/// One order line.
#[derive(kit_service::ArrowRecord, Debug, Clone, PartialEq)]
pub struct Order {
    pub item: String,
    pub quantity: i64,
    pub note: Option<String>,
    pub tags: Vec<String>,
}

/// What `place` answers.
#[derive(kit_service::ArrowRecord, Debug, Clone, PartialEq)]
pub struct Receipt {
    pub order: Order,
    pub priority: Option<i32>,
    pub total: f64,
}

#[derive(kit_service::ArrowRecord, Debug, Clone, PartialEq)]
pub struct Tick {
    pub index: u32,
    pub even: bool,
    pub payload: Vec<u8>,
}

#[derive(kit_service::ArrowRecord, Debug, Clone, PartialEq)]
pub struct TickHeader {
    pub total: u32,
    pub unit: String,
}

#[derive(kit_service::ArrowRecord, Debug, Clone, PartialEq)]
pub struct Sample {
    pub value: f64,
}

#[derive(kit_service::ArrowRecord, Debug, Clone, PartialEq)]
pub struct Scaled {
    pub value: f64,
    pub turn: i64,
}

#[derive(Serialize, Deserialize)]
pub struct Ticks {
    next: u32,
    total: u32,
}

impl RowProducer for Ticks {
    type Row = Tick;

    async fn produce(&mut self, out: &mut Rows<'_, Tick>, _ctx: &Ctx) -> Result<(), RpcError> {
        if self.next >= self.total {
            out.finish();
            return Ok(());
        }
        let index = self.next;
        out.emit(vec![Tick {
            index,
            even: index.is_multiple_of(2),
            payload: vec![index as u8; 3],
        }])?;
        self.next += 1;
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
pub struct Scale {
    factor: f64,
    turns: i64,
}

impl RowExchanger for Scale {
    type Input = Sample;
    type Row = Scaled;

    async fn exchange(
        &mut self,
        input: Vec<Sample>,
        out: &mut Rows<'_, Scaled>,
        _ctx: &Ctx,
    ) -> Result<(), RpcError> {
        self.turns += 1;
        let turn = self.turns;
        out.emit(
            input
                .into_iter()
                .map(|s| Scaled {
                    value: s.value * self.factor,
                    turn,
                })
                .collect(),
        )
    }
}

/// An order desk.
#[kit_service::service(name = "acme.Orders.v1", version = "2.1.0")]
pub trait Orders {
    /// Places an order and prices it.
    async fn place(
        &self,
        ctx: &Ctx,
        order: Order,
        priority: Option<i32>,
    ) -> Result<Receipt, RpcError>;

    /// Sums the quantities of several orders.
    async fn total(&self, orders: Vec<Order>) -> Result<i64, RpcError>;

    /// Echoes bytes both as `Vec<u8>` and as `Bytes`.
    async fn echo(&self, data: Vec<u8>, more: Bytes) -> Result<Vec<Vec<u8>>, RpcError>;

    /// Forgets everything (void, no parameters).
    async fn reset(&self, ctx: &Ctx) -> Result<(), RpcError>;

    /// `None` in, `None` out.
    async fn describe(&self, quantity: Option<i64>) -> Result<Option<String>, RpcError>;

    /// Raw identifiers keep their wire name.
    async fn r#type(&self, r#type: String) -> Result<String, RpcError>;

    /// A producer with a header.
    async fn ticks(&self, total: u32) -> Result<Produce<Ticks, TickHeader>, RpcError>;

    /// An exchange.
    async fn scale(&self, factor: f64) -> Result<Exchange<Scale>, RpcError>;
}

struct Desk;

impl Orders for Desk {
    async fn place(
        &self,
        ctx: &Ctx,
        order: Order,
        priority: Option<i32>,
    ) -> Result<Receipt, RpcError> {
        ctx.log(LogLevel::Info, format!("placing {}", order.item));
        let total = order.quantity as f64 * 2.5;
        Ok(Receipt {
            order,
            priority,
            total,
        })
    }

    async fn total(&self, orders: Vec<Order>) -> Result<i64, RpcError> {
        Ok(orders.iter().map(|o| o.quantity).sum())
    }

    async fn echo(&self, data: Vec<u8>, more: Bytes) -> Result<Vec<Vec<u8>>, RpcError> {
        Ok(vec![data, more.0])
    }

    async fn reset(&self, _ctx: &Ctx) -> Result<(), RpcError> {
        Ok(())
    }

    async fn describe(&self, quantity: Option<i64>) -> Result<Option<String>, RpcError> {
        Ok(quantity.map(|q| format!("{q} pieces")))
    }

    async fn r#type(&self, r#type: String) -> Result<String, RpcError> {
        Ok(r#type.to_uppercase())
    }

    async fn ticks(&self, total: u32) -> Result<Produce<Ticks, TickHeader>, RpcError> {
        Ok(Produce::with_header(
            Ticks { next: 0, total },
            TickHeader {
                total,
                unit: "tick".into(),
            },
        ))
    }

    async fn scale(&self, factor: f64) -> Result<Exchange<Scale>, RpcError> {
        Ok(Exchange::new(Scale { factor, turns: 0 }))
    }
}

fn order() -> Order {
    Order {
        item: "bolt".into(),
        quantity: 4,
        note: None,
        tags: vec!["steel".into(), "m8".into()],
    }
}

#[test]
fn schemas_are_generated_from_the_signatures() {
    let protocol = Desk.into_protocol();
    assert_eq!(protocol.name(), "acme.Orders.v1");
    assert_eq!(protocol.version(), Some("2.1.0"));
    let params = |name: &str| schema_text(protocol.method(name).unwrap().params());
    let result = |name: &str| {
        protocol
            .method(name)
            .unwrap()
            .result()
            .map(|s| schema_text(s))
    };
    let order = "struct<item:utf8,quantity:int64,note?:utf8,tags:list<item?:utf8>>";
    assert_eq!(params("place"), "order: binary, priority?: int32");
    assert_eq!(result("place").unwrap(), "result: binary");
    assert_eq!(
        type_token(&Receipt::data_type()),
        format!("struct<order:{order},priority?:int32,total:float64>")
    );
    assert_eq!(params("total"), format!("orders: list<item?:{order}>"));
    assert_eq!(params("echo"), "data: binary, more: binary");
    assert_eq!(result("echo").unwrap(), "result: list<item?:binary>");
    assert_eq!(params("reset"), "");
    assert_eq!(result("reset"), None);
    assert_eq!(result("describe").unwrap(), "result?: utf8");
    assert_eq!(params("type"), "type: utf8");
    let ticks = protocol.method("ticks").unwrap();
    assert_eq!(ticks.result(), None);
    assert_eq!(
        schema_text(ticks.header().unwrap()),
        "total: uint32, unit: utf8"
    );
    assert_eq!(
        protocol.method("place").unwrap().doc(),
        "Places an order and prices it."
    );
    assert_eq!(
        schema_text(&Tick::schema()),
        "index: uint32, even: bool, payload: binary"
    );
}

#[tokio::test]
async fn every_method_kind_roundtrips_through_the_typed_client() {
    let server = TestServer::start([Desk.into_protocol()]).await;
    let desk = OrdersClient::new(server.client().clone());

    let receipt = desk.place(order(), Some(2)).await.unwrap();
    assert_eq!(
        receipt,
        Receipt {
            order: order(),
            priority: Some(2),
            total: 10.0
        }
    );
    let second = Order {
        quantity: 6,
        note: Some("rush".into()),
        ..order()
    };
    assert_eq!(desk.total(vec![order(), second]).await.unwrap(), 10);
    assert_eq!(desk.total(vec![]).await.unwrap(), 0);
    assert_eq!(
        desk.echo(vec![1, 2], Bytes(vec![])).await.unwrap(),
        vec![vec![1, 2], vec![]]
    );
    desk.reset().await.unwrap();
    assert_eq!(desk.describe(None).await.unwrap(), None);
    assert_eq!(
        desk.describe(Some(3)).await.unwrap().as_deref(),
        Some("3 pieces")
    );
    assert_eq!(desk.r#type("abc".into()).await.unwrap(), "ABC");

    let mut ticks = desk.ticks(3).await.unwrap();
    assert_eq!(
        ticks.header(),
        &TickHeader {
            total: 3,
            unit: "tick".into()
        }
    );
    let first = ticks.next().await.unwrap().unwrap();
    assert_eq!(
        first,
        vec![Tick {
            index: 0,
            even: true,
            payload: vec![0; 3]
        }]
    );
    let rest = ticks.collect().await.unwrap();
    assert_eq!(rest.iter().map(|t| t.index).collect::<Vec<_>>(), [1, 2]);

    let mut scale = desk.scale(2.0).await.unwrap();
    let out = scale
        .exchange(vec![Sample { value: 1.5 }, Sample { value: -1.0 }])
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Scaled {
                value: 3.0,
                turn: 1
            },
            Scaled {
                value: -2.0,
                turn: 1
            }
        ]
    );
    let out = scale.exchange(vec![]).await.unwrap();
    assert!(out.is_empty());
    scale.close().await.unwrap();
}

#[tokio::test]
async fn method_errors_reach_the_typed_client() {
    let server = TestServer::start([kit_service::demo::protocol()]).await;
    let demo = kit_service::demo::DemoClient::new(server.client().clone());
    let error = demo.add(i64::MAX, 1).await.unwrap_err();
    let ClientError::Rpc(error) = error else {
        panic!("expected an rpc error, got {error:?}")
    };
    assert_eq!(error.error_type, "ValueError");
    assert!(
        error.message.contains("overflows int64"),
        "{}",
        error.message
    );
    assert_eq!(demo.greet("ada".into()).await.unwrap(), "hello, ada");
    let rows = demo.count(10, 4).await.unwrap().collect().await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.value).collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
}

// ---- bad input, through the router ----

fn router_server() -> Arc<Server> {
    Server::new(
        vec![Desk.into_protocol()],
        HttpConfig::default(),
        KeyRing::new(SigningKey::new(vec![7u8; 32]), vec![], 3600),
    )
}

fn request(method: &str, columns: Vec<(Field, ArrayRef)>) -> Request<Body> {
    request_to(method, columns)
}

fn request_to(method: &str, columns: Vec<(Field, ArrayRef)>) -> Request<Body> {
    let (fields, arrays): (Vec<Field>, Vec<ArrayRef>) = columns.into_iter().unzip();
    let schema = Arc::new(Schema::new(fields));
    let batch = batch_with_unchecked_nulls(schema.clone(), arrays);
    let metadata: Metadata = vec![
        (wire::METHOD_KEY.into(), method.into()),
        (wire::REQUEST_VERSION_KEY.into(), "1".into()),
        (wire::PROTOCOL_KEY.into(), "acme.Orders.v1".into()),
        (wire::PROTOCOL_VERSION_KEY.into(), "2.1.0".into()),
    ];
    let mut body = Vec::new();
    let mut writer = StreamWriter::new(&mut body, &schema).unwrap();
    writer.write(&batch, &metadata).unwrap();
    writer.finish();
    Request::post(format!("/acme.Orders.v1/{method}"))
        .header("content-type", wire::CONTENT_TYPE)
        .body(Body::from(body))
        .unwrap()
}

fn order_column(order: Order) -> (Field, ArrayRef) {
    (
        Order::top_level_field("order"),
        Order::top_level_to_column(vec![order]).unwrap(),
    )
}

/// The `order` parameter as the IPC stream of `batch` (any schema, any rows),
/// the way a client serializes a record.
fn order_bytes(bytes: Vec<u8>) -> (Field, ArrayRef) {
    (
        Field::new("order", DataType::Binary, false),
        Arc::new(BinaryArray::from(vec![bytes.as_slice()])),
    )
}

fn stream_of(batch: &RecordBatch) -> Vec<u8> {
    let mut body = Vec::new();
    let mut writer = StreamWriter::new(&mut body, &batch.schema()).unwrap();
    writer.write(batch, &Vec::new()).unwrap();
    writer.finish();
    body
}

fn priority_column(priority: Option<i32>) -> (Field, ArrayRef) {
    (
        Field::new("priority", DataType::Int32, true),
        Arc::new(Int32Array::from(vec![priority])),
    )
}

/// Sends a bad request; it must be answered (no 500) with `status` and a
/// `TypeError` whose message contains every one of `names`.
async fn check(request: Request<Body>, status: StatusCode, names: &[&str]) {
    check_with_type(request, status, "TypeError", names).await;
}

async fn check_with_type(
    request: Request<Body>,
    status: StatusCode,
    error_type: &str,
    names: &[&str],
) {
    let server = router_server();
    let response = app(server.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), status);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let error = read_streams(&body)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.batches)
        .find(|b| b.get(wire::LOG_LEVEL_KEY) == Some("EXCEPTION"))
        .expect("an error batch");
    let message = error.get(wire::LOG_MESSAGE_KEY).unwrap().to_string();
    assert!(message.starts_with(&format!("{error_type}: ")), "{message}");
    for name in names {
        assert!(message.contains(name), "{message:?} should name {name:?}");
    }
    // The server keeps serving.
    let ok = app(server)
        .oneshot(request_for_place(order()))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

fn request_for_place(order: Order) -> Request<Body> {
    request("place", vec![order_column(order), priority_column(None)])
}

const ORDER_TYPE: &str = "struct<item:utf8,quantity:int64,note?:utf8,tags:list<item?:utf8>>";

#[tokio::test]
async fn a_wrong_arrow_type_names_parameter_and_both_types() {
    let text: ArrayRef = Arc::new(StringArray::from(vec!["bolt"]));
    check(
        request(
            "place",
            vec![
                (Field::new("order", DataType::Utf8, false), text),
                priority_column(None),
            ],
        ),
        StatusCode::BAD_REQUEST,
        &["'order'", "binary", "carried utf8"],
    )
    .await;
    let wide: ArrayRef = Arc::new(Int64Array::from(vec![Some(1)]));
    check(
        request(
            "place",
            vec![
                order_column(order()),
                (Field::new("priority", DataType::Int64, true), wide),
            ],
        ),
        StatusCode::BAD_REQUEST,
        &["'priority'", "int32", "carried int64"],
    )
    .await;
}

#[tokio::test]
async fn a_missing_or_extra_argument_is_named() {
    check(
        request("place", vec![order_column(order())]),
        StatusCode::BAD_REQUEST,
        &[
            "expected 2 fields, got 1",
            "missing parameter 'priority' (int32)",
        ],
    )
    .await;
    let extra: ArrayRef = Arc::new(StringArray::from(vec!["x"]));
    check(
        request(
            "place",
            vec![
                order_column(order()),
                priority_column(Some(1)),
                (Field::new("coupon", DataType::Utf8, false), extra),
            ],
        ),
        StatusCode::BAD_REQUEST,
        &[
            "expected 2 fields, got 3",
            "unexpected parameter 'coupon' (utf8)",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_null_for_a_non_nullable_parameter_is_refused() {
    let null_order = Order::top_level_to_nullable_column(vec![None]).unwrap();
    check_with_type(
        request(
            "place",
            vec![
                (Order::top_level_field("order"), null_order),
                priority_column(None),
            ],
        ),
        // The Python reference's words for `None` passed to a required parameter.
        StatusCode::BAD_REQUEST,
        "TypeError",
        &["place() parameter 'order' is not optional but got None"],
    )
    .await;
}

#[tokio::test]
async fn a_null_inside_a_struct_names_the_field() {
    // `quantity` is non-nullable, yet this struct carries a null there: the
    // type token matches, so only the typed decoding can see it.
    let DataType::Struct(fields) = Order::data_type() else {
        unreachable!()
    };
    let children: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["bolt"])),
        Arc::new(Int64Array::from(vec![None::<i64>])),
        Arc::new(StringArray::from(vec![None::<&str>])),
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", DataType::Utf8, true)),
            OffsetBuffer::from_lengths([0]),
            Arc::new(StringArray::from(Vec::<&str>::new())),
            None,
        )),
    ];
    // Nested: `total` takes a list of orders, each a struct.
    let column = struct_with_unmasked_nulls(fields.clone(), children.clone());
    let orders: ArrayRef = Arc::new(ListArray::new(
        Arc::new(Field::new("item", Order::data_type(), true)),
        OffsetBuffer::from_lengths([1]),
        column,
        None,
    ));
    check_with_type(
        request_to("total", vec![(<Vec<Order>>::field("orders"), orders)]),
        StatusCode::BAD_REQUEST,
        "ArrowInvalid",
        &[
            "quantity",
            &format!("batch schema `orders: list<item?:{ORDER_TYPE}>`"),
        ],
    )
    .await;
    // Whole: the record's own one-row stream carries the null.
    let record = batch_with_unchecked_nulls(Arc::new(Schema::new(fields)), children);
    check(
        request(
            "place",
            vec![order_bytes(stream_of(&record)), priority_column(None)],
        ),
        StatusCode::OK,
        &["place() parameter `order`", ORDER_TYPE, "quantity"],
    )
    .await;
}

/// A batch as a lax client (pyarrow) may send it: a null is allowed to sit in
/// a column whose field says non-nullable; the server must refuse it cleanly.
#[allow(unsafe_code)]
fn batch_with_unchecked_nulls(schema: Arc<Schema>, columns: Vec<ArrayRef>) -> RecordBatch {
    assert!(columns.iter().all(|c| c.len() == 1));
    // SAFETY: one row per column, types as declared; only nullability is loose.
    unsafe { RecordBatch::new_unchecked(schema, columns, 1) }
}

#[allow(unsafe_code)]
fn struct_with_unmasked_nulls(fields: Fields, children: Vec<ArrayRef>) -> ArrayRef {
    // SAFETY: the children have the declared types and one row each; the
    // only broken invariant is the null in a non-nullable child, on purpose.
    Arc::new(unsafe { StructArray::new_unchecked(fields, children, None::<NullBuffer>) })
}

#[tokio::test]
async fn a_struct_missing_a_field_names_it() {
    let fields = Fields::from(vec![
        Field::new("item", DataType::Utf8, false),
        Field::new("quantity", DataType::Int64, false),
        Field::new("tags", <Vec<String>>::data_type(), false),
    ]);
    let partial = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        vec![
            Arc::new(StringArray::from(vec!["bolt"])),
            Arc::new(Int64Array::from(vec![1])),
            <Vec<String>>::to_column(vec![vec![]]).unwrap(),
        ],
    )
    .unwrap();
    check(
        request(
            "place",
            vec![order_bytes(stream_of(&partial)), priority_column(None)],
        ),
        StatusCode::OK,
        &["place() parameter `order`", "missing field `note`", "utf8"],
    )
    .await;
}

#[tokio::test]
async fn a_record_that_is_not_one_row_of_ipc_is_refused() {
    check(
        request(
            "place",
            vec![order_bytes(b"not arrow".to_vec()), priority_column(None)],
        ),
        StatusCode::OK,
        &[
            "place() parameter `order`",
            ORDER_TYPE,
            "not an Arrow IPC stream",
        ],
    )
    .await;
    let two = Order::to_batch(vec![order(), order()]).unwrap();
    check(
        request(
            "place",
            vec![order_bytes(stream_of(&two)), priority_column(None)],
        ),
        StatusCode::OK,
        &["place() parameter `order`", "2 rows in 1 batches"],
    )
    .await;
    let mut trailing = stream_of(&Order::to_batch(vec![order()]).unwrap());
    trailing.extend_from_slice(b"junk");
    check(
        request("place", vec![order_bytes(trailing), priority_column(None)]),
        StatusCode::OK,
        &["place() parameter `order`", "4 bytes after the stream"],
    )
    .await;
}

#[tokio::test]
async fn a_null_list_item_for_a_non_optional_rust_type_names_the_path() {
    // `list<item?: utf8>` is the Arrow type (as pyarrow spells `list[str]`),
    // so a null item is valid Arrow; only `Vec<String>` cannot hold it.
    let DataType::Struct(fields) = Order::data_type() else {
        unreachable!()
    };
    let tags = <Vec<Option<String>>>::to_column(vec![vec![Some("a".into()), None]]).unwrap();
    let record = RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        vec![
            Arc::new(StringArray::from(vec!["bolt"])),
            Arc::new(Int64Array::from(vec![1])),
            Arc::new(StringArray::from(vec![None::<&str>])),
            tags,
        ],
    )
    .unwrap();
    check(
        request(
            "place",
            vec![order_bytes(stream_of(&record)), priority_column(None)],
        ),
        StatusCode::OK,
        &["place() parameter `order`: field `tags`: row 0: item 1: null value for non-nullable `utf8`"],
    )
    .await;
}
