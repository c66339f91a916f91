//! Detect, score and annotate one image with a model and a scorer fitted for it.
//!
//! cargo run --release --example annotate -- models/shapes.safetensors \
//!     models/shapes-scorer.safetensors assets/images/test_mixed_00001.png annotated.png

use oodbox::render::{annotate, verdict_text, Annotation};
use oodbox::{load_rgb, Device, OodDetector};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, scorer, input, output] = args.as_slice() else {
        return Err("usage: annotate MODEL SCORER INPUT OUTPUT".into());
    };
    let (boxes, flagged) = annotate_file(model, scorer, input, output)?;
    println!("{boxes} boxes, {flagged} flagged OOD; wrote {output}");
    Ok(())
}

/// Writes `input` annotated to `output`; returns the number of boxes and of those flagged OOD.
pub fn annotate_file(
    model: &str,
    scorer: &str,
    input: &str,
    output: &str,
) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    // Detects as the scorer's calibration boxes were detected (recorded in the scorer file).
    let detector = OodDetector::load(model.as_ref(), scorer.as_ref(), &Device::Cpu)?;
    let image = load_rgb(input.as_ref())?;
    let detections = detector.detect(&image)?;
    let annotations: Vec<Annotation> = detections
        .iter()
        .map(|d| Annotation {
            bbox: d.record.bbox,
            label: format!(
                "{} {:.2} · {}",
                d.class_name,
                d.record.confidence,
                verdict_text(d.ood.p_value, d.ood.is_ood)
            ),
            class_id: d.record.class_id,
            ood_confidence: Some(d.ood.confidence),
            flagged: d.ood.is_ood,
        })
        .collect();
    annotate(&image, &annotations, true).save(output)?;
    let flagged = detections.iter().filter(|d| d.ood.is_ood).count();
    Ok((detections.len(), flagged))
}
