#!/usr/bin/env bash
# The bundled scorers and the demo's images (assets/images). Run from the repository root after
# `cargo build --release`.
# - models/shapes-scorer.safetensors: energy fitted on the shapes model's ID train boxes,
#   calibrated on its val boxes (both from tests/fixtures/shapes_boxes, imgsz 256). The tests,
#   the Python package and the video benchmarks use it.
# - models/shapes-scorer-exposure.safetensors, the demo's: `safe` with outlier exposure, an
#   ensemble of five MLPs (`members=5`) on the class-branch feature and ROI features of layers 4
#   and 6 (2x2 cells) and 9 (one cell), fitted on the ID train boxes of
#   the standard world (seed 0) against the unknown objects of the mixed scenes of four other
#   worlds (seeds 11 to 14, 900 + 3 x 1800 scenes; their known objects train as ID), calibrated
#   on the boxes of 1,000 val scenes of that world (data/shapes-cal: data/shapes' 300 val scenes
#   and 700 more; 300 scenes leave the flagged share of ID boxes ±0.0066 from one calibration set
#   to another, 1,000 ±0.0036: BENCHMARKS.md, "How far one calibration set strays").
#   BOXES (default: a temporary folder) keeps the extracted box sets.
# - assets/images: 12 mixed scenes of 256x256 with their COCO ground truth (seed 7).
set -euo pipefail
B=target/release/oodbox
$B fit --scorer energy --boxes tests/fixtures/shapes_boxes/train.safetensors \
  --calibration-boxes tests/fixtures/shapes_boxes/val.safetensors --out models/shapes-scorer.safetensors
boxes=${BOXES:-$(mktemp -d)}
roi=roi:4@2,roi:6@2,roi:9
[ -f data/shapes/data.yaml ] || $B synth --out data/shapes --seed 0 --quiet
extract() { # out, data arguments...
  [ -f "$boxes/$1" ] || $B extract --model models/shapes.safetensors --imgsz 256 --features $roi \
    --quiet "${@:2}" --out "$boxes/$1"
}
extract train.safetensors --data data/shapes/data.yaml --split train
[ -f data/shapes-cal/data.yaml ] || $B synth --out data/shapes-cal --seed 0 --train 1 --val 1000 --test 1 --quiet
extract val1000.safetensors --data data/shapes-cal/data.yaml --split val
outliers=()
for spec in 11:900 12:1800 13:1800 14:1800; do
  seed=${spec%%:*}
  world=data/shapes-s$seed-oe
  [ -f $world/data.yaml ] || $B synth --out $world --seed $seed --train 1 --val 1 --test ${spec#*:} --quiet
  extract unknowns$seed.safetensors --data $world/coco/test_mixed.json
  outliers+=(--outliers "$boxes/unknowns$seed.safetensors")
done
$B fit --scorer safe --param surrogate=unknown --param members=5 --features cls,$roi --boxes "$boxes/train.safetensors" \
  --calibration-boxes "$boxes/val1000.safetensors" "${outliers[@]}" --out models/shapes-scorer-exposure.safetensors
work=$(mktemp -d)
$B synth --out "$work" --seed 7 --width 256 --height 256 --train 0 --val 0 --test 12 --quiet
rm -rf assets/images && mkdir -p assets/images
cp "$work"/images/test_mixed/*.png assets/images/
cp "$work"/coco/test_mixed.json assets/images/ground_truth.json
