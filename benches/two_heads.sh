#!/usr/bin/env bash
# Two `safe` heads combined (BENCHMARKS.md, "The heads fitted on every fit box"): one on the
# one-cell and one on the 2x2-cell ROI features, `also=[vos,mix]`, Fisher, `reference=calibration`,
# against the unknowns of the four standard outlier worlds (seeds 11 to 14, the demo recipe's
# scene counts), fitted on a world's train boxes and calibrated on its val boxes, then
# `oodbox eval` on its near, far and mixed test sets.
#   cargo build --release && bash benches/two_heads.sh [OUT]   (default /tmp/two-heads)
# MODEL: the detector (default models/shapes.safetensors; models/shapes-yolo11n.pt and
# models/shapes-yolo26n.pt were measured too). SMALL=1: the small-object world of "Another object
# size" (seed 5, --object-size 0.08,0.3), with four small-object outlier worlds (seeds 15 to 18)
# beside the standard ones.
set -euo pipefail
B=$(pwd)/target/release/oodbox
out=${1:-/tmp/two-heads}
model=${MODEL:-models/shapes.safetensors}
features=cls,roi:4,roi:6,roi:9,roi:4@2,roi:6@2
mkdir -p "$out"
world() { [ -f "$1/data.yaml" ] || $B synth --out "$1" --quiet "${@:2}"; }
extract() { # name, data arguments...
  [ -f "$out/$1.safetensors" ] || $B extract --model "$model" --imgsz 256 --quiet \
    --features $features "${@:2}" --out "$out/$1.safetensors"
}
outliers=()
for spec in 11:900 12:1800 13:1800 14:1800; do
  seed=${spec%%:*}
  world data/shapes-s$seed-oe --seed "$seed" --train 1 --val 1 --test "${spec#*:}"
  extract outliers$seed --data data/shapes-s$seed-oe/coco/test_mixed.json
  outliers+=(--outliers "$out/outliers$seed.safetensors")
done
if [[ ${SMALL:-0} == 1 ]]; then
  base=data/shapes-small
  world $base --seed 5 --object-size 0.08,0.3
  for seed in 15 16 17 18; do
    world data/shapes-small-s$seed-oe --seed $seed --object-size 0.08,0.3 --train 1 --val 1 --test 1800
    extract small-outliers$seed --data data/shapes-small-s$seed-oe/coco/test_mixed.json
    outliers+=(--outliers "$out/small-outliers$seed.safetensors")
  done
else
  base=data/shapes
  world $base --seed 0
fi
for split in train val; do extract $split --data $base/data.yaml --split $split; done
for split in test_id test_ood_near test_ood_far test_mixed; do extract $split --data $base/coco/$split.json; done
safe='safe:surrogate=unknown:also=[vos,mix]'
scorer=$out/two-heads.safetensors
[ -f "$scorer" ] || $B fit --scorer combine --features $features \
  --param "of=$safe:features=[cls,roi:4,roi:6,roi:9],$safe:features=[cls,roi:4@2,roi:6@2,roi:9]" \
  "${outliers[@]}" --boxes "$out/train.safetensors" --calibration-boxes "$out/val.safetensors" --out "$scorer"
for ood in near far; do
  $B eval --scorer "$scorer" --id "$out/test_id.safetensors" --ood "$out/test_ood_$ood.safetensors" | tail -1
done
$B eval --scorer "$scorer" --mixed "$out/test_mixed.safetensors" | tail -1
$B score --scorer "$scorer" --boxes "$out/test_id.safetensors" --json "$out/test_id.json" | grep "known objects"
