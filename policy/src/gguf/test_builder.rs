//! Builds GGUF bytes by hand, for tests.

/// Builds GGUF bytes by hand.
#[derive(Default)]
pub struct Builder {
    pub version: u32,
    pub kvs: Vec<u8>,
    pub n_kv: u64,
    pub infos: Vec<u8>,
    pub n_tensors: u64,
    pub alignment: u64,
    pub data: Vec<u8>,
}

/// Appends an encoded string.
pub fn s(out: &mut Vec<u8>, x: &str) {
    out.extend((x.len() as u64).to_le_bytes());
    out.extend(x.as_bytes());
}

impl Builder {
    pub fn new() -> Self {
        Builder {
            version: 3,
            alignment: 32,
            ..Default::default()
        }
    }
    /// A key with a value type id and its encoded value.
    pub fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
        s(&mut self.kvs, key);
        self.kvs.extend(ty.to_le_bytes());
        self.kvs.extend(value);
        self.n_kv += 1;
        self
    }
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        s(&mut self.infos, name);
        self.infos.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            self.infos.extend(d.to_le_bytes());
        }
        self.infos.extend(ty.to_le_bytes());
        self.infos.extend(offset.to_le_bytes());
        self.n_tensors += 1;
        self
    }
    pub fn data(mut self, data: &[u8]) -> Self {
        self.data = data.to_vec();
        self
    }
    pub fn build(&self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend(self.n_tensors.to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kvs);
        out.extend(&self.infos);
        while !(out.len() as u64).is_multiple_of(self.alignment) {
            out.push(0);
        }
        out.extend(&self.data);
        out
    }
}

/// An encoded STRING value.
pub fn str_value(x: &str) -> Vec<u8> {
    let mut v = Vec::new();
    s(&mut v, x);
    v
}

/// An encoded ARRAY value (element type, count, encoded elements).
pub fn array(elem_ty: u32, count: u64, elems: &[u8]) -> Vec<u8> {
    let mut v = elem_ty.to_le_bytes().to_vec();
    v.extend(count.to_le_bytes());
    v.extend(elems);
    v
}
