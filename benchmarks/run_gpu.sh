#!/usr/bin/env bash
# The GPU benchmark in one short run (aimed at under 5 minutes on one H100/H200):
#   * the pretraining step of the ViT-B AudioMAE (audiomae_vit_base, swin decoder) and of avmae's
#     audio-visual ViT-B (avmae_vit_base, joint decoder) at batch 64: bf16 and fp16 autocast, eager
#     and torch.compile'd (compile time reported), AdamW as the trainer builds it (fused on CUDA);
#     step time, samples/s, TFLOP/s, MFU against the data-sheet peak, peak memory; with the fp32
#     plain-math baseline (3 steps) and the speed-up over it;
#   * the data pipeline from compressed demo audio with 1, 4 and 16 DataLoader workers (clips/s),
#     including the batched fbank on the GPU (workers only decode);
#   * the fbank alone: Kaldi per item on CPU vs the batched fbank on CPU and on the GPU.
# Results in $OUT: benchmark_gpu_<model>.json / .txt, benchmark_gpu_data.json / .txt, nvidia-smi.txt,
# pip-freeze.txt, times.txt (seconds per part).
#
#   OUT=/tmp/out bash benchmarks/run_gpu.sh           # on the GPU machine
#   OUT=/tmp/out bash benchmarks/run_gpu.sh --quick   # the same parts, tiny models, on any CPU
#   OUT=/tmp/out bash benchmarks/run_gpu.sh --quick --compile   # ... with the compiled runs
#                                                      (inductor on a CPU: minutes per model)
#
# fp16 runs are timed without a loss scaler (the trainer adds accelerate's GradScaler: a few
# elementwise kernels per step).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/benchmark_out}"
mkdir -p "$OUT"
export AVMAE_CACHE="${AVMAE_CACHE:-${TMPDIR:-/tmp}/avmae_cache}"
export PYTHONUNBUFFERED=1
: > "$OUT/times.txt"

if [[ "${1:-}" == "--quick" ]]; then
  MODELS=("audiomae_tiny swin" "avmae_tiny -")
  STEP=(--batch-size 2 --frames 64 --steps 1 --warmup 1 --baseline-steps 1 --peak-size 256)
  DATA=(--workers 0,1 --data-clips 24 --data-batch-size 8 --data-repeats 1 --target-length 256 --fbank-batch 4 --fbank-seconds 2)
  NAME=benchmark_quick
  COMPILE=()
  [[ "${2:-}" == "--compile" ]] && COMPILE=(--also-compile)
else
  MODELS=("audiomae_vit_base swin" "avmae_vit_base -")
  STEP=(--batch-size 64 --steps 10 --warmup 3 --baseline-steps 3)
  DATA=(--workers 1,4,16 --data-clips 3000 --data-batch-size 64 --data-repeats 1 --target-length 1024 --fbank-batch 128 --fbank-seconds 10)
  NAME=benchmark_gpu
  COMPILE=(--also-compile)
fi

# dense bf16/fp16 peak of the data sheet, for MFU (H100/H200 SXM: 989 TFLOP/s; PCIe H100: 756)
SPEC=()
if command -v nvidia-smi >/dev/null; then
  GPU="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  case "$GPU" in
    *H200*|*H100*SXM*|*"H100 80GB HBM3"*) SPEC=(--spec-peak-tflops 989) ;;
    *H100*PCIe*) SPEC=(--spec-peak-tflops 756) ;;
    *A100*) SPEC=(--spec-peak-tflops 312) ;;
  esac
fi

{ command -v nvidia-smi >/dev/null && nvidia-smi; } > "$OUT/nvidia-smi.txt" 2>&1 || true
python -m pip freeze > "$OUT/pip-freeze.txt" 2>/dev/null || true
python - <<'PY'  # generate the demo data before timing anything
from avmae.data import ensure_demo_audio
print("demo data:", ensure_demo_audio())
PY

part() {  # part NAME command...: run, tee the table, record the seconds
  local name="$1"; shift
  local t0=$SECONDS
  "$@" | tee "$OUT/$name.txt"
  echo "$name $((SECONDS - t0)) s" >> "$OUT/times.txt"
}

for spec in "${MODELS[@]}"; do
  read -r model decoder <<< "$spec"
  [[ "$decoder" == "-" ]] && decoder=""
  part "${NAME}_${model}" python tools/benchmark.py --model "$model" --decoder "$decoder" "${STEP[@]}" \
    --precision bf16 --also-precision fp16 "${COMPILE[@]}" "${SPEC[@]}" --no-data --no-fbank \
    --json "$OUT/${NAME}_${model}.json"
done
part "${NAME}_data" python tools/benchmark.py --no-model "${DATA[@]}" --json "$OUT/${NAME}_data.json"
cat "$OUT/times.txt"
echo "results in $OUT"
