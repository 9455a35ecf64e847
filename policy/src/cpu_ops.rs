//! Fused CPU ops for the model's elementwise chains — RMSNorm, SwiGLU and
//! rotate-half RoPE — each one pass over rayon's threads forward and one
//! backward, where dfdx runs them as chains of single-threaded ops, each
//! allocating its output. Same formulas and the same order of operations as
//! the dfdx compositions in `model.rs`, which other devices keep using.
//!
//! Like [`crate::cpu_linear`], inputs are copied out of the dfdx tensors
//! (dfdx 0.13 lends no borrow of a buffer) and gradients are accumulated in
//! place through `Gradients::get_or_alloc_mut`.
use dfdx::prelude::*;
use rayon::prelude::*;

type M<T = NoneTape> = Tensor<(usize, usize), f32, Cpu, T>;
type V<T = NoneTape> = Tensor<(usize,), f32, Cpu, T>;

/// Rows per parallel task.
const ROWS: usize = 16;

fn host2<T>(t: &M<T>) -> Vec<f32> {
    let (r, c) = *t.shape();
    let mut v = vec![0f32; r * c];
    t.copy_into(&mut v);
    v
}

fn host1(t: &V) -> Vec<f32> {
    let mut v = vec![0f32; t.shape().0];
    t.copy_into(&mut v);
    v
}

/// A raw pointer that may cross into rayon tasks writing disjoint parts.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// `x / sqrt(mean(x²) + eps) * w` over each row of `x: (rows, d)`.
pub fn rms_norm<T: Tape<f32, Cpu>>(x: M<T>, w: &V, eps: f32) -> M<T> {
    let (n, d) = *x.shape();
    assert_eq!(w.shape().0, d, "rms_norm: weight of {} for rows of {d}", w.shape().0);
    let x = x.reshape_like(&(n, d));
    let w = w.clone().reshape_like(&(d,));
    let (x, mut tape) = x.split_tape();
    let xh = host2(&x);
    let wh = host1(&w);
    let mut y = vec![0f32; n * d];
    let mut inv = vec![0f32; n];
    y.par_chunks_mut(ROWS * d).zip(inv.par_chunks_mut(ROWS)).enumerate().for_each(|(bi, (yb, ib))| {
        for (i, (yr, r)) in yb.chunks_exact_mut(d).zip(ib.iter_mut()).enumerate() {
            let xr = &xh[(bi * ROWS + i) * d..(bi * ROWS + i + 1) * d];
            let var = xr.iter().map(|v| v * v).sum::<f32>() / d as f32;
            *r = (var + eps).sqrt().recip();
            for ((o, &xv), &wv) in yr.iter_mut().zip(xr).zip(&wh) {
                *o = xv * *r * wv;
            }
        }
    });
    let y = x.device().tensor_from_vec(y, (n, d));
    let (x_ghost, w_ghost, y_ghost) = (x.ghost(), w.ghost(), y.ghost());
    drop(x);
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&y_ghost)?;
        grads.try_alloc_for(&x_ghost)?;
        grads.try_alloc_for(&w_ghost)?;
        // Distinct buffers that stay put once all three exist (see cpu_linear).
        let gy = grads.get_or_alloc_mut(&y_ghost)?;
        assert_eq!(gy.len(), n * d);
        let gy = gy.as_ptr() as usize;
        let gx = grads.get_or_alloc_mut(&x_ghost)?;
        assert_eq!(gx.len(), n * d);
        let gx = SendPtr(gx.as_mut_ptr());
        let gw = grads.get_or_alloc_mut(&w_ghost)?;
        assert_eq!(gw.len(), d);
        // SAFETY: gw is d long and distinct from the buffers read below.
        let gw = unsafe { std::slice::from_raw_parts_mut(gw.as_mut_ptr(), d) };
        // SAFETY: gy is n×d and only read.
        let gy = unsafe { std::slice::from_raw_parts(gy as *const f32, n * d) };
        // Per block of rows: dx written in place, dw as a partial sum; the
        // partials are added in block order, so the result is deterministic.
        let partials: Vec<Vec<f32>> = (0..n.div_ceil(ROWS))
            .into_par_iter()
            .map(|bi| {
                let gx = gx;
                let mut pw = vec![0f32; d];
                for i in bi * ROWS..((bi + 1) * ROWS).min(n) {
                    let (xr, gr) = (&xh[i * d..(i + 1) * d], &gy[i * d..(i + 1) * d]);
                    let r = inv[i];
                    // y_j = x_j·r·w_j with r = (Σx²/d + eps)^-½:
                    // dx_k = r·w_k·gy_k − x_k·r³/d · Σ_j gy_j·w_j·x_j
                    let s: f32 = gr.iter().zip(&wh).zip(xr).map(|((g, w), x)| g * w * x).sum();
                    let c = s * r * r * r / d as f32;
                    // SAFETY: row i of gx belongs to this task alone.
                    let gxr = unsafe { std::slice::from_raw_parts_mut(gx.0.add(i * d), d) };
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
pub fn swiglu<T: Tape<f32, Cpu>>(gate: M<T>, up: M<T>) -> M<T> {
    let shape = *gate.shape();
    assert_eq!(shape, *up.shape(), "swiglu: gate and up shapes differ");
    let (n, f) = shape;
    let gate = gate.reshape_like(&shape);
    let up = up.reshape_like(&shape);
    let (g, tg) = gate.split_tape();
    let (u, tu) = up.split_tape();
    let mut tape = tg.merge(tu);
    let gh = host2(&g);
    let uh = host2(&u);
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
        grads.try_alloc_for(&y_ghost)?;
        grads.try_alloc_for(&g_ghost)?;
        grads.try_alloc_for(&u_ghost)?;
        let gy = grads.get_or_alloc_mut(&y_ghost)?;
        assert_eq!(gy.len(), n * f);
        let gy = gy.as_ptr() as usize;
        let gg = grads.get_or_alloc_mut(&g_ghost)?;
        assert_eq!(gg.len(), n * f);
        let gg = SendPtr(gg.as_mut_ptr());
        let gu = grads.get_or_alloc_mut(&u_ghost)?;
        assert_eq!(gu.len(), n * f);
        let gu = SendPtr(gu.as_mut_ptr());
        assert!(gg.0 != gu.0, "swiglu: gate and up share a gradient buffer");
        (0..n.div_ceil(ROWS)).into_par_iter().for_each(|bi| {
            let (gg, gu) = (gg, gu);
            let lo = bi * ROWS * f;
            let hi = ((bi + 1) * ROWS).min(n) * f;
            // SAFETY: elements lo..hi of gg and gu belong to this task; gy is n×f, read only.
            let (ggb, gub, gyb) = unsafe {
                (
                    std::slice::from_raw_parts_mut(gg.0.add(lo), hi - lo),
                    std::slice::from_raw_parts_mut(gu.0.add(lo), hi - lo),
                    std::slice::from_raw_parts((gy as *const f32).add(lo), hi - lo),
                )
            };
            for i in 0..hi - lo {
                let (gv, uv, go) = (gh[lo + i], uh[lo + i], gyb[i]);
                let s = 1.0 / (1.0 + (-gv).exp());
                gub[i] += go * (s * gv);
                // d(s·g)/dg = s + g·s·(1 − s)
                ggb[i] += go * uv * (s + gv * s * (1.0 - s));
            }
        });
        Ok(())
    });
    y.put_tape(tape)
}

/// Rotate-half RoPE over rows of one head each, `x·cos + rotate_half(x)·sin`,
/// with `cos` and `sin` of `x`'s shape `(rows, head_dim)`.
pub fn rope<T: Tape<f32, Cpu>>(x: M<T>, cos: &M, sin: &M) -> M<T> {
    let shape = *x.shape();
    let (n, hd) = shape;
    assert!(*cos.shape() == shape && *sin.shape() == shape && hd % 2 == 0, "rope: shapes");
    let half = hd / 2;
    let x = x.reshape_like(&shape);
    let (x, mut tape) = x.split_tape();
    let xh = host2(&x);
    let ch = host2(&cos.clone().reshape_like(&shape));
    let sh = host2(&sin.clone().reshape_like(&shape));
    let mut y = vec![0f32; n * hd];
    y.par_chunks_mut(ROWS * 8 * hd).enumerate().for_each(|(bi, yb)| {
        let off = bi * ROWS * 8 * hd;
        for (ri, yr) in yb.chunks_exact_mut(hd).enumerate() {
            let o = off + ri * hd;
            let (xr, cr, sr) = (&xh[o..o + hd], &ch[o..o + hd], &sh[o..o + hd]);
            for j in 0..hd {
                let rot = if j < half { -xr[j + half] } else { xr[j - half] };
                yr[j] = xr[j] * cr[j] + rot * sr[j];
            }
        }
    });
    drop(xh);
    let y = x.device().tensor_from_vec(y, shape);
    let (x_ghost, y_ghost) = (x.ghost(), y.ghost());
    drop(x);
    tape.add_backward_op(move |grads| {
        grads.try_alloc_for(&y_ghost)?;
        grads.try_alloc_for(&x_ghost)?;
        let gy = grads.get_or_alloc_mut(&y_ghost)?;
        assert_eq!(gy.len(), n * hd);
        let gy = gy.as_ptr() as usize;
        let gx = grads.get_or_alloc_mut(&x_ghost)?;
        assert_eq!(gx.len(), n * hd);
        // SAFETY: gx is n×hd and distinct from gy (x is not this op's output).
        let gx = unsafe { std::slice::from_raw_parts_mut(gx.as_mut_ptr(), n * hd) };
        // SAFETY: gy is n×hd, read only.
        let gy = unsafe { std::slice::from_raw_parts(gy as *const f32, n * hd) };
        // dx = gy·cos + rotate_halfᵀ(gy·sin), rotate_halfᵀ(z)_k = z_{k+half} (k < half), −z_{k−half} otherwise.
        gx.par_chunks_mut(ROWS * 8 * hd).enumerate().for_each(|(bi, gb)| {
            let off = bi * ROWS * 8 * hd;
            for (ri, gr) in gb.chunks_exact_mut(hd).enumerate() {
                let o = off + ri * hd;
                let (g, c, s) = (&gy[o..o + hd], &ch[o..o + hd], &sh[o..o + hd]);
                for k in 0..hd {
                    let rt = if k < half { g[k + half] * s[k + half] } else { -(g[k - half] * s[k - half]) };
                    gr[k] += g[k] * c[k] + rt;
                }
            }
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
        dev.tensor_from_vec((0..r * c).map(|_| rng.gen_range(-2.0f32..2.0)).collect(), (r, c))
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let tol = 1e-5 * (1.0 + x.abs().max(y.abs()));
            assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
        }
    }

    type Tp = OwnedTape<f32, Cpu>;

    /// The dfdx compositions these ops replace (as in model.rs).
    fn rms_ref(x: M<Tp>, w: &V, eps: f32) -> M<Tp> {
        let shape = *x.shape();
        let var = x.with_empty_tape().square().mean::<(usize,), Axis<1>>();
        let inv = (var + eps).sqrt().recip();
        let xn = x * inv.broadcast_like::<(usize, usize), Axis<1>>(&shape);
        xn * w.clone().retaped::<Tp>().broadcast_like::<(usize, usize), Axis<0>>(&shape)
    }

    #[test]
    fn fused_ops_match_dfdx_compositions_forward_and_backward() {
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(3);
        for &(n, d) in &[(1usize, 8usize), (17, 64), (40, 24)] {
            let x = rand_mat(&dev, &mut rng, n, d);
            let x2 = rand_mat(&dev, &mut rng, n, d);
            let up = rand_mat(&dev, &mut rng, n, d);
            let w: V = dev.tensor_from_vec((0..d).map(|_| rng.gen_range(0.5f32..1.5)).collect(), (d,));
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
            let y_ref = rms_ref(x.clone().retaped::<Tp>(), &w, 1e-5).retaped::<NoneTape>().as_vec();
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
                    let rotated = a.with_empty_tape().matmul(rot_t.clone().retaped::<Tp>().permute::<(usize, usize), Axes2<1, 0>>()) * sin.clone();
                    a * cos.clone() + rotated
                };
                let g_ref = loss(rope_ref(x.trace(Gradients::leaky()))).backward();
                let y_ref = rope_ref(x.clone().retaped::<Tp>()).retaped::<NoneTape>().as_vec();
                let g = loss(rope(x.trace(Gradients::leaky()), &cos, &sin)).backward();
                assert_close(&rope(x.clone(), &cos, &sin).as_vec(), &y_ref, "rope y");
                assert_close(&g.get(&x).as_vec(), &g_ref.get(&x).as_vec(), "rope dx");
            }
        }
    }
}
