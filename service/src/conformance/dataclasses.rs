//! The conformance dataclasses this server has to build or read itself:
//! stream headers (`ConformanceHeader`, `RichHeader` via `build_rich_header`),
//! `Point` for `inspect_point`, and `NestedContainers` for
//! `pack_nested_containers`. Echo methods never come here: they return the
//! caller's nested IPC bytes untouched, exactly what upstream sends back.
//!
//! Integer arithmetic is done in `i128` and narrowed with a check, because the
//! reference computes with unbounded Python ints and only fails when a result
//! does not fit its Arrow column.

use std::sync::LazyLock;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, SchemaRef};

use super::values::{
    CONFORMANCE_HEADER_SCHEMA, NESTED_CONTAINERS_SCHEMA, PyValue, RICH_HEADER_SCHEMA, STATUS_NAMES,
    dataclass_batch, dataclass_bytes, dataclass_field, declared_schema, list_elements,
    python_float_repr, read_dataclass,
};
use crate::rpc::{FromArrow, List};
use crate::wire::RpcError;

/// Upstream's `Point` dataclass.
pub const POINT_SCHEMA: &str = "x: float64, y: float64";
/// Upstream's `BoundingBox` dataclass.
pub const BOUNDING_BOX_SCHEMA: &str =
    "top_left: struct<x:float64,y:float64>, bottom_right: struct<x:float64,y:float64>, label: utf8";
/// Upstream's `AllTypes` dataclass.
pub const ALL_TYPES_SCHEMA: &str = "str_field: utf8, bytes_field: binary, int_field: int64, \
    float_field: float64, bool_field: bool, list_of_int: list<item?:int64>, \
    list_of_str: list<item?:utf8>, dict_field: map<key:utf8,value?:int64>, \
    enum_field: dictionary<index:int16,value:utf8>, nested_point: struct<x:float64,y:float64>, \
    optional_str?: utf8, optional_int?: int64, optional_nested?: struct<x:float64,y:float64>, \
    list_of_nested: list<item?:struct<x:float64,y:float64>>, annotated_int32: int32, \
    annotated_float32: float32, nested_list: list<item?:list<item?:int64>>, \
    dict_str_str: map<key:utf8,value?:utf8>";

/// Upstream's `WideTypes` dataclass.
pub const WIDE_TYPES_SCHEMA: &str = "int8_field: int8, int16_field: int16, int32_field: int32, \
    uint8_field: uint8, uint16_field: uint16, uint32_field: uint32, uint64_field: uint64, \
    float32_field: float32, date_field: date32, timestamp_field: timestamp(us), \
    timestamp_utc_field: timestamp(us,tz=UTC), time_field: time64(us), duration_field: duration(us), \
    decimal_field: decimal128(20,4), large_string_field: large_utf8, \
    large_binary_field: large_binary, fixed_binary_field: fixed_size_binary(8)";
/// Upstream's `ContainerWideTypes` dataclass.
pub const CONTAINER_WIDE_TYPES_SCHEMA: &str = "list_decimal: list<item?:decimal128(20,4)>, \
    list_date: list<item?:date32>, list_timestamp: list<item?:timestamp(us)>, \
    optional_date?: date32, optional_decimal?: decimal128(20,4), optional_timestamp?: timestamp(us), \
    dict_str_decimal: map<key:utf8,value?:decimal128(20,4)>, frozenset_int: list<item?:int64>, \
    list_optional_int: list<item?:int64>";
/// Upstream's `EmbeddedArrow` dataclass (both fields are nested IPC).
pub const EMBEDDED_ARROW_SCHEMA: &str = "batch: binary, schema: binary";
/// Upstream's `DeepNested` dataclass.
pub const DEEP_NESTED_SCHEMA: &str = "list_of_lists_decimal: list<item?:list<item?:decimal128(20,4)>>, \
    optional_list_date?: list<item?:date32>, dict_encoded_string: dictionary<index:int16,value:utf8>, \
    list_of_dict_encoded: list<item?:dictionary<index:int16,value:utf8>>";

pub static CONFORMANCE_HEADER: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema(CONFORMANCE_HEADER_SCHEMA));
pub static RICH_HEADER: LazyLock<SchemaRef> = LazyLock::new(|| declared_schema(RICH_HEADER_SCHEMA));
pub static NESTED_CONTAINERS: LazyLock<SchemaRef> =
    LazyLock::new(|| declared_schema(NESTED_CONTAINERS_SCHEMA));
/// Schema of `pa.RecordBatch.from_pydict({"value": [1, 2]})`.
static TAGGED_BATCH: LazyLock<SchemaRef> = LazyLock::new(|| declared_schema("value?: int64"));

fn int64(value: i128) -> Result<PyValue, RpcError> {
    i64::try_from(value).map(PyValue::Int).map_err(|_| {
        RpcError::new(
            "OverflowError",
            format!("Python int {value} too large to convert to int64"),
        )
    })
}

/// `ConformanceHeader(total_expected, description)` as a header batch.
pub fn conformance_header(
    total_expected: i64,
    description: String,
) -> Result<RecordBatch, RpcError> {
    dataclass_batch(
        &CONFORMANCE_HEADER,
        vec![PyValue::Int(total_expected), PyValue::Str(description)],
    )
}

/// `build_rich_header(seed)` as a header batch: every field derived from `seed`.
pub fn rich_header(seed: i64) -> Result<RecordBatch, RpcError> {
    let s = i128::from(seed);
    let even = s.rem_euclid(2) == 0;
    let fields = vec![
        PyValue::Str(format!("seed-{seed}")),
        PyValue::Bytes(
            (0..3)
                .map(|offset| (s + offset).rem_euclid(256) as u8)
                .collect(),
        ),
        int64(s * 7)?,
        PyValue::Float(seed as f64 * 1.5),
        PyValue::Bool(even),
        PyValue::List(vec![int64(s)?, int64(s + 1)?, int64(s + 2)?]),
        PyValue::List(vec![
            PyValue::Str(format!("item-{seed}")),
            PyValue::Str(format!("item-{}", s + 1)),
        ]),
        PyValue::Dict(vec![
            (PyValue::str("a"), int64(s)?),
            (PyValue::str("b"), int64(s + 1)?),
        ]),
        PyValue::str(STATUS_NAMES[s.rem_euclid(3) as usize]),
        PyValue::point(s as f64, (s * 2) as f64),
        if even {
            PyValue::Str(format!("opt-{seed}"))
        } else {
            PyValue::None
        },
        if even { PyValue::None } else { int64(s * 3)? },
        if s.rem_euclid(3) == 0 {
            PyValue::point(s as f64, 0.0)
        } else {
            PyValue::None
        },
        PyValue::List(vec![PyValue::point(s as f64, (s + 1) as f64)]),
        PyValue::List(vec![
            PyValue::List(vec![int64(s)?, int64(s + 1)?]),
            PyValue::List(vec![int64(s + 2)?]),
        ]),
        PyValue::Int(s.rem_euclid(1000) as i64),
        PyValue::Float(seed as f64 / 3.0),
        PyValue::Dict(vec![(
            PyValue::str("key"),
            PyValue::Str(format!("val-{seed}")),
        )]),
    ];
    dataclass_batch(&RICH_HEADER, fields)
}

/// `inspect_point`: `f"Point({point.x}, {point.y})"` over the nested `Point`.
pub fn inspect_point(point_bytes: &[u8]) -> Result<String, RpcError> {
    let point = read_dataclass(point_bytes)?;
    let x: f64 = dataclass_field(&point, "x")?;
    let y: f64 = dataclass_field(&point, "y")?;
    Ok(format!(
        "Point({}, {})",
        python_float_repr(x),
        python_float_repr(y)
    ))
}

/// Enum members of a `list<dictionary>` cell; `None` marks a member that is not a `Status`.
fn statuses_of(column: &dyn Array, row: usize) -> Result<Vec<Option<String>>, RpcError> {
    let values = List::<Option<String>>::from_arrow(column, row)
        .map_err(|error| RpcError::new("TypeError", error))?
        .0;
    Ok(values
        .into_iter()
        .map(|value| value.filter(|name| STATUS_NAMES.contains(&name.as_str())))
        .collect())
}

/// Points of a `list<struct<x,y>>` cell; `None` marks a null element.
fn points_of(column: &dyn Array) -> Result<Vec<Option<(f64, f64)>>, RpcError> {
    let elements = list_elements(column, 0)?;
    let DataType::Struct(_) = elements.data_type() else {
        return Err(RpcError::new(
            "TypeError",
            format!(
                "expected a list of Point structs, got {}",
                elements.data_type()
            ),
        ));
    };
    let structs = elements.as_struct();
    let (Some(x), Some(y)) = (structs.column_by_name("x"), structs.column_by_name("y")) else {
        return Err(RpcError::new(
            "TypeError",
            "Point structs need fields x and y",
        ));
    };
    (0..structs.len())
        .map(|row| {
            if structs.is_null(row) {
                return Ok(None);
            }
            let read = |column: &ArrayRef| {
                f64::from_arrow(column.as_ref(), row)
                    .map_err(|error| RpcError::new("TypeError", error))
            };
            Ok(Some((read(x)?, read(y)?)))
        })
        .collect()
}

/// Entries of a `map<utf8, dictionary>` cell, with Python dict semantics:
/// a repeated key keeps its first position and takes the last value.
fn status_map_of(column: &dyn Array) -> Result<Vec<(String, Option<String>)>, RpcError> {
    let DataType::Map(_, _) = column.data_type() else {
        return Err(RpcError::new(
            "TypeError",
            format!("expected a map, got {}", column.data_type()),
        ));
    };
    let entries = column.as_map().value(0);
    let keys = entries.column(0);
    let values = entries.column(1);
    let mut out: Vec<(String, Option<String>)> = Vec::with_capacity(entries.len());
    for row in 0..entries.len() {
        let key = String::from_arrow(keys.as_ref(), row)
            .map_err(|error| RpcError::new("TypeError", error))?;
        let value = Option::<String>::from_arrow(values.as_ref(), row)
            .map_err(|error| RpcError::new("TypeError", error))?
            .filter(|name| STATUS_NAMES.contains(&name.as_str()));
        match out.iter_mut().find(|(known, _)| *known == key) {
            Some(entry) => entry.1 = value,
            None => out.push((key, value)),
        }
    }
    Ok(out)
}

/// Checks `echo_status_list`'s argument as the reference does.
pub fn check_status_list(column: &dyn Array) -> Result<(), RpcError> {
    if statuses_of(column, 0)?.iter().any(Option::is_none) {
        return Err(RpcError::new(
            "TypeError",
            "statuses were not reconstructed as Status members",
        ));
    }
    Ok(())
}

/// `pack_nested_containers`: the three containers back, plus the derived
/// fields, as a nested-IPC `NestedContainers`.
pub fn pack_nested_containers(
    statuses: &dyn Array,
    points: &dyn Array,
    status_by_name: &dyn Array,
) -> Result<Vec<u8>, RpcError> {
    let statuses = statuses_of(statuses, 0)?;
    let points = points_of(points)?;
    let status_by_name = status_map_of(status_by_name)?;
    if statuses.iter().any(Option::is_none) {
        return Err(RpcError::new(
            "TypeError",
            "statuses were not reconstructed as Status members",
        ));
    }
    if points.iter().any(Option::is_none) {
        return Err(RpcError::new(
            "TypeError",
            "points were not reconstructed as Point instances",
        ));
    }
    if status_by_name.iter().any(|(_, value)| value.is_none()) {
        return Err(RpcError::new(
            "TypeError",
            "status_by_name values were not reconstructed as Status members",
        ));
    }
    let statuses: Vec<String> = statuses.into_iter().flatten().collect();
    let points: Vec<(f64, f64)> = points.into_iter().flatten().collect();
    let mut frozen: Vec<String> = Vec::new();
    for status in &statuses {
        if !frozen.contains(status) {
            frozen.push(status.clone());
        }
    }
    let tagged_batch = {
        let values: ArrayRef = std::sync::Arc::new(arrow_array::Int64Array::from(vec![1, 2]));
        let batch = RecordBatch::try_new(TAGGED_BATCH.clone(), vec![values])?;
        crate::wire::ipc::stream_bytes(&TAGGED_BATCH, &[batch])?
    };
    let fields = vec![
        PyValue::List(statuses.iter().map(PyValue::str).collect()),
        PyValue::List(points.iter().map(|(x, y)| PyValue::point(*x, *y)).collect()),
        PyValue::Dict(
            status_by_name
                .into_iter()
                .map(|(key, value)| (PyValue::Str(key), value.map_or(PyValue::None, PyValue::Str)))
                .collect(),
        ),
        PyValue::List(frozen.into_iter().map(PyValue::Str).collect()),
        statuses.first().map_or(PyValue::None, PyValue::str),
        points
            .first()
            .map_or(PyValue::None, |(x, y)| PyValue::point(*x, *y)),
        PyValue::Bytes(tagged_batch),
    ];
    dataclass_bytes(&NESTED_CONTAINERS, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rich_header_matches_build_rich_header() {
        let header = rich_header(7).unwrap();
        assert_eq!(header.schema(), *RICH_HEADER);
        assert_eq!(header.num_rows(), 1);
        assert_eq!(
            String::from_arrow(header.column(8).as_ref(), 0).unwrap(),
            "ACTIVE"
        );
        assert!(
            header.column(10).is_null(0),
            "optional_str is None for odd seeds"
        );
        assert_eq!(i64::from_arrow(header.column(11).as_ref(), 0).unwrap(), 21);
        assert!(rich_header(i64::MAX).is_err(), "seed * 7 overflows int64");
        assert!(rich_header(-5).is_ok());
    }

    #[test]
    fn inspect_point_formats_like_python() {
        let point = declared_schema(super::super::values::POINT_SCHEMA);
        let bytes =
            dataclass_bytes(&point, vec![PyValue::Float(1.5), PyValue::Float(2.0)]).unwrap();
        assert_eq!(inspect_point(&bytes).unwrap(), "Point(1.5, 2.0)");
        assert!(inspect_point(b"garbage").is_err());
    }
}
