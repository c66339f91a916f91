use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod common;
mod detect;
mod extract;
mod synth;

/// Open-set recognition for object detectors: per-box logits, features and OOD confidence.
#[derive(Parser)]
#[command(name = "oodbox", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Bench(bench::Args),
    Detect(detect::Args),
    Extract(extract::Args),
    Synth(synth::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Extract(args) => extract::run(args),
        Command::Synth(args) => synth::run(args),
    }
}
