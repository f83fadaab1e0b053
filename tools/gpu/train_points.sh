#!/usr/bin/env bash
# Train the default point stages and the fidelity classifier on one GPU machine, all three at once.
# Run from the repository root with the carried .wheels/ folder (pydantic, trimesh, manifold3d) and
# runs/data/world_train_emb.safetensors (from tools/embed_world.py). Results go to $OUT.
#   OUT=/tmp/out STEPS=6000 LIMIT=330 bash tools/gpu/train_points.sh
set -euo pipefail
OUT=${OUT:-/tmp/out}; STEPS=${STEPS:-6000}; LIMIT=${LIMIT:-330}; OBJECTS=${OBJECTS:-16000}; CLS_STEPS=${CLS_STEPS:-4000}
WORKERS=${WORKERS:-14}; VAL=${VAL:-1000}
mkdir -p "$OUT" /tmp/runs
python3 --version
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m pip install -q --no-index --no-deps --find-links .wheels --target /tmp/pylib \
  pydantic pydantic-core annotated-types typing-extensions typing-inspection trimesh manifold3d
export PYTHONPATH=/tmp/pylib:$PWD
python3 -c "import torch, pydantic, trimesh, manifold3d; print('torch', torch.__version__, torch.cuda.is_available())"
start=$(date +%s)
timeout 120 python3 tools/build_world_cache.py --split train --objects "$OBJECTS" --workers "$WORKERS"
timeout 60 python3 tools/build_world_cache.py --split val --objects "$VAL" --workers "$WORKERS"
echo "geometry: $(( $(date +%s) - start )) s" | tee -a "$OUT/summary.txt"
common=(--device "${DEVICE:-cuda}" --no-progress --time-limit "$LIMIT" --set "train.steps=$STEPS" --set "data.objects=$OBJECTS")
export OMP_NUM_THREADS=4
python3 tools/train.py --config configs/train/points/coarse_gpu.yaml --out /tmp/runs/coarse "${common[@]}" > /tmp/runs/coarse.log 2>&1 &
python3 tools/train.py --config configs/train/points/upsample_gpu.yaml --out /tmp/runs/upsample "${common[@]}" > /tmp/runs/upsample.log 2>&1 &
# The conditioning-augmentation ablation: the same upsampler trained without augmentation.
python3 tools/train.py --config configs/train/points/upsample_gpu.yaml --out /tmp/runs/upsample_noaug "${common[@]}" \
  --set 'stage.diffusion={augmentation: {max_level: 0.0}}' > /tmp/runs/upsample_noaug.log 2>&1 &
python3 tools/train.py --config configs/train/eval/point_classifier.yaml --out /tmp/runs/classifier --device "${DEVICE:-cuda}" \
  --no-progress --set "train.steps=$CLS_STEPS" --set "data.objects=$OBJECTS" > /tmp/runs/classifier.log 2>&1 &
wait
for run in coarse upsample upsample_noaug; do
  cp "/tmp/runs/$run/stage.safetensors" "$OUT/$run.safetensors"
  cp "/tmp/runs/$run/log.csv" "$OUT/${run}_log.csv"
done
cp /tmp/runs/classifier/point_classifier.safetensors "$OUT/point_classifier.safetensors"
echo "total: $(( $(date +%s) - start )) s" >> /tmp/runs/summary.txt
for f in /tmp/runs/*.log; do echo "== $f"; grep -v "it/s]" "$f" | tail -n 5; done >> /tmp/runs/summary.txt
cp /tmp/runs/summary.txt "$OUT/summary.txt"
cat "$OUT/summary.txt"
