#!/usr/bin/env bash
# Outlier exposure against unknown kinds the scorer never saw (BENCHMARKS.md, "Unknown kinds the
# outliers did not show"). Two folds of the seven unknown kinds: the outlier worlds (seeds 11 to
# 14, the demo recipe's scene counts) draw only the fold's seen kinds, and the scorer is evaluated
# on a world of the seed-0 scenes whose unknowns are the other kinds, then on one whose unknowns
# are the seen kinds. Known objects, train, val and test_id are the standard world's (a class
# split draws its known objects exactly as the standard world does).
#   cargo build --release && bash benches/safe_unseen_kinds.sh [OUT]   (default /tmp/exposure)
# SEED=7 evaluates on the seed-7 world instead (data/shapes-s7-safe, fitted on its train split);
# the outlier worlds stay the same. FEATURES: the ROI recipe (default cls,roi:4@2,roi:6@2,roi:9;
# the first table of that section used cls,roi:4,roi:6,roi:9).
# EXTRA: more `fit` rows, as "NAME|FIT-ARGS" lines; %OUTLIERS% in the arguments stands for the
# fold's --outliers.
set -euo pipefail
root=$(pwd)
B=$root/target/release/oodbox
out=${1:-/tmp/exposure}
features=${FEATURES:-cls,roi:4@2,roi:6@2,roi:9}
extract() { # world folder, box folder, splits...
  mkdir -p "$2"
  for split in "${@:3}"; do
    [ -f "$2/$split.safetensors" ] && continue
    case $split in
      train|val) data=(--data "$1/data.yaml" --split "$split") ;;
      *) data=(--data "$1/coco/$split.json") ;;
    esac
    $B extract --model models/shapes.safetensors --imgsz 256 --quiet --features $features \
      "${data[@]}" --out "$2/$split.safetensors"
  done
}
world() { # folder, synth arguments...
  [ -f "$1/data.yaml" ] || $B synth --out "$1" --quiet "${@:2}"
}
seed=${SEED:-0}
base=shapes; [[ $seed == 0 ]] || base=shapes-s$seed-safe
# A test world: the base world's scenes with the given unknown kinds, beside its ID splits.
test_world() { # name, --near KINDS --far KINDS
  world "data/shapes-$1" --seed "$seed" --train 1 --val 1 "${@:2}"
  extract "data/shapes-$1" "$out/$1" test_ood_near test_ood_far test_mixed
  for split in train val test_id; do ln -sf "$out/$base/$split.safetensors" "$out/$1/"; done
}
world "data/$base" --seed "$seed"
extract "data/$base" "$out/$base" train val test_id
source "$root/benches/fit_eval.sh"
folds=("near=pentagon,cross far=blob unseen_near=crescent,ring unseen_far=scribble,noise_patch"
  "near=crescent,ring far=scribble,noise_patch unseen_near=pentagon,cross unseen_far=blob")
for fold in "${folds[@]}"; do
  eval "$fold"
  name=${near//,/-}-${far//,/-}
  suffix=; [[ $seed == 0 ]] || suffix=-s$seed
  test_world "seen-$name$suffix" --near "$near" --far "$far"
  test_world "unseen-$name$suffix" --near "$unseen_near" --far "$unseen_far"
  outliers=()
  for spec in 11:900 12:1800 13:1800 14:1800; do
    o=${spec%%:*}
    world "data/shapes-s$o-oe-$name" --seed "$o" --train 1 --val 1 --test "${spec#*:}" \
      --near "$near" --far "$far"
    extract "data/shapes-s$o-oe-$name" "$out/outliers$o-$name" test_mixed
    outliers+=(--outliers "$out/outliers$o-$name/test_mixed.safetensors")
  done
  echo "world $base; fold: outliers of $near (near) and $far (far); unseen: $unseen_near (near) and $unseen_far (far)"
  header
  rows=("energy|--scorer energy"
    "safe unknown, $features|--scorer safe --param surrogate=unknown --features $features %OUTLIERS%"
    "combine cauchy (safe unknown, energy)|--scorer combine --param of=safe:surrogate=unknown,energy --param method=cauchy --features $features %OUTLIERS%")
  [ -n "${EXTRA:-}" ] && mapfile -t -O ${#rows[@]} rows <<< "$EXTRA"
  for spec in "${rows[@]}"; do
    read -ra args <<< "${spec#*|}"
    fit_args=()
    for a in "${args[@]}"; do
      if [[ $a == %OUTLIERS% ]]; then fit_args+=("${outliers[@]}"); else fit_args+=("$a"); fi
    done
    cd "$out/unseen-$name$suffix"
    fit "${spec%%|*}, unseen kinds" "${fit_args[@]}"
    cd "$out/seen-$name$suffix"
    row "${spec%%|*}, seen kinds" "$w/s.safetensors" -
  done
  cd "$root"
done
