//! Decoding and encoding through the ffmpeg command-line tool: frames travel as PPM images
//! (decoding) and raw RGB (encoding) over pipes, so any input ffmpeg reads works, and no
//! library is linked. `OODBOX_FFMPEG` names another ffmpeg binary.

use image::RgbImage;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};

/// What to do when ffmpeg is missing.
pub const INSTALL_HINT: &str = "install it with `sudo apt-get install ffmpeg` (Debian, Ubuntu), \
     `brew install ffmpeg` (macOS) or from https://ffmpeg.org/download.html, \
     or set OODBOX_FFMPEG to its path";

/// The ffmpeg binary to run.
pub fn program() -> PathBuf {
    std::env::var_os("OODBOX_FFMPEG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("ffmpeg"))
}

fn video_error(item: &str, reason: impl Into<String>) -> Error {
    Error::Video {
        item: item.to_string(),
        reason: reason.into(),
    }
}

fn spawn(command: &mut Command, item: &str) -> Result<Child> {
    command.spawn().map_err(|e| {
        if e.kind() == ErrorKind::NotFound {
            video_error(
                item,
                format!(
                    "ffmpeg (`{}`) was not found: {INSTALL_HINT}",
                    program().display()
                ),
            )
        } else {
            video_error(item, format!("cannot start ffmpeg: {e}"))
        }
    })
}

/// What ffmpeg reported as damaged in an input that it went on reading.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InputDamage {
    /// Frames it could not decode (each skipped or stood in for by the previous frame).
    pub undecodable_frames: usize,
    /// Its first few messages about them.
    pub messages: Vec<String>,
    /// Packets it flagged as corrupt and decoded anyway: their frames may be damaged.
    pub corrupt_packets: usize,
    /// Its first message about one.
    pub corrupt_message: Option<String>,
}

/// The last lines and the decoding errors ffmpeg printed, bounded so that a long stream does
/// not grow it.
#[derive(Default)]
struct StderrLog {
    tail: VecDeque<String>,
    damage: InputDamage,
    /// For an input: "INPUT: ", the start of ffmpeg's line when reading it fails.
    input_prefix: Option<String>,
    /// The first line saying that reading the input failed. ffmpeg treats such a failure (a
    /// connection that drops, say) as the end of the input and exits with success.
    read_error: Option<String>,
}

const TAIL_LINES: usize = 8;
const KEPT_ERRORS: usize = 5;

impl StderrLog {
    fn push(&mut self, line: String) {
        // Per-frame decoding trouble: ffmpeg reports it and goes on.
        if line.contains("rror while decoding") || line.contains("concealing") {
            self.damage.undecodable_frames += 1;
            if self.damage.messages.len() < KEPT_ERRORS {
                self.damage.messages.push(line.clone());
            }
        }
        // A damaged packet (a lossy network, a spliced stream): ffmpeg warns, decodes it anyway
        // and goes on, so it is no read failure.
        let corrupt = line.contains("corrupt input packet");
        if corrupt {
            self.damage.corrupt_packets += 1;
            self.damage
                .corrupt_message
                .get_or_insert_with(|| line.clone());
        }
        if let Some(prefix) = &self.input_prefix {
            let failed =
                !corrupt && (line.starts_with(prefix.as_str()) || line.contains("prematurely"));
            if failed && self.read_error.is_none() {
                self.read_error = Some(line.clone());
            }
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    fn tail(&self) -> String {
        let lines: Vec<&str> = self.tail.iter().map(|s| s.trim()).collect();
        if lines.is_empty() {
            "no message".into()
        } else {
            lines.join(" | ")
        }
    }
}

/// Reads ffmpeg's stderr on a thread; sends the frame rate of the input's video stream (from
/// its "Stream #0:N: Video: ..." line) as soon as it is printed.
fn watch_stderr(
    stderr: impl Read + Send + 'static,
    log: Arc<Mutex<StderrLog>>,
) -> (mpsc::Receiver<Option<f64>>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut tx = Some(tx);
        let mut in_input = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("Input #") {
                in_input = true;
            } else if line.starts_with("Output #") || line.starts_with("Stream mapping") {
                in_input = false;
            }
            if in_input && line.contains("Stream #") && line.contains("Video:") {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(parse_frame_rate(&line));
                }
            }
            log.lock().expect("stderr log").push(line);
        }
    });
    (rx, reader)
}

/// A running ffmpeg and what it printed.
struct Process {
    /// The input or output it works on, for messages.
    name: String,
    /// Shared with [`Killer`]s. Whoever holds the lock while waiting only waits for an ffmpeg
    /// that is exiting (its pipe closed, or killed), so a kill never waits long.
    child: Arc<Mutex<Child>>,
    log: Arc<Mutex<StderrLog>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts `command` with stderr piped; returns the frame rate channel of [`watch_stderr`].
    /// An `input` is watched for read failures.
    fn start(
        mut command: Command,
        name: &str,
        input: bool,
    ) -> Result<(Self, mpsc::Receiver<Option<f64>>)> {
        let mut child = spawn(command.stderr(Stdio::piped()), name)?;
        let log = Arc::new(Mutex::new(StderrLog {
            input_prefix: input.then(|| format!("{name}: ")),
            ..Default::default()
        }));
        let (rate, reader) = watch_stderr(child.stderr.take().expect("piped stderr"), log.clone());
        let process = Process {
            name: name.to_string(),
            child: Arc::new(Mutex::new(child)),
            log,
            stderr_reader: Some(reader),
        };
        Ok((process, rate))
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().expect("ffmpeg child")
    }

    fn kill(&self) {
        let _ = self.child().kill();
    }

    fn wait(&self) -> std::io::Result<ExitStatus> {
        self.child().wait()
    }

    /// After ffmpeg exited: its stderr read to the end.
    fn read_all_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }

    /// The whole stderr log, once ffmpeg has closed its stderr.
    fn finished_log(&mut self) -> MutexGuard<'_, StderrLog> {
        self.read_all_stderr();
        self.log.lock().expect("stderr log")
    }

    /// Waits for ffmpeg to exit and describes why it stopped, with its last words.
    fn failure(&mut self, what: &str) -> Error {
        let status = match self.wait() {
            Ok(s) => s.to_string(),
            Err(e) => e.to_string(),
        };
        let tail = self.finished_log().tail();
        video_error(&self.name, format!("{what} (ffmpeg {status}: {tail})"))
    }
}

/// Kills a running ffmpeg from another thread, so that a stage blocked on its pipe (a stalled
/// input or output) sees the pipe close. An ffmpeg already waited for is left alone: the
/// standard library does not signal a child it has reaped, whose id may be reused.
#[derive(Clone)]
pub(crate) struct Killer(Arc<Mutex<Child>>);

impl Killer {
    pub(crate) fn kill(&self) {
        let _ = self.0.lock().expect("ffmpeg child").kill();
    }
}

/// The frame rate in an ffmpeg stream line: its "N fps" field, else "N tbr".
pub fn parse_frame_rate(line: &str) -> Option<f64> {
    let field = |unit: &str| {
        line.split(", ")
            .filter_map(|f| f.trim().strip_suffix(unit))
            .find_map(|v| {
                let v = v.trim();
                match v.strip_suffix('k') {
                    Some(k) => k.parse::<f64>().ok().map(|x| x * 1000.0),
                    None => v.parse::<f64>().ok(),
                }
            })
            .filter(|r| r.is_finite() && *r > 0.0)
    };
    field(" fps").or_else(|| field(" tbr"))
}

/// One decoded frame, counted from 0 in decoding order.
pub struct Frame {
    pub index: u64,
    pub image: RgbImage,
    /// When it was read from ffmpeg: for a live input, about when the camera saw it.
    pub read_at: SystemTime,
}

/// Reads one binary PPM (P6, maxval 255) image; `Ok(None)` at a clean end of stream.
pub fn read_ppm(reader: &mut impl BufRead) -> std::result::Result<Option<RgbImage>, String> {
    if reader.fill_buf().map_err(|e| e.to_string())?.is_empty() {
        return Ok(None);
    }
    let mut fields = Vec::new();
    while fields.len() < 4 {
        let mut token = Vec::new();
        loop {
            let mut byte = [0u8];
            if reader.read(&mut byte).map_err(|e| e.to_string())? == 0 {
                return Err("the stream ended mid-frame, in a frame header".into());
            }
            if byte[0].is_ascii_whitespace() {
                if !token.is_empty() {
                    break;
                }
            } else {
                token.push(byte[0]);
            }
        }
        fields.push(String::from_utf8_lossy(&token).into_owned());
    }
    let number = |s: &str| {
        s.parse::<u32>()
            .map_err(|_| format!("bad frame header field `{s}`"))
    };
    if fields[0] != "P6" {
        return Err(format!("not a PPM frame (magic `{}`)", fields[0]));
    }
    let (width, height, maxval) = (
        number(&fields[1])?,
        number(&fields[2])?,
        number(&fields[3])?,
    );
    if maxval != 255 || width == 0 || height == 0 {
        return Err(format!(
            "unsupported frame {width}×{height}, maxval {maxval}"
        ));
    }
    let limit = crate::limits::Limits::from_env()
        .map_err(|e| e.to_string())?
        .max_image_pixels;
    if width as u64 * height as u64 > limit {
        return Err(format!(
            "frames of {width}×{height} pixels are more than the limit of {limit} (set {} to \
             raise it)",
            crate::limits::MAX_IMAGE_PIXELS_VAR
        ));
    }
    let len = width as usize * height as usize * 3;
    let mut data = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match reader.read(&mut data[filled..]) {
            Ok(0) => {
                return Err(format!(
                "the stream ended mid-frame ({filled} of {len} bytes of a {width}×{height} frame)"
            ))
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(Some(
        RgbImage::from_raw(width, height, data).expect("buffer has the frame's size"),
    ))
}

/// Where frames come from: a file, an image-sequence pattern (`frames/%05d.png`), a URL ffmpeg
/// reads, or `-` for standard input.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    /// Input frame rate for image sequences and raw frame pipes (ffmpeg's `-framerate`).
    pub frame_rate: Option<f64>,
    /// Read at the input's own frame rate (ffmpeg's `-re`), as a camera delivers frames.
    pub native_rate: bool,
    /// Open the input after a minimal look at it instead of ffmpeg's default probe (up to 5 MB
    /// or 5 s of stream): from a live pipe or camera the first frame comes at once. A format
    /// whose stream parameters take longer to find may then fail to open.
    pub low_latency: bool,
    /// Give up on an input that sends nothing for this long while a frame (or, when opening,
    /// its stream description) is awaited: a camera or a connection that froze. ffmpeg is
    /// stopped and the read fails with [`Error::Video`] saying so. Time spent with the frames
    /// waiting downstream does not count.
    pub stall_timeout: Option<Duration>,
    /// ffmpeg input options, as (name without the dash, value), given before the input: the
    /// format of a device or a raw stream (`f`=`v4l2`, `video_size`, `pixel_format`), the
    /// transport of a camera (`rtsp_transport`=`tcp`), ...
    pub ffmpeg_options: Vec<(String, String)>,
}

/// Kills a source's ffmpeg once its reader has waited on it for longer than the timeout.
struct StallWatch {
    timeout: Duration,
    epoch: Instant,
    /// When the reader began to wait, in nanoseconds since `epoch` plus one; 0 when it is
    /// not waiting.
    waiting_since: Arc<AtomicU64>,
    stalled: Arc<AtomicBool>,
    /// Dropped with the source, which ends the watching thread.
    _running: mpsc::Sender<()>,
}

impl StallWatch {
    /// Starts watching, with the reader waiting (on the stream description).
    fn start(timeout: Duration, killer: Killer) -> Self {
        let epoch = Instant::now();
        let waiting_since = Arc::new(AtomicU64::new(1));
        let stalled = Arc::new(AtomicBool::new(false));
        let (running, watching) = mpsc::channel::<()>();
        let poll = (timeout / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let (since, flag) = (waiting_since.clone(), stalled.clone());
        std::thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = watching.recv_timeout(poll) {
                let began = since.load(Ordering::Relaxed);
                if began > 0
                    && epoch.elapsed().as_nanos() as u64 + 1 - began > timeout.as_nanos() as u64
                {
                    flag.store(true, Ordering::Relaxed);
                    killer.kill();
                    return;
                }
            }
        });
        StallWatch {
            timeout,
            epoch,
            waiting_since,
            stalled,
            _running: running,
        }
    }

    fn waiting(&self, waiting: bool) {
        let now = self.epoch.elapsed().as_nanos() as u64 + 1;
        self.waiting_since
            .store(if waiting { now } else { 0 }, Ordering::Relaxed);
    }

    /// Why the input failed, when it was stopped for stalling.
    fn reason(&self, what: &str) -> Option<String> {
        self.stalled.load(Ordering::Relaxed).then(|| {
            format!(
                "{what}: nothing came for {:.1} s (stall timeout), so ffmpeg was stopped",
                self.timeout.as_secs_f64()
            )
        })
    }
}

/// A running ffmpeg that decodes a video into frames.
pub struct FrameSource {
    process: Process,
    stdout: BufReader<ChildStdout>,
    fps: f64,
    fps_guessed: bool,
    next: u64,
    size: Option<(u32, u32)>,
    done: bool,
    stall_watch: Option<StallWatch>,
}

/// ffmpeg's frame rate for inputs that carry none.
const DEFAULT_FPS: f64 = 25.0;

impl FrameSource {
    pub fn open(input: &str, options: &SourceOptions) -> Result<Self> {
        if input != "-" && !input.contains("://") && !input.contains('%') {
            let path = Path::new(input);
            let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
            if meta.is_file() && meta.len() == 0 {
                return Err(video_error(input, "the file is empty (zero length)"));
            }
        }
        let mut command = Command::new(program());
        command.args(["-hide_banner", "-nostats", "-loglevel", "info"]);
        if input == "-" {
            command.stdin(Stdio::inherit());
        } else {
            command.arg("-nostdin").stdin(Stdio::null());
        }
        if options.native_rate {
            command.arg("-re");
        }
        if let Some(rate) = options.frame_rate {
            command.args(["-framerate", &rate.to_string()]);
        }
        if options.low_latency {
            command.args(["-probesize", "32", "-analyzeduration", "0"]);
        }
        for (name, value) in &options.ffmpeg_options {
            command.arg(format!("-{name}")).arg(value);
        }
        command
            .args(["-i", input, "-map", "0:v:0", "-an", "-sn"])
            .args(["-f", "image2pipe", "-c:v", "ppm", "-pix_fmt", "rgb24", "-"])
            .stdout(Stdio::piped());
        let (process, rate) = Process::start(command, input, true)?;
        let stdout = process.child().stdout.take().expect("piped stdout");
        let stall_watch = options
            .stall_timeout
            .map(|timeout| StallWatch::start(timeout, Killer(process.child.clone())));
        let mut source = FrameSource {
            process,
            stdout: BufReader::with_capacity(1 << 20, stdout),
            fps: DEFAULT_FPS,
            fps_guessed: true,
            next: 0,
            size: None,
            done: false,
            stall_watch,
        };
        // ffmpeg prints the input's streams before its first frame, or fails to open it.
        match rate.recv() {
            Ok(Some(fps)) => {
                source.fps = options.frame_rate.unwrap_or(fps);
                source.fps_guessed = false;
            }
            Ok(None) => {
                if let Some(fps) = options.frame_rate {
                    source.fps = fps;
                    source.fps_guessed = false;
                }
            }
            Err(_) => {
                if let Some(reason) = source.stall_reason("opening it") {
                    return Err(source.process.failure(&reason));
                }
                let what = why_not_opened(&source.process.finished_log().tail);
                return Err(source.process.failure(what));
            }
        }
        source.waiting(false);
        Ok(source)
    }

    fn waiting(&self, waiting: bool) {
        if let Some(watch) = &self.stall_watch {
            watch.waiting(waiting);
        }
    }

    fn stall_reason(&self, what: &str) -> Option<String> {
        self.stall_watch.as_ref().and_then(|w| w.reason(what))
    }

    pub fn name(&self) -> &str {
        &self.process.name
    }

    /// Frames per second of the input (ffmpeg's reading of it, or the one given).
    pub fn fps(&self) -> f64 {
        self.fps
    }

    pub(crate) fn killer(&self) -> Killer {
        Killer(self.process.child.clone())
    }

    /// True when the input stated no frame rate and 25 was assumed.
    pub fn fps_guessed(&self) -> bool {
        self.fps_guessed
    }

    /// The damage ffmpeg reported so far while it went on reading.
    pub fn damage(&self) -> InputDamage {
        self.process.log.lock().expect("stderr log").damage.clone()
    }

    /// The next frame, `None` at the end of the stream. An error when ffmpeg stops early, the
    /// stream ends inside a frame, or the frame size changes.
    pub fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        self.waiting(true);
        let read = read_ppm(&mut self.stdout);
        self.waiting(false);
        if read.as_ref().map_or(true, |image| image.is_none()) {
            if let Some(reason) = self.stall_reason(&format!("after {} frames", self.next)) {
                self.done = true;
                return Err(self.process.failure(&reason));
            }
        }
        match read {
            Ok(Some(image)) => {
                let dims = image.dimensions();
                match self.size {
                    None => self.size = Some(dims),
                    Some(size) if size != dims => {
                        self.done = true;
                        self.process.kill();
                        return Err(video_error(
                            self.name(),
                            format!(
                                "frame {}: the size changed from {}×{} to {}×{} (one size per stream)",
                                self.next, size.0, size.1, dims.0, dims.1
                            ),
                        ));
                    }
                    Some(_) => {}
                }
                let frame = Frame {
                    index: self.next,
                    image,
                    read_at: SystemTime::now(),
                };
                self.next += 1;
                Ok(Some(frame))
            }
            Ok(None) => {
                self.done = true;
                let status = self
                    .process
                    .wait()
                    .map_err(|e| video_error(self.name(), e.to_string()))?;
                if !status.success() {
                    let what = format!("ffmpeg stopped after {} frames", self.next);
                    return Err(self.process.failure(&what));
                }
                let read_error = self.process.finished_log().read_error.take();
                if let Some(line) = read_error {
                    let what = format!(
                        "reading it failed after {} frames: {}",
                        self.next,
                        line.trim()
                    );
                    return Err(self.process.failure(&what));
                }
                if self.next == 0 {
                    return Err(self.process.failure("no video frame in it"));
                }
                Ok(None)
            }
            Err(reason) => {
                self.done = true;
                let what = format!("frame {}: {reason}", self.next);
                Err(self.process.failure(&what))
            }
        }
    }
}

impl Drop for FrameSource {
    fn drop(&mut self) {
        if !self.done {
            self.process.kill();
        }
        let _ = self.process.wait();
    }
}

/// How a [`FrameSink`] encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// H.264 for .mp4/.mkv/.mov/.m4v (4:2:0, or 4:4:4 for odd sizes, which 4:2:0 cannot
    /// hold); ffmpeg's default codec for other extensions.
    Default,
    /// Bit-exact frames: FFV1 in .mkv/.avi, PNG for image sequences, raw video on stdout.
    Lossless,
}

/// A running ffmpeg that encodes frames. Files are written under a temporary name and renamed
/// when [`FrameSink::finish`] succeeds, so a failed run leaves no half-written video.
pub struct FrameSink {
    process: Process,
    stdin: Option<BufWriter<ChildStdin>>,
    size: (u32, u32),
    /// (temporary, final) paths when writing a single file.
    rename: Option<(PathBuf, PathBuf)>,
    frames: u64,
}

/// Whether `output` names one file (not `-` or an image-sequence pattern): such a file is
/// written under a temporary name and appears only when complete.
pub fn is_single_file(output: &str) -> bool {
    output != "-" && !output.contains('%')
}

fn extension(output: &str) -> String {
    Path::new(output)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn codec_args(output: &str, codec: Codec, (w, h): (u32, u32)) -> Result<Vec<String>> {
    let ext = extension(output);
    let args: &[&str] = match (codec, output, ext.as_str()) {
        (_, "-", _) => &["-f", "nut", "-c:v", "rawvideo", "-pix_fmt", "rgb24"],
        (Codec::Lossless, _, "mkv" | "avi") => &["-c:v", "ffv1", "-pix_fmt", "bgr0"],
        (Codec::Lossless, _, "png") if output.contains('%') => &["-c:v", "png"],
        (Codec::Lossless, _, _) => {
            return Err(video_error(
                output,
                "lossless output needs .mkv, .avi, a .png sequence pattern, or - (stdout)",
            ))
        }
        (Codec::Default, _, "mp4" | "mkv" | "mov" | "m4v") => {
            if w % 2 == 0 && h % 2 == 0 {
                &[
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
                ]
            } else {
                &[
                    "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv444p",
                ]
            }
        }
        (Codec::Default, _, _) => &[],
    };
    Ok(args.iter().map(|s| s.to_string()).collect())
}

/// What ffmpeg's last lines say about an input it could not open, in words that name the
/// cause (its own, such as "Option framerate not found", do not say which option).
fn why_not_opened(ffmpeg_lines: &VecDeque<String>) -> &'static str {
    const CAUSES: [(&str, &str); 4] = [
        // `-map 0:v:0` on an input without video (audio only).
        ("matches no streams", "it has no video stream"),
        (
            "Could find no file with path",
            "no file matches this image-sequence pattern",
        ),
        (
            "Is a directory",
            "it is a folder; give an image-sequence pattern such as FOLDER/%05d.png",
        ),
        (
            "Option framerate not found",
            "a frame rate is set only for image sequences and image pipes; this input has its own",
        ),
    ];
    CAUSES
        .iter()
        .find(|(said, _)| ffmpeg_lines.iter().any(|line| line.contains(said)))
        .map_or("ffmpeg cannot read it", |(_, cause)| cause)
}

/// Refuses an output (a file or an image-sequence pattern) whose folder does not exist, which
/// ffmpeg would only report once frames arrive.
pub fn check_output_folder(output: &str) -> Result<()> {
    if output == "-" {
        return Ok(());
    }
    match Path::new(output).parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(video_error(
            output,
            format!("its folder {} does not exist", dir.display()),
        )),
        _ => Ok(()),
    }
}

impl FrameSink {
    /// Starts ffmpeg writing `output` (a file, an image-sequence pattern, or `-` for standard
    /// output) at `fps`, for frames of `size`. Refuses to write over `protect` (the input).
    pub fn create(
        output: &str,
        size: (u32, u32),
        fps: f64,
        codec: Codec,
        protect: Option<&str>,
    ) -> Result<Self> {
        check_output_folder(output)?;
        let args = codec_args(output, codec, size)?;
        let rename = if is_single_file(output) {
            let path = PathBuf::from(output);
            if let Some(input) = protect {
                let canonical = |p: &Path| p.canonicalize().ok();
                if canonical(&path).is_some() && canonical(&path) == canonical(Path::new(input)) {
                    return Err(video_error(output, "the output would overwrite the input"));
                }
            }
            let dir = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "video".into());
            // The extension stays last, since ffmpeg picks the container from it.
            let tmp = dir.join(format!(".{}.tmp-{name}", std::process::id()));
            Some((tmp, path))
        } else {
            None
        };
        let target = rename
            .as_ref()
            .map(|(tmp, _)| tmp.to_string_lossy().into_owned())
            .unwrap_or_else(|| output.to_string());
        let mut command = Command::new(program());
        command
            .args(["-hide_banner", "-nostats", "-loglevel", "error", "-y"])
            .args(["-f", "rawvideo", "-pix_fmt", "rgb24"])
            .args(["-s", &format!("{}x{}", size.0, size.1)])
            .args(["-framerate", &fps.to_string(), "-i", "-"])
            .args(&args)
            .args(["-r", &fps.to_string(), &target])
            .stdin(Stdio::piped())
            .stdout(if output == "-" {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        let (process, _) = Process::start(command, output, false)?;
        let stdin = process.child().stdin.take().expect("piped stdin");
        Ok(FrameSink {
            process,
            stdin: Some(BufWriter::with_capacity(1 << 20, stdin)),
            size,
            rename,
            frames: 0,
        })
    }

    pub fn frames(&self) -> u64 {
        self.frames
    }

    pub(crate) fn killer(&self) -> Killer {
        Killer(self.process.child.clone())
    }

    fn failure(&mut self, what: &str) -> Error {
        self.stdin = None;
        self.process.failure(what)
    }

    pub fn write(&mut self, frame: &RgbImage) -> Result<()> {
        if frame.dimensions() != self.size {
            return Err(video_error(
                &self.process.name,
                format!(
                    "frame {} is {}×{}, the video {}×{}",
                    self.frames,
                    frame.width(),
                    frame.height(),
                    self.size.0,
                    self.size.1
                ),
            ));
        }
        let written = match self.stdin.as_mut() {
            Some(stdin) => stdin.write_all(frame.as_raw()),
            None => Err(ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = written {
            let what = format!("ffmpeg stopped taking frames after {} ({e})", self.frames);
            return Err(self.failure(&what));
        }
        self.frames += 1;
        Ok(())
    }

    /// Closes the stream, waits for ffmpeg, and moves the file into place.
    pub fn finish(mut self) -> Result<u64> {
        let flushed = self.stdin.take().map(|mut s| s.flush()).transpose();
        let status = self
            .process
            .wait()
            .map_err(|e| video_error(&self.process.name, e.to_string()))?;
        if flushed.is_err() || !status.success() {
            let what = format!("encoding failed after {} frames", self.frames);
            return Err(self.failure(&what));
        }
        if let Some((tmp, path)) = self.rename.take() {
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(self.frames)
    }
}

impl Drop for FrameSink {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            self.process.kill();
        }
        let _ = self.process.wait();
        if let Some((tmp, _)) = &self.rename {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_ffmpeg_cannot_open_is_explained_by_its_last_lines() {
        let lines = |said: &[&str]| said.iter().map(|s| s.to_string()).collect::<VecDeque<_>>();
        let cases = [
            ("Stream map '0:v:0' matches no streams.", "no video stream"),
            (
                "[image2 @ 0x1] Could find no file with path 'f%03d.png'",
                "no file matches",
            ),
            ("frames: Is a directory", "FOLDER/%05d.png"),
            (
                "Option framerate not found.",
                "set only for image sequences",
            ),
            ("moov atom not found", "ffmpeg cannot read it"),
        ];
        for (said, cause) in cases {
            let why = why_not_opened(&lines(&["Input #0, mov", said]));
            assert!(why.contains(cause), "{said}: {why}");
        }
    }

    #[test]
    fn frame_rates_are_read_from_stream_lines() {
        let line = "  Stream #0:0: Video: ffv1 (FFV1 / 0x31564646), bgr0(pc, gbr/unknown/unknown, \
                    progressive), 321x239, SAR 1:1 DAR 321:239, 10 fps, 10 tbr, 1k tbn";
        assert_eq!(parse_frame_rate(line), Some(10.0));
        let line = "  Stream #0:0(und): Video: h264 (High), yuv420p(progressive), 640x480, \
                    29.97 tbr, 90k tbn";
        assert_eq!(parse_frame_rate(line), Some(29.97));
        assert_eq!(
            parse_frame_rate("Stream #0:0: Video: rawvideo, 1k tbn"),
            None
        );
    }

    #[test]
    fn ppm_frames_are_read_and_truncation_is_an_error() {
        let mut bytes = b"P6\n3 2\n255\n".to_vec();
        bytes.extend((0..18).map(|i| i as u8));
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        let mut reader = std::io::Cursor::new(two);
        for _ in 0..2 {
            let image = read_ppm(&mut reader).unwrap().unwrap();
            assert_eq!(image.dimensions(), (3, 2));
            assert_eq!(image.get_pixel(2, 1).0, [15, 16, 17]);
        }
        assert!(read_ppm(&mut reader).unwrap().is_none());

        let cut = &bytes[..bytes.len() - 5];
        let err = read_ppm(&mut std::io::Cursor::new(cut)).unwrap_err();
        assert!(err.contains("ended mid-frame (13 of 18 bytes"), "{err}");
        let err = read_ppm(&mut std::io::Cursor::new(&bytes[..5])).unwrap_err();
        assert!(err.contains("frame header"), "{err}");
        let err = read_ppm(&mut std::io::Cursor::new(b"P5\n3 2\n255\n".to_vec())).unwrap_err();
        assert!(err.contains("not a PPM"), "{err}");
        // A frame size over the pixel limit is refused before its buffer is allocated.
        let huge = b"P6\n50000 50000\n255\n".to_vec();
        let err = read_ppm(&mut std::io::Cursor::new(huge)).unwrap_err();
        assert!(
            err.contains("50000×50000") && err.contains("OODBOX_MAX_IMAGE_PIXELS"),
            "{err}"
        );
    }
}
