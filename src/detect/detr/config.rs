//! The part of a Hugging Face DETR `config.json` that the network needs, read with errors that
//! name the file and the field. Both layouts are accepted: the Hub's (`use_timm_backbone`,
//! `backbone: "resnet50"`, `backbone_config: null`) and transformers 5.x's (`backbone_config`
//! with `model_type` `timm_backbone` or `resnet`).

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// How the backbone's tensors are named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackboneNaming {
    /// timm: `conv1`, `bn1`, `layer1.0.conv1`, `layer1.0.downsample.0`.
    Timm,
    /// transformers `ResNetBackbone`: `embedder.embedder.convolution`, `encoder.stages.0.layers.0`.
    HfResNet,
}

/// A ResNet trunk as the config describes it; widths are read from the weights.
#[derive(Clone, Debug, PartialEq)]
pub struct BackboneConfig {
    pub naming: BackboneNaming,
    /// Bottleneck blocks per stage (ResNet-50: 3/4/6/3, ResNet-101: 3/4/23/3).
    pub depths: Vec<usize>,
    /// DC5: the last stage dilated instead of strided (output stride 16).
    pub dilation: bool,
    /// HF ResNet only: the stride sits on the first 1×1 convolution instead of the 3×3.
    pub downsample_in_bottleneck: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct DetrConfig {
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_heads: usize,
    pub decoder_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub num_queries: usize,
    /// `id2label`: class names by id (ids may have gaps; kept sparse, so that an absurd id
    /// costs nothing before the weights refuse it).
    pub id2label: BTreeMap<usize, String>,
    pub backbone: BackboneConfig,
}

struct Fields<'a> {
    path: &'a Path,
    json: &'a Value,
}

impl Fields<'_> {
    fn bad(&self, reason: String) -> Error {
        Error::BadModel {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.bad(format!("`{key}` must be a positive integer, got {v}"))),
        }
    }

    fn str_or<'b>(&'b self, key: &str, default: &'b str) -> Result<&'b str> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.bad(format!("`{key}` must be a string, got {v}"))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("`{key}` must be true or false, got {v}"))),
        }
    }
}

impl DetrConfig {
    /// Reads `config.json` of a model folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| Error::BadModel {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_json(&json, path)
    }

    /// `path` is only used to name the file in errors.
    pub fn from_json(json: &Value, path: &Path) -> Result<Self> {
        let f = Fields { path, json };
        if !json.is_object() {
            return Err(f.bad("expected a JSON object".into()));
        }
        let model_type = f.str_or("model_type", "detr")?;
        if model_type != "detr" {
            return Err(f.bad(format!(
                "`model_type` is `{model_type}`; only `detr` (DetrForObjectDetection) is supported"
            )));
        }
        let activation = f.str_or("activation_function", "relu")?;
        if activation != "relu" {
            return Err(f.bad(format!(
                "`activation_function` `{activation}` is not supported (only relu)"
            )));
        }
        let position = f.str_or("position_embedding_type", "sine")?;
        if position != "sine" {
            return Err(f.bad(format!(
                "`position_embedding_type` `{position}` is not supported (only sine)"
            )));
        }
        Ok(DetrConfig {
            d_model: f.usize_or("d_model", 256)?,
            encoder_layers: f.usize_or("encoder_layers", 6)?,
            decoder_layers: f.usize_or("decoder_layers", 6)?,
            encoder_heads: f.usize_or("encoder_attention_heads", 8)?,
            decoder_heads: f.usize_or("decoder_attention_heads", 8)?,
            encoder_ffn_dim: f.usize_or("encoder_ffn_dim", 2048)?,
            decoder_ffn_dim: f.usize_or("decoder_ffn_dim", 2048)?,
            num_queries: f.usize_or("num_queries", 100)?,
            id2label: id2label(&f)?,
            backbone: backbone(&f)?,
        })
    }
}

fn id2label(f: &Fields) -> Result<BTreeMap<usize, String>> {
    let Some(map) = f.json.get("id2label").filter(|v| !v.is_null()) else {
        return Ok(BTreeMap::new());
    };
    let map = map
        .as_object()
        .ok_or_else(|| f.bad("`id2label` must be a map from id to name".into()))?;
    let mut labels = BTreeMap::new();
    for (id, name) in map {
        let id: usize = id
            .parse()
            .map_err(|_| f.bad(format!("`id2label` key `{id}` is not an integer")))?;
        let name = name
            .as_str()
            .ok_or_else(|| f.bad(format!("`id2label` name of {id} is not a string")))?;
        labels.insert(id, name.to_string());
    }
    Ok(labels)
}

/// Blocks per stage of the ResNets timm and torchvision name this way.
fn resnet_depths(path: &Path, name: &str) -> Result<Vec<usize>> {
    match name {
        "resnet50" => Ok(vec![3, 4, 6, 3]),
        "resnet101" => Ok(vec![3, 4, 23, 3]),
        _ => Err(Error::BadModel {
            path: PathBuf::from(path),
            reason: format!("unknown backbone `{name}`: supported are resnet50 and resnet101"),
        }),
    }
}

fn backbone(f: &Fields) -> Result<BackboneConfig> {
    let dilation = f.bool_or("dilation", false)?;
    let sub = f.json.get("backbone_config").filter(|v| !v.is_null());
    let Some(sub) = sub else {
        if !f.bool_or("use_timm_backbone", true)? {
            return Err(
                f.bad("`use_timm_backbone` is false but there is no `backbone_config`".into())
            );
        }
        let name = f.str_or("backbone", "resnet50")?;
        return Ok(BackboneConfig {
            naming: BackboneNaming::Timm,
            depths: resnet_depths(f.path, name)?,
            dilation,
            downsample_in_bottleneck: false,
        });
    };
    let s = Fields {
        path: f.path,
        json: sub,
    };
    match s.str_or("model_type", "")? {
        "timm_backbone" => {
            let name = s.str_or("backbone", "resnet50")?;
            let output_stride = s.usize_or("output_stride", 32)?;
            if output_stride != 32 && output_stride != 16 {
                return Err(f.bad(format!(
                    "backbone_config `output_stride` {output_stride} is not supported (32, or 16 for DC5)"
                )));
            }
            Ok(BackboneConfig {
                naming: BackboneNaming::Timm,
                depths: resnet_depths(f.path, name)?,
                dilation: dilation || output_stride == 16,
                downsample_in_bottleneck: false,
            })
        }
        "resnet" => {
            if dilation {
                return Err(f.bad(
                    "`dilation` (DC5) needs a timm backbone; transformers' ResNet backbone has none"
                        .into(),
                ));
            }
            let layer_type = s.str_or("layer_type", "bottleneck")?;
            if layer_type != "bottleneck" {
                return Err(f.bad(format!(
                    "backbone_config `layer_type` `{layer_type}` is not supported (only bottleneck ResNets: 50, 101)"
                )));
            }
            if s.bool_or("downsample_in_first_stage", false)? {
                return Err(f.bad(
                    "backbone_config `downsample_in_first_stage` is not supported".into(),
                ));
            }
            let act = s.str_or("hidden_act", "relu")?;
            if act != "relu" {
                return Err(f.bad(format!(
                    "backbone_config `hidden_act` `{act}` is not supported (only relu)"
                )));
            }
            let depths = match sub.get("depths") {
                None | Some(Value::Null) => vec![3, 4, 6, 3],
                Some(v) => v
                    .as_array()
                    .and_then(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect())
                    .filter(|d: &Vec<usize>| d.len() == 4)
                    .ok_or_else(|| {
                        f.bad(format!("backbone_config `depths` must be 4 integers, got {v}"))
                    })?,
            };
            Ok(BackboneConfig {
                naming: BackboneNaming::HfResNet,
                depths,
                dilation: false,
                downsample_in_bottleneck: s.bool_or("downsample_in_bottleneck", false)?,
            })
        }
        other => Err(f.bad(format!(
            "unknown backbone: backbone_config `model_type` `{other}` (supported: timm_backbone, resnet)"
        ))),
    }
}
