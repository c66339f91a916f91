#!/usr/bin/env bash
# Calibration on held-out ID (issue 19's acceptance): each scorer fitted on the train boxes and
# calibrated on the val boxes, then `oodbox score` on test_id and test_mixed, whose images were
# in neither; prints the share of the boxes on known objects flagged at alpha 0.05, which
# should be within 0.02 of 0.05. Boxes matched to no object (label -2) are not ID boxes and are
# left out, as `score` does.
#   cargo build --release && bash benches/calibration_shapes.sh [BOXDIR]   (default tests/fixtures/shapes_boxes)
set -euo pipefail
B=$(pwd)/target/release/oodbox
cd "${1:-tests/fixtures/shapes_boxes}"
w=$(mktemp -d)
share() { python3 -c "import json; k=json.load(open('$w/s.json'))['known_objects']; print(f\"{k['flagged']} / {k['boxes']} = {k['share']:.4f}\")"; }
echo "| scorer | test_id: flagged / known-object boxes | test_mixed: flagged / known-object boxes |"
echo "|---|---|---|"
for kind in energy msp knn mahalanobis vim flow box_monitor ocsdf safe combine; do
  $B fit --scorer $kind --boxes train.safetensors --calibration-boxes val.safetensors --out "$w/f.safetensors" --quiet 2> /dev/null
  line="| $kind |"
  for split in test_id test_mixed; do
    $B score --scorer "$w/f.safetensors" --boxes $split.safetensors --json "$w/s.json" 2> /dev/null
    line="$line $(share) |"
  done
  echo "$line"
done
