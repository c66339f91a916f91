#!/usr/bin/env bash
# `combine` (Fisher and Cauchy) of safe, knn and vim with energy on a shapes world, beside its
# components alone; each scorer fitted on the train boxes and calibrated on the val boxes.
# Prints the markdown table of BENCHMARKS.md "Combining p-values".
#   cargo build --release && bash benches/combine_shapes.sh [BOXDIR]   (default tests/fixtures/shapes_boxes)
set -euo pipefail
B=$(pwd)/target/release/oodbox
source "$(dirname "$0")/fit_eval.sh"
cd "${1:-tests/fixtures/shapes_boxes}"
header
for kind in energy knn vim safe; do
  fit "$kind" --scorer $kind
done
for of in safe,energy knn,energy vim,energy knn,vim,energy; do
  for method in fisher cauchy; do
    fit "combine of=$of method=$method" --scorer combine --param of=$of --param method=$method
  done
done
