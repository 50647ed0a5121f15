//! Typed access to Arrow columns row by row, and the byte encoding of group keys.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, BooleanBuilder, Float64Array, Float64Builder, Int32Array,
    Int32Builder, Int64Array, Int64Builder, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::data::schema::UTC;

/// One value borrowed from a column. Its variants mirror [`GroupValue`]'s, in the same order,
/// so that both serialize to the same group-key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Scalar<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar<'_> {
    #[inline]
    pub fn is_null(&self) -> bool {
        matches!(self, Scalar::Null)
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Scalar::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Int(v) => Some(*v as f64),
            Scalar::Float(v) => Some(*v),
            _ => None,
        }
    }

    /// Calls `f` with bytes that identify the value within its column (for distinct and sketches).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Scalar::Null => f(&[]),
            Scalar::Str(s) => f(s.as_bytes()),
            Scalar::Int(v) => f(&v.to_be_bytes()),
            Scalar::Float(v) => f(&v.to_bits().to_be_bytes()),
            Scalar::Bool(b) => f(&[u8::from(*b)]),
        }
    }
}

/// A column downcast once per batch, read row by row.
pub enum ColumnReader<'a> {
    Utf8(&'a StringArray),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    Float64(&'a Float64Array),
    Boolean(&'a BooleanArray),
    Timestamp(&'a TimestampMicrosecondArray),
}

impl<'a> ColumnReader<'a> {
    /// Wraps a column of a scalar type; `None` for maps and other nested types.
    pub fn new(array: &'a ArrayRef) -> Option<Self> {
        let any = array.as_any();
        Some(match array.data_type() {
            DataType::Utf8 => Self::Utf8(any.downcast_ref()?),
            DataType::Int32 => Self::Int32(any.downcast_ref()?),
            DataType::Int64 => Self::Int64(any.downcast_ref()?),
            DataType::Float64 => Self::Float64(any.downcast_ref()?),
            DataType::Boolean => Self::Boolean(any.downcast_ref()?),
            DataType::Timestamp(_, _) => Self::Timestamp(any.downcast_ref()?),
            _ => return None,
        })
    }

    /// The value of `row`. Inlined into the callers of other crates: built in place, the value
    /// is not passed through the stack a byte and then sixteen at a time (a stall per row in
    /// the pre-aggregation's profile).
    #[inline]
    pub fn get(&self, row: usize) -> Scalar<'a> {
        macro_rules! read {
            ($a:expr, $wrap:expr) => {
                if $a.is_null(row) {
                    Scalar::Null
                } else {
                    $wrap($a.value(row))
                }
            };
        }
        match self {
            Self::Utf8(a) => read!(a, Scalar::Str),
            Self::Int32(a) => read!(a, |v: i32| Scalar::Int(i64::from(v))),
            Self::Int64(a) => read!(a, Scalar::Int),
            Self::Float64(a) => read!(a, Scalar::Float),
            Self::Boolean(a) => read!(a, Scalar::Bool),
            Self::Timestamp(a) => read!(a, Scalar::Int),
        }
    }
}

/// An owned group-key value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GroupValue {
    Null,
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl From<Scalar<'_>> for GroupValue {
    fn from(s: Scalar<'_>) -> Self {
        match s {
            Scalar::Null => GroupValue::Null,
            Scalar::Str(v) => GroupValue::Str(v.to_string()),
            Scalar::Int(v) => GroupValue::Int(v),
            Scalar::Float(v) => GroupValue::Float(v),
            Scalar::Bool(v) => GroupValue::Bool(v),
        }
    }
}

/// Encodes a group key deterministically (the same bytes on every executor and version).
pub fn encode_group_key(values: &[GroupValue]) -> Vec<u8> {
    // postcard's encoding of these plain enums is fixed by its wire format spec.
    postcard::to_allocvec(values).unwrap_or_default()
}

/// Encodes a row's group key from borrowed values into `out` (cleared first): the bytes of
/// [`encode_group_key`] without allocating for every row.
pub fn encode_group_key_into(values: &[Scalar<'_>], out: &mut Vec<u8>) {
    out.clear();
    // Serializing into a Vec cannot fail, and these enums have no failing fields.
    if let Ok(buf) = postcard::to_extend(values, std::mem::take(out)) {
        *out = buf;
    }
}

/// Decodes [`encode_group_key`] output.
pub fn decode_group_key(bytes: &[u8]) -> Result<Vec<GroupValue>, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// Builds an Arrow column of `data_type` from group-key values.
pub fn group_column<'a>(
    data_type: &DataType,
    values: impl Iterator<Item = &'a GroupValue>,
) -> ArrayRef {
    fn int(v: &GroupValue) -> Option<i64> {
        match v {
            GroupValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    match data_type {
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            for v in values {
                match v {
                    GroupValue::Str(s) => b.append_value(s),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Int32 => {
            let mut b = Int32Builder::new();
            for v in values {
                b.append_option(int(v).and_then(|i| i32::try_from(i).ok()));
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => {
            let mut b = Float64Builder::new();
            for v in values {
                b.append_option(match v {
                    GroupValue::Float(f) => Some(*f),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
            let mut b = BooleanBuilder::new();
            for v in values {
                b.append_option(match v {
                    GroupValue::Bool(x) => Some(*x),
                    _ => None,
                });
            }
            Arc::new(b.finish())
        }
        DataType::Timestamp(_, _) => {
            let mut b = TimestampMicrosecondBuilder::new().with_timezone(UTC);
            for v in values {
                b.append_option(int(v));
            }
            Arc::new(b.finish())
        }
        _ => {
            let mut b = Int64Builder::new();
            for v in values {
                b.append_option(int(v));
            }
            Arc::new(b.finish())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_round_trip() {
        let key = vec![
            GroupValue::Str("click".into()),
            GroupValue::Int(-3),
            GroupValue::Null,
            GroupValue::Bool(true),
        ];
        let bytes = encode_group_key(&key);
        assert_eq!(decode_group_key(&bytes).unwrap(), key);
        // Pinned: keys hash into key groups, so their bytes must never change.
        assert_eq!(
            encode_group_key(&[GroupValue::Str("ab".into())]),
            vec![1, 1, 2, b'a', b'b']
        );
    }

    #[test]
    fn borrowed_values_encode_as_owned_ones() {
        let borrowed = [
            Scalar::Str("click"),
            Scalar::Int(-3),
            Scalar::Null,
            Scalar::Float(2.5),
            Scalar::Bool(true),
        ];
        let owned: Vec<GroupValue> = borrowed.iter().map(|&s| s.into()).collect();
        let mut out = vec![9, 9];
        encode_group_key_into(&borrowed, &mut out);
        assert_eq!(out, encode_group_key(&owned));
    }
}
