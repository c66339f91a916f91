#!/usr/bin/env bash
# FGSM surrogate box sets of the shapes model on the first N train images of a shapes world
# (ε = 2, 4 and 8 pixel levels, one gradient per image), and the same images' plain extraction
# for the time per image. Writes OUT/fgsm{2,4,8}.safetensors, OUT/fgsm_clean.safetensors and
# OUT/{fgsm,plain}_time.txt (/usr/bin/time -v).
#   cargo build --release && bash benches/fgsm_boxes.sh WORLD OUT [N]   (WORLD e.g. data/shapes)
set -euo pipefail
B=$(pwd)/target/release/oodbox
world=$1 out=$2 n=${3:-600}
sub=$(mktemp -d)
mkdir -p $sub/images/train $sub/labels/train "$out"
for f in $(ls $world/images/train | head -$n); do
  ln -s $(realpath $world/images/train/$f) $sub/images/train/$f
  ln -s $(realpath $world/labels/train/${f%.png}.txt) $sub/labels/train/${f%.png}.txt
done
grep -E '^(nc|names):' $world/data.yaml > $sub/data.yaml
printf 'train: images/train\nval: images/train\n' >> $sub/data.yaml
run() { /usr/bin/time -v $B extract --model models/shapes.safetensors --imgsz 256 --quiet \
  --data $sub/data.yaml --split train "$@"; }
run --out "$out/fgsm_clean.safetensors" --fgsm-eps 2 4 8 \
  --fgsm-out "$out/fgsm2.safetensors" "$out/fgsm4.safetensors" "$out/fgsm8.safetensors" \
  2> "$out/fgsm_time.txt"
run --out "$out/plain_subset.safetensors" 2> "$out/plain_time.txt"
