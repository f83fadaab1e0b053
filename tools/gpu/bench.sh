#!/usr/bin/env bash
# Sampling benchmarks on one GPU machine: Point-E's geometry with 64 + 64 Karras-Heun steps,
# random weights, batch 1/8/32/64, eager fp32 vs bf16 autocast, then torch.compile. JSON into $OUT.
# Needs .wheels/ carried (pydantic and its deps, diffusers and its deps: huggingface-hub, filelock, regex,
# requests, importlib-metadata); see docs/speed.md for the pip download command.
#   OUT=/tmp/out bash tools/gpu/bench.sh
set -euo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m pip install -q --no-index --no-deps --find-links .wheels --target /tmp/pylib \
  pydantic pydantic-core annotated-types typing-extensions typing-inspection diffusers huggingface-hub \
  filelock regex requests importlib-metadata zipp
export PYTHONPATH=/tmp/pylib:$PWD
python3 -c "import torch, pydantic, diffusers; print('torch', torch.__version__, torch.cuda.is_available())"
python3 -m cdm3d.cli bench --geometry pointe --device cuda --batches 1 8 32 64 --repeats 3 --compare \
  --out "$OUT/bench_pointe_cuda.json"
python3 -m cdm3d.cli bench --geometry pointe --device cuda --batches 32 --repeats 3 --compile \
  --out "$OUT/bench_pointe_cuda_compiled.json"
