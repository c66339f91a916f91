//! DETR's encoder-decoder transformer (post-norm), its sine position embedding, and the
//! attention it is built from.

use candle_core::{Device, Module, Tensor};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, VarBuilder};

use super::config::DetrConfig;

/// `nn.LayerNorm`'s default.
const LN_EPS: f64 = 1e-5;

/// Multi-head attention; position embeddings are added by the caller to queries and keys.
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl Attention {
    fn load(vb: VarBuilder, dim: usize, heads: usize) -> candle_core::Result<Self> {
        if !dim.is_multiple_of(heads) {
            candle_core::bail!("d_model {dim} is not divisible by {heads} attention heads");
        }
        Ok(Attention {
            q_proj: linear(dim, dim, vb.pp("q_proj"))?,
            k_proj: linear(dim, dim, vb.pp("k_proj"))?,
            v_proj: linear(dim, dim, vb.pp("v_proj"))?,
            out_proj: linear(dim, dim, vb.pp("out_proj"))?,
            heads,
        })
    }

    /// `query (B, Lq, D)`, `key`, `value (B, Lk, D)` → `(B, Lq, D)`.
    fn forward(&self, query: &Tensor, key: &Tensor, value: &Tensor) -> candle_core::Result<Tensor> {
        let (b, lq, dim) = query.dims3()?;
        let head_dim = dim / self.heads;
        let split = |x: Tensor| -> candle_core::Result<Tensor> {
            let l = x.dim(1)?;
            x.reshape((b, l, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(query)?)?;
        let k = split(self.k_proj.forward(key)?)?;
        let v = split(self.v_proj.forward(value)?)?;
        let scores = (q.matmul(&k.t()?)? * (head_dim as f64).powf(-0.5))?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = weights.matmul(&v)?.transpose(1, 2)?.reshape((b, lq, dim))?;
        self.out_proj.forward(&out)
    }
}

/// `fc2(relu(fc1(x)))`.
struct FeedForward {
    fc1: Linear,
    fc2: Linear,
}

impl FeedForward {
    fn load(vb: &VarBuilder, dim: usize, hidden: usize) -> candle_core::Result<Self> {
        Ok(FeedForward {
            fc1: linear(dim, hidden, vb.pp("fc1"))?,
            fc2: linear(hidden, dim, vb.pp("fc2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?.relu()?)
    }
}

struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(vb: VarBuilder, dim: usize, heads: usize, ffn: usize) -> candle_core::Result<Self> {
        Ok(EncoderLayer {
            self_attn: Attention::load(vb.pp("self_attn"), dim, heads)?,
            self_attn_layer_norm: layer_norm(dim, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            ffn: FeedForward::load(&vb, dim, ffn)?,
            final_layer_norm: layer_norm(dim, LN_EPS, vb.pp("final_layer_norm"))?,
        })
    }

    fn forward(&self, x: &Tensor, pos: &Tensor) -> candle_core::Result<Tensor> {
        let qk = x.broadcast_add(pos)?;
        let x = self
            .self_attn_layer_norm
            .forward(&(x + self.self_attn.forward(&qk, &qk, x)?)?)?;
        self.final_layer_norm
            .forward(&(&x + self.ffn.forward(&x)?)?)
    }
}

struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl DecoderLayer {
    fn load(vb: VarBuilder, dim: usize, heads: usize, ffn: usize) -> candle_core::Result<Self> {
        Ok(DecoderLayer {
            self_attn: Attention::load(vb.pp("self_attn"), dim, heads)?,
            self_attn_layer_norm: layer_norm(dim, LN_EPS, vb.pp("self_attn_layer_norm"))?,
            encoder_attn: Attention::load(vb.pp("encoder_attn"), dim, heads)?,
            encoder_attn_layer_norm: layer_norm(dim, LN_EPS, vb.pp("encoder_attn_layer_norm"))?,
            ffn: FeedForward::load(&vb, dim, ffn)?,
            final_layer_norm: layer_norm(dim, LN_EPS, vb.pp("final_layer_norm"))?,
        })
    }

    /// `x` the queries' states, `query_pos` their learned positions, `memory` the encoder
    /// output with its positions `memory_pos`.
    fn forward(
        &self,
        x: &Tensor,
        query_pos: &Tensor,
        memory: &Tensor,
        memory_keys: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let qk = x.broadcast_add(query_pos)?;
        let x = self
            .self_attn_layer_norm
            .forward(&(x + self.self_attn.forward(&qk, &qk, x)?)?)?;
        let q = x.broadcast_add(query_pos)?;
        let x = self
            .encoder_attn_layer_norm
            .forward(&(&x + self.encoder_attn.forward(&q, memory_keys, memory)?)?)?;
        self.final_layer_norm
            .forward(&(&x + self.ffn.forward(&x)?)?)
    }
}

pub struct Transformer {
    encoder: Vec<EncoderLayer>,
    decoder: Vec<DecoderLayer>,
    decoder_norm: LayerNorm,
}

impl Transformer {
    /// `vb` at `model`.
    pub fn load(vb: &VarBuilder, c: &DetrConfig) -> candle_core::Result<Self> {
        let encoder = (0..c.encoder_layers)
            .map(|l| {
                let vb = vb.pp(format!("encoder.layers.{l}"));
                EncoderLayer::load(vb, c.d_model, c.encoder_heads, c.encoder_ffn_dim)
            })
            .collect::<candle_core::Result<_>>()?;
        let decoder = (0..c.decoder_layers)
            .map(|l| {
                let vb = vb.pp(format!("decoder.layers.{l}"));
                DecoderLayer::load(vb, c.d_model, c.decoder_heads, c.decoder_ffn_dim)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Transformer {
            encoder,
            decoder,
            decoder_norm: layer_norm(c.d_model, LN_EPS, vb.pp("decoder.layernorm"))?,
        })
    }

    /// `src (B, HW, D)` the projected feature map, `pos (1, HW, D)` its position embedding,
    /// `query_pos (1, Q, D)` → the last decoder hidden state after the final LayerNorm
    /// `(B, Q, D)`, and the encoder's output `(B, HW, D)`.
    pub fn forward(
        &self,
        src: &Tensor,
        pos: &Tensor,
        query_pos: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let mut memory = src.clone();
        for layer in &self.encoder {
            memory = layer.forward(&memory, pos)?;
        }
        let memory_keys = memory.broadcast_add(pos)?;
        let (b, _, dim) = src.dims3()?;
        let mut x = Tensor::zeros((b, query_pos.dim(1)?, dim), src.dtype(), src.device())?;
        for layer in &self.decoder {
            x = layer.forward(&x, query_pos, &memory, &memory_keys)?;
        }
        Ok((self.decoder_norm.forward(&x)?, memory))
    }
}

/// The sine position embedding of an unpadded `h × w` feature map, `(1, h·w, dim)` row-major:
/// per position, `dim/2` channels for y then `dim/2` for x, each `[sin(p/t0), cos(p/t0),
/// sin(p/t2), cos(p/t2), …]` with `p` the 1-based coordinate normalised to `(0, 2π]` and
/// `t_k = 10000^(k/(dim/2))`, computed in f32 in the order transformers does.
pub fn sine_position_embedding(
    h: usize,
    w: usize,
    dim: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let features = dim / 2;
    let scale = 2.0 * std::f32::consts::PI;
    let normalised = |i: usize, n: usize| (i + 1) as f32 / (n as f32 + 1e-6) * scale;
    let dim_t: Vec<f32> = (0..features)
        .map(|k| 10000f32.powf((2 * (k / 2)) as f32 / features as f32))
        .collect();
    let embed = |p: f32, out: &mut Vec<f32>| {
        for (k, t) in dim_t.iter().enumerate() {
            let v = p / t;
            out.push(if k % 2 == 0 { v.sin() } else { v.cos() });
        }
    };
    let mut data = Vec::with_capacity(h * w * 2 * features);
    for y in 0..h {
        for x in 0..w {
            embed(normalised(y, h), &mut data);
            embed(normalised(x, w), &mut data);
        }
    }
    Tensor::from_vec(data, (1, h * w, 2 * features), device)
}
