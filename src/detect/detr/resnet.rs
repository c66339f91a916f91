//! The ResNet-50/101 trunk of DETR up to C5, with every frozen BatchNorm folded into its
//! convolution at load. Widths come from the weights, so narrowed trunks load too.

use candle_core::Tensor;
use candle_nn::{Conv2dConfig, VarBuilder};

use super::config::{BackboneConfig, BackboneNaming};
use super::weights::WeightIndex;
use crate::error::{Error, Result};
use crate::nn::{Activation, FusedConv, MapLayout};

/// transformers' `DetrFrozenBatchNorm2d` adds this before the square root.
const BN_EPS: f64 = 1e-5;

/// Tensor paths of the two namings, relative to `model.backbone.conv_encoder.model`.
struct Names(BackboneNaming);

impl Names {
    /// (convolution, batch norm) of the stem.
    fn stem(&self) -> (String, String) {
        match self.0 {
            BackboneNaming::Timm => ("conv1".into(), "bn1".into()),
            BackboneNaming::HfResNet => (
                "embedder.embedder.convolution".into(),
                "embedder.embedder.normalization".into(),
            ),
        }
    }

    fn block(&self, stage: usize, block: usize) -> String {
        match self.0 {
            BackboneNaming::Timm => format!("layer{}.{block}", stage + 1),
            BackboneNaming::HfResNet => format!("encoder.stages.{stage}.layers.{block}"),
        }
    }

    /// (convolution, batch norm) of the k-th (0..3) convolution of a block.
    fn conv(&self, k: usize) -> (String, String) {
        match self.0 {
            BackboneNaming::Timm => (format!("conv{}", k + 1), format!("bn{}", k + 1)),
            BackboneNaming::HfResNet => (
                format!("layer.{k}.convolution"),
                format!("layer.{k}.normalization"),
            ),
        }
    }

    fn shortcut(&self) -> (String, String) {
        match self.0 {
            BackboneNaming::Timm => ("downsample.0".into(), "downsample.1".into()),
            BackboneNaming::HfResNet => (
                "shortcut.convolution".into(),
                "shortcut.normalization".into(),
            ),
        }
    }
}

/// A bias-free convolution with its BatchNorm folded in.
fn conv_bn(
    vb: &VarBuilder,
    (conv, bn): (String, String),
    c_in: usize,
    c_out: usize,
    k: usize,
    config: Conv2dConfig,
    act: Activation,
) -> candle_core::Result<FusedConv> {
    let conv = candle_nn::conv2d_no_bias(c_in, c_out, k, config, vb.pp(conv))?;
    let bn = candle_nn::batch_norm(c_out, BN_EPS, vb.pp(bn))?;
    FusedConv::new(conv.absorb_bn(&bn)?, act)
}

struct Bottleneck {
    conv1: FusedConv,
    conv2: FusedConv,
    conv3: FusedConv,
    shortcut: Option<FusedConv>,
}

/// What the bottleneck blocks of one stage are built from.
struct StageShape {
    /// Channels into the stage, in the middle of each block, and out of each block.
    c_in: usize,
    mid: usize,
    c_out: usize,
    /// The first block's stride.
    stride: usize,
    /// DC5's last stage: its 3×3 convolutions dilated by 2, but for the first block's.
    dilated: bool,
    /// Whether the first block strides in its 1×1 (true) or its 3×3 convolution.
    downsample_in_bottleneck: bool,
}

impl Bottleneck {
    /// Block `j` of a stage, `vb` at the block.
    fn load(vb: &VarBuilder, names: &Names, j: usize, stage: &StageShape) -> Result<Self> {
        let StageShape {
            c_in, mid, c_out, ..
        } = *stage;
        let (stride, c_block_in) = if j == 0 {
            (stage.stride, c_in)
        } else {
            (1, c_out)
        };
        let dilation = if stage.dilated && j > 0 { 2 } else { 1 };
        let (stride1, stride3) = if stage.downsample_in_bottleneck {
            (stride, 1)
        } else {
            (1, stride)
        };
        let one = |stride| Conv2dConfig {
            stride,
            ..Default::default()
        };
        let three = Conv2dConfig {
            padding: dilation,
            stride: stride3,
            dilation,
            ..Default::default()
        };
        let shortcut = if j == 0 && (c_block_in != c_out || stride != 1) {
            Some(conv_bn(
                vb,
                names.shortcut(),
                c_block_in,
                c_out,
                1,
                one(stride),
                Activation::Identity,
            )?)
        } else {
            None
        };
        Ok(Bottleneck {
            conv1: conv_bn(
                vb,
                names.conv(0),
                c_block_in,
                mid,
                1,
                one(stride1),
                Activation::Relu,
            )?,
            conv2: conv_bn(vb, names.conv(1), mid, mid, 3, three, Activation::Relu)?,
            conv3: conv_bn(
                vb,
                names.conv(2),
                mid,
                c_out,
                1,
                one(1),
                Activation::Identity,
            )?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        let y = self.conv1.forward(x, layout)?;
        let y = self.conv2.forward(&y, layout)?;
        let y = self.conv3.forward(&y, layout)?;
        let identity = match &self.shortcut {
            Some(conv) => conv.forward(x, layout)?,
            None => x.clone(),
        };
        (y + identity)?.relu()
    }
}

pub struct ResNet {
    stem: FusedConv,
    stages: Vec<Vec<Bottleneck>>,
    /// Input pixels per cell of each stage's output: 4, 8, 16, 32 (16 for a dilated C5).
    strides: Vec<usize>,
    out_channels: usize,
    /// Channels-last with the fused convolution on CPU, Candle's channels-first elsewhere.
    layout: MapLayout,
}

impl ResNet {
    /// `vb` at `model.backbone.conv_encoder.model`; `index` gives the widths and block counts.
    pub fn load(vb: VarBuilder, index: &WeightIndex, config: &BackboneConfig) -> Result<Self> {
        let prefix = "model.backbone.conv_encoder.model";
        let names = Names(config.naming);
        let weight = |name: &str| format!("{prefix}.{name}.weight");
        let shape = |name: &str| index.shape(&weight(name));
        let mismatch = |reason: String| Error::BadModel {
            path: index.path().to_path_buf(),
            reason,
        };

        let found: Vec<usize> = (0..4)
            .map(|s| {
                (0..)
                    .take_while(|&j| {
                        index.contains(&weight(&format!(
                            "{}.{}",
                            names.block(s, j),
                            names.conv(0).0
                        )))
                    })
                    .count()
            })
            .collect();
        if found != config.depths {
            return Err(mismatch(format!(
                "config.json describes a backbone with blocks {:?} per stage, the weights have {found:?}",
                config.depths
            )));
        }

        let stem_width = shape(&names.stem().0)?[0];
        let stem = conv_bn(
            &vb,
            names.stem(),
            3,
            stem_width,
            7,
            Conv2dConfig {
                padding: 3,
                stride: 2,
                ..Default::default()
            },
            Activation::Relu,
        )?;
        let mut c_in = stem_width;
        let mut stages = Vec::new();
        let mut strides = Vec::new();
        for (s, &depth) in config.depths.iter().enumerate() {
            let first = names.block(s, 0);
            let mid = shape(&format!("{first}.{}", names.conv(0).0))?[0];
            let c_out = shape(&format!("{first}.{}", names.conv(2).0))?[0];
            // DC5 (timm `output_stride=16`): the last stage keeps stride 1 and dilates its 3×3
            // convolutions by 2, except the first block's, which keeps the previous dilation.
            let dilated = config.dilation && s == 3;
            let stride = if s == 0 || dilated { 1 } else { 2 };
            strides.push(strides.last().map_or(4, |last| last * stride));
            let shape = StageShape {
                c_in,
                mid,
                c_out,
                stride,
                dilated,
                downsample_in_bottleneck: config.downsample_in_bottleneck,
            };
            let blocks = (0..depth)
                .map(|j| Bottleneck::load(&vb.pp(names.block(s, j)), &names, j, &shape))
                .collect::<Result<Vec<_>>>()?;
            stages.push(blocks);
            c_in = c_out;
        }
        Ok(ResNet {
            stem,
            stages,
            strides,
            out_channels: c_in,
            layout: MapLayout::for_device(vb.device()),
        })
    }

    /// Channels of C5.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The stride of each stage's output (`layer1` … `layer4`).
    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    /// `(B, 3, H, W)` → C5 `(B, C, H/32, W/32)` (H/16, W/16 with DC5), and the outputs of
    /// the stages `keep` asks for (0 = `layer1`), channels-last `(B, H, W, C)`.
    pub fn forward(
        &self,
        x: &Tensor,
        keep: &[usize],
    ) -> candle_core::Result<(Tensor, Vec<(usize, Tensor)>)> {
        let l = self.layout;
        let x = l.to_nchw(&self.stem.forward(&l.from_nchw(x)?, l)?)?;
        // Max-pool 3×3 stride 2 padding 1: after the ReLU every value is ≥ 0, so zero padding
        // gives the maxima that PyTorch's −∞ padding gives.
        let pooled = x
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        let mut x = l.from_nchw(&pooled)?;
        let mut kept = Vec::new();
        for (s, stage) in self.stages.iter().enumerate() {
            for block in stage {
                x = block.forward(&x, l)?;
            }
            if keep.contains(&s) {
                kept.push((s, l.to_nhwc(&x)?));
            }
        }
        Ok((l.to_nchw(&x)?, kept))
    }
}
