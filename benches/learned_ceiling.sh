#!/usr/bin/env bash
# The learned-scorer ceiling experiment (BENCHMARKS.md, "What limits the learned scorer"): box
# sets of the shapes model with ROI features on two worlds, the boxes of corrupted train objects
# (benches/corrupt_objects.py) on the first, then benches/learned_ceiling.py's table.
#   cargo build --release && bash benches/learned_ceiling.sh [WORLD0 WORLD1 OUT]
#   (default data/shapes data/shapes-s7-safe /tmp/ceiling; a world is `oodbox synth --seed N`)
set -euo pipefail
B=target/release/oodbox
py=.venv/bin/python
w0=${1:-data/shapes}; w1=${2:-data/shapes-s7-safe}; out=${3:-/tmp/ceiling}
run() { $B extract --model models/shapes.safetensors --imgsz 256 --quiet --features roi:4,roi:6,roi:9 "$@"; }
for world in "$w0" "$w1"; do
  d=$out/$(basename "$world"); mkdir -p "$d"
  run --data "$world/data.yaml" --split train --out "$d/train.safetensors"
  for split in test_id test_ood_near test_ood_far test_mixed; do
    run --data "$world/coco/$split.json" --out "$d/$split.safetensors"
  done
done
$py benches/corrupt_objects.py "$w0" "$out/corrupted" 600 shuffle,cutmix,cutpaste
run --data "$out/corrupted/coco/surr.json" --out "$out/$(basename "$w0")/surrogates.safetensors"
$py benches/learned_ceiling.py "$out/$(basename "$w0")" "$out/$(basename "$w1")"
