//! The CPU's own kernels, which [`DeviceKernels`] for [`Cpu`] runs instead of
//! dfdx's compositions:
//!
//! - `linear`: `y = x·Wᵀ` on the `gemm` crate's AVX-512 kernels;
//! - `ops`: RMSNorm, SwiGLU, RoPE, attention and the log-softmax at the
//!   targets, each one fused multi-threaded pass forward and one backward;
//! - `decode`: batched KV-cache decoding on host buffers, outside dfdx.
//!
//! The ops record their backward closures on dfdx's tape as dfdx's own ops
//! do. dfdx 0.13 lends no borrow of a tensor's buffer, so inputs are copied
//! out ([`host`]) and gradients are accumulated in place through
//! [`backward_buffers`].
pub(crate) mod decode;
mod linear;
mod ops;

pub(crate) use linear::xwt;

use crate::model::{AttnDims, DeviceKernels, T1, T2, T4};
use dfdx::prelude::*;
use dfdx::tensor::{CpuError, Storage};

/// A CPU gradient map.
type Grads = Gradients<f32, Cpu>;

/// A gradient buffer as dfdx stores it on the CPU.
type GradVec = <Cpu as Storage<f32>>::Vec;

/// One tensor's gradient as a backward op reaches it,
/// `&|g| g.get_or_alloc_mut(&ghost)`, with the length the op expects.
type GradOf<'a> = (
    &'a dyn Fn(&mut Grads) -> Result<&mut GradVec, CpuError>,
    usize,
);

impl DeviceKernels for Cpu {
    const HOST_DECODING: bool = true;
    fn linear<T: Tape<f32, Self> + Merge<NoneTape>>(x: T2<Self, T>, w: &T2<Self>) -> T2<Self, T> {
        linear::linear(x, w)
    }
    fn rms_norm<T: Tape<f32, Self> + Merge<NoneTape>>(
        x: T2<Self, T>,
        w: &T1<Self>,
        eps: f64,
    ) -> T2<Self, T> {
        ops::rms_norm(x, w, eps as f32)
    }
    fn swiglu<T: Tape<f32, Self> + Merge<NoneTape>>(
        gate: T2<Self, T>,
        up: T2<Self, T>,
    ) -> T2<Self, T> {
        ops::swiglu(gate, up)
    }
    fn rope<T: Tape<f32, Self> + Merge<NoneTape>>(
        x: T2<Self, T>,
        cos: &T2<Self>,
        sin: &T2<Self>,
        _rot_t: &T2<Self>,
    ) -> T2<Self, T> {
        ops::rope(x, cos, sin)
    }
    fn attention<T: Tape<f32, Self> + Merge<NoneTape>>(
        q: T2<Self, T>,
        k: T2<Self, T>,
        v: T2<Self, T>,
        dims: AttnDims,
        _mask: &T4<Self>,
        host_mask: &[f32],
    ) -> T2<Self, T> {
        ops::attention(q, k, v, dims, host_mask)
    }
    fn target_logprobs<T: Tape<f32, Self> + Merge<NoneTape>>(
        logits: T2<Self, T>,
        targets: &[usize],
        scale: f32,
    ) -> T1<Self, T> {
        ops::target_logprobs(logits, targets, scale)
    }
}

/// The physical data of a contiguous tensor, copied out.
pub(crate) fn host<S: Shape, D: Device<f32>, T>(t: &Tensor<S, f32, D, T>) -> Vec<f32> {
    let mut v = vec![0f32; t.shape().num_elements()];
    t.copy_into(&mut v);
    v
}

/// `mean(x²)` of an RMSNorm row, summed in f64: a long f32 sum drifts
/// over real 30-layer models.
fn mean_square(x: &[f32]) -> f32 {
    (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len() as f64) as f32
}

/// The buffers one backward op works on, borrowed together: the gradient of
/// its output (read) and those of its `N` inputs (accumulated into).
///
/// dfdx hands out one `&mut` gradient at a time, so this is where the op's
/// buffers are split off the map, once, for every op. Panics if a buffer's
/// length is not the one the op expects, or if two inputs share a buffer
/// (the same tensor passed twice).
fn backward_buffers<'g, const N: usize>(
    grads: &'g mut Grads,
    op: &str,
    out: GradOf<'_>,
    inputs: [GradOf<'_>; N],
) -> Result<(&'g [f32], [&'g mut [f32]; N]), CpuError> {
    // Allocate every buffer first: the lookups below then leave the map as it
    // is, so no buffer moves or is freed while the pointers are in use.
    (out.0)(grads)?;
    for (get, _) in &inputs {
        get(grads)?;
    }
    let mut raw = |(get, len): GradOf<'_>| -> Result<(*mut f32, usize), CpuError> {
        let buf = get(grads)?;
        assert_eq!(buf.len(), len, "{op}: gradient buffer length");
        Ok((buf.as_mut_ptr(), len))
    };
    let (gy, gy_len) = raw(out)?;
    let mut ins = [(std::ptr::null_mut(), 0); N];
    for (slot, g) in ins.iter_mut().zip(inputs) {
        *slot = raw(g)?;
    }
    for (i, &(p, len)) in ins.iter().enumerate() {
        let apart = |&(q, l): &(*mut f32, usize)| len == 0 || l == 0 || p != q;
        assert!(
            apart(&(gy, gy_len)) && ins[..i].iter().all(apart),
            "{op}: inputs share a gradient buffer"
        );
    }
    // SAFETY: each pointer is the start of a live gradient buffer of the
    // length asserted above, owned by `grads`, which stays mutably borrowed
    // for 'g, so nothing else reads, moves or frees the buffers meanwhile.
    // The buffers are distinct heap allocations (pairwise different
    // pointers, asserted above, for non-empty ones), so no two of the slices
    // overlap and each `&mut` is the only access to its buffer.
    unsafe {
        let gy = std::slice::from_raw_parts(gy as *const f32, gy_len);
        Ok((
            gy,
            ins.map(|(p, len)| std::slice::from_raw_parts_mut(p, len)),
        ))
    }
}
