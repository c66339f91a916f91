//! Filter a video with a model and a scorer fitted for it: detect and track every object, call
//! a track unknown once its OOD evidence adds up, write the annotated video (unknown tracks
//! marked), and print one line per unknown track as it ends. `oodbox video` is the same loop
//! with more options.
//!
//! cargo run --release -- synth-video --out shapes.mkv --seconds 10 --ood-every 2.5
//! cargo run --release --example filter_stream -- models/shapes.safetensors \
//!     models/shapes-scorer.safetensors shapes.mkv filtered.mp4

use oodbox::error::Result;
use oodbox::pipeline::OodDetector;
use oodbox::video::ffmpeg::{Codec, FrameSink, FrameSource, SourceOptions};
use oodbox::video::stream::{filter_stream, Output, StreamOptions, StreamReport, UnknownEvent};

/// Filters the video `input` into `output`, handing each unknown track's event to `on_event`
/// as the track ends.
pub fn filter_file(
    model: &str,
    scorer: &str,
    input: &str,
    output: &str,
    mut on_event: impl FnMut(&UnknownEvent),
) -> Result<StreamReport> {
    // Detects as the scorer's calibration boxes were detected (recorded in the scorer file).
    let detector = OodDetector::load(model.as_ref(), scorer.as_ref(), &candle_core::Device::Cpu)?;
    let source = FrameSource::open(input, &SourceOptions::default())?;
    let fps = source.fps();
    filter_stream(
        &detector,
        source,
        // Opened at the first frame to write, once its size is known; naming the input keeps
        // it from being overwritten.
        Some(Box::new(|size| {
            FrameSink::create(output, size, fps, Codec::Default, Some(input))
        })),
        // Unknown boxes flagged, every frame kept, at most 5% of known tracks called unknown.
        &StreamOptions::default(),
        |out| {
            if let Output::Event(event) = out {
                on_event(event);
            }
            Ok(())
        },
        |_progress| {},
    )
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, scorer, input, output] = args.as_slice() else {
        return Err("usage: filter_stream MODEL SCORER INPUT OUTPUT".into());
    };
    let report = filter_file(model, scorer, input, output, |e| {
        println!(
            "unknown object, track {}: {:.1}–{:.1} s (frames {}–{}), detected as {}, \
             OOD confidence {:.3}",
            e.track_id,
            e.first_time_s,
            e.last_time_s,
            e.first_frame,
            e.last_frame,
            e.class_name,
            e.ood_confidence
        );
    })?;
    // A stream that breaks off is not an error of the filter: the frames before it are written.
    if let Some(e) = &report.input_error {
        eprintln!("the input stopped early: {e}");
    }
    println!(
        "{} frames at {:.1} fps; {} tracks, {} unknown; wrote {output}",
        report.progress.decoded, report.fps, report.tracks, report.events
    );
    Ok(())
}
