//! Encoding: an ffmpeg that takes raw RGB frames on its standard input.

use image::RgbImage;
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};

use super::process::{Killer, Process};
use super::{program, video_error};
use crate::core::is_device_or_pipe;
use crate::error::{Error, Result};

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
        // A device or pipe (/dev/null) is written in place: a rename would replace it.
        let rename = if is_single_file(output) && !is_device_or_pipe(Path::new(output)) {
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
