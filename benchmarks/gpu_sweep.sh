#!/usr/bin/env bash
# Issue 5, item 7: the GPU sweep. Not run as a whole so far (benchmarks/gpu_check.sh ran on an H100 instead).
#
#   benchmarks/gpu_sweep.sh            # on a machine with one CUDA GPU, from the repository root
#
# For U-Net ResNet-34, DeepLabV3+ ResNet-50 and DeepLabV3 ResNet-50 OS 8 at 256x256: a random-init run
# (one training step; latency does not depend on the weights), exported to ONNX, then
# `segdeploy bench --device cuda --backends torch-all,ort-all,tensorrt` over batch 1..128, each cell
# in a fresh subprocess; bench.json/bench.md/plots copied to benchmarks/results/<gpu-name>/<model>/.
# Then the bf16 matmul peak (same machine, same call) and the summary against the goal.
set -euo pipefail
PY=${PY:-python}
BATCHES=${BATCHES:-1,2,4,8,16,32,64,128}
BACKENDS=${BACKENDS:-torch-all,ort-all,tensorrt}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr -c 'A-Za-z0-9\n' '-' | sed 's/--*/-/g; s/-$//')
OUT=benchmarks/results/${GPU}
mkdir -p "$OUT"

sweep() {  # name model encoder output_stride
  local name=$1 model=$2 encoder=$3 os=$4 run=runs/gpu-sweep-$1
  $PY -m segdeploy train --model "$model" --encoder "$encoder" --output-stride "$os" --size 256 \
      --epochs 1 --max-steps 1 --max-images 8 --batch-size 4 --device cuda --output "$run" --overwrite
  $PY -m segdeploy export "$run"
  $PY -m segdeploy bench "$run" --device cuda --backends "$BACKENDS" --batch-sizes "$BATCHES" \
      --iters 100 --warmup 20
  mkdir -p "$OUT/$name"
  cp "$run"/bench.json "$run"/bench.md "$run"/*_vs_*.png "$OUT/$name/"
}

sweep unet-resnet34 unet resnet34 16
sweep deeplabv3plus-resnet50 deeplabv3plus resnet50 16
sweep deeplabv3-resnet50-os8 deeplabv3 resnet50 8
$PY benchmarks/matmul_peak.py --dtype bf16 --output "$OUT/matmul_peak.json"
$PY benchmarks/gpu_summary.py "$OUT"
cat > "$OUT/README.md" <<EOR
# GPU sweep on ${GPU}

Made by \`benchmarks/gpu_sweep.sh\` at commit $(git rev-parse --short HEAD) on $(date -u +%Y-%m-%d):
random-init models (one training step) at 256x256, \`segdeploy bench --device cuda --backends ${BACKENDS}
--batch-sizes ${BATCHES} --iters 100 --warmup 20\`, each (variant, batch) cell in a fresh subprocess,
input already on the device, CUDA-event timing. \`matmul_peak.json\`: measured bf16 matmul peak;
\`summary.json\`: best torch path vs eager FP32 at batch 32 for DeepLabV3+ ResNet-50 and its fraction of that peak.
Each model's bench.json records the GPU, driver, CUDA, SM clock at start and package versions.
EOR
echo "results in $OUT"
