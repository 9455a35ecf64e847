//! The Llama model on dfdx with runtime shapes, generic over the device.
//!
//! Weights keep HF's layout (`[out, in]`, rotate-half RoPE), so loading and
//! saving are plain copies. One forward serves training (with a tape),
//! scoring and KV-cache decoding.
use crate::config::LlamaConfig;
use crate::safetensors_io::HostTensor;
use anyhow::{bail, Context, Result};
use dfdx::prelude::*;
use std::collections::BTreeMap;

/// A 1-D f32 tensor on device `D` with tape `T`.
pub type T1<D, T = NoneTape> = Tensor<(usize,), f32, D, T>;
/// A 2-D f32 tensor on device `D` with tape `T`.
pub type T2<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;
/// A 4-D f32 tensor on device `D` with tape `T`.
pub type T4<D, T = NoneTape> = Tensor<(usize, usize, usize, usize), f32, D, T>;

/// The devices the model runs on.
pub trait Dev: Device<f32> + Clone + DeviceKernels {}
impl<D: Device<f32> + Clone + DeviceKernels> Dev for D {}

/// What a device does its own way. The CPU computes `Linear`, RMSNorm,
/// SwiGLU, RoPE, attention and the log-softmax at the targets with its own
/// kernels and decodes on host buffers (the crate's `cpu` module); other
/// devices use the dfdx compositions, the trait's defaults.
pub trait DeviceKernels: Device<f32> {
    /// Whether [`crate::generate::generate`] decodes on host buffers rather
    /// than through dfdx with a [`KvCache`].
    const HOST_DECODING: bool = false;
    /// `x·Wᵀ` for `x: (rows, in)` and a weight in HF layout `(out, in)`.
    fn linear<T: Tape<f32, Self> + Merge<NoneTape>>(x: T2<Self, T>, w: &T2<Self>) -> T2<Self, T> {
        dfdx_linear(x, w)
    }
    /// `x / sqrt(mean(x²) + eps) * w` over each row.
    fn rms_norm<T: Tape<f32, Self> + Merge<NoneTape>>(
        x: T2<Self, T>,
        w: &T1<Self>,
        eps: f64,
    ) -> T2<Self, T> {
        dfdx_rms_norm(x, w, eps)
    }
    /// `silu(gate) * up`.
    fn swiglu<T: Tape<f32, Self> + Merge<NoneTape>>(
        gate: T2<Self, T>,
        up: T2<Self, T>,
    ) -> T2<Self, T> {
        // silu(g) = g * sigmoid(g)
        let act = gate.with_empty_tape().sigmoid() * gate;
        act * up
    }
    /// Causal grouped-query attention without a KV cache, token-major:
    /// `q: (n*heads, hd)`, `k: (n*kv_heads, hd)`, `v: (n, kv_heads*hd)` →
    /// `(n, heads*hd)`; `mask` is the additive mask in the folded layout
    /// `(batch, kv_heads, group*seq, seq)`, `host_mask` the same per batch row `(batch, seq, seq)`.
    fn attention<T: Tape<f32, Self> + Merge<NoneTape>>(
        q: T2<Self, T>,
        k: T2<Self, T>,
        v: T2<Self, T>,
        dims: AttnDims,
        mask: &T4<Self>,
        host_mask: &[f32],
    ) -> T2<Self, T> {
        let _ = host_mask;
        dfdx_attention(q, k, v, dims, mask)
    }
    /// `log_softmax(logits * scale)` at each row's target.
    fn target_logprobs<T: Tape<f32, Self> + Merge<NoneTape>>(
        logits: T2<Self, T>,
        targets: &[usize],
        scale: f32,
    ) -> T1<Self, T> {
        let logits = if scale != 1.0 { logits * scale } else { logits };
        let dev = logits.device().clone();
        logits
            .log_softmax::<Axis<1>>()
            .select(dev.tensor_from_vec(targets.to_vec(), (targets.len(),)))
    }
    /// Rotate-half RoPE of rows of one head: `x*cos + rotate_half(x)*sin`;
    /// `rot_t` is the transposed rotate-half matrix.
    fn rope<T: Tape<f32, Self> + Merge<NoneTape>>(
        x: T2<Self, T>,
        cos: &T2<Self>,
        sin: &T2<Self>,
        rot_t: &T2<Self>,
    ) -> T2<Self, T> {
        dfdx_rope(x, cos, sin, rot_t)
    }
}

fn dfdx_rope<D: Device<f32>, T: Tape<f32, D> + Merge<NoneTape>>(
    x: T2<D, T>,
    cos: &T2<D>,
    sin: &T2<D>,
    rot_t: &T2<D>,
) -> T2<D, T> {
    let rotated = dfdx_linear(x.with_empty_tape(), rot_t) * sin.clone();
    x * cos.clone() + rotated
}

#[cfg(feature = "cuda")]
impl DeviceKernels for Cuda {}

/// Shapes of one attention call: `batch × seq` tokens, `heads` query heads
/// sharing `kv_heads` key/value heads, `head_dim` wide.
#[derive(Clone, Copy, Debug)]
pub struct AttnDims {
    pub batch: usize,
    pub seq: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

/// Folds the query heads sharing a KV head into the row dimension:
/// q `(b, kv, g*t, hd)`, k and v `(b, kv, t, hd)` (views, not copies, where dfdx allows).
#[allow(clippy::type_complexity)]
fn fold_heads<D: Device<f32>, T: Tape<f32, D>>(
    q: T2<D, T>,
    k: T2<D, T>,
    v: T2<D, T>,
    a: AttnDims,
) -> (T4<D, T>, T4<D, T>, T4<D, T>) {
    let AttnDims {
        batch: bs,
        seq: t,
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
    } = a;
    let g = nh / nkv;
    let q = q
        .reshape_like(&(bs, t, nkv, g, hd))
        .permute::<(usize, usize, usize, usize, usize), Axes5<0, 2, 3, 1, 4>>()
        .reshape_like(&(bs, nkv, g * t, hd));
    let k = k
        .reshape_like(&(bs, t, nkv, hd))
        .permute::<(usize, usize, usize, usize), Axes4<0, 2, 1, 3>>();
    let v = v
        .reshape_like(&(bs, t, nkv, hd))
        .permute::<(usize, usize, usize, usize), Axes4<0, 2, 1, 3>>();
    (q, k, v)
}

/// [`DeviceKernels::attention`] as dfdx ops.
pub(crate) fn dfdx_attention<D: Device<f32>, T: Tape<f32, D> + Merge<NoneTape>>(
    q: T2<D, T>,
    k: T2<D, T>,
    v: T2<D, T>,
    dims: AttnDims,
    mask: &T4<D>,
) -> T2<D, T> {
    let AttnDims {
        batch: bs,
        seq: t,
        heads: nh,
        kv_heads: nkv,
        head_dim: hd,
    } = dims;
    let g = nh / nkv;
    let (q, k, v) = fold_heads(q, k, v, dims);
    let out = attend(q, k, v, mask, hd);
    out.reshape_like(&(bs, nkv, g, t, hd))
        .permute::<(usize, usize, usize, usize, usize), Axes5<0, 3, 1, 2, 4>>()
        .reshape_like(&(bs * t, nh * hd))
}

/// softmax(q·kᵀ/√hd + mask)·v in the folded layout, `(b, kv, g*t, hd)`.
fn attend<D: Device<f32>, T: Tape<f32, D> + Merge<NoneTape>>(
    q: T4<D, T>,
    k: T4<D, T>,
    v: T4<D, T>,
    mask: &T4<D>,
    hd: usize,
) -> T4<D, T> {
    let kt = k.permute::<(usize, usize, usize, usize), Axes4<0, 1, 3, 2>>();
    let scores = q.matmul(kt) * (1.0 / (hd as f32).sqrt()) + mask.clone();
    scores.softmax::<Axis<3>>().matmul(v)
}

/// A dimension of a parameter's shape, read off the config.
#[derive(Clone, Copy, Debug)]
enum Dim {
    Hidden,
    Intermediate,
    /// Query heads × head_dim.
    QOut,
    /// Key/value heads × head_dim.
    KvOut,
    Vocab,
}

impl Dim {
    fn of(self, cfg: &LlamaConfig) -> usize {
        match self {
            Dim::Hidden => cfg.hidden_size,
            Dim::Intermediate => cfg.intermediate_size,
            Dim::QOut => cfg.num_attention_heads * cfg.head_dim,
            Dim::KvOut => cfg.num_key_value_heads * cfg.head_dim,
            Dim::Vocab => cfg.vocab_size,
        }
    }
}

/// A parameter's Hugging Face name and its shape.
type ParamSpec = (&'static str, &'static [Dim]);

const EMBED_TOKENS: ParamSpec = ("model.embed_tokens.weight", &[Dim::Vocab, Dim::Hidden]);
const NORM: ParamSpec = ("model.norm.weight", &[Dim::Hidden]);
const LM_HEAD: ParamSpec = ("lm_head.weight", &[Dim::Vocab, Dim::Hidden]);

/// The name of a layer's parameter, `model.layers.{i}.{name}`.
fn layer_param_name(i: usize, name: &str) -> String {
    format!("model.layers.{i}.{name}")
}

/// The concrete shape of a parameter under `cfg`.
fn shape_of(dims: &[Dim], cfg: &LlamaConfig) -> Vec<usize> {
    dims.iter().map(|d| d.of(cfg)).collect()
}

/// Every parameter of a model with `layers` layers (and an LM head of its own
/// when `head`), name and shape, in the order of [`Llama::params`]: the one
/// table that loading, saving and random init follow.
fn param_table(layers: usize, head: bool) -> Vec<(String, &'static [Dim])> {
    let mut out = vec![(EMBED_TOKENS.0.to_string(), EMBED_TOKENS.1)];
    for i in 0..layers {
        out.extend(
            LAYER_PARAMS
                .iter()
                .map(|&(name, dims)| (layer_param_name(i, name), dims)),
        );
    }
    out.push((NORM.0.to_string(), NORM.1));
    if head {
        out.push((LM_HEAD.0.to_string(), LM_HEAD.1));
    }
    out
}

/// A tensor that is a parameter: a vector or a matrix.
trait ParamTensor<D: Dev> {
    /// The tensor on `dev` (the shape was checked against the config).
    fn from_host(dev: &D, t: HostTensor) -> Self;
    fn param(&self) -> ParamRef<'_, D>;
    fn param_mut(&mut self) -> ParamMut<'_, D>;
}

impl<D: Dev> ParamTensor<D> for T1<D> {
    fn from_host(dev: &D, t: HostTensor) -> Self {
        dev.tensor_from_vec(t.data, (t.shape[0],))
    }
    fn param(&self) -> ParamRef<'_, D> {
        ParamRef::Vector(self)
    }
    fn param_mut(&mut self) -> ParamMut<'_, D> {
        ParamMut::Vector(self)
    }
}

impl<D: Dev> ParamTensor<D> for T2<D> {
    fn from_host(dev: &D, t: HostTensor) -> Self {
        dev.tensor_from_vec(t.data, (t.shape[0], t.shape[1]))
    }
    fn param(&self) -> ParamRef<'_, D> {
        ParamRef::Matrix(self)
    }
    fn param_mut(&mut self) -> ParamMut<'_, D> {
        ParamMut::Matrix(self)
    }
}

/// Declares [`Layer`] from one table of its parameters, each once: field,
/// type, Hugging Face name (under `model.layers.{i}.`) and shape. The
/// layer's loading, parameter lists and names all come from it.
macro_rules! decoder_layer {
    ($($field:ident: $ty:ident = $name:literal [$($dim:ident),+],)*) => {
        /// Weights of one decoder layer.
        #[derive(Clone, Debug)]
        pub struct Layer<D: Dev> {
            $(
                #[doc = concat!("`model.layers.{i}.", $name, "`")]
                pub $field: $ty<D>,
            )*
        }

        /// A layer's parameters in checkpoint order, names under `model.layers.{i}.`.
        const LAYER_PARAMS: &[ParamSpec] = &[$(($name, &[$(Dim::$dim),+])),*];

        impl<D: Dev> Layer<D> {
            /// The parameters in [`LAYER_PARAMS`] order.
            fn params(&self) -> Vec<ParamRef<'_, D>> {
                vec![$(self.$field.param()),*]
            }

            /// The parameters, mutably, in [`LAYER_PARAMS`] order.
            fn params_mut(&mut self) -> Vec<ParamMut<'_, D>> {
                vec![$(self.$field.param_mut()),*]
            }

            /// A layer of the tensors `take(name, shape)` gives, in [`LAYER_PARAMS`] order.
            fn load(
                dev: &D,
                mut take: impl FnMut(&str, &[Dim]) -> Result<HostTensor>,
            ) -> Result<Self> {
                Ok(Layer {
                    $($field: ParamTensor::from_host(dev, take($name, &[$(Dim::$dim),+])?),)*
                })
            }
        }
    };
}

decoder_layer! {
    input_layernorm: T1 = "input_layernorm.weight" [Hidden],
    q_proj: T2 = "self_attn.q_proj.weight" [QOut, Hidden],
    k_proj: T2 = "self_attn.k_proj.weight" [KvOut, Hidden],
    v_proj: T2 = "self_attn.v_proj.weight" [KvOut, Hidden],
    o_proj: T2 = "self_attn.o_proj.weight" [Hidden, QOut],
    post_attention_layernorm: T1 = "post_attention_layernorm.weight" [Hidden],
    gate_proj: T2 = "mlp.gate_proj.weight" [Intermediate, Hidden],
    up_proj: T2 = "mlp.up_proj.weight" [Intermediate, Hidden],
    down_proj: T2 = "mlp.down_proj.weight" [Hidden, Intermediate],
}

/// A Llama causal language model.
#[derive(Clone, Debug)]
pub struct Llama<D: Dev> {
    pub cfg: LlamaConfig,
    pub embed_tokens: T2<D>,
    pub layers: Vec<Layer<D>>,
    pub norm: T1<D>,
    /// `None` when the head is tied to `embed_tokens`.
    pub lm_head: Option<T2<D>>,
    pub dev: D,
    /// `rotᵀ`, where `x @ rot` = rotate_half(x) for one head; a constant in
    /// the `(out, in)` layout [`linear`] takes.
    rot_t: T2<D>,
}

/// A borrowed parameter, 1-D or 2-D.
pub enum ParamRef<'a, D: Dev> {
    Vector(&'a T1<D>),
    Matrix(&'a T2<D>),
}

/// A mutably borrowed parameter, 1-D or 2-D.
pub enum ParamMut<'a, D: Dev> {
    Vector(&'a mut T1<D>),
    Matrix(&'a mut T2<D>),
}

/// Which tokens the forward pass sees: a `batch × seq` grid of ids with
/// per-token RoPE positions and a key mask over past + current tokens.
#[derive(Clone, Debug)]
pub struct Batch {
    pub batch: usize,
    pub seq: usize,
    /// Row-major `batch × seq` token ids.
    pub tokens: Vec<u32>,
    /// Row-major `batch × seq` RoPE positions.
    pub positions: Vec<usize>,
    /// Row-major `batch × (past + seq)`: whether each key position is a real token.
    pub key_mask: Vec<bool>,
}

impl Batch {
    /// A right-padded training batch: each row is a sequence, padded with
    /// `pad` to the longest; padding is masked and positions count real tokens.
    pub fn right_padded(rows: &[Vec<u32>], pad: u32) -> Result<Batch> {
        let seq = rows.iter().map(Vec::len).max().unwrap_or(0);
        if rows.is_empty() || seq == 0 {
            bail!("empty input: at least one non-empty sequence is needed");
        }
        let mut b = Batch {
            batch: rows.len(),
            seq,
            tokens: vec![],
            positions: vec![],
            key_mask: vec![],
        };
        for r in rows {
            for i in 0..seq {
                let real = i < r.len();
                b.tokens.push(if real { r[i] } else { pad });
                b.positions.push(i.min(r.len().saturating_sub(1)));
                b.key_mask.push(real);
            }
        }
        Ok(b)
    }
}

/// Per-layer keys and values of the tokens seen so far, `(batch, kv_heads, len, head_dim)`.
#[derive(Clone, Debug)]
pub struct KvCache<D: Dev> {
    pub k: Vec<T4<D>>,
    pub v: Vec<T4<D>>,
    pub len: usize,
}

impl<D: Dev> KvCache<D> {
    /// An empty cache.
    pub fn new() -> Self {
        KvCache {
            k: vec![],
            v: vec![],
            len: 0,
        }
    }
}

impl<D: Dev> Default for KvCache<D> {
    fn default() -> Self {
        Self::new()
    }
}

/// Constants one forward pass shares across layers.
struct Ctx<D: Dev> {
    cos_q: T2<D>,
    sin_q: T2<D>,
    cos_k: T2<D>,
    sin_k: T2<D>,
    mask: T4<D>,
    /// The additive mask per batch row, `(batch, seq, past + seq)`.
    host_mask: Vec<f32>,
}

fn linear<D: Dev, T: Tape<f32, D> + Merge<NoneTape>>(x: T2<D, T>, w: &T2<D>) -> T2<D, T> {
    D::linear(x, w)
}

/// `Linear` on dfdx's matmul, for devices without their own op.
fn dfdx_linear<D: Device<f32>, T: Tape<f32, D> + Merge<NoneTape>>(
    x: T2<D, T>,
    w: &T2<D>,
) -> T2<D, T> {
    if x.shape().0 <= 32 {
        // Few rows (decoding): W·xᵀ reads the weight in its stored row-major
        // layout instead of packing a transposed copy of it on every call.
        let (m, n) = (x.shape().0, w.shape().0);
        let xt = x.permute::<(usize, usize), Axes2<1, 0>>();
        return w
            .clone()
            .retaped::<T>()
            .matmul(xt)
            .permute::<(usize, usize), Axes2<1, 0>>()
            .reshape_like(&(m, n));
    }
    x.matmul(w.clone().permute::<(usize, usize), Axes2<1, 0>>())
}

fn rms_norm<D: Dev, T: Tape<f32, D> + Merge<NoneTape>>(
    x: T2<D, T>,
    w: &T1<D>,
    eps: f64,
) -> T2<D, T> {
    D::rms_norm(x, w, eps)
}

fn dfdx_rms_norm<D: Device<f32>, T: Tape<f32, D> + Merge<NoneTape>>(
    x: T2<D, T>,
    w: &T1<D>,
    eps: f64,
) -> T2<D, T> {
    let shape = *x.shape();
    let var = x.with_empty_tape().square().mean::<(usize,), Axis<1>>();
    let inv = (var + eps as f32).sqrt().recip();
    let xn = x * inv.broadcast_like::<(usize, usize), Axis<1>>(&shape);
    xn * w.clone().broadcast_like::<(usize, usize), Axis<0>>(&shape)
}

impl<D: Dev> Llama<D> {
    /// Builds a model from HF-named host tensors, checking every name and shape.
    pub fn from_tensors(
        cfg: LlamaConfig,
        tensors: BTreeMap<String, HostTensor>,
        dev: &D,
    ) -> Result<Self> {
        Self::build(cfg, tensors, dev, true)
    }

    /// Builds only the backbone (no LM head) from HF-named tensors: for reward
    /// and value models, whose heads live elsewhere. Any `lm_head.weight` is
    /// ignored; [`Llama::params`] then lists no head.
    pub fn backbone_from_tensors(
        cfg: LlamaConfig,
        mut tensors: BTreeMap<String, HostTensor>,
        dev: &D,
    ) -> Result<Self> {
        tensors.remove("lm_head.weight");
        let mut cfg = cfg;
        let tied = cfg.tie_word_embeddings;
        cfg.tie_word_embeddings = true;
        let mut m = Self::build(cfg, tensors, dev, false)?;
        m.cfg.tie_word_embeddings = tied;
        Ok(m)
    }

    fn build(
        cfg: LlamaConfig,
        mut tensors: BTreeMap<String, HostTensor>,
        dev: &D,
        with_head: bool,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut take = |name: &str, dims: &[Dim]| -> Result<HostTensor> {
            let shape = shape_of(dims, &cfg);
            let t = tensors
                .remove(name)
                .with_context(|| format!("checkpoint is missing tensor `{name}`"))?;
            if t.shape != shape {
                bail!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    t.shape,
                    shape
                );
            }
            if let Some(bad) = t.data.iter().find(|x| !x.is_finite()) {
                bail!("tensor `{name}` contains a non-finite value ({bad})");
            }
            Ok(t)
        };
        let (name, dims) = EMBED_TOKENS;
        let embed_tokens: T2<D> = ParamTensor::from_host(dev, take(name, dims)?);
        let mut layers = vec![];
        for i in 0..cfg.num_hidden_layers {
            layers.push(Layer::load(dev, |name, dims| {
                take(&layer_param_name(i, name), dims)
            })?);
        }
        let (name, dims) = NORM;
        let norm: T1<D> = ParamTensor::from_host(dev, take(name, dims)?);
        let lm_head = if cfg.tie_word_embeddings || !with_head {
            // Some tied checkpoints still store a copy of the head; it must equal the embedding.
            tensors.remove(LM_HEAD.0);
            None
        } else {
            let (name, dims) = LM_HEAD;
            Some(ParamTensor::from_host(dev, take(name, dims)?))
        };
        // Rotary buffers that some exporters store are recomputed from the config.
        tensors.retain(|k, _| !k.ends_with("rotary_emb.inv_freq"));
        if let Some(extra) = tensors.keys().next() {
            bail!("checkpoint has an unexpected tensor `{extra}` (is this a Llama causal LM?)");
        }
        Ok(Self::assemble(
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            dev,
        ))
    }

    fn assemble(
        cfg: LlamaConfig,
        embed_tokens: T2<D>,
        layers: Vec<Layer<D>>,
        norm: T1<D>,
        lm_head: Option<T2<D>>,
        dev: &D,
    ) -> Self {
        let hd = cfg.head_dim;
        let half = hd / 2;
        // rotate_half(x) = cat(-x[half..], x[..half]): out[j] = -x[j+half] for j < half, x[j-half] otherwise;
        // as a `(out, in)` matrix, row j holds that output's one ±1.
        let mut rot_t = vec![0f32; hd * hd];
        for j in 0..half {
            rot_t[j * hd + j + half] = -1.0;
            rot_t[(j + half) * hd + j] = 1.0;
        }
        let rot_t = dev.tensor_from_vec(rot_t, (hd, hd));
        Llama {
            cfg,
            embed_tokens,
            layers,
            norm,
            lm_head,
            dev: dev.clone(),
            rot_t,
        }
    }

    /// A model with random weights (normal, std `init_std`; norms at 1), as HF initializes.
    pub fn random(cfg: LlamaConfig, dev: &D, seed: u64, init_std: f32) -> Result<Self> {
        use rand::{rngs::StdRng, SeedableRng};
        use rand_distr::{Distribution, Normal};
        let mut rng = StdRng::seed_from_u64(seed);
        let normal = Normal::new(0.0f32, init_std).context("invalid init std")?;
        let mut tensors = BTreeMap::new();
        for (name, shape) in cfg_param_shapes(&cfg) {
            let n: usize = shape.iter().product();
            let data = if shape.len() == 1 {
                vec![1.0; n]
            } else {
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            };
            tensors.insert(name, HostTensor { shape, data });
        }
        Self::from_tensors(cfg, tensors, dev)
    }

    /// Every parameter with its HF name, in a fixed order.
    pub fn params(&self) -> Vec<(String, ParamRef<'_, D>)> {
        let mut refs = vec![self.embed_tokens.param()];
        for l in &self.layers {
            refs.extend(l.params());
        }
        refs.push(self.norm.param());
        refs.extend(self.lm_head.as_ref().map(|h| h.param()));
        let names = param_table(self.layers.len(), self.lm_head.is_some());
        debug_assert_eq!(names.len(), refs.len());
        names.into_iter().map(|(name, _)| name).zip(refs).collect()
    }

    /// Every parameter, mutably, in the order of [`Llama::params`].
    pub fn params_mut(&mut self) -> Vec<ParamMut<'_, D>> {
        let mut out = vec![self.embed_tokens.param_mut()];
        for l in self.layers.iter_mut() {
            out.extend(l.params_mut());
        }
        out.push(self.norm.param_mut());
        out.extend(self.lm_head.as_mut().map(|h| h.param_mut()));
        out
    }

    /// Copies the weights to host tensors under their HF names.
    pub fn to_host_tensors(&self) -> BTreeMap<String, HostTensor> {
        self.params()
            .into_iter()
            .map(|(name, p)| {
                let t = match p {
                    ParamRef::Vector(t) => HostTensor {
                        shape: vec![t.shape().0],
                        data: t.as_vec(),
                    },
                    ParamRef::Matrix(t) => HostTensor {
                        shape: vec![t.shape().0, t.shape().1],
                        data: t.as_vec(),
                    },
                };
                (name, t)
            })
            .collect()
    }

    /// The LM head weight (`embed_tokens` when tied).
    pub fn head_weight(&self) -> &T2<D> {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    pub(crate) fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            bail!(
                "token id {t} is out of range for a vocabulary of {}",
                self.cfg.vocab_size
            );
        }
        Ok(())
    }

    fn context(&self, b: &Batch, past: usize) -> Ctx<D> {
        let cfg = &self.cfg;
        let (hd, nh, nkv, g) = (
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.group_size(),
        );
        let inv = cfg.inv_freq();
        let rows = b.batch * b.seq;
        // One cos/sin row per token, then repeated per head.
        let mut cos_tok = Vec::with_capacity(rows * hd);
        let mut sin_tok = Vec::with_capacity(rows * hd);
        for &p in &b.positions {
            for j in 0..hd {
                let a = p as f32 * inv[j % (hd / 2)];
                cos_tok.push(a.cos());
                sin_tok.push(a.sin());
            }
        }
        let per_head = |src: &[f32], heads: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(rows * heads * hd);
            for r in 0..rows {
                for _ in 0..heads {
                    out.extend_from_slice(&src[r * hd..(r + 1) * hd]);
                }
            }
            out
        };
        let total = past + b.seq;
        // Additive mask, query rows in (group, position) order to match the folded GQA layout.
        let mut host_mask = Vec::with_capacity(b.batch * b.seq * total);
        for bi in 0..b.batch {
            for qi in 0..b.seq {
                for kj in 0..total {
                    let ok = b.key_mask[bi * total + kj] && kj <= past + qi;
                    host_mask.push(if ok { 0.0 } else { -1e9 });
                }
            }
        }
        let mut mask = Vec::with_capacity(b.batch * nkv * g * b.seq * total);
        for one in host_mask.chunks_exact(b.seq * total) {
            for _ in 0..nkv * g {
                mask.extend_from_slice(one);
            }
        }
        let dev = &self.dev;
        Ctx {
            cos_q: dev.tensor_from_vec(per_head(&cos_tok, nh), (rows * nh, hd)),
            sin_q: dev.tensor_from_vec(per_head(&sin_tok, nh), (rows * nh, hd)),
            cos_k: dev.tensor_from_vec(per_head(&cos_tok, nkv), (rows * nkv, hd)),
            sin_k: dev.tensor_from_vec(per_head(&sin_tok, nkv), (rows * nkv, hd)),
            mask: dev.tensor_from_vec(mask, (b.batch, nkv, g * b.seq, total)),
            host_mask,
        }
    }

    fn rope<T: Tape<f32, D> + Merge<NoneTape>>(
        &self,
        x: T2<D, T>,
        cos: &T2<D>,
        sin: &T2<D>,
    ) -> T2<D, T> {
        D::rope(x, cos, sin, &self.rot_t)
    }

    fn attention<T: Tape<f32, D> + Merge<NoneTape>>(
        &self,
        li: usize,
        x: T2<D, T>,
        b: &Batch,
        ctx: &Ctx<D>,
        cache: Option<&mut KvCache<D>>,
    ) -> T2<D, T> {
        let cfg = &self.cfg;
        let l = &self.layers[li];
        let (bs, t) = (b.batch, b.seq);
        let (hd, nh, nkv, g) = (
            cfg.head_dim,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.group_size(),
        );
        let n = bs * t;
        let q = linear(x.with_empty_tape(), &l.q_proj).reshape_like(&(n * nh, hd));
        let k = linear(x.with_empty_tape(), &l.k_proj).reshape_like(&(n * nkv, hd));
        let v = linear(x, &l.v_proj);
        let q = self.rope(q, &ctx.cos_q, &ctx.sin_q);
        let k = self.rope(k, &ctx.cos_k, &ctx.sin_k);
        let dims = AttnDims {
            batch: bs,
            seq: t,
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
        };
        let Some(c) = cache else {
            return linear(
                D::attention(q, k, v, dims, &ctx.mask, &ctx.host_mask),
                &l.o_proj,
            );
        };
        let (q, k, v) = fold_heads(q, k, v, dims);
        let (k, v) = if li < c.k.len() {
            let k = (c.k[li].clone().retaped::<T>(), k).concat_along(Axis::<2>);
            let v = (c.v[li].clone().retaped::<T>(), v).concat_along(Axis::<2>);
            c.k[li] = k.retaped::<NoneTape>();
            c.v[li] = v.retaped::<NoneTape>();
            (k, v)
        } else {
            // Contiguous copies, so the next concat is cheap.
            let (k, v) = (
                k.reshape_like(&(bs, nkv, t, hd)),
                v.reshape_like(&(bs, nkv, t, hd)),
            );
            c.k.push(k.retaped::<NoneTape>());
            c.v.push(v.retaped::<NoneTape>());
            (k, v)
        };
        let out = attend(q, k, v, &ctx.mask, hd); // (b, kv, g*t, hd)
        let out = out
            .reshape_like(&(bs, nkv, g, t, hd))
            .permute::<(usize, usize, usize, usize, usize), Axes5<0, 3, 1, 2, 4>>()
            .reshape_like(&(n, nh * hd));
        linear(out, &l.o_proj)
    }

    /// The final-normed hidden states `(batch*seq, hidden)` of a batch.
    ///
    /// `embed` is `embed_tokens` carrying the tape to use: pass
    /// `model.embed_tokens.clone()` for inference, or
    /// `model.embed_tokens.trace(grads)` to record gradients.
    pub fn hidden<T: Tape<f32, D> + Merge<NoneTape>>(
        &self,
        embed: T2<D, T>,
        b: &Batch,
        mut cache: Option<&mut KvCache<D>>,
    ) -> Result<T2<D, T>> {
        self.check_tokens(&b.tokens)?;
        let past = cache.as_ref().map_or(0, |c| c.len);
        if b.tokens.len() != b.batch * b.seq
            || b.positions.len() != b.batch * b.seq
            || b.key_mask.len() != b.batch * (past + b.seq)
        {
            bail!("inconsistent batch: {} tokens, {} positions, {} mask entries for {}x{} (+{past} cached)", b.tokens.len(), b.positions.len(), b.key_mask.len(), b.batch, b.seq);
        }
        if b.batch == 0 || b.seq == 0 {
            bail!("empty input");
        }
        let ctx = self.context(b, past);
        let idx = self.dev.tensor_from_vec(
            b.tokens.iter().map(|&t| t as usize).collect(),
            (b.batch * b.seq,),
        );
        let mut h: T2<D, T> = embed.gather(idx);
        let eps = self.cfg.rms_norm_eps;
        for (li, l) in self.layers.iter().enumerate() {
            let residual = h.with_empty_tape();
            let a = self.attention(
                li,
                rms_norm(h, &l.input_layernorm, eps),
                b,
                &ctx,
                cache.as_deref_mut(),
            );
            h = a + residual;
            let residual = h.with_empty_tape();
            let x = rms_norm(h, &l.post_attention_layernorm, eps);
            let gate = linear(x.with_empty_tape(), &l.gate_proj);
            let up = linear(x, &l.up_proj);
            h = linear(D::swiglu(gate, up), &l.down_proj) + residual;
        }
        if let Some(c) = cache {
            c.len += b.seq;
        }
        Ok(rms_norm(h, &self.norm, eps))
    }

    /// Logits `(rows, vocab)` from hidden states.
    pub fn logits<T: Tape<f32, D> + Merge<NoneTape>>(&self, hidden: T2<D, T>) -> T2<D, T> {
        linear(hidden, self.head_weight())
    }

    /// Log-probabilities `(rows,)` of `targets` (one per row) under
    /// `softmax(logits / temperature)`.
    pub fn target_logprobs<T: Tape<f32, D> + Merge<NoneTape>>(
        &self,
        hidden: T2<D, T>,
        targets: &[u32],
        temperature: f32,
    ) -> Result<T1<D, T>> {
        self.check_tokens(targets)?;
        if targets.len() != hidden.shape().0 {
            bail!("{} targets for {} rows", targets.len(), hidden.shape().0);
        }
        let logits = self.logits(hidden);
        let targets: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
        Ok(D::target_logprobs(logits, &targets, 1.0 / temperature))
    }

    /// log p(t_i | t_<i) for i = 1..n-1 of each sequence (inference, no tape).
    pub fn sequence_logprobs(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        // A one-token sequence has no target: its answer is the empty list.
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            bail!("sequence {i} is empty");
        }
        let pad = self.cfg.pad_token_id.unwrap_or(0);
        let b = Batch::right_padded(seqs, pad)?;
        let h = self.hidden(self.embed_tokens.clone(), &b, None)?;
        let mut targets = Vec::with_capacity(b.batch * b.seq);
        for r in 0..b.batch {
            for i in 0..b.seq {
                targets.push(if i + 1 < b.seq {
                    b.tokens[r * b.seq + i + 1]
                } else {
                    pad
                });
            }
        }
        let lp = self.target_logprobs(h, &targets, 1.0)?.as_vec();
        Ok(seqs
            .iter()
            .enumerate()
            .map(|(r, s)| lp[r * b.seq..r * b.seq + s.len() - 1].to_vec())
            .collect())
    }
}

/// HF parameter names and shapes for a config, in the order of [`Llama::params`].
pub fn cfg_param_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    param_table(cfg.num_hidden_layers, !cfg.tie_word_embeddings)
        .into_iter()
        .map(|(name, dims)| (name, shape_of(dims, cfg)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{rand_mat, tiny_llama};
    use rand::{rngs::StdRng, SeedableRng};

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        crate::test_support::assert_close(a, b, 1e-5, what)
    }

    /// The parameters a model lists are the ones its config describes, in
    /// order, and a model saves and loads under those names.
    #[test]
    fn params_follow_the_config_table() {
        for tied in [false, true] {
            let cfg = crate::config::LlamaConfig::from_json(&serde_json::json!({
                "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 20,
                "tie_word_embeddings": tied
            }))
            .unwrap();
            let dev = Cpu::default();
            let model = Llama::random(cfg.clone(), &dev, 1, 0.3).unwrap();
            let listed: Vec<(String, Vec<usize>)> = model
                .params()
                .into_iter()
                .map(|(name, p)| {
                    let shape = match p {
                        ParamRef::Vector(t) => vec![t.shape().0],
                        ParamRef::Matrix(t) => vec![t.shape().0, t.shape().1],
                    };
                    (name, shape)
                })
                .collect();
            assert_eq!(listed, cfg_param_shapes(&cfg));
            assert_eq!(listed.len(), 2 + 2 * 9 + usize::from(!tied));
            let mut again = model.clone();
            assert_eq!(again.params_mut().len(), listed.len());
            let back = Llama::from_tensors(cfg, model.to_host_tensors(), &dev).unwrap();
            assert_eq!(back.to_host_tensors(), model.to_host_tensors());
        }
    }

    /// The dfdx defaults (what CUDA runs) agree with the CPU ops, forward and backward.
    #[test]
    fn dfdx_linear_and_rope_match_the_cpu_ops() {
        let model = tiny_llama(
            serde_json::json!({
                "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 1,
                "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 20
            }),
            2,
            0.3,
        );
        let dev = Cpu::default();
        let mut rng = StdRng::seed_from_u64(8);
        let mut mat = |r: usize, c: usize| rand_mat(&dev, &mut rng, r, c, 1.0);
        for rows in [4, 40] {
            let hd = model.cfg.head_dim;
            let (x, w, up) = (mat(rows, hd), mat(24, hd), mat(rows, 24));
            let (cos, sin, up_r) = (mat(rows, hd), mat(rows, hd), mat(rows, hd));
            let run = |cpu: bool| {
                let g = Gradients::leaky();
                let y = if cpu {
                    Cpu::linear(x.trace(g), &w)
                } else {
                    dfdx_linear(x.trace(g), &w)
                };
                let yv = y.with_empty_tape().retaped::<NoneTape>().as_vec();
                let g = (y * up.clone()).sum::<Rank0, _>().backward();
                let r = if cpu {
                    Cpu::rope(x.trace(Gradients::leaky()), &cos, &sin, &model.rot_t)
                } else {
                    dfdx_rope(x.trace(Gradients::leaky()), &cos, &sin, &model.rot_t)
                };
                let rv = r.with_empty_tape().retaped::<NoneTape>().as_vec();
                let gr = (r * up_r.clone()).sum::<Rank0, _>().backward();
                (
                    yv,
                    g.get(&x).as_vec(),
                    g.get(&w).as_vec(),
                    rv,
                    gr.get(&x).as_vec(),
                )
            };
            let (a, b) = (run(true), run(false));
            assert_close(&a.0, &b.0, "linear y");
            assert_close(&a.1, &b.1, "linear dx");
            assert_close(&a.2, &b.2, "linear dw");
            assert_close(&a.3, &b.3, "rope y");
            assert_close(&a.4, &b.4, "rope dx");
        }
    }
}
