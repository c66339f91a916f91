//! The YOLOv8 detection network (ultralytics `yolov8.yaml` layout) with BatchNorm folded into
//! the convolutions, returning raw head outputs and the per-level class-branch features.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::init::DEFAULT_KAIMING_NORMAL;
use candle_nn::{Conv2d, Conv2dConfig, Init, VarBuilder};

use super::arch::{Arch, C2fArch, SppfArch};
use crate::core::sources::FeatureLayer;
use crate::detect::ultralytics::{layer_list, Taps, YoloNetwork, YoloOutput};
use crate::detect::WeightFile;
use crate::error::Result;
use crate::nn::{Activation, FusedConv, MapLayout};

/// ultralytics `Conv` uses BatchNorm2d(eps=1e-3).
const BN_EPS: f64 = 1e-3;

/// Conv2d without bias + BatchNorm (folded at load) + SiLU; padding k/2.
#[derive(Debug, Clone)]
struct ConvBlock {
    conv: FusedConv,
}

impl ConvBlock {
    fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
    ) -> candle_core::Result<Self> {
        let config = Conv2dConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        };
        let conv = candle_nn::conv2d_no_bias(c_in, c_out, k, config, vb.pp("conv"))?;
        let bn = candle_nn::batch_norm(c_out, BN_EPS, vb.pp("bn"))?;
        Ok(Self {
            conv: FusedConv::new(conv.absorb_bn(&bn)?, Activation::Silu)?,
        })
    }

    fn forward(&self, x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        self.conv.forward(x, layout)
    }

    /// The block on the channel concatenation of `parts`, made only where it must be.
    fn forward_cat(&self, parts: &[&Tensor], layout: MapLayout) -> candle_core::Result<Tensor> {
        self.conv.forward_cat(parts, layout)
    }
}

/// Two 3×3 convolutions of width `c`, with a residual add in the backbone.
#[derive(Debug, Clone)]
struct Bottleneck {
    cv1: ConvBlock,
    cv2: ConvBlock,
    shortcut: bool,
}

impl Bottleneck {
    fn load(vb: VarBuilder, c: usize, shortcut: bool) -> candle_core::Result<Self> {
        Ok(Self {
            cv1: ConvBlock::load(vb.pp("cv1"), c, c, 3, 1)?,
            cv2: ConvBlock::load(vb.pp("cv2"), c, c, 3, 1)?,
            shortcut,
        })
    }

    fn forward(&self, x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        let y = self.cv1.forward(x, layout)?;
        if self.shortcut {
            self.cv2.conv.forward_add(&y, x, layout)
        } else {
            self.cv2.forward(&y, layout)
        }
    }
}

#[derive(Debug, Clone)]
struct C2f {
    cv1: ConvBlock,
    bottlenecks: Vec<Bottleneck>,
    cv2: ConvBlock,
}

impl C2f {
    fn load(vb: VarBuilder, c_in: usize, a: C2fArch, shortcut: bool) -> candle_core::Result<Self> {
        let bottlenecks = (0..a.n)
            .map(|j| Bottleneck::load(vb.pp(format!("bottleneck.{j}")), a.hidden, shortcut))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            cv1: ConvBlock::load(vb.pp("cv1"), c_in, 2 * a.hidden, 1, 1)?,
            bottlenecks,
            cv2: ConvBlock::load(vb.pp("cv2"), (2 + a.n) * a.hidden, a.c_out, 1, 1)?,
        })
    }

    /// C2f on the channel concatenation of `inputs` (the neck's concatenations are folded into
    /// cv1, and the block's own into cv2).
    fn forward(&self, inputs: &[&Tensor], layout: MapLayout) -> candle_core::Result<Tensor> {
        let c = layout.channel_dim();
        let mut ys = self.cv1.forward_cat(inputs, layout)?.chunk(2, c)?;
        for bottleneck in &self.bottlenecks {
            let y = bottleneck.forward(&ys[ys.len() - 1], layout)?;
            ys.push(y);
        }
        self.cv2.forward_cat(&ys.iter().collect::<Vec<_>>(), layout)
    }
}

#[derive(Debug, Clone)]
struct Sppf {
    cv1: ConvBlock,
    cv2: ConvBlock,
}

impl Sppf {
    fn load(vb: VarBuilder, c_in: usize, a: SppfArch) -> candle_core::Result<Self> {
        Ok(Self {
            cv1: ConvBlock::load(vb.pp("cv1"), c_in, a.hidden, 1, 1)?,
            cv2: ConvBlock::load(vb.pp("cv2"), 4 * a.hidden, a.c_out, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        let x = self.cv1.forward(x, layout)?;
        match layout {
            MapLayout::Nhwc => {
                let y1 = crate::nn::pool::max_pool_same(&x, 5)?;
                let y2 = crate::nn::pool::max_pool_same(&y1, 5)?;
                let y3 = crate::nn::pool::max_pool_same(&y2, 5)?;
                self.cv2.forward_cat(&[&x, &y1, &y2, &y3], layout)
            }
            // MaxPool2d(k=5, s=1, p=2), differentiable (the FGSM gradient runs this path).
            MapLayout::Nchw => {
                let y1 = crate::nn::pool::max_pool_same_nchw(&x, 5)?;
                let y2 = crate::nn::pool::max_pool_same_nchw(&y1, 5)?;
                let y3 = crate::nn::pool::max_pool_same_nchw(&y2, 5)?;
                self.cv2
                    .forward(&Tensor::cat(&[&x, &y1, &y2, &y3], 1)?, layout)
            }
        }
    }
}

/// Layers 0–9 (`net.`).
#[derive(Debug, Clone)]
struct Backbone {
    b1_0: ConvBlock,
    b1_1: ConvBlock,
    b2_0: C2f,
    b2_1: ConvBlock,
    b2_2: C2f,
    b3_0: ConvBlock,
    b3_1: C2f,
    b4_0: ConvBlock,
    b4_1: C2f,
    b5_0: Sppf,
}

impl Backbone {
    fn load(vb: VarBuilder, a: &Arch) -> candle_core::Result<Self> {
        Ok(Self {
            b1_0: ConvBlock::load(vb.pp("b1.0"), 3, a.b1_0, 3, 2)?,
            b1_1: ConvBlock::load(vb.pp("b1.1"), a.b1_0, a.b1_1, 3, 2)?,
            b2_0: C2f::load(vb.pp("b2.0"), a.b1_1, a.b2_0, true)?,
            b2_1: ConvBlock::load(vb.pp("b2.1"), a.b2_0.c_out, a.b2_1, 3, 2)?,
            b2_2: C2f::load(vb.pp("b2.2"), a.b2_1, a.b2_2, true)?,
            b3_0: ConvBlock::load(vb.pp("b3.0"), a.b2_2.c_out, a.b3_0, 3, 2)?,
            b3_1: C2f::load(vb.pp("b3.1"), a.b3_0, a.b3_1, true)?,
            b4_0: ConvBlock::load(vb.pp("b4.0"), a.b3_1.c_out, a.b4_0, 3, 2)?,
            b4_1: C2f::load(vb.pp("b4.1"), a.b4_0, a.b4_1, true)?,
            b5_0: Sppf::load(vb.pp("b5.0"), a.b4_1.c_out, a.b5_0)?,
        })
    }

    /// (P3, P4, P5) at strides 8, 16, 32; `taps` keeps the layers it wants (YAML indices).
    fn forward(
        &self,
        x: &Tensor,
        layout: MapLayout,
        taps: &mut Taps,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let l = layout;
        let x = taps.tap(0, self.b1_0.forward(x, l)?)?;
        let x = taps.tap(1, self.b1_1.forward(&x, l)?)?;
        let x = taps.tap(2, self.b2_0.forward(&[&x], l)?)?;
        let x = taps.tap(3, self.b2_1.forward(&x, l)?)?;
        let p3 = taps.tap(4, self.b2_2.forward(&[&x], l)?)?;
        let x = taps.tap(5, self.b3_0.forward(&p3, l)?)?;
        let p4 = taps.tap(6, self.b3_1.forward(&[&x], l)?)?;
        let x = taps.tap(7, self.b4_0.forward(&p4, l)?)?;
        let x = taps.tap(8, self.b4_1.forward(&[&x], l)?)?;
        let p5 = taps.tap(9, self.b5_0.forward(&x, l)?)?;
        Ok((p3, p4, p5))
    }
}

/// Layers 10–21 (`fpn.`): top-down then bottom-up path aggregation.
#[derive(Debug, Clone)]
struct Neck {
    n1: C2f,
    n2: C2f,
    n3: ConvBlock,
    n4: C2f,
    n5: ConvBlock,
    n6: C2f,
}

/// Nearest-neighbour 2× upsampling.
fn upsample2(x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
    match layout {
        MapLayout::Nchw => crate::nn::pool::upsample2_nchw(x),
        MapLayout::Nhwc => crate::nn::pool::upsample2(x),
    }
}

impl Neck {
    fn load(vb: VarBuilder, a: &Arch) -> candle_core::Result<Self> {
        let (p3, p4, p5) = (a.b2_2.c_out, a.b3_1.c_out, a.b5_0.c_out);
        Ok(Self {
            n1: C2f::load(vb.pp("n1"), p5 + p4, a.n1, false)?,
            n2: C2f::load(vb.pp("n2"), a.n1.c_out + p3, a.n2, false)?,
            n3: ConvBlock::load(vb.pp("n3"), a.n2.c_out, a.n3, 3, 2)?,
            n4: C2f::load(vb.pp("n4"), a.n3 + a.n1.c_out, a.n4, false)?,
            n5: ConvBlock::load(vb.pp("n5"), a.n4.c_out, a.n5, 3, 2)?,
            n6: C2f::load(vb.pp("n6"), a.n5 + p5, a.n6, false)?,
        })
    }

    /// Head inputs (layers 15, 18, 21). Concat orders follow `yolov8.yaml`.
    fn forward(
        &self,
        (p3, p4, p5): (&Tensor, &Tensor, &Tensor),
        l: MapLayout,
        taps: &mut Taps,
    ) -> candle_core::Result<[Tensor; 3]> {
        let n1 = taps.tap(12, self.n1.forward(&[&upsample2(p5, l)?, p4], l)?)?;
        let n2 = taps.tap(15, self.n2.forward(&[&upsample2(&n1, l)?, p3], l)?)?;
        let n3 = taps.tap(16, self.n3.forward(&n2, l)?)?;
        let n4 = taps.tap(18, self.n4.forward(&[&n3, &n1], l)?)?;
        let n5 = taps.tap(19, self.n5.forward(&n4, l)?)?;
        let n6 = taps.tap(21, self.n6.forward(&[&n5, p5], l)?)?;
        Ok([n2, n4, n6])
    }
}

/// One Detect branch of one level: two 3×3 ConvBlocks then a 1×1 conv with bias, whose weights
/// are also kept as the linear map they are so that the class head can be handed out as (W, b).
#[derive(Debug, Clone)]
struct Branch {
    cv0: ConvBlock,
    cv1: ConvBlock,
    projection: FusedConv,
    /// `(c_out, hidden)`.
    weight: Tensor,
    /// `(c_out,)`.
    bias: Tensor,
}

impl Branch {
    fn load(vb: VarBuilder, c_in: usize, hidden: usize, c_out: usize) -> candle_core::Result<Self> {
        let weight =
            vb.get_with_hints((c_out, hidden, 1, 1), "2.weight", DEFAULT_KAIMING_NORMAL)?;
        let bound = 1. / (hidden as f64).sqrt();
        let bias = vb.get_with_hints(
            c_out,
            "2.bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let conv = Conv2d::new(weight.clone(), Some(bias.clone()), Conv2dConfig::default());
        Ok(Self {
            cv0: ConvBlock::load(vb.pp("0"), c_in, hidden, 3, 1)?,
            cv1: ConvBlock::load(vb.pp("1"), hidden, hidden, 3, 1)?,
            projection: FusedConv::new(conv, Activation::Identity)?,
            weight: weight.reshape((c_out, hidden))?,
            bias,
        })
    }

    /// Input of the final 1×1 conv.
    fn features(&self, x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        self.cv1.forward(&self.cv0.forward(x, layout)?, layout)
    }

    /// The final 1×1 conv, flattened over positions: `(B, c_out, H·W)`.
    fn project(&self, features: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        let y = self.projection.forward(features, layout)?;
        match layout {
            MapLayout::Nchw => y.flatten_from(2),
            MapLayout::Nhwc => y.flatten(1, 2)?.transpose(1, 2),
        }
    }
}

/// Layer 22 (`head.`): per level a box branch (`cv2`) and a class branch (`cv3`).
#[derive(Debug, Clone)]
struct Head {
    boxes: Vec<Branch>,
    classes: Vec<Branch>,
}

impl Head {
    fn load(vb: VarBuilder, a: &Arch) -> candle_core::Result<Self> {
        let h = a.head;
        let channels = a.level_channels();
        let boxes = (0..3)
            .map(|i| {
                let vb = vb.pp(format!("cv2.{i}"));
                Branch::load(vb, channels[i], h.box_hidden, 4 * h.reg_max)
            })
            .collect::<candle_core::Result<_>>()?;
        let classes = (0..3)
            .map(|i| Branch::load(vb.pp(format!("cv3.{i}")), channels[i], h.cls_hidden, h.nc))
            .collect::<candle_core::Result<_>>()?;
        // The DFL weights are the fixed bins 0..reg_max and `decode_boxes` uses them directly;
        // the tensor is only requested so that files lacking it are rejected as incomplete.
        vb.get_with_hints((1, h.reg_max, 1, 1), "dfl.conv.weight", Init::Const(0.))?;
        Ok(Self { boxes, classes })
    }
}

/// YOLOv8 detection network.
#[derive(Debug, Clone)]
pub struct YoloV8 {
    backbone: Backbone,
    neck: Neck,
    head: Head,
    arch: Arch,
    /// Channels-last with the fused convolution on CPU, Candle's channels-first elsewhere.
    layout: MapLayout,
    /// The safetensors `__metadata__` (class names under `names`, a JSON list); empty for
    /// models built with [`YoloV8::load`].
    pub metadata: HashMap<String, String>,
}

impl YoloV8 {
    /// Builds the network from `vb` in Candle naming (use `rename_f` with
    /// [`Naming::file_name`](super::arch::Naming::file_name) for ultralytics names).
    pub fn load(vb: VarBuilder, arch: &Arch) -> Result<Self> {
        Ok(Self {
            backbone: Backbone::load(vb.pp("net"), arch)?,
            neck: Neck::load(vb.pp("fpn"), arch)?,
            head: Head::load(vb.pp("head"), arch)?,
            arch: arch.clone(),
            layout: MapLayout::for_device(vb.device()),
            metadata: HashMap::new(),
        })
    }

    /// Loads a safetensors file in either naming convention and any float dtype, computing
    /// in F32 on `device`. The architecture is inferred from the tensor shapes.
    pub fn from_safetensors(path: &Path, device: &Device) -> Result<Self> {
        Self::from_weights(WeightFile::safetensors(path)?, device)
    }

    /// [`YoloV8::from_safetensors`] for an opened weight file (safetensors or checkpoint).
    pub fn from_weights(file: WeightFile, device: &Device) -> Result<Self> {
        let (arch, naming) = Arch::infer(&file.shapes, &file.path)?;
        let metadata = file.metadata.clone();
        let rename = Box::new(move |name: &str| naming.file_name(name));
        let (index, vb) = file.var_builder(rename, device);
        let model = Self::load(vb, &arch).map_err(|e| index.take_failure().unwrap_or(e))?;
        Ok(Self { metadata, ..model })
    }

    /// `x`: `(B, 3, H, W)` F32, H and W multiples of 32.
    pub fn forward(&self, x: &Tensor) -> Result<YoloOutput> {
        self.forward_keeping(x, &[])
    }

    /// [`YoloV8::forward`], also keeping the maps of layers `keep` (YAML indices).
    pub fn forward_keeping(&self, x: &Tensor, keep: &[usize]) -> Result<YoloOutput> {
        self.forward_in(x, keep, self.layout)
    }

    fn forward_in(&self, x: &Tensor, keep: &[usize], l: MapLayout) -> Result<YoloOutput> {
        let (_, _, h, w) = x.dims4()?;
        if h % 32 != 0 || w % 32 != 0 {
            return Err(candle_core::Error::Msg(format!(
                "YOLOv8 input is {h}×{w}; height and width must be multiples of 32"
            ))
            .into());
        }
        let mut taps = Taps::new(keep, l);
        let (p3, p4, p5) = self.backbone.forward(&l.from_nchw(x)?, l, &mut taps)?;
        let neck = self.neck.forward((&p3, &p4, &p5), l, &mut taps)?;
        let (mut box_logits, mut cls_logits) = (Vec::new(), Vec::new());
        let (mut cls_features, mut level_shapes) = (Vec::new(), Vec::new());
        for ((x, boxes), classes) in neck.iter().zip(&self.head.boxes).zip(&self.head.classes) {
            box_logits.push(boxes.project(&boxes.features(x, l)?, l)?);
            let features = classes.features(x, l)?;
            cls_logits.push(classes.project(&features, l)?);
            cls_features.push(l.to_nhwc(&features)?);
            level_shapes.push(l.spatial(x)?);
        }
        Ok(YoloOutput {
            box_logits: crate::nn::cat_levels(&box_logits)?,
            cls_logits: crate::nn::cat_levels(&cls_logits)?,
            cls_features,
            neck: neck
                .iter()
                .map(|n| l.to_nhwc(n))
                .collect::<candle_core::Result<_>>()?,
            level_shapes,
            reg_max: self.arch.head.reg_max,
            kept: taps.into_kept(),
        })
    }

    /// The layout the forward pass runs in.
    pub fn layout(&self) -> MapLayout {
        self.layout
    }

    /// Switches between the fused channels-last CPU path and Candle's own ops (the reference;
    /// the channels-last path needs a model loaded on the CPU).
    pub fn set_layout(&mut self, layout: MapLayout) {
        self.layout = layout;
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    pub fn strides(&self) -> [usize; 3] {
        [8, 16, 32]
    }

    pub fn nc(&self) -> usize {
        self.arch.head.nc
    }

    /// Dimension of the per-box class-branch feature (ultralytics `c3`).
    pub fn feature_dim(&self) -> usize {
        self.arch.head.cls_hidden
    }

    /// Per level the linear class head `(W (nc, c3), b (nc))` of `cv3[i].2`:
    /// logits = W·feature + b.
    pub fn class_head(&self) -> Vec<(Tensor, Tensor)> {
        self.head
            .classes
            .iter()
            .map(|branch| (branch.weight.clone(), branch.bias.clone()))
            .collect()
    }
}

/// `(YAML index, stride)` of the layers of `yolov8.yaml` after 9 whose outputs exist.
const LAYERS: [(usize, usize); 6] = [(12, 16), (15, 8), (16, 16), (18, 16), (19, 32), (21, 32)];

impl YoloNetwork for YoloV8 {
    /// YOLOv8 has the one-to-many head only; the detector never asks for another.
    fn forward_keeping(&self, x: &Tensor, _one2one: bool, keep: &[usize]) -> Result<YoloOutput> {
        YoloV8::forward_keeping(self, x, keep)
    }

    fn forward_nchw(&self, x: &Tensor, _one2one: bool) -> Result<YoloOutput> {
        self.forward_in(x, &[], MapLayout::Nchw)
    }

    fn feature_layers(&self) -> Vec<FeatureLayer> {
        layer_list(&LAYERS)
    }

    fn nc(&self) -> usize {
        self.arch.head.nc
    }

    fn strides(&self) -> [usize; 3] {
        [8, 16, 32]
    }

    fn class_head(&self, one2one: bool) -> Option<Vec<(Tensor, Tensor)>> {
        (!one2one).then(|| YoloV8::class_head(self))
    }

    fn set_layout(&mut self, layout: MapLayout) {
        YoloV8::set_layout(self, layout)
    }
}
