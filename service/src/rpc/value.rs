//! Rust types that know their Arrow type, so a protocol's schemas come from
//! its Rust signatures instead of hand-written type tokens.
//!
//! [`ArrowValue`] is one Rust type <-> one Arrow column type: scalars
//! (`i8`..`u64`, `f32`, `f64`, `bool`, `String`), binary (`Vec<u8>`,
//! [`Bytes`]), `Option<T>` (nullable), `Vec<T>` (`list<item?: T>`, as pyarrow
//! spells a Python `list[T]`) and structs with `#[derive(ArrowRecord)]`
//! (`struct<...>`, one child per field, nullable exactly when the field is an
//! `Option`). [`ArrowRecord`] is a derived struct seen as a row: each field is
//! one column of a [`RecordBatch`], which is how stream rows and stream
//! headers travel.
//!
//! Reading is strict: a column must have exactly the Arrow type the Rust type
//! declares, and a [`ValueError`] names the expected and the received type
//! (and the struct field, list item or row it happened in). Nothing here
//! panics on a malformed column.
//!
//! ```
//! use kit_service::rpc::value::{ArrowRecord, ArrowValue};
//! use kit_service::wire::tokens::{schema_text, type_token};
//!
//! #[derive(kit_service::ArrowRecord, Debug, PartialEq)]
//! struct Point {
//!     x: f64,
//!     label: Option<String>,
//!     tags: Vec<String>,
//! }
//!
//! assert_eq!(
//!     type_token(&Point::data_type()),
//!     "struct<x:float64,label?:utf8,tags:list<item?:utf8>>"
//! );
//! assert_eq!(
//!     schema_text(&Point::schema()),
//!     "x: float64, label?: utf8, tags: list<item?:utf8>"
//! );
//!
//! let rows = vec![
//!     Point { x: 1.5, label: None, tags: vec!["a".into()] },
//!     Point { x: -2.0, label: Some("b".into()), tags: vec![] },
//! ];
//! let batch = Point::to_batch(rows)?;
//! assert_eq!(batch.num_rows(), 2);
//! let back = Point::from_batch(&batch)?;
//! assert_eq!(back[1].label.as_deref(), Some("b"));
//! # Ok::<(), kit_service::rpc::value::ValueError>(())
//! ```

use std::sync::Arc;

use arrow_array::types::{
    ArrowPrimitiveType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{
    BinaryArray, BooleanArray, ListArray, PrimitiveArray, RecordBatch, RecordBatchOptions,
    StringArray, StructArray,
};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{Field, FieldRef, Schema};

// What derived code names, so a user's crate needs no arrow dependency of its own.
#[doc(no_inline)]
pub use arrow_array::{Array, ArrayRef};
#[doc(no_inline)]
pub use arrow_buffer::NullBuffer;
#[doc(no_inline)]
pub use arrow_schema::{DataType, Fields, SchemaRef};

use super::convert::Bytes;
use crate::wire::RpcError;
use crate::wire::tokens::{schema_text, type_token};

/// Why a column could not be read as, or written from, a Rust type.
///
/// The message names the expected and the received Arrow type, and the path
/// to the offending cell (`field `x`: item 2: ...`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValueError {
    /// The column has another Arrow type than the Rust type declares.
    #[error("expected Arrow type `{expected}`, received `{received}`")]
    Type {
        /// The declared type token.
        expected: String,
        /// The type token of the column that arrived.
        received: String,
    },
    /// A null where the Rust type is not an `Option`.
    #[error("null value for non-nullable `{expected}`")]
    Null {
        /// The declared type token.
        expected: String,
    },
    /// A struct (or batch) lacks a field the Rust struct declares.
    #[error("missing field `{field}` of type `{expected}`, received `{received}`")]
    MissingField {
        /// The missing field's name.
        field: String,
        /// The missing field's declared type token.
        expected: String,
        /// The struct type (or batch schema) that arrived.
        received: String,
    },
    /// An error inside the named struct field.
    #[error("field `{field}`: {source}")]
    Field {
        /// The struct field's name.
        field: String,
        /// What went wrong inside it.
        source: Box<ValueError>,
    },
    /// An error inside the list item at `index`.
    #[error("item {index}: {source}")]
    Item {
        /// Position of the item in its list.
        index: usize,
        /// What went wrong inside it.
        source: Box<ValueError>,
    },
    /// An error in row `row` of a column or batch.
    #[error("row {row}: {source}")]
    Row {
        /// The row number.
        row: usize,
        /// What went wrong in it.
        source: Box<ValueError>,
    },
    /// Arrow refused to build a column (for example, an offset overflow).
    #[error("cannot build an Arrow column: {0}")]
    Arrow(String),
    /// A record sent whole as a parameter or result (`binary` holding an IPC
    /// stream of one row) whose bytes are not such a stream.
    #[error("`{expected}` sent as `binary` is not an Arrow IPC stream of one row: {reason}")]
    Record {
        /// The record's struct type token.
        expected: String,
        /// What is wrong with the bytes.
        reason: String,
    },
}

impl ValueError {
    /// The type mismatch between `T` and the column that arrived.
    pub fn mismatch<T: ArrowValue>(received: &DataType) -> Self {
        ValueError::Type {
            expected: type_token(&T::data_type()),
            received: type_token(received),
        }
    }

    /// A null in a column of the non-nullable `T`.
    pub fn null<T: ArrowValue>() -> Self {
        ValueError::Null {
            expected: type_token(&T::data_type()),
        }
    }

    /// This error, inside struct field `field`.
    pub fn in_field(self, field: &str) -> Self {
        ValueError::Field {
            field: field.to_string(),
            source: Box::new(self),
        }
    }

    /// This error, inside list item `index`.
    pub fn in_item(self, index: usize) -> Self {
        ValueError::Item {
            index,
            source: Box::new(self),
        }
    }

    /// This error, in row `row`.
    pub fn in_row(self, row: usize) -> Self {
        ValueError::Row {
            row,
            source: Box::new(self),
        }
    }
}

impl From<arrow_schema::ArrowError> for ValueError {
    fn from(error: arrow_schema::ArrowError) -> Self {
        ValueError::Arrow(error.to_string())
    }
}

/// A value error reaches the client as a `TypeError`.
impl From<ValueError> for RpcError {
    fn from(error: ValueError) -> Self {
        RpcError::new("TypeError", error.to_string())
    }
}

/// A Rust type with a fixed Arrow column type.
///
/// Implemented for `i8`..`i64`, `u8`..`u64`, `f32`, `f64`, `bool`, `String`,
/// `Vec<u8>` and [`Bytes`] (`binary`), `Option<T>` (the same type, nullable),
/// `Vec<T>` (`list<item?: T>`) and every `#[derive(ArrowRecord)]` struct
/// (`struct<...>`; `binary` as a whole parameter or result, see
/// [`ArrowValue::top_level_data_type`]).
/// The `list_*` methods are how `Vec<T>` asks its item type to build the
/// list, so `Vec<u8>` can be `binary`; implementors keep the defaults.
///
/// ```
/// use kit_service::rpc::value::ArrowValue;
///
/// let column = <Vec<Option<i32>>>::to_column(vec![vec![Some(1), None], vec![]])?;
/// assert_eq!(
///     kit_service::wire::tokens::type_token(column.data_type()),
///     "list<item?:int32>"
/// );
/// let first = <Vec<Option<i32>>>::from_cell(column.as_ref(), 0)?;
/// assert_eq!(first, Some(vec![Some(1), None]));
/// // A null item cannot become an `i32`.
/// let error = <Vec<i32>>::from_cell(column.as_ref(), 0).unwrap_err();
/// assert_eq!(error.to_string(), "item 1: null value for non-nullable `int32`");
/// # Ok::<(), kit_service::rpc::value::ValueError>(())
/// ```
pub trait ArrowValue: Sized + Send + 'static {
    /// `true` when null is a value of this type (`Option<T>`).
    const NULLABLE: bool = false;

    /// The Arrow type of a column of this type.
    fn data_type() -> DataType;

    /// A field named `name` of this type and nullability.
    fn field(name: &str) -> Field {
        Field::new(name, Self::data_type(), Self::NULLABLE)
    }

    /// A column holding `values`, of exactly [`ArrowValue::data_type`].
    fn to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError>;

    /// A column holding `values`, with a null cell for each `None`.
    fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError>;

    /// Reads the cell at `row` (`row < array.len()`); `Ok(None)` when the cell
    /// is null and this type cannot hold a null.
    fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError>;

    /// Reads every cell of `array`, `None` where [`ArrowValue::from_cell`] would be.
    fn from_column(array: &dyn Array) -> Result<Vec<Option<Self>>, ValueError> {
        (0..array.len())
            .map(|row| Self::from_cell(array, row).map_err(|e| e.in_row(row)))
            .collect()
    }

    /// The Arrow type of this type as a whole parameter or unary result.
    ///
    /// The same as [`ArrowValue::data_type`], except for records: vgi-rpc
    /// sends a record (Python's `ArrowSerializableDataclass`) in that place as
    /// `binary` holding an IPC stream of one row, and as `struct<...>` only
    /// when nested in a list or another record.
    fn top_level_data_type() -> DataType {
        Self::data_type()
    }

    /// The parameter or `result` field named `name` of this type.
    fn top_level_field(name: &str) -> Field {
        Field::new(name, Self::top_level_data_type(), Self::NULLABLE)
    }

    /// A parameter or result column, of [`ArrowValue::top_level_data_type`].
    fn top_level_to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        Self::to_column(values)
    }

    /// [`ArrowValue::top_level_to_column`] with a null cell for each `None`.
    fn top_level_to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        Self::to_nullable_column(values)
    }

    /// Reads a parameter or result cell written by
    /// [`ArrowValue::top_level_to_column`].
    fn top_level_from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        Self::from_cell(array, row)
    }

    /// The Arrow type of `Vec<Self>`: `list<item?: Self>` unless overridden.
    #[doc(hidden)]
    fn list_data_type() -> DataType {
        DataType::List(Arc::new(Field::new("item", Self::data_type(), true)))
    }

    /// [`ArrowValue::to_column`] for `Vec<Self>`.
    #[doc(hidden)]
    fn list_to_column(values: Vec<Vec<Self>>) -> Result<ArrayRef, ValueError> {
        let offsets = offsets(values.iter().map(Vec::len))?;
        let items: Vec<Self> = values.into_iter().flatten().collect();
        list_array::<Self>(offsets, Self::to_column(items)?, None)
    }

    /// [`ArrowValue::to_nullable_column`] for `Vec<Self>`.
    #[doc(hidden)]
    fn list_to_nullable_column(values: Vec<Option<Vec<Self>>>) -> Result<ArrayRef, ValueError> {
        let nulls = NullBuffer::from_iter(values.iter().map(Option::is_some));
        let offsets = offsets(values.iter().map(|v| v.as_ref().map_or(0, Vec::len)))?;
        let items: Vec<Self> = values.into_iter().flatten().flatten().collect();
        list_array::<Self>(offsets, Self::to_column(items)?, Some(nulls))
    }

    /// [`ArrowValue::from_cell`] for `Vec<Self>`.
    #[doc(hidden)]
    fn list_from_cell(array: &dyn Array, row: usize) -> Result<Option<Vec<Self>>, ValueError> {
        let Some(list) = array.as_any().downcast_ref::<ListArray>() else {
            return Err(ValueError::mismatch::<Vec<Self>>(array.data_type()));
        };
        if list.is_null(row) {
            return Ok(None);
        }
        let items = list.value(row);
        let items = Self::from_column(items.as_ref()).map_err(|e| match e {
            ValueError::Row { row, source } => source.in_item(row),
            // The item column as a whole has another type: so has the list.
            ValueError::Type { .. } => ValueError::mismatch::<Vec<Self>>(array.data_type()),
            other => other,
        })?;
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| item.ok_or_else(|| ValueError::null::<Self>().in_item(index)))
            .collect::<Result<Vec<Self>, _>>()
            .map(Some)
    }
}

fn offsets(lengths: impl Iterator<Item = usize>) -> Result<OffsetBuffer<i32>, ValueError> {
    let mut total: usize = 0;
    let mut offsets = Vec::with_capacity(lengths.size_hint().0 + 1);
    offsets.push(0i32);
    for length in lengths {
        total += length;
        let end = i32::try_from(total).map_err(|_| {
            ValueError::Arrow(format!("list of {total} items overflows int32 offsets"))
        })?;
        offsets.push(end);
    }
    Ok(OffsetBuffer::new(offsets.into()))
}

fn list_array<T: ArrowValue>(
    offsets: OffsetBuffer<i32>,
    items: ArrayRef,
    nulls: Option<NullBuffer>,
) -> Result<ArrayRef, ValueError> {
    let DataType::List(item) = T::list_data_type() else {
        unreachable!("list_array builds the default list type")
    };
    Ok(Arc::new(ListArray::try_new(item, offsets, items, nulls)?))
}

fn downcast<A: Array + 'static, T: ArrowValue>(array: &dyn Array) -> Result<&A, ValueError> {
    array
        .as_any()
        .downcast_ref::<A>()
        .ok_or_else(|| ValueError::mismatch::<T>(array.data_type()))
}

macro_rules! primitive_value {
    ($($rust:ty => $arrow:ty),* $(,)?) => {$(
        impl ArrowValue for $rust {
            fn data_type() -> DataType {
                <$arrow as ArrowPrimitiveType>::DATA_TYPE
            }

            fn to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
                Ok(Arc::new(PrimitiveArray::<$arrow>::from(values)))
            }

            fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
                Ok(Arc::new(PrimitiveArray::<$arrow>::from(values)))
            }

            fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
                let array = downcast::<PrimitiveArray<$arrow>, Self>(array)?;
                Ok(array.is_valid(row).then(|| array.value(row)))
            }

            fn from_column(array: &dyn Array) -> Result<Vec<Option<Self>>, ValueError> {
                Ok(downcast::<PrimitiveArray<$arrow>, Self>(array)?.iter().collect())
            }
        }
    )*};
}

primitive_value!(
    i8 => Int8Type,
    i16 => Int16Type,
    i32 => Int32Type,
    i64 => Int64Type,
    u16 => UInt16Type,
    u32 => UInt32Type,
    u64 => UInt64Type,
    f32 => Float32Type,
    f64 => Float64Type,
);

/// `u8` is `uint8`, but `Vec<u8>` is `binary` rather than a list of `uint8`.
impl ArrowValue for u8 {
    fn data_type() -> DataType {
        DataType::UInt8
    }

    fn to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(PrimitiveArray::<UInt8Type>::from(values)))
    }

    fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(PrimitiveArray::<UInt8Type>::from(values)))
    }

    fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        let array = downcast::<PrimitiveArray<UInt8Type>, Self>(array)?;
        Ok(array.is_valid(row).then(|| array.value(row)))
    }

    fn list_data_type() -> DataType {
        DataType::Binary
    }

    fn list_to_column(values: Vec<Vec<Self>>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(BinaryArray::from_iter_values(values.iter())))
    }

    fn list_to_nullable_column(values: Vec<Option<Vec<Self>>>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(BinaryArray::from_iter(
            values.iter().map(|v| v.as_deref()),
        )))
    }

    fn list_from_cell(array: &dyn Array, row: usize) -> Result<Option<Vec<Self>>, ValueError> {
        let array = downcast::<BinaryArray, Vec<u8>>(array)?;
        Ok(array.is_valid(row).then(|| array.value(row).to_vec()))
    }
}

impl ArrowValue for bool {
    fn data_type() -> DataType {
        DataType::Boolean
    }

    fn to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(BooleanArray::from(values)))
    }

    fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(BooleanArray::from(values)))
    }

    fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        let array = downcast::<BooleanArray, Self>(array)?;
        Ok(array.is_valid(row).then(|| array.value(row)))
    }
}

impl ArrowValue for String {
    fn data_type() -> DataType {
        DataType::Utf8
    }

    fn to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(StringArray::from(values)))
    }

    fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(StringArray::from(values)))
    }

    fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        let array = downcast::<StringArray, Self>(array)?;
        Ok(array.is_valid(row).then(|| array.value(row).to_string()))
    }
}

/// `binary`, the same column as `Vec<u8>`.
impl ArrowValue for Bytes {
    fn data_type() -> DataType {
        DataType::Binary
    }

    fn to_column(mut values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        // One value (a unary result) keeps its allocation: no copy.
        if let [one] = values.as_mut_slice()
            && let Some(column) = Bytes::cell::<i32>(&mut one.0)
        {
            return Ok(Arc::new(column));
        }
        Ok(Arc::new(BinaryArray::from_iter_values(
            values.iter().map(|b| b.0.as_slice()),
        )))
    }

    fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        Ok(Arc::new(BinaryArray::from_iter(
            values.iter().map(|v| v.as_ref().map(|b| b.0.as_slice())),
        )))
    }

    fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        let array = downcast::<BinaryArray, Self>(array)?;
        Ok(array
            .is_valid(row)
            .then(|| Bytes(array.value(row).to_vec())))
    }
}

/// The same Arrow type as `T`, nullable.
impl<T: ArrowValue> ArrowValue for Option<T> {
    const NULLABLE: bool = true;

    fn data_type() -> DataType {
        T::data_type()
    }

    fn to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        T::to_nullable_column(values)
    }

    fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        T::to_nullable_column(values.into_iter().map(Option::flatten).collect())
    }

    fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        T::from_cell(array, row).map(Some)
    }

    fn from_column(array: &dyn Array) -> Result<Vec<Option<Self>>, ValueError> {
        Ok(T::from_column(array)?.into_iter().map(Some).collect())
    }

    fn top_level_data_type() -> DataType {
        T::top_level_data_type()
    }

    fn top_level_to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        T::top_level_to_nullable_column(values)
    }

    fn top_level_to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        T::top_level_to_nullable_column(values.into_iter().map(Option::flatten).collect())
    }

    fn top_level_from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        T::top_level_from_cell(array, row).map(Some)
    }
}

/// `list<item?: T>` (`binary` for `Vec<u8>`).
impl<T: ArrowValue> ArrowValue for Vec<T> {
    fn data_type() -> DataType {
        T::list_data_type()
    }

    fn to_column(values: Vec<Self>) -> Result<ArrayRef, ValueError> {
        T::list_to_column(values)
    }

    fn to_nullable_column(values: Vec<Option<Self>>) -> Result<ArrayRef, ValueError> {
        T::list_to_nullable_column(values)
    }

    fn from_cell(array: &dyn Array, row: usize) -> Result<Option<Self>, ValueError> {
        T::list_from_cell(array, row)
    }
}

/// A struct seen as a row: each field is one column of a [`RecordBatch`].
///
/// Derive it with `#[derive(kit_service::ArrowRecord)]` on a struct with named
/// fields whose types are [`ArrowValue`]s; the derive also implements
/// [`ArrowValue`] (the struct as one `struct<...>` column).
pub trait ArrowRecord: ArrowValue {
    /// One field per struct field, in declaration order.
    fn fields() -> Fields;

    /// The batch schema of rows of this type.
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(Self::fields()))
    }

    /// One column per field, each holding that field of every row.
    fn to_columns(rows: Vec<Self>) -> Result<Vec<ArrayRef>, ValueError>;

    /// Reads rows from `columns` (a batch or a struct column); `None` for a null struct.
    fn from_columns(columns: &Columns<'_>) -> Result<Vec<Option<Self>>, ValueError>;

    /// The rows as a batch of [`ArrowRecord::schema`].
    fn to_batch(rows: Vec<Self>) -> Result<RecordBatch, ValueError> {
        Self::to_batch_in(Self::schema(), rows)
    }

    /// The rows as a batch of `schema`, which must be [`ArrowRecord::schema`]
    /// (pass a cached one to skip rebuilding it).
    fn to_batch_in(schema: SchemaRef, rows: Vec<Self>) -> Result<RecordBatch, ValueError> {
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let columns = Self::to_columns(rows)?;
        Ok(RecordBatch::try_new_with_options(
            schema, columns, &options,
        )?)
    }

    /// The rows of `batch`; columns are found by field name, extra ones are ignored.
    fn from_batch(batch: &RecordBatch) -> Result<Vec<Self>, ValueError> {
        Self::from_columns(&Columns::of_batch(batch))?
            .into_iter()
            .enumerate()
            .map(|(row, value)| value.ok_or_else(|| ValueError::null::<Self>().in_row(row)))
            .collect()
    }
}

/// The columns a derived struct reads its fields from: a batch's columns or a
/// struct column's children. Used by `#[derive(ArrowRecord)]`.
pub struct Columns<'a> {
    source: Source<'a>,
}

enum Source<'a> {
    Batch(&'a RecordBatch),
    Struct(&'a StructArray),
}

impl<'a> Columns<'a> {
    /// The columns of `batch`.
    pub fn of_batch(batch: &'a RecordBatch) -> Self {
        Columns {
            source: Source::Batch(batch),
        }
    }

    /// The children of `array`, which must be a struct column of type `T`.
    pub fn of_struct<T: ArrowValue>(array: &'a dyn Array) -> Result<Self, ValueError> {
        Ok(Columns {
            source: Source::Struct(downcast::<StructArray, T>(array)?),
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match self.source {
            Source::Batch(batch) => batch.num_rows(),
            Source::Struct(array) => array.len(),
        }
    }

    /// `true` when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the struct at `row` is null (never, for a batch).
    pub fn is_null(&self, row: usize) -> bool {
        match self.source {
            Source::Batch(_) => false,
            Source::Struct(array) => array.is_null(row),
        }
    }

    fn column<T: ArrowValue>(&self, field: &str) -> Result<&'a ArrayRef, ValueError> {
        let found = match self.source {
            Source::Batch(batch) => batch.column_by_name(field),
            Source::Struct(array) => array.column_by_name(field),
        };
        found.ok_or_else(|| ValueError::MissingField {
            field: field.to_string(),
            expected: type_token(&T::data_type()),
            received: match self.source {
                Source::Batch(batch) => schema_text(&batch.schema()),
                Source::Struct(array) => type_token(array.data_type()),
            },
        })
    }

    /// Field `field` of the struct at `row`.
    pub fn cell<T: ArrowValue>(&self, field: &str, row: usize) -> Result<T, ValueError> {
        let column = self.column::<T>(field)?;
        T::from_cell(column.as_ref(), row)
            .map_err(|e| e.in_field(field))?
            .ok_or_else(|| ValueError::null::<T>().in_field(field))
    }

    /// Field `field` of every row, `None` where it is null.
    pub fn values<T: ArrowValue>(
        &self,
        field: &str,
    ) -> Result<std::vec::IntoIter<Option<T>>, ValueError> {
        let column = self.column::<T>(field)?;
        let values = T::from_column(column.as_ref()).map_err(|e| e.in_field(field))?;
        Ok(values.into_iter())
    }

    /// A value read by [`Columns::values`] for row `row`, or the error for a null.
    pub fn require<T: ArrowValue>(
        &self,
        field: &str,
        row: usize,
        value: Option<Option<T>>,
    ) -> Result<T, ValueError> {
        value
            .flatten()
            .ok_or_else(|| ValueError::null::<T>().in_field(field).in_row(row))
    }
}

/// A struct column of `T` from one column per field; `nulls` marks null structs.
/// Used by `#[derive(ArrowRecord)]`.
pub fn struct_column<T: ArrowRecord>(
    columns: Vec<ArrayRef>,
    nulls: Option<NullBuffer>,
    len: usize,
) -> Result<ArrayRef, ValueError> {
    Ok(Arc::new(StructArray::try_new_with_length(
        T::fields(),
        columns,
        nulls,
        len,
    )?))
}

/// The schema of `fields`, for generated parameter and header schemas.
pub fn schema_of(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

/// `fields` as [`Fields`], for generated struct types.
pub fn fields_of(fields: Vec<Field>) -> Fields {
    Fields::from(fields.into_iter().map(Arc::new).collect::<Vec<FieldRef>>())
}

/// Records sent whole as parameters or results: a `binary` column whose cells
/// are IPC streams of one row each (what the Python client's
/// `ArrowSerializableDataclass.serialize_to_bytes` writes). Used by
/// `#[derive(ArrowRecord)]`.
pub fn record_ipc_column<T: ArrowRecord>(values: Vec<Option<T>>) -> Result<ArrayRef, ValueError> {
    let schema = T::schema();
    let mut builder = arrow_array::builder::BinaryBuilder::with_capacity(values.len(), 0);
    for value in values {
        match value {
            None => builder.append_null(),
            Some(value) => {
                let batch = T::to_batch_in(Arc::clone(&schema), vec![value])?;
                let bytes = crate::wire::ipc::stream_bytes(&schema, &[batch])
                    .map_err(|e| ValueError::Arrow(e.to_string()))?;
                builder.append_value(bytes);
            }
        }
    }
    Ok(Arc::new(builder.finish()))
}

/// Reads the record in `binary` cell `row` written by [`record_ipc_column`]
/// (or by the Python client). The stream goes through the service's own IPC
/// reader, with its limits; it must hold exactly one row.
pub fn record_from_ipc_cell<T: ArrowRecord>(
    array: &dyn Array,
    row: usize,
) -> Result<Option<T>, ValueError> {
    let bad = |reason: String| ValueError::Record {
        expected: type_token(&T::data_type()),
        reason,
    };
    let binary = match array.as_any().downcast_ref::<arrow_array::BinaryArray>() {
        Some(binary) => binary,
        None => {
            return Err(ValueError::Type {
                expected: "binary".into(),
                received: type_token(array.data_type()),
            });
        }
    };
    if binary.is_null(row) {
        return Ok(None);
    }
    let stream =
        crate::wire::ipc::read_whole_stream(binary.value(row)).map_err(|e| bad(e.to_string()))?;
    let Some(batch) = stream.single_row() else {
        return Err(bad(format!(
            "{} rows in {} batches",
            stream.rows(),
            stream.batches.len()
        )));
    };
    let mut records = T::from_batch(batch)?;
    Ok(records.pop())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip<T: ArrowValue + Clone + PartialEq + std::fmt::Debug>(values: Vec<T>) {
        let column = T::to_column(values.clone()).unwrap();
        assert_eq!(column.data_type(), &T::data_type());
        let back: Vec<T> = T::from_column(column.as_ref())
            .unwrap()
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(back, values);
        for (row, value) in values.iter().enumerate() {
            assert_eq!(
                T::from_cell(column.as_ref(), row).unwrap().as_ref(),
                Some(value)
            );
        }
    }

    #[test]
    fn every_scalar_roundtrips_through_its_column() {
        roundtrip(vec![i8::MIN, 0, i8::MAX]);
        roundtrip(vec![i16::MIN, i16::MAX]);
        roundtrip(vec![i32::MIN, i32::MAX]);
        roundtrip(vec![i64::MIN, i64::MAX]);
        roundtrip(vec![0u8, u8::MAX]);
        roundtrip(vec![0u16, u16::MAX]);
        roundtrip(vec![0u32, u32::MAX]);
        roundtrip(vec![0u64, u64::MAX]);
        roundtrip(vec![1.5f32, -0.0]);
        roundtrip(vec![1.5f64, f64::MAX]);
        roundtrip(vec![true, false]);
        roundtrip(vec!["a".to_string(), String::new()]);
        roundtrip(vec![vec![1u8, 2], vec![]]);
        roundtrip(vec![Bytes(vec![7]), Bytes(vec![])]);
        roundtrip(vec![Some(3i64), None]);
        roundtrip(vec![vec![Some("x".to_string()), None], vec![]]);
        roundtrip(vec![vec![vec![1i64], vec![]], vec![]]);
        roundtrip(vec![Some(vec![1u8]), None]);
    }

    #[test]
    fn types_are_spelled_as_pyarrow_spells_them() {
        let token = |t: DataType| type_token(&t);
        assert_eq!(token(<Vec<u8>>::data_type()), "binary");
        assert_eq!(token(<Vec<String>>::data_type()), "list<item?:utf8>");
        assert_eq!(
            token(<Vec<Vec<i64>>>::data_type()),
            "list<item?:list<item?:int64>>"
        );
        assert_eq!(token(<Vec<Option<u8>>>::data_type()), "list<item?:uint8>");
        assert_eq!((<Option<i64>>::NULLABLE, i64::NULLABLE), (true, false));
    }

    #[test]
    fn a_wrong_column_type_names_both_types() {
        let column = String::to_column(vec!["x".into()]).unwrap();
        assert_eq!(
            i64::from_cell(column.as_ref(), 0).unwrap_err().to_string(),
            "expected Arrow type `int64`, received `utf8`"
        );
        let list = <Vec<i32>>::to_column(vec![vec![1]]).unwrap();
        assert_eq!(
            <Vec<i64>>::from_cell(list.as_ref(), 0)
                .unwrap_err()
                .to_string(),
            "expected Arrow type `list<item?:int64>`, received `list<item?:int32>`"
        );
    }

    #[test]
    fn nulls_are_none_only_for_options() {
        let column = <Option<i64>>::to_column(vec![None, Some(2)]).unwrap();
        assert_eq!(i64::from_cell(column.as_ref(), 0), Ok(None));
        assert_eq!(<Option<i64>>::from_cell(column.as_ref(), 0), Ok(Some(None)));
        let nested = <Option<Vec<u8>>>::to_column(vec![None]).unwrap();
        assert_eq!(nested.data_type(), &DataType::Binary);
        assert!(nested.is_null(0));
    }
}
