use anyhow::Context;

use super::common::{check_output_file, load_boxes, load_scorer};
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
    #[arg(long)]
    alpha: Option<f64>,
    /// Write the scores here.
    #[arg(long)]
    json: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_output_file(&args.json, "--json")?;
    let scorer = load_scorer(&args.scorer)?;
    let boxes = load_boxes(&args.boxes)?;
    let results = scorer.score(&boxes, args.alpha).with_context(|| {
        format!(
            "scoring {} with {}",
            args.boxes.display(),
            args.scorer.display()
        )
    })?;
    let flagged = results.iter().filter(|r| r.is_ood).count();
    let mut doc = json!({
        "scorer": scorer.name(),
        "alpha": args.alpha.unwrap_or(scorer.alpha()),
        "boxes": results,
    });
    if let Some(tail) = super::common::tail_json(&scorer) {
        doc["p_value_tail"] = tail;
    }
    oodbox::core::write_atomically(
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
