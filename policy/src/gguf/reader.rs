//! Reads a GGUF file's header (metadata and tensor table) and, on demand,
//! single tensors, without loading the whole file.
//!
//! Every malformed input is an error naming what is wrong and where: a file
//! that ends early, a bad magic or version, an unknown value or tensor type,
//! a count or length that cannot fit in what is left of the file, tensor
//! data outside the file or overlapping other tensors. Nothing is allocated
//! before the file is known to hold it, and the header's decoded size is
//! capped at [`HEADER_MEMORY_LIMIT`].
use super::{dequant, GgmlType, GgufArray, GgufValue, GgufValueType};
use crate::safetensors_io::HostTensor;
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The first four bytes of every GGUF file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment (a UINT32 power of two).
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: u32 = 4;
/// How deep metadata arrays may nest (an array of arrays is depth 2).
pub const MAX_ARRAY_DEPTH: usize = 4;
/// The most memory the decoded metadata and tensor table may take (bytes,
/// estimated): far above any real model's (a 256k-token vocabulary takes
/// about 20 MiB), far below what a corrupt count could ask for.
pub const HEADER_MEMORY_LIMIT: u64 = 1 << 30;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// The dimensions as the file lists them: innermost (contiguous) first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Where the data starts, relative to the data section.
    pub offset: u64,
    /// The data's size in bytes.
    pub n_bytes: u64,
    /// The number of elements (the product of `dims`).
    pub n_elements: u64,
}

impl GgufTensorInfo {
    /// The row-major shape, outermost first (the reverse of [`Self::dims`]).
    pub fn shape(&self) -> Vec<usize> {
        // The reader checked that the element count fits in usize, so every dim does.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A GGUF file's header: version, metadata (in file order), tensor table and
/// where the data section starts.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<GgufTensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
    data_end: u64,
    file_len: u64,
}

impl GgufHeader {
    /// The format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata key and value, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value of a metadata key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// An unsigned integer value (any integer type, not negative); `None`
    /// when absent, an error naming the key when it has another type.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", GgufValue::as_u64)
    }

    /// A numeric value (any integer or float type) as f64.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", GgufValue::as_f64)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", GgufValue::as_str)
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", GgufValue::as_bool)
    }

    /// An array value.
    pub fn get_array(&self, key: &str) -> Result<Option<&GgufArray>> {
        self.typed(key, "an array", GgufValue::as_array)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        what: &str,
        f: impl Fn(&'a GgufValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match f(v) {
                Some(x) => Ok(Some(x)),
                None => bail!(
                    "GGUF metadata `{key}` should be {what}, but is {} {}",
                    v.value_type(),
                    short(v)
                ),
            },
        }
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The table entry of a tensor.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The alignment of tensor data (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts (absolute file offset).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Where the last tensor's data ends (absolute), or the header's end
    /// when there are no tensors: the file must be at least this long.
    pub fn data_end(&self) -> u64 {
        self.data_end
    }

    /// The file's length when it was read.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }
}

/// A short rendering of a value for error messages.
fn short(v: &GgufValue) -> String {
    match v {
        GgufValue::Array(a) => format!("(array of {} {})", a.len(), a.elem_type()),
        GgufValue::String(s) if s.chars().count() > 40 => {
            format!("{:?}...", s.chars().take(40).collect::<String>())
        }
        other => format!("{other:?}"),
    }
}

/// An open GGUF file: its header, and a reader for tensor data.
pub struct GgufFile<R = BufReader<File>> {
    header: GgufHeader,
    reader: R,
    source: String,
}

impl GgufFile<BufReader<File>> {
    /// Opens a file and reads its header (not its tensor data).
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Self::from_reader(BufReader::new(file), &path.display().to_string())
    }
}

impl<R: Read + Seek> GgufFile<R> {
    /// Reads the header from any seekable reader (its length is found by
    /// seeking to the end); `source` names it in error messages.
    pub fn from_reader(mut reader: R, source: &str) -> Result<Self> {
        let header = read_header(&mut reader)
            .with_context(|| format!("{source} is not a valid GGUF file"))?;
        Ok(GgufFile {
            header,
            reader,
            source: source.to_string(),
        })
    }

    /// The header: metadata and tensor table.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The raw bytes of a tensor's data.
    pub fn tensor_bytes(&mut self, name: &str) -> Result<Vec<u8>> {
        let info = self.info(name)?.clone();
        self.read_at(&info)
    }

    /// A tensor dequantized to f32, with its row-major shape (outermost
    /// first: the reverse of the GGUF dims).
    pub fn tensor_f32(&mut self, name: &str) -> Result<HostTensor> {
        let info = self.info(name)?.clone();
        let n = usize::try_from(info.n_elements)
            .ok()
            .filter(|n| n.checked_mul(4).is_some())
            .with_context(|| format!("tensor `{name}` is too large to hold as f32"))?;
        let bytes = self.read_at(&info)?;
        let data = dequant::dequantize_to_vec(info.ggml_type, &bytes, n)
            .with_context(|| format!("{}: tensor `{name}`", self.source))?;
        Ok(HostTensor {
            shape: info.shape(),
            data,
        })
    }

    fn info(&self, name: &str) -> Result<&GgufTensorInfo> {
        self.header
            .tensor(name)
            .with_context(|| format!("{}: no tensor named `{name}`", self.source))
    }

    fn read_at(&mut self, info: &GgufTensorInfo) -> Result<Vec<u8>> {
        let what = || format!("{}: reading tensor `{}`", self.source, info.name);
        let n = usize::try_from(info.n_bytes)
            .ok()
            .with_context(|| format!("{}: {} bytes do not fit in memory", what(), info.n_bytes))?;
        let start = self.header.data_offset + info.offset;
        self.reader
            .seek(SeekFrom::Start(start))
            .with_context(what)?;
        let mut buf = vec![0u8; n];
        self.reader
            .read_exact(&mut buf)
            .with_context(|| format!("{} ({n} bytes at offset {start})", what()))?;
        Ok(buf)
    }
}

/// The reader of the header: tracks the position, the file's length and the
/// memory budget.
struct Src<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    budget: u64,
}

impl<R: Read> Src<'_, R> {
    fn left(&self) -> u64 {
        self.len - self.pos
    }

    /// Checks that `n` more bytes exist.
    fn need(&self, n: u64, what: &str) -> Result<()> {
        if n > self.left() {
            bail!(
                "the file ends early: {what} needs {n} bytes at offset {}, but the file has {} bytes",
                self.pos,
                self.len
            );
        }
        Ok(())
    }

    /// Takes `bytes` from the memory budget.
    fn charge(&mut self, bytes: u64, what: &str) -> Result<()> {
        if bytes > self.budget {
            bail!(
                "{what} (at offset {}) would take {bytes} bytes of memory, over the limit of {HEADER_MEMORY_LIMIT} for a GGUF header",
                self.pos
            );
        }
        self.budget -= bytes;
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.need(buf.len() as u64, what)?;
        self.r
            .read_exact(buf)
            .with_context(|| format!("cannot read {what} at offset {}", self.pos))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// `n` bytes (already known to be in the file and budgeted).
    fn vec(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        self.need(n, what)?;
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v, what)?;
        Ok(v)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let start = self.pos;
        let n = self.u64(&format!("the length of {what}"))?;
        if n > self.left() {
            bail!(
                "the file ends early: {what} at offset {start} has length {n}, but only {} bytes are left",
                self.left()
            );
        }
        self.charge(n, what)?;
        let bytes = self.vec(n, what)?;
        String::from_utf8(bytes)
            .map_err(|e| anyhow::anyhow!("{what} at offset {start} is not valid UTF-8 ({e})"))
    }

    fn value_type(&mut self, what: &str) -> Result<GgufValueType> {
        let at = self.pos;
        let id = self.u32(what)?;
        GgufValueType::from_id(id).with_context(|| format!("{what} at offset {at}"))
    }

    fn value(&mut self, ty: GgufValueType, depth: usize) -> Result<GgufValue> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(u8::from_le_bytes(self.bytes("a UINT8")?)),
            T::I8 => GgufValue::I8(i8::from_le_bytes(self.bytes("an INT8")?)),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.bytes("a UINT16")?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.bytes("an INT16")?)),
            T::U32 => GgufValue::U32(self.u32("a UINT32")?),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.bytes("an INT32")?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.bytes("a FLOAT32")?)),
            T::U64 => GgufValue::U64(self.u64("a UINT64")?),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.bytes("an INT64")?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.bytes("a FLOAT64")?)),
            T::Bool => {
                let at = self.pos;
                let [b] = self.bytes("a BOOL")?;
                GgufValue::Bool(bool_of(b, at)?)
            }
            T::String => GgufValue::String(self.string("a STRING value")?),
            T::Array => GgufValue::Array(self.array(depth + 1)?),
        })
    }

    fn array(&mut self, depth: usize) -> Result<GgufArray> {
        use GgufValueType as T;
        let start = self.pos;
        if depth > MAX_ARRAY_DEPTH {
            bail!("arrays nest deeper than {MAX_ARRAY_DEPTH} levels at offset {start}");
        }
        let ty = self.value_type("an array's element type")?;
        let count = self.u64("an array's length")?;
        // The fewest bytes an element takes in the file, and about how many it takes in memory.
        let (disk, mem): (u64, u64) = match ty {
            T::U8 | T::I8 | T::Bool => (1, 1),
            T::U16 | T::I16 => (2, 2),
            T::U32 | T::I32 | T::F32 => (4, 4),
            T::U64 | T::I64 | T::F64 => (8, 8),
            T::String => (8, std::mem::size_of::<String>() as u64),
            T::Array => (12, std::mem::size_of::<GgufArray>() as u64),
        };
        if count > self.left() / disk {
            bail!(
                "array at offset {start} claims {count} {ty} elements, which cannot fit in the {} bytes left in the file",
                self.left()
            );
        }
        self.charge(count * mem, &format!("array of {count} {ty}"))?;
        let n = count as usize;
        macro_rules! prims {
            ($variant:ident, $t:ty) => {{
                const W: usize = std::mem::size_of::<$t>();
                let raw = self.vec(count * W as u64, concat!("an array of ", stringify!($t)))?;
                GgufArray::$variant(
                    raw.chunks_exact(W)
                        .map(|c| {
                            let mut b = [0u8; W];
                            b.copy_from_slice(c);
                            <$t>::from_le_bytes(b)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match ty {
            T::U8 => GgufArray::U8(self.vec(count, "an array of u8")?),
            T::I8 => prims!(I8, i8),
            T::U16 => prims!(U16, u16),
            T::I16 => prims!(I16, i16),
            T::U32 => prims!(U32, u32),
            T::I32 => prims!(I32, i32),
            T::F32 => prims!(F32, f32),
            T::U64 => prims!(U64, u64),
            T::I64 => prims!(I64, i64),
            T::F64 => prims!(F64, f64),
            T::Bool => {
                let at = self.pos;
                let raw = self.vec(count, "an array of bool")?;
                GgufArray::Bool(
                    raw.iter()
                        .enumerate()
                        .map(|(i, &b)| bool_of(b, at + i as u64))
                        .collect::<Result<_>>()?,
                )
            }
            T::String => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(
                        self.string("an array's string").with_context(|| {
                            format!("element {i} of the array at offset {start}")
                        })?,
                    );
                }
                GgufArray::String(v)
            }
            T::Array => {
                let mut v = Vec::with_capacity(n);
                for i in 0..n {
                    v.push(
                        self.array(depth + 1).with_context(|| {
                            format!("element {i} of the array at offset {start}")
                        })?,
                    );
                }
                GgufArray::Array(v)
            }
        })
    }
}

fn bool_of(b: u8, at: u64) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => bail!("BOOL at offset {at} is {b}, not 0 or 1"),
    }
}

fn read_header<R: Read + Seek>(r: &mut R) -> Result<GgufHeader> {
    let len = r
        .seek(SeekFrom::End(0))
        .context("cannot find the file's length")?;
    r.seek(SeekFrom::Start(0))
        .context("cannot seek to the start")?;
    let mut src = Src {
        r,
        pos: 0,
        len,
        budget: HEADER_MEMORY_LIMIT,
    };
    let magic: [u8; 4] = src.bytes("the magic")?;
    if magic != GGUF_MAGIC {
        bail!(
            "bad magic {:?} (expected \"GGUF\"): not a GGUF file",
            String::from_utf8_lossy(&magic)
        );
    }
    let version = src.u32("the version")?;
    match version {
        2 | 3 => {}
        1 => bail!("GGUF version 1 is not supported (only versions 2 and 3); convert the file with a current llama.cpp"),
        v if matches!(v.swap_bytes(), 2 | 3) => {
            bail!("this is a big-endian GGUF file (version {}), which is not supported", v.swap_bytes())
        }
        v => bail!("unsupported GGUF version {v} (only versions 2 and 3 are supported)"),
    }
    let n_tensors = src.u64("the tensor count")?;
    let n_kv = src.u64("the metadata count")?;
    // Each entry takes at least a string length, a type and a value byte;
    // each tensor at least a name length, n_dims, a type and an offset.
    if n_kv > src.left() / 13 {
        bail!(
            "the header claims {n_kv} metadata entries, which cannot fit in the {} bytes left in the file",
            src.left()
        );
    }
    if n_tensors > src.left() / 24 {
        bail!(
            "the header claims {n_tensors} tensors, which cannot fit in the {} bytes left in the file",
            src.left()
        );
    }

    let mut metadata = Vec::with_capacity(n_kv as usize);
    let mut metadata_index = HashMap::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let at = src.pos;
        let key = src
            .string("a metadata key")
            .with_context(|| format!("metadata entry {i} of {n_kv}"))?;
        let value = (|| {
            let ty = src.value_type("the value type")?;
            src.value(ty, 0)
        })()
        .with_context(|| format!("metadata `{key}` (entry {i} of {n_kv}, at offset {at})"))?;
        if metadata_index.insert(key.clone(), metadata.len()).is_some() {
            bail!("metadata key `{key}` appears twice (entry {i}, at offset {at})");
        }
        metadata.push((key, value));
    }

    let alignment = match metadata_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(GgufValue::U32(a)) if *a != 0 && a.is_power_of_two() => u64::from(*a),
        Some(GgufValue::U32(a)) => {
            bail!("`{ALIGNMENT_KEY}` is {a}; it must be a power of two")
        }
        Some(v) => bail!(
            "`{ALIGNMENT_KEY}` must be a UINT32, but is {} {}",
            v.value_type(),
            short(v)
        ),
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let at = src.pos;
        let info = read_tensor_info(&mut src)
            .with_context(|| format!("tensor {i} of {n_tensors} (table entry at offset {at})"))?;
        if !info.offset.is_multiple_of(alignment) {
            bail!(
                "tensor `{}`: data offset {} is not a multiple of the alignment {alignment}",
                info.name,
                info.offset
            );
        }
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            bail!("tensor name `{}` appears twice (entry {i})", info.name);
        }
        tensors.push(info);
    }

    let header_end = src.pos;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .context("the data section's offset overflows")?;
    let mut data_end = header_end;
    let mut by_offset: Vec<&GgufTensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    let mut prev: Option<&GgufTensorInfo> = None;
    for t in by_offset {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes))
            .filter(|&e| e <= len)
            .with_context(|| {
                format!(
                    "tensor `{}` ({}, dims {:?}): its {} bytes at data offset {} (absolute {}) run past the end of the file ({len} bytes)",
                    t.name,
                    t.ggml_type,
                    t.dims,
                    t.n_bytes,
                    t.offset,
                    data_offset as u128 + t.offset as u128
                )
            })?;
        if let Some(p) = prev {
            if p.offset + p.n_bytes > t.offset {
                bail!(
                    "tensors `{}` (data bytes {}..{}) and `{}` (from {}) overlap",
                    p.name,
                    p.offset,
                    p.offset + p.n_bytes,
                    t.name,
                    t.offset
                );
            }
        }
        data_end = data_end.max(end);
        prev = Some(t);
    }
    Ok(GgufHeader {
        version,
        metadata,
        metadata_index,
        tensors,
        tensor_index,
        alignment,
        data_offset,
        data_end,
        file_len: len,
    })
}

fn read_tensor_info<R: Read>(src: &mut Src<'_, R>) -> Result<GgufTensorInfo> {
    let name = src.string("a tensor name")?;
    let inner = |src: &mut Src<'_, R>| -> Result<GgufTensorInfo> {
        let n_dims = src.u32("the number of dimensions")?;
        if n_dims > MAX_DIMS {
            bail!("has {n_dims} dimensions; at most {MAX_DIMS} are allowed");
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(src.u64("a dimension")?);
        }
        let type_at = src.pos;
        let ty = GgmlType::from_id(src.u32("the tensor type")?)
            .with_context(|| format!("tensor type at offset {type_at}"))?;
        let offset = src.u64("the data offset")?;
        src.charge(
            (std::mem::size_of::<GgufTensorInfo>() + 8 * dims.len()) as u64,
            "the tensor table",
        )?;
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| usize::try_from(n).is_ok())
            .with_context(|| format!("dims {dims:?}: the element count overflows"))?;
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let row = dims.first().copied().unwrap_or(1);
        if !row.is_multiple_of(bs) {
            bail!(
                "type {ty} stores blocks of {bs} elements, but its rows (dims[0]) have {row} elements"
            );
        }
        let n_bytes = (n_elements / bs)
            .checked_mul(ts)
            .with_context(|| format!("dims {dims:?}: the byte size overflows"))?;
        Ok(GgufTensorInfo {
            name: String::new(),
            dims,
            ggml_type: ty,
            offset,
            n_bytes,
            n_elements,
        })
    };
    let info = inner(src).with_context(|| format!("tensor `{name}`"))?;
    Ok(GgufTensorInfo { name, ..info })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::test_builder::{array, s, str_value, Builder};
    use std::io::Cursor;

    fn open(bytes: Vec<u8>) -> Result<GgufFile<Cursor<Vec<u8>>>> {
        GgufFile::from_reader(Cursor::new(bytes), "test.gguf")
    }

    fn err(bytes: Vec<u8>) -> String {
        match open(bytes) {
            Ok(_) => panic!("expected an error"),
            Err(e) => format!("{e:#}"),
        }
    }

    /// A small valid file: a value of every type, an F32 and a Q8_0 tensor.
    fn sample() -> Builder {
        let mut strings = Vec::new();
        s(&mut strings, "a");
        s(&mut strings, "bé");
        let mut nested = array(5, 2, &[1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]);
        nested.extend(array(5, 0, &[]));
        let mut data = Vec::new();
        for x in [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0] {
            data.extend(x.to_le_bytes());
        }
        data.extend(half::f16::from_f32(0.5).to_bits().to_le_bytes());
        data.extend((0..32).map(|j| j as u8));
        Builder::new()
            .kv("u8", 0, &[200])
            .kv("i8", 1, &[0xFE])
            .kv("u16", 2, &60000u16.to_le_bytes())
            .kv("i16", 3, &(-30000i16).to_le_bytes())
            .kv("u32", 4, &4_000_000_000u32.to_le_bytes())
            .kv("i32", 5, &(-2_000_000_000i32).to_le_bytes())
            .kv("f32", 6, &0.25f32.to_le_bytes())
            .kv("bool", 7, &[1])
            .kv("string", 8, &str_value("héllo"))
            .kv("strings", 9, &array(8, 2, &strings))
            .kv("nested", 9, &array(9, 2, &nested))
            .kv("u64", 10, &u64::MAX.to_le_bytes())
            .kv("i64", 11, &i64::MIN.to_le_bytes())
            .kv("f64", 12, &(-1.5f64).to_le_bytes())
            .tensor("plain", &[4, 2], 0, 0)
            .tensor("q", &[32], 8, 32)
            .data(&data)
    }

    #[test]
    fn reads_every_value_type_and_tensors() {
        let mut f = open(sample().build()).unwrap();
        let h = f.header();
        assert_eq!(h.version(), 3);
        assert_eq!(h.alignment(), 32);
        assert_eq!(h.metadata().len(), 14);
        assert_eq!(h.get("u8"), Some(&GgufValue::U8(200)));
        assert_eq!(h.get("i8"), Some(&GgufValue::I8(-2)));
        assert_eq!(h.get("u16"), Some(&GgufValue::U16(60000)));
        assert_eq!(h.get("i16"), Some(&GgufValue::I16(-30000)));
        assert_eq!(h.get("u32"), Some(&GgufValue::U32(4_000_000_000)));
        assert_eq!(h.get("i32"), Some(&GgufValue::I32(-2_000_000_000)));
        assert_eq!(h.get("f32"), Some(&GgufValue::F32(0.25)));
        assert_eq!(h.get("bool"), Some(&GgufValue::Bool(true)));
        assert_eq!(h.get_str("string").unwrap(), Some("héllo"));
        assert_eq!(
            h.get("strings"),
            Some(&GgufValue::Array(GgufArray::String(vec![
                "a".into(),
                "bé".into()
            ])))
        );
        assert_eq!(
            h.get("nested"),
            Some(&GgufValue::Array(GgufArray::Array(vec![
                GgufArray::I32(vec![1, -1]),
                GgufArray::I32(vec![])
            ])))
        );
        assert_eq!(h.get("u64"), Some(&GgufValue::U64(u64::MAX)));
        assert_eq!(h.get("i64"), Some(&GgufValue::I64(i64::MIN)));
        assert_eq!(h.get_f64("f64").unwrap(), Some(-1.5));
        assert_eq!(h.get_u64("u32").unwrap(), Some(4_000_000_000));
        assert_eq!(h.get_u64("absent").unwrap(), None);
        let e = h.get_u64("i8").unwrap_err().to_string();
        assert!(e.contains("`i8`") && e.contains("INT8"), "{e}");
        let e = h.get_str("f32").unwrap_err().to_string();
        assert!(e.contains("FLOAT32"), "{e}");

        let plain = h.tensor("plain").unwrap();
        assert_eq!(
            (plain.dims.clone(), plain.shape()),
            (vec![4, 2], vec![2, 4])
        );
        assert_eq!(plain.n_bytes, 32);
        let t = f.tensor_f32("plain").unwrap();
        assert_eq!(t.shape, vec![2, 4]);
        assert_eq!(t.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        let q = f.tensor_f32("q").unwrap();
        assert_eq!(q.shape, vec![32]);
        assert_eq!(q.data[3], 1.5);
        assert_eq!(f.tensor_bytes("q").unwrap().len(), 34);
        let e = f.tensor_f32("missing").unwrap_err().to_string();
        assert!(e.contains("no tensor named `missing`"), "{e}");
    }

    #[test]
    fn every_truncation_is_an_error_and_never_a_panic() {
        let bytes = sample().build();
        let end = open(bytes.clone()).unwrap().header().data_end() as usize;
        assert_eq!(end, bytes.len());
        for n in 0..bytes.len() {
            let e = err(bytes[..n].to_vec());
            assert!(
                e.contains("ends early") || e.contains("past the end") || e.contains("cannot fit"),
                "prefix {n}: {e}"
            );
        }
        // The same without tensors: the header alone.
        let mut b = sample();
        b.infos.clear();
        b.n_tensors = 0;
        b.data.clear();
        let bytes = b.build();
        let end = open(bytes.clone()).unwrap().header().data_end() as usize;
        for n in 0..end {
            assert!(open(bytes[..n].to_vec()).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn corrupt_bytes_give_errors_not_panics() {
        let bytes = sample().build();
        for i in 0..bytes.len() {
            for v in [0x00, 0xFF, 0x80, 0x7F, 0x0D, bytes[i] ^ 0x01] {
                let mut b = bytes.clone();
                b[i] = v;
                if let Ok(mut f) = open(b) {
                    let names: Vec<String> = f
                        .header()
                        .tensors()
                        .iter()
                        .map(|t| t.name.clone())
                        .collect();
                    for n in names {
                        let _ = f.tensor_f32(&n);
                    }
                }
            }
        }
    }

    #[test]
    fn header_errors_name_the_problem() {
        let good = sample().build();
        let mut b = good.clone();
        b[..4].copy_from_slice(b"GGUG");
        assert!(err(b).contains("bad magic \"GGUG\""));
        for (v, want) in [
            (1u32, "version 1 is not supported"),
            (4, "unsupported GGUF version 4"),
            (3u32.swap_bytes(), "big-endian"),
        ] {
            let mut b = good.clone();
            b[4..8].copy_from_slice(&v.to_le_bytes());
            let e = err(b);
            assert!(e.contains(want), "{e}");
        }
        let mut b = good.clone();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(err(b).contains("claims 18446744073709551615 tensors"));
        let mut b = good;
        b[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(err(b).contains("claims 1099511627776 metadata entries"));

        let e = err(Builder::new().kv("k", 99, &[0; 8]).build());
        assert!(
            e.contains("metadata `k`") && e.contains("unknown metadata value type id 99"),
            "{e}"
        );
        let e = err(Builder::new().kv("k", 8, &u64::MAX.to_le_bytes()).build());
        assert!(
            e.contains("has length 18446744073709551615, but only"),
            "{e}"
        );
        let e = err(Builder::new()
            .kv("k", 9, &array(4, 1 << 60, &[0; 64]))
            .build());
        assert!(
            e.contains("claims 1152921504606846976 UINT32 elements"),
            "{e}"
        );
        let e = err(Builder::new().kv("k", 9, &array(77, 1, &[0; 64])).build());
        assert!(e.contains("unknown metadata value type id 77"), "{e}");
        let e = err(Builder::new().kv("k", 7, &[2]).build());
        assert!(
            e.contains("BOOL at offset") && e.contains("is 2, not 0 or 1"),
            "{e}"
        );
        let e = err(Builder::new()
            .kv("k", 8, &[2, 0, 0, 0, 0, 0, 0, 0, 0xC3, 0x28])
            .build());
        assert!(e.contains("not valid UTF-8"), "{e}");
        let e = err(Builder::new().kv("k", 0, &[1]).kv("k", 0, &[2]).build());
        assert!(e.contains("`k` appears twice"), "{e}");
        let mut deep = array(0, 0, &[]);
        for _ in 0..MAX_ARRAY_DEPTH {
            deep = array(9, 1, &deep);
        }
        let e = err(Builder::new().kv("k", 9, &deep).build());
        assert!(e.contains("nest deeper than 4"), "{e}");

        let e = err(Builder::new()
            .kv(ALIGNMENT_KEY, 4, &48u32.to_le_bytes())
            .build());
        assert!(e.contains("is 48; it must be a power of two"), "{e}");
        let e = err(Builder::new()
            .kv(ALIGNMENT_KEY, 4, &0u32.to_le_bytes())
            .build());
        assert!(e.contains("is 0; it must be a power of two"), "{e}");
        let e = err(Builder::new()
            .kv(ALIGNMENT_KEY, 10, &64u64.to_le_bytes())
            .build());
        assert!(e.contains("must be a UINT32, but is UINT64 U64(64)"), "{e}");
    }

    #[test]
    fn tensor_table_errors_name_the_tensor() {
        let data = [0u8; 64];
        let e = err(Builder::new()
            .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
            .data(&data)
            .build());
        assert!(e.contains("tensor `t`: has 5 dimensions"), "{e}");
        let e = err(Builder::new().tensor("t", &[4], 100, 0).data(&data).build());
        assert!(e.contains("unknown ggml tensor type id 100"), "{e}");
        let e = err(Builder::new()
            .tensor("t", &[1 << 32, 1 << 32], 0, 0)
            .data(&data)
            .build());
        assert!(e.contains("element count overflows"), "{e}");
        let e = err(Builder::new().tensor("t", &[48], 12, 0).data(&data).build());
        assert!(
            e.contains("Q4_K stores blocks of 256 elements, but its rows (dims[0]) have 48"),
            "{e}"
        );
        let e = err(Builder::new().tensor("t", &[4], 0, 8).data(&data).build());
        assert!(
            e.contains("tensor `t`: data offset 8 is not a multiple of the alignment 32"),
            "{e}"
        );
        let e = err(Builder::new().tensor("t", &[17], 0, 0).data(&data).build());
        assert!(
            e.contains("tensor `t` (F32, dims [17]): its 68 bytes"),
            "{e}"
        );
        assert!(e.contains("run past the end of the file"), "{e}");
        let e = err(Builder::new()
            .tensor("t", &[4], 0, u64::MAX - 31)
            .data(&data)
            .build());
        assert!(e.contains("run past the end"), "{e}");
        let e = err(Builder::new()
            .tensor("a", &[12], 0, 0)
            .tensor("b", &[4], 0, 32)
            .data(&data)
            .build());
        assert!(
            e.contains("tensors `a` (data bytes 0..48) and `b` (from 32) overlap"),
            "{e}"
        );
        let e = err(Builder::new()
            .tensor("a", &[4], 0, 0)
            .tensor("a", &[4], 0, 32)
            .data(&data)
            .build());
        assert!(e.contains("tensor name `a` appears twice"), "{e}");
        // A custom alignment moves the data section and must divide offsets.
        let b = Builder {
            alignment: 64,
            ..Builder::new()
                .kv(ALIGNMENT_KEY, 4, &64u32.to_le_bytes())
                .tensor("t", &[4], 0, 0)
                .data(&data)
        };
        let f = open(b.build()).unwrap();
        assert_eq!(f.header().alignment(), 64);
        assert_eq!(f.header().data_offset() % 64, 0);
        // A type we read but cannot dequantize: the header opens, the tensor errors.
        let mut f = open(Builder::new().tensor("t", &[32], 20, 0).data(&data).build()).unwrap();
        let e = format!("{:#}", f.tensor_f32("t").unwrap_err());
        assert!(
            e.contains("tensor `t`") && e.contains("cannot dequantize ggml type IQ4_NL"),
            "{e}"
        );
    }
}
