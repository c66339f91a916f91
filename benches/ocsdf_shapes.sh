#!/usr/bin/env bash
# OCSDF on the shapes benchmark beside energy and knn: VOS near/far and GT-matched mixed, one
# row per scorer, AUROC / FPR95 and fit time. Any arguments are ocsdf parameters (name=value).
#   cargo build --release && bash benches/ocsdf_shapes.sh [DIR] [width=128 ...]
# DIR holds train, val, test_id, test_ood_near, test_ood_far and test_mixed box sets (default
# tests/fixtures/shapes_boxes); a missing split is skipped. KINDS lists the kinds (default
# "energy knn ocsdf"); with POOLED=1 every kind but energy is fitted with per_level=false (one
# model for all levels; per level, a test box on a level without fit boxes takes the nearest
# fitted level's model).
set -euo pipefail
B=$(pwd)/target/release/oodbox
dir=tests/fixtures/shapes_boxes
if [[ $# -gt 0 && -d $1 ]]; then dir=$1; shift; fi
params=()
for p in "$@"; do params+=(--param "$p"); done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "| scorer | near AUROC / FPR95 | far AUROC / FPR95 | mixed AUROC / FPR95 | fit s |"
echo "|---|---|---|---|---|"
for kind in ${KINDS:-energy knn ocsdf}; do
  extra=()
  [[ $kind == ocsdf ]] && extra=("${params[@]}")
  [[ ${POOLED:-0} == 1 && $kind != energy ]] && extra+=(--param per_level=false)
  start=$(date +%s.%N)
  $B fit --scorer $kind "${extra[@]}" --boxes "$dir/train.safetensors" \
    --calibration-boxes "$dir/val.safetensors" --out "$work/s.safetensors" --quiet
  fit_s=$(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')")
  row="| $kind"
  for ood in near far mixed; do
    if [[ $ood == mixed ]]; then
      set_args=(--mixed "$dir/test_mixed.safetensors"); f=$dir/test_mixed.safetensors
    else
      set_args=(--id "$dir/test_id.safetensors" --ood "$dir/test_ood_$ood.safetensors"); f=$dir/test_ood_$ood.safetensors
    fi
    if [[ -f $f ]]; then
      $B eval --scorer "$work/s.safetensors" "${set_args[@]}" --json "$work/m.json" > /dev/null
      row+=$(python3 -c "import json; m = json.load(open('$work/m.json')); print(f\" | {m['auroc']:.3f} / {m['fpr95']:.3f}\", end='')")
    else
      row+=" | —"
    fi
  done
  echo "$row | $fit_s |"
done
