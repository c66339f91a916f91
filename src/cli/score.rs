use anyhow::Context;
use oodbox::data::boxset::BoxSet;
use oodbox::ood::fitted::FittedScorer;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;

/// Score a box set with a fitted scorer: raw score, p-value, OOD confidence and verdict per box.
#[derive(clap::Args)]
pub struct Args {
    /// The scorer file from `oodbox fit`.
    #[arg(long)]
    scorer: PathBuf,
    /// The box set to score.
    #[arg(long)]
    boxes: PathBuf,
    /// Significance level (default: the one stored at fit time, usually 0.05).
    #[arg(long, allow_negative_numbers = true)]
    alpha: Option<f64>,
    /// Write the scores here.
    #[arg(long)]
    json: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let scorer = FittedScorer::load(&args.scorer)
        .with_context(|| format!("loading the scorer {}", args.scorer.display()))?;
    let boxes = BoxSet::load(&args.boxes)
        .with_context(|| format!("reading the box set {}", args.boxes.display()))?;
    let results = scorer.score(&boxes, args.alpha).with_context(|| {
        format!(
            "scoring {} with {}",
            args.boxes.display(),
            args.scorer.display()
        )
    })?;
    let flagged = results.iter().filter(|r| r.is_ood).count();
    let doc = json!({
        "scorer": scorer.name(),
        "alpha": args.alpha.unwrap_or(scorer.alpha()),
        "boxes": results,
    });
    oodbox::data::write_atomically(
        &args.json,
        (serde_json::to_string_pretty(&doc)? + "\n").as_bytes(),
    )
    .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!(
        "{} boxes, {flagged} flagged OOD; wrote {}",
        results.len(),
        args.json.display()
    );
    Ok(ExitCode::SUCCESS)
}
