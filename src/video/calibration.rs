//! A track-level calibration fitted on footage of known objects only.
//!
//! The distribution-free rule of [`super::evidence`] holds its false-alarm rate whatever the
//! frames of a track do, and pays for it in power. With footage that shows only known objects
//! (the same camera, detector settings and frame rate), the track statistic of
//! [`super::evidence::TrackEvidence::statistic`] can be calibrated instead, as the per-box
//! scores are: a track's p-value is the share of the calibration's tracks whose statistic is at
//! least as large (conformal, counting the track itself). If the new footage's tracks of known
//! objects are exchangeable with the calibration's, at most `alpha` of them are called unknown.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::core::kind::FileKind;
use crate::core::settings::InputSize;
use crate::error::{Error, Result};
use crate::ood::calibration::conformal_p_value;
use crate::pipeline::OodDetector;
use sha2::{Digest, Sha256};

/// What a calibration is valid for: a track statistic depends on the detector, the scorer, the
/// detection settings, the frame rate and the block length.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackSetting {
    /// The detector's fingerprint (sha256 of its weights).
    pub model: String,
    /// sha256 of the scorer file.
    pub scorer: String,
    /// Detection input size and confidence threshold.
    pub imgsz: InputSize,
    pub conf: f32,
    pub fps: f64,
    /// Boxes per block, the minimum duration in frames.
    pub block: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackCalibration {
    pub format: String,
    pub setting: TrackSetting,
    /// The footage it was fitted on.
    pub source: String,
    /// One statistic per track of the footage, ascending.
    pub statistics: Vec<f64>,
}

const FORMAT: &str = "oodbox track calibration 1";

impl TrackSetting {
    /// The setting of a stream: `ood`'s detector and detection settings, the scorer file it was
    /// loaded from (hashed, so a refitted scorer needs a new calibration), the frame rate and
    /// the block length in frames.
    pub fn of(ood: &OodDetector, scorer_file: &Path, fps: f64, block: usize) -> Result<Self> {
        let bytes = std::fs::read(scorer_file).map_err(|e| Error::io(scorer_file, e))?;
        Ok(TrackSetting {
            model: ood.detector().fingerprint().to_string(),
            scorer: format!("sha256:{:x}", Sha256::digest(bytes)),
            imgsz: ood.options.imgsz,
            conf: ood.options.conf,
            fps,
            block,
        })
    }
}

impl TrackCalibration {
    pub fn fit(setting: TrackSetting, source: &str, mut statistics: Vec<f64>) -> Result<Self> {
        if statistics.is_empty() {
            return Err(Error::Calibration(format!(
                "{source} gave no track to calibrate on"
            )));
        }
        if let Some(bad) = statistics.iter().find(|s| !s.is_finite()) {
            return Err(Error::Calibration(format!(
                "track statistic {bad} from {source} is not finite"
            )));
        }
        statistics.sort_by(f64::total_cmp);
        Ok(TrackCalibration {
            format: FORMAT.into(),
            setting,
            source: source.into(),
            statistics,
        })
    }

    /// The conformal p-value of a track statistic: (1 + calibration tracks at least as
    /// unusual) / (1 + calibration tracks).
    pub fn p_value(&self, statistic: f64) -> f64 {
        conformal_p_value(&self.statistics, statistic)
    }

    /// The smallest p-value it can give: a track-alpha below it calls no track unknown.
    pub fn smallest_p_value(&self) -> f64 {
        1.0 / (1 + self.statistics.len()) as f64
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a calibration serialises");
        crate::core::write_atomically(path, &json)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::BadInput {
            path: path.to_path_buf(),
            reason,
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let calibration: TrackCalibration =
            serde_json::from_slice(&bytes).map_err(|e| match crate::core::kind::sniff(path) {
                Some(found) if found != FileKind::TrackCalibration => Error::WrongKind {
                    path: path.to_path_buf(),
                    found,
                    expected: FileKind::TrackCalibration,
                },
                _ => bad(format!("not a track calibration ({e})")),
            })?;
        if calibration.format != FORMAT {
            return Err(bad(format!(
                "format `{}`, expected `{FORMAT}`",
                calibration.format
            )));
        }
        let sorted = calibration.statistics.windows(2).all(|w| w[0] <= w[1]);
        if calibration.statistics.is_empty() || !sorted {
            return Err(bad("its statistics are empty or not in order".into()));
        }
        Ok(calibration)
    }

    /// Adds the tracks of `other` (loaded from `path`), fitted in the same setting: footage in
    /// several clips calibrates as one.
    pub fn merge(&mut self, other: TrackCalibration, path: &Path) -> Result<()> {
        other.check(path, &self.setting)?;
        self.source = format!("{} + {}", self.source, other.source);
        self.statistics.extend(other.statistics);
        self.statistics.sort_by(f64::total_cmp);
        Ok(())
    }

    /// Refuses a calibration fitted in another setting, naming what differs.
    pub fn check(&self, path: &Path, setting: &TrackSetting) -> Result<()> {
        let fitted = &self.setting;
        let mut differences = Vec::new();
        if fitted.model != setting.model {
            differences.push(format!(
                "model {} (this one is {})",
                fitted.model, setting.model
            ));
        }
        if fitted.scorer != setting.scorer {
            differences.push(format!(
                "scorer file {} (this one is {})",
                fitted.scorer, setting.scorer
            ));
        }
        if (fitted.imgsz, fitted.conf) != (setting.imgsz, setting.conf) {
            differences.push(format!(
                "imgsz {}, conf {} (here {}, {})",
                fitted.imgsz, fitted.conf, setting.imgsz, setting.conf
            ));
        }
        if (fitted.fps - setting.fps).abs() > 1e-6 * fitted.fps || fitted.block != setting.block {
            differences.push(format!(
                "{} fps, blocks of {} frames (here {} fps, {})",
                fitted.fps, fitted.block, setting.fps, setting.block
            ));
        }
        if differences.is_empty() {
            return Ok(());
        }
        Err(Error::BadInput {
            path: path.to_path_buf(),
            reason: format!(
                "this track calibration was fitted for {}; detect in its setting, or fit one \
                 for this setting on footage of known objects",
                differences.join("; ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting() -> TrackSetting {
        TrackSetting {
            model: "sha256:m".into(),
            scorer: "sha256:s".into(),
            imgsz: InputSize::square(256),
            conf: 0.25,
            fps: 10.0,
            block: 10,
        }
    }

    #[test]
    fn p_values_count_the_calibration_tracks_at_least_as_unusual() {
        let c = TrackCalibration::fit(setting(), "test", vec![3.0, 1.0, 2.0, 2.0]).unwrap();
        assert_eq!(c.statistics, [1.0, 2.0, 2.0, 3.0]);
        assert_eq!(c.p_value(0.0), 1.0);
        assert_eq!(c.p_value(2.0), 4.0 / 5.0);
        assert_eq!(c.p_value(2.5), 2.0 / 5.0);
        assert_eq!(c.p_value(9.0), 1.0 / 5.0);
        assert_eq!(c.smallest_p_value(), 1.0 / 5.0);
    }

    #[test]
    fn a_calibration_for_another_setting_is_refused_naming_the_difference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracks.json");
        TrackCalibration::fit(setting(), "test", vec![1.0])
            .unwrap()
            .save(&path)
            .unwrap();
        let c = TrackCalibration::load(&path).unwrap();
        c.check(&path, &setting()).unwrap();
        let other = TrackSetting {
            fps: 25.0,
            block: 25,
            ..setting()
        };
        let e = c.check(&path, &other).unwrap_err();
        assert!(matches!(e, Error::BadInput { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("tracks.json") && e.contains("10 fps"), "{e}");
        let other = TrackSetting {
            scorer: "sha256:t".into(),
            ..setting()
        };
        let e = c.check(&path, &other).unwrap_err();
        assert!(matches!(e, Error::BadInput { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("scorer file sha256:s"), "{e}");
        std::fs::write(&path, b"{}").unwrap();
        let e = TrackCalibration::load(&path).unwrap_err();
        assert!(matches!(e, Error::BadInput { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains("not a track calibration"), "{e}");
        let scorer = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/shapes-scorer.safetensors"
        ));
        let e = TrackCalibration::load(scorer).unwrap_err();
        assert!(matches!(e, Error::WrongKind { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.contains("this is an oodbox scorer file") && e.contains("not an oodbox track"),
            "{e}"
        );
    }

    #[test]
    fn calibrations_of_one_setting_merge_and_of_another_are_refused() {
        let mut a = TrackCalibration::fit(setting(), "a.mkv", vec![3.0, 1.0]).unwrap();
        let b = TrackCalibration::fit(setting(), "b.mkv", vec![2.0]).unwrap();
        a.merge(b, Path::new("b.json")).unwrap();
        assert_eq!(
            (a.statistics.as_slice(), a.source.as_str()),
            (&[1.0, 2.0, 3.0][..], "a.mkv + b.mkv")
        );
        let other = TrackSetting {
            conf: 0.1,
            ..setting()
        };
        let c = TrackCalibration::fit(other, "c.mkv", vec![2.0]).unwrap();
        let e = a.merge(c, Path::new("c.json")).unwrap_err();
        assert!(matches!(e, Error::BadInput { .. }), "{e}");
        let e = e.to_string();
        assert!(
            e.starts_with("c.json") && e.contains("conf 0.1 (here 256, 0.25)"),
            "{e}"
        );
    }

    /// Calibrations written when the size was a `(width, height)` pair read unchanged.
    #[test]
    fn the_old_size_pair_reads() {
        let mut json = serde_json::to_value(setting()).unwrap();
        assert_eq!(
            json["imgsz"],
            serde_json::json!({"width": 256, "height": 256})
        );
        json["imgsz"] = serde_json::json!([320, 256]);
        let old: TrackSetting = serde_json::from_value(json).unwrap();
        assert_eq!(
            old.imgsz,
            InputSize {
                width: 320,
                height: 256
            }
        );
    }

    #[test]
    fn fitting_on_no_track_is_an_error() {
        assert!(TrackCalibration::fit(setting(), "empty.mkv", vec![]).is_err());
    }
}
