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

use image::RgbImage;
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{
    channel, sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::calibration::TrackCalibration;
use super::evidence::{TrackEvidence, TrackRule};
use super::ffmpeg::{Frame, FrameSink, FrameSource, InputDamage, Killer};
use super::tracker::{EndedTrack, Tracker, TrackerConfig};
use crate::detect::nms::{area, intersection, iou};
use crate::error::{Error, Result};
use crate::pipeline::{Detection, OodDetector};
use crate::render::{annotate_in_place, Annotation};

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
    /// Boxes on the track, and the frame by which it was known to be unknown.
    pub boxes: usize,
    pub decided_frame: u64,
    /// The track's most unusual box (smallest p-value), and its frame.
    pub bbox: [f32; 4],
    pub bbox_frame: u64,
    /// A crop of that box, with --crops.
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
    /// Any track that ended, known or not, with its evidence: what `--fit-tracks` calibrates
    /// on.
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
    /// Boxes on the track so far.
    pub boxes: usize,
    /// The track's box in the decision frame.
    pub bbox: [f32; 4],
    /// With --crops: a crop of the track's most unusual box so far
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
    /// The statistic a track calibration ranks ([`TrackEvidence::statistic`]).
    pub statistic: f64,
    pub p_value: f64,
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

#[derive(Default)]
struct Counters {
    decoded: AtomicU64,
    detected: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
    decode_ns: AtomicU64,
    encode_ns: AtomicU64,
    /// Set by the decoder when it has read its last frame.
    input_done: AtomicBool,
}

fn stop_requested(options: &StreamOptions) -> bool {
    options
        .stop
        .as_ref()
        .is_some_and(|stop| stop.load(Ordering::Relaxed))
}

fn add(counter: &AtomicU64, d: Duration) {
    counter.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

fn nanos(counter: &AtomicU64) -> Duration {
    Duration::from_nanos(counter.load(Ordering::Relaxed))
}

/// A detected box with its track.
struct TrackedBox {
    detection: Detection,
    track: u64,
}

/// What the detector stage hands the encoder for one frame.
struct Detected {
    index: u64,
    image: RgbImage,
    boxes: Vec<TrackedBox>,
    /// Tracks found unknown while detecting this frame.
    newly_unknown: Vec<u64>,
    /// Tracks that ended at this frame: (id, last frame).
    ended: Vec<(u64, u64)>,
}

/// Per-track bookkeeping in the detector stage.
struct TrackState {
    first_frame: u64,
    /// When its first and latest frames were read.
    first_seen: SystemTime,
    last_seen: SystemTime,
    evidence: TrackEvidence,
    class_votes: Vec<usize>,
    boxes: usize,
    decided: Option<u64>,
    /// The box with the smallest p-value so far: (p, box, frame).
    most_unusual: (f64, [f32; 4], u64),
    /// Its crop, when crops are wanted.
    crop: Option<RgbImage>,
}

fn crop_box(image: &RgbImage, bbox: [f32; 4]) -> Option<RgbImage> {
    let (w, h) = image.dimensions();
    let x1 = (bbox[0].floor().max(0.0) as u32).min(w);
    let y1 = (bbox[1].floor().max(0.0) as u32).min(h);
    let x2 = (bbox[2].ceil().max(0.0) as u32).min(w);
    let y2 = (bbox[3].ceil().max(0.0) as u32).min(h);
    (x2 > x1 && y2 > y1)
        .then(|| image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image())
}

/// Opens the output video, given the size of its first frame.
pub type OpenSink<'a> = Box<dyn FnOnce((u32, u32)) -> Result<FrameSink> + Send + 'a>;

/// Runs the stream filter. `open_sink` opens the output once the first frame to write is
/// known (its size); with `Keep::Ood` and no unknown track it is never called. Without it no
/// frame is drawn or written: the stream is only detected and tracked, for `on_output`.
/// `on_output` receives each frame's tracked boxes, each track in the frame it is called
/// unknown, and each track as it ends; `on_progress` a snapshot after every frame.
#[allow(clippy::too_many_arguments)]
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
    let counters = Counters::default();
    let start = Instant::now();
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

    std::thread::scope(|scope| {
        if let Some(stop) = &options.stop {
            // Any stage may be blocked on an ffmpeg pipe (a stalled camera, a stalled reader of
            // the output): killing both ffmpegs unblocks them all, and each then stops.
            let (source_killer, sink_killer) = (&source_killer, &sink_killer);
            scope.spawn(move || loop {
                match watching.recv_timeout(STOP_POLL) {
                    Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => {
                        source_killer.kill();
                        if let Some(sink) = sink_killer.lock().expect("sink killer").as_ref() {
                            sink.kill();
                        }
                        return;
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            });
        }
        let decoder = scope.spawn(|| decode(source, frame_tx, options.realtime, &counters));
        let (encoder, detected_tx) = match open_sink {
            Some(open_sink) => {
                let (counters, sink_killer) = (&counters, &sink_killer);
                let encoder = scope.spawn(move || {
                    encode(
                        detected_rx,
                        open_sink,
                        options,
                        (rule.block, pad),
                        counters,
                        sink_killer,
                    )
                });
                (Some(encoder), Some(detected_tx))
            }
            None => (None, None),
        };

        let mut tracker = Tracker::new(options.tracker.clone());
        let mut tracks: HashMap<u64, TrackState> = HashMap::new();
        let mut events = 0usize;
        let (mut detect_time, mut track_time) = (Duration::ZERO, Duration::ZERO);
        let mut unknown_tracks = 0u64;
        let mut stage_error = None;
        let mut interrupted = false;

        for frame in frame_rx.iter() {
            if stop_requested(options) {
                interrupted = true;
                break;
            }
            let t0 = Instant::now();
            let detections = match detector.detect(&frame.image) {
                Ok(d) => d,
                Err(e) => {
                    stage_error = Some(e);
                    break;
                }
            };
            let t1 = Instant::now();
            // Class-aware NMS can leave several boxes, of different classes, on one object:
            // they form one group, tracked as one.
            let groups = group_duplicates(&detections, DUPLICATE_IOU);
            let leaders: Vec<[f32; 4]> = groups
                .iter()
                .map(|g| detections[g[0]].record.bbox)
                .collect();
            let (group_ids, ended) = tracker.update(frame.index, &leaders);
            let mut ids = vec![0; detections.len()];
            let mut newly_unknown = Vec::new();
            // Each with the track's crop so far, written when the alert is reported.
            let mut alerts: Vec<(UnknownAlert, Option<RgbImage>)> = Vec::new();
            for (g, (group, &id)) in groups.iter().zip(&group_ids).enumerate() {
                let leader = &detections[group[0]];
                let state = tracks.entry(id).or_insert_with(|| TrackState {
                    first_frame: frame.index,
                    first_seen: frame.read_at,
                    last_seen: frame.read_at,
                    evidence: TrackEvidence::default(),
                    class_votes: vec![0; names.len()],
                    boxes: 0,
                    decided: None,
                    most_unusual: (f64::INFINITY, leader.record.bbox, frame.index),
                    crop: None,
                });
                // Bonferroni over the group: the smallest of k p-values, times k, is a valid
                // p-value for the object whatever the dependence between its boxes.
                let (p_min, unusual) = group
                    .iter()
                    .map(|&i| (detections[i].ood.p_value, i))
                    .min_by(|a, b| a.0.total_cmp(&b.0))
                    .expect("groups are not empty");
                let p = (p_min * group.len() as f64).min(1.0);
                // An object overlapping another is partly hidden or merged with it: the
                // calibration (scenes with limited occlusion) says nothing about such views,
                // so they count as no evidence either way.
                if !overlaps_another(&leaders, &leaders[g]) {
                    state.evidence.push(p, &rule);
                }
                state.class_votes[leader.record.class_id] += 1;
                state.boxes += 1;
                state.last_seen = frame.read_at;
                let bbox = detections[unusual].record.bbox;
                if p < state.most_unusual.0 {
                    state.most_unusual = (p, bbox, frame.index);
                    if options.crops.is_some() {
                        state.crop = crop_box(&frame.image, bbox);
                    }
                }
                if state.decided.is_none() && state.evidence.is_unknown(&rule) {
                    state.decided = Some(frame.index);
                    newly_unknown.push(id);
                    unknown_tracks += 1;
                    let p = state.evidence.p_value();
                    alerts.push((
                        UnknownAlert {
                            track_id: id,
                            first_frame: state.first_frame,
                            first_time_s: state.first_frame as f64 / fps,
                            decided_frame: frame.index,
                            decided_time_s: frame.index as f64 / fps,
                            decided_at: wall_clock(frame.read_at),
                            class_name: names[majority_class(&state.class_votes)].clone(),
                            ood_confidence: 1.0 - p,
                            p_value: p,
                            boxes: state.boxes,
                            bbox: leader.record.bbox,
                            crop: None,
                        },
                        state.crop.clone(),
                    ));
                }
                for &i in group {
                    ids[i] = id;
                }
            }
            let boxes: Vec<(u64, &Detection)> = ids.iter().copied().zip(&detections).collect();
            let reported = on_output(Output::Frame {
                index: frame.index,
                boxes: &boxes,
            })
            .and_then(|_| {
                alerts.iter_mut().try_for_each(|(alert, crop)| {
                    if let (Some(dir), Some(image)) = (&options.crops, crop) {
                        let name = format!("track_{:06}_decided.png", alert.track_id);
                        alert.crop = Some(save_crop(image, &dir.join(name))?);
                    }
                    on_output(Output::Alert(alert))
                })
            })
            .and_then(|_| close_tracks(ended, &mut tracks, options, &names, fps))
            .and_then(|closed| {
                events += closed.events.len();
                report_closed(&closed, &mut on_output).map(|_| closed.ended)
            });
            let ended = match reported {
                Ok(ended) => ended,
                Err(e) => {
                    stage_error = Some(e);
                    break;
                }
            };
            let t2 = Instant::now();
            detect_time += t1 - t0;
            track_time += t2 - t1;
            counters.detected.fetch_add(1, Ordering::Relaxed);
            if let Some(detected_tx) = &detected_tx {
                let message = Detected {
                    index: frame.index,
                    image: frame.image,
                    boxes: detections
                        .into_iter()
                        .zip(ids)
                        .map(|(detection, track)| TrackedBox { detection, track })
                        .collect(),
                    newly_unknown,
                    ended,
                };
                if detected_tx.send(message).is_err() {
                    break; // the encoder failed; its error is reported below
                }
            }
            on_progress(&snapshot(
                &counters,
                start,
                detect_time,
                track_time,
                unknown_tracks,
            ));
        }
        if stage_error.is_none() {
            // The frames still held by the encoder need no retirement notices: it ends too.
            // After a stop, too, the unknown tracks seen so far are reported.
            let reported = close_tracks(tracker.finish(), &mut tracks, options, &names, fps)
                .and_then(|closed| {
                    events += closed.events.len();
                    report_closed(&closed, &mut on_output)
                });
            if let Err(e) = reported {
                stage_error = Some(e);
            }
        }
        drop(detected_tx);
        drop(frame_rx);
        let encoded = encoder.map_or(Ok(()), |e| {
            e.join().expect("the encoder thread does not panic")
        });
        let decoded = decoder.join().expect("the decoder thread does not panic");
        drop(running);
        // A stage that failed while a stop was pending failed because of it: the stop killed
        // its ffmpeg, or the terminal's Ctrl-C reached ffmpeg (same process group) as well.
        if interrupted || (stop_requested(options) && (stage_error.is_some() || encoded.is_err())) {
            return Err(Error::Interrupted {
                frames: counters.detected.load(Ordering::Relaxed),
            });
        }
        if let Some(e) = stage_error {
            return Err(e);
        }
        encoded?;
        let (damage, input_error) = decoded;
        let progress = snapshot(&counters, start, detect_time, track_time, unknown_tracks);
        Ok(StreamReport {
            fps: progress.fps(),
            tracks: tracker.started(),
            progress,
            events,
            damage,
            input_error,
            peak_rss_kib: peak_rss_kib(),
        })
    })
}

/// Boxes whose IoU with a more confident box is at least this lie on the same object.
const DUPLICATE_IOU: f32 = 0.6;

/// Groups detections that overlap a more confident one by at least `min_iou`, ignoring the
/// class; each group lists its members, most confident first.
fn group_duplicates(detections: &[Detection], min_iou: f32) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..detections.len()).collect();
    order.sort_by(|&a, &b| {
        detections[b]
            .record
            .confidence
            .total_cmp(&detections[a].record.confidence)
    });
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for i in order {
        let bbox = &detections[i].record.bbox;
        match groups
            .iter_mut()
            .find(|g| iou(&detections[g[0]].record.bbox, bbox) >= min_iou)
        {
            Some(group) => group.push(i),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// Whether `bbox` overlaps one of `others` (itself excluded) by more than a sliver. A box lying
/// inside `bbox` does not count: it is most often a part of the same object boxed on its own
/// (an arm of a cross, a lobe of a blob), which hides nothing of it.
fn overlaps_another(others: &[[f32; 4]], bbox: &[f32; 4]) -> bool {
    others
        .iter()
        .any(|o| o != bbox && iou(o, bbox) > OCCLUSION_IOU && !lies_inside(o, bbox))
}

/// Whether at least [`NESTED_FRACTION`] of `inner`'s area lies inside `outer`, which is larger.
fn lies_inside(inner: &[f32; 4], outer: &[f32; 4]) -> bool {
    area(inner) < area(outer) && intersection(inner, outer) >= NESTED_FRACTION * area(inner)
}

/// The share of a box's area inside a larger box for it to count as a part of that box's
/// object.
const NESTED_FRACTION: f32 = 0.8;

/// Boxes overlapping more than this are treated as occluding each other.
const OCCLUSION_IOU: f32 = 0.05;

/// Tracks that ended in one frame.
struct Closed {
    /// (id, last frame) of each.
    ended: Vec<(u64, u64)>,
    evidence: Vec<EndedTrackEvidence>,
    /// The unknown ones.
    events: Vec<UnknownEvent>,
}

fn report_closed(closed: &Closed, on_output: &mut impl FnMut(Output) -> Result<()>) -> Result<()> {
    for evidence in &closed.evidence {
        on_output(Output::TrackEnded(evidence))?;
    }
    for event in &closed.events {
        on_output(Output::Event(event))?;
    }
    Ok(())
}

/// Writes a crop as PNG, atomically; returns its path.
fn save_crop(image: &RgbImage, path: &Path) -> Result<PathBuf> {
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::BadInput {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    crate::data::write_atomically(path, &bytes)?;
    Ok(path.to_path_buf())
}

/// RFC 3339 in UTC, to the millisecond.
fn wall_clock(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// The class with the most votes (the first on a tie).
fn majority_class(votes: &[usize]) -> usize {
    (0..votes.len())
        .max_by_key(|&c| (votes[c], std::cmp::Reverse(c)))
        .unwrap_or(0)
}

/// Removes the ended tracks' state; returns their evidence, and the events of the unknown ones
/// (writing their crops).
fn close_tracks(
    ended: Vec<EndedTrack>,
    tracks: &mut HashMap<u64, TrackState>,
    options: &StreamOptions,
    names: &[String],
    fps: f64,
) -> Result<Closed> {
    let mut closed = Closed {
        ended: Vec::new(),
        evidence: Vec::new(),
        events: Vec::new(),
    };
    for t in ended {
        closed.ended.push((t.id, t.last_frame));
        let Some(state) = tracks.remove(&t.id) else {
            continue;
        };
        closed.evidence.push(EndedTrackEvidence {
            track_id: t.id,
            boxes: state.boxes,
            statistic: state.evidence.statistic(),
            p_value: state.evidence.p_value(),
        });
        let Some(decided) = state.decided else {
            continue;
        };
        let class_id = majority_class(&state.class_votes);
        let crop = match (&options.crops, &state.crop) {
            (Some(dir), Some(image)) => Some(save_crop(
                image,
                &dir.join(format!("track_{:06}.png", t.id)),
            )?),
            _ => None,
        };
        let p = state.evidence.p_value();
        closed.events.push(UnknownEvent {
            track_id: t.id,
            first_frame: t.first_frame,
            last_frame: t.last_frame,
            first_time_s: t.first_frame as f64 / fps,
            last_time_s: t.last_frame as f64 / fps,
            first_seen_at: wall_clock(state.first_seen),
            last_seen_at: wall_clock(state.last_seen),
            class_name: names[class_id].clone(),
            ood_confidence: 1.0 - p,
            p_value: p,
            boxes: state.boxes,
            decided_frame: decided,
            bbox: state.most_unusual.1,
            bbox_frame: state.most_unusual.2,
            crop,
        });
    }
    Ok(closed)
}

fn snapshot(
    counters: &Counters,
    start: Instant,
    detect: Duration,
    track: Duration,
    unknown_tracks: u64,
) -> Progress {
    Progress {
        decoded: counters.decoded.load(Ordering::Relaxed),
        detected: counters.detected.load(Ordering::Relaxed),
        written: counters.written.load(Ordering::Relaxed),
        dropped: counters.dropped.load(Ordering::Relaxed),
        unknown_tracks,
        elapsed: start.elapsed(),
        times: StageTimes {
            decode: nanos(&counters.decode_ns),
            detect,
            track,
            encode: nanos(&counters.encode_ns),
        },
    }
}

/// The decoder thread: reads frames until the end, an error, or the consumer stops. In
/// realtime mode a frame that finds the queue full is dropped.
fn decode(
    mut source: FrameSource,
    tx: SyncSender<Frame>,
    realtime: bool,
    counters: &Counters,
) -> (InputDamage, Option<Error>) {
    let mut error = None;
    loop {
        let t0 = Instant::now();
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        add(&counters.decode_ns, t0.elapsed());
        counters.decoded.fetch_add(1, Ordering::Relaxed);
        let sent = if realtime {
            match tx.try_send(frame) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        } else {
            tx.send(frame).is_ok()
        };
        if !sent {
            break;
        }
    }
    counters.input_done.store(true, Ordering::Relaxed);
    (source.damage(), error)
}

/// Whether a frame shows a box of an unknown track.
fn shows_unknown(frame: &Detected, unknown: &HashSet<u64>) -> bool {
    frame.boxes.iter().any(|b| unknown.contains(&b.track))
}

/// Labels and draws one frame's boxes.
fn render(mut frame: Detected, unknown: &HashSet<u64>, options: &StreamOptions) -> RgbImage {
    let mut annotations = Vec::new();
    for b in &frame.boxes {
        let d = &b.detection;
        let is_unknown = unknown.contains(&b.track);
        let name = if is_unknown && options.action == OodAction::Relabel {
            "unknown"
        } else {
            &d.class_name
        };
        if is_unknown && options.action == OodAction::Drop {
            continue;
        }
        annotations.push(Annotation {
            bbox: d.record.bbox,
            label: format!(
                "#{} {name} {:.2} · {}",
                b.track,
                d.record.confidence,
                crate::render::verdict_text(d.ood.p_value, is_unknown)
            ),
            class_id: d.record.class_id,
            ood_confidence: Some(d.ood.confidence),
            flagged: is_unknown && options.action == OodAction::Flag,
        });
    }
    annotate_in_place(&mut frame.image, &annotations, true);
    frame.image
}

/// The encoder thread: holds frames back one block (`delay` frames), draws them with the track
/// decisions made meanwhile, and writes them. In realtime mode a dropped frame is replaced by
/// the previous output frame, so the output keeps its length and timing. With `Keep::Ood` it
/// writes the frames that show an unknown track and the `pad` frames before and after each.
fn encode(
    rx: Receiver<Detected>,
    open_sink: OpenSink,
    options: &StreamOptions,
    (delay, pad): (usize, usize),
    counters: &Counters,
    sink_killer: &Mutex<Option<Killer>>,
) -> Result<()> {
    let mut open_sink = Some(open_sink);
    let mut sink: Option<FrameSink> = None;
    let mut unknown: HashSet<u64> = HashSet::new();
    // Ended unknown tracks leave the set once no frame still to be drawn can show them.
    let mut retiring: VecDeque<(u64, u64)> = VecDeque::new();
    let mut held: VecDeque<Detected> = VecDeque::new();
    // With `Keep::Ood`: the last (at most `pad`) frames not written, the lead-in of a clip
    // should the next frame show an unknown track; and how many frames the clip still runs
    // after the last one that did.
    let mut lead_in: VecDeque<Detected> = VecDeque::new();
    let mut trail = 0usize;
    let mut last_written: Option<RgbImage> = None;
    let mut next_index = 0u64;

    let draw = |frame: Detected, unknown: &HashSet<u64>| {
        let t0 = Instant::now();
        let image = render(frame, unknown, options);
        add(&counters.encode_ns, t0.elapsed());
        image
    };

    let mut write = |image: &RgbImage, sink: &mut Option<FrameSink>| -> Result<()> {
        let t0 = Instant::now();
        if sink.is_none() {
            let open = open_sink.take().expect("the sink is opened once");
            let opened = open(image.dimensions())?;
            *sink_killer.lock().expect("sink killer") = Some(opened.killer());
            *sink = Some(opened);
        }
        sink.as_mut().expect("opened").write(image)?;
        add(&counters.encode_ns, t0.elapsed());
        counters.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };

    let mut emit = |frame: Detected,
                    unknown: &mut HashSet<u64>,
                    retiring: &mut VecDeque<(u64, u64)>,
                    sink: &mut Option<FrameSink>|
     -> Result<()> {
        let index = frame.index;
        match options.keep {
            Keep::All => {
                let image = draw(frame, unknown);
                // Frames dropped under load are stood in for by the previous frame.
                while next_index < index {
                    write(last_written.as_ref().unwrap_or(&image), sink)?;
                    next_index += 1;
                }
                next_index = index + 1;
                write(&image, sink)?;
                if options.realtime {
                    last_written = Some(image);
                }
            }
            Keep::Ood if shows_unknown(&frame, unknown) => {
                // The lead-in is drawn only now, so that a track found unknown since it was
                // detected is marked in it too.
                for earlier in lead_in.drain(..).chain([frame]) {
                    write(&draw(earlier, unknown), sink)?;
                }
                trail = pad;
            }
            Keep::Ood if trail > 0 => {
                trail -= 1;
                write(&draw(frame, unknown), sink)?;
            }
            Keep::Ood => {
                if pad > 0 {
                    if lead_in.len() == pad {
                        lead_in.pop_front();
                    }
                    lead_in.push_back(frame);
                }
            }
        }
        let horizon = lead_in.front().map_or(index + 1, |f| f.index);
        while retiring.front().is_some_and(|&(last, _)| last < horizon) {
            let (_, id) = retiring.pop_front().expect("non-empty");
            unknown.remove(&id);
        }
        Ok(())
    };

    for frame in rx.iter() {
        unknown.extend(frame.newly_unknown.iter().copied());
        let mut ended = frame.ended.clone();
        ended.sort_unstable_by_key(|&(_, last)| last);
        for (id, last) in ended {
            if unknown.contains(&id) {
                retiring.push_back((last, id));
            }
        }
        held.push_back(frame);
        while held.len() > delay {
            let out = held.pop_front().expect("non-empty");
            emit(out, &mut unknown, &mut retiring, &mut sink)?;
        }
    }
    if stop_requested(options) {
        // Dropping the sink unfinished kills its ffmpeg and removes the partial file.
        return Err(Error::Interrupted {
            frames: counters.detected.load(Ordering::Relaxed),
        });
    }
    while let Some(out) = held.pop_front() {
        emit(out, &mut unknown, &mut retiring, &mut sink)?;
    }
    if options.keep == Keep::All && counters.input_done.load(Ordering::Relaxed) {
        // Trailing frames dropped under load.
        let total = counters.decoded.load(Ordering::Relaxed);
        if let Some(image) = last_written.take() {
            while next_index < total {
                write(&image, &mut sink)?;
                next_index += 1;
            }
        }
    }
    match sink {
        Some(s) => s.finish().map(|_| ()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::BoxRecord;
    use crate::ood::fitted::BoxOod;
    use image::Rgb;

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
