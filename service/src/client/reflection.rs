//! What a server hosts, through `vgi_rpc.Reflection.v1`: its protocols, and
//! each protocol's methods with their parameter, result and header schemas.
//! Both answers are nested IPC streams of upstream's dataclasses (see
//! [`crate::reflection`] for the server side).

use arrow_array::cast::AsArray;
use arrow_array::{Array, RecordBatch, StructArray};
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;

use super::{Client, ClientError, no_params, protocol_error};
use crate::reflection::NAME;
use crate::wire::ipc::{read_schema_message, read_stream};

/// The answer of `list_protocols`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerDescription {
    /// The server's id (`vgi_rpc.server_id`).
    pub server_id: String,
    /// The server software's version.
    pub server_version: String,
    /// The wire's request version (`1`).
    pub request_version: String,
    /// Every listed protocol (operational ones such as `kit.Probe.v1` are not listed).
    pub protocols: Vec<ProtocolSummary>,
}

/// One protocol of [`ServerDescription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolSummary {
    /// The routing name, e.g. `kit.Demo.v1`.
    pub name: String,
    /// Its declared version, `""` when none.
    pub version: String,
    /// The cross-port protocol hash.
    pub hash: String,
}

/// What kind of call a method takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// One request, one result.
    Unary,
    /// A stream of batches from the server.
    Producer,
    /// One output batch per input batch.
    Exchange,
}

impl MethodKind {
    /// `unary`, `producer` or `exchange`.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Unary => "unary",
            MethodKind::Producer => "producer",
            MethodKind::Exchange => "exchange",
        }
    }
}

/// One method of a [`ProtocolDescription`].
#[derive(Debug, Clone, PartialEq)]
pub struct MethodDescription {
    /// The method name.
    pub name: String,
    /// Unary, producer or exchange.
    pub kind: MethodKind,
    /// One field per parameter, in order, with types and nullability.
    pub params: SchemaRef,
    /// `result: <type>` of a unary method; `None` for void methods and streams.
    pub result: Option<SchemaRef>,
    /// The stream header's schema, when the method declares one.
    pub header: Option<SchemaRef>,
}

/// The answer of `describe(protocol)`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProtocolDescription {
    /// The routing name.
    pub name: String,
    /// Its declared version, `""` when none.
    pub version: String,
    /// The cross-port protocol hash.
    pub hash: String,
    /// Its methods, as the server lists them.
    pub methods: Vec<MethodDescription>,
}

impl ProtocolDescription {
    /// The method called `name`.
    pub fn method(&self, name: &str) -> Option<&MethodDescription> {
        self.methods.iter().find(|m| m.name == name)
    }
}

impl Client {
    /// `vgi_rpc.Reflection.v1/list_protocols`: the protocols this server hosts.
    pub async fn list_protocols(&self) -> Result<ServerDescription, ClientError> {
        list_protocols(self).await
    }

    /// `vgi_rpc.Reflection.v1/describe`: the methods of `protocol` with their schemas.
    pub async fn describe(&self, protocol: &str) -> Result<ProtocolDescription, ClientError> {
        let schema = std::sync::Arc::new(Schema::new(vec![arrow_schema::Field::new(
            "protocol",
            arrow_schema::DataType::Utf8,
            false,
        )]));
        let params = RecordBatch::try_new(
            schema,
            vec![std::sync::Arc::new(arrow_array::StringArray::from(vec![
                protocol,
            ]))],
        )
        .map_err(|e| ClientError::Encode(e.to_string()))?;
        let url = self.url(NAME, "describe", None);
        let batch = nested(&url, self.unary(NAME, "describe", params).await?.batch)?;
        let bad = |what: &str| protocol_error(&url, format!("describe: {what}"));
        let text = |name: &str| -> Result<String, ClientError> {
            let column = batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad(&format!("no string column `{name}`")))?;
            Ok(column.value(0).to_string())
        };
        let methods_column = batch
            .column_by_name("methods")
            .and_then(|c| c.as_list_opt::<i32>())
            .ok_or_else(|| bad("no list column `methods`"))?;
        let entries = methods_column.value(0);
        let entries = entries
            .as_struct_opt()
            .ok_or_else(|| bad("`methods` is not a list of structs"))?;
        let mut methods = Vec::with_capacity(entries.len());
        for row in 0..entries.len() {
            methods.push(method(entries, row).map_err(|what| bad(&what))?);
        }
        Ok(ProtocolDescription {
            name: text("protocol")?,
            version: text("protocol_version")?,
            hash: text("protocol_hash")?,
            methods,
        })
    }
}

pub(crate) async fn list_protocols(client: &Client) -> Result<ServerDescription, ClientError> {
    let url = client.url(NAME, "list_protocols", None);
    // Reflection is exempt from the version gate: no version to look up.
    let response = client
        .unary_with_version(NAME, "list_protocols", &no_params(), None)
        .await?;
    let batch = nested(&url, response.batch)?;
    let bad = |what: &str| protocol_error(&url, format!("list_protocols: {what}"));
    let text = |name: &str| -> Result<String, ClientError> {
        Ok(batch
            .column_by_name(name)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad(&format!("no string column `{name}`")))?
            .value(0)
            .to_string())
    };
    let list = batch
        .column_by_name("protocols")
        .and_then(|c| c.as_list_opt::<i32>())
        .ok_or_else(|| bad("no list column `protocols`"))?;
    let entries = list.value(0);
    let entries = entries
        .as_struct_opt()
        .ok_or_else(|| bad("`protocols` is not a list of structs"))?;
    let mut protocols = Vec::with_capacity(entries.len());
    for row in 0..entries.len() {
        protocols.push(ProtocolSummary {
            name: struct_text(entries, "protocol", row).map_err(|w| bad(&w))?,
            version: struct_text(entries, "protocol_version", row).map_err(|w| bad(&w))?,
            hash: struct_text(entries, "protocol_hash", row).map_err(|w| bad(&w))?,
        });
    }
    Ok(ServerDescription {
        server_id: text("server_id")?,
        server_version: text("server_version")?,
        request_version: text("request_version")?,
        protocols,
    })
}

/// The one-row batch inside a `result: binary` cell.
fn nested(url: &str, batch: RecordBatch) -> Result<RecordBatch, ClientError> {
    let bad = |what: String| protocol_error(url, format!("reflection result: {what}"));
    let cell = batch
        .column_by_name("result")
        .and_then(|c| c.as_binary_opt::<i32>())
        .filter(|c| c.len() == 1 && c.is_valid(0))
        .ok_or_else(|| bad("no one-row binary column `result`".into()))?;
    let bytes = Bytes::copy_from_slice(cell.value(0));
    let (stream, _) = read_stream(&bytes, 0).map_err(|e| bad(e.to_string()))?;
    stream
        .batches
        .into_iter()
        .map(|b| b.batch)
        .find(|b| b.num_rows() == 1)
        .ok_or_else(|| bad("the nested stream holds no row".into()))
}

fn struct_text(entries: &StructArray, name: &str, row: usize) -> Result<String, String> {
    Ok(entries
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| format!("no string field `{name}`"))?
        .value(row)
        .to_string())
}

fn struct_schema(
    entries: &StructArray,
    name: &str,
    row: usize,
) -> Result<Option<SchemaRef>, String> {
    let column = entries
        .column_by_name(name)
        .and_then(|c| c.as_binary_opt::<i32>())
        .ok_or_else(|| format!("no binary field `{name}`"))?;
    if column.is_null(row) || column.value(row).is_empty() {
        return Ok(None);
    }
    read_schema_message(column.value(row))
        .map(|schema| Some(std::sync::Arc::new(schema)))
        .map_err(|e| format!("`{name}` is not a serialized schema: {e}"))
}

fn method(entries: &StructArray, row: usize) -> Result<MethodDescription, String> {
    let name = struct_text(entries, "name", row)?;
    let method_type = struct_text(entries, "method_type", row)?;
    let stream_kind = struct_text(entries, "stream_kind", row)?;
    let kind = match (method_type.as_str(), stream_kind.as_str()) {
        ("unary", _) => MethodKind::Unary,
        ("stream", "exchange") => MethodKind::Exchange,
        ("stream", _) => MethodKind::Producer,
        (other, _) => return Err(format!("method `{name}` has type `{other}`")),
    };
    let params = struct_schema(entries, "params_schema_ipc", row)?
        .unwrap_or_else(|| std::sync::Arc::new(Schema::empty()));
    let result = struct_schema(entries, "result_schema_ipc", row)?
        .filter(|_| kind == MethodKind::Unary)
        .filter(|schema| !schema.fields().is_empty());
    Ok(MethodDescription {
        name,
        kind,
        params,
        result,
        header: struct_schema(entries, "header_schema_ipc", row)?,
    })
}
