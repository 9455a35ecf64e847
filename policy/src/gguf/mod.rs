//! GGUF files (llama.cpp's model format): the header, metadata and tensor
//! table ([`reader`]), dequantization of tensor data to f32 ([`dequant`]),
//! the llama mapping ([`llama`]), the tokenizer ([`tokenizer`]) and the
//! import as a Hugging Face directory ([`import`]).
//!
//! # Layout of a GGUF file (versions 2 and 3, little-endian)
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | metadata_kv_count u64
//! metadata_kv_count × (key string | value_type u32 | value)
//! tensor_count × (name string | n_dims u32 | n_dims × dim u64 | ggml_type u32 | offset u64)
//! padding to `general.alignment` (default 32)
//! tensor data; each tensor at data_start + offset, offsets aligned
//! ```
//!
//! A string is a u64 byte length and UTF-8 bytes; an array is an element
//! value type u32, a u64 count and the elements (arrays may nest).
//!
//! # Shape convention
//!
//! GGUF lists a tensor's dimensions innermost first (ggml's `ne[0]` is the
//! contiguous one): a Hugging Face weight of shape `[out, in]` (row-major)
//! appears in GGUF with dims `[in, out]`. [`GgufTensorInfo::dims`] keeps the
//! file's order; [`GgufTensorInfo::shape`] and the [`HostTensor`]s this
//! module returns are row-major, outermost first (the reverse), as
//! everywhere else in this crate. Quantization blocks run along `dims[0]`,
//! which must be a multiple of the block size, so every row (the `dims[0]`
//! contiguous elements) dequantizes independently of the others.
//!
//! [`HostTensor`]: crate::safetensors_io::HostTensor
pub mod dequant;
pub mod import;
pub mod llama;
pub mod reader;
#[cfg(test)]
mod test_builder;
pub mod tokenizer;

pub use dequant::{dequantize, dequantize_to_vec};
pub use reader::{GgufFile, GgufHeader, GgufTensorInfo};

use anyhow::{bail, Result};
use std::fmt;

/// The storage type of a tensor (ggml's `ggml_type`), with the id it has in
/// GGUF files. Every type llama.cpp defines is known (so that the reader can
/// size and skip it); [`GgmlType::can_dequantize`] says which ones
/// [`dequantize`] handles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, id, name, block size in elements, block size in bytes), as in
/// ggml's `type_traits` / gguf-py's `GGML_QUANT_SIZES`.
const TYPES: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
];

impl GgmlType {
    fn entry(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        TYPES
            .iter()
            .find(|e| e.0 == self)
            .expect("every GgmlType has a row in TYPES")
    }

    /// The type with this GGUF id, or an error naming the id.
    pub fn from_id(id: u32) -> Result<Self> {
        match TYPES.iter().find(|e| e.1 == id) {
            Some(e) => Ok(e.0),
            None => bail!("unknown ggml tensor type id {id}"),
        }
    }

    /// The id GGUF files use for this type.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// The name llama.cpp uses (`Q4_K`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block (1 for the plain types).
    pub fn block_size(self) -> u64 {
        self.entry().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().4
    }

    /// Whether [`dequantize`] converts this type.
    pub fn can_dequantize(self) -> bool {
        SUPPORTED.contains(&self)
    }
}

/// The types [`dequantize`] converts to f32.
pub const SUPPORTED: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type of a metadata value (GGUF's `gguf_type`), with its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgufValueType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl GgufValueType {
    /// The value type with this GGUF id, or an error naming the id.
    pub fn from_id(id: u32) -> Result<Self> {
        use GgufValueType::*;
        Ok(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => bail!("unknown metadata value type id {id} (known: 0..=12)"),
        })
    }

    /// The id GGUF files use.
    pub fn id(self) -> u32 {
        use GgufValueType::*;
        match self {
            U8 => 0,
            I8 => 1,
            U16 => 2,
            I16 => 3,
            U32 => 4,
            I32 => 5,
            F32 => 6,
            Bool => 7,
            String => 8,
            Array => 9,
            U64 => 10,
            I64 => 11,
            F64 => 12,
        }
    }

    /// gguf-py's name (`UINT8`, `STRING`, ...).
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "UINT8",
            I8 => "INT8",
            U16 => "UINT16",
            I16 => "INT16",
            U32 => "UINT32",
            I32 => "INT32",
            F32 => "FLOAT32",
            Bool => "BOOL",
            String => "STRING",
            Array => "ARRAY",
            U64 => "UINT64",
            I64 => "INT64",
            F64 => "FLOAT64",
        }
    }
}

impl fmt::Display for GgufValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A metadata array: its elements, stored by element type (so an empty
/// array keeps its type and a vocabulary of scores stays a `Vec<f32>`).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufArray {
    /// The element type.
    pub fn elem_type(&self) -> GgufValueType {
        use GgufArray as A;
        use GgufValueType as T;
        match self {
            A::U8(_) => T::U8,
            A::I8(_) => T::I8,
            A::U16(_) => T::U16,
            A::I16(_) => T::I16,
            A::U32(_) => T::U32,
            A::I32(_) => T::I32,
            A::F32(_) => T::F32,
            A::Bool(_) => T::Bool,
            A::String(_) => T::String,
            A::Array(_) => T::Array,
            A::U64(_) => T::U64,
            A::I64(_) => T::I64,
            A::F64(_) => T::F64,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        use GgufArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::F32(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GgufValue {
    /// The value's type.
    pub fn value_type(&self) -> GgufValueType {
        use GgufValue as V;
        use GgufValueType as T;
        match self {
            V::U8(_) => T::U8,
            V::I8(_) => T::I8,
            V::U16(_) => T::U16,
            V::I16(_) => T::I16,
            V::U32(_) => T::U32,
            V::I32(_) => T::I32,
            V::F32(_) => T::F32,
            V::Bool(_) => T::Bool,
            V::String(_) => T::String,
            V::Array(_) => T::Array,
            V::U64(_) => T::U64,
            V::I64(_) => T::I64,
            V::F64(_) => T::F64,
        }
    }

    /// An integer value of any integer type, if it is one and is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        use GgufValue as V;
        match *self {
            V::U8(x) => Some(x.into()),
            V::U16(x) => Some(x.into()),
            V::U32(x) => Some(x.into()),
            V::U64(x) => Some(x),
            V::I8(x) => u64::try_from(x).ok(),
            V::I16(x) => u64::try_from(x).ok(),
            V::I32(x) => u64::try_from(x).ok(),
            V::I64(x) => u64::try_from(x).ok(),
            _ => None,
        }
    }

    /// A number of any numeric type, as f64 (integers beyond 2^53 round).
    pub fn as_f64(&self) -> Option<f64> {
        use GgufValue as V;
        match *self {
            V::F32(x) => Some(x.into()),
            V::F64(x) => Some(x),
            V::I8(x) => Some(x.into()),
            V::I16(x) => Some(x.into()),
            V::I32(x) => Some(x.into()),
            V::I64(x) => Some(x as f64),
            _ => self.as_u64().map(|x| x as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            GgufValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}
