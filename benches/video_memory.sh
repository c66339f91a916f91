#!/usr/bin/env bash
# A one-hour synthetic stream (low resolution, low frame rate) piped through `oodbox video`,
# sampling the filter's resident memory every 10 s: it should stay flat.
# Usage: benches/video_memory.sh [OUT_DIR] [SECONDS=3600] [FPS=2]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-video-memory}; seconds=${2:-3600}; fps=${3:-2}
mkdir -p "$out"
bin=target/release/oodbox
cargo build --release --quiet
"$bin" synth-video --out - --seconds "$seconds" --fps "$fps" --width 160 --height 120 \
    --id-objects 2 --id-every 20 --ood-every 30 --quiet \
  | "$bin" video --model models/shapes.safetensors --scorer models/shapes-scorer.safetensors \
      --input - --output "$out/out.mkv" --events "$out/events.jsonl" --imgsz 128 --quiet \
      2> "$out/report.txt" &
pid=$!
echo "elapsed_s rss_kib" > "$out/rss.txt"
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    # the filter is the second process of the pipe: find it by its parent shell's job
    for p in $(pgrep -f "oodbox video --model" || true); do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        [ -n "$rss" ] && echo "$(( $(date +%s) - start )) $rss" >> "$out/rss.txt"
    done
    sleep 10
done
wait "$pid" || true
cat "$out/report.txt"
