//! Test fixtures, not part of the detection API: the synthetic shapes world (scenes of known
//! and unknown shapes with their ground truth) and synthetic videos made from it. The
//! `oodbox synth` and `oodbox synth-video` commands, the tests, the examples and the
//! benchmarks use them to make data without a download.
//!
//! Behind the `synth` feature, which the default `cli` feature turns on: a library built with
//! `default-features = false` leaves them out.

pub mod video;
pub mod world;
