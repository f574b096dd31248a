//! Request validation and method dispatch for unary calls and stream turns.
//!
//! Order matters and mirrors the reference: parse the IPC body, check the
//! dispatch metadata (method, request version, protocol, protocol version),
//! then the parameter schema, and only then run method code. Everything before
//! method code is the caller's mistake (400); everything after is the method's
//! (200 + `X-VGI-RPC-Error`).

use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde_json::json;

use super::{Endpoint, RequestInfo, Resolved, Server, arrow_response, error_response};
use crate::rpc::{Args, Ctx, MethodKind, Output, Reply, StreamKind, parse_version};
use crate::storage::External;
use crate::storage::fetch::FetchError;
use crate::token::{Binding, TokenKind};
use crate::wire::ipc::Chunks;
use crate::wire::ipc::{
    IpcError, read_schema_message, read_stream, read_whole_stream, schema_message,
};
use crate::wire::tokens::type_token;
use crate::wire::{self, Batch, ErrorCode, LogLevel, LogRecord, Metadata, RpcError, StreamWriter};

pub(crate) async fn call(
    server: &Arc<Server>,
    info: &RequestInfo,
    resolved: Resolved,
    endpoint: Endpoint,
    body: Bytes,
) -> Response {
    let method = resolved.method();
    let empty = wire::empty_schema();
    match (&method.kind, endpoint) {
        (MethodKind::Stream { .. }, Endpoint::Unary) => {
            let error = RpcError::bad_request(
                "TypeError",
                format!(
                    "Stream method '{}' requires /init and /exchange endpoints",
                    method.name
                ),
            );
            return error_response(server, info, &error, &empty);
        }
        (MethodKind::Unary { .. }, Endpoint::Init | Endpoint::Exchange) => {
            let error = RpcError::bad_request(
                "TypeError",
                format!("Method '{}' is not a stream", method.name),
            );
            return error_response(server, info, &error, &empty);
        }
        _ => {}
    }
    let outcome = match endpoint {
        Endpoint::Unary => unary(server, info, &resolved, body).await,
        Endpoint::Init => init(server, info, &resolved, body).await,
        Endpoint::Exchange => exchange(server, info, &resolved, body).await,
    };
    match outcome {
        Ok(response) => response,
        Err(error) => error_response(server, info, &error, &empty),
    }
}

/// The limit a response body must fit: server cap and client cap, the smaller.
fn response_limit(server: &Server, info: &RequestInfo) -> Option<u64> {
    match (server.config.max_response_bytes, info.accept_max_response) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads the first batch of the request stream and checks the dispatch metadata.
fn read_request(resolved: &Resolved, body: &Bytes) -> Result<(SchemaRef, Batch), RpcError> {
    let (stream, _) = read_stream(body, 0).map_err(|e| match e.null_in_required_column() {
        // The reference's words for `None` passed to a required parameter.
        Some(column) => RpcError::bad_request(
            "TypeError",
            format!(
                "{}() parameter '{column}' is not optional but got None",
                resolved.method
            ),
        ),
        None => RpcError::bad_request("ArrowInvalid", e.to_string()),
    })?;
    let batch = stream.batches.into_iter().next().ok_or_else(|| {
        RpcError::bad_request("ArrowInvalid", "request stream carries no record batch")
    })?;
    // Tracing hook: the batch may carry the caller's `traceparent` (telemetry.rs).
    crate::telemetry::continue_trace_from_batch_metadata(&batch.metadata);
    let method_name = batch.get(wire::METHOD_KEY).ok_or_else(|| {
        RpcError::bad_request(
            "ProtocolError",
            "Missing 'vgi_rpc.method' in request batch custom_metadata. Each request batch must carry a 'vgi_rpc.method' key in its Arrow IPC custom_metadata with the method name as a UTF-8 string.",
        )
    })?;
    match batch.get(wire::REQUEST_VERSION_KEY) {
        None => {
            return Err(RpcError::bad_request(
                "VersionError",
                "Missing 'vgi_rpc.request_version' in request batch custom_metadata. Set the 'vgi_rpc.request_version' custom_metadata value to b'1'.",
            ));
        }
        Some(version) if version != wire::REQUEST_VERSION => {
            return Err(RpcError::bad_request(
                "VersionError",
                format!(
                    "Unsupported request version b'{version}', expected b'1'. Set the 'vgi_rpc.request_version' custom_metadata value to b'1'."
                ),
            ));
        }
        Some(_) => {}
    }
    if method_name != resolved.method {
        return Err(RpcError::bad_request(
            "TypeError",
            format!(
                "Method name mismatch: URL path has '{}' but Arrow IPC custom_metadata 'vgi_rpc.method' has '{method_name}'. These must match.",
                resolved.method
            ),
        ));
    }
    check_protocol(resolved, &batch.metadata)?;
    Ok((stream.schema, batch))
}

fn check_protocol(resolved: &Resolved, metadata: &Metadata) -> Result<(), RpcError> {
    let protocol = &resolved.protocol;
    if let Some(declared) =
        wire::metadata_get(metadata, wire::PROTOCOL_KEY).filter(|d| !d.is_empty())
        && declared != protocol.name
    {
        return Err(RpcError::new(
            "ProtocolNotSupportedError",
            format!(
                "Protocol mismatch: the request path resolved to '{}' but the Arrow IPC custom_metadata 'vgi_rpc.protocol' says '{declared}'. These must agree.",
                protocol.name
            ),
        )
        .with_kind("protocol_not_supported")
        .with_code(ErrorCode::Unimplemented)
        .with_status(StatusCode::NOT_FOUND));
    }
    let Some(server_version) = protocol
        .version
        .as_deref()
        .filter(|_| !protocol.version_exempt)
    else {
        return Ok(());
    };
    let server_parts =
        parse_version(server_version).expect("versions are validated when the protocol is built");
    let client = wire::metadata_get(metadata, wire::PROTOCOL_VERSION_KEY);
    let mismatch = |client_text: &str, direction: String| {
        RpcError::bad_request(
            "ProtocolVersionError",
            format!(
                "VGI client/worker protocol_version mismatch for protocol '{}'.\n  Client: {client_text}\n  Server: {server_version}\n  Direction: {direction}",
                protocol.name
            ),
        )
        .with_code(ErrorCode::FailedPrecondition)
        .with_kind("protocol_version_mismatch")
        .with_details(vec![json!({
            "@type": "vgi_rpc.PreconditionFailure",
            "violations": [{
                "type": "protocol_version",
                "subject": protocol.name,
                "description": format!("client declares {client_text}, server requires {server_version}"),
            }],
        })])
    };
    let Some(client) = client else {
        return Err(mismatch(
            "<not declared>",
            "the client did not send a vgi_rpc.protocol_version metadata key. This is either a vgi-rpc framework bug or a non-VGI client connecting to a VGI worker.".into(),
        ));
    };
    let Some(client_parts) = parse_version(client) else {
        return Err(mismatch(client, "client sent a malformed protocol_version. Expected canonical semver MAJOR.MINOR.PATCH.".into()));
    };
    if (client_parts.0, client_parts.1) == (server_parts.0, server_parts.1) {
        return Ok(());
    }
    let direction = if (client_parts.0, client_parts.1) < (server_parts.0, server_parts.1) {
        format!(
            "client is too old; upgrade the VGI extension/client to a version supporting protocol_version {server_version}."
        )
    } else {
        format!(
            "server is too old; upgrade the VGI worker to a version supporting protocol_version {client}."
        )
    };
    Err(mismatch(client, direction))
}

/// Strict parameter check: count, order, names, types, top-level nullability,
/// one row, and no nulls in non-nullable parameters.
fn validate_params(
    method: &str,
    declared: &SchemaRef,
    schema: &SchemaRef,
    batch: &RecordBatch,
) -> Result<(), RpcError> {
    let bad = |message: String| RpcError::bad_request("TypeError", message);
    if schema.fields().len() != declared.fields().len() {
        return Err(bad(format!(
            "{method}() parameter schema expected {} fields, got {}{}",
            declared.fields().len(),
            schema.fields().len(),
            parameter_difference(declared, schema)
        )));
    }
    for (index, (field, want)) in schema
        .fields()
        .iter()
        .zip(declared.fields().iter())
        .enumerate()
    {
        if field.name() != want.name() {
            return Err(bad(format!(
                "{method}() parameter schema field {index} expected name '{}', got '{}'",
                want.name(),
                field.name()
            )));
        }
        // Equal types have equal tokens; only a difference is worth spelling.
        if field.data_type() != want.data_type()
            && type_token(field.data_type()) != type_token(want.data_type())
        {
            return Err(bad(format!(
                "{method}() parameter '{}' expected Arrow type {} but the request batch carried {}{}",
                field.name(),
                type_token(want.data_type()),
                type_token(field.data_type()),
                struct_difference(want.data_type(), field.data_type())
            )));
        }
        if field.is_nullable() != want.is_nullable() {
            let py = |b: bool| if b { "True" } else { "False" };
            return Err(bad(format!(
                "{method}() parameter '{}' expected nullable={}, but the request batch carried nullable={}",
                field.name(),
                py(want.is_nullable()),
                py(field.is_nullable())
            )));
        }
    }
    if !declared.fields().is_empty() {
        if batch.num_rows() != 1 {
            return Err(RpcError::bad_request(
                "ProtocolError",
                format!(
                    "Expected 1 row in request batch, got {}. Each parameter is a column (not a row). The batch should have exactly 1 row with schema {}.",
                    batch.num_rows(),
                    wire::tokens::schema_text(schema)
                ),
            ));
        }
        for (field, column) in declared.fields().iter().zip(batch.columns()) {
            if !field.is_nullable() && column.is_null(0) {
                return Err(bad(format!(
                    "{method}() parameter '{}' is not optional but got None (expected Arrow type {})",
                    field.name(),
                    type_token(field.data_type())
                )));
            }
        }
    }
    Ok(())
}

/// Enum parameters ([`crate::rpc::ProtocolBuilder::enum_param`]): every
/// non-null dictionary-encoded string must be a member. Refused as the
/// reference refuses it while decoding: 400 `TypeError`, in its words.
fn validate_enums(method: &crate::rpc::Method, batch: &RecordBatch) -> Result<(), RpcError> {
    for declared in &method.enums {
        let Some(column) = batch.column_by_name(&declared.param) else {
            continue;
        };
        if let Some(value) = first_non_member(column.as_ref(), &declared.members) {
            return Err(RpcError::bad_request(
                "TypeError",
                format!(
                    "\"'{value}' is not a valid {} name or value\"",
                    declared.enum_name
                ),
            ));
        }
    }
    Ok(())
}

/// The first dictionary-encoded string in `array` (at any depth) that is
/// not in `members`.
fn first_non_member(array: &dyn arrow_array::Array, members: &[String]) -> Option<String> {
    use arrow_array::Array as _;
    use arrow_array::cast::AsArray;
    use arrow_schema::DataType;
    match array.data_type() {
        DataType::Dictionary(_, _) => {
            let strings = arrow_cast::cast(array, &DataType::Utf8).ok()?;
            let strings = strings.as_string::<i32>();
            (0..strings.len())
                .filter(|&row| strings.is_valid(row))
                .map(|row| strings.value(row))
                .find(|value| !members.iter().any(|m| m == value))
                .map(str::to_string)
        }
        DataType::List(_) => first_non_member(array.as_list::<i32>().values().as_ref(), members),
        DataType::LargeList(_) => {
            first_non_member(array.as_list::<i64>().values().as_ref(), members)
        }
        DataType::FixedSizeList(_, _) => {
            first_non_member(array.as_fixed_size_list().values().as_ref(), members)
        }
        DataType::Map(_, _) => {
            let entries = array.as_map().entries();
            entries
                .columns()
                .iter()
                .find_map(|child| first_non_member(child.as_ref(), members))
        }
        DataType::Struct(_) => array
            .as_struct()
            .columns()
            .iter()
            .find_map(|child| first_non_member(child.as_ref(), members)),
        _ => None,
    }
}

/// Record parameters ([`crate::rpc::ProtocolBuilder::record_param`]): each
/// cell must be an IPC stream of exactly one row on the declared schema, and
/// nothing after it. Refused as the reference refuses a dataclass it cannot
/// deserialize: 400 `TypeError`, the IPC reader's own words.
fn validate_records(method: &crate::rpc::Method, batch: &RecordBatch) -> Result<(), RpcError> {
    use arrow_array::Array as _;
    let bad = |message: String| RpcError::bad_request("TypeError", message);
    for (param, declared) in &method.records {
        let Some(column) = batch
            .column_by_name(param)
            .and_then(|c| c.as_any().downcast_ref::<arrow_array::BinaryArray>())
        else {
            continue;
        };
        for row in 0..column.len() {
            if column.is_null(row) {
                continue;
            }
            let stream = match read_whole_stream(column.value(row)) {
                Ok(stream) => stream,
                Err(IpcError::TrailingBytes(trailing)) => {
                    return Err(bad(format!(
                        "{}() parameter '{param}': {trailing} bytes after the record's IPC stream",
                        method.name
                    )));
                }
                Err(error) => return Err(bad(error.to_string())),
            };
            let received = wire::tokens::schema_text(&stream.schema);
            let expected = wire::tokens::schema_text(declared);
            if received != expected {
                return Err(bad(format!(
                    "{}() parameter '{param}' expected a record with schema {expected}, got {received}",
                    method.name
                )));
            }
            if stream.single_row().is_none() {
                return Err(bad(format!(
                    "{}() parameter '{param}' expected a single-row record batch, got {} rows in {} batches",
                    method.name,
                    stream.rows(),
                    stream.batches.len()
                )));
            }
        }
    }
    Ok(())
}

/// `: missing parameter 'b' (int64)` / `: unexpected parameter 'c' (utf8)`,
/// so a wrong argument count names the arguments.
fn parameter_difference(declared: &SchemaRef, received: &SchemaRef) -> String {
    let mut parts = Vec::new();
    for want in declared.fields() {
        if received.field_with_name(want.name()).is_err() {
            parts.push(format!(
                "missing parameter '{}' ({})",
                want.name(),
                type_token(want.data_type())
            ));
        }
    }
    for got in received.fields() {
        if declared.field_with_name(got.name()).is_err() {
            parts.push(format!(
                "unexpected parameter '{}' ({})",
                got.name(),
                type_token(got.data_type())
            ));
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(": {}", parts.join(", "))
    }
}

/// For two struct types, `; missing field 'x'` / `; unexpected field 'y'`.
fn struct_difference(want: &arrow_schema::DataType, got: &arrow_schema::DataType) -> String {
    use arrow_schema::DataType::Struct;
    let (Struct(want), Struct(got)) = (want, got) else {
        return String::new();
    };
    let names = |fields: &arrow_schema::Fields| -> Vec<String> {
        fields.iter().map(|f| f.name().clone()).collect()
    };
    let (want, got) = (names(want), names(got));
    let mut parts: Vec<String> = want
        .iter()
        .filter(|name| !got.contains(name))
        .map(|name| format!("missing field '{name}'"))
        .collect();
    parts.extend(
        got.iter()
            .filter(|name| !want.contains(name))
            .map(|name| format!("unexpected field '{name}'")),
    );
    if parts.is_empty() {
        String::new()
    } else {
        format!("; {}", parts.join(", "))
    }
}

/// Validates the request and builds the handler's context and arguments.
async fn prepare(
    server: &Server,
    info: &RequestInfo,
    resolved: &Resolved,
    body: &Bytes,
    limit: Option<u64>,
) -> Result<(Ctx, Args), RpcError> {
    let method = resolved.method();
    let (schema, mut batch) = read_request(resolved, body)?;
    if batch.get(wire::LOCATION_KEY).is_some() && batch.batch.num_rows() == 0 {
        (batch.batch, batch.metadata) = resolve_pointer(server, info, &schema, &batch).await?;
    }
    validate_params(&method.name, &method.params, &schema, &batch.batch)?;
    validate_records(method, &batch.batch)?;
    validate_enums(method, &batch.batch)?;
    let ctx = Ctx::new(
        info.identity.clone(),
        info.auth.clone(),
        info.request_id.clone(),
        wire::user_metadata(&batch.metadata),
        limit,
    )
    .with_external(server.external.clone());
    Ok((ctx, Args::new(batch.batch)))
}

/// Writes log batches of `ctx` onto `writer`.
fn write_logs(
    writer: &mut StreamWriter<'_>,
    ctx: &Ctx,
    server: &Server,
    info: &RequestInfo,
) -> Result<(), RpcError> {
    for record in ctx.take_logs() {
        writer
            .write_metadata_only(&record.to_metadata(&server.config.server_id, &info.request_id))?;
    }
    Ok(())
}

/// A method or turn error, answered 200 with `X-VGI-RPC-Error` (never 5xx:
/// intermediaries drop those bodies): whatever streams `out` already holds
/// (an init's header stream), the call's logs so far, then the EXCEPTION
/// batch, on `schema`.
///
/// The answer keeps to the response limit as a result does: when the logs
/// (and the header stream) would take it over, they are left out and one
/// WARN log says so, so the client still reads the error, and on Lambda the
/// body still fits the payload cap. An error message that alone would
/// overshoot is cut.
fn error_answer(
    server: &Server,
    info: &RequestInfo,
    ctx: Option<&Ctx>,
    schema: &SchemaRef,
    out: Chunks,
    error: &RpcError,
    limit: Option<u64>,
) -> Response {
    let logs = ctx.map(Ctx::take_logs).unwrap_or_default();
    info.note_error(error);
    let header_len = out.len();
    let body = error_body(server, info, schema, out, &logs, error);
    let body = match limit {
        Some(limit) if body.len() as u64 > limit => {
            let note = LogRecord {
                level: LogLevel::Warn,
                message: format!(
                    "{} log message(s){} of this call left out: with them the error answer would be {} bytes, over the response limit of {limit} bytes",
                    logs.len(),
                    if header_len > 0 {
                        " and the stream header"
                    } else {
                        ""
                    },
                    body.len(),
                ),
                extra: Default::default(),
            };
            let notes = std::slice::from_ref(&note);
            let fitted = error_body(server, info, schema, Chunks::new(), notes, error);
            if fitted.len() as u64 <= limit {
                fitted
            } else {
                // The message appears three times (message, extra, traceback).
                let keep = usize::try_from(limit / 8).unwrap_or(usize::MAX);
                error_body(
                    server,
                    info,
                    schema,
                    Chunks::new(),
                    notes,
                    &cut_message(error, keep),
                )
            }
        }
        _ => body,
    };
    arrow_response(server, info, StatusCode::OK, body, true)
}

/// `out`, then one stream on `schema`: `logs`, then the EXCEPTION batch.
fn error_body(
    server: &Server,
    info: &RequestInfo,
    schema: &SchemaRef,
    mut out: Chunks,
    logs: &[LogRecord],
    error: &RpcError,
) -> Chunks {
    let mut writer = StreamWriter::new(&mut out, schema).expect("valid schema");
    for record in logs {
        let _ = writer
            .write_metadata_only(&record.to_metadata(&server.config.server_id, &info.request_id));
    }
    let _ = writer.write_metadata_only(&error.to_metadata_from(
        &server.config.server_id,
        &info.request_id,
        info.origin.as_deref(),
    ));
    writer.finish();
    out
}

/// `error` with its message cut to at most `keep` bytes (on a character
/// boundary), saying how much was cut.
fn cut_message(error: &RpcError, keep: usize) -> RpcError {
    let mut cut = error.clone();
    if cut.message.len() > keep {
        let mut end = keep;
        while !cut.message.is_char_boundary(end) {
            end -= 1;
        }
        let dropped = cut.message.len() - end;
        cut.message.truncate(end);
        cut.message.push_str(&format!(
            " ... ({dropped} bytes cut to fit the response limit)"
        ));
    }
    cut
}

/// Sends `body` unless it overshoots the response budget, which turns it into an error.
fn finish_response(
    server: &Server,
    info: &RequestInfo,
    method: &str,
    schema: &SchemaRef,
    limit: Option<u64>,
    body: Chunks,
) -> Response {
    if let Some(limit) = limit
        && body.len() as u64 > limit
    {
        let error = RpcError::new(
            "ResponseTooLargeError",
            format!(
                "HTTP body exceeds max_response_bytes ({} > {limit}) for method '{method}'{}",
                body.len(),
                super::limit_hint(server)
            ),
        )
        .with_code(ErrorCode::ResourceExhausted);
        return error_answer(
            server,
            info,
            None,
            schema,
            Chunks::new(),
            &error,
            Some(limit),
        );
    }
    arrow_response(server, info, StatusCode::OK, body, false)
}

async fn unary(
    server: &Arc<Server>,
    info: &RequestInfo,
    resolved: &Resolved,
    body: Bytes,
) -> Result<Response, RpcError> {
    let method = resolved.method();
    let MethodKind::Unary { result, handler } = &method.kind else {
        unreachable!("checked by call()")
    };
    let limit = response_limit(server, info);
    let (ctx, args) = prepare(server, info, resolved, &body, limit).await?;
    drop(body);
    let schema = result.clone().unwrap_or_else(wire::empty_schema);
    let reply = handler(ctx.clone(), args).await;
    if let Ok(Reply::External(reference)) = &reply {
        // A pre-published batch: the body is only the pointer.
        let mut metadata = vec![(wire::LOCATION_KEY.to_string(), reference.location.clone())];
        if let Some(sha256) = &reference.sha256 {
            metadata.push((wire::LOCATION_SHA256_KEY.to_string(), sha256.clone()));
        }
        let mut out = Chunks::new();
        let mut writer = StreamWriter::new(&mut out, &schema)?;
        write_logs(&mut writer, &ctx, server, info)?;
        writer.write_metadata_only(&metadata)?;
        writer.finish();
        return Ok(finish_response(
            server,
            info,
            &method.name,
            &schema,
            limit,
            out,
        ));
    }
    let batch = match reply.and_then(|reply| result_batch(&schema, reply)) {
        Ok(batch) => batch,
        Err(error) => {
            return Ok(error_answer(
                server,
                info,
                Some(&ctx),
                &schema,
                Chunks::new(),
                &error.with_status(StatusCode::OK),
                limit,
            ));
        }
    };
    let pointer = match server
        .external
        .as_ref()
        .filter(|e| e.should_externalize(&batch))
    {
        None => None,
        Some(external) => {
            let ipc = wire::ipc::stream_bytes(&schema, std::slice::from_ref(&batch))?;
            match externalize(server, external, ipc).await {
                Ok(pointer) => Some(pointer),
                Err(error) => {
                    let error = error.with_status(StatusCode::OK);
                    let out = Chunks::new();
                    return Ok(error_answer(
                        server,
                        info,
                        Some(&ctx),
                        &schema,
                        out,
                        &error,
                        limit,
                    ));
                }
            }
        }
    };
    let mut out = Chunks::new();
    let mut writer = StreamWriter::new(&mut out, &schema)?;
    write_logs(&mut writer, &ctx, server, info)?;
    match &pointer {
        Some(pointer) => {
            writer.write_metadata_only(&External::pointer_metadata(pointer))?;
        }
        None => writer.write(&batch, &Vec::new())?,
    }
    writer.finish();
    Ok(finish_response(
        server,
        info,
        &method.name,
        &schema,
        limit,
        out,
    ))
}

fn result_batch(schema: &SchemaRef, reply: Reply) -> Result<RecordBatch, RpcError> {
    match reply {
        Reply::Void => Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            vec![],
            &RecordBatchOptions::new().with_row_count(Some(0)),
        )?),
        Reply::External(_) => Err(RpcError::new(
            "RuntimeError",
            "a pointer reply is written by the caller",
        )),
        Reply::Value(column) => {
            if column.len() != 1 {
                return Err(RpcError::new(
                    "TypeError",
                    format!(
                        "a result must be one value, the method returned {} rows",
                        column.len()
                    ),
                ));
            }
            let field = schema.field(0);
            if !field.is_nullable() && column.is_null(0) {
                return Err(RpcError::new(
                    "TypeError",
                    "expected a non-None return value but got None",
                ));
            }
            Ok(RecordBatch::try_new(schema.clone(), vec![column])?)
        }
    }
}

/// Payload of the call token: fixed for the stream's life.
struct CallToken {
    call_id: [u8; 16],
    output_schema: SchemaRef,
    input_schema: Option<SchemaRef>,
    limit: Option<u64>,
}

impl CallToken {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.call_id);
        out.extend_from_slice(&self.limit.unwrap_or(0).to_le_bytes());
        let output = schema_message(&self.output_schema);
        out.extend_from_slice(&(output.len() as u32).to_le_bytes());
        out.extend_from_slice(&output);
        if let Some(input) = &self.input_schema {
            out.extend_from_slice(&schema_message(input));
        }
        out
    }

    fn decode(raw: &[u8]) -> Result<CallToken, RpcError> {
        let malformed = || RpcError::bad_request("RuntimeError", "Malformed state token");
        if raw.len() < 28 {
            return Err(malformed());
        }
        let mut call_id = [0u8; 16];
        call_id.copy_from_slice(&raw[..16]);
        let limit = u64::from_le_bytes(raw[16..24].try_into().map_err(|_| malformed())?);
        let output_len =
            u32::from_le_bytes(raw[24..28].try_into().map_err(|_| malformed())?) as usize;
        let output = raw.get(28..28 + output_len).ok_or_else(malformed)?;
        let output_schema = Arc::new(read_schema_message(output).map_err(|_| malformed())?);
        let rest = &raw[28 + output_len..];
        let input_schema = if rest.is_empty() {
            None
        } else {
            Some(Arc::new(
                read_schema_message(rest).map_err(|_| malformed())?,
            ))
        };
        Ok(CallToken {
            call_id,
            output_schema,
            input_schema,
            limit: (limit != 0).then_some(limit),
        })
    }
}

fn binding<'a>(resolved: &'a Resolved, identity: &'a str) -> Binding<'a> {
    Binding {
        protocol: &resolved.protocol.name,
        method: &resolved.method,
        identity,
    }
}

fn cursor_payload(call_id: &[u8; 16], state: &[u8]) -> Vec<u8> {
    [call_id.as_slice(), state].concat()
}

async fn init(
    server: &Arc<Server>,
    info: &RequestInfo,
    resolved: &Resolved,
    body: Bytes,
) -> Result<Response, RpcError> {
    let method = resolved.method();
    let MethodKind::Stream {
        kind,
        header,
        init,
        turn,
    } = &method.kind
    else {
        unreachable!("checked by call()")
    };
    let limit = response_limit(server, info);
    let (ctx, args) = prepare(server, info, resolved, &body, limit).await?;
    drop(body);
    let empty = wire::empty_schema();
    let started = match init(ctx.clone(), args).await {
        Ok(started) => started,
        Err(error) => {
            return Ok(error_answer(
                server,
                info,
                Some(&ctx),
                &empty,
                Chunks::new(),
                &error.with_status(StatusCode::OK),
                limit,
            ));
        }
    };
    let input_schema = match kind {
        StreamKind::Producer => None,
        StreamKind::Exchange => Some(
            started
                .input_schema
                .clone()
                .unwrap_or_else(wire::empty_schema),
        ),
    };
    let mut call_id = [0u8; 16];
    getrandom::fill(&mut call_id).expect("random source");
    let _ = info.stream_id.set(hex::encode(call_id));
    let call = CallToken {
        call_id,
        output_schema: started.output_schema.clone(),
        input_schema,
        limit,
    };
    let bound = binding(resolved, ctx.identity());
    let call_token = server.keys.seal(TokenKind::Call, bound, &call.encode());

    let mut out = Chunks::new();
    if let Some(header_schema) = header {
        let Some(header_batch) = started.header.clone() else {
            let error = RpcError::new(
                "TypeError",
                format!(
                    "Method '{}' declares header type but returned header=None",
                    method.name
                ),
            );
            return Ok(error_answer(
                server,
                info,
                Some(&ctx),
                &empty,
                Chunks::new(),
                &error,
                limit,
            ));
        };
        // Checked before the logs are written, so a bad header keeps them.
        let header_batch = match conform_header(header_batch, header_schema) {
            Ok(batch) => batch,
            Err(error) => {
                let error = error.with_status(StatusCode::OK);
                let out = Chunks::new();
                return Ok(error_answer(
                    server,
                    info,
                    Some(&ctx),
                    &empty,
                    out,
                    &error,
                    limit,
                ));
            }
        };
        let mut writer = StreamWriter::new(&mut out, header_schema)?;
        write_logs(&mut writer, &ctx, server, info)?;
        writer.write(&header_batch, &Vec::new())?;
        writer.finish();
    }
    let output_schema = started.output_schema.clone();
    match kind {
        StreamKind::Exchange => {
            let cursor = server.keys.seal(
                TokenKind::Cursor,
                bound,
                &cursor_payload(&call_id, &started.state),
            );
            let mut writer = StreamWriter::new(&mut out, &output_schema)?;
            write_logs(&mut writer, &ctx, server, info)?;
            writer.write_metadata_only(&vec![
                (wire::STATE_KEY.into(), cursor),
                (wire::CALL_STATE_KEY.into(), call_token),
            ])?;
            writer.finish();
            Ok(finish_response(
                server,
                info,
                &method.name,
                &output_schema,
                limit,
                out,
            ))
        }
        StreamKind::Producer => {
            let mut output = Output::new(output_schema.clone());
            let state = match turn
                .turn(&started.state, None, &mut output, &ctx)
                .await
                .and_then(|s| check_producer_turn(&output).map(|_| s))
            {
                Ok(state) => state,
                Err(error) => {
                    let answer =
                        error_answer(server, info, Some(&ctx), &output_schema, out, &error, limit);
                    return Ok(answer);
                }
            };
            let token = (!output.finished).then(|| {
                vec![
                    (
                        wire::STATE_KEY.to_string(),
                        server.keys.seal(
                            TokenKind::Cursor,
                            bound,
                            &cursor_payload(&call_id, &state),
                        ),
                    ),
                    (wire::CALL_STATE_KEY.to_string(), call_token),
                ]
            });
            producer_answer(server, info, &method.name, &ctx, &output, out, token, limit).await
        }
    }
}

fn conform_header(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, RpcError> {
    if batch.num_rows() != 1 {
        return Err(RpcError::new(
            "TypeError",
            format!("a stream header must be one row, got {}", batch.num_rows()),
        ));
    }
    let mut output = Output::new(schema.clone());
    output.emit(batch)?;
    Ok(output.batches.remove(0).0)
}

/// Producer rules: at most one data batch per turn, and exactly one unless finishing.
fn check_producer_turn(output: &Output) -> Result<(), RpcError> {
    match output.batches.len() {
        0 if !output.finished => Err(RpcError::new(
            "RuntimeError",
            "produce() must emit exactly one batch or call finish()",
        )),
        0 | 1 => Ok(()),
        n => Err(RpcError::new(
            "RuntimeError",
            format!("VGI-RPC lock-step violation: produce() emitted {n} batches in one turn"),
        )),
    }
}

/// The answer to a producer turn (at `/init` or later), after whatever
/// streams `out` already holds: the turn stored or inline, then the cursor
/// `token`; a store that fails is answered as the turn's error.
#[allow(clippy::too_many_arguments)]
async fn producer_answer(
    server: &Server,
    info: &RequestInfo,
    method: &str,
    ctx: &Ctx,
    output: &Output,
    mut out: Chunks,
    token: Option<Metadata>,
    limit: Option<u64>,
) -> Result<Response, RpcError> {
    let schema = output.schema();
    let pointer = match store_producer_turn(server, info, ctx, output).await {
        Ok(pointer) => pointer,
        Err(error) => {
            return Ok(error_answer(
                server,
                info,
                Some(ctx),
                schema,
                out,
                &error,
                limit,
            ));
        }
    };
    write_producer_turn(&mut out, server, info, ctx, output, pointer, token)?;
    Ok(finish_response(server, info, method, schema, limit, out))
}

/// Stores the producer turn's whole cycle when a data batch reaches the
/// externalization threshold; `None` when it goes in the body.
async fn store_producer_turn(
    server: &Server,
    info: &RequestInfo,
    ctx: &Ctx,
    output: &Output,
) -> Result<Option<crate::storage::Pointer>, RpcError> {
    let external = server.external.as_ref();
    match external.filter(|e| output.batches.iter().any(|(b, _)| e.should_externalize(b))) {
        Some(external) => {
            let batches = output
                .batches
                .iter()
                .map(|(batch, metadata)| (batch, metadata));
            Ok(Some(
                store_cycle(server, info, ctx, external, output.schema(), batches).await?,
            ))
        }
        None => Ok(None),
    }
}

/// Stores a turn's whole cycle (its logs, then `batches`) and returns the
/// pointer that takes its place in the body. The logs stay with `ctx` until
/// the upload succeeded, so an answer to a failed one still carries them.
async fn store_cycle<'a>(
    server: &Server,
    info: &RequestInfo,
    ctx: &Ctx,
    external: &External,
    schema: &SchemaRef,
    batches: impl IntoIterator<Item = (&'a RecordBatch, &'a Metadata)>,
) -> Result<crate::storage::Pointer, RpcError> {
    let mut cycle = Vec::new();
    let mut writer = StreamWriter::new(&mut cycle, schema)?;
    for record in ctx.peek_logs() {
        writer
            .write_metadata_only(&record.to_metadata(&server.config.server_id, &info.request_id))?;
    }
    for (batch, metadata) in batches {
        writer.write(batch, metadata)?;
    }
    writer.finish();
    let pointer = externalize(server, external, cycle).await?;
    // They went to storage with the cycle.
    drop(ctx.take_logs());
    Ok(pointer)
}

/// Writes one producer turn: its logs and data, or the `pointer` to the
/// cycle [`store_producer_turn`] stored, then the cursor `token`.
fn write_producer_turn(
    out: &mut Chunks,
    server: &Server,
    info: &RequestInfo,
    ctx: &Ctx,
    output: &Output,
    pointer: Option<crate::storage::Pointer>,
    token: Option<Metadata>,
) -> Result<(), RpcError> {
    let mut writer = StreamWriter::new(out, output.schema())?;
    match &pointer {
        Some(pointer) => writer.write_metadata_only(&External::pointer_metadata(pointer))?,
        None => {
            write_logs(&mut writer, ctx, server, info)?;
            for (batch, metadata) in &output.batches {
                writer.write(batch, metadata)?;
            }
        }
    }
    if let Some(token) = token {
        writer.write_metadata_only(&token)?;
    }
    writer.finish();
    Ok(())
}

async fn exchange(
    server: &Arc<Server>,
    info: &RequestInfo,
    resolved: &Resolved,
    body: Bytes,
) -> Result<Response, RpcError> {
    let method = resolved.method();
    let MethodKind::Stream { kind, turn, .. } = &method.kind else {
        unreachable!("checked by call()")
    };
    let (stream, _) =
        read_stream(&body, 0).map_err(|e| RpcError::bad_request("ArrowInvalid", e.to_string()))?;
    drop(body);
    let batch = stream.batches.into_iter().next().ok_or_else(|| {
        RpcError::bad_request("ArrowInvalid", "exchange request carries no record batch")
    })?;
    crate::telemetry::continue_trace_from_batch_metadata(&batch.metadata);
    let identity = info.identity.clone();
    let bound = binding(resolved, &identity);
    let token_error =
        |e: crate::token::TokenError| RpcError::bad_request("RuntimeError", e.to_string());
    let cursor = batch.get(wire::STATE_KEY).ok_or_else(|| {
        RpcError::bad_request("RuntimeError", "Missing state token in exchange request")
    })?;
    let cursor = server
        .keys
        .open(TokenKind::Cursor, bound, cursor)
        .map_err(token_error)?;
    let call = batch.get(wire::CALL_STATE_KEY).ok_or_else(|| {
        RpcError::bad_request("RuntimeError", "Missing call token in exchange request")
    })?;
    // The cursor (opened above, expiry checked) is minted every turn and
    // carries the stream's liveness; the call token is never re-issued, so
    // only its signature and binding are checked, and the call ids must match.
    let call = CallToken::decode(
        &server
            .keys
            .open_ignoring_expiry(TokenKind::Call, bound, call)
            .map_err(token_error)?,
    )?;
    let _ = info.stream_id.set(hex::encode(call.call_id));
    if cursor.len() < 16 || cursor[..16] != call.call_id {
        return Err(RpcError::bad_request(
            "RuntimeError",
            "State token signature verification failed",
        ));
    }
    let state = &cursor[16..];
    let limit = match (response_limit(server, info), call.limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // Later turns publish to storage exactly as the first one did, whether
    // their input came inline or as a pointer (one constructor for both).
    let turn_ctx = |metadata: &wire::ipc::Metadata| {
        Ctx::new(
            identity.clone(),
            info.auth.clone(),
            info.request_id.clone(),
            wire::user_metadata(metadata),
            limit,
        )
        .with_external(server.external.clone())
    };
    let mut ctx = turn_ctx(&batch.metadata);
    let output_schema = call.output_schema.clone();

    if batch.get(wire::CANCEL_KEY).is_some() {
        turn.cancel(state, &ctx);
        let mut out = Chunks::new();
        StreamWriter::new(&mut out, &output_schema)?.finish();
        return Ok(arrow_response(server, info, StatusCode::OK, out, false));
    }

    let mut output = Output::new(output_schema.clone());
    match kind {
        StreamKind::Producer => {
            let state = match turn
                .turn(state, None, &mut output, &ctx)
                .await
                .and_then(|s| check_producer_turn(&output).map(|_| s))
            {
                Ok(state) => state,
                Err(error) => {
                    return Ok(error_answer(
                        server,
                        info,
                        Some(&ctx),
                        &output_schema,
                        Chunks::new(),
                        &error,
                        limit,
                    ));
                }
            };
            let token = (!output.finished).then(|| {
                vec![(
                    wire::STATE_KEY.to_string(),
                    server.keys.seal(
                        TokenKind::Cursor,
                        bound,
                        &cursor_payload(&call.call_id, &state),
                    ),
                )]
            });
            let out = Chunks::new();
            producer_answer(server, info, &method.name, &ctx, &output, out, token, limit).await
        }
        StreamKind::Exchange => {
            let input_schema = call.input_schema.clone().unwrap_or_else(wire::empty_schema);
            let mut input_batch = batch.batch.clone();
            if batch.get(wire::LOCATION_KEY).is_some() && input_batch.num_rows() == 0 {
                match resolve_pointer(server, info, &stream.schema, &batch).await {
                    Ok((resolved_input, metadata)) => {
                        // The method reads the stored batch's metadata, never the pointer's.
                        input_batch = resolved_input;
                        // Nothing has run on `ctx` yet, so a fresh one loses no logs.
                        ctx = turn_ctx(&metadata);
                    }
                    // The server had no room to fetch it: refused before
                    // anything ran, with the status and Retry-After a unary
                    // call or an init with the same pointer gets.
                    Err(error) if error.status == StatusCode::SERVICE_UNAVAILABLE => {
                        return Err(error);
                    }
                    Err(error) => {
                        return Ok(error_answer(
                            server,
                            info,
                            Some(&ctx),
                            &output_schema,
                            Chunks::new(),
                            &error,
                            limit,
                        ));
                    }
                }
            }
            let input = match coerce_input(input_batch, &input_schema) {
                Ok(input) => input,
                Err(error) => {
                    return Ok(error_answer(
                        server,
                        info,
                        Some(&ctx),
                        &output_schema,
                        Chunks::new(),
                        &error,
                        limit,
                    ));
                }
            };
            let result = turn
                .turn(state, Some(input), &mut output, &ctx)
                .await
                .and_then(|s| {
                    if output.batches.len() == 1 {
                        Ok(s)
                    } else {
                        Err(RpcError::new(
                            "RuntimeError",
                            format!(
                                "exchange() must emit exactly one batch, it emitted {}",
                                output.batches.len()
                            ),
                        ))
                    }
                });
            let state = match result {
                Ok(state) => state,
                Err(error) => {
                    return Ok(error_answer(
                        server,
                        info,
                        Some(&ctx),
                        &output_schema,
                        Chunks::new(),
                        &error,
                        limit,
                    ));
                }
            };
            let (data, mut metadata) = output.batches.remove(0);
            metadata.retain(|(k, _)| k != wire::STATE_KEY);
            if !output.finished {
                metadata.push((
                    wire::STATE_KEY.to_string(),
                    server.keys.seal(
                        TokenKind::Cursor,
                        bound,
                        &cursor_payload(&call.call_id, &state),
                    ),
                ));
            }
            let mut out = Chunks::new();
            match server
                .external
                .as_ref()
                .filter(|e| e.should_externalize(&data))
            {
                Some(external) => {
                    // The whole cycle goes to storage, the new cursor on the data
                    // batch included, as upstream does: the client reads the token
                    // from the resolved batch. The pointer carries only the location.
                    let cycle = [(&data, &metadata)];
                    let stored =
                        store_cycle(server, info, &ctx, external, &output_schema, cycle).await;
                    let pointer = match stored {
                        Ok(pointer) => pointer,
                        Err(error) => {
                            let out = Chunks::new();
                            let answer = error_answer(
                                server,
                                info,
                                Some(&ctx),
                                &output_schema,
                                out,
                                &error,
                                limit,
                            );
                            return Ok(answer);
                        }
                    };
                    let mut writer = StreamWriter::new(&mut out, &output_schema)?;
                    writer.write_metadata_only(&External::pointer_metadata(&pointer))?;
                    writer.finish();
                }
                None => {
                    let mut writer = StreamWriter::new(&mut out, &output_schema)?;
                    write_logs(&mut writer, &ctx, server, info)?;
                    writer.write(&data, &metadata)?;
                    writer.finish();
                }
            }
            Ok(finish_response(
                server,
                info,
                &method.name,
                &output_schema,
                limit,
                out,
            ))
        }
    }
}

/// Rows of a `null` input column cast to its declared type at most.
const MAX_NULL_CAST_ROWS: usize = 64 * 1024;

/// Exchange input: the field set must match; order is fixed up and types cast.
fn coerce_input(batch: RecordBatch, target: &SchemaRef) -> Result<RecordBatch, RpcError> {
    if batch.schema() == *target {
        return Ok(batch);
    }
    let mismatch = || {
        RpcError::new(
            "TypeError",
            format!(
                "Input schema mismatch: expected {}, got {}",
                wire::tokens::schema_text(target),
                wire::tokens::schema_text(&batch.schema())
            ),
        )
    };
    let mut names: Vec<&String> = batch
        .schema_ref()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect();
    let mut wanted: Vec<&String> = target.fields().iter().map(|f| f.name()).collect();
    names.sort();
    wanted.sort();
    if names != wanted {
        return Err(mismatch());
    }
    let mut columns = Vec::new();
    for field in target.fields() {
        let column = batch.column_by_name(field.name()).ok_or_else(mismatch)?;
        let column = if column.data_type() == field.data_type() {
            column.clone()
        } else if column.data_type() == &arrow_schema::DataType::Null
            && column.len() > MAX_NULL_CAST_ROWS
        {
            // A `null` column is free on the wire and costs per row once cast.
            return Err(mismatch());
        } else {
            arrow_cast::cast(column, field.data_type()).map_err(|_| mismatch())?
        };
        columns.push(column);
    }
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(target.clone(), columns, &options).map_err(|_| mismatch())
}

/// Replaces an uploaded-request pointer with the batch it names, and its
/// metadata: the stored batch's, stamped with where it came from
/// (`vgi_rpc.location.source`) and how long the fetch took, as upstream's
/// reader does. The pointer's own keys never reach the method.
///
/// Dispatch (method, protocol, tokens) stays that of the outer batch; the
/// fetched stream must hold exactly one data batch on the pointer's own schema.
async fn resolve_pointer(
    server: &Server,
    info: &RequestInfo,
    schema: &SchemaRef,
    pointer: &Batch,
) -> Result<(RecordBatch, wire::ipc::Metadata), RpcError> {
    let location = pointer.get(wire::LOCATION_KEY).unwrap_or_default();
    let Some(external) = server.external.as_ref() else {
        return Err(RpcError::bad_request(
            "ProtocolError",
            "this server has no external storage configured, so it does not resolve `vgi_rpc.location` pointers",
        ));
    };
    let mut reservation = server.hosting.limits.budget.reservation();
    let started = std::time::Instant::now();
    let fetched = external
        .fetcher
        .fetch_within(
            location,
            pointer.get(wire::LOCATION_SHA256_KEY),
            &mut reservation,
        )
        .await;
    // Held until the request ends, like the body's own bytes.
    info.hold(reservation);
    let fetched = fetched.map_err(|error| match error {
        FetchError::OverBudget { .. } => {
            server.hosting.metrics.budget_refusals.inc();
            RpcError::new("ServerBusyError", error.to_string())
                .with_code(ErrorCode::Unavailable)
                .with_kind("server_busy")
                .with_status(StatusCode::SERVICE_UNAVAILABLE)
        }
        // As upstream's fetcher raises them: a refused URL is a ValueError.
        FetchError::Refused { .. } => RpcError::new("ValueError", error.to_string()),
        error => RpcError::new("RuntimeError", error.to_string()),
    })?;
    let fetch_ms = started.elapsed().as_secs_f64() * 1000.0;
    let (stream, _) = read_stream(&fetched, 0).map_err(|e| {
        RpcError::new(
            "ArrowInvalid",
            format!("the object at the pointer is not an Arrow IPC stream: {e}"),
        )
    })?;
    let mut data = stream
        .batches
        .into_iter()
        .filter(|b| b.get(wire::LOG_LEVEL_KEY).is_none());
    let (Some(first), None) = (data.next(), data.next()) else {
        return Err(RpcError::new(
            "ProtocolError",
            "the object at the pointer must hold exactly one data batch",
        ));
    };
    if first.get(wire::LOCATION_KEY).is_some() {
        return Err(RpcError::new(
            "ProtocolError",
            "the object at the pointer is itself a pointer (redirect loop)",
        ));
    }
    if first.batch.schema() != *schema {
        return Err(RpcError::bad_request(
            "TypeError",
            format!(
                "the object at the pointer has schema {}, the pointer batch has {}",
                wire::tokens::schema_text(&first.batch.schema()),
                wire::tokens::schema_text(schema)
            ),
        ));
    }
    let mut metadata = first.metadata;
    metadata.retain(|(key, _)| key != wire::LOCATION_SHA256_KEY);
    metadata.push((
        wire::LOCATION_FETCH_MS_KEY.to_string(),
        format!("{fetch_ms:.1}"),
    ));
    metadata.push((wire::LOCATION_SOURCE_KEY.to_string(), location.to_string()));
    Ok((first.batch, metadata))
}

/// `__upload_url__/init`: vends upload/download URL pairs (count clamped to 1..=100).
pub(crate) async fn upload_urls(server: &Arc<Server>, info: &RequestInfo, body: Bytes) -> Response {
    let empty = wire::empty_schema();
    let result = async {
        let (stream, _) = read_stream(&body, 0)
            .map_err(|e| RpcError::bad_request("ArrowInvalid", e.to_string()))?;
        let batch = stream.batches.into_iter().next().ok_or_else(|| {
            RpcError::bad_request("ArrowInvalid", "request stream carries no record batch")
        })?;
        let count = match batch.batch.column_by_name("count") {
            Some(column) if batch.batch.num_rows() > 0 && !column.is_null(0) => {
                i64::from_arrow_column(column).map_err(|e| RpcError::bad_request("TypeError", e))?
            }
            _ => 1,
        };
        let count = count.clamp(1, 100) as usize;
        let external = server.external.as_ref().expect("routed only with storage");
        let urls = external.storage.upload_urls(count).await.map_err(|error| {
            tracing::error!(%error, "vending upload URLs failed");
            RpcError::new(
                "ExternalStorageError",
                format!(
                    "failed to vend upload URLs from `{}` storage",
                    external.storage.name()
                ),
            )
            .with_code(ErrorCode::Unavailable)
        })?;
        let schema: SchemaRef = Arc::new(
            wire::tokens::parse_schema(
                "upload_url?: utf8, download_url?: utf8, expires_at?: timestamp(us,tz=UTC)",
            )
            .expect("static schema"),
        );
        let micros: Vec<i64> = urls
            .iter()
            .map(|u| {
                u.expires_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0)
            })
            .collect();
        let columns: Vec<arrow_array::ArrayRef> = vec![
            Arc::new(arrow_array::StringArray::from_iter_values(
                urls.iter().map(|u| u.upload_url.as_str()),
            )),
            Arc::new(arrow_array::StringArray::from_iter_values(
                urls.iter().map(|u| u.download_url.as_str()),
            )),
            Arc::new(arrow_array::TimestampMicrosecondArray::from(micros).with_timezone("UTC")),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        Ok::<_, RpcError>(wire::ipc::stream_bytes(&schema, &[batch])?)
    }
    .await;
    match result {
        Ok(out) => arrow_response(server, info, StatusCode::OK, out, false),
        Err(error) => error_response(server, info, &error, &empty),
    }
}

trait FromArrowColumn: Sized {
    fn from_arrow_column(column: &arrow_array::ArrayRef) -> Result<Self, String>;
}

impl FromArrowColumn for i64 {
    fn from_arrow_column(column: &arrow_array::ArrayRef) -> Result<Self, String> {
        <i64 as crate::rpc::FromArrow>::from_arrow(column.as_ref(), 0)
    }
}

/// Uploads one externalized stream and counts it in the metrics.
async fn externalize(
    server: &Server,
    external: &External,
    ipc: Vec<u8>,
) -> Result<crate::storage::Pointer, RpcError> {
    let pointer = external.externalize(ipc).await?;
    server.hosting.metrics.externalized_batches.inc();
    server
        .hosting
        .metrics
        .externalized_bytes
        .inc_by(pointer.uploaded_bytes);
    Ok(pointer)
}
