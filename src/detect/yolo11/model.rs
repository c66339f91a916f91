//! The YOLO11 / YOLO26 detection network (ultralytics `yolo11.yaml`, `yolo26.yaml`): one graph,
//! layers 0–23, built from ultralytics state-dict names with BatchNorm folded.
//!
//! YOLO26 is this graph with three switches, all read from the file: its SPPF (unactivated
//! `cv1`, residual), one box bin per side (`reg_max` 1, no DFL) and a one-to-one head copy.

use candle_core::Tensor;
use candle_nn::init::DEFAULT_KAIMING_NORMAL;
use candle_nn::{Conv2d, Conv2dConfig};

use super::blocks::{C2Psa, C3k2, ConvBlock, Sppf, Weights};
use crate::core::sources::FeatureLayer;
use crate::detect::ultralytics::{layer_list, Taps, YoloNetwork, YoloOutput};
use crate::error::Result;
use crate::nn::{Activation, FusedConv, MapLayout};

type CResult<T> = candle_core::Result<T>;

/// Layers 0–10: P3 (layer 4), P4 (layer 6) and P5 (layer 10).
#[derive(Debug, Clone)]
struct Backbone {
    convs: [ConvBlock; 5],
    blocks: [C3k2; 4],
    sppf: Sppf,
    psa: C2Psa,
}

impl Backbone {
    fn load(w: &Weights, yolo26: bool) -> CResult<Self> {
        let conv = |i: usize| ConvBlock::load(&w.pp(i), 2, false, Activation::Silu);
        let c3k2 = |i: usize| C3k2::load(&w.pp(i));
        Ok(Self {
            convs: [conv(0)?, conv(1)?, conv(3)?, conv(5)?, conv(7)?],
            blocks: [c3k2(2)?, c3k2(4)?, c3k2(6)?, c3k2(8)?],
            sppf: Sppf::load(&w.pp(9), yolo26)?,
            psa: C2Psa::load(&w.pp(10))?,
        })
    }

    /// `taps` keeps the layers it wants (YAML indices).
    fn forward(&self, x: &Tensor, l: MapLayout, taps: &mut Taps) -> CResult<[Tensor; 3]> {
        let [c0, c1, c3, c5, c7] = &self.convs;
        let [b2, b4, b6, b8] = &self.blocks;
        let x = taps.tap(0, c0.forward(x, l)?)?;
        let x = taps.tap(1, c1.forward(&x, l)?)?;
        let x = taps.tap(2, b2.forward(&[&x], l)?)?;
        let x = taps.tap(3, c3.forward(&x, l)?)?;
        let p3 = taps.tap(4, b4.forward(&[&x], l)?)?;
        let x = taps.tap(5, c5.forward(&p3, l)?)?;
        let p4 = taps.tap(6, b6.forward(&[&x], l)?)?;
        let x = taps.tap(7, c7.forward(&p4, l)?)?;
        let x = taps.tap(8, b8.forward(&[&x], l)?)?;
        let x = taps.tap(9, self.sppf.forward(&x, l)?)?;
        let p5 = taps.tap(10, self.psa.forward(&x, l)?)?;
        Ok([p3, p4, p5])
    }
}

/// Layers 11–22: top-down then bottom-up; the head inputs are layers 16, 19 and 22.
#[derive(Debug, Clone)]
struct Neck {
    n13: C3k2,
    n16: C3k2,
    n17: ConvBlock,
    n19: C3k2,
    n20: ConvBlock,
    n22: C3k2,
}

fn upsample2(x: &Tensor, l: MapLayout) -> CResult<Tensor> {
    match l {
        // A broadcast, whose backward Candle gets right (the FGSM gradient runs this path).
        MapLayout::Nchw => crate::nn::pool::upsample2_nchw(x),
        MapLayout::Nhwc => crate::nn::pool::upsample2(x),
    }
}

impl Neck {
    fn load(w: &Weights) -> CResult<Self> {
        let down = |i: usize| ConvBlock::load(&w.pp(i), 2, false, Activation::Silu);
        Ok(Self {
            n13: C3k2::load(&w.pp(13))?,
            n16: C3k2::load(&w.pp(16))?,
            n17: down(17)?,
            n19: C3k2::load(&w.pp(19))?,
            n20: down(20)?,
            n22: C3k2::load(&w.pp(22))?,
        })
    }

    /// Concat orders follow the YAML: `[-1, 6]`, `[-1, 4]`, `[-1, 13]`, `[-1, 10]`.
    fn forward(
        &self,
        [p3, p4, p5]: &[Tensor; 3],
        l: MapLayout,
        taps: &mut Taps,
    ) -> CResult<[Tensor; 3]> {
        let n13 = taps.tap(13, self.n13.forward(&[&upsample2(p5, l)?, p4], l)?)?;
        let n16 = taps.tap(16, self.n16.forward(&[&upsample2(&n13, l)?, p3], l)?)?;
        let n17 = taps.tap(17, self.n17.forward(&n16, l)?)?;
        let n19 = taps.tap(19, self.n19.forward(&[&n17, &n13], l)?)?;
        let n20 = taps.tap(20, self.n20.forward(&n19, l)?)?;
        let n22 = taps.tap(22, self.n22.forward(&[&n20, p5], l)?)?;
        Ok([n16, n19, n22])
    }
}

/// The last 1×1 conv of a branch, also kept as the linear map `(W, b)` it is.
#[derive(Debug, Clone)]
struct Projection {
    conv: FusedConv,
    weight: Tensor,
    bias: Tensor,
}

impl Projection {
    fn load(w: &Weights) -> CResult<Self> {
        let [c_out, c_in, _, _] = w.shape("weight")?[..] else {
            candle_core::bail!("projection weight is not 4-d");
        };
        let weight =
            w.vb.get_with_hints((c_out, c_in, 1, 1), "weight", DEFAULT_KAIMING_NORMAL)?;
        let bias =
            w.vb.get_with_hints(c_out, "bias", candle_nn::Init::Const(0.))?;
        let conv = Conv2d::new(weight.clone(), Some(bias.clone()), Conv2dConfig::default());
        Ok(Self {
            conv: FusedConv::new(conv, Activation::Identity)?,
            weight: weight.reshape((c_out, c_in))?,
            bias,
        })
    }

    /// `(B, c_out, H·W)`.
    fn forward(&self, features: &Tensor, l: MapLayout) -> CResult<Tensor> {
        let y = self.conv.forward(features, l)?;
        match l {
            MapLayout::Nchw => y.flatten_from(2),
            MapLayout::Nhwc => y.flatten(1, 2)?.transpose(1, 2),
        }
    }
}

/// One level of one branch: the convolutions before the last 1×1, then the 1×1.
#[derive(Debug, Clone)]
struct Branch {
    convs: Vec<ConvBlock>,
    projection: Projection,
}

impl Branch {
    /// A box branch `cv2.i`: `Conv 3×3, Conv 3×3, Conv2d 1×1`.
    fn boxes(w: &Weights) -> CResult<Self> {
        Ok(Self {
            convs: vec![ConvBlock::silu(&w.pp(0))?, ConvBlock::silu(&w.pp(1))?],
            projection: Projection::load(&w.pp(2))?,
        })
    }

    /// A class branch `cv3.i`: `(DWConv 3×3, Conv 1×1)` twice, then `Conv2d 1×1`.
    fn classes(w: &Weights) -> CResult<Self> {
        let dw = |name: &str| ConvBlock::load(&w.pp(name), 1, true, Activation::Silu);
        Ok(Self {
            convs: vec![
                dw("0.0")?,
                ConvBlock::silu(&w.pp("0.1"))?,
                dw("1.0")?,
                ConvBlock::silu(&w.pp("1.1"))?,
            ],
            projection: Projection::load(&w.pp(2))?,
        })
    }

    /// The input of the last 1×1 conv.
    fn features(&self, x: &Tensor, l: MapLayout) -> CResult<Tensor> {
        self.convs
            .iter()
            .try_fold(x.clone(), |x, conv| conv.forward(&x, l))
    }
}

/// One head's outputs, as in [`YoloOutput`].
struct HeadOutput {
    box_logits: Tensor,
    cls_logits: Tensor,
    cls_features: Vec<Tensor>,
}

/// One head (one-to-many or one-to-one): a box and a class branch per level.
#[derive(Debug, Clone)]
struct Head {
    boxes: Vec<Branch>,
    classes: Vec<Branch>,
}

impl Head {
    fn load(w: &Weights, boxes: &str, classes: &str) -> CResult<Self> {
        Ok(Self {
            boxes: (0..3)
                .map(|i| Branch::boxes(&w.pp(format!("{boxes}.{i}"))))
                .collect::<CResult<_>>()?,
            classes: (0..3)
                .map(|i| Branch::classes(&w.pp(format!("{classes}.{i}"))))
                .collect::<CResult<_>>()?,
        })
    }

    fn forward(&self, neck: &[Tensor; 3], l: MapLayout) -> CResult<HeadOutput> {
        let (mut box_logits, mut cls_logits, mut cls_features) = (vec![], vec![], vec![]);
        for ((x, boxes), classes) in neck.iter().zip(&self.boxes).zip(&self.classes) {
            box_logits.push(boxes.projection.forward(&boxes.features(x, l)?, l)?);
            let features = classes.features(x, l)?;
            cls_logits.push(classes.projection.forward(&features, l)?);
            cls_features.push(l.to_nhwc(&features)?);
        }
        Ok(HeadOutput {
            box_logits: crate::nn::cat_levels(&box_logits)?,
            cls_logits: crate::nn::cat_levels(&cls_logits)?,
            cls_features,
        })
    }

    fn class_head(&self) -> Vec<(Tensor, Tensor)> {
        let linear = |b: &Branch| (b.projection.weight.clone(), b.projection.bias.clone());
        self.classes.iter().map(linear).collect()
    }
}

/// The YOLO11 / YOLO26 network.
#[derive(Debug, Clone)]
pub struct Yolo11 {
    backbone: Backbone,
    neck: Neck,
    one2many: Head,
    one2one: Option<Head>,
    nc: usize,
    reg_max: usize,
    layout: MapLayout,
}

impl Yolo11 {
    /// Builds the network from ultralytics names (`model.<layer>.…`); `yolo26` selects its SPPF.
    pub fn load(w: &Weights, yolo26: bool) -> Result<Self> {
        let w = w.pp("model");
        let detect = w.pp(23);
        let one2many = Head::load(&detect, "cv2", "cv3")?;
        let one2one = match detect.has_under("one2one_cv2") {
            true => Some(Head::load(&detect, "one2one_cv2", "one2one_cv3")?),
            false => None,
        };
        let box_out = detect.conv_out("cv2.0.2.weight")?;
        if box_out > 4 {
            // The DFL bins are fixed (0..reg_max) and the decode uses them directly; the tensor
            // is requested so that a file lacking it is refused as incomplete.
            let bins = (1, box_out / 4, 1, 1);
            let init = candle_nn::Init::Const(0.);
            detect.vb.get_with_hints(bins, "dfl.conv.weight", init)?;
        }
        Ok(Self {
            backbone: Backbone::load(&w, yolo26)?,
            neck: Neck::load(&w)?,
            nc: detect.conv_out("cv3.0.2.weight")?,
            reg_max: box_out / 4,
            one2many,
            one2one,
            layout: MapLayout::for_device(w.vb.device()),
        })
    }

    /// Dimension of the per-box class-branch feature (ultralytics `c3`).
    pub fn feature_dim(&self) -> CResult<usize> {
        self.one2many.classes[0].projection.weight.dim(1)
    }

    pub fn has_one2one(&self) -> bool {
        self.one2one.is_some()
    }
}

/// `(YAML index, stride)` of the layers of `yolo11.yaml` / `yolo26.yaml` after 9 whose
/// outputs exist.
const LAYERS: [(usize, usize); 7] = [
    (10, 32),
    (13, 16),
    (16, 8),
    (17, 16),
    (19, 16),
    (20, 32),
    (22, 32),
];

impl YoloNetwork for Yolo11 {
    fn feature_layers(&self) -> Vec<FeatureLayer> {
        layer_list(&LAYERS)
    }

    fn forward_keeping(&self, x: &Tensor, one2one: bool, keep: &[usize]) -> Result<YoloOutput> {
        self.forward_in(x, one2one, keep, self.layout)
    }

    fn forward_nchw(&self, x: &Tensor, one2one: bool) -> Result<YoloOutput> {
        self.forward_in(x, one2one, &[], MapLayout::Nchw)
    }

    fn nc(&self) -> usize {
        self.nc
    }

    fn strides(&self) -> [usize; 3] {
        [8, 16, 32]
    }

    fn class_head(&self, one2one: bool) -> Option<Vec<(Tensor, Tensor)>> {
        match one2one {
            false => Some(self.one2many.class_head()),
            true => self.one2one.as_ref().map(Head::class_head),
        }
    }

    fn set_layout(&mut self, layout: MapLayout) {
        self.layout = layout;
    }
}

impl Yolo11 {
    /// The forward pass in layout `l`, keeping the maps of layers `keep`.
    fn forward_in(
        &self,
        x: &Tensor,
        one2one: bool,
        keep: &[usize],
        l: MapLayout,
    ) -> Result<YoloOutput> {
        let (_, _, h, w) = x.dims4()?;
        if h % 32 != 0 || w % 32 != 0 {
            return Err(candle_core::Error::Msg(format!(
                "network input is {h}×{w}; height and width must be multiples of 32"
            ))
            .into());
        }
        let mut taps = Taps::new(keep, l);
        let backbone = self.backbone.forward(&l.from_nchw(x)?, l, &mut taps)?;
        let neck = self.neck.forward(&backbone, l, &mut taps)?;
        let head = match (&self.one2one, one2one) {
            (Some(head), true) => head,
            _ => &self.one2many,
        };
        let out = head.forward(&neck, l)?;
        Ok(YoloOutput {
            box_logits: out.box_logits,
            cls_logits: out.cls_logits,
            cls_features: out.cls_features,
            level_shapes: neck.iter().map(|n| l.spatial(n)).collect::<CResult<_>>()?,
            neck: neck.iter().map(|n| l.to_nhwc(n)).collect::<CResult<_>>()?,
            reg_max: self.reg_max,
            kept: taps.into_kept(),
        })
    }
}
