//! What the stream reports about unknown tracks: the alert when a track is decided, the event
//! and evidence when it ends, and the crops of their most unusual boxes.

use image::RgbImage;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::tracks::TrackState;
use super::{EndedTrackEvidence, Output, StreamOptions, UnknownAlert, UnknownEvent};
use crate::error::{Error, Result};
use crate::pipeline::Detection;
use crate::video::ffmpeg::Frame;
use crate::video::tracker::EndedTrack;

pub(super) fn crop_box(image: &RgbImage, bbox: [f32; 4]) -> Option<RgbImage> {
    let (w, h) = image.dimensions();
    let x1 = (bbox[0].floor().max(0.0) as u32).min(w);
    let y1 = (bbox[1].floor().max(0.0) as u32).min(h);
    let x2 = (bbox[2].ceil().max(0.0) as u32).min(w);
    let y2 = (bbox[3].ceil().max(0.0) as u32).min(h);
    (x2 > x1 && y2 > y1)
        .then(|| image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image())
}

/// The alert of track `id`, decided in `frame`, where `leader` is its box.
pub(super) fn alert(
    id: u64,
    state: &TrackState,
    frame: &Frame,
    leader: &Detection,
    names: &[String],
    fps: f64,
) -> UnknownAlert {
    let p = state.evidence.p_value();
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
        p_value_rests_on_tail: state.evidence.rests_on_tail(),
        boxes: state.boxes,
        bbox: leader.record.bbox,
        crop: None,
    }
}

/// Reports alerts, writing each one's crop first when crops are wanted.
pub(super) fn report_alerts(
    alerts: Vec<(UnknownAlert, Option<RgbImage>)>,
    options: &StreamOptions,
    on_output: &mut impl FnMut(Output) -> Result<()>,
) -> Result<()> {
    for (mut alert, crop) in alerts {
        if let (Some(dir), Some(image)) = (&options.crops, crop) {
            let name = format!("track_{:06}_decided.png", alert.track_id);
            alert.crop = Some(save_crop(&image, &dir.join(name))?);
        }
        on_output(Output::Alert(&alert))?;
    }
    Ok(())
}

/// Tracks that ended in one frame.
#[derive(Default)]
pub(super) struct Closed {
    /// (id, last frame) of each.
    pub(super) ended: Vec<(u64, u64)>,
    evidence: Vec<EndedTrackEvidence>,
    /// The unknown ones.
    pub(super) events: Vec<UnknownEvent>,
}

impl Closed {
    /// Reports each track's evidence, then the events.
    pub(super) fn report(&self, on_output: &mut impl FnMut(Output) -> Result<()>) -> Result<()> {
        for evidence in &self.evidence {
            on_output(Output::TrackEnded(evidence))?;
        }
        for event in &self.events {
            on_output(Output::Event(event))?;
        }
        Ok(())
    }
}

/// Adds an ended track's evidence to `closed`, and its event when it was unknown (writing its
/// crop).
pub(super) fn close_track(
    t: &EndedTrack,
    state: TrackState,
    options: &StreamOptions,
    names: &[String],
    fps: f64,
    closed: &mut Closed,
) -> Result<()> {
    closed.evidence.push(EndedTrackEvidence {
        track_id: t.id,
        boxes: state.boxes,
        statistic: state.evidence.statistic(),
        p_value: state.evidence.p_value(),
        p_value_rests_on_tail: state.evidence.rests_on_tail(),
    });
    let Some(decided) = state.decided else {
        return Ok(());
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
        p_value_rests_on_tail: state.evidence.rests_on_tail(),
        boxes: state.boxes,
        decided_frame: decided,
        bbox: state.most_unusual.1,
        bbox_frame: state.most_unusual.2,
        crop,
    });
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
    crate::core::write_atomically(path, &bytes)?;
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
