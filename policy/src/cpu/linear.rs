//! The CPU `Linear` op, `y = x·Wᵀ` with the weight in HF layout `(out, in)`,
//! forward and backward on the `gemm` crate's AVX-512 kernels (dfdx 0.13's
//! own CPU matmul pins `gemm` 0.15, whose AVX-512 kernels need nightly Rust).
//!
//! The inputs are copied out once (a memcpy, small next to the product).
use super::{backward_buffers, host};
use crate::model::T2;
use dfdx::prelude::*;
use rayon::prelude::*;

type M<T = NoneTape> = T2<Cpu, T>;

/// A row-major or strided matrix operand: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Operand {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

/// `dst (m×n, row stride dst_rs) = [dst +] a (m×k) · b (k×n)`, on the
/// current rayon pool when it has more than one thread.
///
/// # Safety
/// Every pointer must be valid for the extents its strides and `m, n, k`
/// describe, and `dst` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    accumulate: bool,
    a: Operand,
    b: Operand,
) {
    if m == 0 || n == 0 {
        return;
    }
    // gemm computes dst = alpha·dst + beta·(a·b); alpha is ignored unless read_dst.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        1.0,
        1.0,
        false,
        false,
        false,
        parallelism(),
    );
}

/// `y = x·Wᵀ` on host buffers: `x (rows×inp)` and `w (out×inp)` row-major,
/// `y (rows×out)` row-major, overwritten.
pub(crate) fn xwt(x: &[f32], rows: usize, inp: usize, w: &[f32], out: usize, y: &mut [f32]) {
    assert!(x.len() >= rows * inp && w.len() >= out * inp && y.len() >= rows * out);
    let xo = Operand {
        ptr: x.as_ptr(),
        rs: inp as isize,
        cs: 1,
    };
    let wo = Operand {
        ptr: w.as_ptr(),
        rs: 1,
        cs: inp as isize,
    };
    if rows > 32 {
        // SAFETY: extents asserted above; y is a distinct &mut buffer.
        unsafe { gemm_raw(rows, out, inp, y.as_mut_ptr(), out as isize, false, xo, wo) };
        return;
    }
    // Few rows (decoding): write yᵀ (out×rows, row-major), which gemm computes
    // with the weight read in its stored layout, then transpose the small result.
    let mut yt = vec![0f32; rows * out];
    // Each thread takes a block of output columns (weight rows): decoding is
    // bound by reading the weights, and gemm keeps products this small on one thread.
    let threads = rayon::current_num_threads();
    let cols = if threads > 1 && out * inp >= 1 << 16 {
        out.div_ceil(threads).next_multiple_of(16)
    } else {
        out
    };
    yt.par_chunks_mut(cols * rows)
        .enumerate()
        .for_each(|(i, block)| {
            let c0 = i * cols;
            let nc = block.len() / rows;
            // SAFETY: as above; block is columns c0..c0+nc of yt, (rows×nc) with
            // row stride 1 and column stride rows; the weight rows c0.. are in bounds.
            unsafe {
                gemm::gemm(
                    rows,
                    nc,
                    inp,
                    block.as_mut_ptr(),
                    rows as isize,
                    1,
                    false,
                    x.as_ptr(),
                    xo.cs,
                    xo.rs,
                    w.as_ptr().add(c0 * inp),
                    wo.cs,
                    wo.rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            };
        });
    // Sequential writes, strided reads (yt is small enough to stay in cache).
    for (r, yr) in y[..rows * out].chunks_exact_mut(out).enumerate() {
        for (c, o) in yr.iter_mut().enumerate() {
            *o = yt[c * rows + r];
        }
    }
}

fn parallelism() -> gemm::Parallelism {
    if rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    }
}

/// `x·Wᵀ` for `x: (rows, in)` and `w: (out, in)`, with a backward on `x`'s tape.
pub(super) fn linear<T: Tape<f32, Cpu>>(x: M<T>, w: &M) -> M<T> {
    let (rows, inp) = *x.shape();
    let (out, w_in) = *w.shape();
    assert_eq!(
        inp, w_in,
        "linear: input width {inp} does not match weight {out}x{w_in}"
    );
    // Free for contiguous tensors; a contiguous copy (with its own backward) otherwise.
    let x = x.reshape_like(&(rows, inp));
    let w = w.clone().reshape_like(&(out, inp));
    let (x, mut tape) = x.split_tape();
    let xh = host(&x);
    let wh = host(&w);
    let mut y = vec![0f32; rows * out];
    // SAFETY: xh is rows×in and wh out×in row-major; y is rows×out and fresh.
    unsafe {
        gemm_raw(
            rows,
            out,
            inp,
            y.as_mut_ptr(),
            out as isize,
            false,
            Operand {
                ptr: xh.as_ptr(),
                rs: inp as isize,
                cs: 1,
            },
            Operand {
                ptr: wh.as_ptr(),
                rs: 1,
                cs: inp as isize,
            },
        );
    }
    drop(wh);
    let y = x.device().tensor_from_vec(y, (rows, out));
    let (x_ghost, w_ghost, y_ghost) = (x.ghost(), w.ghost(), y.ghost());
    drop(x);
    tape.add_backward_op(move |grads| {
        let (gy, [gx, gw]) = backward_buffers(
            grads,
            "linear",
            (&|g| g.get_or_alloc_mut(&y_ghost), rows * out),
            [
                (&|g| g.get_or_alloc_mut(&x_ghost), rows * inp),
                (&|g| g.get_or_alloc_mut(&w_ghost), out * inp),
            ],
        )?;
        let wh = host(&w);
        let (gy, gx, gw) = (gy.as_ptr(), gx.as_mut_ptr(), gw.as_mut_ptr());
        // SAFETY: the buffers have the extents given (checked by
        // backward_buffers, and xh, wh are copies of x, w); gx and gw are
        // distinct from each other and from gy, xh, wh.
        unsafe {
            // dx (rows×in) += dy (rows×out) · W (out×in)
            gemm_raw(
                rows,
                inp,
                out,
                gx,
                inp as isize,
                true,
                Operand {
                    ptr: gy,
                    rs: out as isize,
                    cs: 1,
                },
                Operand {
                    ptr: wh.as_ptr(),
                    rs: inp as isize,
                    cs: 1,
                },
            );
            // dW (out×in) += dyᵀ (out×rows) · x (rows×in)
            gemm_raw(
                out,
                inp,
                rows,
                gw,
                inp as isize,
                true,
                Operand {
                    ptr: gy,
                    rs: 1,
                    cs: out as isize,
                },
                Operand {
                    ptr: xh.as_ptr(),
                    rs: inp as isize,
                    cs: 1,
                },
            );
        }
        Ok(())
    });
    y.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn rand_mat(dev: &Cpu, rng: &mut StdRng, r: usize, c: usize) -> M {
        crate::test_support::rand_mat(dev, rng, r, c, 1.0)
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        crate::test_support::assert_close(a, b, 1e-4, what)
    }

    #[test]
    fn forward_and_backward_match_dfdx_matmul() {
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(7);
        for &(rows, inp, out) in &[
            (1, 8, 5),
            (7, 33, 17),
            (32, 64, 48),
            (33, 40, 70),
            (130, 96, 200),
        ] {
            let x = rand_mat(&dev, &mut rng, rows, inp);
            let w = rand_mat(&dev, &mut rng, out, inp);
            // A random upstream gradient, through a weighted sum.
            let up = rand_mat(&dev, &mut rng, rows, out);

            let mut g_ref = Gradients::leaky();
            let y_ref = x.trace(g_ref).matmul(
                w.clone()
                    .retaped::<OwnedTape<f32, Cpu>>()
                    .permute::<(usize, usize), Axes2<1, 0>>(),
            );
            let y_ref_v = y_ref.as_vec();
            g_ref = (y_ref * up.clone()).sum::<Rank0, _>().backward();

            let mut g = Gradients::leaky();
            let y = linear(x.trace(g), &w);
            let y_v = y.as_vec();
            g = (y * up.clone()).sum::<Rank0, _>().backward();

            assert_close(&y_v, &y_ref_v, "y");
            assert_close(&g.get(&x).as_vec(), &g_ref.get(&x).as_vec(), "dx");
            assert_close(&g.get(&w).as_vec(), &g_ref.get(&w).as_vec(), "dw");

            // Without a tape: same forward.
            assert_close(&linear(x.clone(), &w).as_vec(), &y_ref_v, "y (no tape)");
        }
    }

    #[test]
    fn host_xwt_matches_naive_product_on_one_and_several_threads() {
        let mut rng = StdRng::seed_from_u64(5);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for &(rows, inp, out) in &[
                (1, 256, 300),
                (16, 512, 1376),
                (32, 128, 520),
                (33, 64, 70),
                (5, 7, 3),
            ] {
                let x: Vec<f32> = (0..rows * inp)
                    .map(|_| rng.gen_range(-1.0f32..1.0))
                    .collect();
                let w: Vec<f32> = (0..out * inp)
                    .map(|_| rng.gen_range(-1.0f32..1.0))
                    .collect();
                let mut y = vec![f32::NAN; rows * out];
                pool.install(|| xwt(&x, rows, inp, &w, out, &mut y));
                let naive: Vec<f32> = (0..rows * out)
                    .map(|i| {
                        (0..inp)
                            .map(|j| x[(i / out) * inp + j] * w[(i % out) * inp + j])
                            .sum()
                    })
                    .collect();
                assert_close(&y, &naive, "xwt");
            }
        }
    }

    #[test]
    fn gradients_accumulate_over_uses_and_non_contiguous_inputs() {
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(11);
        let (rows, inp, out) = (40, 24, 36);
        let x = rand_mat(&dev, &mut rng, inp, rows); // used transposed: not contiguous
        let w = rand_mat(&dev, &mut rng, out, inp);
        let loss_of = |y1: M<OwnedTape<f32, Cpu>>, y2: M<OwnedTape<f32, Cpu>>| {
            (y1.square() + y2 * 0.5).sum::<Rank0, _>()
        };

        let g_ref = {
            let xt = x
                .trace(Gradients::leaky())
                .permute::<(usize, usize), Axes2<1, 0>>();
            let wt = || {
                w.clone()
                    .retaped::<OwnedTape<f32, Cpu>>()
                    .permute::<(usize, usize), Axes2<1, 0>>()
            };
            let y1 = xt.with_empty_tape().matmul(wt());
            let y2 = xt.matmul(wt());
            loss_of(y1, y2).backward()
        };
        let g = {
            let xt = x
                .trace(Gradients::leaky())
                .permute::<(usize, usize), Axes2<1, 0>>();
            let y1 = linear(xt.with_empty_tape(), &w);
            let y2 = linear(xt, &w);
            loss_of(y1, y2).backward()
        };
        assert_close(&g.get(&x).as_vec(), &g_ref.get(&x).as_vec(), "dx");
        assert_close(&g.get(&w).as_vec(), &g_ref.get(&w).as_vec(), "dw");
    }
}
