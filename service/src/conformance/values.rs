//! Python-shaped values for the conformance protocols.
//!
//! The reference implementation builds its dataclasses (stream headers,
//! `NestedContainers`, `Point`) as Python objects and lets the framework turn
//! them into Arrow. To produce byte-for-byte the same schemas, this module
//! spells each dataclass schema in type tokens (copied from upstream's
//! `ARROW_SCHEMA`) and fills it from a small dynamic [`PyValue`] tree. It also
//! reproduces Python's `repr()` of floats and strings, because several
//! reference messages are f-strings over those values.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::Int16Type;
use arrow_array::{
    Array, ArrayRef, DictionaryArray, Int16Array, ListArray, MapArray, RecordBatch, StructArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer};
use arrow_schema::{DataType, SchemaRef};

use crate::rpc::FromArrow;
use crate::wire::RpcError;
use crate::wire::tokens::parse_schema;

/// `Point.ARROW_SCHEMA`.
#[cfg(test)]
pub const POINT_SCHEMA: &str = "x: float64, y: float64";
/// `ConformanceHeader.ARROW_SCHEMA`.
pub const CONFORMANCE_HEADER_SCHEMA: &str = "total_expected: int64, description: utf8";
/// `RichHeader.ARROW_SCHEMA`.
pub const RICH_HEADER_SCHEMA: &str = "str_field: utf8, bytes_field: binary, int_field: int64, float_field: float64, bool_field: bool, \
    list_of_int: list<item?:int64>, list_of_str: list<item?:utf8>, dict_field: map<key:utf8,value?:int64>, \
    enum_field: dictionary<index:int16,value:utf8>, nested_point: struct<x:float64,y:float64>, optional_str?: utf8, \
    optional_int?: int64, optional_nested?: struct<x:float64,y:float64>, list_of_nested: list<item?:struct<x:float64,y:float64>>, \
    nested_list: list<item?:list<item?:int64>>, annotated_int32: int32, annotated_float32: float32, dict_str_str: map<key:utf8,value?:utf8>";
/// `NestedContainers.ARROW_SCHEMA`.
pub const NESTED_CONTAINERS_SCHEMA: &str = "statuses: list<item?:dictionary<index:int16,value:utf8>>, \
    points: list<item?:struct<x:float64,y:float64>>, status_by_name: map<key:utf8,value?:dictionary<index:int16,value:utf8>>, \
    frozen_statuses: list<item?:dictionary<index:int16,value:utf8>>, tagged_status?: dictionary<index:int16,value:utf8>, \
    tagged_point?: struct<x:float64,y:float64>, tagged_batch?: binary";

/// Member names of the reference `Status` enum, in declaration order.
/// Enums travel by member name, dictionary-encoded.
pub const STATUS_NAMES: [&str; 3] = ["PENDING", "ACTIVE", "CLOSED"];
/// What decodes as a `Status`: each member's name and its value.
pub const STATUS_MEMBERS: [&str; 6] =
    ["PENDING", "ACTIVE", "CLOSED", "pending", "active", "closed"];

/// Parses one of the schema constants above (a programming error if it fails).
pub fn declared_schema(tokens: &str) -> SchemaRef {
    Arc::new(
        parse_schema(tokens)
            .unwrap_or_else(|error| panic!("conformance schema constant is malformed: {error}")),
    )
}

/// A Python value about to become one Arrow cell.
#[derive(Debug, Clone, PartialEq)]
pub enum PyValue {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    List(Vec<PyValue>),
    /// A dict: entries in insertion order.
    Dict(Vec<(PyValue, PyValue)>),
    /// A dataclass: field values in schema order.
    Struct(Vec<PyValue>),
}

impl PyValue {
    pub fn str(text: impl Into<String>) -> PyValue {
        PyValue::Str(text.into())
    }

    pub fn point(x: f64, y: f64) -> PyValue {
        PyValue::Struct(vec![PyValue::Float(x), PyValue::Float(y)])
    }
}

fn unsupported(data_type: &DataType, value: &PyValue) -> RpcError {
    RpcError::new(
        "TypeError",
        format!("cannot convert {value:?} to Arrow type {data_type}"),
    )
}

fn nulls_of(values: &[PyValue]) -> Option<NullBuffer> {
    values
        .contains(&PyValue::None)
        .then(|| NullBuffer::from_iter(values.iter().map(|v| *v != PyValue::None)))
}

/// Converts a column of Python values into an Arrow array of `data_type`.
pub fn to_array(values: &[PyValue], data_type: &DataType) -> Result<ArrayRef, RpcError> {
    macro_rules! scalar {
        ($builder:expr, $pattern:pat => $value:expr) => {{
            let mut builder = $builder;
            for value in values {
                match value {
                    PyValue::None => builder.append_null(),
                    $pattern => builder.append_value($value),
                    other => return Err(unsupported(data_type, other)),
                }
            }
            Arc::new(builder.finish()) as ArrayRef
        }};
    }
    let array = match data_type {
        DataType::Boolean => scalar!(BooleanBuilder::new(), PyValue::Bool(b) => *b),
        DataType::Int64 => scalar!(Int64Builder::new(), PyValue::Int(i) => *i),
        DataType::Int32 => {
            let mut builder = Int32Builder::new();
            for value in values {
                match value {
                    PyValue::None => builder.append_null(),
                    PyValue::Int(i) => builder.append_value(i32::try_from(*i).map_err(|_| {
                        RpcError::new("OverflowError", format!("value {i} out of range for int32"))
                    })?),
                    other => return Err(unsupported(data_type, other)),
                }
            }
            Arc::new(builder.finish())
        }
        DataType::Float64 => scalar!(Float64Builder::new(), PyValue::Float(f) => *f),
        DataType::Float32 => scalar!(Float32Builder::new(), PyValue::Float(f) => *f as f32),
        DataType::Utf8 => scalar!(StringBuilder::new(), PyValue::Str(s) => s),
        DataType::Binary => scalar!(BinaryBuilder::new(), PyValue::Bytes(b) => b),
        DataType::Dictionary(key, value)
            if **key == DataType::Int16 && **value == DataType::Utf8 =>
        {
            let mut dictionary: Vec<&str> = Vec::new();
            let mut keys: Vec<Option<i16>> = Vec::with_capacity(values.len());
            for value in values {
                match value {
                    PyValue::None => keys.push(None),
                    PyValue::Str(text) => {
                        let index = match dictionary.iter().position(|known| known == text) {
                            Some(index) => index,
                            None => {
                                dictionary.push(text);
                                dictionary.len() - 1
                            }
                        };
                        let index = i16::try_from(index).map_err(|_| {
                            RpcError::new(
                                "OverflowError",
                                "too many distinct dictionary values for int16",
                            )
                        })?;
                        keys.push(Some(index));
                    }
                    other => return Err(unsupported(data_type, other)),
                }
            }
            let dictionary_values: ArrayRef = Arc::new(arrow_array::StringArray::from(dictionary));
            Arc::new(DictionaryArray::<Int16Type>::try_new(
                Int16Array::from(keys),
                dictionary_values,
            )?)
        }
        DataType::List(item) => {
            let mut children = Vec::new();
            let mut lengths = Vec::with_capacity(values.len());
            for value in values {
                match value {
                    PyValue::None => lengths.push(0),
                    PyValue::List(items) => {
                        lengths.push(items.len());
                        children.extend(items.iter().cloned());
                    }
                    other => return Err(unsupported(data_type, other)),
                }
            }
            let child = to_array(&children, item.data_type())?;
            Arc::new(ListArray::try_new(
                item.clone(),
                OffsetBuffer::from_lengths(lengths),
                child,
                nulls_of(values),
            )?)
        }
        DataType::Map(entries, sorted) => {
            let DataType::Struct(entry_fields) = entries.data_type() else {
                return Err(unsupported(data_type, &PyValue::None));
            };
            let (mut keys, mut items, mut lengths) =
                (Vec::new(), Vec::new(), Vec::with_capacity(values.len()));
            for value in values {
                match value {
                    PyValue::None => lengths.push(0),
                    PyValue::Dict(pairs) => {
                        lengths.push(pairs.len());
                        for (key, item) in pairs {
                            keys.push(key.clone());
                            items.push(item.clone());
                        }
                    }
                    other => return Err(unsupported(data_type, other)),
                }
            }
            let key_array = to_array(&keys, entry_fields[0].data_type())?;
            let item_array = to_array(&items, entry_fields[1].data_type())?;
            let entry_array =
                StructArray::try_new(entry_fields.clone(), vec![key_array, item_array], None)?;
            Arc::new(MapArray::try_new(
                entries.clone(),
                OffsetBuffer::from_lengths(lengths),
                entry_array,
                nulls_of(values),
                *sorted,
            )?)
        }
        DataType::Struct(fields) => {
            let mut columns = Vec::with_capacity(fields.len());
            for (index, field) in fields.iter().enumerate() {
                let mut column = Vec::with_capacity(values.len());
                for value in values {
                    match value {
                        PyValue::None => column.push(PyValue::None),
                        PyValue::Struct(members) if members.len() == fields.len() => {
                            column.push(members[index].clone())
                        }
                        other => return Err(unsupported(data_type, other)),
                    }
                }
                columns.push(to_array(&column, field.data_type())?);
            }
            Arc::new(StructArray::try_new(
                fields.clone(),
                columns,
                nulls_of(values),
            )?)
        }
        other => return Err(unsupported(other, values.first().unwrap_or(&PyValue::None))),
    };
    Ok(array)
}

/// A one-row batch of `schema` holding one dataclass instance (`fields` in schema order).
pub fn dataclass_batch(schema: &SchemaRef, fields: Vec<PyValue>) -> Result<RecordBatch, RpcError> {
    if fields.len() != schema.fields().len() {
        return Err(RpcError::new(
            "TypeError",
            format!(
                "expected {} dataclass fields, got {}",
                schema.fields().len(),
                fields.len()
            ),
        ));
    }
    let columns = schema
        .fields()
        .iter()
        .zip(fields)
        .map(|(field, value)| to_array(&[value], field.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// A dataclass serialized as upstream's `binary` cells carry it: one IPC stream, one row.
pub fn dataclass_bytes(schema: &SchemaRef, fields: Vec<PyValue>) -> Result<Vec<u8>, RpcError> {
    let batch = dataclass_batch(schema, fields)?;
    Ok(crate::wire::ipc::stream_bytes(schema, &[batch])?)
}

/// Reads the single dataclass row of a nested IPC stream (a `binary` parameter).
pub fn read_dataclass(bytes: &[u8]) -> Result<RecordBatch, RpcError> {
    let body = bytes::Bytes::copy_from_slice(bytes);
    let (stream, _) = crate::wire::ipc::read_stream(&body, 0)
        .map_err(|error| RpcError::new("TypeError", error.to_string()))?;
    let batch = stream
        .batches
        .into_iter()
        .next()
        .map(|b| b.batch)
        .ok_or_else(|| RpcError::new("TypeError", "nested IPC stream holds no record batch"))?;
    if batch.num_rows() != 1 {
        return Err(RpcError::new(
            "TypeError",
            format!(
                "expected a single-row dataclass batch, got {} rows",
                batch.num_rows()
            ),
        ));
    }
    Ok(batch)
}

/// One field of a decoded dataclass row.
pub fn dataclass_field<T: FromArrow>(batch: &RecordBatch, name: &str) -> Result<T, RpcError> {
    let column = batch.column_by_name(name).ok_or_else(|| {
        RpcError::new("TypeError", format!("dataclass field '{name}' is missing"))
    })?;
    T::from_arrow(column.as_ref(), 0)
        .map_err(|error| RpcError::new("TypeError", format!("dataclass field '{name}': {error}")))
}

/// The elements of row `row` of a list column.
pub fn list_elements(array: &dyn Array, row: usize) -> Result<ArrayRef, RpcError> {
    match array.data_type() {
        DataType::List(_) if !array.is_null(row) => Ok(array.as_list::<i32>().value(row)),
        _ => Err(RpcError::new(
            "TypeError",
            format!(
                "expected a non-null list, the column is {}",
                array.data_type()
            ),
        )),
    }
}

/// A Python string's `repr()`: quotes chosen as CPython does, controls escaped.
pub fn python_str_repr(text: &str) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let code = c as u32;
                if code <= 0xff {
                    out.push_str(&format!("\\x{code:02x}"));
                } else {
                    out.push_str(&format!("\\u{code:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// A Python float's `repr()`/`str()`: shortest round-trip digits, fixed
/// notation for decimal exponents in [-4, 16), scientific (`1e+16`) otherwise.
pub fn python_float_repr(value: f64) -> String {
    if value.is_nan() {
        return "nan".into();
    }
    if value.is_infinite() {
        return if value > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    if value == 0.0 {
        return if value.is_sign_negative() {
            "-0.0".into()
        } else {
            "0.0".into()
        };
    }
    // `{:e}` prints the shortest digits that round-trip, e.g. `-1.25e-7`.
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific
        .split_once('e')
        .unwrap_or((scientific.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if mantissa.starts_with('-') { "-" } else { "" };
    let digits: String = mantissa
        .trim_start_matches('-')
        .chars()
        .filter(|c| *c != '.')
        .collect();
    let point = exponent + 1;
    let count = digits.len() as i32;
    let body = if point <= -4 || point > 16 {
        let (first, rest) = digits.split_at(1);
        let fraction = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let exponent_sign = if exponent < 0 { '-' } else { '+' };
        format!("{first}{fraction}e{exponent_sign}{:02}", exponent.abs())
    } else if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point >= count {
        format!("{digits}{}.0", "0".repeat((point - count) as usize))
    } else {
        let (whole, fraction) = digits.split_at(point as usize);
        format!("{whole}.{fraction}")
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        for (value, expected) in [
            (1.5, "1.5"),
            (2.0, "2.0"),
            (-0.0, "-0.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (-2.5e-7, "-2.5e-07"),
            (1e100, "1e+100"),
            (f64::INFINITY, "inf"),
            (f64::NAN, "nan"),
            (1.0 / 3.0, "0.3333333333333333"),
        ] {
            assert_eq!(python_float_repr(value), expected, "{value}");
        }
    }

    #[test]
    fn strings_repr_like_python() {
        assert_eq!(python_str_repr("BOGUS"), "'BOGUS'");
        assert_eq!(python_str_repr("it's"), "\"it's\"");
        assert_eq!(python_str_repr("a'b\"c"), "'a\\'b\"c'");
        assert_eq!(python_str_repr("tab\there\n\u{1}"), "'tab\\there\\n\\x01'");
        assert_eq!(python_str_repr("ünï"), "'ünï'");
    }

    #[test]
    fn dataclass_batches_match_the_declared_schema() {
        let schema = declared_schema(NESTED_CONTAINERS_SCHEMA);
        let statuses = PyValue::List(vec![PyValue::str("ACTIVE"), PyValue::str("CLOSED")]);
        let batch = dataclass_batch(
            &schema,
            vec![
                statuses.clone(),
                PyValue::List(vec![PyValue::point(1.0, 2.0)]),
                PyValue::Dict(vec![(PyValue::str("a"), PyValue::str("ACTIVE"))]),
                statuses,
                PyValue::None,
                PyValue::None,
                PyValue::Bytes(vec![1, 2]),
            ],
        )
        .unwrap();
        assert_eq!(batch.schema(), schema);
        let bytes = crate::wire::ipc::stream_bytes(&schema, std::slice::from_ref(&batch)).unwrap();
        assert_eq!(read_dataclass(&bytes).unwrap(), batch);
    }
}
