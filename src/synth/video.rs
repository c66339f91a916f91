//! Synthetic test videos from the shapes world: in-distribution shapes drift across a fixed
//! textured background for the whole clip, while OOD objects enter from an edge, stay a while,
//! and leave. Every frame comes with its ground truth (the visible box of each object).

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::synth::world::{draw_objects, paint_background, Group, Kind, Object};

#[derive(Clone, Debug)]
pub struct SynthVideoConfig {
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub frames: u64,
    /// In-distribution objects, present throughout.
    pub id_objects: usize,
    /// Objects that enter, stay and leave.
    pub visitors: Vec<Visitors>,
}

/// A stream of objects that enter from an edge, stay a while and leave.
#[derive(Clone, Debug)]
pub struct Visitors {
    /// The kinds to draw from.
    pub kinds: Vec<Kind>,
    /// A new one enters every this many seconds (none when 0).
    pub every_s: f64,
    /// How long each stays in view after entering, in seconds (drawn from this range).
    pub stay_s: (f64, f64),
}

impl Visitors {
    /// Unknown objects of every near- and far-OOD kind.
    pub fn unknown(every_s: f64) -> Self {
        Visitors {
            kinds: Kind::NEAR_OOD
                .iter()
                .chain(&Kind::FAR_OOD)
                .copied()
                .collect(),
            every_s,
            stay_s: (1.0, 2.5),
        }
    }
}

impl Default for SynthVideoConfig {
    fn default() -> Self {
        SynthVideoConfig {
            seed: 0,
            width: 256,
            height: 256,
            fps: 10.0,
            frames: 100,
            id_objects: 2,
            visitors: vec![Visitors::unknown(3.0)],
        }
    }
}

/// Where an object is over time.
enum Motion {
    /// Constant velocity (pixels per frame), bouncing off the frame's edges.
    Bounce {
        start: (f32, f32),
        velocity: (f32, f32),
    },
    /// Slides in from `outside` to `inside` during `enter` frames, stays (drifting slowly)
    /// until `leave`, then slides back out.
    Visit {
        outside: (f32, f32),
        inside: (f32, f32),
        drift: (f32, f32),
        start: u64,
        enter: u64,
        leave: u64,
    },
}

struct Actor {
    id: usize,
    object: Object,
    motion: Motion,
}

/// An object in one frame.
#[derive(Clone, Debug, Serialize)]
pub struct TruthObject {
    /// The same object keeps its id over the whole video.
    pub id: usize,
    pub kind: &'static str,
    pub group: Group,
    /// Visible pixels, x1, y1, x2, y2.
    pub bbox: [f32; 4],
}

/// A synthetic video: frames are drawn on demand, so any length costs the same memory.
pub struct SynthVideo {
    config: SynthVideoConfig,
    background: RgbImage,
    actors: Vec<Actor>,
}

fn bounce(x: f32, lo: f32, hi: f32) -> f32 {
    if hi <= lo {
        return lo;
    }
    let span = hi - lo;
    let t = (x - lo).rem_euclid(2.0 * span);
    lo + if t <= span { t } else { 2.0 * span - t }
}

impl SynthVideo {
    pub fn new(config: SynthVideoConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5EED_F00D_u64);
        let mut background = RgbImage::new(config.width, config.height);
        let mean = paint_background(&mut rng, &mut background);
        let (w, h) = (config.width as f32, config.height as f32);
        let short = w.min(h);
        let speed = short / config.fps.max(1.0) as f32 * 0.15;
        let mut actors = Vec::new();
        for id in 0..config.id_objects {
            let kind = Kind::ID[rng.random_range(0..Kind::ID.len())];
            let radius = rng.random_range(0.08..0.14) * short;
            let start = (
                rng.random_range(radius..w - radius),
                rng.random_range(radius..h - radius),
            );
            let angle = rng.random::<f32>() * std::f32::consts::TAU;
            actors.push(Actor {
                id,
                object: Object::random(&mut rng, kind, mean, start, radius),
                motion: Motion::Bounce {
                    start,
                    velocity: (speed * angle.cos(), speed * angle.sin()),
                },
            });
        }
        let fps = config.fps;
        for visitors in &config.visitors {
            let every = (visitors.every_s * fps).round() as u64;
            let mut start = every / 2;
            while every > 0 && !visitors.kinds.is_empty() && start < config.frames {
                let kind = visitors.kinds[rng.random_range(0..visitors.kinds.len())];
                let stay = rng.random_range(visitors.stay_s.0..=visitors.stay_s.1);
                actors.push(Self::visitor(
                    &mut rng,
                    actors.len(),
                    kind,
                    start,
                    stay,
                    &config,
                    mean,
                ));
                start += every;
            }
        }
        SynthVideo {
            config,
            background,
            actors,
        }
    }

    fn visitor(
        rng: &mut ChaCha8Rng,
        id: usize,
        kind: Kind,
        start: u64,
        stay: f64,
        config: &SynthVideoConfig,
        mean: [f32; 3],
    ) -> Actor {
        let (w, h) = (config.width as f32, config.height as f32);
        let short = w.min(h);
        let fps = config.fps;
        {
            let radius = rng.random_range(0.1..0.16) * short;
            let inside = (
                rng.random_range(radius * 1.2..w - radius * 1.2),
                rng.random_range(radius * 1.2..h - radius * 1.2),
            );
            // Enter and leave through the nearest edge, fully out of view.
            let out = radius * 1.1;
            let from_inside = |p: (f32, f32)| (p.0 - inside.0).hypot(p.1 - inside.1);
            let outside = [
                (-out, inside.1),
                (w + out, inside.1),
                (inside.0, -out),
                (inside.0, h + out),
            ]
            .into_iter()
            .min_by(|&a, &b| from_inside(a).total_cmp(&from_inside(b)))
            .expect("four edges");
            // Walk in and out at most a quarter of the object's width per frame, as a camera
            // would see a person walk in, and take at least half a second: a faster object
            // jumps further than its own size between frames and no IoU tracker can follow it.
            let steps = from_inside(outside) / (0.5 * radius);
            let enter = (0.5 * fps).max(steps as f64).ceil() as u64;
            let drift = (
                rng.random_range(-0.3..0.3f32),
                rng.random_range(-0.3..0.3f32),
            );
            Actor {
                id,
                object: Object::random(rng, kind, mean, outside, radius),
                motion: Motion::Visit {
                    outside,
                    inside,
                    drift,
                    start,
                    enter,
                    leave: start + enter + (stay * fps).round() as u64,
                },
            }
        }
    }

    pub fn config(&self) -> &SynthVideoConfig {
        &self.config
    }

    /// Where each actor is at `frame`, or `None` when it is off stage.
    fn position(&self, actor: &Actor, frame: u64) -> Option<(f32, f32)> {
        let (w, h) = (self.config.width as f32, self.config.height as f32);
        let r = actor.object.radius;
        match actor.motion {
            Motion::Bounce { start, velocity } => {
                let t = frame as f32;
                Some((
                    bounce(start.0 + velocity.0 * t, r, w - r),
                    bounce(start.1 + velocity.1 * t, r, h - r),
                ))
            }
            Motion::Visit {
                outside,
                inside,
                drift,
                start,
                enter,
                leave,
            } => {
                if frame < start || frame > leave + enter {
                    return None;
                }
                let lerp = |a: (f32, f32), b: (f32, f32), t: f32| {
                    (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t)
                };
                let stay_end = (
                    inside.0 + drift.0 * (leave - start - enter) as f32,
                    inside.1 + drift.1 * (leave - start - enter) as f32,
                );
                Some(if frame < start + enter {
                    lerp(outside, inside, (frame - start) as f32 / enter as f32)
                } else if frame <= leave {
                    let t = (frame - start - enter) as f32;
                    (inside.0 + drift.0 * t, inside.1 + drift.1 * t)
                } else {
                    lerp(stay_end, outside, (frame - leave) as f32 / enter as f32)
                })
            }
        }
    }

    /// Draws frame `index` and lists the objects visible in it (at least 4 px each way).
    pub fn frame(&mut self, index: u64) -> (RgbImage, Vec<TruthObject>) {
        let mut image = self.background.clone();
        let mut shown = Vec::new();
        let positions: Vec<Option<(f32, f32)>> = self
            .actors
            .iter()
            .map(|a| self.position(a, index))
            .collect();
        for (actor, position) in self.actors.iter_mut().zip(positions) {
            if let Some((x, y)) = position {
                actor.object.cx = x;
                actor.object.cy = y;
                shown.push(actor.id);
            }
        }
        let objects: Vec<&Object> = shown.iter().map(|&i| &self.actors[i].object).collect();
        let boxes = draw_objects(&mut image, &objects);
        let truth = shown
            .iter()
            .zip(boxes)
            .filter(|(_, b)| b[2] - b[0] >= 4.0 && b[3] - b[1] >= 4.0)
            .map(|(&i, bbox)| {
                let kind = self.actors[i].object.kind;
                TruthObject {
                    id: i,
                    kind: kind.name(),
                    group: kind.group(),
                    bbox,
                }
            })
            .collect();
        (image, truth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ood_objects_enter_stay_and_leave_while_id_objects_stay() {
        let config = SynthVideoConfig {
            frames: 80,
            ..Default::default()
        };
        let mut video = SynthVideo::new(config);
        let mut seen: std::collections::BTreeMap<usize, (Group, u64, u64)> = Default::default();
        for f in 0..80 {
            let (image, truth) = video.frame(f);
            assert_eq!(image.dimensions(), (256, 256));
            for o in truth {
                let e = seen.entry(o.id).or_insert((o.group, f, f));
                e.2 = f;
            }
        }
        let ood: Vec<_> = seen.values().filter(|v| v.0 != Group::Id).collect();
        assert!(ood.len() >= 2, "{seen:?}");
        for (_, first, last) in &ood {
            let stay = (last - first + 1) as f64 / 10.0;
            assert!(stay >= 1.0 || *last == 79, "{seen:?}");
            assert!(*first > 0);
        }
        assert!(seen
            .values()
            .filter(|v| v.0 == Group::Id)
            .all(|v| v.1 == 0 && v.2 == 79));
        let (a, _) = SynthVideo::new(video.config().clone()).frame(17);
        assert_eq!(a.as_raw(), video.frame(17).0.as_raw());
    }

    /// Visitors walk in and out: between two frames an object moves at most a quarter of its
    /// width (plus its slow drift), so that consecutive boxes overlap and a tracker can follow.
    #[test]
    fn visitors_move_less_than_a_quarter_of_their_width_per_frame() {
        let config = SynthVideoConfig {
            frames: 200,
            ..Default::default()
        };
        let video = SynthVideo::new(config);
        let mut visitors = 0;
        for actor in &video.actors {
            if !matches!(actor.motion, Motion::Visit { .. }) {
                continue;
            }
            visitors += 1;
            let width = 2.0 * actor.object.radius;
            let positions: Vec<Option<(f32, f32)>> =
                (0..200).map(|f| video.position(actor, f)).collect();
            for pair in positions.windows(2) {
                if let [Some(a), Some(b)] = pair {
                    let step = (b.0 - a.0).hypot(b.1 - a.1);
                    assert!(
                        step <= 0.25 * width + 0.5,
                        "{step} px for a {width} px object"
                    );
                }
            }
        }
        assert!(visitors >= 3);
    }
}
