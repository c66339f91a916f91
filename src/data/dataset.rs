//! Labelled image sets: an ultralytics `data.yaml` split, a COCO json, or a plain image folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::data::inputs::collect_images;
use crate::error::{Error, Result};

/// One ground-truth object. `class` is `None` for an unknown (OOD) object.
#[derive(Clone, Debug, PartialEq)]
pub struct GroundTruth {
    pub class: Option<usize>,
    pub bbox: Bbox,
}

/// YOLO labels are normalised and need the image size; COCO boxes are in pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bbox {
    /// Centre x, centre y, width, height, as fractions of the image size.
    NormalisedCxcywh([f32; 4]),
    /// x1, y1, x2, y2 in pixels.
    Pixels([f32; 4]),
}

impl Bbox {
    pub fn to_pixels(self, width: u32, height: u32) -> [f32; 4] {
        match self {
            Bbox::Pixels(b) => b,
            Bbox::NormalisedCxcywh([cx, cy, w, h]) => {
                let (iw, ih) = (width as f32, height as f32);
                [
                    (cx - w / 2.0) * iw,
                    (cy - h / 2.0) * ih,
                    (cx + w / 2.0) * iw,
                    (cy + h / 2.0) * ih,
                ]
            }
        }
    }
}

/// An image and, when the dataset has labels, its objects.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledImage {
    pub path: PathBuf,
    /// `None` when there is no ground truth for this image (a plain folder).
    pub objects: Option<Vec<GroundTruth>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Class names when the dataset names them.
    pub class_names: Option<Vec<String>>,
    pub images: Vec<LabelledImage>,
}

/// Opens `path`: a `data.yaml` (then `split` picks `train`, `val` or `test`), a COCO `.json`,
/// or a folder / glob of images without labels.
pub fn open(path: &Path, split: &str) -> Result<Dataset> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("yaml" | "yml") => yolo_split(path, split),
        Some("json") => coco(path),
        _ => Ok(Dataset {
            class_names: None,
            images: collect_images(&[path.to_path_buf()])?
                .into_iter()
                .map(|path| LabelledImage {
                    path,
                    objects: None,
                })
                .collect(),
        }),
    }
}

fn bad(path: &Path, reason: String) -> Error {
    Error::BadInput {
        path: path.to_path_buf(),
        reason,
    }
}

/// One split of an ultralytics dataset. Image paths are relative to the yaml's `path` key, or
/// to the yaml's folder; labels live where ultralytics looks: `/images/` → `/labels/`, `.txt`.
/// A label of class −1 (as `oodbox synth` writes for unknown objects) is an unknown object.
pub fn yolo_split(yaml: &Path, split: &str) -> Result<Dataset> {
    let text = std::fs::read_to_string(yaml).map_err(|e| Error::io(yaml, e))?;
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| bad(yaml, format!("invalid YAML: {e}")))?;
    let names = crate::data::read_class_names(yaml)?;
    let base = yaml.parent().unwrap_or(Path::new("."));
    let root = match doc.get("path").and_then(|p| p.as_str()) {
        Some(p) => base.join(p),
        None => base.to_path_buf(),
    };
    let entries: Vec<String> = match doc.get(split) {
        Some(serde_yaml::Value::String(s)) => vec![s.clone()],
        Some(serde_yaml::Value::Sequence(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect(),
        Some(_) => {
            return Err(bad(
                yaml,
                format!("`{split}` is not a path or a list of paths"),
            ))
        }
        None => {
            return Err(Error::MissingSplit {
                path: yaml.to_path_buf(),
                split: split.to_string(),
                available: split_keys(&doc),
            })
        }
    };
    let mut images = Vec::new();
    for entry in entries {
        let source = root.join(&entry);
        let files = if source.extension().is_some_and(|e| e == "txt") {
            let list = std::fs::read_to_string(&source).map_err(|e| Error::io(&source, e))?;
            list.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| root.join(l))
                .collect()
        } else {
            collect_images(&[source])?
        };
        let labelled = files.iter().filter(|p| label_path(p).exists()).count();
        if labelled == 0 && !files.is_empty() {
            return Err(bad(
                yaml,
                format!(
                    "split `{split}`: none of its {} images has a label file (the first would \
                     be {})",
                    files.len(),
                    label_path(&files[0]).display()
                ),
            ));
        }
        for path in files {
            let objects = read_yolo_labels(&label_path(&path), names.len())?;
            images.push(LabelledImage {
                path,
                objects: Some(objects),
            });
        }
    }
    Ok(Dataset {
        class_names: Some(names),
        images,
    })
}

/// The keys of a data.yaml that name image paths: every key whose value is a path or a list
/// of paths, other than `path` (the root) and the class names.
fn split_keys(doc: &serde_yaml::Value) -> Vec<String> {
    let Some(map) = doc.as_mapping() else {
        return Vec::new();
    };
    map.iter()
        .filter(|(_, v)| {
            v.is_string()
                || v.as_sequence()
                    .is_some_and(|s| s.iter().all(|i| i.is_string()))
        })
        .filter_map(|(k, _)| k.as_str())
        .filter(|k| *k != "path" && !k.ends_with("names") && *k != "download")
        .map(String::from)
        .collect()
}

/// The last `images` folder on the path becomes `labels`, as ultralytics does; by component, so
/// that a relative path starting with `images/` is swapped too.
fn label_path(image: &Path) -> PathBuf {
    let parts: Vec<_> = image.components().collect();
    let folders = &parts[..parts.len().saturating_sub(1)];
    let swapped: PathBuf = match folders.iter().rposition(|c| c.as_os_str() == "images") {
        Some(i) => parts
            .iter()
            .enumerate()
            .map(|(j, c)| {
                if j == i {
                    "labels".as_ref()
                } else {
                    c.as_os_str()
                }
            })
            .collect(),
        None => image.to_path_buf(),
    };
    swapped.with_extension("txt")
}

/// A missing label file means an image without objects, as in ultralytics.
fn read_yolo_labels(path: &Path, num_classes: usize) -> Result<Vec<GroundTruth>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, line)| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let parse = |s: &str| {
                s.parse::<f32>()
                    .map_err(|e| bad(path, format!("line {}: `{s}`: {e}", n + 1)))
            };
            if fields.len() != 5 {
                return Err(bad(
                    path,
                    format!("line {}: expected `class cx cy w h`", n + 1),
                ));
            }
            let class: i64 = fields[0]
                .parse()
                .map_err(|e| bad(path, format!("line {}: class `{}`: {e}", n + 1, fields[0])))?;
            let class = match class {
                -1 => None,
                c if c >= 0 && (c as usize) < num_classes => Some(c as usize),
                c => {
                    return Err(bad(
                        path,
                        format!(
                            "line {}: class {c} is not a class of this dataset ({}, or -1 for \
                             an unknown object)",
                            n + 1,
                            crate::data::class_range(num_classes)
                        ),
                    ))
                }
            };
            let b = [
                parse(fields[1])?,
                parse(fields[2])?,
                parse(fields[3])?,
                parse(fields[4])?,
            ];
            // As ultralytics' label check: coordinates are fractions of the image size.
            if let Some(v) = b.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                return Err(bad(
                    path,
                    format!(
                        "line {}: coordinate {v} is not in [0, 1] (labels are `class cx cy w h` \
                         as fractions of the image size)",
                        n + 1
                    ),
                ));
            }
            Ok(GroundTruth {
                class,
                bbox: Bbox::NormalisedCxcywh(b),
            })
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    categories: Vec<CocoCategory>,
}

#[derive(serde::Deserialize)]
struct CocoImage {
    id: i64,
    file_name: String,
}

#[derive(serde::Deserialize)]
struct CocoAnnotation {
    image_id: i64,
    category_id: i64,
    bbox: [f32; 4],
    #[serde(default)]
    unknown: bool,
}

#[derive(serde::Deserialize)]
struct CocoCategory {
    id: i64,
    name: String,
    #[serde(default)]
    supercategory: String,
}

/// Where the images of a COCO json may be, in the order tried: the json's folder; the COCO
/// layout, `annotations/instances_val2017.json` beside `val2017/` (or `images/val2017/`, as
/// ultralytics lays COCO out); and `<json folder>/../images/<json stem>/`, the layout
/// `oodbox synth` writes.
fn coco_image_folders(json: &Path) -> Vec<PathBuf> {
    let dir = json.parent().unwrap_or(Path::new("."));
    let stem = json.file_stem().unwrap_or_default().to_string_lossy();
    let split = stem
        .strip_prefix("instances_")
        .or_else(|| stem.strip_prefix("image_info_"))
        .unwrap_or(&stem);
    let up = dir.join("..");
    let mut folders = vec![
        dir.to_path_buf(),
        up.join(split),
        up.join("images").join(split),
    ];
    if split != stem {
        folders.push(up.join("images").join(stem.as_ref()));
    }
    folders
}

/// A COCO json. Images are found where `coco_image_folders` says. Categories whose
/// supercategory is `near_ood` or `far_ood`, and annotations marked `"unknown": true`, are unknown
/// objects; the other categories are the classes, in id order.
pub fn coco(json: &Path) -> Result<Dataset> {
    let text = std::fs::read_to_string(json).map_err(|e| Error::io(json, e))?;
    let file: CocoFile =
        serde_json::from_str(&text).map_err(|e| bad(json, format!("not a COCO json: {e}")))?;
    let mut known: Vec<&CocoCategory> = file
        .categories
        .iter()
        .filter(|c| !matches!(c.supercategory.as_str(), "near_ood" | "far_ood"))
        .collect();
    known.sort_by_key(|c| c.id);
    let class_of: HashMap<i64, usize> = known.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    let folders = coco_image_folders(json);
    let mut objects = coco_objects(json, &file, &class_of)?;
    // The folder that holds the first image that exists holds them all; none found is an error
    // that says where they were looked for.
    let folder = file
        .images
        .iter()
        .find_map(|im| folders.iter().find(|f| f.join(&im.file_name).is_file()));
    let folder = match (folder, file.images.first()) {
        (Some(folder), _) => folder.clone(),
        (None, None) => folders[0].clone(),
        (None, Some(first)) => {
            let places: Vec<String> = folders.iter().map(|f| f.display().to_string()).collect();
            return Err(bad(
                json,
                format!(
                    "none of its {} images was found (the first is {}); looked in {}",
                    file.images.len(),
                    first.file_name,
                    places.join(", ")
                ),
            ));
        }
    };
    let images = file
        .images
        .iter()
        .map(|im| LabelledImage {
            path: folder.join(&im.file_name),
            objects: Some(objects.remove(&im.id).unwrap_or_default()),
        })
        .collect();
    Ok(Dataset {
        class_names: Some(known.iter().map(|c| c.name.clone()).collect()),
        images,
    })
}

/// The objects of each image id. An annotation that points at no category or no image, or
/// whose box is negative in size, is refused with its index in the file.
fn coco_objects(
    json: &Path,
    file: &CocoFile,
    class_of: &HashMap<i64, usize>,
) -> Result<HashMap<i64, Vec<GroundTruth>>> {
    let categories: std::collections::HashSet<i64> = file.categories.iter().map(|c| c.id).collect();
    let images: std::collections::HashSet<i64> = file.images.iter().map(|i| i.id).collect();
    let mut objects: HashMap<i64, Vec<GroundTruth>> = HashMap::new();
    for (i, a) in file.annotations.iter().enumerate() {
        let problem = if !categories.contains(&a.category_id) {
            Some(format!(
                "category_id {} is not among the categories",
                a.category_id
            ))
        } else if !images.contains(&a.image_id) {
            Some(format!("image_id {} is not among the images", a.image_id))
        } else if a.bbox[2] < 0.0 || a.bbox[3] < 0.0 {
            Some(format!(
                "bbox {:?} has a negative width or height (COCO boxes are [x, y, width, height])",
                a.bbox
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(bad(json, format!("annotation {i}: {problem}")));
        }
        let [x, y, w, h] = a.bbox;
        let class = if a.unknown {
            None
        } else {
            class_of.get(&a.category_id).copied()
        };
        objects.entry(a.image_id).or_default().push(GroundTruth {
            class,
            bbox: Bbox::Pixels([x, y, x + w, y + h]),
        });
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "synth")]
    use crate::synth::world::{generate, Split, SynthConfig};

    #[cfg(feature = "synth")]
    #[test]
    fn reads_the_shapes_world_both_ways() {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            seed: 3,
            width: 96,
            height: 64,
            counts: vec![(Split::Val, 4), (Split::TestMixed, 5)],
            ..SynthConfig::default()
        };
        generate(dir.path(), &config, &|| ()).unwrap();
        let val = open(&dir.path().join("data.yaml"), "val").unwrap();
        assert_eq!(val.images.len(), 4);
        let mixed = open(&dir.path().join("data.yaml"), "test_mixed").unwrap();
        assert_eq!(mixed.images.len(), 5);
        match open(&dir.path().join("data.yaml"), "test_ood_far").unwrap_err() {
            Error::MissingSplit { available, .. } => {
                assert_eq!(available, ["train", "val", "test", "test_mixed"])
            }
            e => panic!("{e}"),
        }
        assert_eq!(val.class_names.as_ref().unwrap().len(), 4);
        let yolo_objects: usize = val
            .images
            .iter()
            .map(|i| i.objects.as_ref().unwrap().len())
            .sum();
        assert!(yolo_objects > 0);

        let mixed = open(&dir.path().join("coco/test_mixed.json"), "val").unwrap();
        assert_eq!(mixed.images.len(), 5);
        assert!(mixed.images.iter().all(|i| i.path.exists()));
        let all: Vec<&GroundTruth> = mixed
            .images
            .iter()
            .flat_map(|i| i.objects.as_ref().unwrap())
            .collect();
        assert!(all.iter().any(|g| g.class.is_none()) && all.iter().any(|g| g.class.is_some()));
        assert_eq!(
            mixed.class_names.unwrap(),
            vec!["circle", "square", "triangle", "star"]
        );

        // The same boxes through YOLO labels (normalised, 6 decimals) and COCO (pixels).
        let yolo = yolo_split(&dir.path().join("data.yaml"), "val").unwrap();
        let coco_val_missing = open(&dir.path().join("coco/val.json"), "val").unwrap();
        let a = yolo.images[0].objects.as_ref().unwrap()[0]
            .bbox
            .to_pixels(96, 64);
        let b = coco_val_missing.images[0].objects.as_ref().unwrap()[0]
            .bbox
            .to_pixels(96, 64);
        assert!(
            a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3),
            "{a:?} {b:?}"
        );
    }

    #[test]
    fn label_paths_swap_the_last_images_folder() {
        for (image, label) in [
            ("images/train/a.png", "labels/train/a.txt"),
            (
                "/d/images/x/images/val/b.jpg",
                "/d/images/x/labels/val/b.txt",
            ),
            ("./images/c.png", "./labels/c.txt"),
            ("data/images.png", "data/images.txt"),
        ] {
            assert_eq!(label_path(Path::new(image)), Path::new(label), "{image}");
        }
    }

    #[cfg(feature = "synth")]
    #[test]
    fn finds_images_in_the_coco_layout() {
        let dir = tempfile::tempdir().unwrap();
        let config = SynthConfig {
            seed: 3,
            width: 64,
            height: 64,
            counts: vec![(Split::Val, 4)],
            ..SynthConfig::default()
        };
        generate(dir.path(), &config, &|| ()).unwrap();

        // The COCO layout: annotations/instances_val2017.json beside val2017/.
        let coco = dir.path().join("coco_layout");
        std::fs::create_dir_all(coco.join("annotations")).unwrap();
        std::fs::rename(dir.path().join("images/val"), coco.join("val2017")).unwrap();
        let json = coco.join("annotations/instances_val2017.json");
        std::fs::copy(dir.path().join("coco/val.json"), &json).unwrap();
        let standard = open(&json, "val").unwrap();
        assert_eq!(standard.images.len(), 4);
        let folder = coco.join("val2017").canonicalize().unwrap();
        assert!(standard.images.iter().all(|i| i
            .path
            .canonicalize()
            .unwrap()
            .starts_with(&folder)));
        std::fs::rename(coco.join("val2017"), coco.join("elsewhere")).unwrap();
        let err = open(&json, "val").unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("none of its 4 images was found") && err.contains("val2017"),
            "{err}"
        );
    }

    #[test]
    fn bad_labels_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.txt");
        std::fs::write(&path, "0 0.5 0.5 0.1 0.1\n7 0.5 0.5 0.1 0.1\n").unwrap();
        let err = read_yolo_labels(&path, 4).unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("x.txt") && err.contains("line 2"), "{err}");
        assert!(err.contains("classes are 0 to 3"), "{err}");
        let err = read_yolo_labels(&path, 0).unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
        let err = err.to_string();
        assert!(err.contains("it has no classes"), "{err}");
        for (line, value) in [
            ("1 0.5 1.5 0.1 0.1", "1.5"),
            ("1 0.5 0.5 -0.1 0.1", "-0.1"),
            ("1 0.5 0.5 0.1 NaN", "NaN"),
            ("1 inf 0.5 0.1 0.1", "inf"),
        ] {
            std::fs::write(&path, format!("0 0.5 0.5 0.1 0.1\n\n{line}\n")).unwrap();
            let err = read_yolo_labels(&path, 4).unwrap_err();
            assert!(matches!(err, Error::BadInput { .. }), "{err}");
            let err = err.to_string();
            assert!(
                err.contains("x.txt")
                    && err.contains("line 3")
                    && err.contains(&format!("coordinate {value} is not in [0, 1]")),
                "{err}"
            );
        }
    }

    #[test]
    fn coco_annotations_pointing_nowhere_are_refused_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instances.json");
        // The image must exist: a COCO file none of whose images is found is refused.
        std::fs::write(dir.path().join("a.png"), b"").unwrap();
        let write = |annotation: &str| {
            let doc = format!(
                r#"{{"images": [{{"id": 1, "file_name": "a.png"}}],
                    "categories": [{{"id": 1, "name": "cat"}}, {{"id": 3, "name": "dog"}}],
                    "annotations": [
                        {{"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}},
                        {annotation}]}}"#
            );
            std::fs::write(&path, doc).unwrap();
        };
        for (annotation, expected) in [
            (
                r#"{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4]}"#,
                "annotation 1: category_id 2 is not among the categories",
            ),
            (
                r#"{"image_id": 7, "category_id": 1, "bbox": [1, 2, 3, 4]}"#,
                "annotation 1: image_id 7 is not among the images",
            ),
            (
                r#"{"image_id": 1, "category_id": 1, "bbox": [1, 2, -3, 4]}"#,
                "annotation 1: bbox [1.0, 2.0, -3.0, 4.0] has a negative width",
            ),
        ] {
            write(annotation);
            let err = coco(&path).unwrap_err();
            assert!(matches!(err, Error::BadInput { .. }), "{err}");
            let err = err.to_string();
            assert!(
                err.contains("instances.json") && err.contains(expected),
                "{err}"
            );
        }
        write(r#"{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}"#);
        let set = coco(&path).unwrap();
        let classes: Vec<_> = set.images[0]
            .objects
            .as_ref()
            .unwrap()
            .iter()
            .map(|o| o.class)
            .collect();
        assert_eq!(classes, [Some(1), Some(0)]);
    }
}
