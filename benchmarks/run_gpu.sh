#!/usr/bin/env bash
# The GPU benchmark in one short run (about 3-4 minutes on one H100):
#   * pretraining step of audiomae_vit_base (swin decoder) in bf16 at batch 64 with AdamW as the
#     trainer's default builds it (fused on CUDA), and again with torch's default AdamW,
#   * the same step with plain-math attention in fp32 and torch's default AdamW (the baseline)
#     and the speed-up,
#   * the data pipeline from compressed demo audio with 1, 4 and 16 DataLoader workers, including
#     the batched fbank on the GPU (workers only decode),
#   * the fbank alone: Kaldi per item on CPU vs the batched fbank on CPU and on the GPU.
# Results: $OUT/benchmark_gpu.json (+ .txt table, nvidia-smi, pip freeze).
#
#   OUT=/tmp/out bash benchmarks/run_gpu.sh           # on the GPU machine
#   OUT=/tmp/out bash benchmarks/run_gpu.sh --quick   # a tiny end-to-end check on any CPU
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/benchmark_out}"
mkdir -p "$OUT"
export AVMAE_CACHE="${AVMAE_CACHE:-${TMPDIR:-/tmp}/avmae_cache}"
export PYTHONUNBUFFERED=1

if [[ "${1:-}" == "--quick" ]]; then
  COMMON=(--model audiomae_tiny --batch-size 2 --steps 1 --warmup 1 --workers 0,1 --data-clips 24
          --data-batch-size 8 --data-repeats 1 --target-length 256 --fbank-batch 4 --fbank-seconds 2)
  NAME=benchmark_quick
else
  COMMON=(--model audiomae_vit_base --decoder swin --batch-size 64 --steps 10 --warmup 3 --baseline-steps 3
          --workers 1,4,16 --data-clips 3000 --data-batch-size 64 --data-repeats 1 --target-length 1024
          --fbank-batch 128 --fbank-seconds 10)
  NAME=benchmark_gpu
fi

{ command -v nvidia-smi >/dev/null && nvidia-smi; } > "$OUT/nvidia-smi.txt" 2>&1 || true
python -m pip freeze > "$OUT/pip-freeze.txt" 2>/dev/null || true
python - <<'PY'  # generate the demo data before timing anything
from avmae.data import ensure_demo_audio
print("demo data:", ensure_demo_audio())
PY

python tools/benchmark.py "${COMMON[@]}" --precision bf16 --json "$OUT/$NAME.json" | tee "$OUT/$NAME.txt"
# torch's default (unfused) AdamW, model step only: what fused AdamW saves
python tools/benchmark.py "${COMMON[@]}" --precision bf16 --optimizer adamw --no-baseline --no-data --no-fbank \
  --json "$OUT/${NAME}_default_adamw.json" | tee "$OUT/${NAME}_default_adamw.txt"
echo "results in $OUT"
