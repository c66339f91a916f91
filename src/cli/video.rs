use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use oodbox::ood::calibration::minimum_calibration_size;
use oodbox::ood::tail::{TailOptions, TailStatus};
use oodbox::video::calibration::{TrackCalibration, TrackSetting};
use oodbox::video::evidence::TrackRule;
use oodbox::video::ffmpeg::{
    check_output_folder, is_single_file, Codec, FrameSink, FrameSource, SourceOptions,
};
use oodbox::video::stream::{
    filter_stream, Keep, OodAction, OpenSink, Output, Progress, StreamOptions, StreamReport,
};
use oodbox::video::tracker::TrackerConfig;
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::{check_output_file, create_output_folder, with_kind_hint, DetectorArgs};
use super::detect::pair_with_scorer;

#[derive(Clone, Copy, clap::ValueEnum)]
enum ActionArg {
    Flag,
    Drop,
    Relabel,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KeepArg {
    All,
    Ood,
}

/// Filter a video stream: detect and track every object, call a track unknown once its OOD
/// evidence adds up, and write the annotated (or filtered) video and one event per unknown
/// track.
///
/// Decoding and encoding run through the ffmpeg command-line tool. The output keeps the input's
/// frame rate and size. A track is called unknown when, in a block of boxes as long as
/// --min-duration, at least half have small p-values (the level tightens block after block); at
/// most --track-alpha of the tracks of known objects are called unknown, however correlated
/// their frames are, as long as their per-box p-values are valid (docs/video.md).
/// With --track-calibration, fitted by --fit-tracks on footage of known objects, the rule is
/// calibrated on that footage's tracks instead: more unknowns are caught, and the rate holds
/// for footage like it.
#[derive(clap::Args)]
#[command(group = clap::ArgGroup::new("writes")
    .args(["output", "events", "alerts", "detections", "crops", "fit_tracks"])
    .multiple(true)
    .required(true))]
#[command(group = clap::ArgGroup::new("track_calibrations")
    .args(["track_calibration", "fit_tracks"])
    .multiple(true))]
pub struct Args {
    #[command(flatten)]
    detector: DetectorArgs,
    /// A scorer file from `oodbox fit`, fitted for this model.
    #[arg(long)]
    scorer: PathBuf,
    /// A video file, an image-sequence pattern (frames/%05d.png), a URL ffmpeg reads
    /// (rtsp://, http://), or - for a stream (a video or concatenated images) on stdin.
    #[arg(long)]
    input: String,
    /// The output video (.mp4, .mkv, ...), an image-sequence pattern, or - (NUT on stdout).
    /// Without it no video is written, and frames are not drawn: a camera watched for events
    /// only.
    #[arg(long)]
    output: Option<String>,
    /// Write one JSON line per unknown track here, as each track ends (- for standard output).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Write one JSON line per unknown track here as soon as it is called unknown, while it
    /// may still be in view: live alerts (- for standard output).
    #[arg(long)]
    alerts: Option<PathBuf>,
    /// Write every frame's boxes (with track id, class, confidence and OOD verdict) here, one
    /// JSON line per frame (- for standard output).
    #[arg(long)]
    detections: Option<PathBuf>,
    /// What to do with the boxes of unknown tracks: keep and mark, remove, or rename "unknown".
    #[arg(long, value_enum, default_value = "flag", requires = "output")]
    ood_action: ActionArg,
    /// Which frames to write: all, or only short clips around the frames that show an unknown
    /// track (see --clip-pad).
    #[arg(long, value_enum, default_value = "all", requires = "output")]
    keep: KeepArg,
    /// With --keep ood, also write the frames up to this many seconds before and after each
    /// frame that shows an unknown track (0: only those frames). The frames before are held in
    /// memory, at most this many seconds of them.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "SECONDS",
        requires = "output"
    )]
    clip_pad: f64,
    /// Save a crop of each unknown track (its most unusual box) into this folder.
    #[arg(long)]
    crops: Option<PathBuf>,
    /// Read at the input's frame rate and drop frames when detection falls behind.
    #[arg(long)]
    realtime: bool,
    /// The most that tracks of known objects may be called unknown (their false-alarm rate).
    #[arg(long, default_value_t = 0.05)]
    track_alpha: f64,
    /// Seconds of evidence per decision: a shorter unknown may go unreported.
    #[arg(long, default_value_t = 1.0)]
    min_duration: f64,
    /// Calibrate the track rule with this file, from --fit-tracks on footage of known objects
    /// from the same camera, model, scorer, detection flags and frame rate. Given more than
    /// once (one file per clip), the files calibrate as one.
    #[arg(long, value_name = "FILE")]
    track_calibration: Vec<PathBuf>,
    /// The input shows known objects only: write a track calibration from its tracks to FILE
    /// (for --track-calibration).
    #[arg(long, value_name = "FILE", conflicts_with = "track_calibration")]
    fit_tracks: Option<PathBuf>,
    /// Extrapolate track p-values beyond the largest statistic of the track calibration with
    /// a generalized Pareto tail fitted to its statistics (as `oodbox fit --tail` does for box
    /// scores, with its defaults), so that a track can get a p-value below 1/(N+1) for N
    /// calibration tracks. With --fit-tracks the tail is recorded in the file; with
    /// --track-calibration it is (re)fitted on the files' tracks. A calibration with too few
    /// tracks above the tail's threshold keeps plain conformal p-values. Events and alerts
    /// whose p-value rests on a tail say so (`p_value_rests_on_tail`).
    #[arg(long, requires = "track_calibrations")]
    track_tail: bool,
    /// Frames a track survives without a box (unless its object walked out of the frame: then
    /// it ends at once).
    #[arg(long, default_value_t = 5)]
    max_missed: u64,
    /// Input frame rate for image sequences and image pipes (default: ffmpeg's reading, 25
    /// when the input states none).
    #[arg(long)]
    fps: Option<f64>,
    /// Start on the first frame of a live input (a pipe, a camera URL) instead of after
    /// ffmpeg's probe of up to 5 s of stream; an input whose format needs that look may then
    /// fail to open.
    #[arg(long)]
    low_latency: bool,
    /// An ffmpeg input option, NAME=VALUE (repeatable), passed as -NAME VALUE before the input:
    /// f=v4l2 for a webcam, rtsp_transport=tcp for a camera behind a firewall,
    /// f=rawvideo with pixel_format and video_size for raw frames on stdin, ...
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_ffmpeg_option)]
    input_option: Vec<(String, String)>,
    /// Stop with an error when the input sends nothing for this many seconds while a frame is
    /// awaited (a frozen camera or connection); 0: wait forever. Default: 10 for a URL,
    /// 0 otherwise.
    #[arg(long, value_name = "SECONDS")]
    stall_timeout: Option<f64>,
    /// Frames each queue between the decode, detect and encode threads holds.
    #[arg(long, default_value_t = 8)]
    queue: usize,
}

/// NAME=VALUE, for --input-option.
fn parse_ffmpeg_option(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !name.starts_with('-') => {
            Ok((name.to_string(), value.to_string()))
        }
        _ => Err(format!(
            "expected NAME=VALUE with an ffmpeg option name without its dash \
             (rtsp_transport=tcp), got {text:?}"
        )),
    }
}

/// How long a URL input may send nothing before it is given up, unless --stall-timeout says.
const URL_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The stall timeout: as given (0: none), else [`URL_STALL_TIMEOUT`] for a URL.
fn stall_timeout(seconds: Option<f64>, input: &str) -> Option<Duration> {
    match seconds {
        // Beyond what a Duration holds: no limit.
        Some(s) if s > 0.0 => Duration::try_from_secs_f64(s).ok(),
        Some(_) => None,
        None if input.contains("://") => Some(URL_STALL_TIMEOUT),
        None => None,
    }
}

fn progress_line(p: &Progress) -> String {
    let [decode, detect, track, encode] = p.stage_ms();
    format!(
        "frame {} · {:.1} fps · ms/frame: decode {decode:.1}, detect {detect:.1}, track {track:.2}, \
         encode {encode:.1} · dropped {} · unknown tracks {}",
        p.detected,
        p.fps(),
        p.dropped,
        p.unknown_tracks
    )
}

/// The flags that detect as a track calibration's footage was detected.
fn setting_hint(fitted: &TrackSetting) -> String {
    format!(
        "`--imgsz {} --conf {}` detects as it did; `oodbox video --fit-tracks` on footage of \
         known objects fits one for this setting",
        fitted.imgsz, fitted.conf
    )
}

type Log = std::io::BufWriter<Box<dyn Write>>;

/// A JSON-lines log: a file, or standard output for `-`.
fn create_log(path: Option<&std::path::Path>, what: &str) -> anyhow::Result<Option<Log>> {
    path.map(|p| {
        let writer: Box<dyn Write> = if p.as_os_str() == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::File::create(p)
                    .with_context(|| format!("creating the {what} file {}", p.display()))?,
            )
        };
        Ok(std::io::BufWriter::new(writer))
    })
    .transpose()
}

/// Refuses flag values out of range, and outputs that cannot be written, before the model
/// loads and the input opens.
fn check_args(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.track_alpha > 0.0 && args.track_alpha < 1.0,
        "--track-alpha must lie in (0, 1)"
    );
    anyhow::ensure!(
        args.min_duration > 0.0 && args.min_duration.is_finite(),
        "--min-duration must be a positive number of seconds"
    );
    anyhow::ensure!(
        args.clip_pad >= 0.0 && args.clip_pad.is_finite(),
        "--clip-pad must be 0 or more seconds"
    );
    if let Some(s) = args.stall_timeout {
        anyhow::ensure!(
            s >= 0.0 && s.is_finite(),
            "--stall-timeout must be 0 or more seconds"
        );
    }
    if let Some(fps) = args.fps {
        anyhow::ensure!(fps > 0.0 && fps.is_finite(), "--fps must be positive");
    }
    let logs = [
        ("--events", &args.events),
        ("--alerts", &args.alerts),
        ("--detections", &args.detections),
        ("--fit-tracks", &args.fit_tracks),
    ];
    for (flag, path) in logs {
        if let Some(path) = path {
            check_output_file(path, flag)?;
        }
    }
    if let Some(output) = &args.output {
        // Before the input is opened: a stream may take a while to send its first frame.
        check_output_folder(output)?;
    }
    if let Some(dir) = &args.crops {
        create_output_folder(dir, "--crops")?;
    }
    Ok(())
}

/// Refuses two outputs on standard output.
fn check_one_stdout(args: &Args) -> anyhow::Result<()> {
    let stdout = |log: &Option<PathBuf>| log.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let to_stdout: Vec<&str> = [
        ("--output", args.output.as_deref() == Some("-")),
        ("--events", stdout(&args.events)),
        ("--alerts", stdout(&args.alerts)),
        ("--detections", stdout(&args.detections)),
    ]
    .into_iter()
    .filter_map(|(flag, to_stdout)| to_stdout.then_some(flag))
    .collect();
    if let [first, second, ..] = to_stdout.as_slice() {
        anyhow::bail!(
            "{first} and {second} both write to standard output (-): give one of them a file"
        );
    }
    Ok(())
}

fn open_source(args: &Args) -> anyhow::Result<FrameSource> {
    let source = FrameSource::open(
        &args.input,
        &SourceOptions {
            frame_rate: args.fps,
            // Files and image sequences are read at their frame rate, as a camera would
            // deliver them; live inputs (pipes, URLs, devices) already are.
            native_rate: args.realtime
                && (args.input.contains('%') || std::path::Path::new(&args.input).is_file()),
            low_latency: args.low_latency,
            stall_timeout: stall_timeout(args.stall_timeout, &args.input),
            ffmpeg_options: args.input_option.clone(),
        },
    )
    .context("opening the input")?;
    if source.fps_guessed() {
        eprintln!(
            "warning: {} states no frame rate; assuming {} fps (set --fps)",
            args.input,
            source.fps()
        );
    }
    Ok(source)
}

/// The --track-calibration files, merged, once checked against this stream's setting.
fn load_track_calibration(
    args: &Args,
    setting: &TrackSetting,
) -> anyhow::Result<Option<Arc<TrackCalibration>>> {
    let mut track_calibration: Option<TrackCalibration> = None;
    for path in &args.track_calibration {
        let calibration = TrackCalibration::load(path).map_err(|e| with_kind_hint(e.into()))?;
        // The first must fit this setting; merging holds the others to the first's.
        match &mut track_calibration {
            Some(merged) => {
                let hint = setting_hint(&calibration.setting);
                merged
                    .merge(calibration, path)
                    .map_err(|e| anyhow::anyhow!("{e}; {hint}"))?
            }
            None => {
                let hint = setting_hint(&calibration.setting);
                calibration
                    .check(path, setting)
                    .map_err(|e| anyhow::anyhow!("{e}; {hint}"))?;
                track_calibration = Some(calibration);
            }
        }
    }
    if args.track_tail {
        track_calibration = track_calibration
            .map(|c| c.with_tail(TailOptions::default()))
            .transpose()?;
    }
    if let Some(calibration) = &track_calibration {
        report_track_tail(calibration);
        let reachable = calibration.gpd().is_some()
            || calibration.statistics.len() >= minimum_calibration_size(args.track_alpha);
        if !reachable {
            eprintln!(
                "warning: the track calibration holds {} tracks, so its smallest p-value is \
                 {:.3}: no track can be called unknown at --track-alpha {}; fit it on longer \
                 footage",
                calibration.statistics.len(),
                calibration.smallest_p_value(),
                args.track_alpha
            );
        }
    }
    Ok(track_calibration.map(Arc::new))
}

/// Ctrl-C or SIGTERM stops the stream cleanly: ffmpeg killed, the partial output removed.
/// A second one ends the process at once, should stopping hang. Returns the stop flag, and
/// the last signal's number.
fn register_stop() -> anyhow::Result<(Arc<AtomicBool>, Arc<AtomicUsize>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [SIGINT, SIGTERM] {
        // The shutdown goes first, so that it sees the stop flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, stop.clone())?;
        signal_hook::flag::register_usize(sig, signal.clone(), sig as usize)?;
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok((stop, signal))
}

fn stream_options(
    args: &Args,
    track_calibration: Option<Arc<TrackCalibration>>,
    stop: Arc<AtomicBool>,
) -> StreamOptions {
    StreamOptions {
        action: match args.ood_action {
            ActionArg::Flag => OodAction::Flag,
            ActionArg::Drop => OodAction::Drop,
            ActionArg::Relabel => OodAction::Relabel,
        },
        keep: match args.keep {
            KeepArg::All => Keep::All,
            KeepArg::Ood => Keep::Ood,
        },
        clip_pad_s: args.clip_pad,
        realtime: args.realtime,
        track_alpha: args.track_alpha,
        min_duration_s: args.min_duration,
        track_calibration,
        tracker: TrackerConfig {
            max_missed: args.max_missed,
            ..Default::default()
        },
        queue: args.queue,
        crops: args.crops.clone(),
        stop: Some(stop),
    }
}

/// Where the stream's reports go: the JSON-lines logs, and the statistics --fit-tracks fits
/// on.
struct Logs<'a> {
    args: &'a Args,
    events: Option<Log>,
    alerts: Option<Log>,
    detections: Option<Log>,
    fitted_statistics: Vec<f64>,
}

impl<'a> Logs<'a> {
    fn create(args: &'a Args) -> anyhow::Result<Self> {
        Ok(Logs {
            args,
            events: create_log(args.events.as_deref(), "events")?,
            alerts: create_log(args.alerts.as_deref(), "alerts")?,
            detections: create_log(args.detections.as_deref(), "detections")?,
            fitted_statistics: Vec::new(),
        })
    }

    /// Logs one report of a stream of `fps` frames per second.
    fn write(&mut self, output: Output, fps: f64) -> oodbox::error::Result<()> {
        let args = self.args;
        let (file, path, line) = match output {
            Output::TrackEnded(track) => {
                if args.fit_tracks.is_some() {
                    self.fitted_statistics.push(track.statistic);
                }
                return Ok(());
            }
            Output::Alert(alert) => (
                self.alerts.as_mut(),
                &args.alerts,
                serde_json::to_value(alert).expect("alerts serialise"),
            ),
            Output::Event(event) => (
                self.events.as_mut(),
                &args.events,
                serde_json::to_value(event).expect("events serialise"),
            ),
            Output::Frame { index, boxes } => (
                self.detections.as_mut(),
                &args.detections,
                json!({
                    "frame": index,
                    "time_s": index as f64 / fps,
                    "boxes": boxes.iter().map(|(track, d)| {
                        let mut v = serde_json::to_value(d).expect("detections serialise");
                        v["track_id"] = json!(track);
                        // Features and logits stay out of the per-frame log.
                        v.as_object_mut().map(|o| { o.remove("feature"); o.remove("logits"); o.remove("roi_features") });
                        v
                    }).collect::<Vec<_>>(),
                }),
            ),
        };
        if let (Some(file), Some(path)) = (file, path) {
            writeln!(file, "{line}")
                .and_then(|_| file.flush())
                .map_err(|e| {
                    let shown = if path.as_os_str() == "-" {
                        std::path::Path::new("standard output")
                    } else {
                        path
                    };
                    oodbox::error::Error::io(shown, e)
                })?;
        }
        Ok(())
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    check_args(&args)?;
    let detector = args.detector.load()?;
    let mut options = args
        .detector
        .flags
        .options(Some(detector.as_ref()), Vec::new())?;
    let ood = pair_with_scorer(detector, &args.detector, &args.scorer, None, &mut options)?;
    check_one_stdout(&args)?;
    let mut logs = Logs::create(&args)?;
    let source = open_source(&args)?;
    let fps = source.fps();
    let block = TrackRule::new(args.track_alpha, args.min_duration, fps).block;
    let setting = TrackSetting::of(&ood, &args.scorer, fps, block)?;
    let track_calibration = load_track_calibration(&args, &setting)?;
    // Registered once the input is open: opening may wait on a silent stream, and a signal
    // then ends the process as usual, before any output exists.
    let (stop, signal) = register_stop()?;
    let stream_options = stream_options(&args, track_calibration, stop);
    let bar = if args.detector.flags.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(ProgressStyle::with_template("{spinner} {elapsed} {msg}")?);
    let mut last_update = Instant::now();
    let input = args.input.clone();
    let open_sink = args.output.clone().map(|output| -> OpenSink {
        Box::new(move |size| FrameSink::create(&output, size, fps, Codec::Default, Some(&input)))
    });
    let result = filter_stream(
        &ood,
        source,
        open_sink,
        &stream_options,
        |output| logs.write(output, fps),
        |p| {
            if last_update.elapsed() >= Duration::from_millis(250) {
                bar.set_message(progress_line(p));
                bar.tick();
                last_update = Instant::now();
            }
        },
    );
    bar.finish_and_clear();
    if let Err(oodbox::error::Error::Interrupted { frames }) = result {
        return Ok(interrupted(
            &args,
            signal.load(Ordering::Relaxed) as i32,
            frames,
        ));
    }
    let report = result.with_context(|| match &args.output {
        Some(output) => format!("filtering {} into {output}", args.input),
        None => format!("filtering {}", args.input),
    })?;
    print_summary(&args, &report, fps);
    if let Some(path) = &args.fit_tracks {
        fit_tracks(&args, path, setting, logs.fitted_statistics)?;
    }
    if let (Some(output), 0) = (&args.output, report.progress.written) {
        eprintln!("no frame to write: {output} was not written");
    }
    Ok(if report_trouble(&args, &report) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Says what a stop by signal `sig` left behind; returns the exit code for that signal.
fn interrupted(args: &Args, sig: i32, frames: u64) -> ExitCode {
    let name = signal_hook::low_level::signal_name(sig).unwrap_or("a signal");
    let output = match &args.output {
        Some(output) if is_single_file(output) => {
            format!("{output} was not written (its partial file is removed)")
        }
        Some(output) => format!("what was written to {output} is left as it is"),
        None => "no video was being written".to_string(),
    };
    let events = match &args.events {
        Some(path) => format!("; {} holds the unknown tracks seen so far", path.display()),
        None => String::new(),
    };
    eprintln!("interrupted by {name} after {frames} frames: {output}{events}");
    ExitCode::from(128 + sig as u8)
}

fn print_summary(args: &Args, report: &StreamReport, fps: f64) {
    let p = &report.progress;
    let [decode, detect, track, encode] = p.stage_ms();
    eprintln!(
        "{} frames ({} fps input) in {:.1} s: {:.2} fps; ms per frame: decode {decode:.1}, \
         detect {detect:.1}, track {track:.2}, encode {encode:.1}; {}, {} dropped; \
         {} tracks, {} unknown{}",
        p.decoded,
        fps,
        p.elapsed.as_secs_f64(),
        report.fps,
        match &args.output {
            Some(_) => format!("{} written", p.written),
            None => "no video written".to_string(),
        },
        p.dropped,
        report.tracks,
        report.events,
        report
            .peak_rss_kib
            .map(|k| format!("; peak RSS {:.0} MiB", k as f64 / 1024.0))
            .unwrap_or_default()
    );
}

/// Fits and writes the --fit-tracks calibration.
fn fit_tracks(
    args: &Args,
    path: &std::path::Path,
    setting: TrackSetting,
    statistics: Vec<f64>,
) -> anyhow::Result<()> {
    let tracks = statistics.len();
    let mut calibration = TrackCalibration::fit(setting, &args.input, statistics)
        .with_context(|| format!("fitting {}", path.display()))?;
    if args.track_tail {
        calibration = calibration.with_tail(TailOptions::default())?;
        report_track_tail(&calibration);
    }
    calibration.save(path)?;
    eprintln!(
        "fitted a track calibration on {tracks} tracks ({} of them long enough to score, at \
         least {} boxes): its smallest conformal p-value is {:.4}; wrote {}",
        calibration.statistics.iter().filter(|&&s| s > 0.0).count(),
        calibration.setting.block,
        calibration.smallest_p_value(),
        path.display()
    );
    Ok(())
}

/// Says whether track p-values beyond the calibration's largest statistic come from a tail.
fn report_track_tail(calibration: &TrackCalibration) {
    let Some(tail) = &calibration.tail else {
        return;
    };
    let largest = calibration
        .statistics
        .last()
        .expect("calibrations are not empty");
    match &tail.fit {
        TailStatus::Fitted(g) => eprintln!(
            "track tail over {:.4} (ξ = {:.3}, σ = {:.4}, fitted on {} statistics): track \
             p-values beyond the largest calibration statistic {largest:.4} hold under this \
             tail model, not by exchangeability alone",
            g.threshold, g.shape, g.scale, g.points
        ),
        TailStatus::Plain { reason } => {
            eprintln!("track p-values stay plain conformal: {reason}")
        }
    }
}

/// Warns of input damage and of an input that stopped early; returns whether there was any.
fn report_trouble(args: &Args, report: &StreamReport) -> bool {
    let mut failed = false;
    let damage = &report.damage;
    if damage.undecodable_frames > 0 {
        failed = true;
        eprintln!(
            "warning: ffmpeg could not decode {} frame(s) of {} (each is skipped or stood in \
             for by the previous frame): {}",
            damage.undecodable_frames,
            args.input,
            damage.messages.join(" | ")
        );
    }
    if damage.corrupt_packets > 0 {
        failed = true;
        eprintln!(
            "warning: ffmpeg flagged {} corrupt input packet(s) in {} and decoded them anyway, \
             so some frames may be damaged: {}",
            damage.corrupt_packets,
            args.input,
            damage
                .corrupt_message
                .as_deref()
                .unwrap_or("no message")
                .trim()
        );
    }
    if let Some(e) = &report.input_error {
        failed = true;
        eprintln!(
            "error: the input stopped early: {e}; the {} frames before were processed and written",
            report.progress.decoded
        );
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_a_stall_timeout_unless_told_otherwise() {
        let url = "rtsp://camera/stream";
        assert_eq!(stall_timeout(None, url), Some(URL_STALL_TIMEOUT));
        assert_eq!(stall_timeout(None, "video.mkv"), None);
        assert_eq!(stall_timeout(None, "-"), None);
        assert_eq!(stall_timeout(Some(0.0), url), None);
        assert_eq!(
            stall_timeout(Some(2.5), "-"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(stall_timeout(Some(1e30), url), None);
    }
}
