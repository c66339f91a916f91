#!/usr/bin/env bash
# Throughput of `oodbox video` with the fixture model at 320 and 640 (frame size = --imgsz),
# with the time per stage. Usage: benches/video_fps.sh [OUT_DIR] [FRAMES=40]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-video-fps}; frames=${2:-40}
mkdir -p "$out"
bin=target/release/oodbox
cargo build --release --quiet
for size in 320 640; do
    h=$(( size * 3 / 4 ))
    "$bin" synth-video --out "$out/in_$size.mkv" --width "$size" --height "$h" --fps 10 \
        --seconds "$(( frames / 10 ))" --quiet
    echo "== $size x $h, --imgsz $size"
    "$bin" video --model models/shapes.safetensors --scorer models/shapes-scorer.safetensors \
        --input "$out/in_$size.mkv" --output "$out/out_$size.mp4" --imgsz "$size" --quiet 2>&1 \
        | grep -v "^warning: the scorer was calibrated"
done
