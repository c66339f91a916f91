//! Box sets: per-box features, logits and labels in one safetensors file, from any model.
//!
//! Tensors: `features` f32 `[N, D]`, `logits` f32 `[N, C]`, `class_id` i64 `[N]`; optional
//! `label` i64 `[N]` (ground-truth class, −1 = unknown, −2 = background), `level` i64 `[N]`, `confidence` f32
//! `[N]`, `bbox` f32 `[N, 4]`, `image_index` i64 `[N]`, and the head: `head.weight` f32 `[C, D]`
//! / `head.bias` f32 `[C]`, or `head.<level>.weight` / `head.<level>.bias` per level. The
//! metadata holds the class names, the model fingerprint and the source, as JSON strings.
//!
//! Feature sources ([`crate::core::sources`]): metadata `feature_sources` names what
//! `features` holds (`cls` when absent, as in files written before sources existed); every ROI
//! source recorded beside it is a tensor named after it, f32 `[N, D_s]` (e.g. `roi:6@2`),
//! listed in order in metadata `roi_sources`.
//! [`BoxSet::select`] makes a set whose `features` are chosen sources, concatenated.
//!
//! In memory, class ids, levels and image indices are `usize`; the file holds them as i64,
//! checked when read. Labels stay i64: −1 and −2 mark unknown objects and background.
//! A [`BoxSet`] is built from [`BoxParts`] by [`BoxSet::new`], which checks that the parts
//! agree; its fields are then read-only, so a scorer can index any row without re-checking.

use safetensors::tensor::Dtype;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use crate::core::kind::FileKind;
use crate::core::settings::UsedOptions;
use crate::core::sources::{FeatureSource, FeatureSources, RoiSource};
use crate::core::tensor_file::{self, f32_bytes, i64_bytes, Entry, TensorFile, Values};
use crate::core::{BoxRecord, ClassHead, LinearHead};
use crate::error::{Error, Result};

/// `label` of a box that matched an unknown (OOD) object.
pub const LABEL_UNKNOWN: i64 = -1;
/// `label` of a box that matched no ground-truth object (a background detection).
pub const LABEL_BACKGROUND: i64 = -2;

/// One ROI source's features recorded beside `features`.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceFeatures {
    pub source: RoiSource,
    pub dim: usize,
    /// Row-major `[N, dim]`.
    pub values: Vec<f32>,
}

/// One source's columns in a row-major matrix of `stride` columns.
struct Columns<'a> {
    values: &'a [f32],
    stride: usize,
    offset: usize,
    dim: usize,
}

impl Columns<'_> {
    fn row(&self, i: usize) -> &[f32] {
        let start = i * self.stride + self.offset;
        &self.values[start..start + self.dim]
    }
}

impl SourceFeatures {
    fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.dim..(i + 1) * self.dim]
    }
}

/// The fields of a box set, as a caller fills them; [`BoxSet::new`] checks that they agree.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BoxParts {
    /// Row-major [N, D].
    pub features: Vec<f32>,
    pub feature_dim: usize,
    /// Row-major [N, C].
    pub logits: Vec<f32>,
    pub num_classes: usize,
    /// Predicted class of each box, below `num_classes`; N gives the number of boxes.
    pub class_id: Vec<usize>,
    /// Ground-truth class, −1 (an unknown object, [`LABEL_UNKNOWN`])
    /// or −2 (background, [`LABEL_BACKGROUND`]).
    pub label: Option<Vec<i64>>,
    /// Pyramid level of the head that detected each box.
    pub level: Option<Vec<usize>>,
    pub confidence: Option<Vec<f32>>,
    pub bbox: Option<Vec<[f32; 4]>>,
    /// Index of the image each box came from.
    pub image_index: Option<Vec<usize>>,
    /// The class head, `[num_classes, feature_dim]` per level.
    pub head: Option<ClassHead>,
    /// One name per class, or none when the classes are unnamed.
    pub class_names: Vec<String>,
    pub fingerprint: String,
    pub source: String,
    /// How the boxes were detected (the settings their detector read), when a detector made
    /// them here: a scorer fitted on them is calibrated for boxes detected the same way.
    pub detect_options: Option<UsedOptions>,
    /// What `features` holds.
    pub feature_sources: FeatureSources,
    /// ROI features recorded beside `features`, one entry per source.
    pub roi: Vec<SourceFeatures>,
}

/// Boxes whose parts agree: every per-box column has one entry per box, every row its width,
/// class ids and labels lie within the classes, the head has the boxes' shape, the detection
/// settings are in range. Values may be non-finite: a scorer refuses those it reads.
///
/// The fields are read through [`BoxParts`] (`set.class_id`, `set.feature(i)`); to change
/// them, take the parts ([`BoxSet::into_parts`]) and build a new set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BoxSet {
    parts: BoxParts,
}

impl std::ops::Deref for BoxSet {
    type Target = BoxParts;

    fn deref(&self) -> &BoxParts {
        &self.parts
    }
}

impl BoxSet {
    /// The set of `parts`, or [`Error::BadBoxSet`] naming the first field that disagrees.
    pub fn new(parts: BoxParts) -> Result<BoxSet> {
        check_parts(&parts).map_err(|reason| Error::BadBoxSet { reason })?;
        Ok(BoxSet { parts })
    }

    /// The fields, to change and check again with [`BoxSet::new`].
    pub fn into_parts(self) -> BoxParts {
        self.parts
    }

    /// The set with its parts changed by `change`, checked again.
    pub fn edit(self, change: impl FnOnce(&mut BoxParts)) -> Result<BoxSet> {
        let mut parts = self.parts;
        change(&mut parts);
        BoxSet::new(parts)
    }

    /// Names the model the boxes came from (its weights fingerprint).
    pub fn set_fingerprint(&mut self, fingerprint: impl Into<String>) {
        self.parts.fingerprint = fingerprint.into();
    }

    /// Records how the boxes were detected; settings out of range are refused.
    pub fn set_detect_options(&mut self, options: Option<UsedOptions>) -> Result<()> {
        if let Some(options) = &options {
            options.check()?;
        }
        self.parts.detect_options = options;
        Ok(())
    }

    /// Sets the ground-truth labels, one per box (see [`BoxParts::label`]).
    pub fn set_labels(&mut self, labels: Option<Vec<i64>>) -> Result<()> {
        if let Some(labels) = &labels {
            check_labels(labels, self.len(), self.num_classes)
                .map_err(|reason| Error::BadBoxSet { reason })?;
        }
        self.parts.label = labels;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.class_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.class_id.is_empty()
    }

    pub fn feature(&self, i: usize) -> &[f32] {
        &self.features[i * self.feature_dim..(i + 1) * self.feature_dim]
    }

    pub fn logit_row(&self, i: usize) -> &[f32] {
        &self.logits[i * self.num_classes..(i + 1) * self.num_classes]
    }

    /// Refuses a non-finite feature, logit or confidence, naming the box by its index in this
    /// set (before any subset or shuffle) and `path`, the file it came from.
    pub fn check_finite(&self, path: &Path) -> Result<()> {
        let rows = [
            ("feature", &self.features, self.feature_dim),
            ("logit", &self.logits, self.num_classes),
        ];
        let confidence = self.confidence.as_ref().map(|c| ("confidence", c, 1));
        for (what, values, width) in rows.into_iter().chain(confidence) {
            if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
                let (i, k) = (pos / width.max(1), pos % width.max(1));
                return Err(Error::BadInput {
                    path: path.to_path_buf(),
                    reason: format!(
                        "box {i} (counting from 0 in this file) has a non-finite {what}: {} at \
                         position {k}; fix that box or leave it out",
                        values[pos]
                    ),
                });
            }
        }
        Ok(())
    }

    /// The boxes at `indices`, in that order, with the same head and metadata.
    pub fn subset(&self, indices: &[usize]) -> BoxSet {
        fn pick<T: Copy>(v: &Option<Vec<T>>, indices: &[usize]) -> Option<Vec<T>> {
            v.as_ref().map(|v| indices.iter().map(|&i| v[i]).collect())
        }
        let parts = BoxParts {
            features: indices
                .iter()
                .flat_map(|&i| self.feature(i).iter().copied())
                .collect(),
            feature_dim: self.feature_dim,
            logits: indices
                .iter()
                .flat_map(|&i| self.logit_row(i).iter().copied())
                .collect(),
            num_classes: self.num_classes,
            class_id: indices.iter().map(|&i| self.class_id[i]).collect(),
            label: pick(&self.label, indices),
            level: pick(&self.level, indices),
            confidence: pick(&self.confidence, indices),
            bbox: pick(&self.bbox, indices),
            image_index: pick(&self.image_index, indices),
            head: self.head.clone(),
            class_names: self.class_names.clone(),
            fingerprint: self.fingerprint.clone(),
            source: self.source.clone(),
            detect_options: self.detect_options.clone(),
            feature_sources: self.feature_sources.clone(),
            roi: self
                .roi
                .iter()
                .map(|r| SourceFeatures {
                    values: indices.iter().flat_map(|&i| r.row(i)).copied().collect(),
                    ..r.clone()
                })
                .collect(),
        };
        // The rows of a consistent set, picked alike, stay consistent.
        BoxSet { parts }
    }

    /// The columns of one source, when the set has it: in `features` when they hold it (alone
    /// or concatenated with others), else a recorded ROI source.
    fn source_columns(&self, source: &FeatureSource) -> Option<Columns<'_>> {
        if let Some(offset) = self.offset_in_features(source) {
            let dim = self.listed_dim(source)?;
            return Some(Columns {
                values: &self.features,
                stride: self.feature_dim,
                offset,
                dim,
            });
        }
        match source {
            FeatureSource::Roi(r) => self.recorded(r).map(|f| Columns {
                values: &f.values,
                stride: f.dim,
                offset: 0,
                dim: f.dim,
            }),
            FeatureSource::Cls => None,
        }
    }

    /// The ROI source `source` recorded beside the features, if the set has it.
    fn recorded(&self, source: &RoiSource) -> Option<&SourceFeatures> {
        self.roi.iter().find(|f| f.source == *source)
    }

    /// Where `source` starts in `features`, when they hold it and the widths before it are known.
    fn offset_in_features(&self, source: &FeatureSource) -> Option<usize> {
        let list = self.feature_sources.list();
        let at = list.iter().position(|s| s == source)?;
        list[..at].iter().map(|s| self.listed_dim(s)).sum()
    }

    /// The width of a source listed in `feature_sources`: a ROI source's recorded width; `cls`'s
    /// is what the others leave of `feature_dim`.
    fn listed_dim(&self, source: &FeatureSource) -> Option<usize> {
        let roi_dim = |s: &FeatureSource| match s {
            FeatureSource::Roi(r) => self.recorded(r).map(|f| f.dim),
            FeatureSource::Cls => None,
        };
        match source {
            FeatureSource::Roi(_) if self.feature_sources.list().len() == 1 => {
                Some(self.feature_dim)
            }
            FeatureSource::Roi(_) => roi_dim(source),
            FeatureSource::Cls => {
                let others = self
                    .feature_sources
                    .list()
                    .iter()
                    .filter(|s| **s != FeatureSource::Cls);
                let used = others.map(roi_dim).sum::<Option<usize>>()?;
                self.feature_dim.checked_sub(used)
            }
        }
    }

    /// The sources this set can give.
    pub fn available_sources(&self) -> Vec<String> {
        let mut names = vec![self.feature_sources.to_string()];
        names.extend(self.roi.iter().map(|r| r.source.to_string()));
        names
    }

    /// The same boxes with `features` made of `sources`, concatenated per box in that order.
    /// The class head applies to `cls` alone, so any other choice drops it (a scorer that
    /// needs it then says so). Errors naming the sources the set lacks.
    pub fn select(self, sources: &FeatureSources) -> Result<BoxSet> {
        if *sources == self.feature_sources {
            return Ok(self);
        }
        let (features, feature_dim) = self.gather(sources)?;
        let head = self.head_for(sources);
        // Whole rows of sources the set holds: the lengths agree.
        Ok(BoxSet {
            parts: BoxParts {
                features,
                feature_dim,
                head,
                feature_sources: sources.clone(),
                ..self.parts
            },
        })
    }

    /// [`BoxSet::select`] without taking the set: borrowed when its features already are
    /// `sources`, else a copy of the chosen columns and the per-box columns, recording beside
    /// them only the ROI sources `sources` lists. For scoring, where the boxes may carry many
    /// more sources than the scorer reads.
    pub fn view(&self, sources: &FeatureSources) -> Result<Cow<'_, BoxSet>> {
        if *sources == self.feature_sources {
            return Ok(Cow::Borrowed(self));
        }
        let (features, feature_dim) = self.gather(sources)?;
        let listed = |r: &&SourceFeatures| {
            sources
                .list()
                .contains(&FeatureSource::Roi(r.source.clone()))
        };
        let p = &self.parts;
        // Whole rows of sources the set holds, and recorded sources kept whole: consistent.
        Ok(Cow::Owned(BoxSet {
            parts: BoxParts {
                features,
                feature_dim,
                logits: p.logits.clone(),
                num_classes: p.num_classes,
                class_id: p.class_id.clone(),
                label: p.label.clone(),
                level: p.level.clone(),
                confidence: p.confidence.clone(),
                bbox: p.bbox.clone(),
                image_index: p.image_index.clone(),
                head: self.head_for(sources),
                class_names: p.class_names.clone(),
                fingerprint: p.fingerprint.clone(),
                source: p.source.clone(),
                detect_options: p.detect_options.clone(),
                feature_sources: sources.clone(),
                roi: p.roi.iter().filter(listed).cloned().collect(),
            },
        }))
    }

    /// The class head, which applies to `cls` features alone.
    fn head_for(&self, sources: &FeatureSources) -> Option<ClassHead> {
        sources.is_cls().then(|| self.head.clone()).flatten()
    }

    /// Each box's columns of `sources`, concatenated per box, and their width; errors naming
    /// the sources it lacks.
    fn gather(&self, sources: &FeatureSources) -> Result<(Vec<f32>, usize)> {
        let missing: Vec<String> = sources
            .list()
            .iter()
            .filter(|s| self.source_columns(s).is_none())
            .map(|s| s.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Unsupported(format!(
                "the box set has no feature source {}; it has {}",
                missing.join(", "),
                self.available_sources().join(", ")
            )));
        }
        let parts: Vec<Columns> = sources
            .list()
            .iter()
            .filter_map(|s| self.source_columns(s))
            .collect();
        let dim: usize = parts.iter().map(|c| c.dim).sum();
        let mut features = Vec::with_capacity(self.len() * dim);
        for i in 0..self.len() {
            for c in &parts {
                features.extend_from_slice(c.row(i));
            }
        }
        Ok((features, dim))
    }

    /// The boxes of all `sets`, in order: sets of one detector, with the same feature sources
    /// and the same optional columns. Image indices are renumbered so that images stay apart;
    /// the `source` names every set. For a fit's outliers gathered from several extractions.
    /// Extra ROI sources recorded beside the features are kept where every set has them and
    /// dropped otherwise, so that sets extracted with different `--features` lists but
    /// selected alike gather.
    pub fn concat(sets: &[BoxSet]) -> Result<BoxSet> {
        let Some((first, rest)) = sets.split_first() else {
            return Err(Error::BadBoxSet {
                reason: "no box sets to concatenate".into(),
            });
        };
        let common = |r: &SourceFeatures| {
            rest.iter().all(|s| {
                s.roi
                    .iter()
                    .any(|o| (&o.source, o.dim) == (&r.source, r.dim))
            })
        };
        let mut out = first.parts.clone();
        out.roi.retain(common);
        let kept: Vec<RoiSource> = out.roi.iter().map(|r| r.source.clone()).collect();
        let settings = |p: &BoxParts| {
            p.detect_options.clone().map(|mut o| {
                o.roi.retain(|r| kept.contains(r));
                o
            })
        };
        out.detect_options = settings(&out);
        for set in rest {
            let differ = |what: &str| Error::BadBoxSet {
                reason: format!("{} and {} differ in {what}", first.source, set.source),
            };
            if set.fingerprint != out.fingerprint || set.class_names != out.class_names {
                return Err(differ("detector (fingerprint or class names)"));
            }
            if set.feature_sources != out.feature_sources || set.feature_dim != out.feature_dim {
                return Err(differ("feature sources"));
            }
            if set.num_classes != out.num_classes || settings(&set.parts) != out.detect_options {
                return Err(differ("detection settings"));
            }
            extend_optional_columns(&mut out, set).map_err(|w| differ(&w))?;
            out.features.extend_from_slice(&set.features);
            out.logits.extend_from_slice(&set.logits);
            out.class_id.extend_from_slice(&set.class_id);
            for into in out.roi.iter_mut() {
                if let Some(from) = set.recorded(&into.source) {
                    into.values.extend_from_slice(&from.values);
                }
            }
            out.source = format!("{} + {}", out.source, set.source);
        }
        BoxSet::new(out)
    }

    /// [`BoxSet::concat`] of the outlier sets of a fit (`fit --outliers`), where an unlabelled
    /// set means that every box is on an unknown object: beside labelled sets, its boxes are
    /// labelled [`LABEL_UNKNOWN`] first, so that the two kinds of set gather.
    pub fn concat_outliers(mut sets: Vec<BoxSet>) -> Result<BoxSet> {
        if sets.iter().any(|s| s.label.is_some()) {
            for set in sets.iter_mut().filter(|s| s.label.is_none()) {
                set.set_labels(Some(vec![LABEL_UNKNOWN; set.len()]))?;
            }
        }
        BoxSet::concat(&sets)
    }

    /// The boxes matched to a known object (label ≥ 0) when the set has labels, else all: the
    /// boxes a scorer is fitted and calibrated on.
    pub fn known_objects(self) -> BoxSet {
        match &self.label {
            Some(labels) => {
                let keep: Vec<usize> = (0..self.len()).filter(|&i| labels[i] >= 0).collect();
                self.subset(&keep)
            }
            None => self,
        }
    }

    /// The boxes from the images that `other`'s boxes come from (all of them when either set
    /// has no `image_index`): for sets extracted from the same images, such as FGSM boxes and
    /// the clean boxes of a part of those images.
    pub fn of_images_of(self, other: &BoxSet) -> BoxSet {
        let (Some(images), Some(wanted)) = (&self.image_index, &other.image_index) else {
            return self;
        };
        let wanted: std::collections::HashSet<usize> = wanted.iter().copied().collect();
        let keep: Vec<usize> = (0..self.len())
            .filter(|&i| wanted.contains(&images[i]))
            .collect();
        self.subset(&keep)
    }

    /// Splits off about `fraction` of the boxes for calibration, whole images at a time when
    /// `image_index` is known (boxes of one image are not exchangeable with each other), in a
    /// seeded random order. Returns (rest, held out).
    pub fn split_holdout(&self, fraction: f64, seed: u64) -> (BoxSet, BoxSet) {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        let groups: Vec<usize> = match &self.image_index {
            Some(v) => v.clone(),
            None => (0..self.len()).collect(),
        };
        let mut unique: Vec<usize> = groups.clone();
        unique.sort_unstable();
        unique.dedup();
        unique.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let take = ((unique.len() as f64) * fraction).round() as usize;
        let held: std::collections::HashSet<usize> = unique.into_iter().take(take).collect();
        let (mut rest, mut out) = (Vec::new(), Vec::new());
        for (i, g) in groups.iter().enumerate() {
            if held.contains(g) {
                out.push(i);
            } else {
                rest.push(i);
            }
        }
        (self.subset(&rest), self.subset(&out))
    }

    /// A box set of detections, with the image each came from; records of another shape than
    /// the head's, or with ROI features of other sources, are refused.
    pub fn from_records<'a>(
        records: impl IntoIterator<Item = (usize, &'a BoxRecord)>,
        head: &ClassHead,
        class_names: &[String],
        fingerprint: &str,
        source: &str,
    ) -> Result<Self> {
        let mut set = BoxParts {
            feature_dim: head.levels.first().map_or(0, |l| l.dim),
            num_classes: class_names.len(),
            level: Some(Vec::new()),
            confidence: Some(Vec::new()),
            bbox: Some(Vec::new()),
            image_index: Some(Vec::new()),
            head: Some(head.clone()),
            class_names: class_names.to_vec(),
            fingerprint: fingerprint.to_string(),
            source: source.to_string(),
            ..Default::default()
        };
        for (image, r) in records {
            if set.class_id.is_empty() {
                set.roi = r
                    .roi_features
                    .iter()
                    .map(|f| SourceFeatures {
                        source: f.source.clone(),
                        dim: f.values.len(),
                        values: Vec::new(),
                    })
                    .collect();
            }
            // One detector run with one set of options gives every box the same sources.
            for (set_roi, f) in set.roi.iter_mut().zip(&r.roi_features) {
                set_roi.values.extend_from_slice(&f.values);
            }
            set.features.extend_from_slice(&r.feature);
            set.logits.extend_from_slice(&r.logits);
            set.class_id.push(r.class_id);
            set.level.as_mut().unwrap().push(r.level as usize);
            set.confidence.as_mut().unwrap().push(r.confidence);
            set.bbox.as_mut().unwrap().push(r.bbox);
            set.image_index.as_mut().unwrap().push(image);
        }
        BoxSet::new(set)
    }

    /// Writes the box set, atomically: a temporary file renamed into place.
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let mut tensors: Vec<Entry> = vec![
            (
                "features".into(),
                Dtype::F32,
                vec![n, self.feature_dim],
                f32_bytes(&self.features),
            ),
            (
                "logits".into(),
                Dtype::F32,
                vec![n, self.num_classes],
                f32_bytes(&self.logits),
            ),
            (
                "class_id".into(),
                Dtype::I64,
                vec![n],
                i64_bytes(&wide(&self.class_id)),
            ),
        ];
        let optional_i64 = [
            ("label", self.label.clone()),
            ("level", self.level.as_deref().map(wide)),
            ("image_index", self.image_index.as_deref().map(wide)),
        ];
        for (name, values) in optional_i64 {
            if let Some(v) = values {
                tensors.push((name.into(), Dtype::I64, vec![n], i64_bytes(&v)));
            }
        }
        if let Some(c) = &self.confidence {
            tensors.push(("confidence".into(), Dtype::F32, vec![n], f32_bytes(c)));
        }
        if let Some(b) = &self.bbox {
            let flat: Vec<f32> = b.iter().flatten().copied().collect();
            tensors.push(("bbox".into(), Dtype::F32, vec![n, 4], f32_bytes(&flat)));
        }
        for r in &self.roi {
            let shape = vec![n, r.dim];
            let bytes = f32_bytes(&r.values);
            tensors.push((r.source.to_string(), Dtype::F32, shape, bytes));
        }
        if let Some(head) = &self.head {
            for (i, l) in head.levels.iter().enumerate() {
                let prefix = if head.levels.len() == 1 {
                    "head".to_string()
                } else {
                    format!("head.{i}")
                };
                tensors.push((
                    format!("{prefix}.weight"),
                    Dtype::F32,
                    vec![l.classes, l.dim],
                    f32_bytes(&l.weight),
                ));
                tensors.push((
                    format!("{prefix}.bias"),
                    Dtype::F32,
                    vec![l.classes],
                    f32_bytes(&l.bias),
                ));
            }
        }
        tensor_file::write(path, &tensors, self.metadata())
    }

    /// The file's metadata: class names, fingerprint, source, format, feature sources, and
    /// the ROI sources and detection settings when there are any.
    fn metadata(&self) -> HashMap<String, String> {
        let mut metadata = HashMap::from([
            (
                "class_names".to_string(),
                serde_json::to_string(&self.class_names).expect("strings serialise"),
            ),
            ("fingerprint".to_string(), self.fingerprint.clone()),
            ("source".to_string(), self.source.clone()),
            ("format".to_string(), "oodbox-boxset-1".to_string()),
            (
                "feature_sources".to_string(),
                self.feature_sources.to_string(),
            ),
        ]);
        if !self.roi.is_empty() {
            let names: Vec<String> = self.roi.iter().map(|r| r.source.to_string()).collect();
            metadata.insert("roi_sources".to_string(), names.join(","));
        }
        if let Some(options) = &self.detect_options {
            let json = serde_json::to_string(options).expect("options serialise");
            metadata.insert("detect_options".to_string(), json);
        }
        metadata
    }

    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let file = TensorFile::parse(path, &bytes, FileKind::BoxSet)?;
        let meta = file.metadata();
        let (fshape, features) = required_f32(&file, "features")?;
        let (lshape, logits) = required_f32(&file, "logits")?;
        let (cshape, class_id) = file
            .i64("class_id")?
            .ok_or_else(|| missing(&file, "class_id"))?;
        // After the required tensors, so that a file of another kind is named as such.
        refuse_misspelt_tensors(&file)?;
        if fshape.len() != 2 || lshape.len() != 2 || cshape.len() != 1 {
            return Err(file.bad(format!(
                "expected features [N, D], logits [N, C] and class_id [N]; found {fshape:?}, {lshape:?}, {cshape:?}"
            )));
        }
        let n = cshape[0];
        if lshape[1] > crate::limits::MAX_CLASSES {
            return Err(file.bad(format!(
                "`logits` declare {} classes; at most {} are supported",
                lshape[1],
                crate::limits::MAX_CLASSES
            )));
        }
        if fshape[0] != n || lshape[0] != n {
            return Err(file.bad(format!(
                "features, logits and class_id disagree on the number of boxes: {}, {}, {n}",
                fshape[0], lshape[0]
            )));
        }
        let vector_i64 = |name: &str| -> Result<Option<Vec<i64>>> {
            file.i64(name)?
                .map(|(shape, v)| file.check_shape(name, &shape, &[Some(n)]).map(|_| v))
                .transpose()
        };
        let classes = lshape[1];
        let class_range = format!("a class in 0..={}", classes as i64 - 1);
        let class_id = narrow("class_id", &class_id, classes, &class_range)
            .map_err(|reason| file.bad(reason))?;
        let index = |name: &str| -> Result<Option<Vec<usize>>> {
            vector_i64(name)?
                .map(|v| narrow(name, &v, usize::MAX >> 1, "0 or more"))
                .transpose()
                .map_err(|reason| file.bad(reason))
        };
        let confidence = file.f32("confidence")?.map(|(_, v)| v);
        let bbox = file
            .f32("bbox")?
            .map(|(shape, v)| {
                file.check_shape("bbox", &shape, &[Some(n), Some(4)])?;
                Ok::<_, Error>(
                    v.chunks_exact(4)
                        .map(|c| [c[0], c[1], c[2], c[3]])
                        .collect(),
                )
            })
            .transpose()?;
        let head = read_head(&file)?;
        let feature_sources = match meta.get("feature_sources") {
            Some(text) => text
                .parse()
                .map_err(|e| file.bad(format!("metadata `feature_sources`: {e}")))?,
            None => FeatureSources::default(),
        };
        let roi = read_roi(&file, n)?;
        let class_names: Vec<String> = match meta.get("class_names") {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| file.bad(format!("metadata `class_names`: {e}")))?,
            None => (0..classes).map(|i| format!("class{i}")).collect(),
        };
        if class_names.len() != classes {
            return Err(file.bad(format!(
                "{} class names in the metadata, but the logits have {classes} classes",
                class_names.len()
            )));
        }
        let parts = BoxParts {
            features,
            feature_dim: fshape[1],
            logits,
            num_classes: classes,
            class_id,
            label: vector_i64("label")?,
            level: index("level")?,
            confidence,
            bbox,
            image_index: index("image_index")?,
            head,
            class_names,
            fingerprint: meta.get("fingerprint").cloned().unwrap_or_default(),
            source: meta.get("source").cloned().unwrap_or_default(),
            detect_options: match meta.get("detect_options") {
                Some(json) => Some(
                    serde_json::from_str(json)
                        .map_err(|e| file.bad(format!("metadata `detect_options`: {e}")))?,
                ),
                None => None,
            },
            feature_sources,
            roi,
        };
        check_parts(&parts).map_err(|reason| file.bad(reason))?;
        Ok(BoxSet { parts })
    }
}

/// The ids of a file as i64.
fn wide(values: &[usize]) -> Vec<i64> {
    values.iter().map(|&v| v as i64).collect()
}

/// The ids of a file as indices, each below `end`; else names the first box outside.
fn narrow(
    tensor: &str,
    values: &[i64],
    end: usize,
    allowed: &str,
) -> std::result::Result<Vec<usize>, String> {
    match values.iter().position(|&v| v < 0 || v >= end as i64) {
        Some(i) => Err(format!(
            "box {i}: `{tensor}` is {}, not {allowed}",
            values[i]
        )),
        None => Ok(values.iter().map(|&v| v as usize).collect()),
    }
}

/// Labels are a class, −1 (unknown) or −2 (background), one per box.
fn check_labels(labels: &[i64], n: usize, classes: usize) -> std::result::Result<(), String> {
    if labels.len() != n {
        return Err(format!("`label` has {} values for {n} boxes", labels.len()));
    }
    match labels
        .iter()
        .position(|&v| v < LABEL_BACKGROUND || v >= classes as i64)
    {
        Some(i) => Err(format!(
            "box {i}: `label` is {}, not a class in 0..={}, -1 (unknown) or -2 (background)",
            labels[i],
            classes as i64 - 1
        )),
        None => Ok(()),
    }
}

/// What parts can get wrong: columns of another length, class ids outside the class list, a
/// head or class names of another size, ROI rows of another width, settings out of range.
fn check_parts(p: &BoxParts) -> std::result::Result<(), String> {
    let (n, classes) = (p.class_id.len(), p.num_classes);
    let rows = [
        ("features", p.features.len(), p.feature_dim),
        ("logits", p.logits.len(), classes),
    ];
    for (name, len, width) in rows {
        if Some(len) != n.checked_mul(width) {
            return Err(format!(
                "`{name}` has {len} values, not {n} boxes × {width}"
            ));
        }
    }
    let columns = [
        ("level", p.level.as_ref().map(Vec::len)),
        ("confidence", p.confidence.as_ref().map(Vec::len)),
        ("bbox", p.bbox.as_ref().map(Vec::len)),
        ("image_index", p.image_index.as_ref().map(Vec::len)),
    ];
    for (name, len) in columns {
        if let Some(len) = len.filter(|&len| len != n) {
            return Err(format!("`{name}` has {len} values for {n} boxes"));
        }
    }
    if !p.class_names.is_empty() && p.class_names.len() != classes {
        return Err(format!(
            "{} class names, but the logits have {classes} classes",
            p.class_names.len()
        ));
    }
    if let Some(i) = p.class_id.iter().position(|&c| c >= classes) {
        return Err(format!(
            "box {i}: `class_id` is {}, not a class in 0..={}",
            p.class_id[i],
            classes as i64 - 1
        ));
    }
    if let Some(labels) = &p.label {
        check_labels(labels, n, classes)?;
    }
    let head_levels = p.head.iter().flat_map(|h| &h.levels);
    for (i, level) in head_levels.enumerate() {
        if level.classes != classes
            || level.dim != p.feature_dim
            || level.weight.len() != classes * p.feature_dim
            || level.bias.len() != classes
        {
            return Err(format!(
                "head {i} is [{}, {}]; the boxes have {classes} classes and {}-d features",
                level.classes, level.dim, p.feature_dim
            ));
        }
    }
    for r in &p.roi {
        if Some(r.values.len()) != n.checked_mul(r.dim) {
            return Err(format!(
                "`{}` has {} values, not {n} boxes × {}",
                r.source,
                r.values.len(),
                r.dim
            ));
        }
    }
    if let Some(options) = &p.detect_options {
        options
            .check()
            .map_err(|e| format!("metadata `detect_options`: {e}"))?;
    }
    Ok(())
}

/// A box tensor the file lacks: the file is named as a scorer file or a model when its
/// metadata says it is one, else the tensor is named.
fn missing(file: &TensorFile, name: &str) -> Error {
    let found = match crate::core::kind::of_metadata(file.metadata()) {
        FileKind::Model if file.names().iter().any(|n| n.starts_with("model.")) => {
            Some(FileKind::Model)
        }
        FileKind::Scorer => Some(FileKind::Scorer),
        _ => None,
    };
    match found {
        Some(found) => Error::WrongKind {
            path: file.path().to_path_buf(),
            found,
            expected: FileKind::BoxSet,
        },
        None => Error::MissingTensor {
            path: file.path().to_path_buf(),
            name: name.to_string(),
        },
    }
}

/// The per-box tensors a box set may lack.
const OPTIONAL_TENSORS: [&str; 5] = ["label", "level", "confidence", "bbox", "image_index"];

/// Other tensors are not read, but one that looks like a misspelt optional tensor the file
/// lacks is refused: read as absent, a `labels` would count every box as a known object.
fn refuse_misspelt_tensors(file: &TensorFile) -> Result<()> {
    let absent: Vec<&str> = OPTIONAL_TENSORS
        .into_iter()
        .filter(|name| !file.contains(name))
        .collect();
    for name in file.names() {
        if let Some(meant) = misspelling_of(name, &absent) {
            return Err(file.bad(format!(
                "it has a tensor `{name}` but no `{meant}`: did you mean `{meant}`?"
            )));
        }
    }
    Ok(())
}

/// The name among `absent` that `name` looks like a misspelling of (case aside, a normalised
/// Damerau–Levenshtein similarity of at least 0.65: `labels`, `Label`, `box` for `bbox`,
/// `image_idx`), the closest if several. The one rule for box set files and, through the
/// Python binding, for box set dicts.
pub fn misspelling_of<'a>(name: &str, absent: &[&'a str]) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let similarity = |known: &&str| strsim::normalized_damerau_levenshtein(&lower, known);
    absent
        .iter()
        .map(|known| (similarity(known), *known))
        .filter(|(s, _)| *s >= 0.65)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| known)
}

fn required_f32(file: &TensorFile, name: &str) -> Result<Values<f32>> {
    file.f32(name)?.ok_or_else(|| missing(file, name))
}

/// The class head: `head.weight` / `head.bias`, or one pair per level, `head.<level>.*`.
fn read_head(file: &TensorFile) -> Result<Option<ClassHead>> {
    let mut levels = Vec::new();
    let mut read_level = |prefix: &str| -> Result<bool> {
        let (w, b) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
        if !(file.contains(&w) && file.contains(&b)) {
            return Ok(false);
        }
        let (wshape, weight) = file.f32(&w)?.expect("present");
        let (_, bias) = file.f32(&b)?.expect("present");
        if wshape.len() != 2 || bias.len() != wshape[0] {
            return Err(file.bad(format!(
                "`{w}` {wshape:?} and `{b}` [{}] do not form a linear head",
                bias.len()
            )));
        }
        levels.push(LinearHead {
            weight,
            bias,
            classes: wshape[0],
            dim: wshape[1],
        });
        Ok(true)
    };
    if !read_level("head")? {
        let mut i = 0;
        while read_level(&format!("head.{i}"))? {
            i += 1;
        }
    }
    Ok((!levels.is_empty()).then_some(ClassHead { levels }))
}

/// The ROI features listed in metadata `roi_sources`, each `[n, D]`.
fn read_roi(file: &TensorFile, n: usize) -> Result<Vec<SourceFeatures>> {
    let listed = file
        .metadata()
        .get("roi_sources")
        .map(String::as_str)
        .unwrap_or("");
    let mut roi = Vec::new();
    for name in listed.split(',').filter(|n| !n.is_empty()) {
        let source = name
            .parse()
            .map_err(|e| file.bad(format!("tensor `{name}`: {e}")))?;
        let (shape, values) = required_f32(file, name)?;
        file.check_shape(name, &shape, &[Some(n), None])?;
        roi.push(SourceFeatures {
            source,
            dim: shape[1],
            values,
        });
    }
    Ok(roi)
}

/// Appends `set`'s optional columns to `out`'s (image indices renumbered after `out`'s), or
/// names the column that one of them lacks.
fn extend_optional_columns(out: &mut BoxParts, set: &BoxParts) -> std::result::Result<(), String> {
    let offset = out
        .image_index
        .as_ref()
        .and_then(|v| v.iter().max())
        .map_or(0, |m| m + 1);
    let images = set
        .image_index
        .as_ref()
        .map(|v| v.iter().map(|i| i + offset).collect());
    extend_column(&mut out.image_index, &images, "image_index")?;
    extend_column(&mut out.label, &set.label, "label")?;
    extend_column(&mut out.level, &set.level, "level")?;
    extend_column(&mut out.confidence, &set.confidence, "confidence")?;
    extend_column(&mut out.bbox, &set.bbox, "bbox")
}

/// Appends an optional column of one set to another's; `Err(what)` when only one has it.
fn extend_column<T: Clone>(
    into: &mut Option<Vec<T>>,
    from: &Option<Vec<T>>,
    name: &str,
) -> std::result::Result<(), String> {
    match (into, from) {
        (Some(a), Some(b)) => a.extend_from_slice(b),
        (None, None) => {}
        _ => return Err(format!("which columns they have (`{name}`)")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::settings::{DetectOptions, InputSize, SettingsUse};
    use crate::core::RoiFeature;
    use safetensors::tensor::TensorView;

    fn record(class_id: usize, level: u8) -> BoxRecord {
        BoxRecord {
            bbox: [1.0, 2.0, 3.0, 4.0],
            class_id,
            confidence: 0.5,
            logits: vec![0.1, -0.2],
            feature: vec![1.0, 2.0, 3.0],
            level,
            anchor: 7,
            roi_features: vec![RoiFeature {
                source: "roi:4@2".parse().unwrap(),
                values: vec![level as f32; 8],
            }],
        }
    }

    #[test]
    fn round_trips() {
        let head = ClassHead {
            levels: (0..3)
                .map(|i| LinearHead {
                    weight: vec![i as f32; 6],
                    bias: vec![0.5; 2],
                    classes: 2,
                    dim: 3,
                })
                .collect(),
        };
        let records = [record(0, 0), record(1, 2)];
        let names = vec!["a".to_string(), "b".to_string()];
        let mut set = BoxSet::from_records(
            records.iter().enumerate(),
            &head,
            &names,
            "sha256:x",
            "test",
        )
        .unwrap();
        set.set_detect_options(Some(
            DetectOptions {
                imgsz: InputSize {
                    width: 256,
                    height: 320,
                },
                ..DetectOptions::default()
            }
            .used_by(&SettingsUse::ALL),
        ))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("boxes.safetensors");
        set.save(&path).unwrap();
        assert_eq!(BoxSet::load(&path).unwrap(), set);
        // Chosen sources, concatenated; the head goes with `cls`.
        let both = set.clone().select(&"roi:4@2,cls".parse().unwrap()).unwrap();
        assert_eq!((both.feature_dim, both.head.is_none()), (11, true));
        assert_eq!(
            both.feature(1),
            [2.0; 8]
                .iter()
                .chain(&[1.0, 2.0, 3.0])
                .copied()
                .collect::<Vec<_>>()
        );
        both.save(&path).unwrap();
        let loaded = BoxSet::load(&path).unwrap();
        assert_eq!(loaded, both);
        // Each source comes back out of the concatenation: `cls` is what the ROI source's
        // recorded width leaves (without the head, which went with the first choice).
        let cls = loaded.clone().select(&FeatureSources::default()).unwrap();
        assert_eq!((cls.feature_dim, cls.feature(1)), (3, &[1.0, 2.0, 3.0][..]));
        let roi = loaded.clone().select(&"roi:4@2".parse().unwrap()).unwrap();
        assert_eq!((roi.feature_dim, roi.feature(1)), (8, &[2.0; 8][..]));
        let alone = set.clone().select(&"roi:4@2".parse().unwrap()).unwrap();
        assert_eq!(roi, alone);
        // A view borrows the set that already has the sources; otherwise it holds the chosen
        // columns of `select`, with only the listed ROI sources recorded beside them.
        let sources: FeatureSources = "roi:4@2,cls".parse().unwrap();
        assert!(matches!(both.view(&sources).unwrap(), Cow::Borrowed(_)));
        let view = set.view(&sources).unwrap().into_owned();
        assert_eq!((&view.features, view.feature_dim), (&both.features, 11));
        assert_eq!(view.roi, both.roi);
        let view = loaded
            .view(&FeatureSources::default())
            .unwrap()
            .into_owned();
        assert_eq!(
            (view.feature_dim, view.feature(1)),
            (3, &[1.0, 2.0, 3.0][..])
        );
        assert!(view.roi.is_empty());
        assert_eq!(BoxSet::new(view.clone().into_parts()).unwrap(), view);
        assert!(set.view(&"roi:6".parse().unwrap()).is_err());
        let err = set.select(&"roi:6".parse().unwrap()).unwrap_err();
        assert!(matches!(err, Error::Unsupported(_)), "{err}");
        let err = err.to_string();
        assert!(err.contains("no feature source roi:6"), "{err}");
    }

    /// A zero head of one level for the records of [`record`], and two class names.
    fn one_level_head() -> (ClassHead, Vec<String>) {
        let head = ClassHead {
            levels: vec![LinearHead {
                weight: vec![0.0; 6],
                bias: vec![0.0; 2],
                classes: 2,
                dim: 3,
            }],
        };
        (head, vec!["a".to_string(), "b".to_string()])
    }

    /// Concatenated sets keep every column, renumber the images of the later sets after the
    /// earlier ones', keep the ROI sources all have, and refuse sets that differ in detector,
    /// feature sources or columns.
    #[test]
    fn concatenates_sets_of_one_detector_and_refuses_others() {
        let (head, names) = one_level_head();
        let set = |records: &[BoxRecord], source: &str| {
            let mut s = BoxSet::from_records(
                records.iter().enumerate(),
                &head,
                &names,
                "sha256:x",
                source,
            )
            .unwrap();
            s.set_labels(Some((0..records.len() as i64).map(|i| i - 1).collect()))
                .unwrap();
            s
        };
        let a = set(&[record(0, 0), record(1, 0)], "a");
        let b = set(&[record(1, 0), record(0, 0), record(1, 0)], "b");
        let both = BoxSet::concat(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(both.len(), 5);
        assert_eq!(both.source, "a + b");
        assert_eq!(both.image_index.as_deref(), Some(&[0, 1, 2, 3, 4][..]));
        assert_eq!(both.label.as_deref(), Some(&[-1, 0, -1, 0, 1][..]));
        assert_eq!(both.class_id, [0, 1, 1, 0, 1]);
        assert_eq!(both.roi[0].values.len(), 5 * 8);
        assert_eq!(both.subset(&[2, 3, 4]).features, b.features);
        let unlabelled = {
            let mut s = b.clone();
            s.set_labels(None).unwrap();
            s
        };
        let err = BoxSet::concat(&[a.clone(), unlabelled.clone()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a and b differ") && err.contains("`label`"),
            "{err}"
        );
        // As outliers, every box of the unlabelled set is on an unknown object.
        let outliers = BoxSet::concat_outliers(vec![a.clone(), unlabelled.clone()]).unwrap();
        let mut labels = a.label.clone().unwrap();
        labels.extend(vec![LABEL_UNKNOWN; unlabelled.len()]);
        assert_eq!(outliers.label, Some(labels));
        let alone = BoxSet::concat_outliers(vec![unlabelled.clone()]).unwrap();
        assert_eq!(alone.label, None);
        let other = {
            let mut s = b.clone();
            s.set_fingerprint("sha256:y");
            s
        };
        let err = BoxSet::concat(&[a.clone(), other]).unwrap_err().to_string();
        assert!(err.contains("detector"), "{err}");
        // A set without the other's extra ROI source gathers; the source is dropped.
        let fewer_roi = {
            let mut s = b.clone();
            s.parts.roi.clear();
            s
        };
        let gathered = BoxSet::concat(&[a.clone(), fewer_roi]).unwrap();
        assert_eq!((gathered.len(), gathered.roi.len()), (5, 0));
        assert_eq!(gathered.features, both.features);
        let roi_only = b.select(&"roi:4@2".parse().unwrap()).unwrap();
        let err = BoxSet::concat(&[a, roi_only]).unwrap_err().to_string();
        assert!(err.contains("feature sources"), "{err}");
        assert!(BoxSet::concat(&[]).is_err());
    }

    /// A box set written before feature sources existed (no `feature_sources` metadata, no ROI
    /// tensors) loads as the `cls` source.
    #[test]
    fn old_files_hold_the_cls_source() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/shapes_boxes/val.safetensors"
        );
        let set = BoxSet::load(path.as_ref()).unwrap();
        assert!(set.feature_sources.is_cls() && set.roi.is_empty());
        assert_eq!(set.feature_dim, set.head.as_ref().unwrap().levels[0].dim);
        let again = set.clone().select(&FeatureSources::default()).unwrap();
        assert_eq!(again, set);
    }

    #[test]
    fn a_non_finite_value_is_named_by_its_index_in_the_file() {
        let set = BoxSet::from_records(
            [record(0, 0), record(1, 0), record(0, 1)]
                .iter()
                .enumerate(),
            &ClassHead {
                levels: vec![LinearHead {
                    weight: vec![0.0; 6],
                    bias: vec![0.0; 2],
                    classes: 2,
                    dim: 3,
                }],
            },
            &["a".into(), "b".into()],
            "sha256:x",
            "test",
        )
        .unwrap();
        assert!(set.check_finite(Path::new("x.safetensors")).is_ok());
        let set = set.edit(|s| s.features[2 * 3 + 1] = f32::NAN).unwrap();
        let err = set.check_finite(Path::new("x.safetensors")).unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.starts_with("x.safetensors: box 2 ") && err.contains("NaN at position 1"),
            "{err}"
        );
    }

    /// A file's tensors by name, and its metadata.
    type Contents = (HashMap<String, Entry>, HashMap<String, String>);

    /// The round-trip set of `round_trips`, one box per class, saved, its file's tensors and
    /// metadata changed by `edit` (in memory a set cannot disagree with itself).
    fn saved_with(dir: &Path, edit: impl FnOnce(&mut Contents)) -> std::path::PathBuf {
        let (head, names) = one_level_head();
        let records = [record(0, 0), record(1, 0)];
        let set = BoxSet::from_records(records.iter().enumerate(), &head, &names, "x", "t");
        let path = dir.join("edited.safetensors");
        set.unwrap().save(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let tensors = file.tensors().into_iter().map(|(name, t)| {
            let entry = (
                name.clone(),
                t.dtype(),
                t.shape().to_vec(),
                t.data().to_vec(),
            );
            (name, entry)
        });
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut contents = (tensors.collect(), meta.metadata().clone().unwrap());
        edit(&mut contents);
        let entries: Vec<Entry> = contents.0.into_values().collect();
        tensor_file::write(&path, &entries, contents.1).unwrap();
        path
    }

    /// `values` as the i64 tensor `name` of a two-box file.
    fn ids(contents: &mut Contents, name: &str, values: [i64; 2]) {
        let entry = (name.to_string(), Dtype::I64, vec![2], i64_bytes(&values));
        contents.0.insert(name.to_string(), entry);
    }

    #[test]
    fn inconsistent_fields_are_refused_naming_the_file_and_the_box() {
        let dir = tempfile::tempdir().unwrap();
        type Edit = Box<dyn FnOnce(&mut Contents)>;
        let options = serde_json::to_string(
            &DetectOptions {
                conf: 2.0,
                ..Default::default()
            }
            .used_by(&SettingsUse::ALL),
        )
        .unwrap();
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|s| ids(s, "class_id", [0, 9])),
                "box 1: `class_id` is 9, not a class in 0..=1",
            ),
            (
                Box::new(|s| ids(s, "class_id", [-1, 1])),
                "box 0: `class_id` is -1",
            ),
            (
                Box::new(|s| ids(s, "label", [-2, 2])),
                "box 1: `label` is 2, not a class in 0..=1, -1 (unknown) or -2 (background)",
            ),
            (
                Box::new(|s| {
                    s.1.insert("class_names".into(), r#"["a","b","c"]"#.into());
                }),
                "3 class names in the metadata, but the logits have 2 classes",
            ),
            (
                Box::new(|s| {
                    s.1.insert("detect_options".into(), options);
                }),
                "conf = 2 is outside [0, 1]",
            ),
        ];
        for (edit, expected) in cases {
            let path = saved_with(dir.path(), edit);
            let err = BoxSet::load(&path).unwrap_err();
            assert!(matches!(err, Error::BadInput { .. }), "{err}");
            let err = err.to_string();
            assert!(
                err.contains("edited.safetensors") && err.contains(expected),
                "{err}"
            );
        }
        assert!(BoxSet::load(&saved_with(dir.path(), |_| ())).is_ok());
    }

    #[test]
    fn a_tensor_declaring_more_bytes_than_the_file_holds_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("liar.safetensors");
        let header =
            r#"{"features":{"dtype":"F32","shape":[1000000000,1000],"data_offsets":[0,8]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend([0u8; 8]);
        std::fs::write(&path, bytes).unwrap();
        let err = BoxSet::load(&path).unwrap_err();
        assert!(matches!(err, Error::WrongKind { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("liar.safetensors"), "{err}");
    }

    #[test]
    fn misspelt_optional_tensors_are_refused_not_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let misspellings = [
            ("label", &["labels", "Label", "LABEL", "lable"][..]),
            ("level", &["levels", "Level"]),
            ("confidence", &["confidences", "confidance"]),
            ("bbox", &["bboxes", "box", "bbx"]),
            ("image_index", &["image_idx", "image_indices", "img_index"]),
        ];
        for (tensor, wrong) in misspellings {
            for wrong in wrong {
                let path = saved_with(dir.path(), |c| match c.0.remove(tensor) {
                    Some(mut entry) => {
                        entry.0 = wrong.to_string();
                        c.0.insert(wrong.to_string(), entry);
                    }
                    None => ids(c, wrong, [0, -1]),
                });
                let err = BoxSet::load(&path).unwrap_err().to_string();
                let says = format!("tensor `{wrong}` but no `{tensor}`: did you mean `{tensor}`?");
                assert!(
                    err.contains(&says) && err.contains("edited.safetensors"),
                    "{err}"
                );
            }
        }
        // Tensors of other meanings are not read, and do not stop the file loading.
        for other in ["scores", "p_value", "x1", "embedding", "track_id"] {
            let path = saved_with(dir.path(), |c| ids(c, other, [0, 1]));
            assert!(BoxSet::load(&path).is_ok(), "{other}");
        }
        // The rule itself, which the Python package's box set dicts share: the closest name.
        assert_eq!(misspelling_of("levels", &["label", "level"]), Some("level"));
        assert_eq!(
            misspelling_of("Feature", &["features", "logits"]),
            Some("features")
        );
        assert_eq!(misspelling_of("score", &["source", "confidence"]), None);
        // Nor does a near name beside the tensor it resembles.
        let path = saved_with(dir.path(), |c| {
            ids(c, "label", [0, -1]);
            ids(c, "labels", [0, 1]);
        });
        assert_eq!(
            BoxSet::load(&path).unwrap().label.as_deref(),
            Some(&[0, -1][..])
        );
    }

    #[test]
    fn missing_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.safetensors");
        let bytes = f32_bytes(&[1.0, 2.0]);
        let view = TensorView::new(Dtype::F32, vec![1, 2], &bytes).unwrap();
        std::fs::write(
            &path,
            safetensors::serialize([("features", view)], None).unwrap(),
        )
        .unwrap();
        let err = BoxSet::load(&path).unwrap_err();
        assert!(matches!(err, Error::MissingTensor { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("logits") && err.contains("partial.safetensors"),
            "{err}"
        );
    }
}
