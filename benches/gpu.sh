#!/usr/bin/env bash
# Model-stage benchmark on one CUDA GPU: capfilt against transformers in bfloat16 at batch sizes
# 32 to 256, beam search (3 beams, 5 to 20 tokens) and greedy (20 tokens), with the peak device
# memory of each side from nvidia-smi. Prepared for a CUDA machine; it takes about 5 minutes
# there once the build below is done (the build itself is not part of it).
#
#   cargo build --release --features cuda --workspace --examples
#   benches/gpu.sh target/release/examples [OUTDIR]
#
# Needs python3 with torch (CUDA) and transformers, and about 3 GB under /tmp for the random
# BLIP-large weights, which are written first unless /tmp/blip-large-bench exists already.
set -euo pipefail

bin_dir=${1:?usage: benches/gpu.sh EXAMPLES_DIR [OUTDIR]}
out=${2:-gpu-bench-$(date +%Y%m%d-%H%M%S)}
model=/tmp/blip-large-bench
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.csv"
if [ ! -f "$model/model.safetensors" ]; then
    python3 "$here/../tests/fixtures/generate.py" --large "$model"
fi

# Samples device memory per process every 200 ms until stopped. The peak is taken per process
# name afterwards, which separates the Python side from the capfilt example.
sample_memory() {
    while true; do
        nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv,noheader,nounits || true
        sleep 0.2
    done > "$1"
}

for batch in 32 64 128 256; do
    sample_memory "$out/memory-$batch.csv" &
    sampler=$!
    timeout 150 python3 "$here/model_stage.py" --model "$model" --bin-dir "$bin_dir" \
        --device cuda --dtype bf16 --images "$batch" --repeat 2 --skip-candle \
        --json "$out/model-$batch.json" | tee "$out/model-$batch.txt" || echo "batch $batch failed or timed out"
    kill "$sampler"
    python3 - "$out/memory-$batch.csv" <<'PY' | tee -a "$out/model-$batch.txt"
import collections, sys
peak = collections.defaultdict(int)
for line in open(sys.argv[1]):
    parts = [p.strip() for p in line.split(",")]
    if len(parts) == 3 and parts[2].isdigit():
        name = parts[1].rsplit("/", 1)[-1]
        peak[name] = max(peak[name], int(parts[2]))
for name, mib in sorted(peak.items()):
    print(f"peak device memory {name}: {mib} MiB")
PY
done
echo "results in $out"
