//! YOLOv8 architecture (every layer width, C2f depths, head sizes) inferred from tensor shapes,
//! and the mapping between the two weight-naming conventions.
//!
//! The model is always built with the Candle-example names (`net.b1.0…`, `fpn.n1…`, `head…`,
//! inner bottlenecks `bottleneck.<j>`); ultralytics state-dict names (`model.<yaml index>…`,
//! inner bottlenecks `m.<j>`) are mapped to them.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};

/// The only DFL bin count ultralytics uses; the decode assumes it.
pub const REG_MAX: usize = 16;

/// Candle prefix of every layer that has weights, with its ultralytics yaml index.
const LAYERS: [(&str, usize); 17] = [
    ("net.b1.0", 0),
    ("net.b1.1", 1),
    ("net.b2.0", 2),
    ("net.b2.1", 3),
    ("net.b2.2", 4),
    ("net.b3.0", 5),
    ("net.b3.1", 6),
    ("net.b4.0", 7),
    ("net.b4.1", 8),
    ("net.b5.0", 9),
    ("fpn.n1", 12),
    ("fpn.n2", 15),
    ("fpn.n3", 16),
    ("fpn.n4", 18),
    ("fpn.n5", 19),
    ("fpn.n6", 21),
    ("head", 22),
];

/// Weight-naming convention of a YOLOv8 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// ultralytics `state_dict`: `model.<yaml index>.…`, inner bottlenecks `m.<j>`.
    Ultralytics,
    /// Candle yolo-v8 example: `net.…`, `fpn.…`, `head.…`, inner bottlenecks `bottleneck.<j>`.
    Candle,
}

impl Naming {
    /// The convention of a set of tensor names, `None` if neither or both appear.
    pub fn detect<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<Naming> {
        let (mut ultralytics, mut candle) = (false, false);
        for name in names {
            ultralytics |= name.starts_with("model.");
            candle |= ["net.", "fpn.", "head."]
                .iter()
                .any(|p| name.starts_with(p));
        }
        match (ultralytics, candle) {
            (true, false) => Some(Naming::Ultralytics),
            (false, true) => Some(Naming::Candle),
            _ => None,
        }
    }

    /// The name, in this convention, of the tensor called `candle_name` in Candle naming.
    pub fn file_name(self, candle_name: &str) -> String {
        if self == Naming::Candle {
            return candle_name.to_string();
        }
        for (prefix, index) in LAYERS {
            if let Some(rest) = candle_name.strip_prefix(prefix) {
                if let Some(rest) = rest.strip_prefix(".bottleneck.") {
                    return format!("model.{index}.m.{rest}");
                }
                if rest.starts_with('.') {
                    return format!("model.{index}{rest}");
                }
            }
        }
        candle_name.to_string()
    }

    /// The Candle name of a tensor named in this convention; `None` if it belongs to no
    /// YOLOv8 layer with weights.
    pub fn candle_name(self, file_name: &str) -> Option<String> {
        match self {
            Naming::Candle => LAYERS
                .iter()
                .any(|(prefix, _)| {
                    file_name
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
                .then(|| file_name.to_string()),
            Naming::Ultralytics => {
                let (index, rest) = file_name.strip_prefix("model.")?.split_once('.')?;
                let index: usize = index.parse().ok()?;
                let (prefix, _) = LAYERS.iter().find(|(_, i)| *i == index)?;
                Some(match rest.strip_prefix("m.") {
                    Some(inner) => format!("{prefix}.bottleneck.{inner}"),
                    None => format!("{prefix}.{rest}"),
                })
            }
        }
    }
}

/// The ultralytics size multiples of yolov8{n,s,m,l,x}.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    N,
    S,
    M,
    L,
    X,
}

impl Scale {
    /// `(depth, width, max_channels)` as in ultralytics' `yolov8.yaml`.
    pub fn multiples(self) -> (f64, f64, usize) {
        match self {
            Scale::N => (0.33, 0.25, 1024),
            Scale::S => (0.33, 0.50, 1024),
            Scale::M => (0.67, 0.75, 768),
            Scale::L => (1.00, 1.00, 512),
            Scale::X => (1.00, 1.25, 512),
        }
    }
}

/// A C2f block: `cv1` (1×1 → 2·`hidden`), `n` bottlenecks of width `hidden`, `cv2` (1×1 → `c_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct C2fArch {
    pub c_out: usize,
    pub hidden: usize,
    pub n: usize,
}

/// SPPF: `cv1` (1×1 → `hidden`), three max-pools, `cv2` (1×1, 4·`hidden` → `c_out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SppfArch {
    pub c_out: usize,
    pub hidden: usize,
}

/// The Detect head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadArch {
    /// Number of classes.
    pub nc: usize,
    /// Width of the box branch `cv2[i]` (ultralytics `c2`).
    pub box_hidden: usize,
    /// Width of the class branch `cv3[i]` (ultralytics `c3`): the per-box feature dimension.
    pub cls_hidden: usize,
    /// DFL bins per box side; always [`REG_MAX`].
    pub reg_max: usize,
}

/// Output widths of every YOLOv8 layer with weights, named after the Candle prefixes
/// (ultralytics yaml index in the comment). Plain convolutions are 3×3 stride 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    pub b1_0: usize,    // 0
    pub b1_1: usize,    // 1
    pub b2_0: C2fArch,  // 2
    pub b2_1: usize,    // 3
    pub b2_2: C2fArch,  // 4, P3
    pub b3_0: usize,    // 5
    pub b3_1: C2fArch,  // 6, P4
    pub b4_0: usize,    // 7
    pub b4_1: C2fArch,  // 8
    pub b5_0: SppfArch, // 9, P5
    pub n1: C2fArch,    // 12
    pub n2: C2fArch,    // 15, head level 0
    pub n3: usize,      // 16
    pub n4: C2fArch,    // 18, head level 1
    pub n5: usize,      // 19
    pub n6: C2fArch,    // 21, head level 2
    pub head: HeadArch, // 22
}

impl Arch {
    /// An ultralytics yolov8 scale with `nc` classes.
    pub fn yolov8(scale: Scale, nc: usize) -> Arch {
        let (depth, width, max_channels) = scale.multiples();
        Arch::from_multiples(depth, width, max_channels, nc)
    }

    /// The architecture ultralytics' `parse_model` builds from `yolov8.yaml` with custom multiples.
    pub fn from_multiples(depth: f64, width: f64, max_channels: usize, nc: usize) -> Arch {
        let ch = |c: usize| (c.min(max_channels) as f64 * width / 8.0).ceil() as usize * 8;
        let c2f = |c: usize, n: usize| {
            let c_out = ch(c);
            C2fArch {
                c_out,
                hidden: c_out / 2,
                // Python's round() rounds half to even.
                n: ((n as f64 * depth).round_ties_even() as usize).max(1),
            }
        };
        // Input channels of the stride-8 head level (layer 15).
        let level0 = ch(256);
        Arch {
            b1_0: ch(64),
            b1_1: ch(128),
            b2_0: c2f(128, 3),
            b2_1: ch(256),
            b2_2: c2f(256, 6),
            b3_0: ch(512),
            b3_1: c2f(512, 6),
            b4_0: ch(1024),
            b4_1: c2f(1024, 3),
            b5_0: SppfArch {
                c_out: ch(1024),
                hidden: ch(1024) / 2,
            },
            n1: c2f(512, 3),
            n2: c2f(256, 3),
            n3: ch(256),
            n4: c2f(512, 3),
            n5: ch(512),
            n6: c2f(1024, 3),
            head: HeadArch {
                nc,
                box_hidden: 16.max(level0 / 4).max(4 * REG_MAX),
                cls_hidden: level0.max(nc.min(100)),
                reg_max: REG_MAX,
            },
        }
    }

    /// Infers the architecture from tensor names (either convention) and shapes. Only the
    /// tensors that fix a width or a depth are read; the others are checked at load.
    pub fn from_tensor_shapes(shapes: &HashMap<String, Vec<usize>>) -> Result<Arch> {
        Arch::infer(shapes, Path::new("<tensor map>")).map(|(arch, _)| arch)
    }

    /// [`Arch::from_tensor_shapes`] for the file `path` (named in errors); also returns the naming.
    pub(crate) fn infer(
        shapes: &HashMap<String, Vec<usize>>,
        path: &Path,
    ) -> Result<(Arch, Naming)> {
        let naming =
            Naming::detect(shapes.keys().map(String::as_str)).ok_or_else(|| Error::BadModel {
                path: path.to_path_buf(),
                reason: "tensor names follow neither the ultralytics (`model.0.conv.weight`) nor \
                         the Candle (`net.b1.0.conv.weight`) YOLOv8 naming"
                    .to_string(),
            })?;
        let mut canonical = HashMap::new();
        for (name, shape) in shapes {
            match naming.candle_name(name) {
                Some(candle) => {
                    canonical.insert(candle, shape.as_slice());
                }
                // Layers 10, 11, 13, 14, 17, 20 have no weights in YOLOv8; weights there mean
                // another family (YOLOv5, YOLO11, …) sharing the naming.
                None if naming == Naming::Ultralytics && name.starts_with("model.") => {
                    return Err(Error::BadModel {
                        path: path.to_path_buf(),
                        reason: format!("`{name}` is not part of the YOLOv8 detection layout"),
                    })
                }
                None => {}
            }
        }
        let shapes = Shapes {
            canonical,
            naming,
            path,
        };
        let box_out = shapes.conv_out("head.cv2.0.2.weight")?;
        if box_out != 4 * REG_MAX {
            return Err(Error::BadModel {
                path: path.to_path_buf(),
                reason: format!(
                    "`{}` has {box_out} output channels; only reg_max = {REG_MAX} (64 channels) \
                     is supported",
                    naming.file_name("head.cv2.0.2.weight")
                ),
            });
        }
        let head = HeadArch {
            nc: shapes.conv_out("head.cv3.0.2.weight")?,
            box_hidden: shapes.conv_out("head.cv2.0.0.conv.weight")?,
            cls_hidden: shapes.conv_out("head.cv3.0.0.conv.weight")?,
            reg_max: REG_MAX,
        };
        let arch = Arch {
            b1_0: shapes.conv_out("net.b1.0.conv.weight")?,
            b1_1: shapes.conv_out("net.b1.1.conv.weight")?,
            b2_0: shapes.c2f("net.b2.0")?,
            b2_1: shapes.conv_out("net.b2.1.conv.weight")?,
            b2_2: shapes.c2f("net.b2.2")?,
            b3_0: shapes.conv_out("net.b3.0.conv.weight")?,
            b3_1: shapes.c2f("net.b3.1")?,
            b4_0: shapes.conv_out("net.b4.0.conv.weight")?,
            b4_1: shapes.c2f("net.b4.1")?,
            b5_0: SppfArch {
                c_out: shapes.conv_out("net.b5.0.cv2.conv.weight")?,
                hidden: shapes.conv_out("net.b5.0.cv1.conv.weight")?,
            },
            n1: shapes.c2f("fpn.n1")?,
            n2: shapes.c2f("fpn.n2")?,
            n3: shapes.conv_out("fpn.n3.conv.weight")?,
            n4: shapes.c2f("fpn.n4")?,
            n5: shapes.conv_out("fpn.n5.conv.weight")?,
            n6: shapes.c2f("fpn.n6")?,
            head,
        };
        Ok((arch, naming))
    }

    /// Channels of the three head inputs (strides 8, 16, 32).
    pub fn level_channels(&self) -> [usize; 3] {
        [self.n2.c_out, self.n4.c_out, self.n6.c_out]
    }
}

/// Shapes keyed by Candle name; errors name tensors in the file's own convention.
struct Shapes<'a> {
    canonical: HashMap<String, &'a [usize]>,
    naming: Naming,
    path: &'a Path,
}

impl Shapes<'_> {
    /// Output channels of a convolution weight `[c_out, c_in, k, k]`.
    fn conv_out(&self, candle_name: &str) -> Result<usize> {
        let name = self.naming.file_name(candle_name);
        match self.canonical.get(candle_name) {
            None => Err(Error::MissingTensor {
                path: self.path.to_path_buf(),
                name,
            }),
            Some(&&[c_out, _, k, k2]) if k == k2 => Ok(c_out),
            Some(found) => Err(Error::WrongShape {
                path: self.path.to_path_buf(),
                name,
                found: found.to_vec(),
                expected: "[c_out, c_in, k, k]".to_string(),
            }),
        }
    }

    fn c2f(&self, prefix: &str) -> Result<C2fArch> {
        let cv1 = format!("{prefix}.cv1.conv.weight");
        let double = self.conv_out(&cv1)?;
        if double % 2 != 0 {
            return Err(Error::BadModel {
                path: self.path.to_path_buf(),
                reason: format!(
                    "`{}` has an odd channel count {double}; C2f splits it in two",
                    self.naming.file_name(&cv1)
                ),
            });
        }
        // Depth = highest bottleneck index + 1, so a gap shows up as a missing tensor at load.
        let inner = format!("{prefix}.bottleneck.");
        let n = self
            .canonical
            .keys()
            .filter_map(|name| name.strip_prefix(&inner)?.split('.').next()?.parse().ok())
            .map(|j: usize| j + 1)
            .max()
            .unwrap_or(0);
        Ok(C2fArch {
            c_out: self.conv_out(&format!("{prefix}.cv2.conv.weight"))?,
            hidden: double / 2,
            n,
        })
    }
}
