//! Detection settings. Every family reads `conf`, `max_det` and `roi`; only some read the NMS
//! settings and the input size, and each [`crate::Detector`] says which it reads
//! ([`SettingsUse`]). What a detection used ([`UsedOptions`]) is what box sets and scorer files
//! record, and what is compared to warn that p-values may not hold for boxes detected otherwise.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::core::sources::RoiSource;
use crate::error::{Error, Result};

/// YOLO input sides are multiples of this (the largest stride of the network).
pub const INPUT_STRIDE: u32 = 32;

/// A network input size in pixels. Its text is ultralytics' `imgsz`: one number for a square,
/// else `HEIGHT,WIDTH` (height first, as ultralytics and the command line take it); in JSON it
/// is `{"width": .., "height": ..}`, so that the order cannot be mistaken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct InputSize {
    pub width: u32,
    pub height: u32,
}

impl InputSize {
    pub const fn square(side: u32) -> Self {
        InputSize {
            width: side,
            height: side,
        }
    }

    /// Each side rounded up to a multiple of `stride`, as ultralytics' `check_imgsz` does.
    pub fn rounded_up(self, stride: u32) -> Self {
        let round = |side: u32| side.div_ceil(stride).max(1) * stride;
        InputSize {
            width: round(self.width),
            height: round(self.height),
        }
    }
}

impl fmt::Display for InputSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.width == self.height {
            write!(f, "{}", self.width)
        } else {
            write!(f, "{},{}", self.height, self.width)
        }
    }
}

impl FromStr for InputSize {
    type Err = Error;

    /// `N` or `HEIGHT,WIDTH`; the range is checked with the other settings
    /// ([`DetectOptions::check`]).
    fn from_str(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::Unsupported(format!("input size `{text}`: {reason}"));
        let sides = text
            .split(',')
            .map(|p| {
                p.trim()
                    .parse::<u32>()
                    .map_err(|_| bad(format!("`{p}` is not a whole number of pixels")))
            })
            .collect::<Result<Vec<_>>>()?;
        match sides[..] {
            [n] => Ok(InputSize::square(n)),
            [height, width] => Ok(InputSize { width, height }),
            _ => Err(bad("expected N or HEIGHT,WIDTH".into())),
        }
    }
}

/// Reads `{"width": w, "height": h}`, and the `[w, h]` pair that files written before the
/// type existed hold.
impl<'de> Deserialize<'de> for InputSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Named { width: u32, height: u32 },
            WidthHeight(u32, u32),
        }
        Ok(match Form::deserialize(deserializer)? {
            Form::Named { width, height } | Form::WidthHeight(width, height) => {
                InputSize { width, height }
            }
        })
    }
}

/// Non-maximum suppression, as ultralytics runs it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Nms {
    /// Suppress boxes whose IoU with a kept box is strictly above this.
    pub iou: f32,
    /// One class per location: suppress across classes (and, in YOLO26's NMS-free head, keep
    /// each anchor's best class only), as ultralytics' `agnostic_nms`.
    pub agnostic: bool,
}

impl Default for Nms {
    fn default() -> Self {
        Nms {
            iou: 0.7,
            agnostic: false,
        }
    }
}

/// How to detect; the defaults are ultralytics `predict`'s. Which of `nms` and `imgsz` a
/// detector reads, it says with [`crate::Detector::settings_use`]; it ignores the others.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectOptions {
    /// Keep boxes whose confidence is strictly above this.
    pub conf: f32,
    /// At most this many boxes per image, the most confident.
    pub max_det: usize,
    /// Layer maps to ROI-align on every box (none by default: they cost time).
    pub roi: Vec<RoiSource>,
    /// For the families that suppress overlapping boxes (YOLO).
    pub nms: Nms,
    /// The target input size before rect padding, for the families that letterbox to a size
    /// (YOLO); DETR sizes its input with its image processor.
    pub imgsz: InputSize,
}

impl Default for DetectOptions {
    fn default() -> Self {
        DetectOptions {
            conf: 0.25,
            max_det: 300,
            roi: Vec::new(),
            nms: Nms::default(),
            imgsz: InputSize::square(640),
        }
    }
}

fn check_fraction(item: &str, value: f32) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::OutOfRange {
            item: item.into(),
            value: value.to_string(),
            range: "[0, 1]".into(),
        })
    }
}

impl DetectOptions {
    /// Checks every setting against its range and the input size against the
    /// [`crate::limits::Limits`] of the environment. Returns the warnings to show: an input
    /// side that is not a multiple of [`INPUT_STRIDE`] is rounded up (see [`Self::input_size`]).
    pub fn check(&self) -> Result<Vec<String>> {
        check_fraction("conf", self.conf)?;
        check_fraction("iou", self.nms.iou)?;
        if self.max_det == 0 {
            return Err(Error::OutOfRange {
                item: "max_det".into(),
                value: "0".into(),
                range: "[1, ∞)".into(),
            });
        }
        let limit = crate::limits::Limits::from_env()?.max_imgsz;
        let InputSize { width, height } = self.imgsz;
        if [width, height]
            .iter()
            .any(|&side| side == 0 || side > limit)
        {
            return Err(Error::OutOfRange {
                item: "imgsz".into(),
                value: self.imgsz.to_string(),
                range: format!(
                    "[1, {limit}] (set {} to raise the limit)",
                    crate::limits::MAX_IMGSZ_VAR
                ),
            });
        }
        let input = self.input_size();
        Ok(if input == self.imgsz {
            Vec::new()
        } else {
            vec![format!(
                "imgsz {} is not a multiple of the stride {INPUT_STRIDE}: updated to {input}",
                self.imgsz
            )]
        })
    }

    /// The input size a YOLO network runs at: `imgsz` with each side rounded up to a multiple
    /// of [`INPUT_STRIDE`], as ultralytics does.
    pub fn input_size(&self) -> InputSize {
        self.imgsz.rounded_up(INPUT_STRIDE)
    }

    /// The settings a detector that reads `uses` detects with: what to record with its boxes.
    pub fn used_by(&self, uses: &SettingsUse) -> UsedOptions {
        let read = |applies: Applies| applies == Applies::Yes;
        UsedOptions {
            conf: self.conf,
            iou: read(uses.iou).then_some(self.nms.iou),
            max_det: self.max_det,
            agnostic: read(uses.agnostic).then_some(self.nms.agnostic),
            imgsz: read(uses.imgsz).then_some(self.imgsz),
            roi: self.roi.clone(),
        }
    }
}

/// Whether a detector reads a setting; when it does not, why, in a sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applies {
    Yes,
    No { why: &'static str },
}

/// Which of the settings that not every family reads a detector reads. `conf`, `max_det` and
/// `roi` apply to every family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettingsUse {
    /// [`Nms::iou`].
    pub iou: Applies,
    /// [`Nms::agnostic`].
    pub agnostic: Applies,
    /// [`DetectOptions::imgsz`].
    pub imgsz: Applies,
}

impl SettingsUse {
    /// A family that reads every setting (YOLO with NMS).
    pub const ALL: SettingsUse = SettingsUse {
        iou: Applies::Yes,
        agnostic: Applies::Yes,
        imgsz: Applies::Yes,
    };
}

/// The settings a detection used: those of a [`DetectOptions`] its detector reads (see
/// [`DetectOptions::used_by`]), the others `None`. Box sets and scorer files record it, as JSON
/// with the unused settings left out; files written when every setting was recorded (`imgsz`
/// as `[width, height]`) read as well.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsedOptions {
    pub conf: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iou: Option<f32>,
    pub max_det: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agnostic: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imgsz: Option<InputSize>,
    #[serde(default)]
    pub roi: Vec<RoiSource>,
}

impl UsedOptions {
    /// Options that detect as these did; the settings not recorded keep their defaults.
    pub fn options(&self) -> DetectOptions {
        let default = DetectOptions::default();
        DetectOptions {
            conf: self.conf,
            max_det: self.max_det,
            roi: self.roi.clone(),
            nms: Nms {
                iou: self.iou.unwrap_or(default.nms.iou),
                agnostic: self.agnostic.unwrap_or(default.nms.agnostic),
            },
            imgsz: self.imgsz.unwrap_or(default.imgsz),
        }
    }

    /// Checks every recorded setting against its range (see [`DetectOptions::check`]).
    pub fn check(&self) -> Result<()> {
        self.options().check().map(drop)
    }

    /// The settings, recorded in both, that change which boxes are kept and differ between
    /// these (say, a scorer's fit boxes) and `now`, as `name recorded (now value)`. A setting
    /// that either detection did not use is not compared; neither is `roi`, which adds features
    /// but keeps the same boxes.
    pub fn differences(&self, now: &UsedOptions) -> Vec<String> {
        fn differ<T: PartialEq + ToString>(
            name: &str,
            a: Option<T>,
            b: Option<T>,
        ) -> Option<String> {
            match (a, b) {
                (Some(a), Some(b)) if a != b => {
                    Some(format!("{name} {} (now {})", a.to_string(), b.to_string()))
                }
                _ => None,
            }
        }
        [
            differ("imgsz", self.imgsz, now.imgsz),
            differ("conf", Some(self.conf), Some(now.conf)),
            differ("iou", self.iou, now.iou),
            differ("max_det", Some(self.max_det), Some(now.max_det)),
            differ("agnostic", self.agnostic, now.agnostic),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DETR: SettingsUse = SettingsUse {
        iou: Applies::No { why: "no NMS" },
        agnostic: Applies::No { why: "no NMS" },
        imgsz: Applies::No {
            why: "its processor",
        },
    };

    #[test]
    fn input_size_text_is_height_first() {
        let size: InputSize = "480,640".parse().unwrap();
        assert_eq!(
            size,
            InputSize {
                width: 640,
                height: 480
            }
        );
        assert_eq!(size.to_string(), "480,640");
        assert_eq!("256".parse::<InputSize>().unwrap(), InputSize::square(256));
        assert_eq!(InputSize::square(256).to_string(), "256");
        for bad in ["", "1,2,3", "a", "-5", "4,"] {
            assert!(bad.parse::<InputSize>().is_err(), "{bad}");
        }
        assert_eq!(
            InputSize {
                width: 100,
                height: 33
            }
            .rounded_up(32),
            InputSize {
                width: 128,
                height: 64
            }
        );
    }

    /// Box sets and scorer files written before the settings were split record every setting,
    /// flat, with `imgsz` as `[width, height]` (and, older still, a `roi_features` flag).
    #[test]
    fn the_old_flat_record_reads() {
        let old = r#"{"conf":0.3,"iou":0.5,"max_det":100,"agnostic":true,"imgsz":[320,256],
            "roi":["roi:6@2"],"roi_features":false}"#;
        let used: UsedOptions = serde_json::from_str(old).unwrap();
        let options = used.options();
        assert_eq!(
            (options.conf, options.nms, options.max_det),
            (
                0.3,
                Nms {
                    iou: 0.5,
                    agnostic: true
                },
                100
            )
        );
        assert_eq!(
            options.imgsz,
            InputSize {
                width: 320,
                height: 256
            }
        );
        assert_eq!(options.roi, vec!["roi:6@2".parse().unwrap()]);
        assert_eq!(options.used_by(&SettingsUse::ALL), used);
        // Written back in the new form, it reads the same.
        let new = serde_json::to_string(&used).unwrap();
        assert!(
            new.contains(r#""imgsz":{"width":320,"height":256}"#),
            "{new}"
        );
        assert_eq!(serde_json::from_str::<UsedOptions>(&new).unwrap(), used);
    }

    #[test]
    fn a_family_records_only_the_settings_it_reads() {
        let options = DetectOptions {
            conf: 0.4,
            ..DetectOptions::default()
        };
        let used = options.used_by(&DETR);
        assert_eq!((used.iou, used.agnostic, used.imgsz), (None, None, None));
        assert_eq!(
            serde_json::to_value(&used).unwrap(),
            serde_json::json!({"conf": 0.4f32, "max_det": 300, "roi": []})
        );
        // Unrecorded settings come back at their defaults.
        assert_eq!(used.options(), options);
    }

    #[test]
    fn differences_compare_only_settings_both_used() {
        let fitted = DetectOptions {
            imgsz: InputSize::square(256),
            ..DetectOptions::default()
        };
        let now = DetectOptions {
            nms: Nms {
                iou: 0.5,
                agnostic: true,
            },
            imgsz: InputSize {
                width: 320,
                height: 256,
            },
            ..DetectOptions::default()
        };
        let yolo = fitted
            .used_by(&SettingsUse::ALL)
            .differences(&now.used_by(&SettingsUse::ALL));
        assert_eq!(
            yolo,
            [
                "imgsz 256 (now 256,320)",
                "iou 0.7 (now 0.5)",
                "agnostic false (now true)"
            ]
        );
        // DETR reads none of them: a DETR scorer is not reported for an iou it never read,
        // nor is an old DETR file that recorded every setting.
        assert!(fitted
            .used_by(&DETR)
            .differences(&now.used_by(&DETR))
            .is_empty());
        assert!(fitted
            .used_by(&SettingsUse::ALL)
            .differences(&now.used_by(&DETR))
            .is_empty());
        let conf = DetectOptions {
            conf: 0.5,
            ..now.clone()
        };
        assert_eq!(
            fitted.used_by(&DETR).differences(&conf.used_by(&DETR)),
            ["conf 0.25 (now 0.5)"]
        );
    }
}
