//! A SORT-like multi-object tracker. Each track predicts its next box by moving its last box at
//! a constant (smoothed) velocity of its centre, keeping its size. Boxes are matched to tracks
//! in two rounds, each greedy, best pair first:
//!
//! 1. by IoU with the predicted box or with the last box, whichever is larger (an object that
//!    stops, as one that has slid into view does, is still where it was);
//! 2. boxes and tracks left over, by the distance of the box's centre from the predicted one,
//!    relative to their mean diagonal, for boxes of a similar size: an object that starts to
//!    move fast jumps further than IoU can follow before its velocity is known.
//!
//! Unmatched boxes start tracks, and a track that goes unmatched for more than `max_missed`
//! frames ends. A track that goes unmatched while its predicted box lies mostly outside the
//! view ends at once: its object walked out of the frame, and a box that turns up at that
//! edge a few frames later is another object coming in, whose evidence must not be added to
//! the one that left.
//!
//! Matching ignores the class: an unknown object's predicted class often flickers between
//! known classes, and it must stay one track for its OOD evidence to add up.

use crate::core::geometry::{area, intersection, iou};

#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// A box continues a track when its IoU with the track's predicted or last box is at
    /// least this.
    pub min_iou: f32,
    /// In the second round, a box continues a track when its centre lies within this fraction
    /// of their mean diagonal from the predicted centre, and the diagonals differ by less than
    /// [`MAX_SIZE_RATIO`]. 0 turns the round off.
    pub max_centre_distance: f32,
    /// Frames a track survives without a matching box (occlusion, a missed detection).
    pub max_missed: u64,
}

/// How much larger one box's diagonal may be than the other's for a second-round match.
pub const MAX_SIZE_RATIO: f32 = 1.5;

impl Default for TrackerConfig {
    fn default() -> Self {
        // min_iou and max_centre_distance: the fewest track breaks on the synthetic videos of
        // benches/video_events.py without more false alarms on known objects (BENCHMARKS.md).
        TrackerConfig {
            min_iou: 0.3,
            max_centre_distance: 0.45,
            max_missed: 5,
        }
    }
}

/// A track that ended: it went unmatched for too long, or the stream ended.
#[derive(Clone, Debug, PartialEq)]
pub struct EndedTrack {
    pub id: u64,
    pub first_frame: u64,
    /// The last frame it had a box in.
    pub last_frame: u64,
}

struct Track {
    id: u64,
    bbox: [f32; 4],
    /// Movement of the box's centre per frame, smoothed.
    velocity: [f32; 2],
    first_frame: u64,
    last_frame: u64,
}

/// A box's centre and diagonal.
fn centre_and_diagonal(b: &[f32; 4]) -> ([f32; 2], f32) {
    let centre = [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
    (centre, (b[2] - b[0]).hypot(b[3] - b[1]))
}

impl Track {
    /// The last box moved on at the track's velocity. The size stays: a box that shrank while
    /// the object was partly hidden would otherwise keep shrinking over a gap.
    fn predict(&self, frame: u64) -> [f32; 4] {
        let dt = (frame - self.last_frame) as f32;
        let [dx, dy] = self.velocity.map(|v| v * dt);
        let b = self.bbox;
        [b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy]
    }

    /// Moves the track on to `bbox`, seen in `frame`; returns its id.
    fn continue_with(&mut self, bbox: [f32; 4], frame: u64) -> u64 {
        let dt = (frame - self.last_frame) as f32;
        let (new, _) = centre_and_diagonal(&bbox);
        let (old, _) = centre_and_diagonal(&self.bbox);
        for k in 0..2 {
            self.velocity[k] = 0.5 * self.velocity[k] + 0.5 * (new[k] - old[k]) / dt;
        }
        self.bbox = bbox;
        self.last_frame = frame;
        self.id
    }

    fn ended(&self) -> EndedTrack {
        EndedTrack {
            id: self.id,
            first_frame: self.first_frame,
            last_frame: self.last_frame,
        }
    }
}

pub struct Tracker {
    config: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
}

impl Tracker {
    pub fn new(config: TrackerConfig) -> Self {
        Tracker {
            config,
            tracks: Vec::new(),
            next_id: 0,
        }
    }

    /// Tracks started so far.
    pub fn started(&self) -> u64 {
        self.next_id
    }

    /// Tracks alive now.
    pub fn active(&self) -> usize {
        self.tracks.len()
    }

    /// Assigns a track id to each of `boxes` (detected in `frame`, of `view` = [width, height]
    /// pixels; frames increase), and returns the tracks that ended.
    pub fn update(
        &mut self,
        frame: u64,
        view: [f32; 2],
        boxes: &[[f32; 4]],
    ) -> (Vec<u64>, Vec<EndedTrack>) {
        let predicted: Vec<[f32; 4]> = self.tracks.iter().map(|t| t.predict(frame)).collect();
        let (box_track, track_taken) = self.match_boxes(&predicted, boxes);
        let left_view: Vec<bool> = predicted
            .iter()
            .zip(&track_taken)
            .map(|(p, &taken)| !taken && mostly_outside(p, view))
            .collect();
        let ids = boxes
            .iter()
            .zip(&box_track)
            .map(|(bbox, &track)| match track {
                Some(t) => self.tracks[t].continue_with(*bbox, frame),
                None => self.start(*bbox, frame),
            })
            .collect();
        (ids, self.end_tracks(frame, &left_view))
    }

    /// The track each box continues (or none), and which tracks were taken: by IoU first, then
    /// by centre distance among the boxes and tracks left over.
    fn match_boxes(
        &self,
        predicted: &[[f32; 4]],
        boxes: &[[f32; 4]],
    ) -> (Vec<Option<usize>>, Vec<bool>) {
        let mut box_track = vec![None; boxes.len()];
        let mut track_taken = vec![false; self.tracks.len()];
        let mut pairs = Vec::new();
        for (b, bbox) in boxes.iter().enumerate() {
            for (t, (p, track)) in predicted.iter().zip(&self.tracks).enumerate() {
                let overlap = iou(bbox, p).max(iou(bbox, &track.bbox));
                if overlap >= self.config.min_iou {
                    pairs.push((overlap, b, t));
                }
            }
        }
        assign(pairs, &mut box_track, &mut track_taken);
        let mut pairs = Vec::new();
        for (b, bbox) in boxes.iter().enumerate() {
            if box_track[b].is_some() {
                continue;
            }
            for (t, p) in predicted.iter().enumerate() {
                let distance = relative_centre_distance(bbox, p);
                if !track_taken[t] && distance < self.config.max_centre_distance {
                    pairs.push((-distance, b, t));
                }
            }
        }
        assign(pairs, &mut box_track, &mut track_taken);
        (box_track, track_taken)
    }

    /// Starts a track at `bbox`; returns its id.
    fn start(&mut self, bbox: [f32; 4], frame: u64) -> u64 {
        let id = self.next_id;
        self.tracks.push(Track {
            id,
            bbox,
            velocity: [0.0; 2],
            first_frame: frame,
            last_frame: frame,
        });
        self.next_id += 1;
        id
    }

    /// Ends the tracks unmatched for more than `max_missed` frames, and those of the tracks
    /// that were there before this frame's new ones whose `left_view` is set.
    fn end_tracks(&mut self, frame: u64, left_view: &[bool]) -> Vec<EndedTrack> {
        let max_missed = self.config.max_missed;
        let mut ended = Vec::new();
        // The tracks started this frame come after those `left_view` covers.
        let mut left = left_view.iter().copied().chain(std::iter::repeat(false));
        self.tracks.retain(|t| {
            let gone = left.next().unwrap_or(false);
            let keep = frame - t.last_frame <= max_missed && !gone;
            if !keep {
                ended.push(t.ended());
            }
            keep
        });
        ended
    }

    /// Ends every track (the stream is over).
    pub fn finish(&mut self) -> Vec<EndedTrack> {
        self.tracks.drain(..).map(|t| t.ended()).collect()
    }
}

/// The distance between the centres of `b` and `p`, relative to their mean diagonal; infinite
/// when one diagonal is [`MAX_SIZE_RATIO`] times the other or more.
fn relative_centre_distance(b: &[f32; 4], p: &[f32; 4]) -> f32 {
    let (centre, diagonal) = centre_and_diagonal(b);
    let (predicted_centre, predicted_diagonal) = centre_and_diagonal(p);
    if diagonal.max(predicted_diagonal) / diagonal.min(predicted_diagonal) >= MAX_SIZE_RATIO {
        return f32::INFINITY;
    }
    (centre[0] - predicted_centre[0]).hypot(centre[1] - predicted_centre[1])
        / (0.5 * (diagonal + predicted_diagonal))
}

/// Whether less than half of `b`'s area lies inside the view.
fn mostly_outside(b: &[f32; 4], view: [f32; 2]) -> bool {
    let inside = intersection(b, &[0.0, 0.0, view[0], view[1]]);
    inside < 0.5 * area(b)
}

/// Pairs (score, box, track) one to one, highest score first (ties: lower box, then lower
/// track), among the boxes and tracks not yet paired.
fn assign(
    mut pairs: Vec<(f32, usize, usize)>,
    box_track: &mut [Option<usize>],
    track_taken: &mut [bool],
) {
    pairs.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    for (_, b, t) in pairs {
        if box_track[b].is_none() && !track_taken[t] {
            box_track[b] = Some(t);
            track_taken[t] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIEW: [f32; 2] = [640.0, 480.0];

    fn moved(b: [f32; 4], dx: f32) -> [f32; 4] {
        [b[0] + dx, b[1], b[2] + dx, b[3]]
    }

    #[test]
    fn moving_boxes_keep_their_ids_through_a_missed_frame() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let (a, b) = ([0.0, 0.0, 20.0, 20.0], [100.0, 50.0, 130.0, 80.0]);
        let (first, _) = tracker.update(0, VIEW, &[a, b]);
        assert_eq!(first, vec![0, 1]);
        for f in 1..10u64 {
            // Fast enough that without the velocity the IoU would fall below 0.3 after a gap.
            let dx = 8.0 * f as f32;
            if f == 5 {
                let (ids, ended) = tracker.update(f, VIEW, &[moved(b, -dx)]);
                assert_eq!(ids, vec![1]);
                assert!(ended.is_empty());
                continue;
            }
            let (ids, ended) = tracker.update(f, VIEW, &[moved(b, -dx), moved(a, dx)]);
            assert_eq!(ids, vec![1, 0], "frame {f}");
            assert!(ended.is_empty());
        }
        let ended = tracker.finish();
        assert_eq!(ended.len(), 2);
        assert!(ended
            .iter()
            .all(|t| t.first_frame == 0 && t.last_frame == 9));
    }

    #[test]
    fn a_track_ends_after_max_missed_frames_and_new_boxes_get_new_ids() {
        let mut tracker = Tracker::new(TrackerConfig {
            max_missed: 2,
            ..Default::default()
        });
        let a = [10.0, 10.0, 30.0, 30.0];
        tracker.update(0, VIEW, &[a]);
        assert!(tracker.update(1, VIEW, &[]).1.is_empty());
        assert!(tracker.update(2, VIEW, &[]).1.is_empty());
        let (_, ended) = tracker.update(3, VIEW, &[]);
        assert_eq!(
            ended,
            vec![EndedTrack {
                id: 0,
                first_frame: 0,
                last_frame: 0
            }]
        );
        let (ids, _) = tracker.update(4, VIEW, &[a]);
        assert_eq!(ids, vec![1]);
        assert_eq!(tracker.active(), 1);
    }

    /// An object that walks out through an edge ends its track as soon as it is gone, and one
    /// that comes in there two frames later starts a new track; an object that stands at the
    /// edge, half out of view, keeps its track through missed frames.
    #[test]
    fn a_track_that_left_the_view_ends_at_once() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let at = |x: f32| [x, 200.0, (x + 60.0).min(VIEW[0]), 260.0];
        for (f, x) in [
            (0u64, 560.0),
            (1, 575.0),
            (2, 590.0),
            (3, 605.0),
            (4, 628.0),
        ] {
            assert_eq!(tracker.update(f, VIEW, &[at(x)]).0, vec![0]);
        }
        let (_, ended) = tracker.update(5, VIEW, &[]);
        assert_eq!(ended.iter().map(|t| t.id).collect::<Vec<_>>(), vec![0]);
        // Coming in where the other went out, well within `max_missed` frames of it.
        let (ids, _) = tracker.update(7, VIEW, &[at(615.0)]);
        assert_eq!(ids, vec![1]);

        let mut tracker = Tracker::new(TrackerConfig::default());
        let standing = [600.0, 100.0, 640.0, 160.0];
        tracker.update(0, VIEW, &[standing]);
        tracker.update(1, VIEW, &[standing]);
        for f in 2..5 {
            assert!(tracker.update(f, VIEW, &[]).1.is_empty(), "frame {f}");
        }
        assert_eq!(tracker.update(5, VIEW, &[standing]).0, vec![0]);
    }

    /// An object that starts to move fast (further than IoU follows), then stops, stays one
    /// track; a box much further away, or of another size, starts a new one.
    #[test]
    fn an_object_that_starts_and_stops_moving_fast_keeps_its_track() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let at = |x: f32| [x, 50.0, x + 40.0, 90.0];
        let mut x = 100.0;
        for f in 0..12u64 {
            // Still, then 24 px a frame (IoU 0.25 with the box before), then still again.
            if (3..9).contains(&f) {
                x += 24.0;
            }
            let (ids, ended) = tracker.update(f, VIEW, &[at(x)]);
            assert_eq!((ids, ended), (vec![0], vec![]), "frame {f}");
        }
        // 40 px: 0.71 of the diagonal away from where the track predicts.
        let (ids, _) = tracker.update(12, VIEW, &[at(x + 40.0)]);
        assert_eq!(ids, vec![1]);
        // Near the first track's box, but twice its size.
        let (ids, _) = tracker.update(13, VIEW, &[[x - 10.0, 40.0, x + 70.0, 120.0]]);
        assert_eq!(ids, vec![2]);
    }
}
