//! Canonical Arrow type tokens (`vgi_rpc/rpc/_type_tokens.py`), both ways.
//!
//! The protocol hash is defined over these tokens, and two Arrow types are the
//! same vgi-rpc type exactly when their tokens are equal (list and map child
//! names are normalised, nullability is kept). So kit-service uses them for
//! three things: declaring schemas readably (`"a: int64, b?: utf8"`), strict
//! request-schema validation, and the protocol hash for reflection.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Fields, IntervalUnit, Schema, TimeUnit, UnionMode};

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid type token `{text}`: {reason}")]
pub struct TokenError {
    pub text: String,
    pub reason: String,
}

/// The canonical token for `data_type`.
pub fn type_token(data_type: &DataType) -> String {
    use DataType::*;
    match data_type {
        Null => "null".into(),
        Boolean => "bool".into(),
        Int8 => "int8".into(),
        Int16 => "int16".into(),
        Int32 => "int32".into(),
        Int64 => "int64".into(),
        UInt8 => "uint8".into(),
        UInt16 => "uint16".into(),
        UInt32 => "uint32".into(),
        UInt64 => "uint64".into(),
        Float16 => "float16".into(),
        Float32 => "float32".into(),
        Float64 => "float64".into(),
        Utf8 => "utf8".into(),
        LargeUtf8 => "large_utf8".into(),
        Utf8View => "utf8_view".into(),
        Binary => "binary".into(),
        LargeBinary => "large_binary".into(),
        BinaryView => "binary_view".into(),
        Date32 => "date32".into(),
        Date64 => "date64".into(),
        FixedSizeBinary(width) => format!("fixed_size_binary({width})"),
        Decimal32(p, s) => format!("decimal32({p},{s})"),
        Decimal64(p, s) => format!("decimal64({p},{s})"),
        Decimal128(p, s) => format!("decimal128({p},{s})"),
        Decimal256(p, s) => format!("decimal256({p},{s})"),
        Time32(unit) => format!("time32({})", unit_token(unit)),
        Time64(unit) => format!("time64({})", unit_token(unit)),
        Timestamp(unit, None) => format!("timestamp({})", unit_token(unit)),
        Timestamp(unit, Some(tz)) => format!("timestamp({},tz={tz})", unit_token(unit)),
        Duration(unit) => format!("duration({})", unit_token(unit)),
        Interval(IntervalUnit::YearMonth) => "interval_months".into(),
        Interval(IntervalUnit::DayTime) => "interval_day_time".into(),
        Interval(IntervalUnit::MonthDayNano) => "interval_month_day_nano".into(),
        List(child) => format!("list<{}>", anon(child, "item")),
        LargeList(child) => format!("large_list<{}>", anon(child, "item")),
        ListView(child) => format!("list_view<{}>", anon(child, "item")),
        LargeListView(child) => format!("large_list_view<{}>", anon(child, "item")),
        FixedSizeList(child, size) => format!("fixed_size_list({size})<{}>", anon(child, "item")),
        Map(entries, sorted) => {
            let (key, value) = match entries.data_type() {
                Struct(fields) if fields.len() == 2 => {
                    (anon(&fields[0], "key"), anon(&fields[1], "value"))
                }
                _ => ("key:null".into(), "value?:null".into()),
            };
            format!(
                "map<{key},{value}>{}",
                if *sorted { ",keys_sorted" } else { "" }
            )
        }
        Struct(fields) => format!(
            "struct<{}>",
            fields
                .iter()
                .map(|f| child(f))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Union(fields, mode) => {
            let kind = if *mode == UnionMode::Sparse {
                "sparse_union"
            } else {
                "dense_union"
            };
            let parts: Vec<String> = fields
                .iter()
                .map(|(code, f)| format!("{code}={}", child(f)))
                .collect();
            format!("{kind}<{}>", parts.join(","))
        }
        Dictionary(index, value) => format!(
            "dictionary<index:{},value:{}>",
            type_token(index),
            type_token(value)
        ),
        RunEndEncoded(run_ends, values) => {
            format!(
                "run_end_encoded<run_ends:{},values:{}>",
                type_token(run_ends.data_type()),
                type_token(values.data_type())
            )
        }
    }
}

fn unit_token(unit: &TimeUnit) -> &'static str {
    match unit {
        TimeUnit::Second => "s",
        TimeUnit::Millisecond => "ms",
        TimeUnit::Microsecond => "us",
        TimeUnit::Nanosecond => "ns",
    }
}

fn child(field: &Field) -> String {
    format!(
        "{}{}:{}",
        field.name(),
        if field.is_nullable() { "?" } else { "" },
        type_token(field.data_type())
    )
}

fn anon(field: &Field, name: &str) -> String {
    format!(
        "{name}{}:{}",
        if field.is_nullable() { "?" } else { "" },
        type_token(field.data_type())
    )
}

/// `name: token` or `name?: token`, the form used in declarations and messages.
pub fn field_text(field: &Field) -> String {
    format!(
        "{}{}: {}",
        field.name(),
        if field.is_nullable() { "?" } else { "" },
        type_token(field.data_type())
    )
}

pub fn schema_text(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| field_text(f))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a schema declaration such as `"a: int64, label?: utf8"`.
pub fn parse_schema(text: &str) -> Result<Schema, TokenError> {
    let mut fields = Vec::new();
    for part in split_top_level(text, b',') {
        let part = trim(part);
        if part.is_empty() {
            continue;
        }
        fields.push(parse_field(part, ": ")?);
    }
    Ok(Schema::new(fields))
}

/// Parses one `name: token` / `name?: token` field.
fn parse_field(text: &str, separator: &str) -> Result<Field, TokenError> {
    let error = |reason: &str| TokenError {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let (name, token) = split_once_bytes(text, separator.as_bytes())
        .or_else(|| split_once_bytes(text, b":"))
        .ok_or_else(|| error("expected `name: type`"))?;
    let (name, nullable) = match trim(name).strip_suffix('?') {
        Some(stripped) => (stripped, true),
        None => (trim(name), false),
    };
    if name.is_empty() {
        return Err(error("empty field name"));
    }
    Ok(Field::new(name, parse_type(trim(token))?, nullable))
}

/// `text.split_once(separator)` for an ASCII separator, without building a
/// substring searcher per call (every declared field comes here at start).
fn split_once_bytes<'a>(text: &'a str, separator: &[u8]) -> Option<(&'a str, &'a str)> {
    let at = text
        .as_bytes()
        .windows(separator.len())
        .position(|window| window == separator)?;
    // An ASCII separator starts and ends on character boundaries.
    Some((&text[..at], &text[at + separator.len()..]))
}

/// `str::trim`, returning at once when neither end is whitespace (the usual
/// case); otherwise `str::trim` itself, so Unicode whitespace trims as before.
fn trim(text: &str) -> &str {
    let solid = |byte: Option<&u8>| byte.is_some_and(|b| b.is_ascii() && !b.is_ascii_whitespace());
    let bytes = text.as_bytes();
    if solid(bytes.first()) && solid(bytes.last()) {
        text
    } else {
        text.trim()
    }
}

/// Parses a type token such as `list<item?:utf8>`.
pub fn parse_type(token: &str) -> Result<DataType, TokenError> {
    let error = |reason: String| TokenError {
        text: token.to_string(),
        reason,
    };
    let token = trim(token);
    let simple = match token {
        "null" => Some(DataType::Null),
        "bool" => Some(DataType::Boolean),
        "int8" => Some(DataType::Int8),
        "int16" => Some(DataType::Int16),
        "int32" => Some(DataType::Int32),
        "int64" => Some(DataType::Int64),
        "uint8" => Some(DataType::UInt8),
        "uint16" => Some(DataType::UInt16),
        "uint32" => Some(DataType::UInt32),
        "uint64" => Some(DataType::UInt64),
        "float16" => Some(DataType::Float16),
        "float32" => Some(DataType::Float32),
        "float64" => Some(DataType::Float64),
        "utf8" => Some(DataType::Utf8),
        "large_utf8" => Some(DataType::LargeUtf8),
        "utf8_view" => Some(DataType::Utf8View),
        "binary" => Some(DataType::Binary),
        "large_binary" => Some(DataType::LargeBinary),
        "binary_view" => Some(DataType::BinaryView),
        "date32" => Some(DataType::Date32),
        "date64" => Some(DataType::Date64),
        "interval_months" => Some(DataType::Interval(IntervalUnit::YearMonth)),
        "interval_day_time" => Some(DataType::Interval(IntervalUnit::DayTime)),
        "interval_month_day_nano" => Some(DataType::Interval(IntervalUnit::MonthDayNano)),
        _ => None,
    };
    if let Some(simple) = simple {
        return Ok(simple);
    }
    let (head, params, children, suffix) = split_token(token).map_err(|r| error(r.to_string()))?;
    let params: Vec<&str> = params
        .map(|p| p.split(',').map(trim).collect())
        .unwrap_or_default();
    let number = |i: usize| -> Result<i64, TokenError> {
        params
            .get(i)
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(|| error(format!("expected a number parameter {i}")))
    };
    let unit = |text: &str| -> Result<TimeUnit, TokenError> {
        match text {
            "s" => Ok(TimeUnit::Second),
            "ms" => Ok(TimeUnit::Millisecond),
            "us" => Ok(TimeUnit::Microsecond),
            "ns" => Ok(TimeUnit::Nanosecond),
            other => Err(error(format!("unknown time unit `{other}`"))),
        }
    };
    let children = || -> Result<Vec<Field>, TokenError> {
        let Some(children) = children else {
            return Err(error("expected <children>".into()));
        };
        split_top_level(children, b',')
            .into_iter()
            .map(|c| parse_field(trim(c), ":"))
            .collect()
    };
    let one_child = |name: &str| -> Result<Arc<Field>, TokenError> {
        let mut fields = children()?;
        if fields.len() != 1 {
            return Err(error("expected exactly one child".into()));
        }
        let field = fields.remove(0);
        Ok(Arc::new(Field::new(
            name,
            field.data_type().clone(),
            field.is_nullable(),
        )))
    };
    let data_type = match head {
        "fixed_size_binary" => DataType::FixedSizeBinary(number(0)? as i32),
        "decimal32" => DataType::Decimal32(number(0)? as u8, number(1)? as i8),
        "decimal64" => DataType::Decimal64(number(0)? as u8, number(1)? as i8),
        "decimal128" => DataType::Decimal128(number(0)? as u8, number(1)? as i8),
        "decimal256" => DataType::Decimal256(number(0)? as u8, number(1)? as i8),
        "time32" => DataType::Time32(unit(params.first().copied().unwrap_or(""))?),
        "time64" => DataType::Time64(unit(params.first().copied().unwrap_or(""))?),
        "duration" => DataType::Duration(unit(params.first().copied().unwrap_or(""))?),
        "timestamp" => {
            let unit = unit(params.first().copied().unwrap_or(""))?;
            let tz = params.get(1).map(|p| {
                p.strip_prefix("tz=")
                    .map(Arc::from)
                    .ok_or_else(|| error("expected tz=".into()))
            });
            DataType::Timestamp(unit, tz.transpose()?)
        }
        "list" => DataType::List(one_child("item")?),
        "large_list" => DataType::LargeList(one_child("item")?),
        "list_view" => DataType::ListView(one_child("item")?),
        "large_list_view" => DataType::LargeListView(one_child("item")?),
        "fixed_size_list" => DataType::FixedSizeList(one_child("item")?, number(0)? as i32),
        "struct" => DataType::Struct(Fields::from(children()?)),
        "map" => {
            let fields = children()?;
            if fields.len() != 2 {
                return Err(error("map needs key and value".into()));
            }
            let key = Field::new(
                "key",
                fields[0].data_type().clone(),
                fields[0].is_nullable(),
            );
            let value = Field::new(
                "value",
                fields[1].data_type().clone(),
                fields[1].is_nullable(),
            );
            let entries = Field::new(
                "entries",
                DataType::Struct(Fields::from(vec![key, value])),
                false,
            );
            DataType::Map(Arc::new(entries), suffix == Some("keys_sorted"))
        }
        "dictionary" => {
            let fields = children()?;
            if fields.len() != 2 {
                return Err(error("dictionary needs index and value".into()));
            }
            DataType::Dictionary(
                Box::new(fields[0].data_type().clone()),
                Box::new(fields[1].data_type().clone()),
            )
        }
        other => return Err(error(format!("unknown type `{other}`"))),
    };
    Ok(data_type)
}

/// `(head, params, children, suffix)` of a type token.
type TokenParts<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);

/// Splits `head(params)<children>,suffix`.
fn split_token(token: &str) -> Result<TokenParts<'_>, &'static str> {
    let head_end = token.find(['(', '<']).unwrap_or(token.len());
    let head = &token[..head_end];
    let mut rest = &token[head_end..];
    let mut params = None;
    if let Some(after) = rest.strip_prefix('(') {
        let close = after.find(')').ok_or("unclosed `(`")?;
        params = Some(&after[..close]);
        rest = &after[close + 1..];
    }
    let mut children = None;
    if rest.starts_with('<') {
        let close = matching_angle(rest).ok_or("unclosed `<`")?;
        children = Some(&rest[1..close]);
        rest = &rest[close + 1..];
    }
    let suffix = rest.strip_prefix(',');
    if suffix.is_none() && !rest.is_empty() {
        return Err("trailing characters");
    }
    Ok((head, params, children, suffix))
}

// The scans below go byte by byte: brackets and separators are ASCII, and an
// ASCII byte in UTF-8 text is always a whole character.

fn matching_angle(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &byte) in text.as_bytes().iter().enumerate() {
        match byte {
            b'<' => depth += 1,
            b'>' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn split_top_level(text: &str, separator: u8) -> Vec<&str> {
    debug_assert!(separator.is_ascii());
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, &byte) in text.as_bytes().iter().enumerate() {
        match byte {
            b'<' | b'(' => depth += 1,
            b'>' | b')' => depth -= 1,
            byte if byte == separator && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(token: &str) {
        let parsed = parse_type(token).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(type_token(&parsed), token);
    }

    #[test]
    fn tokens_roundtrip() {
        for token in [
            "int64",
            "utf8",
            "timestamp(us,tz=UTC)",
            "timestamp(us)",
            "decimal128(20,4)",
            "fixed_size_binary(8)",
            "list<item?:utf8>",
            "list<item?:list<item?:int64>>",
            "struct<a:int32,b?:utf8>",
            "map<key:utf8,value?:int64>",
            "dictionary<index:int16,value:utf8>",
            "list<item?:struct<x:float64,y:float64>>",
            "map<key:utf8,value?:dictionary<index:int16,value:utf8>>",
            "time64(us)",
            "duration(us)",
        ] {
            check(token);
        }
    }

    #[test]
    fn schemas_parse_with_nullability() {
        let schema = parse_schema("a: int64, b?: list<item?:utf8>").unwrap();
        assert_eq!(schema_text(&schema), "a: int64, b?: list<item?:utf8>");
        assert!(!schema.field(0).is_nullable());
        assert!(schema.field(1).is_nullable());
        assert_eq!(parse_schema("").unwrap().fields().len(), 0);
    }

    #[test]
    fn byte_scans_split_and_trim_as_the_str_methods_do() {
        let texts = [
            "a: int64",
            "a:int64",
            " a : int64 ",
            "a:b: int64",
            "a: b: int64",
            "größe: utf8",
            "\u{a0}name\u{2003}: int64\u{a0}",
            "\tname?:\nutf8\r",
            "no separator",
            ": int64",
            "",
            " ",
            "\u{a0}",
            "é",
        ];
        for text in texts {
            for separator in [": ", ":"] {
                assert_eq!(
                    split_once_bytes(text, separator.as_bytes()),
                    text.split_once(separator),
                    "{text:?} at {separator:?}"
                );
            }
            assert_eq!(trim(text), text.trim(), "{text:?}");
        }
        assert_eq!(
            split_top_level(
                "a: list<item:int64>, b: map<key:utf8,value:int64>, é: decimal128(20,4)",
                b','
            ),
            [
                "a: list<item:int64>",
                " b: map<key:utf8,value:int64>",
                " é: decimal128(20,4)"
            ]
        );
        let schema = parse_schema("größe: int64, \u{a0}b?: utf8, a:b: int64").unwrap();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["größe", "b", "a:b"]);
    }

    #[test]
    fn unknown_types_are_errors() {
        assert!(parse_type("int65").is_err());
        assert!(parse_type("list<item:int64").is_err());
        assert!(parse_schema("a int64").is_err());
    }
}
