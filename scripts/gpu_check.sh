#!/usr/bin/env bash
# The prepared GPU check: run once on a CUDA host (about 13 minutes), it prints a markdown table for BENCHMARKS.md.
#   scripts/gpu_check.sh            on a CUDA host, from the repository root, with the project installed
#   scripts/gpu_check.sh --dry-run  the same steps on CPU at tiny sizes, in seconds (the test suite runs it)
# Steps:
#   1. serve on CUDA (bf16 where the server offers it) and smoke-test a stream and /samples;
#   2. time sampling with the cifar10 preset UNet (random weights) at batch 64 in bf16 against the card's FLOP floor;
#   3. time cifar10 training in images/s with AMP, eager and compiled;
#   4. train the MNIST recipe (class-conditional where `ddpm train` offers it) for 10 minutes and print `ddpm eval`.
# Environment: PYTHON (default: python3), TRAIN_MINUTES (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
DDPM=("$PYTHON" -m app.cli)

if [ "${1:-}" = --dry-run ]; then
  DEVICE=cpu PRESET=tiny SAMPLE_BATCH=2 SAMPLE_STEPS=2 TRAIN_BATCH=4 TRAIN_STEPS=2 AMP=bf16 SERVE_N=1 SERVE_STEPS=2
  MNIST=(--preset tiny --max-steps 2 --ckpt-every 2) EVAL=(--n 8 --steps 2 --batch-size 8 --bpd-images 2 --bpd-timesteps 2)
  COMPILE_VARIANTS=("")  # compiling takes minutes on CPU
else
  DEVICE=cuda PRESET=cifar10 SAMPLE_BATCH=64 SAMPLE_STEPS=50 TRAIN_BATCH=128 TRAIN_STEPS=30 AMP=bf16 SERVE_N=16 SERVE_STEPS=100
  MNIST=(--preset mnist --max-minutes "${TRAIN_MINUTES:-10}") EVAL=(--n 1000 --steps 50)
  COMPILE_VARIANTS=("" --compile)
  "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA device: use --dry-run")'
fi
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
RESULTS=$WORK/results.jsonl
say() { printf '[gpu-check] %s\n' "$*" >&2; }
note() {  # note WHAT SETTING RESULT: a row of the final table
  "$PYTHON" -c 'import json, sys; print(json.dumps({"what": sys.argv[1], "setting": sys.argv[2], "result": sys.argv[3]}))' \
    "$1" "$2" "$3" >>"$RESULTS"
}

serve_check() {
  local port serve_args=(--device "$DEVICE" --log-level warning) precision=fp32
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if "${DDPM[@]}" serve --help | grep -q -- --dtype; then
    serve_args+=(--dtype bf16) precision=bf16
  else
    say "ddpm serve has no --dtype: served in fp32"
  fi
  "${DDPM[@]}" serve --port "$port" "${serve_args[@]}" >"$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  local url=http://127.0.0.1:$port deadline=$((SECONDS + 180))
  until curl -fsS -o /dev/null "$url/readyz" 2>/dev/null; do
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/serve.log" >&2; return 1; }
    [ $SECONDS -lt $deadline ] || { say "not ready after 180 s"; return 1; }
    sleep 0.5
  done
  local device
  device=$(curl -fsS "$url/api/v1/model" | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["device"])')
  curl -fsS -N --max-time 120 "$url/api/v1/stream?n=$SERVE_N&steps=$SERVE_STEPS" >"$WORK/stream.txt"
  grep -q '^event: done' "$WORK/stream.txt" || { say "the stream did not end with done"; return 1; }
  local frames start=$EPOCHREALTIME took
  frames=$(grep -c '^event: frame' "$WORK/stream.txt")
  curl -fsS -X POST -H 'Content-Type: application/json' -H 'Accept: image/png' \
    -d "{\"n\": $SERVE_N, \"steps\": $SERVE_STEPS, \"seed\": 0}" -o "$WORK/samples.png" "$url/api/v1/samples"
  took=$(awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $start }")
  [ "$(head -c 4 "$WORK/samples.png" | od -An -tx1 | tr -d ' \n')" = 89504e47 ] || { say "/samples: not a PNG"; return 1; }
  kill "$SERVER_PID" && wait "$SERVER_PID" || true
  SERVER_PID=
  note "serve (bundled MNIST model)" "device $device, $precision" \
       "stream: $frames frames then done; /samples $SERVE_N × $SERVE_STEPS steps: $took s, a PNG"
}

mnist_recipe() {
  local conditional=() kind=unconditional
  if "${DDPM[@]}" train --help | grep -q -- --num-classes; then
    conditional=(--num-classes 10) kind=conditional
  else
    say "ddpm train has no --num-classes yet: training the MNIST recipe unconditional"
  fi
  local start=$SECONDS
  "${DDPM[@]}" train "${MNIST[@]}" "${conditional[@]}" --dataset mnist5k --device "$DEVICE" --amp "$AMP" \
    --sample-every 0 --run-dir "$WORK/mnist" >"$WORK/train.log" 2>&1 || { tail -20 "$WORK/train.log" >&2; return 1; }
  local trained=$((SECONDS - start))
  "${DDPM[@]}" export "$WORK/mnist" --out "$WORK/mnist.safetensors" >/dev/null
  "${DDPM[@]}" eval --model "$WORK/mnist.safetensors" --device "$DEVICE" "${EVAL[@]}" --out "$WORK/eval.json" \
    >"$WORK/eval.log" 2>&1 || { tail -20 "$WORK/eval.log" >&2; return 1; }
  local figures
  figures=$("$PYTHON" -c 'import json, sys
r = json.load(open(sys.argv[1]))
print("; ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                if isinstance(v, int | float) and not k.endswith(("seed", "batch_size"))))' "$WORK/eval.json")
  note "MNIST recipe, $kind, ${trained} s" "$(printf '%s ' "${MNIST[@]}")" "ddpm eval: $figures"
}

say "1/4 serve and smoke-test on $DEVICE"
serve_check
say "2/4 sampling: $PRESET UNet, batch $SAMPLE_BATCH, $SAMPLE_STEPS steps, bf16"
"$PYTHON" scripts/gpu_check.py sampling --preset "$PRESET" --batch "$SAMPLE_BATCH" --steps "$SAMPLE_STEPS" \
  --dtype bf16 --device "$DEVICE" >>"$RESULTS"
for variant in "${COMPILE_VARIANTS[@]}"; do
  say "3/4 training: $PRESET, batch $TRAIN_BATCH, AMP $AMP ${variant:-(eager)}"
  "$PYTHON" scripts/gpu_check.py training --preset "$PRESET" --batch "$TRAIN_BATCH" --steps "$TRAIN_STEPS" \
    --amp "$AMP" --device "$DEVICE" ${variant:+"$variant"} >>"$RESULTS"
done
say "4/4 the MNIST recipe, then ddpm eval"
mnist_recipe
echo
echo "Host: $(lscpu | sed -n 's/^Model name: *//p' | head -1); device: $("$PYTHON" -c "import torch
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"); torch $("$PYTHON" -c 'import torch; print(torch.__version__)')"
echo
"$PYTHON" scripts/gpu_check.py table "$RESULTS"
