//! The three stages every detector family runs, defined once so that stage timing (the CLI's
//! `bench` and per-image timings) works for all of them.

use candle_core::Device;
use image::RgbImage;
use std::time::Instant;

use crate::core::settings::DetectOptions;
use crate::core::BoxRecord;
use crate::error::Result;

/// Milliseconds spent in each stage of one detection.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimes {
    pub preprocess_ms: f64,
    pub forward_ms: f64,
    pub postprocess_ms: f64,
}

/// A family's preprocess → forward → postprocess.
pub trait Stages {
    /// The network input and whatever postprocessing needs to map boxes back (the letterbox
    /// geometry, the original size).
    type Input;
    /// The raw network output.
    type Output;

    fn preprocess(&self, image: &RgbImage, options: &DetectOptions) -> Result<Self::Input>;
    fn forward(&self, input: &Self::Input) -> Result<Self::Output>;
    fn postprocess(
        &self,
        output: Self::Output,
        input: &Self::Input,
        options: &DetectOptions,
    ) -> Result<Vec<BoxRecord>>;
    /// The device the forward pass runs on; it is waited for before the forward time is read.
    fn device(&self) -> &Device;
}

/// Runs the three stages of `stages` on `image`, timing each.
pub fn run_stages<S: Stages + ?Sized>(
    stages: &S,
    image: &RgbImage,
    options: &DetectOptions,
) -> Result<(Vec<BoxRecord>, StageTimes)> {
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    let t0 = Instant::now();
    options.check()?;
    let input = stages.preprocess(image, options)?;
    let t1 = Instant::now();
    let output = stages.forward(&input)?;
    stages.device().synchronize()?;
    let t2 = Instant::now();
    let boxes = stages.postprocess(output, &input, options)?;
    let t3 = Instant::now();
    let times = StageTimes {
        preprocess_ms: ms(t0, t1),
        forward_ms: ms(t1, t2),
        postprocess_ms: ms(t2, t3),
    };
    Ok((boxes, times))
}
