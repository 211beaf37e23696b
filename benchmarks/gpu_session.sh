#!/usr/bin/env bash
# Issue 7's GPU check as one device call (the `device` tool's `run`, meant to fit its
# 10-minute limit; not yet run on a GPU): base pretraining throughput in bf16 at three batch
# sizes, the middle one again with torch.compile, then the extraction benchmark. Tables are
# appended to benchmarks/RESULTS.md there and copied with the raw output to $OUT
# (./gpu_results without it).
#
# The device machine reaches no package index. Its image has torch, lightning, einops,
# safetensors and matplotlib but no soundfile, so first, here, in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl soundfile cffi pycparser
# then: run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=560), and copy
# the returned RESULTS.md section into benchmarks/RESULTS.md here.
#
# Settings (environment): DEVICE (cuda), CONFIG (base), BATCHES ("8 16 32"), CLIP (10 s),
# STEPS (10), PRECISION (bf16-mixed), CLIPS (256 extraction clips), PYTHON (python3), COMPILE
# (1: the compiled run too), RECORD (--record; empty: RESULTS.md untouched). tests/test_benchmarks.py
# runs it on the CPU with a tiny config, COMPILE=0 and RECORD="".
set -euo pipefail
DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-base}
BATCHES=${BATCHES:-"8 16 32"}
CLIP=${CLIP:-10}
STEPS=${STEPS:-10}
PRECISION=${PRECISION:-bf16-mixed}
CLIPS=${CLIPS:-256}
PY=${PYTHON:-python3}
COMPILE=${COMPILE:-1}
RECORD=${RECORD---record}
RESULTS_DIR=${OUT:-gpu_results}
mkdir -p "$RESULTS_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$RESULTS_DIR/device.txt"

throughput() {
    "$PY" benchmarks/pretrain_throughput.py --config "$CONFIG" --device "$DEVICE" \
        --precision "$PRECISION" --clip-seconds "$CLIP" --steps "$STEPS" ${RECORD:+"$RECORD"} "$@" \
        2>&1 | tee -a "$RESULTS_DIR/pretrain.txt"
}
read -r -a sizes <<< "$BATCHES"
for bs in "${sizes[@]}"; do
    throughput --batch-size "$bs" --warmup 3
done
if [ "$COMPILE" = 1 ]; then
    throughput --batch-size "${sizes[$(( ${#sizes[@]} / 2 ))]}" --warmup 10 --compile
fi

"$PY" benchmarks/extract_speed.py --device "$DEVICE" --clips "$CLIPS" --batch-seconds 160 \
    ${RECORD:+"$RECORD"} 2>&1 | tee "$RESULTS_DIR/extract.txt"
cp benchmarks/RESULTS.md "$RESULTS_DIR/RESULTS.md"
