//! `DetrForObjectDetection`: ResNet trunk, 1×1 input projection, transformer, class and box
//! heads, returning per query the logits, the box and the decoder feature the heads read.

use candle_core::{Module, Tensor};
use candle_nn::{conv2d, linear, Conv2d, Linear, VarBuilder};

use super::config::DetrConfig;
use super::resnet::ResNet;
use super::transformer::{sine_position_embedding, Transformer};
use super::weights::WeightIndex;
use crate::core::sources::FeatureLayer;
use crate::error::{Error, Result};

/// Per query outputs, batch first.
pub struct DetrOutput {
    /// `(B, Q, classes + 1)`, pre-softmax; the last column is no-object.
    pub logits: Tensor,
    /// `(B, Q, 4)` normalised `(cx, cy, w, h)` relative to the unpadded input.
    pub boxes: Tensor,
    /// `(B, Q, D)` the last decoder hidden state after the decoder's final LayerNorm: the
    /// input of the class and box heads.
    pub features: Tensor,
    /// The maps of the layers asked to be kept, `(name, (B, H, W, C), stride)`.
    pub kept: Vec<(String, Tensor, usize)>,
}

/// The backbone stages' names (torchvision's and timm's), then the encoder's output map.
const STAGES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];
const ENCODER: &str = "encoder";

pub struct DetrModel {
    backbone: ResNet,
    input_projection: Conv2d,
    query_pos: Tensor,
    transformer: Transformer,
    class_head: Linear,
    bbox_layers: Vec<Linear>,
    dim: usize,
    classes: usize,
}

impl DetrModel {
    /// `vb` at the root of the checkpoint; `index` gives the backbone's widths and depth.
    pub fn load(vb: VarBuilder, index: &WeightIndex, config: &DetrConfig) -> Result<Self> {
        let dim = config.d_model;
        let backbone = ResNet::load(
            vb.pp("model.backbone.conv_encoder.model"),
            index,
            &config.backbone,
        )?;
        let input_projection = conv2d(
            backbone.out_channels(),
            dim,
            1,
            Default::default(),
            vb.pp("model.input_projection"),
        )?;
        let query_pos = vb
            .get(
                (config.num_queries, dim),
                "model.query_position_embeddings.weight",
            )?
            .unsqueeze(0)?;
        let transformer = Transformer::load(&vb.pp("model"), config)?;
        // The class count is the head's, less the no-object row; id2label must fit in it.
        let rows = index.shape("class_labels_classifier.weight")?[0];
        let classes = rows.saturating_sub(1);
        let named = config
            .id2label
            .keys()
            .next_back()
            .map_or(0, |id| id.saturating_add(1));
        if rows < 2 || named > classes {
            return Err(Error::BadModel {
                path: index.path().to_path_buf(),
                reason: format!(
                    "config.json id2label names {} classes, the weights' class_labels_classifier has {rows} rows ({} classes + no-object)",
                    named,
                    classes
                ),
            });
        }
        let class_head = linear(dim, rows, vb.pp("class_labels_classifier"))?;
        let bbox_layers = [(dim, dim), (dim, dim), (dim, 4)]
            .iter()
            .enumerate()
            .map(|(i, &(a, b))| linear(a, b, vb.pp(format!("bbox_predictor.layers.{i}"))))
            .collect::<candle_core::Result<_>>()?;
        Ok(DetrModel {
            backbone,
            input_projection,
            query_pos,
            transformer,
            class_head,
            bbox_layers,
            dim,
            classes,
        })
    }

    /// `pixels (B, 3, H, W)`, normalised, unpadded.
    pub fn forward(&self, pixels: &Tensor) -> Result<DetrOutput> {
        self.forward_keeping(pixels, &[])
    }

    /// The layers whose maps [`DetrModel::forward_keeping`] can keep: the backbone stages and
    /// the transformer encoder's output (at C5's stride).
    pub fn feature_layers(&self) -> Vec<FeatureLayer> {
        let strides = self.backbone.strides();
        let c5 = strides.last().copied().unwrap_or(32);
        STAGES
            .iter()
            .zip(strides)
            .map(|(name, &stride)| (name.to_string(), stride))
            .chain([(ENCODER.to_string(), c5)])
            .map(|(name, stride)| FeatureLayer { name, stride })
            .collect()
    }

    /// [`DetrModel::forward`], also keeping the maps of the layers named in `keep` (among
    /// [`DetrModel::feature_layers`]).
    pub fn forward_keeping(&self, pixels: &Tensor, keep: &[String]) -> Result<DetrOutput> {
        let stages: Vec<usize> = (0..STAGES.len())
            .filter(|&s| keep.iter().any(|k| k == STAGES[s]))
            .collect();
        let (c5, stage_maps) = self.backbone.forward(pixels, &stages)?;
        let strides = self.backbone.strides();
        let mut kept: Vec<(String, Tensor, usize)> = stage_maps
            .into_iter()
            .map(|(s, map)| (STAGES[s].to_string(), map, strides[s]))
            .collect();
        let projected = self.input_projection.forward(&c5)?;
        let (b, _, h, w) = projected.dims4()?;
        let src = projected.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
        let pos = sine_position_embedding(h, w, self.dim, pixels.device())?;
        let (features, memory) = self.transformer.forward(&src, &pos, &self.query_pos)?;
        if keep.iter().any(|k| k == ENCODER) {
            let c5_stride = strides.last().copied().unwrap_or(32);
            let map = memory.reshape((b, h, w, self.dim))?;
            kept.push((ENCODER.to_string(), map, c5_stride));
        }
        let logits = self.class_head.forward(&features)?;
        let mut x = features.clone();
        for (i, layer) in self.bbox_layers.iter().enumerate() {
            x = layer.forward(&x)?;
            if i + 1 < self.bbox_layers.len() {
                x = x.relu()?;
            }
        }
        Ok(DetrOutput {
            logits,
            boxes: candle_nn::ops::sigmoid(&x)?,
            features,
            kept,
        })
    }

    /// Object classes, without no-object.
    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn feature_dim(&self) -> usize {
        self.dim
    }

    /// The class head `(W (classes + 1, D), b (classes + 1))`, no-object last.
    pub fn class_head(&self) -> (Tensor, Option<Tensor>) {
        (
            self.class_head.weight().clone(),
            self.class_head.bias().cloned(),
        )
    }
}
