//! Track bookkeeping in the detector stage: which boxes lie on one object, each track's
//! evidence, and the moment a track is called unknown.

use image::RgbImage;
use std::collections::HashMap;
use std::time::SystemTime;

use super::alerts::{self, Closed};
use super::{Output, StreamOptions, UnknownAlert};
use crate::core::geometry::{area, intersection, iou};
use crate::error::Result;
use crate::ood::calibration::PValue;
use crate::pipeline::Detection;
use crate::video::evidence::{TrackEvidence, TrackRule};
use crate::video::ffmpeg::Frame;
use crate::video::tracker::{EndedTrack, Tracker};

/// Per-track bookkeeping in the detector stage.
pub(super) struct TrackState {
    pub(super) first_frame: u64,
    /// When its first and latest frames were read.
    pub(super) first_seen: SystemTime,
    pub(super) last_seen: SystemTime,
    pub(super) evidence: TrackEvidence,
    pub(super) class_votes: Vec<usize>,
    pub(super) boxes: usize,
    pub(super) decided: Option<u64>,
    /// The box with the smallest p-value so far: (p, box, frame).
    pub(super) most_unusual: (f64, [f32; 4], u64),
    /// Its crop, when crops are wanted.
    pub(super) crop: Option<RgbImage>,
}

/// The tracks of a stream, and what the detector stage reports about them.
pub(super) struct TrackBook<'a> {
    options: &'a StreamOptions,
    rule: TrackRule,
    names: Vec<String>,
    fps: f64,
    tracker: Tracker,
    tracks: HashMap<u64, TrackState>,
    /// Tracks called unknown so far.
    pub(super) unknown_tracks: u64,
    /// Unknown tracks reported as ended.
    pub(super) events: usize,
}

/// One frame's boxes on their tracks.
pub(super) struct Observed {
    /// The track of each detection.
    pub(super) ids: Vec<u64>,
    /// Tracks found unknown in this frame.
    pub(super) newly_unknown: Vec<u64>,
    /// Their alerts, each with the track's crop so far, written when the alert is reported.
    pub(super) alerts: Vec<(UnknownAlert, Option<RgbImage>)>,
    /// Tracks that ended at this frame.
    pub(super) ended: Vec<EndedTrack>,
}

impl<'a> TrackBook<'a> {
    pub(super) fn new(
        options: &'a StreamOptions,
        rule: TrackRule,
        names: Vec<String>,
        fps: f64,
    ) -> Self {
        TrackBook {
            options,
            rule,
            names,
            fps,
            tracker: Tracker::new(options.tracker.clone()),
            tracks: HashMap::new(),
            unknown_tracks: 0,
            events: 0,
        }
    }

    /// Tracks started.
    pub(super) fn started(&self) -> u64 {
        self.tracker.started()
    }

    /// Puts one frame's detections on tracks and adds their evidence.
    pub(super) fn observe(&mut self, frame: &Frame, detections: &[Detection]) -> Observed {
        // Class-aware NMS can leave several boxes, of different classes, on one object:
        // they form one group, tracked as one.
        let groups = group_duplicates(detections, DUPLICATE_IOU);
        let leaders: Vec<[f32; 4]> = groups
            .iter()
            .map(|g| detections[g[0]].record.bbox)
            .collect();
        let (width, height) = frame.image.dimensions();
        let view = [width as f32, height as f32];
        let (group_ids, ended) = self.tracker.update(frame.index, view, &leaders);
        let mut observed = Observed {
            ids: vec![0; detections.len()],
            newly_unknown: Vec::new(),
            alerts: Vec::new(),
            ended,
        };
        for (g, (group, &id)) in groups.iter().zip(&group_ids).enumerate() {
            // An object overlapping another is partly hidden or merged with it: the
            // calibration (scenes with limited occlusion) says nothing about such views,
            // so they count as no evidence either way.
            let occluded = overlaps_another(&leaders, &leaders[g]);
            if let Some(alert) = self.observe_group(id, group, detections, occluded, frame) {
                observed.newly_unknown.push(id);
                observed.alerts.push(alert);
            }
            for &i in group {
                observed.ids[i] = id;
            }
        }
        observed
    }

    /// Adds one object's boxes to its track; returns its alert (and crop so far) when this
    /// frame decides that the track is unknown.
    fn observe_group(
        &mut self,
        id: u64,
        group: &[usize],
        detections: &[Detection],
        occluded: bool,
        frame: &Frame,
    ) -> Option<(UnknownAlert, Option<RgbImage>)> {
        let leader = &detections[group[0]];
        let state = self.tracks.entry(id).or_insert_with(|| TrackState {
            first_frame: frame.index,
            first_seen: frame.read_at,
            last_seen: frame.read_at,
            evidence: TrackEvidence::default(),
            class_votes: vec![0; self.names.len()],
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
        let extrapolated = group.iter().any(|&i| {
            let ood = &detections[i].ood;
            ood.p_value_extrapolated && ood.p_value <= p_min
        });
        if !occluded {
            let evidence = PValue { p, extrapolated };
            state.evidence.push(evidence, &self.rule);
        }
        state.class_votes[leader.record.class_id] += 1;
        state.boxes += 1;
        state.last_seen = frame.read_at;
        let bbox = detections[unusual].record.bbox;
        if p < state.most_unusual.0 {
            state.most_unusual = (p, bbox, frame.index);
            if self.options.crops.is_some() {
                state.crop = alerts::crop_box(&frame.image, bbox);
            }
        }
        if state.decided.is_some() || !state.evidence.is_unknown(&self.rule) {
            return None;
        }
        state.decided = Some(frame.index);
        self.unknown_tracks += 1;
        let alert = alerts::alert(id, state, frame, leader, &self.names, self.fps);
        Some((alert, state.crop.clone()))
    }

    /// Reports one frame's boxes, then the alerts of the tracks it decided (writing their
    /// crops).
    pub(super) fn report(
        &self,
        index: u64,
        detections: &[Detection],
        ids: &[u64],
        alerts: Vec<(UnknownAlert, Option<RgbImage>)>,
        on_output: &mut impl FnMut(Output) -> Result<()>,
    ) -> Result<()> {
        let boxes: Vec<(u64, &Detection)> = ids.iter().copied().zip(detections).collect();
        on_output(Output::Frame {
            index,
            boxes: &boxes,
        })?;
        alerts::report_alerts(alerts, self.options, on_output)
    }

    /// Removes the ended tracks' state and reports their evidence, and the events of the
    /// unknown ones; returns (id, last frame) of each.
    pub(super) fn close(
        &mut self,
        ended: Vec<EndedTrack>,
        on_output: &mut impl FnMut(Output) -> Result<()>,
    ) -> Result<Vec<(u64, u64)>> {
        let mut closed = Closed::default();
        for t in ended {
            closed.ended.push((t.id, t.last_frame));
            if let Some(state) = self.tracks.remove(&t.id) {
                alerts::close_track(&t, state, self.options, &self.names, self.fps, &mut closed)?;
            }
        }
        self.events += closed.events.len();
        closed.report(on_output)?;
        Ok(closed.ended)
    }

    /// Closes and reports the tracks still open at the end of the stream.
    pub(super) fn finish(
        &mut self,
        on_output: &mut impl FnMut(Output) -> Result<()>,
    ) -> Result<()> {
        let ended = self.tracker.finish();
        self.close(ended, on_output).map(|_| ())
    }
}

/// Boxes whose IoU with a more confident box is at least this lie on the same object.
const DUPLICATE_IOU: f32 = 0.6;

/// Groups detections that overlap a more confident one by at least `min_iou`, ignoring the
/// class; each group lists its members, most confident first.
pub(super) fn group_duplicates(detections: &[Detection], min_iou: f32) -> Vec<Vec<usize>> {
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
pub(super) fn overlaps_another(others: &[[f32; 4]], bbox: &[f32; 4]) -> bool {
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
