#!/usr/bin/env bash
# How far one calibration set's flagged share strays from alpha: a fitted scorer's raw scores on
# 3,000 val and 3,000 test_id scenes of the seed-0 shapes world, then benches/calibration_draws.py
# recalibrates it (as oodbox does: per predicted class, pooled under 100 boxes) on random draws of
# 100, 300 and 1,000 val scenes and prints the share of test_id's known-object boxes flagged at
# alpha 0.05 per draw size, beside the Beta law that `fit` prints. Prints markdown rows.
#   cargo build --release && bash benches/calibration_draws.sh [OUT]   (default /tmp/calibration-draws)
# SCORER (default models/shapes-scorer-exposure.safetensors, the demo's) and its detector MODEL
# (default models/shapes.safetensors); FEATURES the ROI sources the scorer reads.
set -euo pipefail
root=$(pwd)
B=$root/target/release/oodbox
out=${1:-/tmp/calibration-draws}
scorer=${SCORER:-models/shapes-scorer-exposure.safetensors}
mkdir -p "$out"
# The val and test splits draw from their own streams: the first 300 val and test_id scenes are
# those of data/shapes, the rest are fresh scenes of the same world.
[ -f data/shapes-big/data.yaml ] || $B synth --out data/shapes-big --seed 0 --train 1 --val 3000 --test 3000 --quiet
for split in val test_id; do
  case $split in
    val) data=(--data data/shapes-big/data.yaml --split val) ;;
    *) data=(--data data/shapes-big/coco/$split.json) ;;
  esac
  [ -f "$out/$split.safetensors" ] || $B extract --model "${MODEL:-models/shapes.safetensors}" --imgsz 256 --quiet \
    --features "${FEATURES:-roi:4,roi:6,roi:9}" "${data[@]}" --out "$out/$split.safetensors"
  $B score --scorer "$scorer" --boxes "$out/$split.safetensors" --json "$out/scores_$split.json" 2> /dev/null
done
"${PYTHON:-.venv/bin/python}" benches/calibration_draws.py "$out"
