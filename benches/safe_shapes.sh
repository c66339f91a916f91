#!/usr/bin/env bash
# The `safe` scorer beside energy and knn on a shapes world: every surrogate kind, with and
# without logits; each scorer fitted on the train boxes and calibrated on the val boxes. Prints
# the markdown table of BENCHMARKS.md "A learned scorer: safe".
#   cargo build --release && bash benches/safe_shapes.sh [BOXDIR]   (default tests/fixtures/shapes_boxes)
set -euo pipefail
B=$(pwd)/target/release/oodbox
cd "${1:-tests/fixtures/shapes_boxes}"
w=$(mktemp -d)
metric() { python3 -c "import json; m=json.load(open('$w/m.json')); print(f\"{m['auroc']:.4f} | {m['fpr95']:.4f} |\")"; }
row() { # name, scorer file, fit seconds
  local line="| $1 |"
  for ood in near far; do
    $B eval --scorer "$2" --id test_id.safetensors --ood test_ood_$ood.safetensors --json "$w/m.json" > /dev/null
    line="$line $(metric)"
  done
  $B eval --scorer "$2" --mixed test_mixed.safetensors --json "$w/m.json" > /dev/null
  echo "$line $(metric) $3 |"
}
fit() { # name, fit arguments...
  local name=$1; shift
  local s; s=$(date +%s.%N)
  $B fit "$@" --boxes train.safetensors --calibration-boxes val.safetensors --out "$w/s.safetensors" --quiet
  row "$name" "$w/s.safetensors" "$(python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')")"
}
echo "| scorer | near AUROC | near FPR95 | far AUROC | far FPR95 | mixed AUROC | mixed FPR95 | fit s |"
echo "|---|---|---|---|---|---|---|---|"
fit energy --scorer energy
fit knn --scorer knn
for sur in vos mix noise; do
  for logits in false true; do
    fit "safe surrogate=$sur use_logits=$logits" --scorer safe --param surrogate=$sur --param use_logits=$logits
  done
done
