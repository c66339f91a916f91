//! The encoder stage: holds frames back one block, draws them with the track decisions made
//! meanwhile, and writes them (all of them, or only clips around unknown tracks).

use image::RgbImage;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Mutex;
use std::time::Instant;

use super::pipeline::{add, stop_requested, Counters};
use super::{Keep, OodAction, OpenSink, StreamOptions};
use crate::error::{Error, Result};
use crate::pipeline::Detection;
use crate::render::{annotate_in_place, Annotation};
use crate::video::ffmpeg::{FrameSink, Killer};

/// A detected box with its track.
pub(super) struct TrackedBox {
    pub(super) detection: Detection,
    pub(super) track: u64,
}

/// What the detector stage hands the encoder for one frame.
pub(super) struct Detected {
    pub(super) index: u64,
    pub(super) image: RgbImage,
    pub(super) boxes: Vec<TrackedBox>,
    /// Tracks found unknown while detecting this frame.
    pub(super) newly_unknown: Vec<u64>,
    /// Tracks that ended at this frame: (id, last frame).
    pub(super) ended: Vec<(u64, u64)>,
}

/// Whether a frame shows a box of an unknown track.
pub(super) fn shows_unknown(frame: &Detected, unknown: &HashSet<u64>) -> bool {
    frame.boxes.iter().any(|b| unknown.contains(&b.track))
}

/// Labels and draws one frame's boxes.
pub(super) fn render(
    mut frame: Detected,
    unknown: &HashSet<u64>,
    options: &StreamOptions,
) -> RgbImage {
    let mut annotations = Vec::new();
    for b in &frame.boxes {
        let d = &b.detection;
        let is_unknown = unknown.contains(&b.track);
        let name = if is_unknown && options.action == OodAction::Relabel {
            "unknown"
        } else {
            &d.class_name
        };
        if is_unknown && options.action == OodAction::Drop {
            continue;
        }
        annotations.push(Annotation {
            bbox: d.record.bbox,
            label: format!(
                "#{} {name} {:.2} · {}",
                b.track,
                d.record.confidence,
                crate::render::verdict_text(d.ood.p_value, is_unknown)
            ),
            class_id: d.record.class_id,
            ood_confidence: Some(d.ood.confidence),
            flagged: is_unknown && options.action == OodAction::Flag,
        });
    }
    annotate_in_place(&mut frame.image, &annotations, true);
    frame.image
}

/// Times the drawing of a frame.
fn draw(
    frame: Detected,
    unknown: &HashSet<u64>,
    options: &StreamOptions,
    counters: &Counters,
) -> RgbImage {
    let t0 = Instant::now();
    let image = render(frame, unknown, options);
    add(&counters.encode_ns, t0.elapsed());
    image
}

/// The output, opened when the first frame is written.
struct Writer<'a> {
    open_sink: Option<OpenSink<'a>>,
    sink: Option<FrameSink>,
    sink_killer: &'a Mutex<Option<Killer>>,
    counters: &'a Counters,
}

impl Writer<'_> {
    fn write(&mut self, image: &RgbImage) -> Result<()> {
        let t0 = Instant::now();
        if self.sink.is_none() {
            let open = self.open_sink.take().expect("the sink is opened once");
            let opened = open(image.dimensions())?;
            *self.sink_killer.lock().expect("sink killer") = Some(opened.killer());
            self.sink = Some(opened);
        }
        self.sink.as_mut().expect("opened").write(image)?;
        add(&self.counters.encode_ns, t0.elapsed());
        self.counters.written.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn finish(self) -> Result<()> {
        match self.sink {
            Some(s) => s.finish().map(|_| ()),
            None => Ok(()),
        }
    }
}

/// The encoder's state between frames.
struct Encoder<'a> {
    options: &'a StreamOptions,
    pad: usize,
    counters: &'a Counters,
    writer: Writer<'a>,
    unknown: HashSet<u64>,
    /// Ended unknown tracks leave the set once no frame still to be drawn can show them:
    /// (last frame, id).
    retiring: VecDeque<(u64, u64)>,
    /// With `Keep::Ood`: the last (at most `pad`) frames not written, the lead-in of a clip
    /// should the next frame show an unknown track; and how many frames the clip still runs
    /// after the last one that did.
    lead_in: VecDeque<Detected>,
    trail: usize,
    last_written: Option<RgbImage>,
    next_index: u64,
}

impl Encoder<'_> {
    /// Takes in the decisions a frame brings, as soon as it arrives.
    fn note_decisions(&mut self, frame: &Detected) {
        self.unknown.extend(frame.newly_unknown.iter().copied());
        let mut ended = frame.ended.clone();
        ended.sort_unstable_by_key(|&(_, last)| last);
        for (id, last) in ended {
            if self.unknown.contains(&id) {
                self.retiring.push_back((last, id));
            }
        }
    }

    /// Draws and writes a frame that leaves the hold, as `Keep` says.
    fn emit(&mut self, frame: Detected) -> Result<()> {
        let (options, counters) = (self.options, self.counters);
        let index = frame.index;
        match options.keep {
            Keep::All => {
                let image = draw(frame, &self.unknown, options, counters);
                // Frames dropped under load are stood in for by the previous frame.
                while self.next_index < index {
                    self.writer
                        .write(self.last_written.as_ref().unwrap_or(&image))?;
                    self.next_index += 1;
                }
                self.next_index = index + 1;
                self.writer.write(&image)?;
                if options.realtime {
                    self.last_written = Some(image);
                }
            }
            Keep::Ood if shows_unknown(&frame, &self.unknown) => {
                // The lead-in is drawn only now, so that a track found unknown since it was
                // detected is marked in it too.
                for earlier in self.lead_in.drain(..).chain([frame]) {
                    self.writer
                        .write(&draw(earlier, &self.unknown, options, counters))?;
                }
                self.trail = self.pad;
            }
            Keep::Ood if self.trail > 0 => {
                self.trail -= 1;
                self.writer
                    .write(&draw(frame, &self.unknown, options, counters))?;
            }
            Keep::Ood => {
                if self.pad > 0 {
                    if self.lead_in.len() == self.pad {
                        self.lead_in.pop_front();
                    }
                    self.lead_in.push_back(frame);
                }
            }
        }
        let horizon = self.lead_in.front().map_or(index + 1, |f| f.index);
        while self
            .retiring
            .front()
            .is_some_and(|&(last, _)| last < horizon)
        {
            let (_, id) = self.retiring.pop_front().expect("non-empty");
            self.unknown.remove(&id);
        }
        Ok(())
    }

    /// Writes the trailing frames dropped under load, and closes the output.
    fn finish(mut self) -> Result<()> {
        let counters = self.counters;
        if self.options.keep == Keep::All && counters.input_done.load(Ordering::Relaxed) {
            let total = counters.decoded.load(Ordering::Relaxed);
            if let Some(image) = self.last_written.take() {
                while self.next_index < total {
                    self.writer.write(&image)?;
                    self.next_index += 1;
                }
            }
        }
        self.writer.finish()
    }
}

/// The encoder thread: holds frames back one block (`delay` frames), draws them with the track
/// decisions made meanwhile, and writes them. In realtime mode a dropped frame is replaced by
/// the previous output frame, so the output keeps its length and timing. With `Keep::Ood` it
/// writes the frames that show an unknown track and the `pad` frames before and after each.
pub(super) fn encode(
    rx: Receiver<Detected>,
    open_sink: OpenSink,
    options: &StreamOptions,
    (delay, pad): (usize, usize),
    counters: &Counters,
    sink_killer: &Mutex<Option<Killer>>,
) -> Result<()> {
    let mut encoder = Encoder {
        options,
        pad,
        counters,
        writer: Writer {
            open_sink: Some(open_sink),
            sink: None,
            sink_killer,
            counters,
        },
        unknown: HashSet::new(),
        retiring: VecDeque::new(),
        lead_in: VecDeque::new(),
        trail: 0,
        last_written: None,
        next_index: 0,
    };
    let mut held: VecDeque<Detected> = VecDeque::new();
    for frame in rx.iter() {
        encoder.note_decisions(&frame);
        held.push_back(frame);
        while held.len() > delay {
            let out = held.pop_front().expect("non-empty");
            encoder.emit(out)?;
        }
    }
    if stop_requested(options) {
        // Dropping the sink unfinished kills its ffmpeg and removes the partial file.
        return Err(Error::Interrupted {
            frames: counters.detected.load(Ordering::Relaxed),
        });
    }
    while let Some(out) = held.pop_front() {
        encoder.emit(out)?;
    }
    encoder.finish()
}
