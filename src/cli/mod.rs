use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;

mod bench;
mod common;
mod convert;
mod demo;
mod detect;
mod eval;
mod extract;
mod fit;
mod recalibrate;
mod score;
mod scorers;
mod synth;
mod synth_video;
mod video;

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
    Convert(convert::Args),
    Demo(demo::Args),
    Detect(detect::Args),
    Extract(extract::Args),
    Fit(fit::Args),
    Recalibrate(recalibrate::Args),
    Score(score::Args),
    Scorers(scorers::Args),
    Eval(eval::Args),
    Synth(synth::Args),
    SynthVideo(synth_video::Args),
    Video(video::Args),
}

/// Parses the command line. Every option takes a negative number as its value, so that
/// `--conf -1` or `--imgsz -5` reaches the option's range check instead of being read as an
/// unknown flag.
pub fn parse() -> Result<Cli, clap::Error> {
    let command =
        Cli::command().mut_subcommands(|sub| sub.mut_args(|arg| arg.allow_negative_numbers(true)));
    Cli::from_arg_matches(&command.try_get_matches()?)
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Detect(args) => detect::run(args),
        Command::Extract(args) => extract::run(args),
        Command::Fit(args) => fit::run(args),
        Command::Recalibrate(args) => recalibrate::run(args),
        Command::Score(args) => score::run(args),
        Command::Scorers(args) => scorers::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Synth(args) => synth::run(args),
        Command::SynthVideo(args) => synth_video::run(args),
        Command::Video(args) => video::run(args),
    }
}
