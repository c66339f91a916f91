#!/usr/bin/env bash
# The box-level OOD benchmark on the shapes world with the fixture model: every scorer, VOS
# protocol (ID test vs near- and far-OOD images) and GT-matched protocol (mixed scenes), plus
# the per-level vs pooled alternatives. Prints markdown for BENCHMARKS.md.
#   cargo build --release && bash tests/fixtures/make_shapes_boxsets.sh && bash benches/ood_shapes.sh
set -euo pipefail
B=$(pwd)/target/release/oodbox
cd tests/fixtures/shapes_boxes
work=$(mktemp -d)
for ood in near far; do
  echo "### VOS protocol: test_id vs test_ood_$ood"; echo
  $B eval --scorer all --fit train.safetensors --id test_id.safetensors --ood test_ood_$ood.safetensors --report "$work/$ood"
  echo
done
echo "### GT-matched protocol: test_mixed"; echo
$B eval --scorer all --fit train.safetensors --mixed test_mixed.safetensors
echo
echo "### Per-level (default) vs pooled fits, near-OOD"; echo
echo "| scorer | fit | AUROC | FPR95 |"; echo "|---|---|---|---|"
for kind in mahalanobis rmds knn vim she; do
  for per_level in true false; do
    $B fit --scorer $kind --param per_level=$per_level --boxes train.safetensors --calibration-boxes val.safetensors --out "$work/s.safetensors" --quiet
    $B eval --scorer "$work/s.safetensors" --id test_id.safetensors --ood test_ood_near.safetensors --json "$work/m.json" > /dev/null
    python3 -c "import json; m = json.load(open('$work/m.json')); print(f\"| $kind | {'per level' if '$per_level' == 'true' else 'pooled'} | {m['auroc']:.4f} | {m['fpr95']:.4f} |\")"
  done
done
