//! The blocks of the YOLO11 / YOLO26 graph (ultralytics `nn/modules/block.py`), each built from
//! the widths its own tensors have, so that every scale and custom width loads.

use candle_core::Tensor;
use candle_nn::{Conv2dConfig, VarBuilder};
use std::sync::Arc;

use crate::detect::safetensors_file::WeightIndex;
use crate::error::Error;
use crate::nn::{Activation, FusedConv, MapLayout};

type CResult<T> = candle_core::Result<T>;

/// BatchNorm eps: ultralytics' `initialize_weights` sets 1e-3 on every model it builds.
const BN_EPS: f64 = 1e-3;

/// A `VarBuilder` with the file's table of contents, so that blocks read their widths and
/// depths from the tensors present.
#[derive(Clone)]
pub struct Weights<'a> {
    pub vb: VarBuilder<'a>,
    pub index: Arc<WeightIndex>,
}

impl Weights<'_> {
    pub fn pp(&self, name: impl ToString) -> Self {
        Weights {
            vb: self.vb.pp(name),
            index: self.index.clone(),
        }
    }

    fn full(&self, name: &str) -> String {
        match self.vb.prefix().as_str() {
            "" => name.to_string(),
            prefix => format!("{prefix}.{name}"),
        }
    }

    /// The shape of tensor `name` under this prefix; a missing tensor is a typed error.
    pub fn shape(&self, name: &str) -> CResult<Vec<usize>> {
        let index = &self.index;
        index
            .shape(&self.full(name))
            .map(<[usize]>::to_vec)
            .map_err(|e| index.fail(e))
    }

    pub fn has(&self, name: &str) -> bool {
        self.index.contains(&self.full(name))
    }

    /// Whether any tensor lies under `<prefix>.<name>.`: a block's kind is told by all its
    /// tensors, so that one missing tensor is named rather than mistaken for another kind.
    pub fn has_under(&self, name: &str) -> bool {
        let start = format!("{}.", self.full(name));
        self.index.names().any(|n| n.starts_with(&start))
    }

    /// How many children `<prefix>.<j>.…` there are: the highest index + 1, so that a gap
    /// shows up as a missing tensor.
    pub fn count(&self, name: &str) -> usize {
        let start = format!("{}.", self.full(name));
        self.index
            .names()
            .filter_map(|n| {
                n.strip_prefix(&start)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|j| j + 1)
            .max()
            .unwrap_or(0)
    }

    /// Output channels of the conv weight `name` (`[c_out, c_in / groups, k, k]`).
    pub fn conv_out(&self, name: &str) -> CResult<usize> {
        match self.shape(name)?[..] {
            [c_out, _, k, k2] if k == k2 => Ok(c_out),
            ref found => Err(self.index.fail(Error::WrongShape {
                path: self.index.path().to_path_buf(),
                name: self.full(name),
                found: found.to_vec(),
                expected: "[c_out, c_in, k, k]".to_string(),
            })),
        }
    }
}

/// ultralytics `Conv`: a convolution without bias, BatchNorm (folded at load), an activation;
/// padding k/2. `depthwise` for `DWConv` and the attention's positional conv.
#[derive(Debug, Clone)]
pub struct ConvBlock {
    conv: FusedConv,
}

impl ConvBlock {
    pub fn load(w: &Weights, stride: usize, depthwise: bool, act: Activation) -> CResult<Self> {
        let shape = w.shape("conv.weight")?;
        let (c_out, c_in_per_group, k) = (w.conv_out("conv.weight")?, shape[1], shape[2]);
        let groups = if depthwise { c_out } else { 1 };
        let config = Conv2dConfig {
            padding: k / 2,
            stride,
            groups,
            ..Default::default()
        };
        let vb = &w.vb;
        let conv =
            candle_nn::conv2d_no_bias(c_in_per_group * groups, c_out, k, config, vb.pp("conv"))?;
        let bn = candle_nn::batch_norm(c_out, BN_EPS, vb.pp("bn"))?;
        Ok(Self {
            conv: FusedConv::new(conv.absorb_bn(&bn)?, act)?,
        })
    }

    /// A SiLU `Conv`, dense, stride 1.
    pub fn silu(w: &Weights) -> CResult<Self> {
        Self::load(w, 1, false, Activation::Silu)
    }

    pub fn forward(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        self.conv.forward(x, l)
    }

    pub fn forward_cat(&self, parts: &[&Tensor], l: MapLayout) -> CResult<Tensor> {
        self.conv.forward_cat(parts, l)
    }

    /// `forward(x) + residual`, fused on the channels-last path.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor, l: MapLayout) -> CResult<Tensor> {
        self.conv.forward_add(x, residual, l)
    }
}

/// `Bottleneck`: two convolutions (3×3 in every YOLO11/26 use), a residual when widths agree.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    cv1: ConvBlock,
    cv2: ConvBlock,
    add: bool,
}

impl Bottleneck {
    pub fn load(w: &Weights) -> CResult<Self> {
        let c_in = w.shape("cv1.conv.weight")?[1];
        Ok(Self {
            cv1: ConvBlock::silu(&w.pp("cv1"))?,
            cv2: ConvBlock::silu(&w.pp("cv2"))?,
            add: c_in == w.conv_out("cv2.conv.weight")?,
        })
    }

    pub fn forward(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        let y = self.cv1.forward(x, l)?;
        if self.add {
            self.cv2.forward_add(&y, x, l)
        } else {
            self.cv2.forward(&y, l)
        }
    }
}

/// `C3k`: `cv3(cat(m(cv1(x)), cv2(x)))` with a chain of bottlenecks.
#[derive(Debug, Clone)]
pub struct C3k {
    cv1: ConvBlock,
    cv2: ConvBlock,
    cv3: ConvBlock,
    m: Vec<Bottleneck>,
}

impl C3k {
    pub fn load(w: &Weights) -> CResult<Self> {
        let m = (0..w.count("m"))
            .map(|j| Bottleneck::load(&w.pp(format!("m.{j}"))))
            .collect::<CResult<_>>()?;
        Ok(Self {
            cv1: ConvBlock::silu(&w.pp("cv1"))?,
            cv2: ConvBlock::silu(&w.pp("cv2"))?,
            cv3: ConvBlock::silu(&w.pp("cv3"))?,
            m,
        })
    }

    pub fn forward(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        let mut y = self.cv1.forward(x, l)?;
        for b in &self.m {
            y = b.forward(&y, l)?;
        }
        self.cv3.forward_cat(&[&y, &self.cv2.forward(x, l)?], l)
    }
}

/// `Attention` over the H·W positions of a map (`block.py`, `Attention`).
#[derive(Debug, Clone)]
pub struct Attention {
    qkv: ConvBlock,
    proj: ConvBlock,
    pe: ConvBlock,
    heads: usize,
    key_dim: usize,
    head_dim: usize,
}

impl Attention {
    /// `heads` is ultralytics' `num_heads`, fixed by the width: `max(c / 64, 1)`.
    pub fn load(w: &Weights) -> CResult<Self> {
        let dim = w.conv_out("proj.conv.weight")?;
        let heads = (dim / 64).max(1);
        let head_dim = dim / heads;
        Ok(Self {
            qkv: ConvBlock::load(&w.pp("qkv"), 1, false, Activation::Identity)?,
            proj: ConvBlock::load(&w.pp("proj"), 1, false, Activation::Identity)?,
            pe: ConvBlock::load(&w.pp("pe"), 1, true, Activation::Identity)?,
            heads,
            key_dim: head_dim / 2,
            head_dim,
        })
    }

    /// `x + attention(x)`: PSABlock's residual, added as `proj` stores its output.
    pub fn forward_add(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        let (b, h, w) = match l {
            MapLayout::Nchw => (x.dim(0)?, x.dim(2)?, x.dim(3)?),
            MapLayout::Nhwc => return self.forward_add_nhwc(x),
        };
        let (nh, kd, hd) = (self.heads, self.key_dim, self.head_dim);
        let n = h * w;
        // (B, heads, 2·kd + hd, N), as PyTorch views the NCHW qkv map.
        let qkv = l
            .to_nchw(&self.qkv.forward(x, l)?)?
            .reshape((b, nh, 2 * kd + hd, n))?;
        let q = qkv.narrow(2, 0, kd)?;
        let k = qkv.narrow(2, kd, kd)?.contiguous()?;
        let v = qkv.narrow(2, 2 * kd, hd)?.contiguous()?;
        let scale = (kd as f64).powf(-0.5);
        let attn = (q * scale)?.transpose(2, 3)?.contiguous()?.matmul(&k)?;
        // Candle 0.11 has no backward for its fused softmax; the FGSM gradient runs this path.
        let attn = if attn.track_op() {
            candle_nn::ops::softmax(&attn, candle_core::D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&attn)?
        };
        let y = v.matmul(&attn.transpose(2, 3)?.contiguous()?)?;
        let y = l.from_nchw(&y.reshape((b, nh * hd, h, w))?)?;
        let v = l.from_nchw(&v.reshape((b, nh * hd, h, w))?)?;
        self.proj
            .forward_add(&self.pe.forward_add(&v, &y, l)?, x, l)
    }

    /// [`Self::forward_add`] on a channels-last map, in the orientation that layout wants:
    /// each head's `y` comes out pixels × channels as `attn · v`, so neither the qkv map nor
    /// the N × N attention matrix is transposed (copies made on one thread).
    fn forward_add_nhwc(&self, x: &Tensor) -> CResult<Tensor> {
        let l = MapLayout::Nhwc;
        let (b, h, w, _) = x.dims4()?;
        let (nh, kd, hd) = (self.heads, self.key_dim, self.head_dim);
        // (B, heads, N, 2·kd + hd): each pixel's channels, head by head.
        let qkv = self
            .qkv
            .forward(x, l)?
            .reshape((b, h * w, nh, 2 * kd + hd))?
            .transpose(1, 2)?;
        let q = (qkv.narrow(3, 0, kd)? * (kd as f64).powf(-0.5))?.contiguous()?;
        let k = qkv.narrow(3, kd, kd)?.contiguous()?;
        let v = qkv.narrow(3, 2 * kd, hd)?.contiguous()?;
        let attn = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
        let to_map = |t: &Tensor| t.transpose(1, 2)?.contiguous()?.reshape((b, h, w, nh * hd));
        let (y, v) = (to_map(&attn.matmul(&v)?)?, to_map(&v)?);
        self.proj
            .forward_add(&self.pe.forward_add(&v, &y, l)?, x, l)
    }
}

/// `PSABlock`: attention then a two-layer feed-forward, each with a residual.
#[derive(Debug, Clone)]
pub struct PsaBlock {
    attn: Attention,
    ffn0: ConvBlock,
    ffn1: ConvBlock,
}

impl PsaBlock {
    pub fn load(w: &Weights) -> CResult<Self> {
        Ok(Self {
            attn: Attention::load(&w.pp("attn"))?,
            ffn0: ConvBlock::silu(&w.pp("ffn.0"))?,
            ffn1: ConvBlock::load(&w.pp("ffn.1"), 1, false, Activation::Identity)?,
        })
    }

    pub fn forward(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        let x = self.attn.forward_add(x, l)?;
        self.ffn1.forward_add(&self.ffn0.forward(&x, l)?, &x, l)
    }
}

/// `C2PSA`: half of `cv1`'s channels through PSA blocks, concatenated back.
#[derive(Debug, Clone)]
pub struct C2Psa {
    cv1: ConvBlock,
    cv2: ConvBlock,
    m: Vec<PsaBlock>,
}

impl C2Psa {
    pub fn load(w: &Weights) -> CResult<Self> {
        let m = (0..w.count("m"))
            .map(|j| PsaBlock::load(&w.pp(format!("m.{j}"))))
            .collect::<CResult<_>>()?;
        Ok(Self {
            cv1: ConvBlock::silu(&w.pp("cv1"))?,
            cv2: ConvBlock::silu(&w.pp("cv2"))?,
            m,
        })
    }

    pub fn forward(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        let halves = self.cv1.forward(x, l)?.chunk(2, l.channel_dim())?;
        let mut b = halves[1].contiguous()?;
        for block in &self.m {
            b = block.forward(&b, l)?;
        }
        self.cv2.forward_cat(&[&halves[0].contiguous()?, &b], l)
    }
}

/// One inner block of a `C3k2`, as its tensor names show.
#[derive(Debug, Clone)]
enum C3k2Inner {
    Bottleneck(Bottleneck),
    C3k(Box<C3k>),
    /// A bottleneck then a PSA block (YOLO26's `attn=True`).
    Attention(Bottleneck, Box<PsaBlock>),
}

/// `C3k2`: a C2f whose inner blocks are bottlenecks, `C3k`s or bottleneck + attention.
#[derive(Debug, Clone)]
pub struct C3k2 {
    cv1: ConvBlock,
    cv2: ConvBlock,
    m: Vec<C3k2Inner>,
}

impl C3k2 {
    pub fn load(w: &Weights) -> CResult<Self> {
        let inner = |j: usize| -> CResult<C3k2Inner> {
            let w = w.pp(format!("m.{j}"));
            Ok(if w.has_under("1.attn") {
                C3k2Inner::Attention(
                    Bottleneck::load(&w.pp("0"))?,
                    Box::new(PsaBlock::load(&w.pp("1"))?),
                )
            } else if w.has_under("cv3") || w.has_under("m") {
                C3k2Inner::C3k(Box::new(C3k::load(&w)?))
            } else {
                C3k2Inner::Bottleneck(Bottleneck::load(&w)?)
            })
        };
        Ok(Self {
            cv1: ConvBlock::silu(&w.pp("cv1"))?,
            cv2: ConvBlock::silu(&w.pp("cv2"))?,
            m: (0..w.count("m")).map(inner).collect::<CResult<_>>()?,
        })
    }

    /// On the channel concatenation of `inputs` (the neck's concatenations fold into cv1).
    pub fn forward(&self, inputs: &[&Tensor], l: MapLayout) -> CResult<Tensor> {
        let mut ys = self.cv1.forward_cat(inputs, l)?.chunk(2, l.channel_dim())?;
        for block in &self.m {
            let x = &ys[ys.len() - 1];
            let y = match block {
                C3k2Inner::Bottleneck(b) => b.forward(x, l)?,
                C3k2Inner::C3k(c) => c.forward(x, l)?,
                C3k2Inner::Attention(b, p) => p.forward(&b.forward(x, l)?, l)?,
            };
            ys.push(y);
        }
        self.cv2.forward_cat(&ys.iter().collect::<Vec<_>>(), l)
    }
}

/// `SPPF`: `cv1`, `n` chained 5×5 max pools, `cv2` on the concatenation; YOLO26 leaves `cv1`
/// unactivated and adds a residual (the weights cannot tell: the family does).
#[derive(Debug, Clone)]
pub struct Sppf {
    cv1: ConvBlock,
    cv2: ConvBlock,
    pools: usize,
    residual: bool,
}

impl Sppf {
    pub fn load(w: &Weights, yolo26: bool) -> CResult<Self> {
        let act = if yolo26 {
            Activation::Identity
        } else {
            Activation::Silu
        };
        let hidden = w.conv_out("cv1.conv.weight")?;
        let c_in = w.shape("cv1.conv.weight")?[1];
        let c_out = w.conv_out("cv2.conv.weight")?;
        let pools = w.shape("cv2.conv.weight")?[1] / hidden.max(1) - 1;
        Ok(Self {
            cv1: ConvBlock::load(&w.pp("cv1"), 1, false, act)?,
            cv2: ConvBlock::silu(&w.pp("cv2"))?,
            pools,
            residual: yolo26 && c_in == c_out,
        })
    }

    pub fn forward(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        let mut ys = vec![self.cv1.forward(x, l)?];
        for _ in 0..self.pools {
            let last = &ys[ys.len() - 1];
            let pooled = match l {
                MapLayout::Nhwc => crate::nn::pool::max_pool_same(last, 5)?,
                // Differentiable, unlike Candle's max_pool2d (the FGSM gradient runs this path).
                MapLayout::Nchw => crate::nn::pool::max_pool_same_nchw(last, 5)?,
            };
            ys.push(pooled);
        }
        let parts: Vec<_> = ys.iter().collect();
        if self.residual {
            self.cv2.conv.forward_cat_add(&parts, x, l)
        } else {
            self.cv2.forward_cat(&parts, l)
        }
    }
}
