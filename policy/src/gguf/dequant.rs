//! Dequantization of ggml tensor data to f32.
//!
//! The block layouts are those of llama.cpp's `ggml-common.h` /
//! `ggml-quants.c` (`dequantize_row_*`) and of gguf-py's `gguf/quants.py`;
//! the arithmetic is done in f32 in the same order as both (scale × quant,
//! then the offset; the K-quants first form the sub-block scale
//! `d × scale`), with no fused multiply-add, so the results are bit-identical
//! to gguf-py's `gguf.quants.dequantize` (the tests in `tests/gguf.rs` check
//! this on files that gguf-py wrote).
//!
//! Blocks never straddle rows (a row's length is a multiple of the block
//! size), so a tensor's data is simply a sequence of blocks; any run of
//! whole rows dequantizes on its own.
use super::{GgmlType, SUPPORTED};
use anyhow::{bail, Result};
use rayon::prelude::*;

/// Elements per parallel task (a multiple of every block size).
const ELEMS_PER_TASK: usize = 1 << 16;

/// Dequantizes `data` (whole blocks of type `ty`) into `out`, whose length
/// is the number of elements. Errors when the type is not supported or the
/// lengths disagree; never panics.
pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    if !ty.can_dequantize() {
        let names: Vec<&str> = SUPPORTED.iter().map(|t| t.name()).collect();
        bail!(
            "cannot dequantize ggml type {ty} (id {}); supported types: {}",
            ty.id(),
            names.join(", ")
        );
    }
    let bs = ty.block_size() as usize;
    let ts = ty.type_size() as usize;
    if !out.len().is_multiple_of(bs) {
        bail!(
            "{} elements are not a whole number of {ty} blocks of {bs} elements",
            out.len()
        );
    }
    let n_blocks = out.len() / bs;
    if n_blocks.checked_mul(ts) != Some(data.len()) {
        bail!(
            "{ty} data has {} bytes, but {} elements take {n_blocks} blocks of {ts} bytes",
            data.len(),
            out.len()
        );
    }
    let blocks_per_task = ELEMS_PER_TASK / bs;
    data.par_chunks(blocks_per_task * ts)
        .zip(out.par_chunks_mut(blocks_per_task * bs))
        .for_each(|(d, y)| dequantize_blocks(ty, d, y));
    Ok(())
}

/// Dequantizes `n_elements` elements of type `ty` into a new vector.
pub fn dequantize_to_vec(ty: GgmlType, data: &[u8], n_elements: usize) -> Result<Vec<f32>> {
    let mut out = vec![0f32; n_elements];
    dequantize(ty, data, &mut out)?;
    Ok(out)
}

/// Runs `f` on every block; `data` and `out` hold the same whole number of blocks.
fn blocks<const TS: usize, const BS: usize>(
    data: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; TS], &mut [f32; BS]),
) {
    for (b, y) in data.chunks_exact(TS).zip(out.chunks_exact_mut(BS)) {
        // chunks_exact yields exactly TS / BS items, so these conversions cannot fail.
        if let (Ok(b), Ok(y)) = (b.try_into(), y.try_into()) {
            f(b, y);
        }
    }
}

fn dequantize_blocks(ty: GgmlType, d: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => blocks(d, y, |b: &[u8; 4], y: &mut [f32; 1]| {
            y[0] = f32::from_le_bytes(*b)
        }),
        GgmlType::F16 => blocks(d, y, |b: &[u8; 2], y: &mut [f32; 1]| y[0] = f16(b, 0)),
        GgmlType::BF16 => blocks(d, y, |b: &[u8; 2], y: &mut [f32; 1]| {
            y[0] = f32::from_bits(u32::from(u16::from_le_bytes(*b)) << 16)
        }),
        GgmlType::Q4_0 => blocks(d, y, q4_0),
        GgmlType::Q4_1 => blocks(d, y, q4_1),
        GgmlType::Q5_0 => blocks(d, y, q5_0),
        GgmlType::Q5_1 => blocks(d, y, q5_1),
        GgmlType::Q8_0 => blocks(d, y, q8_0),
        GgmlType::Q2_K => blocks(d, y, q2_k),
        GgmlType::Q3_K => blocks(d, y, q3_k),
        GgmlType::Q4_K => blocks(d, y, q4_k),
        GgmlType::Q5_K => blocks(d, y, q5_k),
        GgmlType::Q6_K => blocks(d, y, q6_k),
        // `dequantize` checked the type first.
        _ => {}
    }
}

/// The f16 at byte `i`, as f32 (exact).
fn f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// The 4-bit quant of element `j` of a 32-element block whose nibbles are
/// packed as in Q4_0/Q4_1/Q5_*: elements 0..16 in the low nibbles, 16..32 in
/// the high ones.
fn nibble(qs: &[u8], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

/// Q4_0: d f16 | qs[16]; x = d × (q − 8).
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    let qs = &b[2..];
    for (j, y) in y.iter_mut().enumerate() {
        *y = d * (i32::from(nibble(qs, j)) - 8) as f32;
    }
}

/// Q4_1: d f16 | m f16 | qs[16]; x = d × q + m.
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    let m = f16(b, 2);
    let qs = &b[4..];
    for (j, y) in y.iter_mut().enumerate() {
        *y = d * f32::from(nibble(qs, j)) + m;
    }
}

/// Q5_0: d f16 | qh u32 (bit j: the 5th bit of element j) | qs[16]; x = d × (q − 16).
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..];
    for (j, y) in y.iter_mut().enumerate() {
        let q = nibble(qs, j) | ((((qh >> j) & 1) as u8) << 4);
        *y = d * (i32::from(q) - 16) as f32;
    }
}

/// Q5_1: d f16 | m f16 | qh u32 | qs[16]; x = d × q + m.
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    let m = f16(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let qs = &b[8..];
    for (j, y) in y.iter_mut().enumerate() {
        let q = nibble(qs, j) | ((((qh >> j) & 1) as u8) << 4);
        *y = d * f32::from(q) + m;
    }
}

/// Q8_0: d f16 | qs[32] i8; x = d × q.
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16(b, 0);
    for (j, y) in y.iter_mut().enumerate() {
        *y = f32::from(b[2 + j] as i8) * d;
    }
}

// The K-quants: super-blocks of 256 elements. Their quants are packed in
// groups of 128 elements: within group `g`, element `g*128 + s*32 + l`
// (s = 0..4, l = 0..32) takes bits `2s..2s+2` of byte `g*32 + l` (2-bit
// quants) or, for 4-bit quants, group 64 / nibble `s` of byte `g*32 + l`.

/// Q2_K: scales[16] (low nibble: scale, high nibble: min, per 16 elements) |
/// qs[64] (2 bits) | d f16 | dmin f16; x = (d × sc) × q − (dmin × m).
fn q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let scales = &b[0..16];
    let qs = &b[16..80];
    let d = f16(b, 80);
    let dmin = f16(b, 82);
    for (i, y) in y.iter_mut().enumerate() {
        let (g, s, l) = (i / 128, (i % 128) / 32, i % 32);
        let q = (qs[g * 32 + l] >> (2 * s)) & 3;
        let sc = scales[i / 16];
        let dl = d * f32::from(sc & 0x0F);
        let ml = dmin * f32::from(sc >> 4);
        *y = dl * f32::from(q) - ml;
    }
}

/// Q3_K: hmask[32] | qs[64] (low 2 bits) | scales[12] (16 six-bit scales) |
/// d f16; x = (d × (sc − 32)) × (q − 4 × (1 − hbit)).
fn q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let hmask = &b[0..32];
    let qs = &b[32..96];
    let sc = &b[96..108];
    let d = f16(b, 108);
    // Scale k (0..16): low 4 bits from byte k % 8 (low nibble for k < 8,
    // high nibble otherwise), high 2 bits from byte 8 + k % 4, bits 2 × (k / 4).
    let mut scales = [0f32; 16];
    for (k, s) in scales.iter_mut().enumerate() {
        let low = (sc[k % 8] >> (4 * (k / 8))) & 0x0F;
        let high = (sc[8 + k % 4] >> (2 * (k / 4))) & 0x03;
        *s = (i32::from(low | (high << 4)) - 32) as f32;
    }
    for (i, y) in y.iter_mut().enumerate() {
        let (g, s, l) = (i / 128, (i % 128) / 32, i % 32);
        let low = i32::from((qs[g * 32 + l] >> (2 * s)) & 3);
        let hbit = (hmask[l] >> (g * 4 + s)) & 1;
        let q = if hbit == 0 { low - 4 } else { low };
        let dl = d * scales[i / 16];
        *y = dl * q as f32;
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of Q4_K / Q5_K.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Q4_K: d f16 | dmin f16 | scales[12] (8 six-bit scales and mins, one per
/// 32 elements) | qs[128]; x = (d × sc) × q − (dmin × m).
fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    let dmin = f16(b, 2);
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (sub, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(sub, scales);
        let d1 = d * f32::from(sc);
        let m1 = dmin * f32::from(m);
        let (g, half) = (sub / 2, sub % 2);
        for (l, y) in y.iter_mut().enumerate() {
            let q = (qs[g * 32 + l] >> (4 * half)) & 0x0F;
            *y = d1 * f32::from(q) - m1;
        }
    }
}

/// Q5_K: d f16 | dmin f16 | scales[12] | qh[32] (bit `sub` of byte l: the
/// 5th bit of element sub × 32 + l) | qs[128]; x = (d × sc) × q − (dmin × m).
fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    let d = f16(b, 0);
    let dmin = f16(b, 2);
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (sub, y) in y.chunks_exact_mut(32).enumerate() {
        let (sc, m) = scale_min_k4(sub, scales);
        let d1 = d * f32::from(sc);
        let m1 = dmin * f32::from(m);
        let (g, half) = (sub / 2, sub % 2);
        for (l, y) in y.iter_mut().enumerate() {
            let low = (qs[g * 32 + l] >> (4 * half)) & 0x0F;
            let high = (qh[l] >> sub) & 1;
            *y = d1 * f32::from(low | (high << 4)) - m1;
        }
    }
}

/// Q6_K: ql[128] (low 4 bits) | qh[64] (high 2 bits) | scales[16] i8 (one
/// per 16 elements) | d f16; x = (d × sc) × (q − 32). Element
/// `g*128 + r` (r = 0..128) takes nibble `r / 64` of `ql[g*64 + r % 64]` and
/// bits `2 × (r / 32)` of `qh[g*32 + r % 32]`.
fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let ql = &b[0..128];
    let qh = &b[128..192];
    let scales = &b[192..208];
    let d = f16(b, 208);
    for (i, y) in y.iter_mut().enumerate() {
        let (g, r) = (i / 128, i % 128);
        let low = (ql[g * 64 + r % 64] >> (4 * (r / 64))) & 0x0F;
        let high = (qh[g * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        let q = i32::from(low | (high << 4)) - 32;
        let dl = d * f32::from(scales[i / 16] as i8);
        *y = dl * q as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        half::f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn unsupported_types_and_bad_lengths_are_errors_naming_them() {
        let e = dequantize_to_vec(GgmlType::IQ2_XXS, &[0; 66], 256).unwrap_err();
        assert!(e.to_string().contains("IQ2_XXS"), "{e}");
        assert!(e.to_string().contains("Q6_K"), "{e}");
        let e = dequantize_to_vec(GgmlType::Q4_0, &[0; 18], 31).unwrap_err();
        assert!(e.to_string().contains("whole number of Q4_0 blocks"), "{e}");
        let e = dequantize_to_vec(GgmlType::Q4_0, &[0; 17], 32).unwrap_err();
        assert!(e.to_string().contains("17 bytes"), "{e}");
        assert!(dequantize_to_vec(GgmlType::Q4_K, &[], 0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn q4_0_and_q8_0_by_hand() {
        // Q4_0: d = 0.5; byte j = (hi << 4) | lo with lo = j, hi = 15 - j.
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| ((15 - j) << 4) | j));
        let y = dequantize_to_vec(GgmlType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(y[16 + j], 0.5 * (7.0 - j as f32));
        }
        let mut b = h(-2.0).to_vec();
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let y = dequantize_to_vec(GgmlType::Q8_0, &b, 32).unwrap();
        for (j, y) in y.iter().enumerate() {
            assert_eq!(*y, -2.0 * (j as f32 - 16.0));
        }
    }

    #[test]
    fn q6_k_by_hand() {
        // All quants 33 (q − 32 = 1), scales k + 1, d = 0.25: x = 0.25 × (i / 16 + 1).
        let mut b = [0u8; 210];
        b[..128].fill(0x11); // low nibbles 1
        b[128..192].fill(0b1010_1010); // high bits 2 → 32
        for k in 0..16 {
            b[192 + k] = k as u8 + 1;
        }
        b[208..].copy_from_slice(&h(0.25));
        let y = dequantize_to_vec(GgmlType::Q6_K, &b, 256).unwrap();
        for (i, y) in y.iter().enumerate() {
            assert_eq!(*y, 0.25 * (i / 16 + 1) as f32, "element {i}");
        }
    }

    #[test]
    fn plain_types() {
        let y = dequantize_to_vec(GgmlType::BF16, &[0x80, 0x3F, 0x00, 0xC0], 2).unwrap();
        assert_eq!(y, [1.0, -2.0]);
        let y = dequantize_to_vec(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xB8], 2).unwrap();
        assert_eq!(y, [1.0, -0.5]);
        let y = dequantize_to_vec(GgmlType::F32, &1.5f32.to_le_bytes(), 1).unwrap();
        assert_eq!(y, [1.5]);
    }
}
