use anyhow::Context;
use std::path::PathBuf;
use std::process::ExitCode;

/// Convert an ultralytics checkpoint (best.pt, last.pt) into a safetensors file that loads
/// faster: ultralytics tensor names, the stored precision, and the class names, family, task
/// and training size as metadata. Scorers fitted with either file serve both.
#[derive(clap::Args)]
pub struct Args {
    /// The checkpoint.
    checkpoint: PathBuf,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    super::common::check_output_file(&args.out, "--out")?;
    let converted = oodbox::detect::convert::checkpoint_to_safetensors(&args.checkpoint, &args.out)
        .with_context(|| format!("converting {}", args.checkpoint.display()))?;
    eprintln!(
        "{}: {} ({} classes, {} tensors) -> {}",
        args.checkpoint.display(),
        converted.family,
        converted.classes,
        converted.tensors,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}
