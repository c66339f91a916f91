use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use oodbox::synth::world::{self, ClassSplit, Kind, ObjectSizes, Split, SynthConfig};
use std::path::PathBuf;
use std::process::ExitCode;

/// Generate the shapes world: a seeded detection dataset with ID, near-OOD and far-OOD objects.
///
/// Writes DIR/data.yaml, DIR/images/<split>/, DIR/labels/<split>/ (ultralytics YOLO format;
/// unknown objects have class -1) and DIR/coco/<split>.json.
#[derive(clap::Args)]
pub struct Args {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Seed: the same seed always gives the same images and labels.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Image width in pixels.
    #[arg(long, default_value_t = 256)]
    width: u32,
    /// Image height in pixels.
    #[arg(long, default_value_t = 256)]
    height: u32,
    /// Training images (ID objects only).
    #[arg(long, default_value_t = 2000)]
    train: usize,
    /// Validation images (ID objects only).
    #[arg(long, default_value_t = 300)]
    val: usize,
    /// Images in each test split: test_id, test_ood_near, test_ood_far and test_mixed.
    #[arg(long, default_value_t = 300)]
    test: usize,
    /// Object sizes MIN,MAX: each object's diameter is drawn log-uniformly between these
    /// fractions of the image's short side (e.g. 0.045,0.7 for 12 to 180 px objects at 256 px,
    /// so that a detector trained on the world uses all three pyramid levels). Without it, the
    /// standard world: diameters uniform in 0.12–0.4, the same images as always.
    #[arg(long, value_name = "MIN,MAX", num_args = 1, value_delimiter = ',')]
    object_size: Option<Vec<f32>>,
    /// The known kinds, the detector's classes in class-id order (default: circle, square,
    /// triangle, star). Every kind: circle, square, triangle, star, pentagon, cross, crescent,
    /// ring, blob, scribble, noise_patch.
    #[arg(long, value_name = "KIND,...", value_delimiter = ',')]
    known: Option<Vec<String>>,
    /// The kinds drawn as near-OOD unknowns (default: pentagon, cross, crescent, ring).
    #[arg(long, value_name = "KIND,...", value_delimiter = ',')]
    near: Option<Vec<String>>,
    /// The kinds drawn as far-OOD unknowns (default: blob, scribble, noise_patch). A kind in
    /// none of the three lists never appears.
    #[arg(long, value_name = "KIND,...", value_delimiter = ',')]
    far: Option<Vec<String>>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.width >= 32 && args.height >= 32,
        "--width and --height must be at least 32"
    );
    oodbox::limits::Limits::from_env()?.check_image(
        "--width, --height".as_ref(),
        args.width,
        args.height,
        0,
    )?;
    let object_sizes = match args.object_size.as_deref() {
        None => ObjectSizes::Standard,
        Some(&[min, max]) => ObjectSizes::LogUniform { min, max },
        Some(_) => anyhow::bail!("--object-size takes two fractions, MIN,MAX"),
    };
    object_sizes
        .validate()
        .map_err(|e| anyhow::anyhow!("--object-size: {e}"))?;
    let classes = class_split(&args)?;
    let config = SynthConfig {
        seed: args.seed,
        width: args.width,
        height: args.height,
        counts: vec![
            (Split::Train, args.train),
            (Split::Val, args.val),
            (Split::TestId, args.test),
            (Split::TestOodNear, args.test),
            (Split::TestOodFar, args.test),
            (Split::TestMixed, args.test),
        ],
        object_sizes,
        classes,
    };
    let total: usize = config.counts.iter().map(|(_, n)| n).sum();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} images {elapsed} (eta {eta})",
    )?);
    world::generate(&args.out, &config, &|| bar.inc(1))
        .with_context(|| format!("writing the shapes world to {}", args.out.display()))?;
    bar.finish_and_clear();
    eprintln!("wrote {total} images to {}", args.out.display());
    Ok(ExitCode::SUCCESS)
}

/// The class split from `--known`, `--near` and `--far`, each defaulting to the standard list.
fn class_split(args: &Args) -> anyhow::Result<ClassSplit> {
    let parse = |names: &Option<Vec<String>>, default: Vec<Kind>, flag: &str| match names {
        None => Ok(default),
        Some(names) => names
            .iter()
            .map(|name| {
                Kind::from_name(name.trim()).ok_or_else(|| {
                    let all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    anyhow::anyhow!(
                        "{flag}: no kind named {name:?}; the kinds: {}",
                        all.join(", ")
                    )
                })
            })
            .collect(),
    };
    let standard = ClassSplit::default();
    let classes = ClassSplit {
        known: parse(&args.known, standard.known, "--known")?,
        near: parse(&args.near, standard.near, "--near")?,
        far: parse(&args.far, standard.far, "--far")?,
    };
    classes.validate().map_err(|e| {
        anyhow::anyhow!("--known, --near, --far: {e} (a list not given is the standard one)")
    })?;
    Ok(classes)
}
