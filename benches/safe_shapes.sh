#!/usr/bin/env bash
# The `safe` scorer beside energy and knn on a shapes world: every surrogate kind, with and
# without logits; each scorer fitted on the train boxes and calibrated on the val boxes. Prints
# the markdown table of BENCHMARKS.md "A learned scorer: safe".
#   cargo build --release && bash benches/safe_shapes.sh [BOXDIR]   (default tests/fixtures/shapes_boxes)
set -euo pipefail
B=$(pwd)/target/release/oodbox
source "$(dirname "$0")/fit_eval.sh"
cd "${1:-tests/fixtures/shapes_boxes}"
header
fit energy --scorer energy
fit knn --scorer knn
for sur in vos mix noise; do
  for logits in false true; do
    fit "safe surrogate=$sur use_logits=$logits" --scorer safe --param surrogate=$sur --param use_logits=$logits
  done
done
