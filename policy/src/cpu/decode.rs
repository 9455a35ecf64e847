//! Batched KV-cache decoding on the CPU outside dfdx: a snapshot of the
//! weights in host buffers, a preallocated KV cache written in place, and
//! the Llama forward as plain loops around `gemm` (see [`xwt`]).
//!
//! It computes what [`Llama::hidden`] + [`Llama::logits`] compute with a
//! [`crate::model::KvCache`] (same formulas, same order of the elementwise
//! operations), for inference only; `generate` uses it on the CPU, where
//! dfdx's per-op overhead, transposed weight packing and growing the cache by
//! concatenation dominated small decoding steps.
use super::{host, mean_square, xwt};
use crate::model::{Dev, Llama, T2};
use dfdx::prelude::*;
use rayon::prelude::*;

struct HostLayer {
    ln1: Vec<f32>,
    /// q, k and v projections stacked: `((heads + 2*kv_heads)*head_dim, hidden)`.
    wqkv: Vec<f32>,
    wo: Vec<f32>,
    ln2: Vec<f32>,
    /// gate and up projections stacked: `(2*intermediate, hidden)`.
    wgu: Vec<f32>,
    wd: Vec<f32>,
}

/// The model's weights copied to host memory, plus the shapes the forward needs.
pub(crate) struct HostModel {
    d: usize,
    f: usize,
    vocab: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    eps: f32,
    inv_freq: Vec<f32>,
    embed: Vec<f32>,
    layers: Vec<HostLayer>,
    norm: Vec<f32>,
    /// `None` when the head is tied to `embed`.
    head: Option<Vec<f32>>,
}

impl HostModel {
    pub(crate) fn new<D: Dev>(m: &Llama<D>) -> Self {
        let cfg = &m.cfg;
        // Contiguous copies (the model's tensors are contiguous; reshaping is free then).
        let mat = |t: &T2<D>| host(&t.clone().reshape_like(t.shape()));
        HostModel {
            d: cfg.hidden_size,
            f: cfg.intermediate_size,
            vocab: cfg.vocab_size,
            nh: cfg.num_attention_heads,
            nkv: cfg.num_key_value_heads,
            hd: cfg.head_dim,
            eps: cfg.rms_norm_eps as f32,
            inv_freq: cfg.inv_freq(),
            embed: mat(&m.embed_tokens),
            layers: m
                .layers
                .iter()
                .map(|l| HostLayer {
                    ln1: host(&l.input_layernorm),
                    wqkv: [mat(&l.q_proj), mat(&l.k_proj), mat(&l.v_proj)].concat(),
                    wo: mat(&l.o_proj),
                    ln2: host(&l.post_attention_layernorm),
                    wgu: [mat(&l.gate_proj), mat(&l.up_proj)].concat(),
                    wd: mat(&l.down_proj),
                })
                .collect(),
            norm: host(&m.norm),
            head: m.lm_head.as_ref().map(mat),
        }
    }
}

/// Keys and values for `batch` rows of up to `cap` tokens, per layer
/// `(batch, kv_heads, cap, head_dim)`, written in place.
pub(crate) struct HostKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    batch: usize,
    cap: usize,
    /// Tokens stored per row.
    pub(crate) len: usize,
}

impl HostKv {
    /// An empty cache with room for `cap` tokens per row; it grows when needed.
    pub(crate) fn new(m: &HostModel, batch: usize, cap: usize) -> Self {
        let cap = cap.max(1);
        let per = batch * m.nkv * cap * m.hd;
        let zeros = || (0..m.layers.len()).map(|_| vec![0.0; per]).collect();
        HostKv {
            k: zeros(),
            v: zeros(),
            batch,
            cap,
            len: 0,
        }
    }

    /// Makes room for `total` tokens per row (at least doubling), keeping the stored ones.
    fn reserve(&mut self, total: usize, nkv: usize, hd: usize) {
        if total <= self.cap {
            return;
        }
        let cap = total.max(self.cap.saturating_mul(2));
        let regrow = |old: &mut Vec<f32>| {
            let mut new = vec![0.0; self.batch * nkv * cap * hd];
            for (blk, dst) in new.chunks_exact_mut(cap * hd).enumerate() {
                let src = &old[blk * self.cap * hd..][..self.len * hd];
                dst[..self.len * hd].copy_from_slice(src);
            }
            *old = new;
        };
        self.k.iter_mut().for_each(regrow);
        self.v.iter_mut().for_each(regrow);
        self.cap = cap;
    }
}

/// `out = x / sqrt(mean(x²) + eps) * w`, row by row (the order dfdx's path uses).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let inv = (mean_square(xr) + eps).sqrt().recip();
        for ((o, &xv), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = xv * inv * wv;
        }
    }
}

/// Rotate-half RoPE in place on `heads` heads of each row, `x*cos + rotate_half(x)*sin`.
fn rope(x: &mut [f32], heads: usize, hd: usize, positions: &[usize], inv_freq: &[f32]) {
    let half = hd / 2;
    let mut cos = vec![0f32; hd];
    let mut sin = vec![0f32; hd];
    let mut rot = vec![0f32; hd];
    for (row, &p) in x.chunks_exact_mut(heads * hd).zip(positions) {
        for j in 0..hd {
            let a = p as f32 * inv_freq[j % half];
            cos[j] = a.cos();
            sin[j] = a.sin();
        }
        for h in row.chunks_exact_mut(hd) {
            for j in 0..half {
                rot[j] = -h[j + half];
                rot[j + half] = h[j];
            }
            for j in 0..hd {
                h[j] = h[j] * cos[j] + rot[j] * sin[j];
            }
        }
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, so the compiler can keep them in one vector register.
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

/// Attention of one query over its visible keys (`k`, `v`: `keys × head_dim`),
/// compiled for the CPU's widest vectors through pulp's runtime dispatch.
struct AttnOne<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    mask: &'a [bool],
    scores: &'a mut [f32],
    out: &'a mut [f32],
    scale: f32,
}

impl pulp::WithSimd for AttnOne<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let AttnOne {
            q,
            k,
            v,
            mask,
            scores,
            out,
            scale,
        } = self;
        let hd = q.len();
        let mut m = f32::NEG_INFINITY;
        let mut any = false;
        for (j, kr) in k.chunks_exact(hd).enumerate() {
            if mask[j] {
                let sc = dot(q, kr) * scale;
                scores[j] = sc;
                m = m.max(sc);
                any = true;
            }
        }
        out.fill(0.0);
        if !any {
            // A padding query that sees no real key; its output is never used.
            return;
        }
        let mut sum = 0f32;
        for (j, sc) in scores.iter_mut().enumerate() {
            if mask[j] {
                *sc = (*sc - m).exp();
                sum += *sc;
            }
        }
        for (j, vr) in v.chunks_exact(hd).enumerate() {
            if mask[j] {
                let p = scores[j] / sum;
                for (o, &vv) in out.iter_mut().zip(vr) {
                    *o += p * vv;
                }
            }
        }
    }
}

impl HostModel {
    /// One forward over `batch × seq` new tokens with RoPE `positions`
    /// (row-major `batch × seq`) and `key_mask` (row-major
    /// `batch × (kv.len + seq)`); appends their keys and values to `kv` and
    /// returns the logits `(batch, vocab)` of each row's last token.
    pub(crate) fn step(
        &self,
        kv: &mut HostKv,
        tokens: &[u32],
        positions: &[usize],
        key_mask: &[bool],
        seq: usize,
    ) -> Vec<f32> {
        let (d, hd, nh, nkv) = (self.d, self.hd, self.nh, self.nkv);
        let g = nh / nkv;
        let bs = kv.batch;
        let past = kv.len;
        let total = past + seq;
        kv.reserve(total, nkv, hd);
        assert_eq!(tokens.len(), bs * seq);
        assert_eq!(positions.len(), bs * seq);
        assert_eq!(key_mask.len(), bs * total);
        let n = bs * seq;
        let mut h = vec![0f32; n * d];
        for (row, &t) in h.chunks_exact_mut(d).zip(tokens) {
            row.copy_from_slice(&self.embed[t as usize * d..(t as usize + 1) * d]);
        }
        let mut xn = vec![0f32; n * d];
        let mut q = vec![0f32; n * nh * hd];
        let mut k = vec![0f32; n * nkv * hd];
        let mut v = vec![0f32; n * nkv * hd];
        let mut attn = vec![0f32; n * nh * hd];
        let mut o = vec![0f32; n * d];
        let (wq, wk) = (nh * hd, nkv * hd);
        let mut qkv = vec![0f32; n * (wq + 2 * wk)];
        let mut gu = vec![0f32; n * 2 * self.f];
        let mut act = vec![0f32; n * self.f];
        let scale = 1.0 / (hd as f32).sqrt();
        for (li, l) in self.layers.iter().enumerate() {
            rms_norm(&h, &l.ln1, self.eps, &mut xn);
            xwt(&xn, n, d, &l.wqkv, wq + 2 * wk, &mut qkv);
            for (r, row) in qkv.chunks_exact(wq + 2 * wk).enumerate() {
                q[r * wq..(r + 1) * wq].copy_from_slice(&row[..wq]);
                k[r * wk..(r + 1) * wk].copy_from_slice(&row[wq..wq + wk]);
                v[r * wk..(r + 1) * wk].copy_from_slice(&row[wq + wk..]);
            }
            rope(&mut q, nh, hd, positions, &self.inv_freq);
            rope(&mut k, nkv, hd, positions, &self.inv_freq);
            let (kc, vc) = (&mut kv.k[li], &mut kv.v[li]);
            for b in 0..bs {
                for s in 0..seq {
                    let r = b * seq + s;
                    for j in 0..nkv {
                        let dst = ((b * nkv + j) * kv.cap + past + s) * hd;
                        kc[dst..dst + hd]
                            .copy_from_slice(&k[(r * nkv + j) * hd..(r * nkv + j + 1) * hd]);
                        vc[dst..dst + hd]
                            .copy_from_slice(&v[(r * nkv + j) * hd..(r * nkv + j + 1) * hd]);
                    }
                }
            }
            let (kc, vc) = (&kv.k[li], &kv.v[li]);
            // One task per (row, query head): scores over the visible keys, softmax, weighted values.
            attn.par_chunks_mut(hd).enumerate().for_each_init(
                || vec![0f32; total],
                |scores, (idx, out)| {
                    let (r, hq) = (idx / nh, idx % nh);
                    let (b, s) = (r / seq, r % seq);
                    let base = (b * nkv + hq / g) * kv.cap * hd;
                    let keys = past + s + 1;
                    pulp::Arch::new().dispatch(AttnOne {
                        q: &q[idx * hd..(idx + 1) * hd],
                        k: &kc[base..base + keys * hd],
                        v: &vc[base..base + keys * hd],
                        mask: &key_mask[b * total..b * total + keys],
                        scores: &mut scores[..keys],
                        out,
                        scale,
                    })
                },
            );
            xwt(&attn, n, nh * hd, &l.wo, d, &mut o);
            for (hv, ov) in h.iter_mut().zip(&o) {
                *hv += *ov;
            }
            rms_norm(&h, &l.ln2, self.eps, &mut xn);
            xwt(&xn, n, d, &l.wgu, 2 * self.f, &mut gu);
            for (row, a) in gu
                .chunks_exact(2 * self.f)
                .zip(act.chunks_exact_mut(self.f))
            {
                let (gate, up) = row.split_at(self.f);
                for ((av, &gv), &uv) in a.iter_mut().zip(gate).zip(up) {
                    let sig = 1.0 / (1.0 + (-gv).exp());
                    *av = sig * gv * uv;
                }
            }
            xwt(&act, n, self.f, &l.wd, d, &mut o);
            for (hv, ov) in h.iter_mut().zip(&o) {
                *hv += *ov;
            }
        }
        kv.len = total;
        // Only each row's last token feeds the head.
        let mut last = vec![0f32; bs * d];
        for b in 0..bs {
            let r = b * seq + seq - 1;
            rms_norm(
                &h[r * d..(r + 1) * d],
                &self.norm,
                self.eps,
                &mut last[b * d..(b + 1) * d],
            );
        }
        let mut logits = vec![0f32; bs * self.vocab];
        xwt(
            &last,
            bs,
            d,
            self.head.as_ref().unwrap_or(&self.embed),
            self.vocab,
            &mut logits,
        );
        logits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::tiny_llama;

    #[test]
    fn a_cache_that_grows_gives_the_same_logits() {
        let model = tiny_llama(
            serde_json::json!({
                "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 50,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true
            }),
            1,
            0.3,
        );
        let m = HostModel::new(&model);
        let run = |cap: usize| {
            let mut kv = HostKv::new(&m, 2, cap);
            // Prefill 3 tokens per row (row 1 left-padded by one), then 6 single steps.
            let mut rows = [vec![true, true, true], vec![false, true, true]];
            let mut out = m.step(
                &mut kv,
                &[4, 7, 9, 0, 3, 5],
                &[0, 1, 2, 0, 0, 1],
                &rows.concat(),
                3,
            );
            for step in 0..6usize {
                rows.iter_mut().for_each(|r| r.push(true));
                let tokens = [step as u32 + 1, step as u32 + 2];
                out.extend(m.step(&mut kv, &tokens, &[3 + step, 2 + step], &rows.concat(), 1));
            }
            (out, kv.cap)
        };
        let (small, grown) = run(1);
        let (big, kept) = run(64);
        assert!(grown >= 9 && kept == 64);
        assert_eq!(small, big);
    }
}
