//! The shapes world: a seeded, deterministic generator of detection scenes.
//!
//! In-distribution (ID) objects are four simple shapes; near-OOD objects are other simple shapes the
//! detector never saw; far-OOD objects are unlike any shape (noise blobs, scribbles, pixel-noise
//! patches). Colours, fills, sizes, rotations and backgrounds are random, so a detector has to
//! learn shape rather than colour. Every image is generated from its own RNG stream, derived from
//! (seed, split, index), so any image can be regenerated alone and in any order.

use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::f32::consts::PI;
use std::path::Path;

use crate::error::{Error, Result};

/// Every kind of object the world draws. The first four are the ID classes, in class-id order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Circle,
    Square,
    Triangle,
    Star,
    Pentagon,
    Cross,
    Crescent,
    Ring,
    Blob,
    Scribble,
    NoisePatch,
}

/// Whether an object kind is known to the detector, and if not, how far from the known ones it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Id,
    NearOod,
    FarOod,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Circle,
        Kind::Square,
        Kind::Triangle,
        Kind::Star,
        Kind::Pentagon,
        Kind::Cross,
        Kind::Crescent,
        Kind::Ring,
        Kind::Blob,
        Kind::Scribble,
        Kind::NoisePatch,
    ];
    pub const ID: [Kind; 4] = [Kind::Circle, Kind::Square, Kind::Triangle, Kind::Star];
    pub const NEAR_OOD: [Kind; 4] = [Kind::Pentagon, Kind::Cross, Kind::Crescent, Kind::Ring];
    pub const FAR_OOD: [Kind; 3] = [Kind::Blob, Kind::Scribble, Kind::NoisePatch];

    /// The kind of this name, as [`Kind::name`] writes it.
    pub fn from_name(name: &str) -> Option<Kind> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Circle => "circle",
            Kind::Square => "square",
            Kind::Triangle => "triangle",
            Kind::Star => "star",
            Kind::Pentagon => "pentagon",
            Kind::Cross => "cross",
            Kind::Crescent => "crescent",
            Kind::Ring => "ring",
            Kind::Blob => "blob",
            Kind::Scribble => "scribble",
            Kind::NoisePatch => "noise_patch",
        }
    }

    /// The kind's group in the standard class split.
    pub fn group(self) -> Group {
        if Self::ID.contains(&self) {
            Group::Id
        } else if Self::NEAR_OOD.contains(&self) {
            Group::NearOod
        } else {
            Group::FarOod
        }
    }

    /// The COCO category id: the position in [`Kind::ALL`], in every class split (the YOLO class
    /// id too for the standard split's known kinds).
    pub fn category_id(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap()
    }
}

/// Which kinds a world draws as known objects (the detector's classes, in class-id order) and
/// which as near- and far-OOD unknowns. Kinds in none of the lists never appear.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSplit {
    pub known: Vec<Kind>,
    pub near: Vec<Kind>,
    pub far: Vec<Kind>,
}

impl Default for ClassSplit {
    /// The standard split: [`Kind::ID`], [`Kind::NEAR_OOD`] and [`Kind::FAR_OOD`].
    fn default() -> Self {
        ClassSplit {
            known: Kind::ID.to_vec(),
            near: Kind::NEAR_OOD.to_vec(),
            far: Kind::FAR_OOD.to_vec(),
        }
    }
}

impl ClassSplit {
    /// Checks that every list has a kind and that no kind is in two places.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (list, name) in self.lists() {
            if list.is_empty() {
                return Err(format!("the {name} kinds are empty"));
            }
        }
        let mut seen: Vec<(Kind, &str)> = Vec::new();
        for (list, name) in self.lists() {
            for &kind in list {
                if let Some((_, first)) = seen.iter().find(|(k, _)| *k == kind) {
                    return Err(format!(
                        "{} is listed as {first} and as {name}",
                        kind.name()
                    ));
                }
                seen.push((kind, name));
            }
        }
        Ok(())
    }

    fn lists(&self) -> [(&[Kind], &'static str); 3] {
        [
            (&self.known, "known"),
            (&self.near, "near-OOD"),
            (&self.far, "far-OOD"),
        ]
    }

    /// The group a kind is drawn in, `None` for a kind this split never draws.
    pub fn group(&self, kind: Kind) -> Option<Group> {
        let [known, near, far] = self.lists().map(|(list, _)| list.contains(&kind));
        match (known, near, far) {
            (true, _, _) => Some(Group::Id),
            (_, true, _) => Some(Group::NearOod),
            (_, _, true) => Some(Group::FarOod),
            _ => None,
        }
    }

    /// The YOLO class id of a known kind, `None` for the others.
    pub fn class_id(&self, kind: Kind) -> Option<usize> {
        self.known.iter().position(|k| *k == kind)
    }
}

/// The dataset splits, with what each contains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// ID objects only.
    Train,
    /// ID objects only.
    Val,
    /// ID objects only.
    TestId,
    /// Near-OOD objects only (no ID object in the image, as in the VOS protocol).
    TestOodNear,
    /// Far-OOD objects only.
    TestOodFar,
    /// ID and OOD objects together, with ground truth for both.
    TestMixed,
}

impl Split {
    pub const ALL: [Split; 6] = [
        Split::Train,
        Split::Val,
        Split::TestId,
        Split::TestOodNear,
        Split::TestOodFar,
        Split::TestMixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::TestId => "test_id",
            Split::TestOodNear => "test_ood_near",
            Split::TestOodFar => "test_ood_far",
            Split::TestMixed => "test_mixed",
        }
    }

    fn stream(self) -> u64 {
        Self::ALL.iter().position(|s| *s == self).unwrap() as u64 + 1
    }
}

/// One object of a scene, with its visible bounding box in pixels.
#[derive(Clone, Debug, Serialize)]
pub struct Annotation {
    pub kind: &'static str,
    pub group: Group,
    /// YOLO class id, `None` for unknown objects.
    pub class_id: Option<usize>,
    pub category_id: usize,
    /// x1, y1, x2, y2 of the visible pixels, in image pixels.
    pub bbox: [f32; 4],
}

pub struct Scene {
    pub image: RgbImage,
    pub objects: Vec<Annotation>,
}

/// How big the objects of a world are.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ObjectSizes {
    /// The standard world: each object's circumscribed diameter is uniform in 12–40 % of the
    /// image's short side.
    #[default]
    Standard,
    /// Each object's circumscribed diameter is log-uniform between `min` and `max`, as fractions
    /// of the image's short side: small and large objects in one world, so that a detector
    /// trained on it uses every level of its feature pyramid.
    LogUniform { min: f32, max: f32 },
}

impl ObjectSizes {
    /// The largest `max` allowed: an object can still be centred inside the image.
    pub const MAX_FRACTION: f32 = 1.0;

    /// Checks the bounds of a [`ObjectSizes::LogUniform`] range; the message says what is wrong.
    pub fn validate(self) -> std::result::Result<(), String> {
        match self {
            ObjectSizes::Standard => Ok(()),
            ObjectSizes::LogUniform { min, max } => {
                if !(min > 0.0 && min <= max && max <= Self::MAX_FRACTION) {
                    Err(format!(
                        "object sizes must satisfy 0 < min <= max <= {}, got min {min}, max {max}",
                        Self::MAX_FRACTION
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }

    /// One object's radius in pixels, for an image whose short side is `short`.
    fn radius(self, rng: &mut ChaCha8Rng, short: f32) -> f32 {
        match self {
            // Kept exactly as it always was: the standard world's bytes must not change.
            ObjectSizes::Standard => rng.random_range(0.06..0.2) * short,
            ObjectSizes::LogUniform { min, max } => {
                let t = rng.random::<f32>();
                0.5 * short * min * (max / min).powf(t)
            }
        }
    }
}

/// How many images each split gets, their size, the size of their objects and which kinds are
/// known.
#[derive(Clone, Debug)]
pub struct SynthConfig {
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub counts: Vec<(Split, usize)>,
    pub object_sizes: ObjectSizes,
    pub classes: ClassSplit,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            width: 256,
            height: 256,
            counts: vec![
                (Split::Train, 2000),
                (Split::Val, 300),
                (Split::TestId, 300),
                (Split::TestOodNear, 200),
                (Split::TestOodFar, 200),
                (Split::TestMixed, 300),
            ],
            object_sizes: ObjectSizes::Standard,
            classes: ClassSplit::default(),
        }
    }
}

impl SynthConfig {
    /// Checks the object sizes and the class split; the message says what is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        self.object_sizes.validate()?;
        self.classes.validate()
    }
}

/// SplitMix64: spreads (seed, split, index) over independent ChaCha streams.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn scene_rng(seed: u64, split: Split, index: usize) -> ChaCha8Rng {
    let s = mix(mix(mix(seed) ^ split.stream()) ^ index as u64);
    ChaCha8Rng::seed_from_u64(s)
}

/// A smooth random field in [0, 1]: bilinear value noise over a coarse grid, smoothstep-eased.
struct ValueNoise {
    grid: Vec<f32>,
    gw: usize,
    gh: usize,
    sx: f32,
    sy: f32,
}

impl ValueNoise {
    fn new(rng: &mut ChaCha8Rng, cells: usize, width: f32, height: f32) -> Self {
        let (gw, gh) = (cells + 2, cells + 2);
        let grid = (0..gw * gh).map(|_| rng.random::<f32>()).collect();
        ValueNoise {
            grid,
            gw,
            gh,
            sx: cells as f32 / width.max(1.0),
            sy: cells as f32 / height.max(1.0),
        }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let gx = (x * self.sx).clamp(0.0, (self.gw - 2) as f32);
        let gy = (y * self.sy).clamp(0.0, (self.gh - 2) as f32);
        let (ix, iy) = (gx.floor() as usize, gy.floor() as usize);
        let ease = |t: f32| t * t * (3.0 - 2.0 * t);
        let (fx, fy) = (ease(gx - ix as f32), ease(gy - iy as f32));
        let g = |x: usize, y: usize| self.grid[y * self.gw + x];
        let top = g(ix, iy) * (1.0 - fx) + g(ix + 1, iy) * fx;
        let bottom = g(ix, iy + 1) * (1.0 - fx) + g(ix + 1, iy + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    }
}

fn random_colour(rng: &mut ChaCha8Rng) -> [f32; 3] {
    let h = rng.random::<f32>() * 6.0;
    let s = rng.random_range(0.25..1.0f32);
    let v = rng.random_range(0.2..1.0f32);
    let c = v * s;
    let x = c * (1.0 - ((h % 2.0) - 1.0).abs());
    let (r, g, b) = match h as u32 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    let m = v - c;
    [(r + m) * 255.0, (g + m) * 255.0, (b + m) * 255.0]
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y) * (x - y))
        .sum::<f32>()
        .sqrt()
}

fn lerp(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// How an object's inside is painted.
enum Fill {
    Solid([f32; 3]),
    Gradient {
        a: [f32; 3],
        b: [f32; 3],
        dir: (f32, f32),
    },
    Stripes {
        a: [f32; 3],
        b: [f32; 3],
        dir: (f32, f32),
        period: f32,
    },
    Speckle {
        base: [f32; 3],
        noise: ValueNoise,
    },
    /// Smooth multi-colour texture, like a patch of a natural image.
    Natural {
        palette: [[f32; 3]; 3],
        noise: [ValueNoise; 2],
    },
    /// Independent random colour per pixel, from a hash of the pixel position.
    PixelNoise {
        salt: u64,
    },
}

impl Fill {
    /// `(u, v)` are object-local coordinates in [-1, 1]; `(x, y)` are image pixels.
    fn colour(&self, u: f32, v: f32, x: f32, y: f32) -> [f32; 3] {
        match self {
            Fill::Solid(c) => *c,
            Fill::Gradient { a, b, dir } => lerp(
                *a,
                *b,
                ((u * dir.0 + v * dir.1) * 0.5 + 0.5).clamp(0.0, 1.0),
            ),
            Fill::Stripes { a, b, dir, period } => {
                let t = (u * dir.0 + v * dir.1) / period;
                if t.rem_euclid(1.0) < 0.5 {
                    *a
                } else {
                    *b
                }
            }
            Fill::Speckle { base, noise } => {
                let k = 0.6 + 0.8 * noise.at(x, y);
                [
                    (base[0] * k).min(255.0),
                    (base[1] * k).min(255.0),
                    (base[2] * k).min(255.0),
                ]
            }
            Fill::Natural { palette, noise } => {
                let t = noise[0].at(x, y);
                let s = noise[1].at(x, y);
                lerp(lerp(palette[0], palette[1], t), palette[2], s * s)
            }
            Fill::PixelNoise { salt } => {
                let h = mix(*salt ^ ((x as u64) << 20) ^ (y as u64));
                [
                    (h & 0xff) as f32,
                    ((h >> 8) & 0xff) as f32,
                    ((h >> 16) & 0xff) as f32,
                ]
            }
        }
    }
}

/// The outline of an object, as an inside test in object-local coordinates (unit radius).
enum Outline {
    Polygon(Vec<(f32, f32)>),
    Circle,
    Ring {
        inner: f32,
    },
    Crescent {
        offset: f32,
        radius: f32,
    },
    Cross {
        arm: f32,
    },
    /// Radius modulated by a few harmonics: an irregular blob.
    Harmonic {
        base: f32,
        terms: Vec<(f32, f32, f32)>,
    },
    /// Thick polyline strokes.
    Strokes {
        points: Vec<(f32, f32)>,
        width: f32,
    },
}

fn regular_polygon(n: usize, radius: f32, phase: f32) -> Vec<(f32, f32)> {
    (0..n)
        .map(|i| {
            let a = phase + 2.0 * PI * i as f32 / n as f32;
            (radius * a.cos(), radius * a.sin())
        })
        .collect()
}

fn star(points: usize, outer: f32, inner: f32) -> Vec<(f32, f32)> {
    (0..2 * points)
        .map(|i| {
            let r = if i % 2 == 0 { outer } else { inner };
            let a = -PI / 2.0 + PI * i as f32 / points as f32;
            (r * a.cos(), r * a.sin())
        })
        .collect()
}

fn inside_polygon(poly: &[(f32, f32)], u: f32, v: f32) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > v) != (yj > v) && u < (xj - xi) * (v - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

fn segment_distance(p: (f32, f32), a: (f32, f32), b: (f32, f32)) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (qx, qy) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (qx * qx + qy * qy).sqrt()
}

impl Outline {
    fn contains(&self, u: f32, v: f32) -> bool {
        let r2 = u * u + v * v;
        match self {
            Outline::Polygon(p) => inside_polygon(p, u, v),
            Outline::Circle => r2 <= 1.0,
            Outline::Ring { inner } => r2 <= 1.0 && r2 >= inner * inner,
            Outline::Crescent { offset, radius } => {
                r2 <= 1.0 && (u - offset) * (u - offset) + v * v > radius * radius
            }
            Outline::Cross { arm } => {
                (u.abs() <= *arm && v.abs() <= 0.95) || (v.abs() <= *arm && u.abs() <= 0.95)
            }
            Outline::Harmonic { base, terms } => {
                let phi = v.atan2(u);
                let r = base
                    * (1.0
                        + terms
                            .iter()
                            .map(|(k, a, p)| a * (k * phi + p).sin())
                            .sum::<f32>());
                r2 <= r * r
            }
            Outline::Strokes { points, width } => points
                .windows(2)
                .any(|w| segment_distance((u, v), w[0], w[1]) <= *width),
        }
    }
}

/// One drawable object: its shape and paint are fixed, its centre can move (videos move it).
pub(crate) struct Object {
    pub(crate) kind: Kind,
    outline: Outline,
    fill: Fill,
    pub(crate) cx: f32,
    pub(crate) cy: f32,
    pub(crate) radius: f32,
    cos: f32,
    sin: f32,
}

impl Object {
    /// A random object of `kind` centred at (cx, cy), painted to stand out from `background`.
    pub(crate) fn random(
        rng: &mut ChaCha8Rng,
        kind: Kind,
        background: [f32; 3],
        (cx, cy): (f32, f32),
        radius: f32,
    ) -> Self {
        let angle = rng.random::<f32>() * 2.0 * PI;
        let outline = make_outline(rng, kind);
        let fill = object_fill(rng, kind, background, radius);
        Object {
            kind,
            outline,
            fill,
            cx,
            cy,
            radius,
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = ((x - self.cx) / self.radius, (y - self.cy) / self.radius);
        (
            dx * self.cos + dy * self.sin,
            -dx * self.sin + dy * self.cos,
        )
    }
}

fn random_fill(rng: &mut ChaCha8Rng, background: [f32; 3], radius: f32) -> Fill {
    // Keep the main colour away from the background's mean, so the object stays visible.
    let mut a = random_colour(rng);
    for _ in 0..20 {
        if distance(a, background) > 80.0 {
            break;
        }
        a = random_colour(rng);
    }
    let b = random_colour(rng);
    let angle = rng.random::<f32>() * 2.0 * PI;
    let dir = (angle.cos(), angle.sin());
    match rng.random_range(0..4) {
        0 => Fill::Solid(a),
        1 => Fill::Gradient {
            a,
            b: lerp(a, b, 0.6),
            dir,
        },
        2 => Fill::Stripes {
            a,
            b: lerp(a, b, 0.5),
            dir,
            period: rng.random_range(0.25..0.6),
        },
        _ => Fill::Speckle {
            base: a,
            noise: ValueNoise::new(rng, 4, radius, radius),
        },
    }
}

fn make_outline(rng: &mut ChaCha8Rng, kind: Kind) -> Outline {
    match kind {
        Kind::Circle => Outline::Circle,
        Kind::Square => Outline::Polygon(regular_polygon(4, 1.0, PI / 4.0)),
        Kind::Triangle => Outline::Polygon(regular_polygon(3, 1.0, -PI / 2.0)),
        Kind::Star => Outline::Polygon(star(5, 1.0, 0.45)),
        Kind::Pentagon => Outline::Polygon(regular_polygon(5, 1.0, -PI / 2.0)),
        Kind::Cross => Outline::Cross {
            arm: rng.random_range(0.22..0.35),
        },
        Kind::Crescent => Outline::Crescent {
            offset: rng.random_range(0.35..0.6),
            radius: rng.random_range(0.75..0.9),
        },
        Kind::Ring => Outline::Ring {
            inner: rng.random_range(0.45..0.65),
        },
        Kind::Blob | Kind::NoisePatch => Outline::Harmonic {
            base: 0.75,
            terms: (2..6)
                .map(|k| {
                    (
                        k as f32,
                        rng.random_range(0.0..0.3) / (k as f32 - 1.0).sqrt(),
                        rng.random::<f32>() * 2.0 * PI,
                    )
                })
                .collect(),
        },
        Kind::Scribble => {
            let n = rng.random_range(4..8);
            Outline::Strokes {
                points: (0..n)
                    .map(|_| (rng.random_range(-0.9..0.9), rng.random_range(-0.9..0.9)))
                    .collect(),
                width: rng.random_range(0.07..0.14),
            }
        }
    }
}

fn object_fill(rng: &mut ChaCha8Rng, kind: Kind, background: [f32; 3], radius: f32) -> Fill {
    match kind {
        Kind::Blob => Fill::Natural {
            palette: [random_colour(rng), random_colour(rng), random_colour(rng)],
            noise: {
                let (coarse, fine) = (rng.random_range(3..8), rng.random_range(6..14));
                [
                    ValueNoise::new(rng, coarse, radius * 2.0, radius * 2.0),
                    ValueNoise::new(rng, fine, radius * 2.0, radius * 2.0),
                ]
            },
        },
        Kind::NoisePatch => Fill::PixelNoise { salt: rng.random() },
        _ => random_fill(rng, background, radius),
    }
}

/// Which kinds a scene of this split holds: a list of object kinds, in drawing order.
fn scene_kinds(rng: &mut ChaCha8Rng, split: Split, classes: &ClassSplit) -> Vec<Kind> {
    let pick = |rng: &mut ChaCha8Rng, from: &[Kind]| from[rng.random_range(0..from.len())];
    match split {
        Split::Train | Split::Val | Split::TestId => {
            let n = rng.random_range(1..=6);
            (0..n).map(|_| pick(rng, &classes.known)).collect()
        }
        Split::TestOodNear => {
            let n = rng.random_range(1..=4);
            (0..n).map(|_| pick(rng, &classes.near)).collect()
        }
        Split::TestOodFar => {
            let n = rng.random_range(1..=4);
            (0..n).map(|_| pick(rng, &classes.far)).collect()
        }
        Split::TestMixed => {
            let n_id = rng.random_range(1..=3);
            let n_ood = rng.random_range(1..=3);
            let mut kinds: Vec<Kind> = (0..n_id).map(|_| pick(rng, &classes.known)).collect();
            for _ in 0..n_ood {
                let pool: &[Kind] = if rng.random_bool(0.5) {
                    &classes.near
                } else {
                    &classes.far
                };
                kinds.push(pick(rng, pool));
            }
            // Shuffle so that neither group is always drawn on top.
            for i in (1..kinds.len()).rev() {
                kinds.swap(i, rng.random_range(0..=i));
            }
            kinds
        }
    }
}

/// Paints a textured background with line clutter; returns its mean colour.
pub(crate) fn paint_background(rng: &mut ChaCha8Rng, image: &mut RgbImage) -> [f32; 3] {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let a = random_colour(rng);
    let b = lerp(a, random_colour(rng), rng.random_range(0.3..1.0));
    let (coarse_cells, fine_cells) = (rng.random_range(2..6), rng.random_range(10..30));
    let coarse = ValueNoise::new(rng, coarse_cells, w, h);
    let fine = ValueNoise::new(rng, fine_cells, w, h);
    let grain = rng.random_range(0.0..0.25f32);
    for (x, y, p) in image.enumerate_pixels_mut() {
        let (fx, fy) = (x as f32, y as f32);
        let t = coarse.at(fx, fy) * (1.0 - grain) + fine.at(fx, fy) * grain;
        let c = lerp(a, b, t);
        *p = Rgb([c[0] as u8, c[1] as u8, c[2] as u8]);
    }
    // Thin straight clutter, so that edges alone do not mean "object".
    for _ in 0..rng.random_range(0..6) {
        let c = random_colour(rng);
        let start = (rng.random::<f32>() * w, rng.random::<f32>() * h);
        let end = (rng.random::<f32>() * w, rng.random::<f32>() * h);
        imageproc::drawing::draw_line_segment_mut(
            image,
            start,
            end,
            Rgb([c[0] as u8, c[1] as u8, c[2] as u8]),
        );
    }
    lerp(a, b, 0.5)
}

fn overlap_of_smaller(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    iw * ih / area(a).min(area(b)).max(1e-6)
}

/// Draws one scene of the standard world. The same (seed, split, index, size) always gives the
/// same pixels and labels.
pub fn render_scene(seed: u64, split: Split, index: usize, width: u32, height: u32) -> Scene {
    let config = SynthConfig {
        seed,
        width,
        height,
        ..SynthConfig::default()
    };
    render_scene_in(&config, split, index)
}

/// Draws one scene of the world `config` describes (its counts are not read); the standard
/// sizes and class split give [`render_scene`]'s scene.
pub fn render_scene_in(config: &SynthConfig, split: Split, index: usize) -> Scene {
    let (width, height, sizes) = (config.width, config.height, config.object_sizes);
    let mut rng = scene_rng(config.seed, split, index);
    let mut image = RgbImage::new(width, height);
    let background = paint_background(&mut rng, &mut image);
    let (w, h) = (width as f32, height as f32);
    let short = w.min(h);

    let mut objects: Vec<Object> = Vec::new();
    let mut extents: Vec<[f32; 4]> = Vec::new();
    let kinds = scene_kinds(&mut rng, split, &config.classes);
    // A log-uniform world draws each object's size once, and places the largest first: drawn per
    // try, as the standard world does, a large object placed late almost always overlaps an
    // earlier one and is redrawn smaller, and large objects would be rare.
    let fixed: Option<Vec<f32>> = match sizes {
        ObjectSizes::Standard => None,
        ObjectSizes::LogUniform { .. } => {
            let mut radii: Vec<f32> = kinds
                .iter()
                .map(|_| sizes.radius(&mut rng, short))
                .collect();
            radii.sort_by(|a, b| b.total_cmp(a));
            Some(radii)
        }
    };
    for (k, kind) in kinds.into_iter().enumerate() {
        // Occlusion is allowed, but limited, so that every labelled object stays recognisable.
        for _ in 0..30 {
            let radius = match &fixed {
                Some(radii) => radii[k],
                None => sizes.radius(&mut rng, short),
            };
            let cx = rng.random_range(radius * 0.6..w - radius * 0.6);
            let cy = rng.random_range(radius * 0.6..h - radius * 0.6);
            let extent = [cx - radius, cy - radius, cx + radius, cy + radius];
            if extents.iter().any(|e| overlap_of_smaller(*e, extent) > 0.3) {
                continue;
            }
            objects.push(Object::random(&mut rng, kind, background, (cx, cy), radius));
            extents.push(extent);
            break;
        }
    }

    let boxes = draw_objects(&mut image, &objects);
    let objects = objects
        .iter()
        .zip(boxes)
        .filter(|(_, b)| b[2] - b[0] >= 4.0 && b[3] - b[1] >= 4.0)
        .map(|(o, bbox)| Annotation {
            kind: o.kind.name(),
            group: config
                .classes
                .group(o.kind)
                .expect("scenes draw the split's kinds"),
            class_id: config.classes.class_id(o.kind),
            category_id: o.kind.category_id(),
            bbox,
        })
        .collect();
    Scene { image, objects }
}

/// Draws `objects` in order (later ones on top) and returns each one's visible box, x1, y1, x2,
/// y2 in pixels; an object with no visible pixel gets an empty box (x1 > x2).
pub(crate) fn draw_objects<O: std::borrow::Borrow<Object>>(
    image: &mut RgbImage,
    objects: &[O],
) -> Vec<[f32; 4]> {
    // Rasterise with 2×2 supersampling; the owner map records which object shows at each pixel.
    let (width, height) = image.dimensions();
    let mut owner = vec![usize::MAX; (width * height) as usize];
    const SUB: [(f32, f32); 4] = [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)];
    for (i, obj) in objects.iter().enumerate() {
        let obj = obj.borrow();
        let x0 = (obj.cx - obj.radius).floor().max(0.0) as u32;
        let y0 = (obj.cy - obj.radius).floor().max(0.0) as u32;
        let x1 = ((obj.cx + obj.radius).ceil() as u32).min(width);
        let y1 = ((obj.cy + obj.radius).ceil() as u32).min(height);
        for y in y0..y1 {
            for x in x0..x1 {
                let mut colour = [0.0f32; 3];
                let mut hits = 0;
                for (sx, sy) in SUB {
                    let (px, py) = (x as f32 + sx, y as f32 + sy);
                    let (u, v) = obj.local(px, py);
                    if obj.outline.contains(u, v) {
                        let c = obj.fill.colour(
                            u,
                            v,
                            px - obj.cx + obj.radius,
                            py - obj.cy + obj.radius,
                        );
                        for k in 0..3 {
                            colour[k] += c[k];
                        }
                        hits += 1;
                    }
                }
                if hits == 0 {
                    continue;
                }
                let alpha = hits as f32 / 4.0;
                let p = image.get_pixel_mut(x, y);
                for (channel, sum) in p.0.iter_mut().zip(colour) {
                    let c = sum / hits as f32;
                    *channel = (*channel as f32 * (1.0 - alpha) + c * alpha)
                        .round()
                        .clamp(0.0, 255.0) as u8;
                }
                if hits >= 2 {
                    owner[(y * width + x) as usize] = i;
                }
            }
        }
    }

    let mut boxes = vec![[f32::MAX, f32::MAX, f32::MIN, f32::MIN]; objects.len()];
    for (idx, &o) in owner.iter().enumerate() {
        if o == usize::MAX {
            continue;
        }
        let (x, y) = ((idx as u32 % width) as f32, (idx as u32 / width) as f32);
        let b = &mut boxes[o];
        b[0] = b[0].min(x);
        b[1] = b[1].min(y);
        b[2] = b[2].max(x + 1.0);
        b[3] = b[3].max(y + 1.0);
    }
    boxes
}

/// One YOLO label line: `class cx cy w h`, normalised; unknown objects get class `-1`.
fn yolo_line(a: &Annotation, width: u32, height: u32) -> String {
    let (w, h) = (width as f32, height as f32);
    let class = a.class_id.map_or(-1, |c| c as i64);
    format!(
        "{} {:.6} {:.6} {:.6} {:.6}",
        class,
        (a.bbox[0] + a.bbox[2]) / 2.0 / w,
        (a.bbox[1] + a.bbox[3]) / 2.0 / h,
        (a.bbox[2] - a.bbox[0]) / w,
        (a.bbox[3] - a.bbox[1]) / h
    )
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io(path, e))
}

fn coco_json(
    split: Split,
    config: &SynthConfig,
    images: &[(String, u32, u32, Vec<Annotation>)],
) -> serde_json::Value {
    let mut annotations = Vec::new();
    for (image_id, (_, _, _, objects)) in images.iter().enumerate() {
        for a in objects {
            let (w, h) = (a.bbox[2] - a.bbox[0], a.bbox[3] - a.bbox[1]);
            annotations.push(serde_json::json!({
                "id": annotations.len() + 1,
                "image_id": image_id,
                "category_id": a.category_id,
                "bbox": [a.bbox[0], a.bbox[1], w, h],
                "area": w * h,
                "iscrowd": 0,
                "unknown": a.class_id.is_none(),
            }));
        }
    }
    serde_json::json!({
        "info": {"description": "oodbox shapes world", "split": split.name(), "seed": config.seed},
        "images": images.iter().enumerate().map(|(id, (file, w, h, _))| serde_json::json!({
            "id": id, "file_name": file, "width": w, "height": h,
        })).collect::<Vec<_>>(),
        "annotations": annotations,
        // Category ids stay the positions in `Kind::ALL` whatever the split, so that one kind has
        // one id in every world.
        "categories": Kind::ALL.iter().filter_map(|&k| config.classes.group(k).map(|group| serde_json::json!({
            "id": k.category_id(), "name": k.name(), "supercategory": group,
        }))).collect::<Vec<_>>(),
    })
}

fn data_yaml(config: &SynthConfig) -> String {
    let list = |kinds: &[Kind]| {
        kinds
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let sizes = match config.object_sizes {
        ObjectSizes::Standard => String::new(),
        ObjectSizes::LogUniform { min, max } => format!(" --object-size {min},{max}"),
    };
    let classes = &config.classes;
    let split = if *classes == ClassSplit::default() {
        String::new()
    } else {
        let flag = |kinds: &[Kind]| list(kinds).replace(", ", ",");
        format!(
            " --known {} --near {} --far {}",
            flag(&classes.known),
            flag(&classes.near),
            flag(&classes.far)
        )
    };
    // Every test split by its own name too, so that `--split test_mixed` reads it.
    let tests: String = config
        .counts
        .iter()
        .map(|(split, _)| split.name())
        .filter(|name| name.starts_with("test_"))
        .map(|name| format!("{name}: images/{name}\n"))
        .collect();
    format!(
        "# The oodbox shapes world: `oodbox synth --seed {seed} --width {w} --height {h}{sizes}{split}`.\n\
         # Paths are relative to this file. Unknown objects in the test splits have class -1.\n\
         train: images/train\nval: images/val\ntest: images/test_id\n{tests}nc: {nc}\n\
         names: [{names}]\nnear_ood_names: [{near}]\nfar_ood_names: [{far}]\n",
        seed = config.seed,
        w = config.width,
        h = config.height,
        nc = classes.known.len(),
        names = list(&classes.known),
        near = list(&classes.near),
        far = list(&classes.far),
    )
}

/// Writes the whole world under `out`: `data.yaml`, `images/<split>/`, `labels/<split>/` and
/// `coco/<split>.json`. `on_image` is called once per written image (for progress bars).
pub fn generate(out: &Path, config: &SynthConfig, on_image: &(dyn Fn() + Sync)) -> Result<()> {
    use rayon::prelude::*;
    config.validate().map_err(|reason| Error::BadInput {
        path: out.to_path_buf(),
        reason,
    })?;
    create_dir(&out.join("coco"))?;
    write_file(&out.join("data.yaml"), data_yaml(config).as_bytes())?;
    for &(split, count) in &config.counts {
        let image_dir = out.join("images").join(split.name());
        let label_dir = out.join("labels").join(split.name());
        create_dir(&image_dir)?;
        create_dir(&label_dir)?;
        let images = (0..count)
            .into_par_iter()
            .map(|index| {
                let scene = render_scene_in(config, split, index);
                let stem = format!("{}_{:05}", split.name(), index);
                let image_path = image_dir.join(format!("{stem}.png"));
                scene.image.save(&image_path).map_err(|e| Error::BadInput {
                    path: image_path.clone(),
                    reason: e.to_string(),
                })?;
                let labels: String = scene
                    .objects
                    .iter()
                    .map(|a| yolo_line(a, config.width, config.height) + "\n")
                    .collect();
                write_file(&label_dir.join(format!("{stem}.txt")), labels.as_bytes())?;
                on_image();
                Ok((
                    format!("{stem}.png"),
                    config.width,
                    config.height,
                    scene.objects,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let coco = coco_json(split, config, &images);
        write_file(
            &out.join("coco").join(format!("{}.json", split.name())),
            serde_json::to_string(&coco)
                .expect("json values serialise")
                .as_bytes(),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_split_dependent() {
        let a = render_scene(7, Split::Train, 3, 128, 96);
        let b = render_scene(7, Split::Train, 3, 128, 96);
        assert_eq!(a.image.as_raw(), b.image.as_raw());
        assert_eq!(a.objects.len(), b.objects.len());
        let c = render_scene(7, Split::Val, 3, 128, 96);
        assert_ne!(a.image.as_raw(), c.image.as_raw());
    }

    #[test]
    fn splits_hold_the_right_groups() {
        for i in 0..40 {
            for o in render_scene(1, Split::Train, i, 160, 160).objects {
                assert_eq!(o.group, Group::Id);
            }
            for o in render_scene(1, Split::TestOodNear, i, 160, 160).objects {
                assert_eq!(o.group, Group::NearOod);
            }
            for o in render_scene(1, Split::TestOodFar, i, 160, 160).objects {
                assert_eq!(o.group, Group::FarOod);
                assert_eq!(o.class_id, None);
            }
        }
        let mixed: Vec<Annotation> = (0..40)
            .flat_map(|i| render_scene(1, Split::TestMixed, i, 160, 160).objects)
            .collect();
        assert!(mixed.iter().any(|o| o.group == Group::Id));
        assert!(mixed.iter().any(|o| o.group != Group::Id));
    }

    #[test]
    fn a_class_split_draws_only_its_kinds_with_its_class_ids() {
        let classes = ClassSplit {
            known: vec![Kind::Pentagon, Kind::Circle],
            near: vec![Kind::Square],
            far: vec![Kind::Scribble, Kind::Ring],
        };
        let config = SynthConfig {
            classes: classes.clone(),
            ..SynthConfig::default()
        };
        let mut seen = Vec::new();
        for split in Split::ALL {
            for i in 0..30 {
                for o in render_scene_in(&config, split, i).objects {
                    let kind = Kind::from_name(o.kind).unwrap();
                    assert_eq!(Some(o.group), classes.group(kind), "{}", o.kind);
                    assert_eq!(o.class_id, classes.class_id(kind));
                    seen.push(kind);
                }
            }
        }
        for kind in Kind::ALL {
            let listed = classes.group(kind).is_some();
            assert_eq!(seen.contains(&kind), listed, "{}", kind.name());
        }
        assert_eq!(classes.class_id(Kind::Circle), Some(1));
    }

    /// Benchmarks of unknown kinds rely on it: the ID splits stay the standard world's.
    #[test]
    fn other_unknown_kinds_keep_the_standard_known_splits() {
        let config = SynthConfig {
            classes: ClassSplit {
                near: vec![Kind::Cross],
                far: vec![Kind::Blob, Kind::Ring],
                ..ClassSplit::default()
            },
            ..SynthConfig::default()
        };
        for split in [Split::Train, Split::Val, Split::TestId] {
            for i in 0..3 {
                let standard = render_scene(0, split, i, 256, 256);
                let other = render_scene_in(&config, split, i);
                assert_eq!(fingerprint(&[other]), fingerprint(&[standard]));
            }
        }
    }

    #[test]
    fn class_splits_are_validated() {
        assert!(ClassSplit::default().validate().is_ok());
        let twice = ClassSplit {
            near: vec![Kind::Pentagon, Kind::Circle],
            ..ClassSplit::default()
        };
        let err = twice.validate().unwrap_err();
        assert!(
            err.contains("circle is listed as known and as near-OOD"),
            "{err}"
        );
        let empty = ClassSplit {
            far: vec![],
            ..ClassSplit::default()
        };
        assert!(empty.validate().unwrap_err().contains("far-OOD"));
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            counts: vec![(Split::Val, 1)],
            classes: twice,
            ..SynthConfig::default()
        };
        assert!(generate(dir.path(), &config, &|| ()).is_err());
    }

    /// FNV-1a over the pixels and boxes of a few scenes.
    fn fingerprint(scenes: &[Scene]) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h = (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for s in scenes {
            eat(s.image.as_raw());
            for o in &s.objects {
                eat(o.kind.as_bytes());
                for v in o.bbox {
                    eat(&v.to_le_bytes());
                }
            }
        }
        h
    }

    #[test]
    fn the_standard_world_is_unchanged() {
        // The fingerprint of the standard world before object sizes became an option: committed
        // fixtures and models were made from these bytes, so they must never change.
        // The class split too: the default split draws exactly as the fixed lists did.
        let config = SynthConfig::default();
        assert_eq!(config.object_sizes, ObjectSizes::Standard);
        let scenes: Vec<Scene> = Split::ALL
            .iter()
            .flat_map(|&s| (0..3).map(move |i| render_scene(0, s, i, 256, 256)))
            .collect();
        assert_eq!(fingerprint(&scenes), 0xad72_7e77_27e0_a865);
        assert_eq!(
            fingerprint(&[render_scene_in(&config, Split::Train, 1)]),
            fingerprint(&scenes[1..2])
        );
    }

    #[test]
    fn log_uniform_sizes_span_small_to_large_objects() {
        let config = SynthConfig {
            object_sizes: ObjectSizes::LogUniform {
                min: 0.045,
                max: 0.7,
            },
            ..SynthConfig::default()
        };
        let sides: Vec<f32> = (0..200)
            .flat_map(|i| render_scene_in(&config, Split::Train, i).objects)
            .map(|o| (o.bbox[2] - o.bbox[0]).max(o.bbox[3] - o.bbox[1]))
            .collect();
        let count = |f: &dyn Fn(f32) -> bool| sides.iter().filter(|s| f(**s)).count();
        // Every band, from stride-8 objects to objects over half the image, is well represented.
        let bands = [
            count(&|s| s < 20.0),
            count(&|s| (40.0..100.0).contains(&s)),
            count(&|s| s >= 140.0),
        ];
        assert!(
            bands[0] >= 30 && bands[1] >= 30 && bands[2] >= 20,
            "{bands:?}"
        );
        assert!(sides.iter().all(|s| *s <= 256.0));
        // The standard world never reaches those extremes.
        let standard: Vec<f32> = (0..200)
            .flat_map(|i| render_scene(0, Split::Train, i, 256, 256).objects)
            .map(|o| (o.bbox[2] - o.bbox[0]).max(o.bbox[3] - o.bbox[1]))
            .collect();
        assert!(standard.iter().all(|s| *s < 110.0));
    }

    #[test]
    fn object_sizes_are_validated() {
        assert!(ObjectSizes::Standard.validate().is_ok());
        let ok = ObjectSizes::LogUniform { min: 0.1, max: 0.1 };
        assert!(ok.validate().is_ok());
        for (min, max) in [(0.0, 0.5), (0.5, 0.2), (0.1, 1.5), (f32::NAN, 0.5)] {
            assert!(ObjectSizes::LogUniform { min, max }.validate().is_err());
        }
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            counts: vec![(Split::Val, 1)],
            object_sizes: ObjectSizes::LogUniform { min: 0.5, max: 2.0 },
            ..SynthConfig::default()
        };
        assert!(generate(dir.path(), &config, &|| ()).is_err());
    }

    #[test]
    fn boxes_lie_inside_the_image_and_cover_the_object() {
        for i in 0..20 {
            let scene = render_scene(3, Split::TestMixed, i, 200, 120);
            assert!(!scene.objects.is_empty());
            for o in &scene.objects {
                let [x1, y1, x2, y2] = o.bbox;
                assert!(0.0 <= x1 && x1 < x2 && x2 <= 200.0, "{:?}", o.bbox);
                assert!(0.0 <= y1 && y1 < y2 && y2 <= 120.0, "{:?}", o.bbox);
            }
        }
    }
}
