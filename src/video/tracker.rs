//! A SORT-like multi-object tracker: each track predicts its next box from a constant velocity,
//! boxes are matched to predictions by IoU (greedily, best pair first), unmatched boxes start
//! tracks, and a track that goes unmatched for more than `max_missed` frames ends.
//!
//! Matching ignores the class: an unknown object's predicted class often flickers between
//! known classes, and it must stay one track for its OOD evidence to add up.

use crate::detect::nms::iou;

#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// A box continues a track when its IoU with the track's predicted box is at least this.
    pub min_iou: f32,
    /// Frames a track survives without a matching box (occlusion, a missed detection).
    pub max_missed: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            min_iou: 0.3,
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
    /// Box change per frame, smoothed.
    velocity: [f32; 4],
    first_frame: u64,
    last_frame: u64,
}

impl Track {
    fn predict(&self, frame: u64) -> [f32; 4] {
        let dt = (frame - self.last_frame) as f32;
        std::array::from_fn(|k| self.bbox[k] + self.velocity[k] * dt)
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

    /// Assigns a track id to each of `boxes` (detected in `frame`; frames increase), and
    /// returns the tracks that ended.
    pub fn update(&mut self, frame: u64, boxes: &[[f32; 4]]) -> (Vec<u64>, Vec<EndedTrack>) {
        let predicted: Vec<[f32; 4]> = self.tracks.iter().map(|t| t.predict(frame)).collect();
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (b, bbox) in boxes.iter().enumerate() {
            for (t, p) in predicted.iter().enumerate() {
                let overlap = iou(bbox, p);
                if overlap >= self.config.min_iou {
                    pairs.push((overlap, b, t));
                }
            }
        }
        pairs.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
        let mut box_track = vec![None; boxes.len()];
        let mut track_taken = vec![false; self.tracks.len()];
        for (_, b, t) in pairs {
            if box_track[b].is_none() && !track_taken[t] {
                box_track[b] = Some(t);
                track_taken[t] = true;
            }
        }
        let mut ids = Vec::with_capacity(boxes.len());
        for (b, bbox) in boxes.iter().enumerate() {
            match box_track[b] {
                Some(t) => {
                    let track = &mut self.tracks[t];
                    let dt = (frame - track.last_frame) as f32;
                    for ((v, new), old) in track.velocity.iter_mut().zip(bbox).zip(track.bbox) {
                        *v = 0.5 * *v + 0.5 * (new - old) / dt;
                    }
                    track.bbox = *bbox;
                    track.last_frame = frame;
                    ids.push(track.id);
                }
                None => {
                    self.tracks.push(Track {
                        id: self.next_id,
                        bbox: *bbox,
                        velocity: [0.0; 4],
                        first_frame: frame,
                        last_frame: frame,
                    });
                    ids.push(self.next_id);
                    self.next_id += 1;
                }
            }
        }
        let max_missed = self.config.max_missed;
        let mut ended = Vec::new();
        self.tracks.retain(|t| {
            let keep = frame - t.last_frame <= max_missed;
            if !keep {
                ended.push(t.ended());
            }
            keep
        });
        (ids, ended)
    }

    /// Ends every track (the stream is over).
    pub fn finish(&mut self) -> Vec<EndedTrack> {
        self.tracks.drain(..).map(|t| t.ended()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(b: [f32; 4], dx: f32) -> [f32; 4] {
        [b[0] + dx, b[1], b[2] + dx, b[3]]
    }

    #[test]
    fn moving_boxes_keep_their_ids_through_a_missed_frame() {
        let mut tracker = Tracker::new(TrackerConfig::default());
        let (a, b) = ([0.0, 0.0, 20.0, 20.0], [100.0, 50.0, 130.0, 80.0]);
        let (first, _) = tracker.update(0, &[a, b]);
        assert_eq!(first, vec![0, 1]);
        for f in 1..10u64 {
            // Fast enough that without the velocity the IoU would fall below 0.3 after a gap.
            let dx = 8.0 * f as f32;
            if f == 5 {
                let (ids, ended) = tracker.update(f, &[moved(b, -dx)]);
                assert_eq!(ids, vec![1]);
                assert!(ended.is_empty());
                continue;
            }
            let (ids, ended) = tracker.update(f, &[moved(b, -dx), moved(a, dx)]);
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
            min_iou: 0.3,
            max_missed: 2,
        });
        let a = [10.0, 10.0, 30.0, 30.0];
        tracker.update(0, &[a]);
        assert!(tracker.update(1, &[]).1.is_empty());
        assert!(tracker.update(2, &[]).1.is_empty());
        let (_, ended) = tracker.update(3, &[]);
        assert_eq!(
            ended,
            vec![EndedTrack {
                id: 0,
                first_frame: 0,
                last_frame: 0
            }]
        );
        let (ids, _) = tracker.update(4, &[a]);
        assert_eq!(ids, vec![1]);
        assert_eq!(tracker.active(), 1);
    }
}
