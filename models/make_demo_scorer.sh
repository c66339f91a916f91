#!/usr/bin/env bash
# The demo's scorer (models/shapes-scorer.safetensors) and images (assets/images): energy
# fitted on the shapes model's ID train boxes, calibrated on its val boxes (both from
# tests/fixtures/shapes_boxes, imgsz 256), and 12 mixed scenes of 256x256 with their COCO ground
# truth (seed 7). Run from the repository root after `cargo build --release`.
set -euo pipefail
B=target/release/oodbox
$B fit --scorer energy --boxes tests/fixtures/shapes_boxes/train.safetensors \
  --calibration-boxes tests/fixtures/shapes_boxes/val.safetensors --out models/shapes-scorer.safetensors
work=$(mktemp -d)
$B synth --out "$work" --seed 7 --width 256 --height 256 --train 0 --val 0 --test 12 --quiet
rm -rf assets/images && mkdir -p assets/images
cp "$work"/images/test_mixed/*.png assets/images/
cp "$work"/coco/test_mixed.json assets/images/ground_truth.json
