#!/usr/bin/env bash
# The runtime watch's GPU checks, for a machine with a CUDA device (about 3-5 minutes):
#   1. the CUDA tests: identical parameters with and without the watch (AdamW foreach and
#      fused, SGD), no host synchronisation per step in warn and record modes
#      (torch.cuda.set_sync_debug_mode("error")), device values read later and reported;
#   2. the overhead benchmark on the GPU: a GPT-2-small-shaped model (12x768, sequence 1024,
#      batch 8) in bf16 autocast and a 4x512 MLP, watched/unwatched paired ratios, peak memory.
# Run from the repository root, in an environment with a CUDA build of torch and loopcheck
# installed (pip install -e '.[dev]'):  bash benchmarks/gpu_check.sh
# PYTHON=... picks the interpreter; ROUNDS=... the benchmark's rounds (default 12).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: nothing to check"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
PY
echo "== CUDA tests"
timeout 240 "$PYTHON" -m pytest -q -p no:randomly -p no:cacheprovider tests/runtime/test_cuda.py -rs
echo "== overhead on the GPU"
timeout 300 "$PYTHON" benchmarks/watch_overhead.py --device cuda --rounds "${ROUNDS:-12}"
