//! Video: frames from ffmpeg, a tracker that follows each object, OOD evidence combined over a
//! track, and a stream filter that marks, drops or relabels unknown objects and reports one
//! event per unknown track.

pub mod calibration;
pub mod evidence;
pub mod ffmpeg;
pub mod stream;
pub mod tracker;
