//! A running ffmpeg: its process, what it prints on stderr, and killing it from another thread.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::{program, video_error, INSTALL_HINT};
use crate::error::{Error, Result};

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
pub(super) struct StderrLog {
    pub(super) tail: VecDeque<String>,
    pub(super) damage: InputDamage,
    /// For an input: "INPUT: ", the start of ffmpeg's line when reading it fails.
    input_prefix: Option<String>,
    /// The first line saying that reading the input failed. ffmpeg treats such a failure (a
    /// connection that drops, say) as the end of the input and exits with success.
    pub(super) read_error: Option<String>,
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
pub(super) struct Process {
    /// The input or output it works on, for messages.
    pub(super) name: String,
    /// Shared with [`Killer`]s. Whoever holds the lock while waiting only waits for an ffmpeg
    /// that is exiting (its pipe closed, or killed), so a kill never waits long.
    pub(super) child: Arc<Mutex<Child>>,
    pub(super) log: Arc<Mutex<StderrLog>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts `command` with stderr piped; returns the frame rate channel of [`watch_stderr`].
    /// An `input` is watched for read failures.
    pub(super) fn start(
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

    pub(super) fn child(&self) -> MutexGuard<'_, Child> {
        self.child.lock().expect("ffmpeg child")
    }

    pub(super) fn kill(&self) {
        let _ = self.child().kill();
    }

    pub(super) fn wait(&self) -> std::io::Result<ExitStatus> {
        self.child().wait()
    }

    /// After ffmpeg exited: its stderr read to the end.
    fn read_all_stderr(&mut self) {
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }

    /// The whole stderr log, once ffmpeg has closed its stderr.
    pub(super) fn finished_log(&mut self) -> MutexGuard<'_, StderrLog> {
        self.read_all_stderr();
        self.log.lock().expect("stderr log")
    }

    /// Waits for ffmpeg to exit and describes why it stopped, with its last words.
    pub(super) fn failure(&mut self, what: &str) -> Error {
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
pub(crate) struct Killer(pub(super) Arc<Mutex<Child>>);

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
