#!/usr/bin/env bash
# `safe` with outlier exposure (`--param surrogate=unknown`) beside energy and the default
# `safe`, on two shapes worlds; the unknown objects it trains against come from other worlds
# (other scenes, the same unknown classes), alone or by kind. Prints the markdown table of
# BENCHMARKS.md "Outlier exposure".
#   cargo build --release && bash benches/safe_exposure.sh [OUT]   (default /tmp/exposure)
# MODEL (default models/shapes.safetensors) is the detector, WORLDS (default "shapes
# shapes-s7-safe") the worlds under data/ to fit and evaluate on, SAFE_PARAMS extra `fit`
# arguments for the safe rows (e.g. "--param per_level=false"), OUTLIER_WORLDS the outlier
# worlds as SEED:SCENES (default "11:900"; each is data/shapes-s<SEED>-oe, made if missing, and
# every one is given to the fit with its own --outliers). ROWS=headline fits only energy and the
# best setting (cls,$ROI against the unknowns of the mixed scenes), extracts only
# the outlier worlds' mixed scenes, and adds the calibration check: the share of known objects
# flagged at alpha 0.05 in test_id and test_mixed (`oodbox score`). CLASSES (synth's --known,
# --near and --far) makes the outlier worlds with that class split, as data/shapes-s<SEED>-oe-
# <known kinds>, for a detector trained on it (BENCHMARKS.md, "Another class split"). ROI
# (default roi:4@2,roi:6@2,roi:9, the recipe since 2026-12-05 night; before, roi:4,roi:6,roi:9)
# the ROI sources extracted and fitted beside cls: give each ROI its own OUT, as box sets
# already in OUT are reused.
set -euo pipefail
root=$(pwd)
B=$root/target/release/oodbox
out=${1:-/tmp/exposure}
model=$(realpath "${MODEL:-models/shapes.safetensors}")
roi=${ROI:-roi:4@2,roi:6@2,roi:9}
world() { # seed, folder: a shapes world; the outlier worlds need only their test splits
  [ -f "$2/data.yaml" ] || $B synth --out "$2" --seed "$1" --quiet "${@:3}"
}
extract() { # world folder, box folder, splits...
  mkdir -p "$2"
  for split in "${@:3}"; do
    [ -f "$2/$split.safetensors" ] && continue
    case $split in
      train|val) data=(--data "$1/data.yaml" --split $split) ;;
      *) data=(--data "$1/coco/$split.json") ;;
    esac
    $B extract --model "$model" --imgsz 256 --quiet --features $roi "${data[@]}" --out "$2/$split.safetensors"
  done
}
world 0 data/shapes
world 7 data/shapes-s7-safe
outlier_dirs=()
read -ra classes <<< "${CLASSES:-}"
tag=; [[ -z ${CLASSES:-} ]] || tag=-$(sed 's/.*--known \([^ ]*\).*/\1/; s/,/-/g' <<< "$CLASSES")
for spec in ${OUTLIER_WORLDS:-11:900}; do
  seed=${spec%%:*}
  world "$seed" "data/shapes-s$seed-oe$tag" --train 1 --val 1 --test "${spec#*:}" "${classes[@]}"
  # The seed-11 boxes keep the folder name of the single-world runs.
  dir=$out/outliers; [[ $seed == 11 ]] || dir=$out/outliers$seed
  splits=(test_mixed test_ood_near test_ood_far)
  [[ ${ROWS:-all} == headline ]] && splits=(test_mixed)
  extract "data/shapes-s$seed-oe$tag" "$dir" "${splits[@]}"
  outlier_dirs+=("$dir")
done
outliers() { # split: one --outliers per outlier world
  for d in "${outlier_dirs[@]}"; do printf -- '--outliers %s/test_%s.safetensors ' "$d" "$1"; done
}
source "$root/benches/fit_eval.sh"
for name in ${WORLDS:-shapes shapes-s7-safe}; do
  extract data/$name "$out/$name" train val test_id test_ood_near test_ood_far test_mixed
  echo "world $name"
  header
  cd "$out/$name"
  fit energy --scorer energy
  if [[ ${ROWS:-all} == headline ]]; then
    # shellcheck disable=SC2046
    fit "safe unknown, cls,$roi, outliers: mixed" --scorer safe --param surrogate=unknown \
      ${SAFE_PARAMS:-} --features cls,$roi $(outliers mixed)
    # The calibration check, calibrated on the world's 300 val scenes and then on 1,000 (the
    # first 1,000 val scenes of the same synth command, of which those 300 are the first).
    read -ra synth <<< "$(sed -n '1s/.*`oodbox synth \(.*\)`.*/\1/p' "$root/data/$name/data.yaml")"
    cd "$root"
    [ -f "data/$name-cal/data.yaml" ] ||
      $B synth --out "data/$name-cal" "${synth[@]}" --train 1 --val 1000 --test 1 --quiet
    extract "data/$name-cal" "$out/$name-cal" val
    $B recalibrate --scorer "$w/s.safetensors" --calibration-boxes "$out/$name-cal/val.safetensors" \
      --out "$w/r.safetensors" --quiet
    for scorer in s r; do
      for split in test_id test_mixed; do
        echo "  calibrated on $([[ $scorer == s ]] && echo 300 || echo 1000) val scenes, $split: $(
          $B score --scorer "$w/$scorer.safetensors" --boxes "$out/$name/$split.safetensors" \
            --json "$w/k.json" 2>&1 | sed -n '2s/ (alpha.*//p')"
      done
    done
    continue
  fi
  fit "safe (default: mix)" --scorer safe ${SAFE_PARAMS:-}
  for features in cls cls,$roi; do
    for kind in mixed ood_near ood_far; do
      # shellcheck disable=SC2046
      fit "safe unknown, $features, outliers: $kind" --scorer safe --param surrogate=unknown ${SAFE_PARAMS:-} \
        --features $features $(outliers $kind)
    done
  done
  cd "$root"
done
