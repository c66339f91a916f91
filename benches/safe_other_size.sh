#!/usr/bin/env bash
# `safe` with outlier exposure on a world of other object sizes than the detector's (BENCHMARKS.md,
# "Another object size"): `benches/safe_exposure.sh` with ROWS=headline on it, then the same fit
# with the unknowns of a small-object outlier world added, and alone, and with four of them added.
# SAFE_PARAMS: extra `fit` arguments for every safe row (e.g. "--param also=vos,mix"); ROI the
# ROI sources, as in benches/safe_exposure.sh.
#   cargo build --release && bash benches/safe_other_size.sh [OUT]   (default /tmp/exposure)
set -euo pipefail
root=$(pwd)
B=$root/target/release/oodbox
out=${1:-/tmp/exposure}
sizes=${OBJECT_SIZE:-0.08,0.3}
roi=${ROI:-roi:4@2,roi:6@2,roi:9}
[ -f data/shapes-small/data.yaml ] || $B synth --out data/shapes-small --seed 5 --object-size "$sizes" --quiet
WORLDS=shapes-small ROWS=headline OUTLIER_WORLDS="11:900 12:1800 13:1800 14:1800" \
  bash benches/safe_exposure.sh "$out"
[ -f data/shapes-small-oe/data.yaml ] ||
  $B synth --out data/shapes-small-oe --seed 15 --object-size "$sizes" --train 1 --val 1 --test 1800 --quiet
small=$out/outliers-small/test_mixed.safetensors
mkdir -p "$(dirname "$small")"
[ -f "$small" ] || $B extract --model models/shapes.safetensors --imgsz 256 --quiet \
  --features $roi --data data/shapes-small-oe/coco/test_mixed.json --out "$small"
source "$root/benches/fit_eval.sh"
standard=()
for d in outliers outliers12 outliers13 outliers14; do standard+=(--outliers "$out/$d/test_mixed.safetensors"); done
cd "$out/shapes-small"
header
safe=(--scorer safe --param surrogate=unknown ${SAFE_PARAMS:-} --features cls,$roi)
fit "the same, plus one small-object outlier world (seed 15)" "${safe[@]}" "${standard[@]}" --outliers "$small"
fit "the small-object outlier world alone" "${safe[@]}" --outliers "$small"
# Three more small-object outlier worlds (seeds 16 to 18), as the standard recipe has four.
more=(--outliers "$small")
for seed in 16 17 18; do
  world=$root/data/shapes-small-oe$seed
  [ -f "$world/data.yaml" ] ||
    $B synth --out "$world" --seed $seed --object-size "$sizes" --train 1 --val 1 --test 1800 --quiet
  boxes=$out/outliers-small$seed/test_mixed.safetensors
  mkdir -p "$(dirname "$boxes")"
  [ -f "$boxes" ] || $B extract --model "$root/models/shapes.safetensors" --imgsz 256 --quiet \
    --features $roi --data "$world/coco/test_mixed.json" --out "$boxes"
  more+=(--outliers "$boxes")
done
fit "the same, plus four small-object outlier worlds (seeds 15 to 18)" "${safe[@]}" "${standard[@]}" "${more[@]}"
