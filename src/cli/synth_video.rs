use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use oodbox::synth::video::{SynthVideo, SynthVideoConfig, Visitors};
use oodbox::synth::world::Kind;
use oodbox::video::ffmpeg::{Codec, FrameSink};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Clone, Copy, clap::ValueEnum)]
enum Unknowns {
    Near,
    Far,
    All,
}

/// Generate a synthetic test video from the shapes world: known shapes drifting for the whole
/// clip, unknown objects entering, staying and leaving, with the ground truth of every frame.
///
/// The video is lossless (FFV1 in .mkv/.avi, PNG for a %d pattern, raw NUT for - on stdout), so
/// frames decode to exactly the pixels drawn.
#[derive(clap::Args)]
pub struct Args {
    /// Output video: .mkv, .avi, a PNG pattern (frames/%05d.png) or - (stdout).
    #[arg(long)]
    out: String,
    /// Ground truth: one JSON line per frame with every visible object's id, kind, group, box.
    #[arg(long)]
    truth: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 256)]
    width: u32,
    #[arg(long, default_value_t = 256)]
    height: u32,
    #[arg(long, default_value_t = 10.0)]
    fps: f64,
    /// Length in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Known objects, present throughout (at most 100: each spans a tenth of the frame).
    #[arg(long, default_value_t = 2)]
    id_objects: usize,
    /// A new known object enters (stays, and leaves) every this many seconds (0: none).
    #[arg(long, default_value_t = 0.0)]
    id_every: f64,
    /// A new unknown object enters every this many seconds (0: none).
    #[arg(long, default_value_t = 3.0)]
    ood_every: f64,
    /// Shortest and longest stay of an entering object, in seconds.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [1.0, 2.5])]
    ood_stay: Vec<f64>,
    /// Which unknown kinds enter.
    #[arg(long, value_enum, default_value = "all")]
    unknowns: Unknowns,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

fn check_args(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.width >= 16 && args.height >= 16,
        "--width and --height must be at least 16"
    );
    oodbox::limits::Limits::from_env()?.check_image(
        "--width, --height".as_ref(),
        args.width,
        args.height,
        0,
    )?;
    anyhow::ensure!(
        [args.fps, args.seconds]
            .iter()
            .all(|v| *v > 0.0 && v.is_finite()),
        "--fps and --seconds must be positive and finite"
    );
    anyhow::ensure!(
        args.id_objects <= 100,
        "--id-objects {} is more than 100; each object spans about a tenth of the frame",
        args.id_objects
    );
    anyhow::ensure!(
        [args.id_every, args.ood_every]
            .iter()
            .all(|v| *v >= 0.0 && v.is_finite()),
        "--id-every and --ood-every must be 0 or more seconds"
    );
    anyhow::ensure!(
        0.0 < args.ood_stay[0]
            && args.ood_stay[0] <= args.ood_stay[1]
            && args.ood_stay[1].is_finite(),
        "--ood-stay needs 0 < MIN <= MAX"
    );
    Ok(())
}

/// More frames than anyone needs from a synthetic clip: a runaway product of --seconds and
/// --fps would otherwise write until the disk is full.
const MAX_FRAMES: f64 = 1e7;

fn frame_count(args: &Args) -> anyhow::Result<u64> {
    let frames = (args.seconds * args.fps).round();
    let show = |v: f64| match v.abs() >= 1e9 {
        true => format!("{v:.3e}"),
        false => v.to_string(),
    };
    anyhow::ensure!(
        (1.0..=MAX_FRAMES).contains(&frames),
        "--seconds {} at --fps {} is {} frames; it must be 1 to {MAX_FRAMES} (over 3 days at 30 fps)",
        show(args.seconds),
        show(args.fps),
        show(frames)
    );
    Ok(frames as u64)
}

fn config(args: &Args, frames: u64) -> SynthVideoConfig {
    SynthVideoConfig {
        seed: args.seed,
        width: args.width,
        height: args.height,
        fps: args.fps,
        frames,
        id_objects: args.id_objects,
        visitors: vec![
            Visitors {
                kinds: match args.unknowns {
                    Unknowns::Near => Kind::NEAR_OOD.to_vec(),
                    Unknowns::Far => Kind::FAR_OOD.to_vec(),
                    Unknowns::All => Kind::NEAR_OOD
                        .iter()
                        .chain(&Kind::FAR_OOD)
                        .copied()
                        .collect(),
                },
                every_s: args.ood_every,
                stay_s: (args.ood_stay[0], args.ood_stay[1]),
            },
            Visitors {
                kinds: Kind::ID.to_vec(),
                every_s: args.id_every,
                stay_s: (args.ood_stay[0], args.ood_stay[1]),
            },
        ],
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let frames = frame_count(&args)?;
    let mut video = SynthVideo::new(config(&args, frames));
    let mut sink = FrameSink::create(
        &args.out,
        (args.width, args.height),
        args.fps,
        Codec::Lossless,
        None,
    )?;
    let mut truth = match &args.truth {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("creating the ground truth file {}", path.display()))?,
        )),
        None => None,
    };
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(frames)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} frames {per_sec} {elapsed} (eta {eta})",
    )?);
    for index in 0..frames {
        let (image, objects) = video.frame(index);
        sink.write(&image)?;
        if let Some(file) = truth.as_mut() {
            let line = json!({
                "frame": index,
                "time_s": index as f64 / args.fps,
                "objects": objects,
            });
            writeln!(file, "{line}").context("writing the ground truth")?;
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    sink.finish()?;
    if let Some(mut file) = truth {
        file.flush().context("writing the ground truth")?;
    }
    if args.out != "-" {
        eprintln!("wrote {frames} frames to {}", args.out);
    }
    Ok(ExitCode::SUCCESS)
}
