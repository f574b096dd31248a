//! `vgi_rpc.Reflection.v1` and the cross-port protocol hash.
//!
//! Reflection is an ordinary co-hosted protocol, exempt from the version gate.
//! Its results are nested IPC streams of upstream's dataclasses, so the schemas
//! below are spelled exactly as upstream's `ARROW_SCHEMA`.

use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, BooleanBuilder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, RecordBatch, StructArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sha2::{Digest, Sha256};

use crate::http::Server;
use crate::rpc::{Ctx, Protocol};
use crate::wire::ipc::{schema_message, stream_bytes};
use crate::wire::tokens::{parse_schema, type_token};
use crate::wire::{ErrorCode, RpcError};

pub const NAME: &str = "vgi_rpc.Reflection.v1";
const HASH_DOMAIN: &[u8] = b"vgi_rpc.protocol_hash.v1|";

const PROTOCOL_LIST: &str = "server_id: utf8, server_version: utf8, request_version: utf8, protocols: list<item?:struct<protocol:utf8,protocol_version:utf8,protocol_hash:utf8,deprecated:bool,deprecation_message:utf8,features:list<item?:utf8>>>";
const SERVICE_DESCRIPTION: &str = "protocol: utf8, protocol_version: utf8, protocol_hash: utf8, deprecated: bool, deprecation_message: utf8, features: list<item?:utf8>, methods: list<item?:struct<name:utf8,method_type:utf8,has_return:bool,has_header:bool,stream_kind:utf8,params_schema_ipc:binary,result_schema_ipc:binary,header_schema_ipc:binary,idempotency:utf8,deprecated:bool,deprecation_message:utf8>>";

/// The reflection protocol; its handlers read the hosting server from the context.
pub(crate) fn protocol() -> Protocol {
    Protocol::builder(NAME)
        .version_exempt()
        .unary(
            "list_protocols",
            "",
            "result: binary",
            |ctx, _args| async move { list_protocols(&ctx) },
        )
        .unary(
            "describe",
            "protocol: utf8",
            "result: binary",
            |ctx, args| async move {
                let name: String = args.get("protocol")?;
                describe(&ctx, &name)
            },
        )
        .build()
        .expect("the reflection protocol is well-formed")
}

tokio::task_local! {
    /// The server answering the current request, for reflection handlers.
    pub(crate) static CURRENT_SERVER: Arc<Server>;
}

fn server() -> Result<Arc<Server>, RpcError> {
    CURRENT_SERVER
        .try_with(|s| s.clone())
        .map_err(|_| RpcError::new("RuntimeError", "reflection called outside a server"))
}

fn single(schema: &str, columns: Vec<ArrayRef>) -> Result<crate::rpc::Bytes, RpcError> {
    let schema: SchemaRef = Arc::new(parse_schema(schema).expect("reflection schemas parse"));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(crate::rpc::Bytes(stream_bytes(&schema, &[batch])?))
}

fn string(value: &str) -> ArrayRef {
    Arc::new(arrow_array::StringArray::from(vec![value]))
}

fn empty_string_list(rows: usize) -> ListBuilder<StringBuilder> {
    let mut builder = ListBuilder::new(StringBuilder::new());
    for _ in 0..rows {
        builder.append(true);
    }
    builder
}

fn list_protocols(_ctx: &Ctx) -> Result<crate::rpc::Bytes, RpcError> {
    let server = server()?;
    let protocols: Vec<&Arc<Protocol>> = server.protocols().collect();
    let n = protocols.len();
    let names: ArrayRef = Arc::new(arrow_array::StringArray::from_iter_values(
        protocols.iter().map(|p| p.name.clone()),
    ));
    let versions: ArrayRef = Arc::new(arrow_array::StringArray::from_iter_values(
        protocols
            .iter()
            .map(|p| p.version.clone().unwrap_or_default()),
    ));
    let hashes: ArrayRef = Arc::new(arrow_array::StringArray::from_iter_values(
        protocols.iter().map(|p| server.protocol_hash(&p.name)),
    ));
    let deprecated: ArrayRef = Arc::new(arrow_array::BooleanArray::from(vec![false; n]));
    let messages: ArrayRef = Arc::new(arrow_array::StringArray::from_iter_values(
        std::iter::repeat_n("", n),
    ));
    let features: ArrayRef = Arc::new(empty_string_list(n).finish());
    let schema = parse_schema(PROTOCOL_LIST).expect("reflection schemas parse");
    let DataType::List(item) = schema.field(3).data_type().clone() else {
        unreachable!()
    };
    let DataType::Struct(fields) = item.data_type().clone() else {
        unreachable!()
    };
    let summaries = StructArray::try_new(
        fields,
        vec![names, versions, hashes, deprecated, messages, features],
        None,
    )?;
    let list = list_of(item, Arc::new(summaries));
    single(
        PROTOCOL_LIST,
        vec![
            string(&server.config().server_id),
            string(env!("CARGO_PKG_VERSION")),
            string(crate::wire::REQUEST_VERSION),
            list,
        ],
    )
}

fn list_of(item: Arc<Field>, values: ArrayRef) -> ArrayRef {
    let offsets = arrow_buffer::OffsetBuffer::from_lengths([values.len()]);
    Arc::new(arrow_array::ListArray::new(item, offsets, values, None))
}

fn describe(_ctx: &Ctx, name: &str) -> Result<crate::rpc::Bytes, RpcError> {
    let server = server()?;
    let Some(protocol) = server.protocols().find(|p| p.name == name) else {
        let hosted: Vec<String> = server
            .protocols()
            .map(|p| format!("'{}'", p.name))
            .collect();
        return Err(RpcError::new(
            "ProtocolNotSupportedError",
            format!(
                "This server does not host protocol '{name}'. Hosted: [{}].",
                hosted.join(", ")
            ),
        )
        .with_kind("protocol_not_supported")
        .with_code(ErrorCode::Unimplemented));
    };
    let schema = parse_schema(SERVICE_DESCRIPTION).expect("reflection schemas parse");
    let DataType::List(item) = schema.field(6).data_type().clone() else {
        unreachable!()
    };
    let DataType::Struct(fields) = item.data_type().clone() else {
        unreachable!()
    };
    let methods: Vec<_> = protocol.methods().collect();
    let mut names = StringBuilder::new();
    let mut types = StringBuilder::new();
    let mut has_return = BooleanBuilder::new();
    let mut has_header = BooleanBuilder::new();
    let mut kinds = StringBuilder::new();
    let mut params = BinaryBuilder::new();
    let mut results = BinaryBuilder::new();
    let mut headers = BinaryBuilder::new();
    let mut idempotency = StringBuilder::new();
    let mut deprecated = BooleanBuilder::new();
    let mut messages = StringBuilder::new();
    for method in &methods {
        names.append_value(&method.name);
        types.append_value(if method.is_stream() {
            "stream"
        } else {
            "unary"
        });
        has_return.append_value(method.result().is_some());
        has_header.append_value(method.header().is_some());
        kinds.append_value(method.stream_kind().map(|k| k.as_str()).unwrap_or(""));
        params.append_value(schema_message(&method.params));
        results.append_value(
            method
                .result()
                .map(|s| schema_message(s))
                .unwrap_or_default(),
        );
        headers.append_value(
            method
                .header()
                .map(|s| schema_message(s))
                .unwrap_or_default(),
        );
        idempotency.append_value("unknown");
        deprecated.append_value(false);
        messages.append_value("");
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(names.finish()),
        Arc::new(types.finish()),
        Arc::new(has_return.finish()),
        Arc::new(has_header.finish()),
        Arc::new(kinds.finish()),
        Arc::new(params.finish()),
        Arc::new(results.finish()),
        Arc::new(headers.finish()),
        Arc::new(idempotency.finish()),
        Arc::new(deprecated.finish()),
        Arc::new(messages.finish()),
    ];
    let method_structs = StructArray::try_new(fields, columns, None)?;
    single(
        SERVICE_DESCRIPTION,
        vec![
            string(&protocol.name),
            string(protocol.version.as_deref().unwrap_or("")),
            string(server.protocol_hash(&protocol.name)),
            Arc::new(arrow_array::BooleanArray::from(vec![false])),
            string(""),
            Arc::new(empty_string_list(1).finish()),
            list_of(item, Arc::new(method_structs)),
        ],
    )
}

/// `sha256("vgi_rpc.protocol_hash.v1|" + canonical_json(description))`, lowercase hex.
///
/// The description is `{"methods": [...], "protocol": NAME}` with one object
/// per method (`has_header`, `has_return`, `header`?, `name`, `params`,
/// `result`?, `type`) and one per field (`name`, `nullable`, `type`). Its
/// canonical JSON (RFC 8785: keys sorted, no whitespace; it holds only
/// strings, booleans, arrays and objects) is written straight into one buffer
/// in that key order, strings escaped by serde_json, rather than built as a
/// tree of JSON values first: the conformance service's hashes cost most of a
/// millisecond that way, a tenth of the time from process start to ready.
pub fn protocol_hash(protocol: &Protocol) -> String {
    let mut preimage = Vec::with_capacity(4096);
    preimage.extend_from_slice(b"{\"methods\":[");
    for (index, method) in protocol.methods().enumerate() {
        if index > 0 {
            preimage.push(b',');
        }
        preimage.extend_from_slice(b"{\"has_header\":");
        push_bool(&mut preimage, method.header().is_some());
        preimage.extend_from_slice(b",\"has_return\":");
        push_bool(&mut preimage, method.result().is_some());
        if let Some(header) = method.header() {
            preimage.extend_from_slice(b",\"header\":");
            push_fields(&mut preimage, header);
        }
        preimage.extend_from_slice(b",\"name\":");
        push_string(&mut preimage, &method.name);
        preimage.extend_from_slice(b",\"params\":");
        push_fields(&mut preimage, &method.params);
        if let Some(result) = method.result() {
            preimage.extend_from_slice(b",\"result\":");
            push_fields(&mut preimage, result);
        }
        preimage.extend_from_slice(if method.is_stream() {
            b",\"type\":\"stream\"}"
        } else {
            b",\"type\":\"unary\"}"
        });
    }
    preimage.extend_from_slice(b"],\"protocol\":");
    push_string(&mut preimage, &protocol.name);
    preimage.push(b'}');
    let mut hasher = Sha256::new();
    hasher.update(HASH_DOMAIN);
    hasher.update(&preimage);
    hex::encode(hasher.finalize())
}

/// A schema's fields as `[{"name": .., "nullable": .., "type": ..}, ..]`.
fn push_fields(out: &mut Vec<u8>, schema: &Schema) {
    out.push(b'[');
    for (index, field) in schema.fields().iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        push_string(out, field.name());
        out.extend_from_slice(b",\"nullable\":");
        push_bool(out, field.is_nullable());
        out.extend_from_slice(b",\"type\":");
        push_string(out, &type_token(field.data_type()));
        out.push(b'}');
    }
    out.push(b']');
}

fn push_bool(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// A JSON string, escaped as serde_json escapes it.
fn push_string(out: &mut Vec<u8>, value: &str) {
    serde_json::to_writer(&mut *out, value).expect("a string serializes into a Vec");
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeMap;

    use serde_json::{Value, json};

    /// The hash as first written: the description built as a tree of JSON
    /// values, which serde_json prints with sorted keys and no whitespace.
    fn hash_of_value_tree(protocol: &Protocol) -> String {
        let fields = |schema: &Schema| -> Value {
            schema
                .fields()
                .iter()
                .map(|f| json!({"name": f.name(), "nullable": f.is_nullable(), "type": type_token(f.data_type())}))
                .collect()
        };
        let methods: Vec<Value> = protocol
            .methods()
            .map(|method| {
                let mut entry = BTreeMap::new();
                entry.insert("name", json!(method.name));
                entry.insert(
                    "type",
                    json!(if method.is_stream() {
                        "stream"
                    } else {
                        "unary"
                    }),
                );
                entry.insert("has_return", json!(method.result().is_some()));
                entry.insert("has_header", json!(method.header().is_some()));
                entry.insert("params", fields(&method.params));
                if let Some(result) = method.result() {
                    entry.insert("result", fields(result));
                }
                if let Some(header) = method.header() {
                    entry.insert("header", fields(header));
                }
                json!(entry)
            })
            .collect();
        let preimage = json!({"protocol": protocol.name, "methods": methods}).to_string();
        let mut hasher = Sha256::new();
        hasher.update(HASH_DOMAIN);
        hasher.update(preimage.as_bytes());
        hex::encode(hasher.finalize())
    }

    #[test]
    fn the_written_preimage_hashes_as_the_value_tree_did() {
        let mut protocols = crate::conformance::protocols();
        protocols.push(protocol());
        protocols.push(crate::demo::protocol());
        for protocol in &protocols {
            assert!(protocol.methods().count() > 0, "{}", protocol.name);
            assert_eq!(
                protocol_hash(protocol),
                hash_of_value_tree(protocol),
                "{}",
                protocol.name
            );
        }
    }

    #[test]
    fn reflection_hash_matches_upstream() {
        // Captured from the 0.52.2 reference server's list_protocols.
        assert_eq!(
            protocol_hash(&protocol()),
            "3c7db4cae8cdfc93dc4a76e73b8b759e18e45e6a5811adba4e520366344b919a"
        );
    }
}
