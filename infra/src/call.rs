//! `deploy-kit call`: the grpcurl of vgi-rpc. With a URL alone it lists the
//! server's protocols and methods through reflection; with
//! `PROTOCOL.METHOD` and arguments (`name=value`, or `--json`) it calls a
//! unary method or follows a producer stream and prints the rows as JSON
//! (default) or a table.
//!
//! Arguments are converted by the declared Arrow type that reflection
//! reports, so `a=1` becomes an `int64` for `a: int64` and a `utf8` for
//! `a: utf8`; a value that does not convert names the parameter and the
//! type it expected. Every failure is a [`CallError`], whose one table maps
//! it to an exit code and a hint: 0 success, 1 the server answered with an
//! error, 2 a usage mistake (URL, method, argument), 3 no usable answer.

use std::io::Write;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use arrow_cast::display::{ArrayFormatter, FormatOptions};
use arrow_schema::{DataType, Field, Schema};
use base64::Engine;
use kit_service::client::{
    Client, ClientError, MethodDescription, MethodKind, ProtocolDescription,
};
use kit_service::wire::tokens::{field_text, type_token};
use serde_json::{Map, Value};

/// `deploy-kit call URL [PROTOCOL.METHOD [name=value ...]]`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Base URL of the service, with its path prefix if any (`http://127.0.0.1:8080`).
    pub url: String,
    /// `PROTOCOL.METHOD` to call, e.g. `kit.Demo.v1.add`; omit to list what the server hosts.
    pub method: Option<String>,
    /// Arguments as `name=value`, converted by the parameter's declared type.
    #[arg(value_name = "NAME=VALUE")]
    pub arguments: Vec<String>,
    /// Arguments as one JSON object instead, e.g. `{"a": 1, "b": 2}`.
    #[arg(long, value_name = "OBJECT", conflicts_with = "arguments")]
    pub json: Option<String>,
    /// Output: JSON (one object per row; the default for calls) or a table.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Stop a producer stream after this many batches.
    #[arg(long, value_name = "N")]
    pub max_batches: Option<usize>,
    /// API key sent as `Authorization: Bearer` to a service that requires auth.
    #[arg(long, env = "DEPLOY_KIT_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per row, one per line.
    Json,
    /// An aligned text table per batch.
    Table,
}

/// Why `call` failed. [`CallError::exit_code`] and [`CallError::hint`] are
/// the one table from error to exit code and next step.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL is not an http(s) base URL.
    #[error("`{url}` is not a service URL: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// `PROTOCOL.METHOD` has no dot.
    #[error("`{0}` is not `PROTOCOL.METHOD`")]
    BadTarget(String),
    /// The server does not host the protocol.
    #[error("`{protocol}` is not hosted at `{url}`; it hosts: {known}")]
    UnknownProtocol {
        /// The service URL.
        url: String,
        /// The protocol asked for.
        protocol: String,
        /// The hosted protocols, comma-separated.
        known: String,
    },
    /// The protocol has no such method.
    #[error("`{protocol}` has no method `{method}`; its methods: {known}")]
    UnknownMethod {
        /// The protocol.
        protocol: String,
        /// The method asked for.
        method: String,
        /// Its methods, comma-separated.
        known: String,
    },
    /// An exchange stream needs input batches, which a shell command cannot send.
    #[error("`{0}` is an exchange stream; `call` runs unary methods and producer streams")]
    Exchange(String),
    /// An argument is malformed, unknown, missing or of the wrong type.
    #[error("{message}")]
    Argument {
        /// What is wrong, naming the parameter and its type.
        message: String,
        /// The method's parameters, for the hint.
        signature: String,
    },
    /// The server answered with an error batch.
    #[error("the call failed: {0}")]
    Rpc(kit_service::RpcError),
    /// The server refused the API key.
    #[error("{0}")]
    Unauthorized(ClientError),
    /// Nothing answered at the URL.
    #[error("{0}")]
    Unreachable(ClientError),
    /// An answer came, but not a usable one.
    #[error("{0}")]
    Failed(ClientError),
    /// Writing to stdout failed.
    #[error("failed to write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CallError {
    /// The documented exit code of each error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::Rpc(_) | CallError::Unauthorized(_) => 1,
            CallError::BadUrl { .. }
            | CallError::BadTarget(_)
            | CallError::UnknownProtocol { .. }
            | CallError::UnknownMethod { .. }
            | CallError::Exchange(_)
            | CallError::Argument { .. } => 2,
            CallError::Unreachable(_) | CallError::Failed(_) | CallError::Output(_) => 3,
        }
    }

    /// The next step for each error.
    pub fn hint(&self) -> String {
        match self {
            CallError::BadUrl { .. } => {
                "give the service's base URL, e.g. `deploy-kit call http://127.0.0.1:8080`".into()
            }
            CallError::BadTarget(_) | CallError::UnknownProtocol { .. } | CallError::UnknownMethod { .. } => {
                "run `deploy-kit call URL` to list every protocol and method".into()
            }
            CallError::Exchange(_) => {
                "call exchange streams from a client (`kit_service::client` or the Python client)".into()
            }
            CallError::Argument { signature, .. } => {
                format!("pass every parameter as `name=value` or with `--json`: {signature}")
            }
            CallError::Rpc(_) => "the method itself refused the call; check the arguments".into(),
            CallError::Unauthorized(ClientError::Unauthorized { reason, .. })
                if reason == "expired_credential" =>
            {
                "the key's `expires` has passed: ask for a new key (the service's `KIT_API_KEYS` entry) and pass it with `--api-key`".into()
            }
            CallError::Unauthorized(ClientError::Unauthorized { reason, url, .. })
                if reason == "insufficient_scope" && url.contains(kit_service::reflection::NAME) =>
            {
                format!(
                    "`call` describes the method first: add `{}/*` to the key's `scopes=`, or call it from a client that knows the schema",
                    kit_service::reflection::NAME
                )
            }
            CallError::Unauthorized(ClientError::Unauthorized { reason, .. })
                if reason == "insufficient_scope" =>
            {
                "the key's `scopes` do not cover this method: use a key whose `scopes=` lists it (`protocol/method` or `protocol/*`)".into()
            }
            CallError::Unauthorized(_) => {
                "pass the key with `--api-key` or set `DEPLOY_KIT_API_KEY`".into()
            }
            CallError::Unreachable(_) => {
                "is the service running there? `deploy-kit up local` starts one on http://127.0.0.1:8080".into()
            }
            CallError::Failed(_) => "check that the URL is a vgi-rpc service".into(),
            CallError::Output(_) => String::new(),
        }
    }

    fn from_client(error: ClientError) -> CallError {
        match error {
            ClientError::Rpc(rpc) => CallError::Rpc(rpc),
            ClientError::Unauthorized { .. } => CallError::Unauthorized(error),
            ClientError::InvalidUrl { url, reason } => CallError::BadUrl { url, reason },
            _ if error.is_unreachable() => CallError::Unreachable(error),
            _ => CallError::Failed(error),
        }
    }
}

/// `deploy-kit call`: runs, prints, returns the exit code.
pub fn run(args: Args) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start an async runtime: {error}");
            return std::process::ExitCode::from(3);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match runtime.block_on(call(&args, &mut out)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let _ = out.flush();
            crate::CommandError::new(error.to_string(), error.hint(), error.exit_code()).report()
        }
    }
}

/// The command's work, writing results to `out` and logs to stderr.
pub async fn call(args: &Args, out: &mut dyn Write) -> Result<(), CallError> {
    let client = client(args)?;
    let Some(target) = &args.method else {
        return list(&client, args.format.unwrap_or(Format::Table), out).await;
    };
    let (protocol, method) = target
        .rsplit_once('.')
        .filter(|(p, m)| !p.is_empty() && !m.is_empty())
        .ok_or_else(|| CallError::BadTarget(target.clone()))?;
    let description = describe(&client, protocol).await?;
    let Some(declared) = description.method(method) else {
        return Err(CallError::UnknownMethod {
            protocol: protocol.to_string(),
            method: method.to_string(),
            known: description
                .methods
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        });
    };
    let params = params(target, declared, args)?;
    let format = args.format.unwrap_or(Format::Json);
    match declared.kind {
        MethodKind::Exchange => Err(CallError::Exchange(target.clone())),
        MethodKind::Unary => {
            let response = client
                .unary(protocol, method, params)
                .await
                .map_err(CallError::from_client)?;
            print_logs(&response.logs);
            print_batch(&response.batch, format, out)?;
            Ok(())
        }
        MethodKind::Producer => {
            let mut stream = client
                .producer(protocol, method, params)
                .await
                .map_err(CallError::from_client)?;
            if let Some(header) = stream.header() {
                eprintln!(
                    "header: {}",
                    rows_json(header).first().cloned().unwrap_or_default()
                );
            }
            let mut printed_logs = 0;
            let mut batches = 0;
            loop {
                if args.max_batches.is_some_and(|max| batches >= max) {
                    // Let the server run its cancel hook; a failure here changes nothing.
                    let _ = stream.cancel().await;
                    break;
                }
                let next = stream.next_batch().await;
                print_logs(&stream.logs()[printed_logs..]);
                printed_logs = stream.logs().len();
                let Some(batch) = next.map_err(CallError::from_client)? else {
                    break;
                };
                print_batch(&batch, format, out)?;
                out.flush()?;
                batches += 1;
            }
            Ok(())
        }
    }
}

fn client(args: &Args) -> Result<Client, CallError> {
    let mut client = Client::new(&args.url).map_err(CallError::from_client)?;
    if let Some(key) = args.api_key.as_deref().filter(|k| !k.is_empty()) {
        client = client.with_api_key(key);
    }
    // A service on loopback (`up local`) keeps its objects on loopback too.
    let loopback = url::Url::parse(&args.url)
        .ok()
        .is_some_and(|url| match url.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        });
    if loopback {
        client = client
            .with_fetch_allowlist(["http://127.0.0.1", "http://localhost", "http://[::1]"])
            .map_err(CallError::from_client)?;
    }
    Ok(client)
}

async fn describe(client: &Client, protocol: &str) -> Result<ProtocolDescription, CallError> {
    match client.describe(protocol).await {
        Ok(description) => Ok(description),
        Err(ClientError::Rpc(rpc)) if rpc.kind.as_deref() == Some("protocol_not_supported") => {
            let listed = client
                .list_protocols()
                .await
                .map_err(CallError::from_client)?;
            Err(CallError::UnknownProtocol {
                url: client.base_url().to_string(),
                protocol: protocol.to_string(),
                known: listed
                    .protocols
                    .iter()
                    .map(|p| p.name.as_str())
                    .filter(|name| *name != kit_service::reflection::NAME)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
        Err(error) => Err(CallError::from_client(error)),
    }
}

/// Every protocol and method, with parameter and result types.
async fn list(client: &Client, format: Format, out: &mut dyn Write) -> Result<(), CallError> {
    let listed = client
        .list_protocols()
        .await
        .map_err(CallError::from_client)?;
    let mut described = Vec::new();
    for summary in &listed.protocols {
        if summary.name == kit_service::reflection::NAME {
            continue;
        }
        described.push(describe(client, &summary.name).await?);
    }
    if format == Format::Json {
        let protocols: Vec<Value> = described
            .iter()
            .map(|p| {
                serde_json::json!({
                    "protocol": p.name,
                    "version": p.version,
                    "methods": p.methods.iter().map(|m| serde_json::json!({
                        "name": m.name,
                        "kind": m.kind.as_str(),
                        "params": fields_json(&m.params),
                        "result": m.result.as_ref().map(|s| fields_json(s)),
                        "header": m.header.as_ref().map(|s| fields_json(s)),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&Value::Array(protocols)).unwrap_or_default()
        )?;
        return Ok(());
    }
    for protocol in &described {
        if protocol.version.is_empty() {
            writeln!(out, "{}", protocol.name)?;
        } else {
            writeln!(out, "{} (version {})", protocol.name, protocol.version)?;
        }
        for method in &protocol.methods {
            writeln!(out, "  {:<8} {}", method.kind.as_str(), signature(method))?;
        }
    }
    Ok(())
}

fn fields_json(schema: &Schema) -> Value {
    Value::Array(
        schema
            .fields()
            .iter()
            .map(|f| {
                serde_json::json!({
                    "name": f.name(),
                    "type": type_token(f.data_type()),
                    "nullable": f.is_nullable(),
                })
            })
            .collect(),
    )
}

/// `add(a: int64, b: int64) -> int64`, `count(n: int64) -> stream`.
fn signature(method: &MethodDescription) -> String {
    let params = method
        .params
        .fields()
        .iter()
        .map(|f| field_text(f))
        .collect::<Vec<_>>()
        .join(", ");
    let result = match (method.kind, &method.result, &method.header) {
        (MethodKind::Unary, Some(result), _) => result
            .fields()
            .iter()
            .map(|f| {
                let text = type_token(f.data_type());
                if f.is_nullable() {
                    format!("{text}?")
                } else {
                    text
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        (MethodKind::Unary, None, _) => "()".to_string(),
        (_, _, Some(header)) => format!(
            "stream (header: {})",
            header
                .fields()
                .iter()
                .map(|f| field_text(f))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (_, _, None) => "stream".to_string(),
    };
    format!("{}({params}) -> {result}", method.name)
}

/// The one-row parameter batch, converted by the declared types.
fn params(target: &str, method: &MethodDescription, args: &Args) -> Result<RecordBatch, CallError> {
    let signature = method
        .params
        .fields()
        .iter()
        .map(|f| field_text(f))
        .collect::<Vec<_>>()
        .join(", ");
    let argument_error = |message: String| CallError::Argument {
        message,
        signature: if signature.is_empty() {
            "it takes no parameters".to_string()
        } else {
            signature.clone()
        },
    };
    let mut given: Vec<(String, Value)> = Vec::new();
    if let Some(json) = &args.json {
        let object: Map<String, Value> = serde_json::from_str(json)
            .map_err(|e| argument_error(format!("`--json` is not a JSON object: {e}")))?;
        given.extend(object);
    }
    for argument in &args.arguments {
        let (name, value) = argument
            .split_once('=')
            .ok_or_else(|| argument_error(format!("argument `{argument}` is not `name=value`")))?;
        if given.iter().any(|(n, _)| n == name) {
            return Err(argument_error(format!("argument `{name}` is given twice")));
        }
        given.push((name.to_string(), Value::String(value.to_string())));
    }
    for (name, _) in &given {
        if method.params.field_with_name(name).is_err() {
            return Err(argument_error(format!(
                "`{target}` has no parameter `{name}`"
            )));
        }
    }
    let mut columns: Vec<ArrayRef> = Vec::new();
    for field in method.params.fields() {
        let value = given
            .iter()
            .find(|(n, _)| n == field.name())
            .map(|(_, v)| v);
        columns.push(
            column(field, value)
                .map_err(|message| argument_error(format!("`{target}`: {message}")))?,
        );
    }
    let schema = Arc::new(Schema::new(method.params.fields().clone()));
    if columns.is_empty() {
        return Ok(RecordBatch::new_empty(schema));
    }
    RecordBatch::try_new(schema, columns).map_err(|e| argument_error(e.to_string()))
}

/// One parameter's one-row column: text converted to the declared type.
fn column(field: &Field, value: Option<&Value>) -> Result<ArrayRef, String> {
    let expected = type_token(field.data_type());
    let text = match value {
        None => {
            return Err(format!("missing argument `{}` ({expected})", field.name()));
        }
        Some(Value::Null) if field.is_nullable() => {
            return Ok(new_null_array(field.data_type(), 1));
        }
        Some(Value::Null) => {
            return Err(format!(
                "argument `{}` is not nullable: expected {expected}, got null",
                field.name()
            ));
        }
        Some(Value::String(text)) => text.clone(),
        Some(Value::Number(number)) => number.to_string(),
        Some(Value::Bool(flag)) => flag.to_string(),
        Some(other) => {
            return Err(format!(
                "argument `{}`: expected {expected}, got the JSON value {other}",
                field.name()
            ));
        }
    };
    if !convertible(field.data_type()) {
        return Err(format!(
            "argument `{}` has type {expected}, which `call` cannot build from text",
            field.name()
        ));
    }
    let source: ArrayRef = Arc::new(StringArray::from(vec![text.clone()]));
    let options = arrow_cast::CastOptions {
        safe: false,
        ..Default::default()
    };
    arrow_cast::cast_with_options(&source, field.data_type(), &options)
        .ok()
        .filter(|array| array.is_valid(0))
        .ok_or_else(|| {
            format!(
                "argument `{}`: expected {expected}, got `{text}`",
                field.name()
            )
        })
}

/// Scalar types a text value converts to (nested types need a client).
fn convertible(data_type: &DataType) -> bool {
    match data_type {
        DataType::Dictionary(_, value) => convertible(value),
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::Struct(_)
        | DataType::Map(..)
        | DataType::Union(..)
        | DataType::Null => false,
        _ => arrow_cast::can_cast_types(&DataType::Utf8, data_type),
    }
}

fn print_logs(logs: &[kit_service::wire::LogRecord]) {
    for log in logs {
        if log.extra.is_empty() {
            eprintln!("[{}] {}", log.level.as_str(), log.message);
        } else {
            eprintln!(
                "[{}] {} {}",
                log.level.as_str(),
                log.message,
                Value::Object(log.extra.clone())
            );
        }
    }
}

fn print_batch(batch: &RecordBatch, format: Format, out: &mut dyn Write) -> Result<(), CallError> {
    match format {
        Format::Json => {
            let rows = rows_json(batch);
            if rows.is_empty() && batch.num_columns() == 0 {
                writeln!(out, "{{}}")?;
            }
            for row in rows {
                writeln!(out, "{row}")?;
            }
        }
        Format::Table => write!(out, "{}", table(batch))?,
    }
    Ok(())
}

/// Each row as a JSON object, column name to value.
fn rows_json(batch: &RecordBatch) -> Vec<Value> {
    (0..batch.num_rows())
        .map(|row| {
            let mut object = Map::new();
            for (field, array) in batch.schema().fields().iter().zip(batch.columns()) {
                object.insert(field.name().clone(), value_json(array, row));
            }
            Value::Object(object)
        })
        .collect()
}

/// One cell as JSON: numbers, booleans and strings as themselves, binary as
/// base64, lists and structs nested, anything else in Arrow's display form.
fn value_json(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    macro_rules! number {
        ($type:ty) => {
            serde_json::json!(array.as_primitive::<$type>().value(row))
        };
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => number!(Int8Type),
        DataType::Int16 => number!(Int16Type),
        DataType::Int32 => number!(Int32Type),
        DataType::Int64 => number!(Int64Type),
        DataType::UInt8 => number!(UInt8Type),
        DataType::UInt16 => number!(UInt16Type),
        DataType::UInt32 => number!(UInt32Type),
        DataType::UInt64 => number!(UInt64Type),
        DataType::Float32 => number!(Float32Type),
        DataType::Float64 => number!(Float64Type),
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Binary => base64_value(array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => base64_value(array.as_binary::<i64>().value(row)),
        DataType::List(_) => {
            let values = array.as_list::<i32>().value(row);
            Value::Array((0..values.len()).map(|i| value_json(&values, i)).collect())
        }
        DataType::LargeList(_) => {
            let values = array.as_list::<i64>().value(row);
            Value::Array((0..values.len()).map(|i| value_json(&values, i)).collect())
        }
        DataType::Struct(fields) => {
            let structs = array.as_struct();
            Value::Object(
                fields
                    .iter()
                    .zip(structs.columns())
                    .map(|(f, c)| (f.name().clone(), value_json(c, row)))
                    .collect(),
            )
        }
        _ => Value::String(display(array, row)),
    }
}

fn base64_value(bytes: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn display(array: &ArrayRef, row: usize) -> String {
    let options = FormatOptions::default().with_null("null");
    match ArrayFormatter::try_new(array.as_ref(), &options) {
        Ok(formatter) => formatter.value(row).to_string(),
        Err(_) => format!("<{}>", type_token(array.data_type())),
    }
}

/// An aligned text table: a header row, a rule, one line per row.
fn table(batch: &RecordBatch) -> String {
    let headers: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let rows: Vec<Vec<String>> = (0..batch.num_rows())
        .map(|row| {
            batch
                .columns()
                .iter()
                .map(|array| match value_json(array, row) {
                    Value::String(text) => text,
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join(" | ")
            .trim_end()
            .to_string()
    };
    let mut text = String::new();
    text.push_str(&line(&headers));
    text.push('\n');
    text.push_str(
        &widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-"),
    );
    text.push('\n');
    for row in &rows {
        text.push_str(&line(row));
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_converts_by_the_declared_type() {
        let field = Field::new("a", DataType::Int64, false);
        let array = column(&field, Some(&Value::String("42".into()))).unwrap();
        assert_eq!(value_json(&array, 0), serde_json::json!(42));
        let error = column(&field, Some(&Value::String("forty".into()))).unwrap_err();
        assert_eq!(error, "argument `a`: expected int64, got `forty`");
        let error = column(&field, None).unwrap_err();
        assert_eq!(error, "missing argument `a` (int64)");
        let nullable = Field::new("b", DataType::Utf8, true);
        assert!(column(&nullable, Some(&Value::Null)).unwrap().is_null(0));
        let list = Field::new(
            "c",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        );
        assert!(
            column(&list, Some(&Value::String("x".into())))
                .unwrap_err()
                .contains("cannot build")
        );
    }

    #[test]
    fn tables_align_columns() {
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("value", DataType::Int64, false),
                Field::new("name", DataType::Utf8, false),
            ])),
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![1, 200])),
                Arc::new(StringArray::from(vec!["a", "bc"])),
            ],
        )
        .unwrap();
        assert_eq!(
            table(&batch),
            "value | name\n------+-----\n1     | a\n200   | bc\n"
        );
    }
}
