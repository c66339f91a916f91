use std::process::ExitCode;

/// List the scorer kinds, shapings and parameters with their defaults (markdown, as in
/// docs/scorers.md).
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    print!("{}", oodbox::ood::markdown());
    Ok(ExitCode::SUCCESS)
}
