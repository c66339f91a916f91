# Shared by benches/safe_shapes.sh and benches/combine_shapes.sh (sourced, not run): `fit NAME
# FIT-ARGS...` fits a scorer on train.safetensors, calibrates it on val.safetensors (in the
# current directory) and prints one markdown row: AUROC and FPR95 on near, far (VOS protocol)
# and mixed (GT-matched), then the fit's wall time. Needs $B (the oodbox binary).
w=$(mktemp -d)
metric() { python3 -c "import json; m=json.load(open('$w/m.json')); print(f\"{m['auroc']:.4f} | {m['fpr95']:.4f} |\")"; }
row() { # name, scorer file, fit seconds
  local line="| $1 |"
  for ood in near far; do
    $B eval --scorer "$2" --id test_id.safetensors --ood test_ood_$ood.safetensors --json "$w/m.json" > /dev/null
    line="$line $(metric)"
  done
  $B eval --scorer "$2" --mixed test_mixed.safetensors --json "$w/m.json" > /dev/null
  echo "$line $(metric) $3 |"
}
fit() { # name, fit arguments...
  local name=$1; shift
  local s; s=$(date +%s.%N)
  $B fit "$@" --boxes train.safetensors --calibration-boxes val.safetensors --out "$w/s.safetensors" --quiet
  row "$name" "$w/s.safetensors" "$(python3 -c "print(f'{$(date +%s.%N) - $s:.1f}')")"
}
header() {
  echo "| scorer | near AUROC | near FPR95 | far AUROC | far FPR95 | mixed AUROC | mixed FPR95 | fit s |"
  echo "|---|---|---|---|---|---|---|---|"
}
