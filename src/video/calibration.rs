//! A track-level calibration fitted on footage of known objects only.
//!
//! The distribution-free rule of [`super::evidence`] holds its false-alarm rate whatever the
//! frames of a track do, and pays for it in power. With footage that shows only known objects
//! (the same camera, detector settings and frame rate), the track statistic of
//! [`super::evidence::TrackEvidence::statistic`] can be calibrated instead, as the per-box
//! scores are: a track's p-value is the share of the calibration's tracks whose statistic is at
//! least as large (conformal, counting the track itself). If the new footage's tracks of known
//! objects are exchangeable with the calibration's, at most `alpha` of them are called unknown.
//!
//! Those p-values are never below `1/(N+1)` for `N` calibration tracks. With a tail
//! ([`TrackCalibration::with_tail`]), a statistic beyond the largest calibration statistic gets
//! a smaller p-value from a generalized Pareto tail fitted to the calibration statistics, as
//! [`crate::ood::tail`] does for box scores: every p-value inside the calibration range stays
//! the conformal one, and the extrapolated ones hold under the tail model only.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::core::kind::FileKind;
use crate::core::settings::InputSize;
use crate::error::{Error, Result};
use crate::ood::calibration::{p_value_with_tail, PValue};
use crate::ood::tail::{fit_tail, Gpd, TailOptions, TailStatus};
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
    /// The tail of the statistics, when one is asked for; absent in files without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<TrackTail>,
}

/// The tail setting of a track calibration and what its fit gave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackTail {
    pub options: TailOptions,
    /// The fitted tail, or why p-values stay plain conformal.
    pub fit: TailStatus,
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
            tail: None,
        })
    }

    /// Fits a generalized Pareto tail to the statistics (peaks over threshold, see
    /// [`crate::ood::tail`]); with too few statistics above the threshold, or a failed fit,
    /// p-values stay plain conformal and the calibration says why.
    pub fn with_tail(mut self, options: TailOptions) -> Result<Self> {
        options.check()?;
        self.fit_tail(options);
        Ok(self)
    }

    fn fit_tail(&mut self, options: TailOptions) {
        self.tail = Some(TrackTail {
            options,
            fit: fit_tail(&self.statistics, &options),
        });
    }

    /// The fitted tail, when there is one.
    pub fn gpd(&self) -> Option<&Gpd> {
        self.tail.as_ref().and_then(|t| t.fit.gpd())
    }

    /// The p-value of a track statistic: (1 + calibration tracks at least as unusual) /
    /// (1 + calibration tracks), or beyond the largest statistic the tail's, when fitted.
    pub fn p_value(&self, statistic: f64) -> PValue {
        p_value_with_tail(&self.statistics, self.gpd(), statistic)
    }

    /// The smallest conformal p-value it can give: without a fitted tail, a track-alpha below
    /// it calls no track unknown.
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
        if let Some(tail) = &calibration.tail {
            tail.options.check().map_err(|e| bad(e.to_string()))?;
            calibration.gpd().map(Gpd::check).transpose().map_err(bad)?;
        }
        Ok(calibration)
    }

    /// Adds the tracks of `other` (loaded from `path`), fitted in the same setting: footage in
    /// several clips calibrates as one. A tail is refitted on all the statistics, with this
    /// calibration's tail setting, or the other's when this one has none.
    pub fn merge(&mut self, other: TrackCalibration, path: &Path) -> Result<()> {
        other.check(path, &self.setting)?;
        self.source = format!("{} + {}", self.source, other.source);
        self.statistics.extend(other.statistics);
        self.statistics.sort_by(f64::total_cmp);
        let tail = self.tail.take().or(other.tail);
        if let Some(tail) = tail {
            self.fit_tail(tail.options);
        }
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
        assert_eq!(c.p_value(0.0).p, 1.0);
        assert_eq!(c.p_value(2.0).p, 4.0 / 5.0);
        assert_eq!(c.p_value(2.5).p, 2.0 / 5.0);
        assert_eq!(c.p_value(9.0).p, 1.0 / 5.0);
        assert!(!c.p_value(9.0).extrapolated);
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

    /// Statistics like a calibration's: many tracks at 0 (shorter than a block), the rest
    /// spread out with an exponential upper tail.
    fn statistics(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| {
                let u = (i as f64 + 0.5) / n as f64;
                (-(1.0 - u).ln() - 0.5).max(0.0)
            })
            .collect()
    }

    /// Inside the calibration range a track tail changes no p-value; beyond the largest
    /// statistic p-values fall below 1/(n+1), decreasing, and say they come from the tail.
    #[test]
    fn a_track_tail_extrapolates_beyond_the_largest_statistic_only() {
        let plain = TrackCalibration::fit(setting(), "test", statistics(400)).unwrap();
        let tailed = plain.clone().with_tail(TailOptions::default()).unwrap();
        let gpd = *tailed.gpd().expect("20 statistics above the threshold");
        assert_eq!(gpd.points, 20);
        let max = *plain.statistics.last().unwrap();
        for i in 0..=1000 {
            let s = max * i as f64 / 1000.0;
            assert_eq!(tailed.p_value(s), plain.p_value(s), "statistic {s}");
        }
        let floor = plain.smallest_p_value();
        let beyond: Vec<PValue> = (1..50)
            .map(|i| tailed.p_value(max + 0.1 * i as f64))
            .collect();
        assert!(beyond.iter().all(|p| p.extrapolated && p.p < floor));
        assert!(beyond.windows(2).all(|w| w[1].p < w[0].p), "{beyond:?}");
        assert_eq!(plain.p_value(max + 1.0).p, floor);
    }

    #[test]
    fn a_track_tail_with_too_few_points_stays_conformal() {
        let few = TrackCalibration::fit(setting(), "test", statistics(150)).unwrap();
        let tailed = few.clone().with_tail(TailOptions::default()).unwrap();
        match &tailed.tail.as_ref().unwrap().fit {
            TailStatus::Plain { reason } => assert!(reason.contains("7 of 150"), "{reason}"),
            fit => panic!("{fit:?}"),
        }
        let beyond = tailed.p_value(100.0);
        assert_eq!(beyond, few.p_value(100.0));
        assert!(!beyond.extrapolated);
    }

    /// The tail is recorded in the file; a file without one (as written before tails) reads
    /// as plain conformal; merging refits the tail on all the tracks.
    #[test]
    fn a_track_tail_is_saved_loaded_and_refitted_when_merged() {
        let dir = tempfile::tempdir().unwrap();
        let (with, without) = (
            dir.path().join("with.json"),
            dir.path().join("without.json"),
        );
        let plain = TrackCalibration::fit(setting(), "a.mkv", statistics(300)).unwrap();
        plain.save(&without).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&without).unwrap())
            .expect("a track calibration is JSON");
        assert!(json.get("tail").is_none());
        assert!(TrackCalibration::load(&without).unwrap().tail.is_none());
        let tailed = plain.with_tail(TailOptions::default()).unwrap();
        tailed.save(&with).unwrap();
        let loaded = TrackCalibration::load(&with).unwrap();
        assert_eq!(loaded.tail, tailed.tail);
        let mut merged = TrackCalibration::load(&without).unwrap();
        merged.merge(loaded, &with).unwrap();
        let refit = TrackCalibration::fit(setting(), "all", merged.statistics.clone())
            .unwrap()
            .with_tail(TailOptions::default())
            .unwrap();
        assert_eq!(merged.tail, refit.tail);
        assert_eq!(merged.gpd().unwrap().points, 30);
        // A damaged tail is refused on load.
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&with).unwrap()).unwrap();
        json["tail"]["fit"]["scale"] = serde_json::json!(-1.0);
        std::fs::write(&with, json.to_string()).unwrap();
        let e = TrackCalibration::load(&with).unwrap_err().to_string();
        assert!(e.contains("with.json") && e.contains("invalid tail"), "{e}");
    }

    #[test]
    fn fitting_on_no_track_is_an_error() {
        assert!(TrackCalibration::fit(setting(), "empty.mkv", vec![]).is_err());
    }
}
