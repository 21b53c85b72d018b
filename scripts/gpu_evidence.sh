#!/usr/bin/env bash
# The GPU evidence in one command, on the lent GPU machine (CuPy/numpy/torch/nvcc there; nothing else, no network).
# Needs, in the ignored folder .carry/ (made on a machine with PyPI and the real models; see tools/gpu-setup):
#   whl/                  orcd's runtime dependencies as wheels
#   skel/NAME.head|json   `gguf-skeleton save` headers of the three registry models
#   llamacpp-src.tgz      `llamacpp-peer pack .carry`, with the tool llamacpp-peer copied beside it (for `peer`)
# Usage: scripts/gpu_evidence.sh [kernels] [sanitize] [tests] [serve] [matvec] [peer] [bench]   (logs under $OUT)
#   kernels   the kernel tests (matvec, ops) against their numpy references
#   sanitize  compute-sanitizer memcheck over the small kernel tests
#   tests     the backend against the CPU backend on every model (fixtures + shaped real layouts)
#   serve     `orcd serve --device cuda` with the openai client (tests/test_cuda_server.py)
#   matvec    scripts/bench_matvec.py (per-shape GB/s, one Qwen step's matvecs)
#   peer      build llama.cpp's llama-bench (in the background, from .carry/llamacpp-src.tgz)
#   bench     orcd bench on the Qwen and SmolLM2 layouts, with llama-bench when peer was built
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/orcd-gpu}; mkdir -p "$OUT"
ARGS=" ${*:-tests bench} "
has() { [[ "$ARGS" == *" $1 "* ]]; }
tools/gpu-setup || exit 1
export PYTHONUNBUFFERED=1 ORCD_SHAPED_DIR=/tmp/shaped
mkdir -p $ORCD_SHAPED_DIR; t=$(date +%s)
for n in qwen2.5-coder-0.5b-instruct smollm2-135m-instruct gemma-3-270m; do
  python3 scripts/make_shaped_model.py .carry/skel/$n $ORCD_SHAPED_DIR/$n.gguf --workers 5 > "$OUT/shaped-$n.log" 2>&1 &
done; wait
echo "shaped models in $(( $(date +%s) - t )) s:"; ls -la $ORCD_SHAPED_DIR; tail -n1 "$OUT"/shaped-*.log
if has peer; then
  (bash .carry/llamacpp-peer build .carry/llamacpp-src.tgz > "$OUT/peer-build.log" 2>&1; echo "exit $?" >> "$OUT/peer-build.log") &
  PEER=$!
fi
PT="python3 -m pytest -o addopts= -p no:cacheprovider -q -rs"
if has kernels; then
  timeout 200 $PT ${KTESTS:-tests/test_cuda.py tests/test_cuda_matvec.py tests/test_cuda_ops.py} -x -k "not ship_in_the_wheel" 2>&1 | tee "$OUT/kernels.log" | tail -5
fi
if has sanitize; then
  timeout ${SANITIZE_S:-200} compute-sanitizer --tool memcheck --error-exitcode 9 $PT tests/test_cuda_matvec.py tests/test_cuda_ops.py \
    -k "small or sample or norm or rope or act or argmax or add_scale or attention_prefill" -x 2>&1 | tee "$OUT/sanitize.log" | tail -4; echo "sanitizer exit ${PIPESTATUS[0]}"
fi
if has tests; then
  timeout 240 $PT tests/test_cuda_backend.py -s -x 2>&1 | tee "$OUT/tests.log" | grep -v '^\s*$' | tail -70
fi
if has serve; then
  timeout 200 $PT tests/test_cuda_server.py -x 2>&1 | tee "$OUT/serve.log" | tail -4
fi
if has matvec; then
  timeout 240 python3 scripts/bench_matvec.py 2>&1 | tee "$OUT/matvec.log" | tail -60
fi
LB=
if has peer; then wait $PEER; tail -n 3 "$OUT/peer-build.log"; LB=/tmp/llamacpp-peer/build/bin/llama-bench; fi
if has bench; then
  for n in qwen2.5-coder-0.5b-instruct smollm2-135m-instruct; do
    M=$ORCD_SHAPED_DIR/$n.gguf
    timeout 200 python3 -m orcd.cli bench $M --device cuda --depth 4096 ${LB:+--llama-bench $LB} 2>&1 | tee -a "$OUT/bench.log" \
      || { [ -n "$LB" ] && timeout 120 $LB -m $M -ngl 99 -fa 1 -p 512 -n 128 -d 0,4096 -r 3 -o md 2>&1 | tee -a "$OUT/bench.log"; }
  done
fi
