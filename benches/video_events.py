#!/usr/bin/env python3
"""Track-level events and tracking quality of `oodbox video` against the ground truth of
synthetic videos (BENCHMARKS.md, "Track-level events against ground truth").

Three 60 s videos (256², 10 fps, `oodbox synth-video --truth`): known objects only (seed 21:
4 shapes all along, one entering every second), and far- and near-OOD unknowns entering every
2.5 s among 2 known shapes (seed 22). Each goes through `oodbox video` with the fixture model
and the demo scorer; events are matched to the ground-truth object under their most unusual
box (IoU >= 0.3), detections to objects per frame (IoU >= 0.5).

"Evident to the oracle": the lasting unknowns that the track rule (calibrated, with
--calibrate) calls unknown, at the
command's --track-alpha, on the object's own boxes, as if tracking were perfect (per frame the
boxes on it, IoU >= 0.5, give their smallest p-value times their number; frames where it
overlaps another object give no evidence) -- what tests/video.rs checks, there at half alpha.

"Boxed in fewer than 1 s of frames": lasting unknowns with a box on them (IoU >= 0.5) in
fewer than fps frames, on which no track reaches a statistic at the default --min-duration.

With --calibrate SECONDS, the track rule is calibrated first (`oodbox video --fit-tracks`) on
a video of known objects only, like "known" but of another seed (31) and that long, and each
video then runs with --track-calibration.

With --seeds S1,S2,... the far and near videos are made with each of those seeds (default
22), and with --known-seeds K1,... further known-only videos of --calibrate's length (or 300 s)
count false alarms; a totals row sums the far and near rows.

Usage: benches/video_events.py [OUT_DIR] [--scorer SCORER] [--calibrate SECONDS]
                               [--seeds S1,S2,...] [--known-seeds K1,K2,...]
                               [-- extra `oodbox video` flags]
Standard library only; needs target/release/oodbox (or $OODBOX_BIN) and ffmpeg.
"""

import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("OODBOX_BIN", ROOT / "target" / "release" / "oodbox"))
FPS = 10
KNOWN = ["--id-objects", "4", "--id-every", "1", "--ood-every", "0"]


def unknowns(kind):
    return ["--id-objects", "2", "--ood-every", "2.5", "--unknowns", kind]


def iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def block_rule_p_value(p_values, block):
    """The track p-value of src/video/evidence.rs for p-values in track order."""
    needed = (block + 1) // 2
    best = 1.0
    for j in range(0, len(p_values), block):
        part = sorted(p_values[j:j + block])
        if len(part) < needed:
            continue
        k = j // block
        weight = 0.8 if k == 0 else 0.2 * 0.5 ** k
        best = min(best, part[needed - 1] * block / (needed * weight))
    return best


def calibrated_p_value(p_values, block, statistics):
    """The track p-value of src/video/evidence.rs with a track calibration."""
    surprisal, statistic = 0.0, 0.0
    for n, p in enumerate(p_values, 1):
        surprisal -= math.log(max(p, sys.float_info.min))
        if n >= block:
            statistic = max(statistic, surprisal / n)
    return (1 + sum(s >= statistic for s in statistics)) / (1 + len(statistics))


def oracle_p_value(oid, truth, boxes, statistics):
    p_values = []
    for frame, seen in zip(truth, boxes):
        obj = next((o for o in frame["objects"] if o["id"] == oid), None)
        if obj is None or any(o["id"] != oid and iou(o["bbox"], obj["bbox"]) > 0.05
                              for o in frame["objects"]):
            continue
        on = [b["ood"]["p_value"] for b in seen["boxes"] if iou(b["bbox"], obj["bbox"]) >= 0.5]
        if on:
            p_values.append(min(1.0, min(on) * len(on)))
    if statistics is not None:
        return calibrated_p_value(p_values, FPS, statistics)
    return block_rule_p_value(p_values, FPS)


def synth(video, truth, seconds, scenario):
    subprocess.run(
        [BIN, "synth-video", "--out", video, "--truth", truth, "--seconds", str(seconds),
         "--fps", str(FPS), "--quiet", *scenario],
        check=True, capture_output=True)


def fit_tracks(out, scorer, seconds, extra):
    """Calibrates the track rule on known objects only; returns the calibration file."""
    video, calibration = out / "calibration.mkv", out / "tracks.json"
    synth(video, out / "calibration_truth.jsonl", seconds, ["--seed", "31", *KNOWN])
    done = subprocess.run(
        [BIN, "video", "--model", ROOT / "models/shapes.safetensors", "--scorer", scorer,
         "--input", video, "--fit-tracks", calibration, "--quiet", *extra],
        check=True, capture_output=True, text=True)
    print(done.stderr.strip().splitlines()[-1])
    return calibration


def run(name, seconds, scenario, out, scorer, extra):
    video, truth = out / f"{name}.mkv", out / f"{name}_truth.jsonl"
    synth(video, truth, seconds, scenario)
    events, boxes = out / f"{name}_events.jsonl", out / f"{name}_boxes.jsonl"
    # Events only: writing a video would not change them (tests/video.rs), only take longer.
    done = subprocess.run(
        [BIN, "video", "--model", ROOT / "models/shapes.safetensors",
         "--scorer", scorer, "--input", video, "--events", events, "--detections", boxes,
         "--quiet", *extra],
        check=True, capture_output=True, text=True)
    tracks = int(re.search(r"(\d+) tracks", done.stderr).group(1))
    return lines(truth), lines(events), lines(boxes), tracks


def analyse(truth, events, boxes, tracks, statistics):
    objects = {}  # id -> (group, kind, frames visible)
    covering = defaultdict(set)  # object -> track ids of the boxes on it
    boxed = defaultdict(int)  # object -> frames with a box on it
    covered = defaultdict(set)  # track id -> objects its boxes lay on
    for frame, seen in zip(truth, boxes):
        for o in frame["objects"]:
            group, kind, n = objects.get(o["id"], (o["group"], o["kind"], 0))
            objects[o["id"]] = (group, kind, n + 1)
            on = [b for b in seen["boxes"] if iou(b["bbox"], o["bbox"]) >= 0.5]
            if on:
                boxed[o["id"]] += 1
                best = max(on, key=lambda b: iou(b["bbox"], o["bbox"]))
                covering[o["id"]].add(best["track_id"])
                covered[best["track_id"]].add(o["id"])

    def event_object(e):
        frame = truth[e["bbox_frame"]]["objects"]
        scored = [(iou(o["bbox"], e["bbox"]), o["id"]) for o in frame]
        scored = [s for s in scored if s[0] >= 0.3]
        return max(scored)[1] if scored else None

    matched = [event_object(e) for e in events]
    seen = [o for o in objects if covering[o]]
    return {
        "objects": objects,
        "boxed": boxed,
        "tracks": tracks,
        "tracks_per_object": sum(len(covering[o]) for o in seen) / max(1, len(seen)),
        "merged_tracks": sum(len(objs) > 1 for objs in covered.values()),
        "matched": matched,
        "oracle": {o: oracle_p_value(o, truth, boxes, statistics) for o in objects},
        "events": len(events),
    }


def seed_list(args, flag, default):
    if flag not in args:
        return default
    i = args.index(flag)
    seeds = [int(x) for x in args[i + 1].split(",")]
    del args[i:i + 2]
    return seeds


def main():
    args = sys.argv[1:]
    extra = args[args.index("--") + 1:] if "--" in args else []
    args = args[:args.index("--")] if "--" in args else args
    scorer = ROOT / "models/shapes-scorer.safetensors"
    if "--scorer" in args:
        i = args.index("--scorer")
        scorer = Path(args[i + 1])
        del args[i:i + 2]
    calibrate = 0
    if "--calibrate" in args:
        i = args.index("--calibrate")
        calibrate = float(args[i + 1])
        del args[i:i + 2]
    seeds = seed_list(args, "--seeds", [22])
    known_seeds = seed_list(args, "--known-seeds", [])
    alpha = float(extra[extra.index("--track-alpha") + 1]) if "--track-alpha" in extra else 0.05
    out = Path(args[0] if args else "video-events")
    out.mkdir(parents=True, exist_ok=True)
    statistics = None
    if calibrate > 0:
        calibration = fit_tracks(out, scorer, calibrate, extra)
        statistics = json.loads(calibration.read_text())["statistics"]
        extra = [*extra, "--track-calibration", str(calibration)]
    videos = [("known", 60, ["--seed", "21", *KNOWN])]
    videos += [(f"known{k}", calibrate or 300, ["--seed", str(k), *KNOWN]) for k in known_seeds]
    for kind in ("far", "near"):
        videos += [(kind if len(seeds) == 1 else f"{kind}{s}", 60,
                    ["--seed", str(s), *unknowns(kind)]) for s in seeds]
    print(f"scorer {scorer}; `oodbox video` flags: {' '.join(extra) or '(defaults)'}\n")
    print("| video | objects | tracks | tracks per object | tracks on > 1 object | events | "
          "events on known objects | lasting unknowns | boxed in fewer than 1 s of frames | "
          "with an event | evident to the oracle | of those, with an event |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    totals = defaultdict(lambda: [0] * 6)
    for name, seconds, scenario in videos:
        r = analyse(*run(name, seconds, scenario, out, scorer, extra), statistics)
        objects, matched = r["objects"], r["matched"]
        on_known = sum(m is not None and objects[m][0] == "id" for m in matched)
        if name.startswith("known"):
            print(f"| {name} | {len(objects)} | {r['tracks']} | {r['tracks_per_object']:.2f} | "
                  f"{r['merged_tracks']} | {r['events']} | {on_known} | – | – | – | – | – |")
            continue
        lasting = [o for o, (g, _, n) in objects.items() if g != "id" and n >= FPS]
        caught = [o for o in lasting if o in matched]
        evident = [o for o in lasting if r["oracle"][o] <= alpha]
        caught_evident = [o for o in evident if o in matched]
        unboxed = [o for o in lasting if r["boxed"][o] < FPS]
        counts = [on_known, len(lasting), len(unboxed), len(caught), len(evident),
                  len(caught_evident)]
        kind = "far" if name.startswith("far") else "near"
        totals[kind] = [t + c for t, c in zip(totals[kind], counts)]
        print(f"| {name} | {len(objects)} | {r['tracks']} | {r['tracks_per_object']:.2f} | "
              f"{r['merged_tracks']} | {r['events']} | {' | '.join(map(str, counts))} |")
    if len(seeds) > 1:
        for kind, counts in totals.items():
            print(f"| {kind}, {len(seeds)} seeds | | | | | | {' | '.join(map(str, counts))} |")


if __name__ == "__main__":
    main()
