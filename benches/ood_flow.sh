#!/usr/bin/env bash
# The `flow` scorer beside energy and knn on the shapes benchmark: near and far OOD (VOS protocol)
# and the GT-matched mixed scenes, each scorer fitted with its defaults on train and calibrated
# on val (`oodbox fit`), on the seed-0 world (tests/fixtures/shapes_boxes) and on a second world
# (default data/shapes-s7-safe, `oodbox synth --seed 7`), and with the YOLO11n and YOLO26n
# fixtures on the seed-0 world, whose box sets this script extracts;
# then the fit time on 100 000 boxes (the seed-0 train set tiled with 5% feature noise, unless
# BOXES100K names a real set) and the scoring time per box. Prints markdown for BENCHMARKS.md.
#   cargo build --release && bash benches/ood_flow.sh
set -euo pipefail
root=$(pwd)
B=$root/target/release/oodbox
work=$(mktemp -d)
world2=${WORLD2:-data/shapes-s7-safe}
[ -f $world2/data.yaml ] || $B synth --out $world2 --seed 7 --quiet
# extract MODEL DATA_DIR OUT: the six splits of a shapes world as box sets.
extract() {
  mkdir -p $3
  run() { $B extract --model $1 --imgsz 256 --quiet "${@:2}"; }
  for split in train val; do run $1 --data $2/data.yaml --split $split --out $3/$split.safetensors; done
  for split in test_id test_ood_near test_ood_far test_mixed; do
    run $1 --data $2/coco/$split.json --out $3/$split.safetensors
  done
}
extract models/shapes.safetensors $world2 $work/w2
# The YOLO11n and YOLO26n fixtures on the standard world (as in "Which family the demo bundles").
[ -f data/shapes/data.yaml ] || $B synth --out data/shapes --seed 0 --quiet
for m in yolo11 yolo26; do extract tests/fixtures/$m/best.pt data/shapes $work/$m; done
metric() { python3 -c "import json; m = json.load(open('$work/m.json')); print(f\" {m['auroc']:.4f} / {m['fpr95']:.4f} |\", end='')"; }
for world in tests/fixtures/shapes_boxes $work/w2 $work/yolo11 $work/yolo26; do
  echo "world: $world"; echo
  echo "| scorer | near AUROC / FPR95 | far AUROC / FPR95 | mixed AUROC / FPR95 | fit s (wall) |"
  echo "|---|---|---|---|---|"
  for kind in energy knn flow; do
    t0=$(date +%s.%N)
    $B fit --scorer $kind --boxes $world/train.safetensors --calibration-boxes $world/val.safetensors --out $work/s.safetensors --quiet
    t1=$(date +%s.%N)
    row="| $kind |"
    for ood in near far; do
      $B eval --scorer $work/s.safetensors --id $world/test_id.safetensors --ood $world/test_ood_$ood.safetensors --json $work/m.json > /dev/null
      row+=$(metric)
    done
    $B eval --scorer $work/s.safetensors --mixed $world/test_mixed.safetensors --json $work/m.json > /dev/null
    row+=$(metric)
    echo "$row $(python3 -c "print(f'{$t1 - $t0:.1f}')") |"
  done
  echo
done
boxes=${BOXES100K:-$work/train100k.safetensors}
[ -f "$boxes" ] || .venv/bin/python benches/tile_boxes.py tests/fixtures/shapes_boxes/train.safetensors $boxes 100000 0 0.05
echo "Fit on $boxes:"
/usr/bin/time -f "%e s wall, %U s user, %S s system" $B fit --scorer flow --boxes $boxes \
  --calibration-boxes tests/fixtures/shapes_boxes/val.safetensors --out $work/s100k.safetensors --quiet
echo "Scoring per image against the forward (oodbox bench, 1 then 2 threads):"
for t in 1 2; do
  RAYON_NUM_THREADS=$t $B bench --model models/shapes.safetensors --imgsz 256 --iters 40 \
    --scorer $work/s100k.safetensors | grep -E "forward_ms|score_ms"
done
echo "Scoring batched (eval over test_id + test_ood_near, 1 thread): CPU time, µs per box (wall)"
for i in 1 2 3; do
  RAYON_NUM_THREADS=1 /usr/bin/time -f "%U s user" $B eval --scorer $work/s100k.safetensors \
    --id tests/fixtures/shapes_boxes/test_id.safetensors \
    --ood tests/fixtures/shapes_boxes/test_ood_near.safetensors --json $work/m.json > /dev/null
  python3 -c "import json; print(round(json.load(open('$work/m.json'))['score_us_per_box'], 1))"
done
rm -rf $work
