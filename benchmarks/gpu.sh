#!/usr/bin/env bash
# Issue 12's GPU figures in one device call: the end-to-end job on the GPU node (`--device auto`,
# 15,000 videos and the 4x corpus, with the no-op re-run) and the same 15,000-video job with
# `--device cpu` on the same node, as the CPU baseline of the same run.
#
#   ../shared/tools/gpu-wheels                 # once, here: .gpu/whl (Ray for the GPU image)
#   run: bash benchmarks/gpu.sh                # carry .gpu; results and logs land in $OUT
#
# VIDEOS=200 SCALE=1 bash benchmarks/gpu.sh runs a small smoke test anywhere (no .gpu needed
# where Ray is installed). Writes benchmarks/results/e2e-gpu.json and e2e-gpu-cpu.json, copied
# to $OUT with the logs and nvidia-smi's view of the card.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/vgray-gpu-out}
VIDEOS=${VIDEOS:-15000}
SCALE=${SCALE:-4}
DATA=${DATA:-/tmp/vgray-bench}
mkdir -p "$OUT"
if [ -d .gpu/whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1 || true
python3 benchmarks/e2e.py --videos "$VIDEOS" --scale "$SCALE" --data "$DATA" --rerun \
    --result e2e-gpu 2>&1 | tee "$OUT/e2e-gpu.log"
python3 benchmarks/e2e.py --videos "$VIDEOS" --scale 1 --data "$DATA" --result e2e-gpu-cpu \
    -- --device cpu 2>&1 | tee "$OUT/e2e-gpu-cpu.log"
cp benchmarks/results/e2e-gpu.json benchmarks/results/e2e-gpu-cpu.json "$OUT/"
