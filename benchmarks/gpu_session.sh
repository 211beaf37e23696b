#!/usr/bin/env bash
# Issues 7 and 16's GPU check as one device call (the `device` tool's `run`, meant to fit its
# 10-minute limit; not yet run on a GPU): base pretraining throughput in bf16 at three batch
# sizes, the middle one again with torch.compile, then the extraction benchmark with the
# backend `emotion-ssl extract --backend auto` picks there (torch on a GPU: onnxruntime runs on
# the CPU only and is not in the device image) next to one clip at a time, batched fp32 and
# bf16 autocast. All tables go into ONE section of benchmarks/RESULTS.md there ("GPU session"),
# copied with the raw output to $OUT (./gpu_results without it).
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
# (1: the compiled pretraining run too), EXTRACT_BACKENDS ("torch"; add compile for a
# torch.compile extraction row, onnxruntime on a CPU), RECORD (1; empty: RESULTS.md
# untouched). tests/test_benchmarks.py runs it on the CPU with a tiny config, COMPILE=0 and
# RECORD="".
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
EXTRACT_BACKENDS=${EXTRACT_BACKENDS:-torch}
RECORD=${RECORD-1}
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

tables=()  # (title, file) pairs: each benchmark's printed output, its table at the end
throughput() {  # throughput LABEL ARGS...: one pretraining run
    local label=$1
    shift
    "$PY" benchmarks/pretrain_throughput.py --config "$CONFIG" --device "$DEVICE" \
        --precision "$PRECISION" --clip-seconds "$CLIP" --steps "$STEPS" "$@" \
        2>&1 | tee "$RESULTS_DIR/pretrain_$label.txt"
    cat "$RESULTS_DIR/pretrain_$label.txt" >> "$RESULTS_DIR/pretrain.txt"
    tables+=("Pretraining throughput, $label" "$RESULTS_DIR/pretrain_$label.txt")
}
read -r -a sizes <<< "$BATCHES"
for bs in "${sizes[@]}"; do
    throughput "batch $bs" --batch-size "$bs" --warmup 3
done
if [ "$COMPILE" = 1 ]; then
    bs=${sizes[$(( ${#sizes[@]} / 2 ))]}
    throughput "batch $bs, torch.compile" --batch-size "$bs" --warmup 10 --compile
fi

read -r -a backends <<< "$EXTRACT_BACKENDS"
"$PY" benchmarks/extract_speed.py --device "$DEVICE" --config "$CONFIG" --clips "$CLIPS" \
    --batch-seconds 160 --backends "${backends[@]}" --bf16 2>&1 | tee "$RESULTS_DIR/extract.txt"
tables+=("Extraction speed" "$RESULTS_DIR/extract.txt")

# one RESULTS.md section: each benchmark's table (from its last "Device:" line to its end)
{
    echo "One device call of \`benchmarks/gpu_session.sh\` (DEVICE=$DEVICE CONFIG=$CONFIG" \
        "BATCHES=\"$BATCHES\" CLIP=$CLIP STEPS=$STEPS PRECISION=$PRECISION CLIPS=$CLIPS" \
        "COMPILE=$COMPILE EXTRACT_BACKENDS=\"$EXTRACT_BACKENDS\"); $(date +%F)."
    echo "Device: $(paste -sd '; ' "$RESULTS_DIR/device.txt")."
    for (( i = 0; i < ${#tables[@]}; i += 2 )); do
        printf '\n### %s\n\n' "${tables[i]}"
        awk '/^Device: /{text = ""; on = 1} on{text = text $0 "\n"} END{printf "%s", text}' \
            "${tables[i + 1]}"
    done
} > "$RESULTS_DIR/section.md"
if [ -n "$RECORD" ]; then
    "$PY" -c 'import sys
from benchmarks.pretrain_throughput import append_results
append_results("GPU session (benchmarks/gpu_session.sh)", open(sys.argv[1]).read().rstrip())' \
        "$RESULTS_DIR/section.md"
fi
cp benchmarks/RESULTS.md "$RESULTS_DIR/RESULTS.md"
