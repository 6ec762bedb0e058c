#!/usr/bin/env bash
# The one command to run on a machine with a CUDA GPU: every GPU path of segdeploy, results in one folder.
#
#   benchmarks/gpu_check.sh [--data-root KVASIR_DIR] [--out DIR]      (from anywhere; python3 or $PY)
#
# 1. env: GPU name, driver, CUDA, package versions -> env.json
# 2. the `gpu` and `trt` tests (pytest -m "gpu or trt") -> pytest.log
# 3. a small run: U-Net R18 at 256 px, a few training steps on CUDA (synthetic data, or Kvasir-SEG with --data-root)
# 4. export fp32/fp16/int8 graphs (+ TensorRT engines through Polygraphy when TensorRT is installed,
#    one optimisation profile per benchmarked batch)
# 5. bench sweep of torch-all (without torch.compile), ort-all and trt-all at batch 1 and 8, every cell in a
#    fresh process, with accuracy columns on 16 validation images -> bench.json, bench.md, plots
# 6. each torch.compile variant at batch 8 in its own sweep, each cell bounded by --cell-timeout, while the
#    time budget lasts -> compile/<variant>/
# 7. README.md: what ran, each phase's exit status and seconds.
# Variants that cannot run here (no TensorRT, no onnxruntime-gpu) are rows "unavailable: why". A failing phase
# does not stop the others; the exit status is 0 only if every phase that ran succeeded. The whole check keeps
# to GPU_CHECK_BUDGET_S seconds (default 540): later phases get what is left. GPU_CHECK_DEVICE=cpu runs the same
# phases on a CPU (to check the script itself on a machine without a GPU; its numbers are no GPU results).
# BATCHES (default 1,8) and SIZE (default 256) change the benchmarked batch sizes and the input size.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-python3}
BUDGET=${GPU_CHECK_BUDGET_S:-540}
BATCHES=${BATCHES:-1,8}
SIZE=${SIZE:-256}
DATA_ROOT=""
OUT=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --data-root) DATA_ROOT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [[ $DEVICE == cuda ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "error: no CUDA GPU visible to torch ($PY); this check needs one" >&2
  exit 2
fi
GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu-dry-run')" \
  | tr -c 'A-Za-z0-9\n' '-' | sed 's/--*/-/g; s/-$//')
OUT=${OUT:-benchmarks/results/$GPU}
RUN=runs/gpu-check
mkdir -p "$OUT/logs"
PHASES="$OUT/phases.tsv"
printf 'phase\trc\tseconds\tcommand\n' > "$PHASES"
FAILED=0
declare -A RC=()

remaining() { echo $(( BUDGET - SECONDS )); }

phase() {  # NAME LIMIT_S COMMAND...: run with a time limit, log to logs/NAME.log, record rc and seconds
  local name=$1 limit=$2 start=$SECONDS rc=0
  shift 2
  local left; left=$(remaining)
  (( limit > left - 20 )) && limit=$(( left - 20 ))
  if (( limit < 30 )); then
    printf '%s\tskipped\t0\t%s (time budget of %s s spent)\n' "$name" "$*" "$BUDGET" >> "$PHASES"
    echo "== $name: skipped, time budget spent"
    RC[$name]=skipped
    return 0
  fi
  local command; command=$(printf '%q ' "$@")
  echo "== $name (limit ${limit} s): $command"
  timeout --kill-after=15 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1 || rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - start ))" "$command" >> "$PHASES"
  echo "   rc $rc, $(( SECONDS - start )) s (log: $OUT/logs/$name.log)"
  # a torch.compile sweep stopped by its time limit is a bounded result, not a failure of the check
  if (( rc != 0 )) && ! [[ $name == compile-* && ( $rc == 124 || $rc == 137 ) ]]; then FAILED=1; fi
  RC[$name]=$rc
  return 0
}

HAVE_TRT=$("$PY" -c "import importlib.util as u; print(int(u.find_spec('tensorrt') is not None))")
DATA_ARGS=(--dataset synthetic --max-images 64)
if [[ -n $DATA_ROOT ]]; then DATA_ARGS=(--dataset kvasir --data-root "$DATA_ROOT" --max-images 64); fi
TRT_ARGS=()
if (( HAVE_TRT )); then TRT_ARGS=(--trt --opt-batch "$BATCHES" --max-batch "${BATCHES##*,}"); fi
NO_COMPILE=torch,torch+cl,torch+fp16,torch+bf16,torch+fp16+cl,torch+bf16+cl,torch+graph,torch+fp16+cl+graph
COMPILE=(torch+compile torch+fp16+cl+compile=reduce-overhead torch+fp16+cl+compile=max-autotune-no-cudagraphs)
BENCH=(--device "$DEVICE" --precision fp32,fp16,int8 --iters 30 --warmup 5 --max-warmup 60)

phase env 60 "$PY" benchmarks/gpu_check_report.py env "$OUT/env.json"
phase pytest 300 "$PY" -m pytest -q -m "gpu or trt" -p no:cacheprovider tests
cp "$OUT/logs/pytest.log" "$OUT/pytest.log" 2>/dev/null || true
phase train 180 "$PY" -m segdeploy train "${DATA_ARGS[@]}" --model unet --encoder resnet18 --size "$SIZE" --epochs 1 \
  --max-steps 10 --batch-size 8 --device "$DEVICE" --output "$RUN" --overwrite
phase export 300 "$PY" -m segdeploy export "$RUN" --precision fp32,fp16,int8 --calib-images 16 ${TRT_ARGS[@]+"${TRT_ARGS[@]}"}
# a missing graph or engine of a variant that could run stops a sweep before it starts: leave such variants out
# (the README says so); without TensorRT the trt-all rows say "unavailable" and need no engine
BACKENDS=$NO_COMPILE
if [[ -f $RUN/export/model.onnx && -f $RUN/export/model.fp16.onnx && -f $RUN/export/model.int8.onnx ]]; then
  BACKENDS+=",ort-all"
fi
if (( ! HAVE_TRT )) || [[ -f $RUN/engines/fp32.plan && -f $RUN/engines/fp16.plan && -f $RUN/engines/int8.plan ]]; then
  BACKENDS+=",trt-all"
fi
phase bench 330 "$PY" -m segdeploy bench "$RUN" "${BENCH[@]}" --backends "$BACKENDS" \
  --batch-sizes "$BATCHES" --cell-timeout 90 --max-images 16
# one sweep per torch.compile variant (each in a copy of the run, so each keeps its own bench.json), cheapest
# compile first, each cell bounded by --cell-timeout: what the budget does not reach is recorded as skipped
for variant in "${COMPILE[@]}"; do
  slug=$(echo "$variant" | tr -c 'A-Za-z0-9\n' '-' | sed 's/--*/-/g; s/-$//')
  rm -rf "$RUN-$slug" && mkdir -p "$RUN-$slug"
  cp -r "$RUN"/config.toml "$RUN"/history.csv "$RUN"/checkpoints "$RUN-$slug"/ 2>/dev/null || true
  phase "compile-$slug" 150 "$PY" -m segdeploy bench "$RUN-$slug" "${BENCH[@]}" --backends "$variant" \
    --batch-sizes "${BATCHES##*,}" --cell-timeout 100 --no-accuracy
  mkdir -p "$OUT/compile/$slug"
  for f in bench.json bench.md; do
    if [[ -f $RUN-$slug/$f ]]; then cp "$RUN-$slug/$f" "$OUT/compile/$slug/"; fi
  done
done

for f in bench.json bench.md latency_vs_batch.png throughput_vs_batch.png accuracy_vs_latency.png metrics.json history.csv; do
  if [[ -f $RUN/$f ]]; then cp "$RUN/$f" "$OUT/"; fi
done
if [[ -d $RUN/engines ]]; then
  mkdir -p "$OUT/engines" && cp "$RUN"/engines/*.json "$RUN"/engines/*.log "$OUT/engines/" 2>/dev/null || true
fi
"$PY" benchmarks/gpu_check_report.py readme "$OUT" "${DATA_ROOT:-synthetic} at $SIZE px, batch sizes $BATCHES" \
  "$BUDGET" "$SECONDS" || FAILED=1
echo "results in $OUT ($(( SECONDS )) s; README.md lists each phase)"
exit $FAILED
