#!/usr/bin/env bash
# `safe` trained against FGSM surrogate boxes (ε = 2, 4, 8 levels, from benches/fgsm_boxes.sh)
# beside its feature-space surrogates and energy, on one shapes world: each scorer fitted on the
# train boxes and calibrated on the val boxes. Prints the markdown table of BENCHMARKS.md
# "`safe` against FGSM surrogates".
#   cargo build --release && bash benches/fgsm_boxes.sh data/shapes FGSMDIR
#   bash benches/safe_fgsm.sh FGSMDIR [BOXDIR]   (BOXDIR default tests/fixtures/shapes_boxes)
set -euo pipefail
B=${B:-$(pwd)/target/release/oodbox}
source "$(dirname "$0")/fit_eval.sh"
fgsm=$(realpath "$1")
cd "${2:-tests/fixtures/shapes_boxes}"
header
fit energy --scorer energy
for sur in vos mix noise; do
  fit "safe surrogate=$sur" --scorer safe --param surrogate=$sur
done
for eps in 2 4 8; do
  fit "safe surrogate=fgsm ε=$eps/255" --scorer safe --param surrogate=fgsm \
    --outliers "$fgsm/fgsm$eps.safetensors"
done
