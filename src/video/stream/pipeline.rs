//! The decoder and detector stages, what the stages share (counters, the stop request), and
//! the thread that acts on a stop.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::encode::{Detected, TrackedBox};
use super::tracks::TrackBook;
use super::{Output, Progress, StageTimes, StreamOptions, STOP_POLL};
use crate::error::{Error, Result};
use crate::pipeline::OodDetector;
use crate::video::ffmpeg::{Frame, FrameSource, InputDamage, Killer};

#[derive(Default)]
pub(super) struct Counters {
    pub(super) decoded: AtomicU64,
    pub(super) detected: AtomicU64,
    pub(super) written: AtomicU64,
    pub(super) dropped: AtomicU64,
    decode_ns: AtomicU64,
    pub(super) encode_ns: AtomicU64,
    /// Set by the decoder when it has read its last frame.
    pub(super) input_done: AtomicBool,
}

pub(super) fn stop_requested(options: &StreamOptions) -> bool {
    options
        .stop
        .as_ref()
        .is_some_and(|stop| stop.load(Ordering::Relaxed))
}

pub(super) fn add(counter: &AtomicU64, d: Duration) {
    counter.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
}

fn nanos(counter: &AtomicU64) -> Duration {
    Duration::from_nanos(counter.load(Ordering::Relaxed))
}

/// The stop watcher's thread: once `stop` is set, kills both ffmpegs; returns when the stream
/// is over (`watching` disconnects). Any stage may be blocked on an ffmpeg pipe (a stalled
/// camera, a stalled reader of the output): killing both ffmpegs unblocks them all, and each
/// then stops.
pub(super) fn watch_stop(
    stop: &AtomicBool,
    source_killer: &Killer,
    sink_killer: &Mutex<Option<Killer>>,
    watching: Receiver<()>,
) {
    loop {
        match watching.recv_timeout(STOP_POLL) {
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => {
                source_killer.kill();
                if let Some(sink) = sink_killer.lock().expect("sink killer").as_ref() {
                    sink.kill();
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// The decoder thread: reads frames until the end, an error, or the consumer stops. In
/// realtime mode a frame that finds the queue full is dropped.
pub(super) fn decode(
    mut source: FrameSource,
    tx: SyncSender<Frame>,
    realtime: bool,
    counters: &Counters,
) -> (InputDamage, Option<Error>) {
    let mut error = None;
    loop {
        let t0 = Instant::now();
        let frame = match source.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        };
        add(&counters.decode_ns, t0.elapsed());
        counters.decoded.fetch_add(1, Ordering::Relaxed);
        let sent = if realtime {
            match tx.try_send(frame) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        } else {
            tx.send(frame).is_ok()
        };
        if !sent {
            break;
        }
    }
    counters.input_done.store(true, Ordering::Relaxed);
    (source.damage(), error)
}

/// The detector stage, which runs on the calling thread: detects and tracks each frame,
/// reports it, and hands it to the encoder.
pub(super) struct DetectStage<'a> {
    pub(super) detector: &'a OodDetector,
    pub(super) options: &'a StreamOptions,
    pub(super) counters: &'a Counters,
    pub(super) start: Instant,
    pub(super) book: TrackBook<'a>,
    pub(super) detect_time: Duration,
    pub(super) track_time: Duration,
}

impl DetectStage<'_> {
    /// Runs until the frames end, a stop request (then the second value is true), an error
    /// (returned), or the encoder fails (its error is the encoder's to report). Unless it
    /// failed, the tracks still open are then closed and reported, after a stop too.
    pub(super) fn run(
        &mut self,
        frames: &Receiver<Frame>,
        detected_tx: Option<SyncSender<Detected>>,
        on_output: &mut impl FnMut(Output) -> Result<()>,
        on_progress: &mut impl FnMut(&Progress),
    ) -> (Option<Error>, bool) {
        let mut interrupted = false;
        for frame in frames.iter() {
            if stop_requested(self.options) {
                interrupted = true;
                break;
            }
            let detected = match self.frame(frame, on_output) {
                Ok(detected) => detected,
                Err(e) => return (Some(e), false),
            };
            if let Some(detected_tx) = &detected_tx {
                if detected_tx.send(detected).is_err() {
                    break; // the encoder failed; its error is reported by the caller
                }
            }
            on_progress(&self.snapshot());
        }
        // The frames still held by the encoder need no retirement notices: it ends too.
        (self.book.finish(on_output).err(), interrupted)
    }

    /// Detects, tracks and reports one frame.
    fn frame(
        &mut self,
        frame: Frame,
        on_output: &mut impl FnMut(Output) -> Result<()>,
    ) -> Result<Detected> {
        let t0 = Instant::now();
        let detections = self.detector.detect(&frame.image)?;
        let t1 = Instant::now();
        let observed = self.book.observe(&frame, &detections);
        let ended = self
            .book
            .report(
                frame.index,
                &detections,
                &observed.ids,
                observed.alerts,
                on_output,
            )
            .and_then(|_| self.book.close(observed.ended, on_output))?;
        let t2 = Instant::now();
        self.detect_time += t1 - t0;
        self.track_time += t2 - t1;
        self.counters.detected.fetch_add(1, Ordering::Relaxed);
        Ok(Detected {
            index: frame.index,
            image: frame.image,
            boxes: detections
                .into_iter()
                .zip(observed.ids)
                .map(|(detection, track)| TrackedBox { detection, track })
                .collect(),
            newly_unknown: observed.newly_unknown,
            ended,
        })
    }

    /// Frames detected so far.
    pub(super) fn detected(&self) -> u64 {
        self.counters.detected.load(Ordering::Relaxed)
    }

    pub(super) fn snapshot(&self) -> Progress {
        let counters = self.counters;
        Progress {
            decoded: counters.decoded.load(Ordering::Relaxed),
            detected: counters.detected.load(Ordering::Relaxed),
            written: counters.written.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
            unknown_tracks: self.book.unknown_tracks,
            elapsed: self.start.elapsed(),
            times: StageTimes {
                decode: nanos(&counters.decode_ns),
                detect: self.detect_time,
                track: self.track_time,
                encode: nanos(&counters.encode_ns),
            },
        }
    }
}
