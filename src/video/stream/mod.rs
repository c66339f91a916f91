//! The stream filter: decoding, detection with tracking, and encoding run on three threads
//! joined by bounded queues, so memory stays flat however long the stream is.
//!
//! Frames leave the encoder one block (the minimum duration) after they were detected: by then
//! a track that turns out unknown within its first block has been decided, so its boxes are
//! marked (or dropped, or relabelled) from its first frame, not only from the frame the
//! decision came in.
//!
//! With `Keep::Ood`, a frame that shows no unknown track waits in a lead-in of at most
//! `clip_pad_s` × fps frames; when a frame that shows one comes, the lead-in is drawn and
//! written before it, and the same number of frames after it are written too. Memory grows
//! with the pad, never with the stream. Drawn that late, a lead-in frame marks the tracks
//! decided up to a block plus the pad after it, so a clip shows an unknown object from before
//! the frame its track was decided in. Frames of a track that took longer than that to be
//! decided are not written: keeping them would need a buffer as long as the slowest decision.
//!
//! The module's parts: `pipeline` (the decoder and detector stages, what the stages share,
//! and the stop watcher), `tracks` (which boxes make one object, and each track's evidence),
//! `alerts` (the alerts, events and crops reported), and `encode` (the encoder stage).

mod alerts;
mod encode;
mod pipeline;
mod tracks;

use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::calibration::TrackCalibration;
use super::evidence::TrackRule;
use super::ffmpeg::{Frame, FrameSink, FrameSource, InputDamage, Killer};
use super::tracker::TrackerConfig;
use crate::error::{Error, Result};
use crate::pipeline::{Detection, OodDetector};
use encode::Detected;
use pipeline::{Counters, DetectStage};
use tracks::TrackBook;

/// What happens to the boxes of unknown tracks in the output video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OodAction {
    /// Kept and marked "unknown?" with a double outline.
    Flag,
    /// Removed from the drawing.
    Drop,
    /// Drawn with the class name replaced by "unknown".
    Relabel,
}

/// Which frames the output keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    All,
    /// Only frames showing a box of an unknown track, and those within
    /// [`StreamOptions::clip_pad_s`] of one: short clips, for collecting data to label.
    Ood,
}

#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub action: OodAction,
    pub keep: Keep,
    /// With `Keep::Ood`, the frames up to this many seconds before and after each frame that
    /// shows an unknown track are written too, each frame once (see the module documentation).
    /// 0 writes only the frames that show one.
    pub clip_pad_s: f64,
    /// Drop frames when detection falls behind, instead of lagging.
    pub realtime: bool,
    /// The bound on the share of in-distribution tracks reported as unknown.
    pub track_alpha: f64,
    /// Seconds of evidence per decision block (see [`super::evidence`]).
    pub min_duration_s: f64,
    /// Calibrates the track rule on footage of known objects (see [`super::calibration`]);
    /// its setting must match this stream's.
    pub track_calibration: Option<Arc<TrackCalibration>>,
    pub tracker: TrackerConfig,
    /// Frames each queue between stages holds, at most [`MAX_QUEUE`].
    pub queue: usize,
    /// Write a crop of each unknown track (its most unusual box) into this folder.
    pub crops: Option<PathBuf>,
    /// Set it (from a signal handler, say) to stop the stream: the ffmpeg processes are killed
    /// within [`STOP_POLL`], the output is abandoned (a single-file output is removed, see
    /// [`FrameSink`]), the unknown tracks still open are reported as events, and
    /// [`filter_stream`] returns [`Error::Interrupted`]. A stream whose output was already
    /// complete finishes as usual.
    pub stop: Option<Arc<AtomicBool>>,
}

/// The most frames a queue between stages may hold: each is a decoded frame in memory.
pub const MAX_QUEUE: usize = 1024;

/// How often a stop request is looked for while the stages may be blocked on ffmpeg's pipes.
pub const STOP_POLL: Duration = Duration::from_millis(50);

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            action: OodAction::Flag,
            keep: Keep::All,
            clip_pad_s: 1.0,
            realtime: false,
            track_alpha: 0.05,
            min_duration_s: 1.0,
            track_calibration: None,
            tracker: TrackerConfig::default(),
            queue: 8,
            crops: None,
            stop: None,
        }
    }
}

/// One unknown track, reported when it ends. Frames count from 0.
#[derive(Clone, Debug, Serialize)]
pub struct UnknownEvent {
    pub track_id: u64,
    pub first_frame: u64,
    pub last_frame: u64,
    pub first_time_s: f64,
    pub last_time_s: f64,
    /// When the first and last frames were read (RFC 3339, UTC): for a live input, about when
    /// the object was seen.
    pub first_seen_at: String,
    pub last_seen_at: String,
    /// The class the detector gave most of the track's boxes.
    pub class_name: String,
    /// 1 − the track's p-value.
    pub ood_confidence: f64,
    pub p_value: f64,
    /// The p-value rests on a tail model (see [`crate::video::evidence`]): on box p-values
    /// beyond their calibration range, or on the track calibration's tail. Written only when
    /// true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub p_value_rests_on_tail: bool,
    /// Boxes on the track, and the frame by which it was known to be unknown.
    pub boxes: usize,
    pub decided_frame: u64,
    /// The track's most unusual box (smallest p-value), and its frame.
    pub bbox: [f32; 4],
    pub bbox_frame: u64,
    /// A crop of that box, when crops are asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<PathBuf>,
}

/// What the filter reports as it goes.
pub enum Output<'a> {
    /// One frame's boxes, each with its track id.
    Frame {
        index: u64,
        boxes: &'a [(u64, &'a Detection)],
    },
    /// A track called unknown, in the frame it was decided in, while it still runs.
    Alert(&'a UnknownAlert),
    /// An unknown track that ended.
    Event(&'a UnknownEvent),
    /// Any track that ended, known or not, with its evidence: what a track calibration is
    /// fitted on.
    TrackEnded(&'a EndedTrackEvidence),
}

/// A track called unknown, reported in the frame it was decided in, for live alerting; its
/// [`UnknownEvent`] follows when the track ends. Frames count from 0.
#[derive(Clone, Debug, Serialize)]
pub struct UnknownAlert {
    pub track_id: u64,
    pub first_frame: u64,
    pub first_time_s: f64,
    pub decided_frame: u64,
    pub decided_time_s: f64,
    /// When that frame was read (RFC 3339, UTC): for a live input, about when it was seen.
    pub decided_at: String,
    /// The class the detector gave most of the track's boxes so far.
    pub class_name: String,
    /// 1 − the track's p-value when it was decided.
    pub ood_confidence: f64,
    pub p_value: f64,
    /// The p-value rests on a tail model (see [`crate::video::evidence`]): on box p-values
    /// beyond their calibration range, or on the track calibration's tail. Written only when
    /// true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub p_value_rests_on_tail: bool,
    /// Boxes on the track so far.
    pub boxes: usize,
    /// The track's box in the decision frame.
    pub bbox: [f32; 4],
    /// When crops are asked for: a crop of the track's most unusual box so far
    /// (`track_NNNNNN_decided.png`; its event's crop may be another box).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crop: Option<PathBuf>,
}

/// A track's evidence when it ended.
#[derive(Clone, Debug, Serialize)]
pub struct EndedTrackEvidence {
    pub track_id: u64,
    /// Boxes on the track.
    pub boxes: usize,
    /// The statistic a track calibration ranks
    /// ([`TrackEvidence::statistic`](super::evidence::TrackEvidence::statistic)).
    pub statistic: f64,
    pub p_value: f64,
    /// The p-value rests on a tail model (see [`crate::video::evidence`]): on box p-values
    /// beyond their calibration range, or on the track calibration's tail. Written only when
    /// true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub p_value_rests_on_tail: bool,
}

/// Time spent per stage, summed over frames.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub decode: Duration,
    pub detect: Duration,
    pub track: Duration,
    pub encode: Duration,
}

/// A snapshot of a running stream, for progress lines.
#[derive(Clone, Debug)]
pub struct Progress {
    pub decoded: u64,
    pub detected: u64,
    pub written: u64,
    pub dropped: u64,
    pub unknown_tracks: u64,
    pub elapsed: Duration,
    pub times: StageTimes,
}

impl Progress {
    /// Frames detected per second of wall time.
    pub fn fps(&self) -> f64 {
        self.detected as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Mean milliseconds per frame of decode, detect, track and encode.
    pub fn stage_ms(&self) -> [f64; 4] {
        let per = |d: Duration, n: u64| d.as_secs_f64() * 1000.0 / n.max(1) as f64;
        [
            per(self.times.decode, self.decoded),
            per(self.times.detect, self.detected),
            per(self.times.track, self.detected),
            per(self.times.encode, self.written),
        ]
    }
}

/// What a run did.
#[derive(Debug)]
pub struct StreamReport {
    pub progress: Progress,
    pub fps: f64,
    /// Tracks started, and unknown tracks reported.
    pub tracks: u64,
    pub events: usize,
    /// Frames ffmpeg could not decode and packets it flagged as corrupt, reading on.
    pub damage: InputDamage,
    /// Why the input stopped early, when it did; frames before it were processed and written.
    pub input_error: Option<Error>,
    /// Peak resident memory of the process, KiB (Linux).
    pub peak_rss_kib: Option<u64>,
}

/// The peak resident set size of this process (`VmHWM`), where /proc tells it.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Opens the output video, given the size of its first frame.
pub type OpenSink<'a> = Box<dyn FnOnce((u32, u32)) -> Result<FrameSink> + Send + 'a>;

/// Runs the stream filter. `open_sink` opens the output once the first frame to write is
/// known (its size); with `Keep::Ood` and no unknown track it is never called. Without it no
/// frame is drawn or written: the stream is only detected and tracked, for `on_output`.
/// `on_output` receives each frame's tracked boxes, each track in the frame it is called
/// unknown, and each track as it ends; `on_progress` a snapshot after every frame.
pub fn filter_stream(
    detector: &OodDetector,
    source: FrameSource,
    open_sink: Option<OpenSink>,
    options: &StreamOptions,
    mut on_output: impl FnMut(Output) -> Result<()>,
    mut on_progress: impl FnMut(&Progress),
) -> Result<StreamReport> {
    let fps = source.fps();
    let rule = TrackRule {
        calibration: options.track_calibration.clone(),
        ..TrackRule::new(options.track_alpha, options.min_duration_s, fps)
    };
    let pad = (options.clip_pad_s.max(0.0) * fps).round() as usize;
    let delay = rule.block;
    let counters = Counters::default();
    if options.queue > MAX_QUEUE {
        return Err(Error::OutOfRange {
            item: "queue".into(),
            value: options.queue.to_string(),
            range: format!("[0, {MAX_QUEUE}] frames"),
        });
    }
    let queue = options.queue.max(1);
    let (frame_tx, frame_rx) = sync_channel::<Frame>(queue);
    let (detected_tx, detected_rx) = sync_channel::<Detected>(queue);
    let names = detector.detector().class_names().to_vec();
    let source_killer = source.killer();
    let sink_killer: Mutex<Option<Killer>> = Mutex::new(None);
    // Dropped when the stream is over, which ends the stop watcher.
    let (running, watching) = channel::<()>();
    let mut stage = DetectStage {
        detector,
        options,
        counters: &counters,
        start: Instant::now(),
        book: TrackBook::new(options, rule, names, fps),
        detect_time: Duration::ZERO,
        track_time: Duration::ZERO,
    };

    std::thread::scope(|scope| {
        if let Some(stop) = &options.stop {
            let (source_killer, sink_killer) = (&source_killer, &sink_killer);
            scope.spawn(move || pipeline::watch_stop(stop, source_killer, sink_killer, watching));
        }
        let decoder =
            scope.spawn(|| pipeline::decode(source, frame_tx, options.realtime, &counters));
        let (encoder, detected_tx) = match open_sink {
            Some(open_sink) => {
                let (counters, sink_killer) = (&counters, &sink_killer);
                let encoder = scope.spawn(move || {
                    encode::encode(
                        detected_rx,
                        open_sink,
                        options,
                        (delay, pad),
                        counters,
                        sink_killer,
                    )
                });
                (Some(encoder), Some(detected_tx))
            }
            None => (None, None),
        };

        let (stage_error, interrupted) =
            stage.run(&frame_rx, detected_tx, &mut on_output, &mut on_progress);
        drop(frame_rx);
        let encoded = encoder.map_or(Ok(()), |e| {
            e.join().expect("the encoder thread does not panic")
        });
        let decoded = decoder.join().expect("the decoder thread does not panic");
        drop(running);
        // A stage that failed while a stop was pending failed because of it: the stop killed
        // its ffmpeg, or the terminal's Ctrl-C reached ffmpeg (same process group) as well.
        if interrupted
            || (pipeline::stop_requested(options) && (stage_error.is_some() || encoded.is_err()))
        {
            return Err(Error::Interrupted {
                frames: stage.detected(),
            });
        }
        if let Some(e) = stage_error {
            return Err(e);
        }
        encoded?;
        let (damage, input_error) = decoded;
        let progress = stage.snapshot();
        Ok(StreamReport {
            fps: progress.fps(),
            tracks: stage.book.started(),
            progress,
            events: stage.book.events,
            damage,
            input_error,
            peak_rss_kib: peak_rss_kib(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::encode::{render, shows_unknown, TrackedBox};
    use super::tracks::TrackBook;
    use super::tracks::{group_duplicates, overlaps_another};
    use super::*;
    use crate::core::BoxRecord;
    use crate::ood::fitted::BoxOod;
    use crate::video::ffmpeg::Frame;
    use image::{Rgb, RgbImage};
    use serde_json::Value;
    use std::collections::HashSet;

    fn detection(bbox: [f32; 4], class_id: usize, confidence: f32, p: f64) -> Detection {
        Detection {
            record: BoxRecord {
                bbox,
                class_id,
                confidence,
                logits: vec![0.0; 4],
                feature: Vec::new(),
                level: 0,
                anchor: 0,
                roi_features: Vec::new(),
            },
            class_name: ["circle", "square"][class_id].to_string(),
            ood: BoxOod {
                score: 0.0,
                p_value: p,
                confidence: 1.0 - p,
                is_ood: p <= 0.05,
                p_value_extrapolated: false,
            },
        }
    }

    /// One object seen in `frames` frames, its box p-value `p` from the scorer's tail or not:
    /// the JSON of its alert, then of its event.
    fn alert_and_event(p: f64, extrapolated: bool, frames: u64) -> (Value, Value) {
        let options = StreamOptions::default();
        let rule = TrackRule::new(0.05, 1.0, 3.0);
        let mut book = TrackBook::new(&options, rule, vec!["circle".into(), "square".into()], 3.0);
        let mut box_ = detection([10.0, 10.0, 50.0, 50.0], 0, 0.9, p);
        box_.ood.p_value_extrapolated = extrapolated;
        let mut reports = Vec::new();
        let mut on_output = |output: Output| {
            match output {
                Output::Alert(a) => reports.push(serde_json::to_value(a).unwrap()),
                Output::Event(e) => reports.push(serde_json::to_value(e).unwrap()),
                _ => {}
            }
            Ok(())
        };
        for index in 0..frames {
            let frame = Frame {
                index,
                image: RgbImage::new(64, 64),
                read_at: std::time::SystemTime::now(),
            };
            let observed = book.observe(&frame, std::slice::from_ref(&box_));
            let alerts = observed.alerts;
            book.report(index, &[], &[], alerts, &mut on_output)
                .unwrap();
        }
        book.finish(&mut on_output).unwrap();
        let [alert, event] = reports.try_into().expect("one alert and one event");
        (alert, event)
    }

    /// Alerts and events say when their p-value rests on the scorer's tail, and say nothing
    /// otherwise.
    #[test]
    fn alerts_and_events_say_when_their_p_value_rests_on_a_tail() {
        let (alert, event) = alert_and_event(1e-5, true, 4);
        for report in [&alert, &event] {
            assert_eq!(report["p_value_rests_on_tail"], true, "{report}");
        }
        // Blocks of 3, two boxes needed: 1e-5 · 3 / (2 · 0.8).
        assert!((alert["p_value"].as_f64().unwrap() - 1.875e-5).abs() < 1e-15);
        let (alert, event) = alert_and_event(1e-3, false, 4);
        for report in [&alert, &event] {
            assert!(report.get("p_value_rests_on_tail").is_none(), "{report}");
        }
    }

    #[test]
    fn duplicate_boxes_on_one_object_form_one_group() {
        let boxes = [
            detection([10.0, 10.0, 50.0, 50.0], 0, 0.4, 0.01),
            detection([100.0, 10.0, 140.0, 50.0], 1, 0.9, 0.5),
            detection([11.0, 9.0, 50.0, 52.0], 1, 0.8, 0.2),
        ];
        assert_eq!(group_duplicates(&boxes, 0.6), vec![vec![1], vec![2, 0]]);
    }

    /// A part of an object boxed inside its whole box hides nothing of it; the part itself,
    /// and boxes that only partly overlap, are treated as occluded.
    #[test]
    fn a_box_nested_inside_another_does_not_hide_it() {
        let whole = [100.0, 100.0, 160.0, 160.0];
        let arm = [130.0, 110.0, 158.0, 150.0];
        let beside = [150.0, 100.0, 200.0, 160.0];
        assert!(!overlaps_another(&[whole, arm], &whole));
        assert!(overlaps_another(&[whole, arm], &arm));
        assert!(overlaps_another(&[whole, beside], &whole));
        assert!(overlaps_another(&[whole, beside], &beside));
        // Two thirds of its area inside: not a part, an object in front.
        let sticking_out = [140.0, 110.0, 170.0, 150.0];
        assert!(overlaps_another(&[whole, sticking_out], &whole));
    }

    /// What each action does to the pixels of an unknown track's box, and which frames show
    /// an unknown track.
    #[test]
    fn unknown_tracks_are_flagged_dropped_or_relabelled() {
        let frame = |track: u64| Detected {
            index: 0,
            image: RgbImage::from_pixel(300, 300, Rgb([128, 128, 128])),
            boxes: vec![TrackedBox {
                detection: detection([40.0, 60.0, 200.0, 220.0], 0, 0.9, 0.004),
                track,
            }],
            newly_unknown: Vec::new(),
            ended: Vec::new(),
        };
        let unknown: HashSet<u64> = [7].into();
        let draw = |action, track| {
            let options = StreamOptions {
                action,
                ..Default::default()
            };
            render(frame(track), &unknown, &options)
        };
        let plain = RgbImage::from_pixel(300, 300, Rgb([128, 128, 128]));
        let edge = |image: &RgbImage| *image.get_pixel(120, 60);
        let flagged = draw(OodAction::Flag, 7);
        let known = draw(OodAction::Flag, 3);
        let dropped = draw(OodAction::Drop, 7);
        let relabelled = draw(OodAction::Relabel, 7);
        assert_ne!(edge(&flagged), edge(&plain));
        assert_ne!(edge(&relabelled), edge(&plain));
        // Dropped: the box is gone (only the legend, bottom right, is drawn).
        assert_eq!(edge(&dropped), edge(&plain));
        assert_eq!(dropped.get_pixel(40, 140), plain.get_pixel(40, 140));
        // Flagged boxes get a double outline; relabelled ones a different label.
        assert_ne!(flagged.get_pixel(38, 140), known.get_pixel(38, 140));
        assert_ne!(relabelled.as_raw(), known.as_raw());
        assert!(!shows_unknown(&frame(3), &unknown));
        assert!(shows_unknown(&frame(7), &unknown));
    }
}
