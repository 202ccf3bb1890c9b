#!/usr/bin/env bash
# The GPU check of docs/benchmarks.md, "Speed": the sampling-forward and training-step benchmarks at batch 256
# in bf16 (and compiled), then the end-to-end comparison, on one CUDA device. Meant to finish in under 8 minutes.
#
#   bash bench/gpu_check.sh
#
# It installs nothing (the machine is offline: torch and diffusers must already be there), so it puts this
# checkout on PYTHONPATH itself. It prints every table and copies them to $OUT (default: runs/) for
# docs/benchmarks.md. The end-to-end rows need the unconditional model in runs/uncond-model ("End to end").
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's diffusion, installed or not
python -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
mkdir -p "${OUT:-runs}"
log="${OUT:-runs}/gpu_check.txt"
{
  echo "## sampling forward, ddpm-cifar10, batch 256"
  timeout 240 python bench/sample_throughput.py --device cuda --batch-size 256 --iters 20 \
      --rows diffusers-fp32 diffusers-bf16 ours-fp32 ours-bf16 ours-bf16-cl ours-bf16-cl-compiled
  echo "## training step, ddpm-cifar10, batch 256"
  timeout 120 python bench/train_throughput.py --device cuda --presets ddpm-cifar10 --batch-size 256 \
      --steps 10 --warmup 3
  echo "## end to end, 64 images"
  if [ -d runs/uncond-model ]; then
    timeout 120 python bench/end_to_end.py --model runs/uncond-model --repeats 2
  else
    echo "end to end skipped: copy an unconditional model folder to runs/uncond-model (see docs/benchmarks.md)"
  fi
} 2>&1 | tee "$log"
