//! Surrogate outliers made from ID inputs (standardised rows of one group), for training the
//! `safe` MLP. All randomness comes from the caller's seeded generator.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::data::boxset::{BoxSet, LABEL_UNKNOWN};
use crate::ood::linalg::sym_eigh;

/// How the surrogate outliers are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Surrogate {
    /// VOS: sample class-conditional Gaussians with a shared covariance and keep the
    /// lowest-likelihood samples (1 in [`VOS_POOL`]).
    Vos,
    /// Mixing: convex combinations `λa + (1−λ)b`, `λ ~ U(0.3, 0.7)`, of two ID rows of different
    /// classes (of any two rows when the group has one class): points between the class clusters.
    Mix,
    /// Noise: an ID row plus isotropic Gaussian noise of standard deviation 1 per standardised
    /// dimension (about the spread of the ID data itself).
    Noise,
    /// FGSM (SAFE): the fit images' boxes read on inputs perturbed by one signed gradient step
    /// ([`crate::detect::fgsm`]); not generated here but given to the fit as outlier boxes.
    Fgsm,
    /// Outlier exposure (Hendrycks et al., ICLR'19): boxes of real objects the detector should
    /// not know, from other images (a box set extracted with ground truth, its boxes labelled
    /// unknown), given to the fit as outlier boxes.
    Unknown,
}

impl Surrogate {
    /// Whether the outliers are given to the fit as boxes rather than made from the fit boxes.
    pub fn is_given(self) -> bool {
        matches!(self, Surrogate::Fgsm | Surrogate::Unknown)
    }

    /// Sorts the boxes `given` to the fit beside the fit boxes `fit`. FGSM boxes are the fit
    /// images' own: those of known objects (as the fit keeps) on the fit's images (not the
    /// calibration's, when it is held out of the same set). Outlier exposure trains against the
    /// boxes of unknown objects (every box of an unlabelled set) and as ID on the known objects
    /// of the same scenes.
    pub fn sort_given(self, given: &BoxSet, fit: &BoxSet) -> Given {
        match (self, &given.label) {
            (Surrogate::Unknown, Some(labels)) => {
                let (unknown, known): (Vec<usize>, Vec<usize>) =
                    (0..given.len()).partition(|&i| labels[i] == LABEL_UNKNOWN);
                let known: Vec<usize> = known.into_iter().filter(|&i| labels[i] >= 0).collect();
                Given {
                    outliers: given.subset(&unknown),
                    inliers: (!known.is_empty()).then(|| given.subset(&known)),
                }
            }
            (Surrogate::Unknown, None) => Given {
                outliers: given.clone(),
                inliers: None,
            },
            _ => Given {
                outliers: given.clone().known_objects().of_images_of(fit),
                inliers: None,
            },
        }
    }
}

/// The boxes given to a fit beside its fit boxes, sorted by [`Surrogate::sort_given`].
pub struct Given {
    /// The boxes to train against.
    pub outliers: BoxSet,
    /// Boxes to train as ID beside the fit boxes, weighing about as much as those. With outlier
    /// exposure these are the known objects of the outlier scenes: ROI features of deep layers
    /// see past the box, and without them the MLP learns to flag scenes that hold unknowns,
    /// known objects included (on the shapes world it flagged 8.9% and 8.2% of the known
    /// objects of mixed scenes at alpha 0.05; with them 6.2% and 7.0%).
    pub inliers: Option<BoxSet>,
}

/// VOS keeps the least likely of this many samples per kept outlier (the paper keeps 1 of
/// 10 000 per class and step; 1 of 100 reaches the same tail of χ²_D to within a few per cent of
/// radius at D ≈ 100 and costs 100× less).
pub const VOS_POOL: usize = 100;

/// A standard normal draw (Box–Muller; `rand_distr` is not a dependency).
fn normal(rng: &mut ChaCha8Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// `count` surrogate rows of dimension `d` from the `n = labels.len()` rows of `x` (row-major).
pub fn generate(
    kind: Surrogate,
    x: &[f64],
    d: usize,
    labels: &[i64],
    count: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f64>, String> {
    match kind {
        Surrogate::Vos => vos(x, d, labels, count, rng),
        Surrogate::Mix => Ok(mix(x, d, labels, count, rng)),
        Surrogate::Noise => Ok(noise(x, d, labels.len(), count, rng)),
        Surrogate::Fgsm | Surrogate::Unknown => Err(
            "fgsm and unknown surrogates are outlier boxes given to the fit beside the fit boxes"
                .into(),
        ),
    }
}

fn vos(
    x: &[f64],
    d: usize,
    labels: &[i64],
    count: usize,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<f64>, String> {
    let n = labels.len();
    let classes = crate::ood::common::distinct(labels.iter().copied());
    let mut means = vec![0.0; classes.len() * d];
    let mut sizes = vec![0usize; classes.len()];
    let class_of: Vec<usize> = labels
        .iter()
        .map(|l| classes.binary_search(l).expect("class of a label"))
        .collect();
    for (i, &c) in class_of.iter().enumerate() {
        sizes[c] += 1;
        for (m, v) in means[c * d..(c + 1) * d].iter_mut().zip(&x[i * d..]) {
            *m += v;
        }
    }
    for (c, &s) in sizes.iter().enumerate() {
        means[c * d..(c + 1) * d]
            .iter_mut()
            .for_each(|m| *m /= s as f64);
    }
    // Shared (tied) covariance of the class-centred rows, as in VOS.
    let mut cov = vec![0.0; d * d];
    let mut r = vec![0.0; d];
    for (i, &c) in class_of.iter().enumerate() {
        for k in 0..d {
            r[k] = x[i * d + k] - means[c * d + k];
        }
        for a in 0..d {
            for b in a..d {
                cov[a * d + b] += r[a] * r[b];
            }
        }
    }
    for a in 0..d {
        for b in a..d {
            cov[a * d + b] /= n as f64;
            cov[b * d + a] = cov[a * d + b];
        }
    }
    let (values, vectors) = sym_eigh(&cov, d)?;
    let top = values.iter().copied().fold(0.0, f64::max);
    // x = μ_c + Σ_k √λ_k z_k v_k over the non-degenerate directions; −log-likelihood ∝ ‖z‖².
    let axes: Vec<(f64, &[f64])> = values
        .iter()
        .zip(vectors.chunks(d))
        .filter(|(&l, _)| l > 1e-9 * top)
        .map(|(&l, v)| (l.sqrt(), v))
        .collect();
    let mut out = Vec::with_capacity(count * d);
    let mut z = vec![0.0; axes.len()];
    // Each class gets its proportional share of the outliers; the remainder goes to the first.
    let base: Vec<usize> = sizes.iter().map(|&s| count * s / n).collect();
    let remainder = count - base.iter().sum::<usize>();
    for (c, &share) in base.iter().enumerate() {
        for _ in 0..share + usize::from(c < remainder) {
            let mut best = (f64::NEG_INFINITY, vec![0.0; axes.len()]);
            for _ in 0..VOS_POOL {
                z.iter_mut().for_each(|v| *v = normal(rng));
                let r2: f64 = z.iter().map(|v| v * v).sum();
                if r2 > best.0 {
                    best = (r2, z.clone());
                }
            }
            let mut row = means[c * d..(c + 1) * d].to_vec();
            for ((scale, v), zk) in axes.iter().zip(&best.1) {
                for (o, e) in row.iter_mut().zip(v.iter()) {
                    *o += scale * zk * e;
                }
            }
            out.extend_from_slice(&row);
        }
    }
    Ok(out)
}

fn mix(x: &[f64], d: usize, labels: &[i64], count: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let n = labels.len();
    let one_class = labels.iter().all(|&l| l == labels[0]);
    let mut out = Vec::with_capacity(count * d);
    for _ in 0..count {
        let a = rng.random_range(0..n);
        let mut b = rng.random_range(0..n);
        // Rejection keeps the pair's classes different; a group with one class mixes any two.
        while !one_class && labels[b] == labels[a] {
            b = rng.random_range(0..n);
        }
        let lambda = rng.random_range(0.3..0.7);
        out.extend(
            x[a * d..(a + 1) * d]
                .iter()
                .zip(&x[b * d..(b + 1) * d])
                .map(|(u, v)| lambda * u + (1.0 - lambda) * v),
        );
    }
    out
}

fn noise(x: &[f64], d: usize, n: usize, count: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    let mut out = Vec::with_capacity(count * d);
    for _ in 0..count {
        let a = rng.random_range(0..n);
        for k in 0..d {
            out.push(x[a * d + k] + normal(rng));
        }
    }
    out
}
