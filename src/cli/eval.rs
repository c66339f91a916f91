use anyhow::Context;
use oodbox::data::boxset::{BoxSet, LABEL_UNKNOWN};
use oodbox::eval::map::{coco_map, without_unknown};
use oodbox::eval::openset::{open_set_metrics, OpenSetMetrics};
use oodbox::eval::{ood_metrics, plots, roc_curve, ImagePreds, PredBox, CONVENTION};
use oodbox::ood::fitted::{FitOptions, FittedScorer};
use oodbox::pipeline::extraction::ExtractedImage;
use oodbox::DetectOptions;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use super::common::{
    check_output_file, create_output_folder, extract_dataset, load_boxes, load_scorer,
    open_dataset, parse_features, DetectFlags,
};
use oodbox::core::sources::FeatureSources;

/// Evaluate OOD scorers: AUROC, FPR95, AUPR-In and AUPR-Out, with the convention stated.
///
/// VOS protocol (--id and --ood): every box from the ID set is ID, every box from the OOD set is
/// OOD. GT-matched protocol (--mixed, labelled boxes or a dataset with ground truth): boxes
/// matched to a known object of their predicted class are ID, boxes matched to an unknown
/// object are OOD; with a dataset, open-set metrics (WI, AOSE, unknown recall) are added.
/// Sets are box sets (.safetensors) or datasets (data.yaml, COCO json, folder; need --model).
#[derive(clap::Args)]
pub struct Args {
    /// A scorer file, or `all`: fit every scorer on --fit and compare them.
    #[arg(long)]
    scorer: String,
    /// With --scorer all: the ID box set to fit on (20% of its images are held out to calibrate).
    #[arg(long)]
    fit: Option<PathBuf>,
    #[arg(long, requires = "ood")]
    id: Option<PathBuf>,
    #[arg(long, requires = "id")]
    ood: Option<PathBuf>,
    #[arg(long, required_unless_present = "id")]
    mixed: Option<PathBuf>,
    /// Model to run on datasets.
    #[arg(long)]
    model: Option<PathBuf>,
    /// The data.yaml split to read for datasets.
    #[arg(long, default_value = "test")]
    split: String,
    /// Write the metrics here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write ROC curves, score histograms and a markdown table into this folder.
    #[arg(long)]
    report: Option<PathBuf>,
    /// With --scorer all: the feature sources to fit and score on (see `fit --features`);
    /// box sets must have recorded them. A scorer file reads its own.
    #[arg(long, value_parser = parse_features, default_value = "cls")]
    features: FeatureSources,
    #[command(flatten)]
    flags: DetectFlags,
}

struct Set {
    boxes: BoxSet,
    images: Option<Vec<ExtractedImage>>,
}

/// The boxes of `flag`'s set; a set without boxes is refused, as no metric can be read from it.
fn load_set(path: &Path, args: &Args, options: &DetectOptions, flag: &str) -> anyhow::Result<Set> {
    let set = read_set(path, args, options)?;
    anyhow::ensure!(
        !set.boxes.is_empty(),
        "{flag} {}: no boxes{}",
        path.display(),
        if set.images.is_some() {
            " were detected in it; check the model, --conf and --split"
        } else {
            ""
        }
    );
    Ok(set)
}

fn read_set(path: &Path, args: &Args, options: &DetectOptions) -> anyhow::Result<Set> {
    if path.extension().is_some_and(|e| e == "safetensors") {
        let boxes = load_boxes(path)?;
        let boxes = match args.scorer.as_str() {
            "all" => super::fit::select(boxes, &args.features, path)?,
            _ => boxes,
        };
        return Ok(Set {
            boxes,
            images: None,
        });
    }
    let model = args
        .model
        .as_ref()
        .with_context(|| format!("{} is a dataset: give --model to run on it", path.display()))?;
    let detector = args.flags.load(model)?;
    let set = open_dataset(path, &args.split)?;
    let source = format!(
        "oodbox eval --model {} on {}",
        model.display(),
        path.display()
    );
    let extraction = extract_dataset(&detector, &set, options, args.flags.quiet, &source)?;
    let boxes = match args.scorer.as_str() {
        "all" => extraction.boxes.select(&args.features)?,
        _ => extraction.boxes,
    };
    Ok(Set {
        boxes,
        images: Some(extraction.images),
    })
}

fn fit_all(fit: &BoxSet) -> anyhow::Result<Vec<(FittedScorer, f64)>> {
    let fit = fit.clone().known_objects();
    let (train, calibration) = fit.split_holdout(0.2, 0);
    let mut fitted = Vec::new();
    let mut candidates: Vec<(&str, Option<&str>)> =
        oodbox::ood::kinds().iter().map(|k| (*k, None)).collect();
    candidates.extend(
        oodbox::ood::shapings()
            .into_iter()
            .map(|s| ("energy", Some(s))),
    );
    for (kind, shaping) in candidates {
        let start = Instant::now();
        match FittedScorer::fit(
            kind,
            shaping,
            &[],
            &train,
            &calibration,
            &FitOptions::default(),
        ) {
            Ok(f) => fitted.push((f, start.elapsed().as_secs_f64())),
            Err(e) => eprintln!(
                "warning: {kind}{}: {e}",
                shaping.map(|s| format!("+{s}")).unwrap_or_default()
            ),
        }
    }
    Ok(fitted)
}

/// Scores and the time per box in microseconds.
fn timed_scores(scorer: &FittedScorer, boxes: &BoxSet) -> anyhow::Result<(Vec<f64>, f64)> {
    let start = Instant::now();
    let scores = scorer.raw_scores(boxes)?;
    Ok((
        scores,
        start.elapsed().as_secs_f64() * 1e6 / boxes.len().max(1) as f64,
    ))
}

/// The boxes matched to a known object of their predicted class (ID) and to an unknown object
/// (OOD); either group empty is refused, as no metric can be read from it.
fn mixed_groups(boxes: &BoxSet, path: &Path) -> anyhow::Result<(Vec<usize>, Vec<usize>)> {
    let labels = boxes.label.as_ref().context(
        "--mixed needs labelled boxes: a dataset with ground truth, or a box set with `label`",
    )?;
    let id: Vec<usize> = (0..boxes.len())
        .filter(|&i| labels[i] == boxes.class_id[i] as i64)
        .collect();
    let ood: Vec<usize> = (0..boxes.len())
        .filter(|&i| labels[i] == LABEL_UNKNOWN)
        .collect();
    let n = boxes.len();
    anyhow::ensure!(
        !ood.is_empty(),
        "--mixed {}: none of its {n} boxes matched an unknown object (label -1), so there are \
         no OOD boxes to score; give a set with unknown objects (the shapes world's \
         test_mixed), or --id and --ood",
        path.display()
    );
    anyhow::ensure!(
        !id.is_empty(),
        "--mixed {}: none of its {n} boxes matched a known object of its predicted class, so \
         there are no ID boxes to score",
        path.display()
    );
    Ok((id, ood))
}

/// The scorers to evaluate: the one given, or (`all`) every scorer fitted on --fit, with the
/// seconds each fit took.
fn load_scorers(args: &Args) -> anyhow::Result<Vec<(FittedScorer, Option<f64>)>> {
    if args.scorer == "all" {
        let path = args
            .fit
            .as_ref()
            .context("--scorer all needs --fit ID.safetensors to fit every scorer on")?;
        let fit = super::fit::select(
            super::fit::finite(load_boxes(path)?, path)?,
            &args.features,
            path,
        )?;
        Ok(fit_all(&fit)?
            .into_iter()
            .map(|(f, s)| (f, Some(s)))
            .collect())
    } else {
        let path = Path::new(&args.scorer);
        Ok(vec![(load_scorer(path)?, None)])
    }
}

/// What the evaluation collects over the scorers: a JSON row each, ROC curves, and the
/// open-set metrics.
#[derive(Default)]
struct Results {
    rows: Vec<Value>,
    curves: Vec<(String, Vec<(f64, f64)>)>,
    open_sets: Vec<(String, OpenSetMetrics)>,
}

/// The VOS protocol: every --id box is ID, every --ood box OOD.
fn eval_vos(
    scorer: &FittedScorer,
    (id, ood): (&Set, &Set),
    report: Option<&Path>,
    row: &mut Value,
    results: &mut Results,
) -> anyhow::Result<()> {
    let name = scorer.name();
    let (id_scores, us_id) = timed_scores(scorer, &id.boxes)?;
    let (ood_scores, us_ood) = timed_scores(scorer, &ood.boxes)?;
    let m = ood_metrics(&id_scores, &ood_scores).with_context(|| format!("metrics of {name}"))?;
    row["vos"] = serde_json::to_value(&m)?;
    row["score_us_per_box"] = json!((us_id + us_ood) / 2.0);
    results
        .curves
        .push((format!("{name} (VOS)"), roc_curve(&id_scores, &ood_scores)));
    if let Some(dir) = report {
        plots::histogram_png(
            &dir.join(format!("hist_{name}.png")),
            &id_scores,
            &ood_scores,
            &format!("{name}: ID vs OOD boxes"),
        )?;
    }
    Ok(())
}

/// The GT-matched protocol on --mixed: boxes on known objects of their class are ID, boxes
/// on unknown objects OOD; and with a dataset, the open-set metrics.
fn eval_mixed(
    scorer: &FittedScorer,
    set: &Set,
    (id_idx, ood_idx): &(Vec<usize>, Vec<usize>),
    report: Option<&Path>,
    row: &mut Value,
    results: &mut Results,
) -> anyhow::Result<()> {
    let name = scorer.name();
    let (scores, _) = timed_scores(scorer, &set.boxes)?;
    let id_scores: Vec<f64> = id_idx.iter().map(|&i| scores[i]).collect();
    let ood_scores: Vec<f64> = ood_idx.iter().map(|&i| scores[i]).collect();
    let m = ood_metrics(&id_scores, &ood_scores)
        .with_context(|| format!("GT-matched metrics of {name}"))?;
    row["gt_matched"] = serde_json::to_value(&m)?;
    results.curves.push((
        format!("{name} (GT-matched)"),
        roc_curve(&id_scores, &ood_scores),
    ));
    if let Some(dir) = report {
        plots::histogram_png(
            &dir.join(format!("hist_{name}_gt_matched.png")),
            &id_scores,
            &ood_scores,
            &format!("{name}: boxes on known vs unknown objects"),
        )?;
    }
    if let Some(images) = &set.images {
        eval_open_set(scorer, set, images, row, results)?;
    }
    Ok(())
}

/// Open-set metrics of a dataset's boxes, and the ID mAP with and without the boxes flagged
/// OOD.
fn eval_open_set(
    scorer: &FittedScorer,
    set: &Set,
    images: &[ExtractedImage],
    row: &mut Value,
    results: &mut Results,
) -> anyhow::Result<()> {
    let verdicts = scorer.score(&set.boxes, None)?;
    let mut preds: Vec<ImagePreds> = vec![Vec::new(); images.len()];
    let image_index = set
        .boxes
        .image_index
        .as_ref()
        .context("extracted boxes carry their image")?;
    for i in 0..set.boxes.len() {
        preds[image_index[i]].push(PredBox {
            bbox: set
                .boxes
                .bbox
                .as_ref()
                .context("extracted boxes carry their bbox")?[i],
            class_id: set.boxes.class_id[i],
            confidence: set.boxes.confidence.as_ref().map_or(1.0, |c| c[i] as f64),
            is_unknown: verdicts[i].is_ood,
        });
    }
    let gt: Vec<_> = images
        .iter()
        .map(|im| im.ground_truth.clone().unwrap_or_default())
        .collect();
    let n = set.boxes.num_classes;
    let open_set = open_set_metrics(&gt, &preds, n)?;
    row["open_set"] = serde_json::to_value(&open_set)?;
    results
        .open_sets
        .push((scorer.name().to_string(), open_set));
    // ID detection quality with and without the boxes flagged OOD (at conf > --conf,
    // so lower than a conf 0.001 mAP): filtering should remove unknowns, not knowns.
    row["id_map"] = json!({
        "all_boxes": coco_map(&gt, &preds, n)?,
        "ood_flagged_removed": coco_map(&gt, &without_unknown(&preds), n)?,
    });
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if let Some(path) = &args.json {
        check_output_file(path, "--json")?;
    }
    if let Some(dir) = &args.report {
        create_output_folder(dir, "--report")?;
    }
    let scorers = load_scorers(&args)?;
    // Datasets are detected as the scorer's fit boxes were, unless --imgsz says otherwise.
    let roi = match scorers.first() {
        Some((scorer, None)) => scorer.feature_sources().roi(),
        _ => args.features.roi(),
    };
    let recorded = scorers.first().and_then(|(s, _)| s.detect_options());
    let options = args.flags.options_or(recorded.and_then(|r| r.imgsz), roi)?;
    let vos = match (&args.id, &args.ood) {
        (Some(id), Some(ood)) => Some((
            load_set(id, &args, &options, "--id")?,
            load_set(ood, &args, &options, "--ood")?,
        )),
        _ => None,
    };
    let mixed = match &args.mixed {
        Some(path) => {
            let set = load_set(path, &args, &options, "--mixed")?;
            let groups = mixed_groups(&set.boxes, path)?;
            Some((set, groups))
        }
        None => None,
    };
    let mut results = Results::default();
    for (scorer, fit_seconds) in &scorers {
        let mut row = json!({"scorer": scorer.name()});
        if let Some(s) = fit_seconds {
            row["fit_s"] = json!(s);
        }
        let report = args.report.as_deref();
        if let Some((id, ood)) = &vos {
            eval_vos(scorer, (id, ood), report, &mut row, &mut results)?;
        }
        if let Some((set, groups)) = &mixed {
            eval_mixed(scorer, set, groups, report, &mut row, &mut results)?;
        }
        results.rows.push(row);
    }
    if let Some(dir) = &args.report {
        write_report(dir, &results)?;
    }
    print!("{}", markdown(&results.rows));
    if let Some(path) = &args.json {
        write_json(path, &results.rows)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The --report folder: ROC curves, open-set plot, and the metrics table.
fn write_report(dir: &Path, results: &Results) -> anyhow::Result<()> {
    let named: Vec<(&str, Vec<(f64, f64)>)> = results
        .curves
        .iter()
        .map(|(n, c)| (n.as_str(), c.clone()))
        .collect();
    if !named.is_empty() {
        plots::roc_png(&dir.join("roc.png"), &named, "ROC, ID positive")?;
    }
    if !results.open_sets.is_empty() {
        plots::open_set_png(&dir.join("open_set.png"), &results.open_sets)?;
    }
    oodbox::core::write_atomically(&dir.join("metrics.md"), markdown(&results.rows).as_bytes())?;
    Ok(())
}

/// The --json file: one scorer's row with its headline metrics at the top level, or every
/// scorer's row.
fn write_json(path: &Path, rows: &[Value]) -> anyhow::Result<()> {
    let doc = if rows.len() == 1 {
        let mut one = rows[0].clone();
        // The headline keys at the top level, from the VOS protocol when it ran.
        if let Some(m) = one.get("vos").or_else(|| one.get("gt_matched")).cloned() {
            for (k, v) in m.as_object().unwrap() {
                one[k] = v.clone();
            }
        }
        one["convention"] = json!(CONVENTION);
        one
    } else {
        json!({"convention": CONVENTION, "scorers": rows})
    };
    oodbox::core::write_atomically(
        path,
        (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The open-set metrics of the rows that have them, as a second markdown table.
fn open_set_markdown(rows: &[Value]) -> String {
    let with: Vec<&Value> = rows
        .iter()
        .filter(|r| r.get("open_set").is_some())
        .collect();
    if with.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\n| scorer | unknown recall | unknown precision | AP unknown | mAP known | WI | AOSE |\n|---|---|---|---|---|---|---|\n",
    );
    for row in with {
        let m = &row["open_set"];
        let f = |k: &str| m[k].as_f64().map_or("-".into(), |v| format!("{v:.4}"));
        out += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row["scorer"].as_str().unwrap_or(""),
            f("unknown_recall"),
            f("unknown_precision"),
            f("ap_unknown"),
            f("map_known"),
            f("wi"),
            m["aose"],
        );
    }
    out
}

fn markdown(rows: &[Value]) -> String {
    let mut out = String::from(
        "| scorer | protocol | AUROC | FPR95 | AUPR-In | AUPR-Out | n ID | n OOD | fit s | score µs/box |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        for protocol in ["vos", "gt_matched"] {
            let Some(m) = row.get(protocol) else { continue };
            let f = |k: &str| m[k].as_f64().map_or("-".into(), |v| format!("{v:.4}"));
            out += &format!(
                "| {} | {protocol} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                row["scorer"].as_str().unwrap_or(""),
                f("auroc"),
                f("fpr95"),
                f("aupr_in"),
                f("aupr_out"),
                m["n_id"],
                m["n_ood"],
                row["fit_s"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.3}")),
                row["score_us_per_box"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.2}")),
            );
        }
    }
    out + &open_set_markdown(rows)
}
