//! Fused CPU ops for the model's elementwise chains — RMSNorm, SwiGLU and
//! rotate-half RoPE — each one pass over rayon's threads forward and one
//! backward, where dfdx runs them as chains of single-threaded ops, each
//! allocating its output. Same formulas and the same order of operations as
//! the dfdx compositions in `model.rs`, which other devices keep using.
//!
//! Attention, too, runs one task per (batch row, KV head), on `gemm`.
use super::{backward_buffers, host, mean_square};
use crate::model::{AttnDims, T1, T2};
use dfdx::prelude::*;
use rayon::prelude::*;

type M<T = NoneTape> = T2<Cpu, T>;
type V<T = NoneTape> = T1<Cpu, T>;

/// Rows per parallel task.
const ROWS: usize = 16;

/// A raw pointer into a buffer that rayon tasks of [`attention`] write, each
/// its own strided part (a head's columns), which no slice type can express.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: the tasks sharing a SendPtr write pairwise disjoint elements, and
// the buffer outlives them (they end before the op returns).
unsafe impl Send for SendPtr {}
// SAFETY: as for Send.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `x / sqrt(mean(x²) + eps) * w` over each row of `x: (rows, d)`.
pub(super) fn rms_norm<T: Tape<f32, Cpu>>(x: M<T>, w: &V, eps: f32) -> M<T> {
    let (n, d) = *x.shape();
    assert_eq!(
        w.shape().0,
        d,
        "rms_norm: weight of {} for rows of {d}",
        w.shape().0
    );
    let x = x.reshape_like(&(n, d));
    let w = w.clone().reshape_like(&(d,));
    let (x, mut tape) = x.split_tape();
    let xh = host(&x);
    let wh = host(&w);
    let mut y = vec![0f32; n * d];
    let mut inv = vec![0f32; n];
    y.par_chunks_mut(ROWS * d)
        .zip(inv.par_chunks_mut(ROWS))
        .enumerate()
        .for_each(|(bi, (yb, ib))| {
            for (i, (yr, r)) in yb.chunks_exact_mut(d).zip(ib.iter_mut()).enumerate() {
                let xr = &xh[(bi * ROWS + i) * d..(bi * ROWS + i + 1) * d];
                *r = (mean_square(xr) + eps).sqrt().recip();
                for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(&wh) {
                    *o = xv * *r * wv;
                }
            }
        });
    let y = x.device().tensor_from_vec(y, (n, d));
    let (x_ghost, w_ghost, y_ghost) = (x.ghost(), w.ghost(), y.ghost());
    drop(x);
    tape.add_backward_op(move |grads| {
        let (gy, [gx, gw]) = backward_buffers(
            grads,
            "rms_norm",
            (&|g| g.get_or_alloc_mut(&y_ghost), n * d),
            [
                (&|g| g.get_or_alloc_mut(&x_ghost), n * d),
                (&|g| g.get_or_alloc_mut(&w_ghost), d),
            ],
        )?;
        // Per block of rows: dx written in place, dw as a partial sum; the
        // partials are added in block order, so the result is deterministic.
        let partials: Vec<Vec<f32>> = gx
            .par_chunks_mut(ROWS * d)
            .enumerate()
            .map(|(bi, gxb)| {
                let mut pw = vec![0f32; d];
                for (i, gxr) in (bi * ROWS..).zip(gxb.chunks_exact_mut(d)) {
                    let (xr, gr) = (&xh[i * d..(i + 1) * d], &gy[i * d..(i + 1) * d]);
                    let r = inv[i];
                    // y_j = x_j·r·w_j with r = (Σx²/d + eps)^-½:
                    // dx_k = r·w_k·gy_k − x_k·r³/d · Σ_j gy_j·w_j·x_j
                    let s: f32 = gr
                        .iter()
                        .zip(&wh)
                        .zip(xr)
                        .map(|((g, w), x)| g * w * x)
                        .sum();
                    let c = s * r * r * r / d as f32;
                    for k in 0..d {
                        gxr[k] += r * wh[k] * gr[k] - xr[k] * c;
                        pw[k] += gr[k] * xr[k] * r;
                    }
                }
                pw
            })
            .collect();
        for p in partials {
            for (a, b) in gw.iter_mut().zip(p) {
                *a += b;
            }
        }
        Ok(())
    });
    y.put_tape(tape)
}

/// `silu(gate) * up = (sigmoid(gate)·gate)·up`, elementwise.
pub(super) fn swiglu<T: Tape<f32, Cpu>>(gate: M<T>, up: M<T>) -> M<T> {
    let shape = *gate.shape();
    assert_eq!(shape, *up.shape(), "swiglu: gate and up shapes differ");
    let (n, f) = shape;
    let gate = gate.reshape_like(&shape);
    let up = up.reshape_like(&shape);
    let (g, tg) = gate.split_tape();
    let (u, tu) = up.split_tape();
    let mut tape = tg.merge(tu);
    let gh = host(&g);
    let uh = host(&u);
    let mut y = vec![0f32; n * f];
    y.par_chunks_mut(ROWS * f).enumerate().for_each(|(bi, yb)| {
        let off = bi * ROWS * f;
        for (i, o) in yb.iter_mut().enumerate() {
            let gv = gh[off + i];
            let s = 1.0 / (1.0 + (-gv).exp());
            *o = s * gv * uh[off + i];
        }
    });
    let y = g.device().tensor_from_vec(y, shape);
    let (g_ghost, u_ghost, y_ghost) = (g.ghost(), u.ghost(), y.ghost());
    drop((g, u));
    tape.add_backward_op(move |grads| {
        let (gy, [gg, gu]) = backward_buffers(
            grads,
            "swiglu",
            (&|g| g.get_or_alloc_mut(&y_ghost), n * f),
            [
                (&|g| g.get_or_alloc_mut(&g_ghost), n * f),
                (&|g| g.get_or_alloc_mut(&u_ghost), n * f),
            ],
        )?;
        let block = ROWS * f;
        gg.par_chunks_mut(block)
            .zip(gu.par_chunks_mut(block))
            .enumerate()
            .for_each(|(bi, (ggb, gub))| {
                let lo = bi * block;
                for (i, (dg, du)) in ggb.iter_mut().zip(gub).enumerate() {
                    let (gv, uv, go) = (gh[lo + i], uh[lo + i], gy[lo + i]);
                    let s = 1.0 / (1.0 + (-gv).exp());
                    *du += go * (s * gv);
                    // d(s·g)/dg = s + g·s·(1 − s)
                    *dg += go * uv * (s + gv * s * (1.0 - s));
                }
            });
        Ok(())
    });
    y.put_tape(tape)
}

/// Rotate-half RoPE over rows of one head each, `x·cos + rotate_half(x)·sin`,
/// with `cos` and `sin` of `x`'s shape `(rows, head_dim)`.
pub(super) fn rope<T: Tape<f32, Cpu>>(x: M<T>, cos: &M, sin: &M) -> M<T> {
    let shape = *x.shape();
    let (n, hd) = shape;
    assert!(
        *cos.shape() == shape && *sin.shape() == shape && hd % 2 == 0,
        "rope: shapes"
    );
    let half = hd / 2;
    let x = x.reshape_like(&shape);
    let (x, mut tape) = x.split_tape();
    let xh = host(&x);
    let ch = host(&cos.clone().reshape_like(&shape));
    let sh = host(&sin.clone().reshape_like(&shape));
    let mut y = vec![0f32; n * hd];
    y.par_chunks_mut(ROWS * 8 * hd)
        .enumerate()
        .for_each(|(bi, yb)| {
            let off = bi * ROWS * 8 * hd;
            for (ri, yr) in yb.chunks_exact_mut(hd).enumerate() {
                let o = off + ri * hd;
                let (xr, cr, sr) = (&xh[o..o + hd], &ch[o..o + hd], &sh[o..o + hd]);
                for j in 0..hd {
                    let rot = if j < half {
                        -xr[j + half]
                    } else {
                        xr[j - half]
                    };
                    yr[j] = xr[j] * cr[j] + rot * sr[j];
                }
            }
        });
    drop(xh);
    let y = x.device().tensor_from_vec(y, shape);
    let (x_ghost, y_ghost) = (x.ghost(), y.ghost());
    drop(x);
    tape.add_backward_op(move |grads| {
        let (gy, [gx]) = backward_buffers(
            grads,
            "rope",
            (&|g| g.get_or_alloc_mut(&y_ghost), n * hd),
            [(&|g| g.get_or_alloc_mut(&x_ghost), n * hd)],
        )?;
        // dx = gy·cos + rotate_halfᵀ(gy·sin), rotate_halfᵀ(z)_k = z_{k+half} (k < half), −z_{k−half} otherwise.
        gx.par_chunks_mut(ROWS * 8 * hd)
            .enumerate()
            .for_each(|(bi, gb)| {
                let off = bi * ROWS * 8 * hd;
                for (ri, gr) in gb.chunks_exact_mut(hd).enumerate() {
                    let o = off + ri * hd;
                    let (g, c, s) = (&gy[o..o + hd], &ch[o..o + hd], &sh[o..o + hd]);
                    for k in 0..hd {
                        let rt = if k < half {
                            g[k + half] * s[k + half]
                        } else {
                            -(g[k - half] * s[k - half])
                        };
                        gr[k] += g[k] * c[k] + rt;
                    }
                }
            });
        Ok(())
    });
    y.put_tape(tape)
}

/// `dst (m×n) [+]= a (m×k) · b (k×n)` on this thread, all operands strided.
///
/// # Safety
/// As for `gemm::gemm`: every pointer valid for its extents, `dst` not overlapping the inputs.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm1(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    acc: bool,
    a: *const f32,
    a_rs: usize,
    a_cs: usize,
    b: *const f32,
    b_rs: usize,
    b_cs: usize,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        acc,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Causal grouped-query attention without a cache, token-major in and out:
/// `q: (batch*seq*heads, head_dim)`, `k: (batch*seq*kv_heads, head_dim)`,
/// `v: (batch*seq, kv_heads*head_dim)` → `(batch*seq, heads*head_dim)`.
/// `mask` is the additive mask `(batch, seq, seq)` (0 or −1e9), added to the
/// scaled scores before the softmax, as the dfdx composition does.
pub(super) fn attention<T: Tape<f32, Cpu>>(
    q: M<T>,
    k: M<T>,
    v: M<T>,
    a: AttnDims,
    mask: &[f32],
) -> M<T> {
    let AttnDims {
        batch: bs,
        seq: t,
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
    } = a;
    let n = bs * t;
    let g = nh / nkv;
    assert!(
        nkv > 0 && nh % nkv == 0,
        "attention: {nh} heads over {nkv} KV heads"
    );
    assert_eq!(*q.shape(), (n * nh, hd), "attention: q shape");
    assert_eq!(*k.shape(), (n * nkv, hd), "attention: k shape");
    assert_eq!(*v.shape(), (n, nkv * hd), "attention: v shape");
    assert_eq!(mask.len(), bs * t * t, "attention: mask shape");
    let scale = 1.0 / (hd as f32).sqrt();
    let (q, k, v) = (
        q.reshape_like(&(n * nh, hd)),
        k.reshape_like(&(n * nkv, hd)),
        v.reshape_like(&(n, nkv * hd)),
    );
    let (q, tq) = q.split_tape();
    let (k, tk) = k.split_tape();
    let (v, tv) = v.split_tape();
    let mut tape = tq.merge(tk).merge(tv);
    let (qh, kh, vh) = (host(&q), host(&k), host(&v));
    // Probabilities (batch, heads, seq, seq), kept for the backward.
    let mut p = vec![0f32; bs * nh * t * t];
    let mut out = vec![0f32; n * nh * hd];
    let (rq, rk, ro) = (nh * hd, nkv * hd, nh * hd);
    let outp = SendPtr(out.as_mut_ptr());
    // One task per (batch row, KV head): its query heads' probabilities and outputs.
    p.par_chunks_mut(g * t * t)
        .enumerate()
        .for_each(|(task, pb)| {
            let (b, j) = (task / nkv, task % nkv);
            for (gi, ph) in pb.chunks_exact_mut(t * t).enumerate() {
                let h = j * g + gi;
                // SAFETY: q/k/v rows of batch b are in bounds with the strides given; ph is t×t;
                // out's columns of head h in batch b's rows are written by this task only.
                unsafe {
                    gemm1(
                        t,
                        t,
                        hd,
                        ph.as_mut_ptr(),
                        t,
                        false,
                        qh.as_ptr().add(b * t * rq + h * hd),
                        rq,
                        1,
                        kh.as_ptr().add(b * t * rk + j * hd),
                        1,
                        rk,
                    );
                }
                for (s, row) in ph.chunks_exact_mut(t).enumerate() {
                    let mrow = &mask[(b * t + s) * t..(b * t + s + 1) * t];
                    let mut m = f32::NEG_INFINITY;
                    for (x, &mv) in row.iter_mut().zip(mrow) {
                        *x = *x * scale + mv;
                        m = m.max(*x);
                    }
                    let mut sum = 0f32;
                    for x in row.iter_mut() {
                        // Masked keys sit ~1e9 below the max; exp is exactly 0 there
                        // (f32 exp underflows below −103.97), without libm's slow underflow path.
                        let z = *x - m;
                        *x = if z < -104.0 { 0.0 } else { z.exp() };
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    for x in row.iter_mut() {
                        *x *= inv;
                    }
                }
                // SAFETY: as above.
                unsafe {
                    gemm1(
                        t,
                        hd,
                        t,
                        outp.get().add(b * t * ro + h * hd),
                        ro,
                        false,
                        ph.as_ptr(),
                        t,
                        1,
                        vh.as_ptr().add(b * t * rk + j * hd),
                        rk,
                        1,
                    );
                }
            }
        });
    let y = q.device().tensor_from_vec(out, (n, nh * hd));
    let (q_ghost, k_ghost, v_ghost, y_ghost) = (q.ghost(), k.ghost(), v.ghost(), y.ghost());
    drop((q, k, v));
    tape.add_backward_op(move |grads| {
        let (gy, [gq, gk, gv]) = backward_buffers(
            grads,
            "attention",
            (&|g| g.get_or_alloc_mut(&y_ghost), n * nh * hd),
            [
                (&|g| g.get_or_alloc_mut(&q_ghost), n * nh * hd),
                (&|g| g.get_or_alloc_mut(&k_ghost), n * nkv * hd),
                (&|g| g.get_or_alloc_mut(&v_ghost), n * nkv * hd),
            ],
        )?;
        let (gq, gk, gv) = (
            SendPtr(gq.as_mut_ptr()),
            SendPtr(gk.as_mut_ptr()),
            SendPtr(gv.as_mut_ptr()),
        );
        (0..bs * nkv).into_par_iter().for_each_init(
            || vec![0f32; t * t],
            |ds, task| {
                let gy = gy.as_ptr();
                let (b, j) = (task / nkv, task % nkv);
                for gi in 0..g {
                    let h = j * g + gi;
                    let ph = &p[(b * nh + h) * t * t..(b * nh + h + 1) * t * t];
                    // SAFETY: as in the forward; this task alone writes head h's
                    // columns of gq and KV head j's columns of gk, gv in batch b's rows.
                    unsafe {
                        let go = gy.add(b * t * ro + h * hd);
                        // dP = dO·Vᵀ
                        gemm1(
                            t,
                            t,
                            hd,
                            ds.as_mut_ptr(),
                            t,
                            false,
                            go,
                            ro,
                            1,
                            vh.as_ptr().add(b * t * rk + j * hd),
                            1,
                            rk,
                        );
                        // dS = P ⊙ (dP − rowsum(dP ⊙ P)), then through the scale.
                        for (row, prow) in ds.chunks_exact_mut(t).zip(ph.chunks_exact(t)) {
                            let dot: f32 = row.iter().zip(prow).map(|(d, p)| d * p).sum();
                            for (d, &pv) in row.iter_mut().zip(prow) {
                                *d = pv * (*d - dot) * scale;
                            }
                        }
                        // dQ += dS·K ; dK += dSᵀ·Q ; dV += Pᵀ·dO
                        gemm1(
                            t,
                            hd,
                            t,
                            gq.get().add(b * t * rq + h * hd),
                            rq,
                            true,
                            ds.as_ptr(),
                            t,
                            1,
                            kh.as_ptr().add(b * t * rk + j * hd),
                            rk,
                            1,
                        );
                        gemm1(
                            t,
                            hd,
                            t,
                            gk.get().add(b * t * rk + j * hd),
                            rk,
                            true,
                            ds.as_ptr(),
                            1,
                            t,
                            qh.as_ptr().add(b * t * rq + h * hd),
                            rq,
                            1,
                        );
                        gemm1(
                            t,
                            hd,
                            t,
                            gv.get().add(b * t * rk + j * hd),
                            rk,
                            true,
                            ph.as_ptr(),
                            1,
                            t,
                            go,
                            ro,
                            1,
                        );
                    }
                }
            },
        );
        Ok(())
    });
    y.put_tape(tape)
}

/// `log_softmax(logits·scale)[i, targets[i]]` for each row `i`.
pub(super) fn target_logprobs<T: Tape<f32, Cpu>>(
    logits: M<T>,
    targets: &[usize],
    scale: f32,
) -> V<T> {
    let (n, vocab) = *logits.shape();
    assert_eq!(
        targets.len(),
        n,
        "target_logprobs: {} targets for {n} rows",
        targets.len()
    );
    assert!(
        targets.iter().all(|&t| t < vocab),
        "target_logprobs: target out of range"
    );
    let logits = logits.reshape_like(&(n, vocab));
    let (l, mut tape) = logits.split_tape();
    let lh = host(&l);
    let targets = targets.to_vec();
    // Per row: log-sum-exp of the scaled logits, and the target's log-prob.
    let scaled = move |v: f32| if scale == 1.0 { v } else { v * scale };
    let rows: Vec<(f32, f32)> = (0..n)
        .into_par_iter()
        .with_min_len(ROWS)
        .map(|i| {
            let row = &lh[i * vocab..(i + 1) * vocab];
            let m = row
                .iter()
                .map(|&v| scaled(v))
                .fold(f32::NEG_INFINITY, f32::max);
            // Summed in f64: 49k–128k f32 terms summed in f32 lose ~1e-4 of the
            // log-prob on real vocabularies.
            let sum: f64 = row.iter().map(|&v| (scaled(v) - m).exp() as f64).sum();
            let lse = m as f64 + sum.ln();
            (lse as f32, (scaled(row[targets[i]]) as f64 - lse) as f32)
        })
        .collect();
    let y = l
        .device()
        .tensor_from_vec(rows.iter().map(|r| r.1).collect(), (n,));
    let (l_ghost, y_ghost) = (l.ghost(), y.ghost());
    drop(l);
    tape.add_backward_op(move |grads| {
        let (gy, [gl]) = backward_buffers(
            grads,
            "target_logprobs",
            (&|g| g.get_or_alloc_mut(&y_ghost), n),
            [(&|g| g.get_or_alloc_mut(&l_ghost), n * vocab)],
        )?;
        // d/dx_j (x_t − lse) = δ_jt − softmax_j, then through the scale.
        gl.par_chunks_mut(vocab)
            .enumerate()
            .with_min_len(ROWS)
            .for_each(|(i, gr)| {
                let (g, lse) = (gy[i], rows[i].0);
                let row = &lh[i * vocab..(i + 1) * vocab];
                for (o, &v) in gr.iter_mut().zip(row) {
                    *o -= g * (scaled(v) - lse).exp() * scale;
                }
                gr[targets[i]] += g * scale;
            });
        Ok(())
    });
    y.put_tape(tape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    fn rand_mat(dev: &Cpu, rng: &mut StdRng, r: usize, c: usize) -> M {
        crate::test_support::rand_mat(dev, rng, r, c, 2.0)
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        crate::test_support::assert_close(a, b, 1e-5, what)
    }

    type Tp = OwnedTape<f32, Cpu>;

    /// The dfdx compositions these ops replace (as in model.rs).
    fn rms_ref(x: M<Tp>, w: &V, eps: f32) -> M<Tp> {
        let shape = *x.shape();
        let var = x.with_empty_tape().square().mean::<(usize,), Axis<1>>();
        let inv = (var + eps).sqrt().recip();
        let xn = x * inv.broadcast_like::<(usize, usize), Axis<1>>(&shape);
        xn * w
            .clone()
            .retaped::<Tp>()
            .broadcast_like::<(usize, usize), Axis<0>>(&shape)
    }

    #[test]
    fn target_logprobs_match_dfdx_log_softmax_select() {
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(4);
        for &(n, vocab, temp) in &[(1usize, 5usize, 1.0f32), (37, 50, 1.0), (20, 33, 0.7)] {
            let l = rand_mat(&dev, &mut rng, n, vocab);
            let targets: Vec<usize> = (0..n).map(|_| rng.gen_range(0..vocab)).collect();
            let w: V =
                dev.tensor_from_vec((0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect(), (n,));
            let run = |fused: bool| {
                let x = l.trace(Gradients::leaky());
                let y = if fused {
                    target_logprobs(x, &targets, 1.0 / temp)
                } else {
                    let x = if temp != 1.0 { x * (1.0 / temp) } else { x };
                    x.log_softmax::<Axis<1>>()
                        .select(dev.tensor_from_vec(targets.clone(), (n,)))
                };
                let yv = y.with_empty_tape().retaped::<NoneTape>().as_vec();
                let g = (y * w.clone()).sum::<Rank0, _>().backward();
                (yv, g.get(&l).as_vec())
            };
            let (a, b) = (run(true), run(false));
            assert_close(&a.0, &b.0, "logprobs");
            assert_close(&a.1, &b.1, "dlogits");
        }
    }

    #[test]
    fn log_probs_stay_exact_on_real_vocabularies() {
        // Llama-3's 128,256 logits: an f32 running sum of the exponentials
        // drifts ~2e-4 from the exact log-sum-exp (4.6e-5 at SmolLM2's 49,152),
        // more than transformers' own f32 error; the f64 sum keeps it ~1e-6.
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(9);
        let vocab = 128_256;
        let n = 4;
        let logits: Vec<f32> = (0..n * vocab)
            .map(|_| {
                // N(0, 3²) by Box–Muller: the spread of a real model's logits
                let (u1, u2): (f64, f64) = (rng.gen::<f64>().max(1e-300), rng.gen());
                ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 3.0) as f32
            })
            .collect();
        let targets: Vec<usize> = (0..n).map(|_| rng.gen_range(0..vocab)).collect();
        let l: M = dev.tensor_from_vec(logits.clone(), (n, vocab));
        let got = target_logprobs(l, &targets, 1.0).as_vec();
        for (i, &t) in targets.iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln();
            let want = row[t] as f64 - lse;
            assert!(
                (got[i] as f64 - want).abs() < 1e-5,
                "row {i}: {} vs {want}",
                got[i]
            );
        }
    }

    #[test]
    fn attention_matches_dfdx_composition_forward_and_backward() {
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(9);
        for &(bs, t, nh, nkv, hd) in &[
            (1usize, 1usize, 2usize, 1usize, 4usize),
            (3, 5, 4, 2, 8),
            (2, 7, 6, 3, 16),
            (2, 4, 2, 2, 8),
        ] {
            let dims = AttnDims {
                batch: bs,
                seq: t,
                heads: nh,
                kv_heads: nkv,
                head_dim: hd,
            };
            let n = bs * t;
            let q = rand_mat(&dev, &mut rng, n * nh, hd);
            let k = rand_mat(&dev, &mut rng, n * nkv, hd);
            let v = rand_mat(&dev, &mut rng, n, nkv * hd);
            let up = rand_mat(&dev, &mut rng, n, nh * hd);
            // Right padding: row b has t - b real tokens (at least one).
            let mut host = vec![];
            for b in 0..bs {
                let real = t - b.min(t - 1);
                for s in 0..t {
                    for j in 0..t {
                        host.push(if j < real && j <= s { 0.0 } else { -1e9 });
                    }
                }
            }
            let g = nh / nkv;
            let mut folded = vec![];
            for one in host.chunks_exact(t * t) {
                for _ in 0..nkv * g {
                    folded.extend_from_slice(one);
                }
            }
            let mask4 = dev.tensor_from_vec(folded, (bs, nkv, g * t, t));
            let run = |fused: bool| {
                let qt = q.trace(Gradients::leaky());
                let (qn, tape) = qt.split_tape();
                let kt = k.clone().put_tape(tape);
                let (kn, tape) = kt.split_tape();
                let vt = v.clone().put_tape(tape);
                let (qt, kt) = (qn.put_tape(Tp::default()), kn.put_tape(Tp::default()));
                let y = if fused {
                    attention(qt, kt, vt, dims, &host)
                } else {
                    crate::model::dfdx_attention(qt, kt, vt, dims, &mask4)
                };
                let yv = y.with_empty_tape().retaped::<NoneTape>().as_vec();
                let g = (y * up.clone()).sum::<Rank0, _>().backward();
                (
                    yv,
                    g.get(&q).as_vec(),
                    g.get(&k).as_vec(),
                    g.get(&v).as_vec(),
                )
            };
            let (a, b) = (run(true), run(false));
            assert_close(&a.0, &b.0, "attn y");
            assert_close(&a.1, &b.1, "attn dq");
            assert_close(&a.2, &b.2, "attn dk");
            assert_close(&a.3, &b.3, "attn dv");
        }
    }

    #[test]
    fn fused_ops_match_dfdx_compositions_forward_and_backward() {
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(3);
        for &(n, d) in &[(1usize, 8usize), (17, 64), (40, 24)] {
            let x = rand_mat(&dev, &mut rng, n, d);
            let x2 = rand_mat(&dev, &mut rng, n, d);
            let up = rand_mat(&dev, &mut rng, n, d);
            let w: V =
                dev.tensor_from_vec((0..d).map(|_| rng.gen_range(0.5f32..1.5)).collect(), (d,));
            let ang = rand_mat(&dev, &mut rng, n, d);
            let (cos, sin) = (ang.clone().cos(), ang.sin());
            let rot_t = {
                let h = d / 2;
                let mut r = vec![0f32; d * d];
                for j in 0..h {
                    // rotᵀ: row = output j of rotate_half, column = input.
                    r[j * d + j + h] = -1.0;
                    r[(j + h) * d + j] = 1.0;
                }
                dev.tensor_from_vec(r, (d, d))
            };
            let loss = |y: M<Tp>| (y * up.clone()).sum::<Rank0, _>();

            // RMSNorm
            let g_ref = loss(rms_ref(x.trace(Gradients::leaky()), &w, 1e-5)).backward();
            let y_ref = rms_ref(x.clone().retaped::<Tp>(), &w, 1e-5)
                .retaped::<NoneTape>()
                .as_vec();
            let g = loss(rms_norm(x.trace(Gradients::leaky()), &w, 1e-5)).backward();
            assert_close(&rms_norm(x.clone(), &w, 1e-5).as_vec(), &y_ref, "rms y");
            assert_close(&g.get(&x).as_vec(), &g_ref.get(&x).as_vec(), "rms dx");
            assert_close(&g.get(&w).as_vec(), &g_ref.get(&w).as_vec(), "rms dw");

            // SwiGLU on two traced inputs
            let sw_ref = |a: M<Tp>, b: M<Tp>| (a.with_empty_tape().sigmoid() * a) * b;
            let run = |f: &dyn Fn(M<Tp>, M<Tp>) -> M<Tp>| {
                let a = x.trace(Gradients::leaky());
                let (a, t) = a.split_tape();
                let b = x2.clone().put_tape(t);
                let a = a.put_tape(Tp::default());
                let y = f(a, b);
                let yv = y.with_empty_tape().retaped::<NoneTape>().as_vec();
                (yv, loss(y).backward())
            };
            let (y_ref, g_ref) = run(&|a, b| sw_ref(a, b));
            let (y, g) = run(&|a, b| swiglu(a, b));
            assert_close(&y, &y_ref, "swiglu y");
            assert_close(&g.get(&x2).as_vec(), &g_ref.get(&x2).as_vec(), "swiglu dup");
            assert_close(&g.get(&x).as_vec(), &g_ref.get(&x).as_vec(), "swiglu dgate");

            // RoPE
            if d % 2 == 0 {
                let rope_ref = |a: M<Tp>| {
                    let rotated = a.with_empty_tape().matmul(
                        rot_t
                            .clone()
                            .retaped::<Tp>()
                            .permute::<(usize, usize), Axes2<1, 0>>(),
                    ) * sin.clone();
                    a * cos.clone() + rotated
                };
                let g_ref = loss(rope_ref(x.trace(Gradients::leaky()))).backward();
                let y_ref = rope_ref(x.clone().retaped::<Tp>())
                    .retaped::<NoneTape>()
                    .as_vec();
                let g = loss(rope(x.trace(Gradients::leaky()), &cos, &sin)).backward();
                assert_close(&rope(x.clone(), &cos, &sin).as_vec(), &y_ref, "rope y");
                assert_close(&g.get(&x).as_vec(), &g_ref.get(&x).as_vec(), "rope dx");
            }
        }
    }
}
