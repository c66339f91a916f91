//! `oodbox video` on synthetic videos with ground truth, and on bad input. Needs ffmpeg on PATH
//! (`.ci/run` installs it).

use image::RgbImage;
use oodbox::ood::calibration::PValue;
use oodbox::synth::video::{SynthVideo, SynthVideoConfig, TruthObject, Visitors};
use oodbox::synth::world::{Group, Kind};
use oodbox::video::calibration::TrackCalibration;
use oodbox::video::evidence::{TrackEvidence, TrackRule};
use oodbox::video::ffmpeg::{Codec, FrameSink, FrameSource, SourceOptions};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/shapes.safetensors");
const SCORER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/shapes-scorer.safetensors"
);

#[path = "../examples/filter_stream.rs"]
#[allow(dead_code)] // its `main` is the example's entry point
mod filter_stream_example;

fn video_command(input: &str, output: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_oodbox"));
    command
        .args(["video", "--model", MODEL, "--scorer", SCORER, "--quiet"])
        .args(["--input", input, "--output", output])
        .args(extra);
    command
}

/// Runs `command` with `bytes` on its stdin, then closed.
fn run_fed(mut command: Command, bytes: &[u8]) -> (Output, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // ffmpeg may stop reading early when it refuses the input.
    let _ = child.stdin.take().unwrap().write_all(bytes);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// Runs the ffmpeg tool with `args`, which must succeed (to make test inputs).
fn ffmpeg(args: &[&str]) {
    let (out, stderr) = run({
        let mut command = Command::new("ffmpeg");
        command.args(["-v", "error"]).args(args);
        command
    });
    assert!(out.status.success(), "ffmpeg {args:?}: {stderr}");
}

fn run(mut command: Command) -> (Output, String) {
    let out = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stderr)
}

/// Writes a lossless video and returns each frame's ground truth.
fn write_video(path: &Path, config: SynthVideoConfig) -> Vec<Vec<TruthObject>> {
    let frames = config.frames;
    let (size, fps) = ((config.width, config.height), config.fps);
    let mut video = SynthVideo::new(config);
    let mut sink =
        FrameSink::create(path.to_str().unwrap(), size, fps, Codec::Lossless, None).unwrap();
    let mut truth = Vec::new();
    for f in 0..frames {
        let (image, objects) = video.frame(f);
        sink.write(&image).unwrap();
        truth.push(objects);
    }
    sink.finish().unwrap();
    truth
}

/// Frame count, frame rate and size of a video, read back through ffmpeg.
fn decode_all(path: &Path) -> (u64, f64, (u32, u32)) {
    let options = SourceOptions::default();
    let mut source = FrameSource::open(path.to_str().unwrap(), &options).unwrap();
    let (mut n, mut size) = (0, (0, 0));
    while let Some(frame) = source.next_frame().unwrap() {
        size = frame.image.dimensions();
        n += 1;
    }
    (n, source.fps(), size)
}

fn read_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

/// The ground-truth object an event's most unusual box lies on.
fn event_object(event: &Value, truth: &[Vec<TruthObject>]) -> Option<(usize, Group)> {
    let frame = event["bbox_frame"].as_u64().unwrap() as usize;
    let bbox: Vec<f32> = serde_json::from_value(event["bbox"].clone()).unwrap();
    let bbox = [bbox[0], bbox[1], bbox[2], bbox[3]];
    truth[frame]
        .iter()
        .map(|o| (iou(o.bbox, bbox), o))
        .filter(|(overlap, _)| *overlap >= 0.3)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, o)| (o.id, o.group))
}

/// Per object: its group and the first and last frame it is visible in.
fn visibility(truth: &[Vec<TruthObject>]) -> BTreeMap<usize, (Group, u64, u64)> {
    let mut seen = BTreeMap::new();
    for (f, objects) in truth.iter().enumerate() {
        for o in objects {
            seen.entry(o.id).or_insert((o.group, f as u64, f as u64)).2 = f as u64;
        }
    }
    seen
}

/// The smallest k with P(Binomial(n, p) > k) < 1%: more events than this on n known-object
/// tracks would be evidence that the rate exceeds p.
fn binomial_upper(n: usize, p: f64) -> usize {
    let mut cdf = 0.0;
    let mut term = (1.0 - p).powi(n as i32);
    for k in 0..=n {
        cdf += term;
        if cdf >= 0.99 {
            return k;
        }
        term *= (n - k) as f64 / (k + 1) as f64 * p / (1.0 - p);
    }
    n
}

/// A box the video command reported (`--detections`).
struct ReportedBox {
    bbox: [f32; 4],
    p_value: f64,
}

/// Per frame, the boxes the video command reported.
fn read_boxes(path: &Path) -> Vec<Vec<ReportedBox>> {
    read_events(path)
        .iter()
        .map(|frame| {
            frame["boxes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| {
                    let bbox: Vec<f32> = serde_json::from_value(b["bbox"].clone()).unwrap();
                    ReportedBox {
                        bbox: [bbox[0], bbox[1], bbox[2], bbox[3]],
                        p_value: b["ood"]["p_value"].as_f64().unwrap(),
                    }
                })
                .collect()
        })
        .collect()
}

/// The track rule applied to one ground-truth object's own boxes, as if tracking were perfect:
/// per frame, the boxes on it (IoU >= 0.5) give the smallest p-value times their number, and
/// frames where it overlaps another object count as no evidence, as in the video command.
fn oracle_p_value(
    id: usize,
    truth: &[Vec<TruthObject>],
    boxes: &[Vec<ReportedBox>],
    rule: &TrackRule,
) -> f64 {
    let mut evidence = TrackEvidence::default();
    for (objects, reported) in truth.iter().zip(boxes) {
        let Some(object) = objects.iter().find(|o| o.id == id) else {
            continue;
        };
        if objects
            .iter()
            .any(|o| o.id != id && iou(o.bbox, object.bbox) > 0.05)
        {
            continue;
        }
        let on: Vec<f64> = reported
            .iter()
            .filter(|b| iou(b.bbox, object.bbox) >= 0.5)
            .map(|b| b.p_value)
            .collect();
        if let Some(p_min) = on.iter().copied().min_by(f64::total_cmp) {
            let p = (p_min * on.len() as f64).min(1.0);
            // The demo scorer has no tail: every p-value is conformal.
            let extrapolated = false;
            evidence.push(PValue { p, extrapolated }, rule);
        }
    }
    evidence.p_value()
}

/// Known shapes drifting, unknown ones (far-OOD: blobs and pixel-noise patches) entering,
/// staying 1–2 s, and leaving. A track rule can only combine the evidence the per-box scorer
/// gives, so the claim checked is about the pipeline (detection, tracking, grouping, events):
/// every unknown object that lasts at least 1 s, and whose own boxes would make it unknown
/// under the track rule at half the configured alpha (perfect tracking, an oracle), yields an
/// event. How many of all the lasting unknowns are reported is printed; BENCHMARKS.md has the
/// figures on longer videos.
#[test]
fn every_lasting_unknown_object_yields_an_event_and_the_output_keeps_frames_and_rate() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    let fps = 10.0;
    let track_alpha = 0.1;
    let truth = write_video(
        &input,
        SynthVideoConfig {
            fps,
            id_objects: 2,
            ..blobs_and_noise_patches(130, 2.5, (1.0, 2.0))
        },
    );
    let output = dir.path().join("out.mp4");
    let events_path = dir.path().join("events.jsonl");
    let boxes_path = dir.path().join("boxes.jsonl");
    let crops = dir.path().join("crops");
    let (out, stderr) = run(video_command(
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        &[
            "--events",
            events_path.to_str().unwrap(),
            "--detections",
            boxes_path.to_str().unwrap(),
            "--crops",
            crops.to_str().unwrap(),
            "--track-alpha",
            &track_alpha.to_string(),
        ],
    ));
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stderr}");

    assert_eq!(decode_all(&output), (130, fps, (256, 256)));

    let events = read_events(&events_path);
    let boxes = read_boxes(&boxes_path);
    assert_eq!(boxes.len(), 130);
    let matched: Vec<Option<(usize, Group)>> =
        events.iter().map(|e| event_object(e, &truth)).collect();
    let oracle_rule = TrackRule::new(track_alpha / 2.0, 1.0, fps);
    let (mut lasting, mut evident, mut caught) = (0, 0, 0);
    for (id, (group, first, last)) in visibility(&truth) {
        if group == Group::Id || ((last - first + 1) as f64) < fps {
            continue;
        }
        lasting += 1;
        let oracle = oracle_p_value(id, &truth, &boxes, &oracle_rule);
        let event = matched.iter().position(|m| *m == Some((id, group)));
        caught += event.is_some() as usize;
        eprintln!(
            "unknown object {id}: frames {first}..={last}, oracle track p-value {oracle:.4}, \
             event {}",
            event.is_some()
        );
        if oracle > oracle_rule.alpha {
            continue;
        }
        evident += 1;
        assert!(
            event.is_some(),
            "unknown object {id} (frames {first}..={last}, oracle p {oracle}) has no event: \
             {events:?}"
        );
        let e = &events[event.unwrap()];
        // Frames count from 0; times are frames / fps.
        let (ef, el) = (
            e["first_frame"].as_u64().unwrap(),
            e["last_frame"].as_u64().unwrap(),
        );
        assert!(first <= el && ef <= last, "{e} vs {first}..={last}");
        assert_eq!(e["first_time_s"].as_f64().unwrap(), ef as f64 / fps);
        assert_eq!(e["last_time_s"].as_f64().unwrap(), el as f64 / fps);
        assert!(e["ood_confidence"].as_f64().unwrap() >= 1.0 - track_alpha);
        assert!(e["class_name"].is_string());
        let crop = image::open(e["crop"].as_str().unwrap()).unwrap();
        assert!(crop.width() > 4 && crop.height() > 4);
    }
    let id_events = matched
        .iter()
        .filter(|m| matches!(m, Some((_, Group::Id))))
        .count();
    eprintln!(
        "{caught} of {lasting} lasting unknown objects reported ({evident} evident to the \
         oracle); {id_events} events on the 2 known objects"
    );
    assert!(evident >= 1, "the video should hold an evident unknown");
    assert!(id_events <= binomial_upper(2, track_alpha));
}

/// Seed 3 with far-OOD visitors (blobs and noise patches, which the fixture scorer flags)
/// entering every `every_s` seconds and staying `stay_s`.
fn blobs_and_noise_patches(frames: u64, every_s: f64, stay_s: (f64, f64)) -> SynthVideoConfig {
    SynthVideoConfig {
        seed: 3,
        frames,
        visitors: vec![Visitors {
            kinds: vec![Kind::Blob, Kind::NoisePatch],
            every_s,
            stay_s,
        }],
        ..Default::default()
    }
}

/// Known objects only: four present throughout and one entering every second, as in footage
/// of a scene with no unknowns.
fn known_footage(seed: u64, seconds: u64) -> SynthVideoConfig {
    SynthVideoConfig {
        seed,
        frames: seconds * 10,
        id_objects: 4,
        visitors: vec![Visitors {
            kinds: Kind::ID.to_vec(),
            every_s: 1.0,
            stay_s: (1.0, 2.5),
        }],
        ..Default::default()
    }
}

/// `--fit-tracks` on footage of known objects, then `--track-calibration` on other footage:
/// events on known objects stay within the configured rate, and the calibrated rule reports
/// more of the lasting far-OOD unknowns than the distribution-free one. A calibration for
/// another setting is refused, alone or merged with others. (No oracle claim here: a scribble
/// is often boxed in pieces that become overlapping tracks, whose frames the pipeline counts
/// as no evidence, so a scribble evident on its own boxes can still go unreported.)
#[test]
fn a_track_calibration_from_known_footage_holds_alpha_and_reports_more_unknowns() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let alpha = 0.05;
    write_video(Path::new(&path("fit.mkv")), known_footage(41, 90));
    let calibration = path("tracks.json");
    let (out, stderr) = run(video_command(
        &path("fit.mkv"),
        &path("fit_out.mp4"),
        &["--fit-tracks", &calibration],
    ));
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stderr}");
    let fitted: Value =
        serde_json::from_str(&std::fs::read_to_string(&calibration).unwrap()).unwrap();
    let statistics: Vec<f64> = serde_json::from_value(fitted["statistics"].clone()).unwrap();
    assert!(statistics.len() >= 100, "{}", statistics.len());

    // Known objects only, another seed: every event is a false alarm.
    let truth = write_video(Path::new(&path("known.mkv")), known_footage(42, 40));
    let (out, stderr) = run(video_command(
        &path("known.mkv"),
        &path("known_out.mp4"),
        &[
            "--track-calibration",
            &calibration,
            "--events",
            &path("known.jsonl"),
        ],
    ));
    assert!(out.status.success(), "{stderr}");
    let tracks: usize = stderr
        .split(" tracks,")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no track count in {stderr}"));
    let events = read_events(Path::new(&path("known.jsonl"))).len();
    eprintln!(
        "{events} events on {tracks} tracks of {} known objects (alpha {alpha})",
        visibility(&truth).len()
    );
    assert!(tracks >= 50, "{tracks}");
    assert!(
        events <= binomial_upper(tracks, alpha),
        "{events} of {tracks}"
    );

    // Far-OOD unknowns entering among two known objects, with and without the calibration.
    let far = SynthVideoConfig {
        seed: 43,
        frames: 400,
        id_objects: 2,
        visitors: vec![Visitors {
            kinds: Kind::FAR_OOD.to_vec(),
            every_s: 2.5,
            stay_s: (1.0, 2.5),
        }],
        ..Default::default()
    };
    let truth = write_video(Path::new(&path("far.mkv")), far);
    let mut caught = BTreeMap::new();
    let far_boxes = path("far_boxes.jsonl");
    let far_out = path("far_out.mp4");
    for calibrated in [false, true] {
        let events = path(&format!("far_{calibrated}.jsonl"));
        let mut extra = vec!["--events", &events, "--detections", &far_boxes];
        if calibrated {
            // At alpha 0.05 a track tail changes no decision, only p-values below 1/(N+1).
            extra.extend(["--track-calibration", &calibration, "--track-tail"]);
        }
        let (out, stderr) = run(video_command(&path("far.mkv"), &far_out, &extra));
        assert!(out.status.success(), "{stderr}");
        let events = read_events(Path::new(&events));
        if calibrated {
            let tail_said = ["track tail over", "track p-values stay plain conformal"];
            assert!(tail_said.iter().any(|s| stderr.contains(s)), "{stderr}");
            let floor = 1.0 / (statistics.len() + 1) as f64;
            for e in events
                .iter()
                .filter(|e| e["p_value"].as_f64().unwrap() < floor)
            {
                assert_eq!(e["p_value_rests_on_tail"], true, "{e}");
            }
        }
        let objects: BTreeSet<usize> = events
            .iter()
            .filter_map(|e| event_object(e, &truth).map(|(id, _)| id))
            .collect();
        caught.insert(calibrated, objects);
    }
    let boxes = read_boxes(Path::new(&far_boxes));
    let c = TrackCalibration::load(Path::new(&calibration)).unwrap();
    let oracle_rule = TrackRule {
        calibration: Some(std::sync::Arc::new(c)),
        ..TrackRule::new(alpha, 1.0, 10.0)
    };
    let (mut lasting, mut evident) = (0, 0);
    let [mut with_plain, mut with_calibrated] = [0, 0];
    for (id, (group, first, last)) in visibility(&truth) {
        if group == Group::Id || last - first + 1 < 10 {
            continue;
        }
        lasting += 1;
        with_plain += caught[&false].contains(&id) as usize;
        with_calibrated += caught[&true].contains(&id) as usize;
        evident += (oracle_p_value(id, &truth, &boxes, &oracle_rule) <= alpha) as usize;
    }
    eprintln!(
        "lasting far-OOD unknowns: {lasting}; reported {with_plain} without the calibration, \
         {with_calibrated} with it ({evident} evident to the calibrated oracle)"
    );
    assert!(with_calibrated > with_plain);

    calibrations_for_other_settings_are_refused(dir.path(), &calibration, &fitted);
}

/// A track calibration is refused for another block length, and merged only with
/// calibrations of its own setting: one fitted at another conf is refused, naming its file.
fn calibrations_for_other_settings_are_refused(dir: &Path, calibration: &str, fitted: &Value) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // Another frame rate or block length is another setting.
    let (out, stderr) = run(video_command(
        &path("far.mkv"),
        &path("refused.mp4"),
        &["--track-calibration", calibration, "--min-duration", "2"],
    ));
    assert!(!out.status.success());
    assert!(
        stderr.contains("tracks.json") && stderr.contains("blocks of 10 frames"),
        "{stderr}"
    );
    assert!(!Path::new(&path("refused.mp4")).exists());
    // A track tail needs a track calibration.
    let (out, stderr) = run(video_command(
        &path("far.mkv"),
        &path("refused.mp4"),
        &["--track-tail"],
    ));
    assert!(!out.status.success());
    assert!(stderr.contains("--track-calibration"), "{stderr}");
    // Calibrations are merged only if they share the setting: one fitted at another conf is
    // refused, naming its file.
    let mut other = fitted.clone();
    other["setting"]["conf"] = serde_json::json!(0.1);
    std::fs::write(path("other.json"), other.to_string()).unwrap();
    let (out, stderr) = run(video_command(
        &path("far.mkv"),
        &path("refused.mp4"),
        &[
            "--track-calibration",
            calibration,
            "--track-calibration",
            &path("other.json"),
        ],
    ));
    assert!(!out.status.success());
    assert!(
        stderr.contains("other.json") && stderr.contains("conf 0.1"),
        "{stderr}"
    );
}

/// Only known objects: five present throughout and one entering every second. Every event is
/// a false alarm; there should be at most about alpha of the known tracks.
#[test]
fn known_object_tracks_raise_events_at_most_at_the_configured_rate() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("id.mkv");
    let truth = write_video(
        &input,
        SynthVideoConfig {
            seed: 11,
            frames: 100,
            id_objects: 5,
            visitors: vec![Visitors {
                kinds: Kind::ID.to_vec(),
                every_s: 1.0,
                stay_s: (1.0, 2.0),
            }],
            ..Default::default()
        },
    );
    let objects = visibility(&truth).len();
    let events_path = dir.path().join("events.jsonl");
    let output = dir.path().join("ood_only.mkv");
    let alpha = 0.05;
    let (out, stderr) = run(video_command(
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        &[
            "--events",
            events_path.to_str().unwrap(),
            "--keep",
            "ood",
            "--track-alpha",
            &alpha.to_string(),
        ],
    ));
    assert!(out.status.success(), "{stderr}");
    eprintln!("{stderr}");
    let events = read_events(&events_path).len();
    eprintln!("{events} events on {objects} known objects (alpha {alpha})");
    assert!(objects >= 12, "{objects}");
    assert!(
        events <= binomial_upper(objects, alpha),
        "{events} of {objects}"
    );
    // --keep ood writes only frames that show an unknown track: none without events.
    assert_eq!(output.exists(), events > 0);
}

fn tiny_frames(n: usize, size: (u32, u32)) -> Vec<RgbImage> {
    let mut video = SynthVideo::new(SynthVideoConfig {
        width: size.0,
        height: size.1,
        frames: n as u64,
        ..Default::default()
    });
    (0..n as u64).map(|f| video.frame(f).0).collect()
}

/// Writes `frames` as a lossless video.
fn write_frames(path: &Path, frames: &[RgbImage], fps: f64) {
    let size = frames[0].dimensions();
    let mut sink =
        FrameSink::create(path.to_str().unwrap(), size, fps, Codec::Lossless, None).unwrap();
    for frame in frames {
        sink.write(frame).unwrap();
    }
    sink.finish().unwrap();
}

fn ppm(image: &RgbImage) -> Vec<u8> {
    let mut bytes = format!("P6\n{} {}\n255\n", image.width(), image.height()).into_bytes();
    bytes.extend_from_slice(image.as_raw());
    bytes
}

/// `--low-latency` skips ffmpeg's long probe of a piped input (BENCHMARKS.md has the time to
/// the first frame); every frame still comes through, from a video container streamed in
/// (MPEG-TS with H.264, raw NUT) or from concatenated images.
#[test]
fn low_latency_pipes_keep_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let frames = tiny_frames(12, (96, 64));
    let lossless = dir.path().join("in.mkv");
    write_frames(&lossless, &frames, 5.0);
    let stream = |format: &[&str]| {
        let out = Command::new("ffmpeg")
            .args(["-hide_banner", "-loglevel", "error", "-i"])
            .arg(&lossless)
            .args(format)
            .arg("-")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let mpegts = stream(&["-f", "mpegts", "-c:v", "libx264", "-tune", "zerolatency"]);
    let inputs = [
        ("mpegts", mpegts.clone(), vec![]),
        (
            "nut",
            stream(&["-f", "nut", "-c:v", "rawvideo", "-pix_fmt", "rgb24"]),
            vec![],
        ),
        (
            "ppm",
            frames.iter().flat_map(ppm).collect(),
            vec!["--fps", "5"],
        ),
    ];
    let pipe = |bytes: &[u8], output: &Path, extra: &[&str]| {
        let (out, stderr) = run_fed(video_command("-", output.to_str().unwrap(), extra), bytes);
        (out.status.success(), stderr)
    };
    for (name, bytes, extra) in inputs {
        let output = dir.path().join(format!("{name}.mkv"));
        let (ok, stderr) = pipe(&bytes, &output, &[&["--low-latency"], &extra[..]].concat());
        assert!(ok, "{name}: {stderr}");
        assert_eq!(decode_all(&output), (12, 5.0, (96, 64)), "{name}: {stderr}");
    }
    let (ok, stderr) = pipe(&mpegts, &dir.path().join("refused.mkv"), &["--fps", "5"]);
    assert!(
        !ok && stderr.contains(
            "a frame rate is set only for image sequences and image pipes; this input has its own"
        ),
        "{stderr}"
    );
}

/// Serves `body` over HTTP/1.0 on a local port, to every connection, and returns its URL.
/// With `cut`, the connection closes after that many bytes: a stream that drops. With
/// `Some(0)` nothing is sent and the connection stays open: a server that froze.
fn serve_http(body: Vec<u8>, cut: Option<usize>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/camera.mkv", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            if cut == Some(0) {
                std::thread::sleep(Duration::from_secs(120));
                continue;
            }
            let sent = &body[..cut.unwrap_or(body.len())];
            let header = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: video/x-matroska\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            // The reader may hang up early; that is its business.
            let _ = stream
                .write_all(header.as_bytes())
                .and_then(|_| stream.write_all(sent));
        }
    });
    url
}

/// A stream URL (here http://, as a camera or a media server gives): every frame is read, at
/// its frame rate; a connection that drops mid-stream, like a truncated file, is reported
/// after the frames before it (ffmpeg itself ends such a read with success).
#[test]
fn a_stream_url_is_read_and_a_dropped_connection_or_truncated_file_reported() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("camera.mkv");
    write_frames(&input, &tiny_frames(20, (96, 64)), 5.0);
    let body = std::fs::read(&input).unwrap();
    let output = dir.path().join("out.mkv");
    let url = serve_http(body.clone(), None);
    let (out, stderr) = run(video_command(&url, output.to_str().unwrap(), &[]));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(decode_all(&output), (20, 5.0, (96, 64)));

    let truncated = dir.path().join("truncated.mkv");
    std::fs::write(&truncated, &body[..body.len() / 2]).unwrap();
    for input in [
        serve_http(body.clone(), Some(body.len() / 2)),
        truncated.to_str().unwrap().to_string(),
    ] {
        let (out, stderr) = run(video_command(&input, output.to_str().unwrap(), &[]));
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("the input stopped early") && stderr.contains("prematurely"),
            "{stderr}"
        );
        let (frames, fps, size) = decode_all(&output);
        assert!((5..20).contains(&frames), "{frames} frames written");
        assert_eq!((fps, size), (5.0, (96, 64)));
    }
}

/// An RTSP stream, as IP cameras and media servers give: here oodbox's ffmpeg listens (the
/// `rtsp_flags=listen` input option) and a second ffmpeg publishes 20 frames to it over TCP;
/// every frame comes through, at the stream's rate and size.
#[test]
fn an_rtsp_stream_is_read_as_it_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("camera.mkv");
    write_frames(&input, &tiny_frames(20, (96, 64)), 5.0);
    let output = dir.path().join("out.mkv");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("rtsp://127.0.0.1:{port}/camera");
    let filter = video_command(
        &url,
        output.to_str().unwrap(),
        &["--input-option", "rtsp_flags=listen"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // The publisher is refused until the filter's ffmpeg listens.
    let started = Instant::now();
    loop {
        let published = Command::new("ffmpeg")
            .args(["-v", "error", "-re", "-i", input.to_str().unwrap()])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-tune",
                "zerolatency",
            ])
            .args(["-rtsp_transport", "tcp", "-f", "rtsp", &url])
            .output()
            .unwrap();
        if published.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "publishing failed: {}",
            String::from_utf8_lossy(&published.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = filter.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(decode_all(&output), (20, 5.0, (96, 64)));
}

/// Starts `command` with `bytes` written to its stdin, which stays open (the caller holds it).
fn spawn_fed(
    mut command: Command,
    bytes: &[u8],
) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = command
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(bytes).unwrap();
    stdin.flush().unwrap();
    (child, stdin)
}

/// Waits (at most 60 s from `start`) for a child whose stdin the caller holds open to end by
/// itself, after `what`; returns its status and stderr.
fn wait_with_input_open(
    child: &mut std::process::Child,
    start: Instant,
    what: &str,
) -> (std::process::ExitStatus, String) {
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "still running after {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

/// `--stall-timeout`: an input that sends nothing while a frame is awaited (a frozen camera, a
/// stalled pipe, a server that never answers) is given up with a message saying so, and the
/// frames before it are written; a slow detector holding frames back does not count as a
/// stall.
#[test]
fn a_stalled_input_is_given_up_after_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.mkv");
    let frames: Vec<u8> = tiny_frames(20, (96, 64)).iter().flat_map(ppm).collect();
    let (mut child, stdin) = spawn_fed(
        video_command(
            "-",
            output.to_str().unwrap(),
            &["--fps", "5", "--low-latency", "--stall-timeout", "1"],
        ),
        &frames,
    );
    // The pipe stays open, silent, until the process has ended by itself.
    let (status, stderr) = wait_with_input_open(&mut child, Instant::now(), "stalled");
    drop(stdin);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("nothing came for 1.0 s (stall timeout)"),
        "{stderr}"
    );
    // ffmpeg's image-pipe reader holds the last image until the next one starts.
    let (written, fps, size) = decode_all(&output);
    assert!((19..=20).contains(&written), "{written} frames");
    assert_eq!((fps, size), (5.0, (96, 64)));

    let url = serve_http(Vec::new(), Some(0));
    let (out, stderr) = run(video_command(
        &url,
        output.to_str().unwrap(),
        &["--stall-timeout", "1"],
    ));
    assert!(!out.status.success());
    assert!(
        stderr.contains("opening it: nothing came for 1.0 s"),
        "{stderr}"
    );

    // The reader of the output pauses for 3 s, which holds every stage back: not a stall.
    let input = dir.path().join("in.mkv");
    write_frames(&input, &tiny_frames(40, (256, 256)), 10.0);
    let child = video_command(
        input.to_str().unwrap(),
        "-",
        &["--stall-timeout", "1", "--queue", "1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let piped = dir.path().join("piped.nut");
    std::fs::write(&piped, &out.stdout).unwrap();
    assert_eq!(decode_all(&piped).0, 40);
}

/// `--input-option` passes ffmpeg input options: here raw RGB frames on stdin, which carry
/// no header, described by their format, size and rate. An option ffmpeg does not know is
/// refused with ffmpeg's words.
#[test]
fn input_options_read_raw_frames_from_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.mkv");
    let frames = tiny_frames(12, (96, 64));
    let raw: Vec<u8> = frames.iter().flat_map(|f| f.as_raw().clone()).collect();
    let options = [
        "f=rawvideo",
        "pixel_format=rgb24",
        "video_size=96x64",
        "framerate=5",
    ];
    let mut extra = Vec::new();
    for option in options {
        extra.extend(["--input-option", option]);
    }
    let (out, stderr) = run_fed(video_command("-", output.to_str().unwrap(), &extra), &raw);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(decode_all(&output), (12, 5.0, (96, 64)));

    let again = dir.path().join("again.mkv");
    for (option, message) in [
        ("no_such_option=1", "no_such_option"),
        ("rtsp_transport", "expected NAME=VALUE"),
    ] {
        let (out, stderr) = run(video_command(
            output.to_str().unwrap(),
            again.to_str().unwrap(),
            &["--input-option", option],
        ));
        assert!(!out.status.success());
        assert!(stderr.contains(message), "{stderr}");
    }
}

#[test]
fn odd_frame_sizes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("odd.mkv");
    write_frames(&input, &tiny_frames(3, (67, 45)), 5.0);
    let output = dir.path().join("odd_out.mp4");
    let (out, stderr) = run(video_command(
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        &["--ood-action", "relabel"],
    ));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(decode_all(&output), (3, 5.0, (67, 45)));
}

#[test]
fn a_corrupt_frame_is_reported_and_the_rest_written() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for (i, frame) in tiny_frames(4, (64, 48)).iter().enumerate() {
        frame.save(frames.join(format!("f{i:03}.png"))).unwrap();
    }
    std::fs::write(frames.join("f002.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let output = dir.path().join("out.mkv");
    let pattern = frames.join("f%03d.png");
    let (out, stderr) = run(video_command(
        pattern.to_str().unwrap(),
        output.to_str().unwrap(),
        &["--fps", "4"],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not decode 1 frame"), "{stderr}");
    // ffmpeg stands in the previous frame for the corrupt one, so the timing holds.
    assert_eq!(decode_all(&output), (4, 4.0, (64, 48)));
}

/// Two MPEG-TS recordings spliced into one stream, the second at another size, as a camera
/// that restarts or switches resolution gives: ffmpeg flags the packet at the splice as
/// corrupt and decodes on. That is warned about (exit 1), not taken for the input stopping;
/// every frame is processed, those after the switch scaled to the first size.
#[test]
fn a_spliced_stream_is_warned_about_and_every_frame_processed() {
    let dir = tempfile::tempdir().unwrap();
    let mut spliced = Vec::new();
    for (part, size) in [(0, (96, 64)), (1, (128, 96))] {
        let lossless = dir.path().join(format!("part{part}.mkv"));
        write_frames(&lossless, &tiny_frames(10, size), 5.0);
        let ts = dir.path().join(format!("part{part}.ts"));
        ffmpeg(&[
            "-i",
            lossless.to_str().unwrap(),
            "-c:v",
            "libx264",
            "-f",
            "mpegts",
            ts.to_str().unwrap(),
        ]);
        spliced.extend(std::fs::read(&ts).unwrap());
    }
    let input = dir.path().join("spliced.ts");
    std::fs::write(&input, spliced).unwrap();
    let output = dir.path().join("out.mkv");
    let (out, stderr) = run(video_command(
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        &[],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("flagged 1 corrupt input packet") && !stderr.contains("stopped early"),
        "{stderr}"
    );
    assert_eq!(decode_all(&output), (20, 5.0, (96, 64)));
}

#[test]
fn a_stream_ending_mid_frame_is_reported_after_the_whole_frames() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.mkv");
    let mut bytes = Vec::new();
    for frame in tiny_frames(3, (64, 48)) {
        bytes.extend(ppm(&frame));
    }
    bytes.truncate(bytes.len() - 1000);
    let (out, stderr) = run_fed(
        video_command("-", output.to_str().unwrap(), &["--fps", "5"]),
        &bytes,
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not decode 1 frame"), "{stderr}");
    assert_eq!(decode_all(&output), (2, 5.0, (64, 48)));
}

#[cfg(unix)]
#[test]
fn ffmpeg_exiting_early_is_an_error_and_the_frames_before_are_written() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // A decoder that prints its stream, sends one frame and half of the next, then dies;
    // encoding goes to the real ffmpeg.
    let frame = dir.path().join("frame.ppm");
    std::fs::write(&frame, ppm(&tiny_frames(1, (64, 48))[0])).unwrap();
    let script = dir.path().join("ffmpeg");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$*\" in *image2pipe*) ;; *) exec ffmpeg \"$@\";; esac\n\
             echo 'Input #0, rawvideo, from x:' >&2\n\
             echo '  Stream #0:0: Video: rawvideo, rgb24, 64x48, 5 fps, 5 tbr' >&2\n\
             cat '{0}'\nhead -c 5000 '{0}'\necho 'Conversion failed!' >&2\nexit 1\n",
            frame.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let input = dir.path().join("camera.mp4");
    std::fs::write(&input, b"never read: the fake decoder ignores it").unwrap();
    let output = dir.path().join("out.mkv");
    let mut command = video_command(input.to_str().unwrap(), output.to_str().unwrap(), &[]);
    command.env("OODBOX_FFMPEG", &script);
    let (out, stderr) = run(command);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the input stopped early"), "{stderr}");
    assert!(
        stderr.contains("frame 1: the stream ended mid-frame"),
        "{stderr}"
    );
    assert!(stderr.contains("Conversion failed!"), "{stderr}");
    assert_eq!(decode_all(&output), (1, 5.0, (64, 48)));
}

#[test]
fn an_input_without_video_is_refused_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sound.m4a");
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=duration=1",
        input.to_str().unwrap(),
    ]);
    let output = dir.path().join("out.mp4");
    let (out, stderr) = run(video_command(
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        &[],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("sound.m4a: it has no video stream"),
        "{stderr}"
    );
    assert!(!output.exists());
}

/// Checked before the input is opened, which for a stream may take a while.
#[test]
fn an_output_in_a_missing_folder_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("missing").join("out.mp4");
    let (out, stderr) = run(video_command(
        "rtsp://127.0.0.1:9/never-opened",
        output.to_str().unwrap(),
        &[],
    ));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("out.mp4: its folder") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

#[test]
fn zero_length_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let output = dir.path().join("out.mp4");
    let (out, stderr) = run(video_command(
        empty.to_str().unwrap(),
        output.to_str().unwrap(),
        &[],
    ));
    assert!(!out.status.success());
    assert!(stderr.contains("empty.mp4: the file is empty"), "{stderr}");
    assert!(!output.exists());

    let mut command = video_command("-", output.to_str().unwrap(), &[]);
    let out = command.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("-: ffmpeg cannot read it"), "{stderr}");
    assert!(!output.exists());
}

#[test]
fn missing_ffmpeg_names_the_install_command() {
    let mut command = video_command("in.mp4", "out.mp4", &[]);
    command.env("OODBOX_FFMPEG", "/nonexistent/ffmpeg");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.mp4"), b"x").unwrap();
    command.current_dir(dir.path());
    let (out, stderr) = run(command);
    assert!(!out.status.success());
    assert!(stderr.contains("was not found"), "{stderr}");
    assert!(stderr.contains("apt-get install ffmpeg"), "{stderr}");
}

/// Frames arriving faster than detection: `--realtime` drops some, says how many, and the
/// output keeps every frame slot (a dropped frame is stood in for by the previous one).
#[test]
fn realtime_drops_frames_under_load_and_keeps_the_timing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("fast.mkv");
    // 2 ms a frame: faster than detection on any CPU, so some frames must be dropped.
    write_frames(&input, &tiny_frames(25, (64, 48)), 500.0);
    let output = dir.path().join("out.mkv");
    let (out, stderr) = run(video_command(
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        &["--realtime", "--queue", "1"],
    ));
    assert!(out.status.success(), "{stderr}");
    let dropped: u64 = stderr
        .split(" dropped")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in: {stderr}"));
    assert!(dropped > 0 && dropped < 25, "{stderr}");
    assert_eq!(decode_all(&output), (25, 500.0, (64, 48)));
}

/// The library example `examples/filter_stream.rs`, on a short synthetic video: every frame is
/// written, and the events it hands over are the unknown tracks the report counts.
#[test]
fn the_filter_stream_example_filters_a_video() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    write_video(&input, blobs_and_noise_patches(30, 1.0, (1.0, 2.0)));
    let output = dir.path().join("out.mp4");
    let mut events = Vec::new();
    let report = filter_stream_example::filter_file(
        MODEL,
        SCORER,
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        |e| events.push(e.clone()),
    )
    .unwrap();
    assert!(report.input_error.is_none());
    assert_eq!(report.progress.written, 30);
    assert_eq!(report.events, events.len());
    assert!(events.iter().all(|e| e.first_frame <= e.last_frame));
    assert_eq!(decode_all(&output), (30, 10.0, (256, 256)));
}

/// An alert agrees with its track's event: same start and decision, a p-value under alpha, a
/// crop of its own, and wall-clock times in order, no earlier than `started`.
fn check_alert(alert: &Value, events: &[Value], started: std::time::SystemTime) {
    let event = events
        .iter()
        .find(|e| e["track_id"] == alert["track_id"])
        .unwrap_or_else(|| panic!("no event for {alert}"));
    for key in ["first_frame", "first_time_s", "decided_frame"] {
        assert_eq!(alert[key], event[key], "{key}: {alert} vs {event}");
    }
    let decided = alert["decided_frame"].as_u64().unwrap();
    assert!(decided <= event["last_frame"].as_u64().unwrap());
    assert_eq!(
        alert["decided_time_s"].as_f64().unwrap(),
        decided as f64 / 10.0
    );
    let p = alert["p_value"].as_f64().unwrap();
    assert!(p <= 0.05, "{alert}");
    assert_eq!(alert["ood_confidence"].as_f64().unwrap(), 1.0 - p);
    assert!(alert["boxes"].as_u64().unwrap() <= event["boxes"].as_u64().unwrap());
    let crop = alert["crop"].as_str().unwrap();
    assert!(crop.ends_with("_decided.png"), "{crop}");
    assert!(image::open(crop).unwrap().width() > 4);
    assert!(event["crop"].as_str().is_some_and(|c| c != crop));
    // Wall-clock times of the frames' reading, in order, during the run.
    let at = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
    let (first, decided, last) = (
        at(&event["first_seen_at"]),
        at(&alert["decided_at"]),
        at(&event["last_seen_at"]),
    );
    assert!(
        started <= first && first <= decided && decided <= last,
        "{alert} {event}"
    );
    assert!(last <= std::time::SystemTime::now());
}

/// Without `--output` (a camera watched for events only) no frame is drawn or encoded and no
/// video appears, and the events are those of a run that writes the video; `--alerts` reports
/// each unknown track when it is decided. A run that would write nothing, output-only flags
/// without an output, and two outputs on standard output are refused.
#[test]
fn without_an_output_video_the_events_are_the_same_and_alerts_come_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    write_video(
        Path::new(&path("in.mkv")),
        blobs_and_noise_patches(80, 1.0, (1.5, 3.0)),
    );
    let (out, stderr) = run(video_command(
        &path("in.mkv"),
        &path("out.mp4"),
        &["--events", &path("with_video.jsonl")],
    ));
    assert!(out.status.success(), "{stderr}");
    let events_only = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_oodbox"));
        command
            .args(["video", "--model", MODEL, "--scorer", SCORER, "--quiet"])
            .args(["--input", &path("in.mkv")])
            .args(extra);
        run(command)
    };
    // RFC 3339 to the millisecond: the run starts no earlier than this.
    let started = std::time::SystemTime::now() - Duration::from_millis(1);
    let (out, stderr) = events_only(&[
        "--events",
        &path("events_only.jsonl"),
        "--alerts",
        "-",
        "--crops",
        &path("crops"),
    ]);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no video written"), "{stderr}");
    assert!(stderr.contains("encode 0.0"), "{stderr}");
    let with_video = read_events(Path::new(&path("with_video.jsonl")));
    assert!(
        !with_video.is_empty(),
        "the video should hold an unknown track"
    );
    // The same events, but for when they were seen (the wall clock of each run) and crops.
    let without_times = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                let fields = e.as_object_mut().unwrap();
                assert!(fields.remove("first_seen_at").is_some());
                assert!(fields.remove("last_seen_at").is_some());
                fields.remove("crop");
                e
            })
            .collect()
    };
    let events = read_events(Path::new(&path("events_only.jsonl")));
    assert_eq!(without_times(&events), without_times(&with_video));
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "crops",
            "events_only.jsonl",
            "in.mkv",
            "out.mp4",
            "with_video.jsonl"
        ]
    );

    // Live alerts, on standard output: one per unknown track, in the frame it was decided in,
    // which its event (at the track's end) confirms.
    let alerts: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), events.len());
    for alert in &alerts {
        check_alert(alert, &events, started);
    }

    // A reader of standard output that goes away stops the run, and is named.
    let mut child = Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .args(["video", "--model", MODEL, "--scorer", SCORER, "--quiet"])
        .args(["--input", &path("in.mkv"), "--detections", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("standard output: Broken pipe"), "{stderr}");

    let (out, stderr) = events_only(&[]);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--output") && stderr.contains("--events"),
        "{stderr}"
    );
    let (out, stderr) = events_only(&["--events", "-", "--alerts", "-"]);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--events and --alerts both write to standard output"),
        "{stderr}"
    );
    let (out, stderr) = events_only(&["--events", &path("e.jsonl"), "--keep", "ood"]);
    assert!(!out.status.success());
    assert!(stderr.contains("--output"), "{stderr}");
}

/// SIGTERM or SIGINT stops `oodbox video` cleanly, even while its input stalls (frames on
/// stdin, the pipe held open): ffmpeg is stopped, the temporary output removed, the exit code
/// is 128 + the signal, and the message says why.
#[cfg(unix)]
#[test]
fn a_signal_stops_the_stream_and_removes_the_partial_output() {
    // ffmpeg reads 5 MB of a piped stream (its probe size) before it lets out a frame.
    let frames: Vec<u8> = tiny_frames(30, (256, 256)).iter().flat_map(ppm).collect();
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.mp4");
        let (mut child, stdin) = spawn_fed(
            video_command("-", output.to_str().unwrap(), &["--fps", "5"]),
            &frames,
        );
        let names = || -> Vec<String> {
            std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        // The output is opened when the first frame is written, a block (5 frames) later.
        let start = Instant::now();
        while names().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no output started"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sent = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .status();
        assert!(sent.unwrap().success());
        // The input is still open: the process has to end by itself.
        let (status, stderr) = wait_with_input_open(&mut child, start, &format!("SIG{signal}"));
        drop(stdin);
        assert_eq!(status.code(), Some(code), "{stderr}");
        assert!(
            stderr.contains(&format!("interrupted by SIG{signal} after")),
            "{stderr}"
        );
        assert!(stderr.contains("out.mp4 was not written"), "{stderr}");
        assert_eq!(names(), Vec::<String>::new(), "left behind");
    }
}

/// `--keep ood` writes short clips: each frame that shows an unknown track, and the frames
/// within `--clip-pad` of one, each once. The expected count comes from the events (each
/// unknown track and the frame it was decided in) and the per-frame boxes (`--detections`).
#[test]
fn keep_ood_writes_the_frames_within_the_clip_pad_of_unknown_tracks() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.mkv");
    let (frames, fps) = (100u64, 10.0f64);
    // A far-OOD object every 2.5 s: clips with gaps between them wider than twice the pad.
    let made = Command::new(env!("CARGO_BIN_EXE_oodbox"))
        .args([
            "synth-video",
            "--out",
            input.to_str().unwrap(),
            "--seed",
            "3",
        ])
        .args([
            "--seconds",
            "10",
            "--ood-every",
            "2.5",
            "--ood-stay",
            "1",
            "2",
        ])
        .args(["--unknowns", "far", "--quiet"])
        .output()
        .unwrap();
    assert!(made.status.success());
    // Output frames are drawn a block (--min-duration, 1 s) after they are detected, with the
    // decisions made by then.
    let block = fps as u64;
    for pad in [0.0, 0.5] {
        let output = dir.path().join(format!("clips-{pad}.mkv"));
        let events_path = dir.path().join("events.jsonl");
        let boxes_path = dir.path().join("boxes.jsonl");
        let (out, stderr) = run(video_command(
            input.to_str().unwrap(),
            output.to_str().unwrap(),
            &[
                "--keep",
                "ood",
                "--clip-pad",
                &pad.to_string(),
                "--track-alpha",
                "0.1",
                "--events",
                events_path.to_str().unwrap(),
                "--detections",
                boxes_path.to_str().unwrap(),
            ],
        ));
        assert!(out.status.success(), "{stderr}");
        let decided: HashMap<u64, u64> = read_events(&events_path)
            .iter()
            .map(|e| {
                let field = |k: &str| e[k].as_u64().unwrap();
                (field("track_id"), field("decided_frame"))
            })
            .collect();
        let shown: Vec<u64> = read_events(&boxes_path)
            .iter()
            .map(|f| (f["frame"].as_u64().unwrap(), f["boxes"].as_array().unwrap()))
            .filter(|(frame, boxes)| {
                boxes.iter().any(|b| {
                    let track = b["track_id"].as_u64().unwrap();
                    decided.get(&track).is_some_and(|&d| d <= frame + block)
                })
            })
            .map(|(frame, _)| frame)
            .collect();
        let pad_frames = (pad * fps).round() as u64;
        let expected: BTreeSet<u64> = shown
            .iter()
            .flat_map(|&f| f.saturating_sub(pad_frames)..=(f + pad_frames).min(frames - 1))
            .collect();
        eprintln!(
            "pad {pad} s: {} unknown tracks, {} frames show one, {} expected in the clips",
            decided.len(),
            shown.len(),
            expected.len()
        );
        assert!(!shown.is_empty(), "the video should show an unknown track");
        assert_eq!(
            decode_all(&output),
            (expected.len() as u64, fps, (256, 256))
        );
    }
}
