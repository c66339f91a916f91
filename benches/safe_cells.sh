#!/usr/bin/env bash
# `safe` (and `ocsdf`) with outlier exposure on ROI features pooled in one cell against 2x2
# cells (BENCHMARKS.md, "Finer ROI cells and an ensemble"): on each world, energy, then one row
# per feature list in FEATURES and kind in KINDS, fitted on the world's train boxes (calibrated
# on its val boxes) against the unknowns of the mixed scenes of the outlier worlds, then
# evaluated on near, far and mixed.
#   cargo build --release && bash benches/safe_cells.sh [OUT]   (default /tmp/cells)
# MODEL (default models/shapes.safetensors); WORLDS (default "shapes shapes-s7-safe") and
# OUTLIER_WORLDS (default the four standard ones, seeds 11 to 14) are folders under data/ made by
# `oodbox synth` (benches/safe_exposure.sh makes them); SOURCES the ROI sources extracted once for
# every row; FEATURES the rows' `--features`; SAFE_PARAMS extra `fit` arguments for every safe
# row (e.g. "--param members=5"); KINDS (default "safe") the kinds fitted against the outliers
# on each feature list: safe (surrogate=unknown) and ocsdf (exposure=true).
set -euo pipefail
root=$(pwd)
B=$root/target/release/oodbox
out=${1:-/tmp/cells}
model=$(realpath "${MODEL:-models/shapes.safetensors}")
sources=${SOURCES:-roi:4,roi:4@2,roi:6,roi:6@2,roi:9}
features=${FEATURES:-cls,roi:4,roi:6,roi:9 cls,roi:4@2,roi:6@2,roi:9}
extract() { # coco json, box set
  mkdir -p "$(dirname "$2")"
  [ -f "$2" ] || $B extract --model "$model" --imgsz 256 --quiet --features "$sources" \
    --data "$1" --out "$2"
}
outliers=()
for world in ${OUTLIER_WORLDS:-shapes-s11-oe shapes-s12-oe shapes-s13-oe shapes-s14-oe}; do
  extract "data/$world/coco/test_mixed.json" "$out/outliers/$world.safetensors"
  outliers+=(--outliers "$out/outliers/$world.safetensors")
done
source "$root/benches/fit_eval.sh"
for world in ${WORLDS:-shapes shapes-s7-safe}; do
  for split in train val test_id test_ood_near test_ood_far test_mixed; do
    extract "data/$world/coco/$split.json" "$out/$world/$split.safetensors"
  done
  cd "$out/$world"
  echo "world $world"
  header
  fit energy --scorer energy
  for f in $features; do
    for kind in ${KINDS:-safe}; do
      case $kind in
        # shellcheck disable=SC2086
        safe) fit "safe unknown, $f ${SAFE_PARAMS:-}" --scorer safe --param surrogate=unknown \
          ${SAFE_PARAMS:-} --features "$f" "${outliers[@]}" ;;
        ocsdf) fit "ocsdf exposure, $f" --scorer ocsdf --param exposure=true --features "$f" \
          "${outliers[@]}" ;;
      esac
    done
  done
  cd "$root"
done
