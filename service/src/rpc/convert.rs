//! Rust values <-> one-row Arrow columns, so handlers take and return plain
//! Rust types (`i64`, `String`, `Option<T>`, `Vec<T>`, ...) while the wire
//! keeps the declared Arrow type exactly (a value built as `i64` is cast to a
//! declared `int32`, a `Vec<String>` becomes the declared `list<item?:utf8>`).

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, GenericBinaryArray, Int64Array, ListArray,
    OffsetSizeTrait, StringArray, new_null_array,
};
use arrow_buffer::{Buffer, OffsetBuffer};
use arrow_schema::{DataType, Field};

use crate::wire::RpcError;

/// A value that can be read from one cell of an Arrow column.
pub trait FromArrow: Sized {
    /// The value in `row` of `array`, or why it cannot be read as `Self`.
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String>;
}

/// A value that can become a one-element Arrow array of a declared type.
pub trait ToArrow {
    /// A one-element array of `data_type` holding this value.
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError>;
}

fn mismatch(expected: &str, array: &dyn Array) -> String {
    format!("expected {expected}, the column is {}", array.data_type())
}

fn null_check(array: &dyn Array, row: usize) -> Result<(), String> {
    if array.is_null(row) {
        Err("value is null but the parameter is not optional".into())
    } else {
        Ok(())
    }
}

macro_rules! int_from_arrow {
    ($($rust:ty),*) => {$(
        impl FromArrow for $rust {
            fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
                null_check(array, row)?;
                let value: i128 = match array.data_type() {
                    DataType::Int8 => array.as_primitive::<Int8Type>().value(row) as i128,
                    DataType::Int16 => array.as_primitive::<Int16Type>().value(row) as i128,
                    DataType::Int32 => array.as_primitive::<Int32Type>().value(row) as i128,
                    DataType::Int64 => array.as_primitive::<Int64Type>().value(row) as i128,
                    DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row) as i128,
                    DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row) as i128,
                    DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row) as i128,
                    DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row) as i128,
                    _ => return Err(mismatch("an integer", array)),
                };
                <$rust>::try_from(value).map_err(|_| format!("{value} is out of range for {}", stringify!($rust)))
            }
        }
        impl ToArrow for $rust {
            fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
                cast_to(Arc::new(Int64Array::from(vec![i64::try_from(self).map_err(|_| RpcError::value("integer out of range"))?])), data_type)
            }
        }
    )*};
}
int_from_arrow!(i8, i16, i32, i64, u8, u16, u32);

impl FromArrow for u64 {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        null_check(array, row)?;
        match array.data_type() {
            DataType::UInt64 => Ok(array.as_primitive::<UInt64Type>().value(row)),
            _ => i64::from_arrow(array, row)
                .and_then(|v| u64::try_from(v).map_err(|_| format!("{v} is negative"))),
        }
    }
}

impl ToArrow for u64 {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        cast_to(
            Arc::new(arrow_array::UInt64Array::from(vec![self])),
            data_type,
        )
    }
}

impl FromArrow for f64 {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        null_check(array, row)?;
        match array.data_type() {
            DataType::Float64 => Ok(array.as_primitive::<Float64Type>().value(row)),
            DataType::Float32 => Ok(array.as_primitive::<Float32Type>().value(row) as f64),
            _ => i64::from_arrow(array, row)
                .map(|v| v as f64)
                .map_err(|_| mismatch("a float", array)),
        }
    }
}

impl ToArrow for f64 {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        cast_to(Arc::new(Float64Array::from(vec![self])), data_type)
    }
}

impl FromArrow for bool {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        null_check(array, row)?;
        match array.data_type() {
            DataType::Boolean => Ok(array.as_boolean().value(row)),
            _ => Err(mismatch("bool", array)),
        }
    }
}

impl ToArrow for bool {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        cast_to(Arc::new(BooleanArray::from(vec![self])), data_type)
    }
}

impl FromArrow for String {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        null_check(array, row)?;
        match array.data_type() {
            DataType::Utf8 => Ok(array.as_string::<i32>().value(row).to_string()),
            DataType::LargeUtf8 => Ok(array.as_string::<i64>().value(row).to_string()),
            DataType::Utf8View => Ok(array.as_string_view().value(row).to_string()),
            DataType::Dictionary(_, _) => {
                let values = arrow_cast::cast(&array.slice(row, 1), &DataType::Utf8)
                    .map_err(|e| e.to_string())?;
                String::from_arrow(values.as_ref(), 0)
            }
            _ => Err(mismatch("a string", array)),
        }
    }
}

impl ToArrow for String {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        cast_to(Arc::new(StringArray::from(vec![self])), data_type)
    }
}

impl ToArrow for &str {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        self.to_string().to_arrow(data_type)
    }
}

impl FromArrow for Vec<u8> {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        null_check(array, row)?;
        match array.data_type() {
            DataType::Binary => Ok(array.as_binary::<i32>().value(row).to_vec()),
            DataType::LargeBinary => Ok(array.as_binary::<i64>().value(row).to_vec()),
            DataType::FixedSizeBinary(_) => Ok(array.as_fixed_size_binary().value(row).to_vec()),
            DataType::BinaryView => Ok(array.as_binary_view().value(row).to_vec()),
            _ => Err(mismatch("bytes", array)),
        }
    }
}

/// Bytes for a `binary` column (a `Vec<u8>` would read as a list of integers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl ToArrow for Bytes {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        let mut bytes = self.0;
        let array: ArrayRef = if *data_type == DataType::LargeBinary {
            Arc::new(Bytes::cell::<i64>(&mut bytes).expect("a Vec's length fits i64"))
        } else {
            Arc::new(Bytes::cell::<i32>(&mut bytes).ok_or_else(|| {
                RpcError::value(format!(
                    "a {}-byte value does not fit a `binary` column (at most {} bytes); \
                     declare the result `large_binary`",
                    bytes.len(),
                    i32::MAX
                ))
            })?)
        };
        cast_to(array, data_type)
    }
}

impl Bytes {
    /// One value as a one-row `binary` (`O` = `i32`) or `large_binary`
    /// (`i64`) column without copying it: the column's value buffer is the
    /// `Vec`'s own allocation, taken from `bytes`, so a large result is
    /// neither copied nor touched again before it is sent (a `vec![0; n]` is
    /// never even faulted in). `None`, with `bytes` left as it was, when the
    /// length does not fit the offsets (`binary`'s 2 GiB).
    pub(crate) fn cell<O: OffsetSizeTrait>(bytes: &mut Vec<u8>) -> Option<GenericBinaryArray<O>> {
        let end = O::from_usize(bytes.len())?;
        Some(GenericBinaryArray::new(
            OffsetBuffer::new(vec![O::zero(), end].into()),
            Buffer::from_vec(std::mem::take(bytes)),
            None,
        ))
    }
}

impl FromArrow for Bytes {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        Vec::<u8>::from_arrow(array, row).map(Bytes)
    }
}

impl<T: FromArrow> FromArrow for Option<T> {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        if array.is_null(row) {
            Ok(None)
        } else {
            T::from_arrow(array, row).map(Some)
        }
    }
}

impl<T: ToArrow> ToArrow for Option<T> {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        match self {
            Some(value) => value.to_arrow(data_type),
            None => Ok(new_null_array(data_type, 1)),
        }
    }
}

/// Lists: a `Vec<T>` reads from and writes to `list<...>` columns.
#[derive(Debug, Clone, PartialEq)]
pub struct List<T>(pub Vec<T>);

impl<T: FromArrow> FromArrow for List<T> {
    fn from_arrow(array: &dyn Array, row: usize) -> Result<Self, String> {
        null_check(array, row)?;
        let values = match array.data_type() {
            DataType::List(_) => array.as_list::<i32>().value(row),
            DataType::LargeList(_) => array.as_list::<i64>().value(row),
            _ => return Err(mismatch("a list", array)),
        };
        (0..values.len())
            .map(|i| T::from_arrow(values.as_ref(), i))
            .collect::<Result<_, _>>()
            .map(List)
    }
}

impl<T: ToArrow> ToArrow for List<T> {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        let DataType::List(child) = data_type else {
            return Err(RpcError::new(
                "TypeError",
                format!("a list value cannot be written as {data_type}"),
            ));
        };
        let parts: Vec<ArrayRef> = self
            .0
            .into_iter()
            .map(|v| v.to_arrow(child.data_type()))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
        let values = if refs.is_empty() {
            arrow_array::new_empty_array(child.data_type())
        } else {
            arrow_select::concat::concat(&refs)?
        };
        let offsets = OffsetBuffer::from_lengths([values.len()]);
        let field = Arc::new(Field::new(
            child.name(),
            child.data_type().clone(),
            child.is_nullable(),
        ));
        Ok(Arc::new(ListArray::try_new(field, offsets, values, None)?))
    }
}

/// A raw column passes through unchanged (cast when the declared type differs).
impl ToArrow for ArrayRef {
    fn to_arrow(self, data_type: &DataType) -> Result<ArrayRef, RpcError> {
        cast_to(self, data_type)
    }
}

fn cast_to(array: ArrayRef, data_type: &DataType) -> Result<ArrayRef, RpcError> {
    if array.data_type() == data_type {
        return Ok(array);
    }
    arrow_cast::cast(&array, data_type).map_err(|e| {
        RpcError::new(
            "TypeError",
            format!("cannot return a {} as {data_type}: {e}", array.data_type()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_roundtrip_through_declared_types() {
        let array = 7i64.to_arrow(&DataType::Int32).unwrap();
        assert_eq!(array.data_type(), &DataType::Int32);
        assert_eq!(i64::from_arrow(array.as_ref(), 0), Ok(7));
        let text = "hi".to_arrow(&DataType::Utf8).unwrap();
        assert_eq!(String::from_arrow(text.as_ref(), 0), Ok("hi".to_string()));
        let none = Option::<i64>::None.to_arrow(&DataType::Int64).unwrap();
        assert_eq!(Option::<i64>::from_arrow(none.as_ref(), 0), Ok(None));
        assert!(i64::from_arrow(none.as_ref(), 0).is_err());
    }

    #[test]
    fn a_bytes_result_keeps_its_allocation() {
        for data_type in [DataType::Binary, DataType::LargeBinary] {
            let value: Vec<u8> = (0..=255).cycle().take(100_000).collect();
            let (address, copy) = (value.as_ptr(), value.clone());
            let array = Bytes(value).to_arrow(&data_type).unwrap();
            assert_eq!(array.data_type(), &data_type);
            assert_eq!(array.len(), 1);
            let values = array.to_data().buffers()[1].as_ptr();
            assert_eq!(
                values, address,
                "{data_type}: the value buffer is the Vec itself"
            );
            assert_eq!(Bytes::from_arrow(array.as_ref(), 0).unwrap().0, copy);
        }
        // Another declared type still converts (a cast, which copies).
        let view = Bytes(b"abc".to_vec())
            .to_arrow(&DataType::BinaryView)
            .unwrap();
        assert_eq!(Bytes::from_arrow(view.as_ref(), 0).unwrap().0, b"abc");
        // And the typed path (`ArrowValue`) does the same for one value.
        use crate::rpc::value::ArrowValue;
        let value = vec![7u8; 4096];
        let address = value.as_ptr();
        let column = Bytes::to_column(vec![Bytes(value)]).unwrap();
        assert_eq!(column.to_data().buffers()[1].as_ptr(), address);
        let two = Bytes::to_column(vec![Bytes(vec![1]), Bytes(vec![2, 3])]).unwrap();
        assert_eq!(two.as_binary::<i32>().value(1), &[2, 3]);
    }

    #[test]
    fn lists_use_the_declared_child() {
        let data_type = crate::wire::tokens::parse_type("list<item?:utf8>").unwrap();
        let array = List(vec!["a".to_string(), "b".to_string()])
            .to_arrow(&data_type)
            .unwrap();
        assert_eq!(array.data_type(), &data_type);
        assert_eq!(
            List::<String>::from_arrow(array.as_ref(), 0).unwrap().0,
            vec!["a", "b"]
        );
    }

    #[test]
    fn out_of_range_integers_are_errors() {
        let array: ArrayRef = Arc::new(Int64Array::from(vec![300]));
        assert!(u8::from_arrow(array.as_ref(), 0).is_err());
    }
}
