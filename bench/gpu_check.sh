#!/usr/bin/env bash
# The GPU check of issue 8: the sampling-forward and training-step benchmarks at batch 256 in bf16 (and
# compiled), then the end-to-end comparison, on one CUDA device. Meant to finish in under 8 minutes.
#
#   bash bench/gpu_check.sh            # from the repository root, on the GPU machine
#
# It runs from the source tree (PYTHONPATH=.), installs nothing (the machine is offline: torch and diffusers
# must already be there), prints every table, and copies them to $OUT (when set) for docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
log="${OUT:-/tmp}/gpu_check.txt"
{
  echo "## sampling forward, ddpm-cifar10, batch 256"
  PYTHONPATH=. timeout 240 python bench/sample_throughput.py --device cuda --batch-size 256 --iters 20 \
      --rows diffusers-fp32 diffusers-bf16 ours-fp32 ours-bf16 ours-bf16-cl ours-bf16-cl-compiled
  echo "## training step, ddpm-cifar10, batch 256"
  PYTHONPATH=. timeout 120 python bench/train_throughput.py --device cuda --presets ddpm-cifar10 --batch-size 256 \
      --steps 10 --warmup 3
  echo "## end to end, 64 images"
  if [ -d /tmp/uncond-model ]; then
    PYTHONPATH=. timeout 120 python bench/end_to_end.py --model /tmp/uncond-model --repeats 2
  else
    echo "end to end skipped: copy an unconditional model folder to /tmp/uncond-model (see docs/benchmarks.md)"
  fi
} 2>&1 | tee "$log"
