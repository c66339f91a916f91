//! Decoding and encoding through the ffmpeg command-line tool: frames travel as PPM images
//! (decoding) and raw RGB (encoding) over pipes, so any input ffmpeg reads works, and no
//! library is linked. `OODBOX_FFMPEG` names another ffmpeg binary.

mod process;
mod sink;
mod source;

pub(crate) use process::Killer;
pub use process::{parse_frame_rate, InputDamage};
pub use sink::{check_output_folder, is_single_file, Codec, FrameSink};
pub use source::{read_ppm, Frame, FrameSource, SourceOptions};

use std::path::PathBuf;

use crate::error::Error;

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
