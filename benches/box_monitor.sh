#!/usr/bin/env bash
# Box monitors against energy and KNN on the shapes benchmark: AUROC / FPR95 per protocol (VOS
# near and far: test_id vs test_ood_X; GT-matched: test_mixed), every scorer fitted on the same
# train boxes (calibrated on val; the metrics read raw scores). Prints a markdown table.
#   cargo build --release && bash tests/fixtures/make_shapes_boxsets.sh && bash benches/box_monitor.sh [BOX_DIR]
# BOX_DIR (default tests/fixtures/shapes_boxes) holds train, val, test_id, test_ood_near,
# test_ood_far and test_mixed .safetensors of one detector on one world.
set -euo pipefail
B=$(pwd)/target/release/oodbox
dir=${1:-tests/fixtures/shapes_boxes}
work=$(mktemp -d)
configs=(
  "energy"
  "knn"
  "box_monitor input=logits density=5"
  "box_monitor input=logits density=20"
  "box_monitor input=features density=2"
  "box_monitor input=features density=5"
  "box_monitor input=features density=10"
  "box_monitor input=features density=20"
)
echo "| scorer | near AUROC / FPR95 | far AUROC / FPR95 | mixed AUROC / FPR95 | fit s |"
echo "|---|---|---|---|---|"
for config in "${configs[@]}"; do
  read -r kind params <<< "$config"
  args=()
  for p in $params; do args+=(--param "$p"); done
  start=$(date +%s.%N)
  $B fit --scorer "$kind" "${args[@]}" --boxes "$dir/train.safetensors" \
    --calibration-boxes "$dir/val.safetensors" --out "$work/s.safetensors" --quiet 2> /dev/null
  fit_s=$(printf "%.2f" "$(echo "$(date +%s.%N) - $start" | bc)")
  row="| $kind $params |"
  for ood in near far; do
    $B eval --scorer "$work/s.safetensors" --id "$dir/test_id.safetensors" \
      --ood "$dir/test_ood_$ood.safetensors" --json "$work/m.json" > /dev/null
    row+=$(python3 -c "import json; m = json.load(open('$work/m.json')); print(f\" {m['auroc']:.3f} / {m['fpr95']:.3f} |\")")
  done
  $B eval --scorer "$work/s.safetensors" --mixed "$dir/test_mixed.safetensors" --json "$work/m.json" > /dev/null
  row+=$(python3 -c "import json; m = json.load(open('$work/m.json')); print(f\" {m['auroc']:.3f} / {m['fpr95']:.3f} | $fit_s |\")")
  echo "$row"
done
rm -rf "$work"
