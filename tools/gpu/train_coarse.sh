#!/usr/bin/env bash
# Train the coarse point stage and its low-noise expert on one lent GPU, at two sizes, all four at once, with the
# learning-rate schedule fitted to the minutes left (--fit-schedule). Needs the carried wheels folder (.whl:
# pydantic and its deps, trimesh, manifold3d; see configs/README.md) and runs/data/world_train_emb.safetensors
# (tools/embed_world.py). Weights come back in float16 under $OUT (each file under 16 MiB).
#   OUT=/tmp/out BUDGET=535 bash tools/gpu/train_coarse.sh
set -uo pipefail
t0=$(date +%s)
OUT=${OUT:-/tmp/out}; BUDGET=${BUDGET:-535}; OBJECTS=${OBJECTS:-16000}; WORKERS=${WORKERS:-14}
DEVICE=${DEVICE:-cuda}; PY=${PY:-python3}; RUNS=${RUNS:-/tmp/runs}; WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT" "$RUNS"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | tee "$RUNS/summary.txt"
if [ -d "$WHEELS" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
$PY -c "import torch, pydantic, trimesh, manifold3d; print('torch', torch.__version__, torch.cuda.is_available())" \
  | tee -a "$RUNS/summary.txt"
timeout 200 $PY tools/build_world_cache.py --split train --objects "$OBJECTS" --workers "$WORKERS" 2>&1 | tail -n 2
echo "geometry ready after $(( $(date +%s) - t0 )) s" | tee -a "$RUNS/summary.txt"
# The trainer's GPU data path gives the CPU's batches (and how much faster), before the GPU is busy.
[ "$DEVICE" = cuda ] && timeout 60 $PY tools/gpu/check_batches.py --out "$OUT/batches.json" 2>&1 | tail -n 1
limit=$(( BUDGET - ($(date +%s) - t0) - 25 ))  # 25 s kept for loading, the last checkpoints and the copies
echo "training time limit: $limit s" | tee -a "$RUNS/summary.txt"
read -ra extra <<< "${EXTRA:-}"  # more tools/train.py arguments (a CPU smoke run: EXTRA="--set train.batch_size=4")
common=(--device "$DEVICE" --no-progress --time-limit "$limit" --fit-schedule --set "data.objects=$OBJECTS" "${extra[@]}")
mid='{width: 192, layers: 6, heads: 6, local_k: 16, local_width: 48}'
export OMP_NUM_THREADS=3 PYTHONUNBUFFERED=1
train() {  # name, recipe, extra --set arguments
  local name=$1 recipe=$2; shift 2
  $PY tools/train.py --config "configs/train/$recipe.yaml" --out "$RUNS/$name" "${common[@]}" "$@" \
    > "$RUNS/$name.log" 2>&1 &
}
train coarse points_coarse_gpu
train expert points_coarse_expert_gpu
train coarse_m points_coarse_gpu --set "stage.network=$mid" --set train.lr=0.0005
train expert_m points_coarse_expert_gpu --set "stage.network=${mid/local_k: 16/local_k: 24}" --set train.lr=0.0005
wait
for name in coarse expert coarse_m expert_m; do
  echo "== $name: $(grep -v '^\s*$' "$RUNS/$name.log" | tail -n 3 | tr '\n' ' ')" | tee -a "$RUNS/summary.txt"
  tail -n 1 "$RUNS/$name/log.csv" 2>/dev/null | tee -a "$RUNS/summary.txt"
  [ -f "$RUNS/$name/stage.safetensors" ] && $PY -c "import sys, torch; from cdm3d.stages import load_builtin
from cdm3d.core import load_stage, save_stage
load_builtin(); save_stage(load_stage(sys.argv[1]), sys.argv[2], torch.float16)" \
    "$RUNS/$name/stage.safetensors" "$OUT/$name.safetensors"
done
echo "total $(( $(date +%s) - t0 )) s" | tee -a "$RUNS/summary.txt"
tar -czf "$OUT/logs.tar.gz" -C "$RUNS" --exclude='*.safetensors' --exclude='state.pt' .
cp "$RUNS/summary.txt" "$OUT/summary.txt"
