//! Decoding: an ffmpeg that reads any input and pipes its frames out as PPM images.

use image::RgbImage;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::process::{InputDamage, Killer, Process};
use super::{program, video_error};
use crate::error::{Error, Result};

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
