#!/usr/bin/env bash
# The GPU evidence in one command, on the lent GPU machine (CuPy/numpy/torch/nvcc there; nothing else, no network).
# Needs, in the ignored folder .carry/ (made on a machine with PyPI and the real models; see tools/gpu-setup):
#   whl/                  orcd's runtime dependencies as wheels
#   skel/NAME.head|json   `gguf-skeleton save` headers of the three registry models
#   llamacpp-src.tgz      `llamacpp-peer pack .carry`, with the tool llamacpp-peer copied beside it (for `peer`)
# Usage: scripts/gpu_evidence.sh [kernels] [sanitize] [tests] [serve] [matvec] [experts] [moe] [profile] [stepprof] [kab] [decode] [serverbench] [peer] [bench] [gptoss]   (logs under $OUT)
#   kernels   the kernel tests (matvec, ops) against their numpy references
#   sanitize  compute-sanitizer memcheck over the small kernel tests
#   tests     the backend against the CPU backend on every model (fixtures + shaped real layouts)
#   serve     `orcd serve --device cuda` with the openai client (tests/test_cuda_server.py)
#   matvec    scripts/bench_matvec.py (per-shape GB/s, one Qwen step's matvecs)
#   experts   scripts/bench_matvec.py --only experts (gpt-oss's routed MXFP4 expert products: GB/s, error)
#   moe       a prompt chunk's MoE block step by step (scripts/bench_moe_prefill.py) and its expert products
#             (bench_matvec.py --only moe-mma: moe_mma against dequantise + cuBLAS)
#   profile   ncu on those two products, and the SASS of the MXFP4 kernels CuPy compiled (in $OUT)
#   stepprof  ncu: each kernel of one decode step alone (scripts/profile_step.py; PROF_DEPTHS, PROF_MODEL), CSV in $OUT
#   kab       a kernel source against another version of it, by the step on the GPU's clock (scripts/step_timeline.py):
#             KAB="kernels/attention.cu=.carry/attention_old.cu" (the file as it is in the tree is arm A, the other B),
#             KAB_DEPTHS="0 200 4096", KAB_RUNS=2, KAB_MODEL (default the Qwen layout); arms alternate, one line each
#   decode    scripts/bench_decode.py: greedy decode tok/s as the bench times it, arms interleaved — DECODE_ARMS
#             ("8:8,4:1": lookahead:steps a graph), DECODE_MODELS (default the Qwen layout), DECODE_ENV ("A=1;A=0":
#             each arm also under each ';'-separated set of variables)
#   serverbench  scripts/bench_server.py on the Qwen layout: tok/s through HTTP + SSE / the engine's (needs httpx-sse, psutil in whl/)
#   peer      build llama.cpp's llama-bench (in the background, from .carry/llamacpp-src.tgz)
#   bench     orcd bench on the Qwen and SmolLM2 layouts (BENCH_MODELS), with llama-bench when peer was built;
#             AB_ENV="NAME=VALUE ...": each also with those variables (e.g. ORCD_FUSE_NORM=0, ORCD_PART_MAJOR=1), peer not re-run;
#             AB_MODELS="gpt-oss-20b ...": the A/B only for those
#   gptoss    gpt-oss-20b's layout: a 2-layer file with synthetic values for the tests (start it before `tests`; GOSS2L=0: none),
#             the full 11.27 GiB file of random blocks: scripts/gpu_gptoss.py and orcd bench (with llama-bench;
#             GOSS_DEPTH=4096: also decode at that depth, both systems)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/orcd-gpu}; mkdir -p "$OUT"
ARGS=" ${*:-tests bench} "
has() { [[ "$ARGS" == *" $1 "* ]]; }
tools/gpu-setup || exit 1
export PYTHONUNBUFFERED=1 ORCD_SHAPED_DIR=/tmp/shaped
mkdir -p $ORCD_SHAPED_DIR; t=$(date +%s)
for n in ${SHAPED:-qwen2.5-coder-0.5b-instruct smollm2-135m-instruct gemma-3-270m}; do
  [ -s $ORCD_SHAPED_DIR/$n.gguf ] && continue     # made by an earlier invocation on this machine
  python3 scripts/make_shaped_model.py .carry/skel/$n $ORCD_SHAPED_DIR/$n.gguf --workers 5 > "$OUT/shaped-$n.log" 2>&1 &
done; wait
echo "shaped models in $(( $(date +%s) - t )) s:"; ls -la $ORCD_SHAPED_DIR; tail -n1 "$OUT"/shaped-*.log 2>/dev/null
if has gptoss; then       # gpt-oss-20b's layout: 2 layers with synthetic values (tests), all 24 of random blocks (speed)
  V=$ORCD_SHAPED_DIR/smollm2-135m-instruct.gguf; mkdir -p /tmp/goss /tmp/goss2
  if [ "${GOSS2L:-1}" = 1 ]; then   # GOSS2L=0: no 2-layer file (and no test on it)
    (python3 .carry/gguf-gptoss-header $V /tmp/goss/l2 2 && python3 scripts/make_shaped_model.py /tmp/goss/l2 \
       /tmp/goss2/gpt-oss-2l.gguf --workers 8) > "$OUT/gptoss-2l.log" 2>&1 &
    GOSS2=$!
  else (exit 0) & GOSS2=$!; GOSS2_WAIT=0; fi
  if [ "${GOSS_FULL:-1}" = 1 ]; then   # GOSS_FULL=0: only the 2-layer file and its test
    (python3 .carry/gguf-gptoss-header $V /tmp/goss/full && python3 .carry/gguf-skeleton fill /tmp/goss/full \
       /tmp/goss/gpt-oss-20b.gguf) > "$OUT/gptoss-full.log" 2>&1 &
    GOSSF=$!
  fi
fi
if has peer; then
  (bash .carry/llamacpp-peer build .carry/llamacpp-src.tgz > "$OUT/peer-build.log" 2>&1; echo "exit $?" >> "$OUT/peer-build.log") &
  PEER=$!
fi
# AB_ENV="A=1 B=1;C=1": after each model's bench, the bench again under each ';'-separated set of variables (A/B)
ab_variants() {      # AB_MODELS="name ...": only for those models (default: every one benched)
  [ -n "${AB_ENV:-}" ] || return 0
  [ -z "${AB_MODELS:-}" ] || [[ " $AB_MODELS " == *" $1 "* ]] || return 0
  IFS=';' read -ra VS <<< "$AB_ENV"
  for v in "${VS[@]}"; do
    echo "== $1 with $v" | tee -a "$OUT/bench.log"
    env $v timeout 200 python3 -m orcd.cli bench $2 --device cuda $3 2>&1 | tee -a "$OUT/bench.log"
  done
}
PT="python3 -m pytest -o addopts= -p no:cacheprovider -q -rs"
if has kernels; then
  timeout 200 $PT ${KTESTS:-tests/test_cuda.py tests/test_cuda_matvec.py tests/test_cuda_ops.py} --maxfail=${MAXFAIL:-4} -k "${KSEL:-not ship_in_the_wheel}" 2>&1 | tee "$OUT/kernels.log" | tail -5
fi
if has sanitize; then
  timeout ${SANITIZE_S:-200} compute-sanitizer --tool memcheck --error-exitcode 9 $PT tests/test_cuda_matvec.py tests/test_cuda_ops.py \
    tests/test_cuda_moe.py -x -k "${SSEL:-small or sample or norm or rope or act or argmax or add_scale or attention_prefill \
    or moe_topk or (expert_linear and not 2880) or (mxfp4_pair_layout and not 5760) \
    or (decode_attention and not 4096 and not graph) or assign_ctas}" 2>&1 | tee "$OUT/sanitize.log" | tail -4; echo "sanitizer exit ${PIPESTATUS[0]}"
fi
if has tests; then
  timeout 240 $PT tests/test_cuda_backend.py -s --maxfail=${MAXFAIL:-4} ${TESTK:+-k "$TESTK"} 2>&1 | tee "$OUT/tests.log" | grep -v '^\s*$' | tail -70
fi
if has serve; then
  timeout 200 $PT tests/test_cuda_server.py -x 2>&1 | tee "$OUT/serve.log" | tail -4
fi
if has experts; then
  timeout 150 python3 scripts/bench_matvec.py --only experts ${EXPERTS_SWEEP:+--sweep} 2>&1 | tee "$OUT/experts.log" | tail -40
fi
if has moe; then
  timeout 150 python3 scripts/bench_moe_prefill.py 2>&1 | tee "$OUT/moe-prefill.log" | tail -20
  timeout 150 python3 scripts/bench_matvec.py --only moe-mma 2>&1 | tee "$OUT/moe-mma.log" | tail -12
fi
if has profile; then      # why the MXFP4 expert products are slow: Nsight Compute on both, and their SASS as CuPy built them
  timeout 120 ncu -k 'regex:matvec_v2|expert_mv' --launch-count 4 --section SpeedOfLight --section Occupancy --section WarpStateStats \
    --section SchedulerStats --section InstructionStats --section SourceCounters \
    python3 scripts/bench_matvec.py --only experts-profile > "$OUT/ncu.log" 2>&1; grep -E "Duration|Throughput|Issued|Eligible" "$OUT/ncu.log" | head -20
  for f in ${CUPY_CACHE_DIR:-$HOME/.cupy/kernel_cache}/*.cubin; do
    cuobjdump -sass "$f" 2>/dev/null | grep -q "tMXFP4" && cuobjdump -sass "$f" > "$OUT/sass-$(basename "$f" .cubin).txt"
  done; ls "$OUT" | grep -c '^sass-' || true
fi
if has kab; then          # A/B of one kernel file: the tree's version (A) against another (B), arms interleaved
  KF=${KAB%%=*}; KB=${KAB#*=}; M=${KAB_MODEL:-$ORCD_SHAPED_DIR/qwen2.5-coder-0.5b-instruct.gguf}
  cp "$KF" /tmp/kab-A; cp "$KB" /tmp/kab-B
  for d in ${KAB_DEPTHS:-0 200 4096}; do for r in $(seq 1 ${KAB_RUNS:-2}); do for arm in A B; do
    cp /tmp/kab-$arm "$KF"; f="$OUT/kab-$arm-$d-$r.txt"
    timeout 90 python3 scripts/step_timeline.py "$M" --depth $d --rows 0 > "$f" 2>&1
    echo "$arm depth $d run $r: $(grep -oE 'step span [0-9.]+ µs' "$f"); $(grep -oE '[0-9.]+ µs a step untraced' "$f")"
  done; done; done | tee "$OUT/kab.log"
  cp /tmp/kab-A "$KF"
fi
if has stepprof; then     # one decode step's kernels timed alone (ncu) beside the step as one graph, per depth
  for d in ${PROF_DEPTHS:-0 4096}; do
    timeout 150 ncu --profile-from-start off --cache-control none --clock-control none --metrics gpu__time_duration.sum \
      --csv python3 scripts/profile_step.py ${PROF_MODEL:-$ORCD_SHAPED_DIR/qwen2.5-coder-0.5b-instruct.gguf} --depth $d \
      > "$OUT/step-$d.csv" 2> "$OUT/step-$d.log"; tail -n 2 "$OUT/step-$d.log"
  done
fi
if has decode; then        # decode tok/s by lookahead and steps a graph, each arm under each DECODE_ENV set
  IFS=';' read -ra VS <<< "${DECODE_ENV:-}"; [ ${#VS[@]} -gt 0 ] || VS=("")
  for r in 1 2; do for n in ${DECODE_MODELS:-qwen2.5-coder-0.5b-instruct}; do for v in "${VS[@]}"; do
    echo "$n ${v:-(defaults)} run $r:"
    env $v timeout 90 python3 scripts/bench_decode.py $ORCD_SHAPED_DIR/$n.gguf --arms ${DECODE_ARMS:-8:8,4:1} --reps 4 2>&1 | tail -n 8
  done; done; done | tee "$OUT/decode.log"
fi
if has serverbench; then  # decode through HTTP + SSE against the engine alone (the performance issue asks >= 95 %)
  python3 -m pip install -q --no-index --find-links .carry/whl httpx-sse psutil 2>&1 | tail -1
  timeout 240 python3 scripts/bench_server.py --model $ORCD_SHAPED_DIR/qwen2.5-coder-0.5b-instruct.gguf --device cuda \
    --ctx 1024 --tokens 256 --reps 3 2>&1 | tee "$OUT/server-bench.log" | tail -8
fi
if has matvec; then
  timeout 240 python3 scripts/bench_matvec.py 2>&1 | tee "$OUT/matvec.log" | tail -60
fi
if has gptoss; then       # the 2-layer file against the CPU backend, while the peer builds (if the file is ready in time)
  for i in $(seq 1 ${GOSS2_WAIT:-120}); do kill -0 $GOSS2 2>/dev/null || break; sleep 1; done
  if [ "${GOSS2L:-1}" != 1 ]; then echo "gpt-oss 2-layer file not asked for (GOSS2L=0)"
  elif kill -0 $GOSS2 2>/dev/null; then echo "gpt-oss 2-layer file not ready: its GPU-vs-CPU test skipped"; else
    tail -n 2 "$OUT/gptoss-2l.log"
    ORCD_SHAPED_DIR=/tmp/goss2 timeout 150 $PT tests/test_cuda_backend.py -s -x -k "gpu_matches_cpu and gpt-oss-2l" 2>&1 | tee "$OUT/gptoss-2l-test.log" | tail -5
  fi
fi
LB=${LB:-}      # llama-bench built by an earlier invocation (or set by hand)
if has peer; then wait $PEER; tail -n 3 "$OUT/peer-build.log"; LB=/tmp/llamacpp-peer/build/bin/llama-bench; fi
if has gptoss && [ "${GOSS_FULL:-1}" = 1 ]; then
  wait $GOSSF; tail -n 2 "$OUT/gptoss-full.log"; ls -la /tmp/goss
  G=/tmp/goss/gpt-oss-20b.gguf
  [ "${GOSS_SCRIPT:-1}" = 1 ] && timeout 100 python3 scripts/gpu_gptoss.py $G 2>&1 | tee "$OUT/gptoss.log"
  if [ -n "$LB" ]; then                                   # the bench with its peer (or alone: GOSS_BENCH=1)
    timeout 200 python3 -m orcd.cli bench $G --device cuda ${GOSS_DEPTH:+--depth $GOSS_DEPTH} --llama-bench $LB 2>&1 \
      | tee -a "$OUT/bench.log" \
      || timeout 120 $LB -m $G -ngl 99 -fa 1 -p 512 -n 128 -d 0${GOSS_DEPTH:+,$GOSS_DEPTH} -r 3 -o md 2>&1 | tee -a "$OUT/bench.log"
  elif [ -n "${GOSS_BENCH:-}" ]; then
    timeout 200 python3 -m orcd.cli bench $G --device cuda ${GOSS_DEPTH:+--depth $GOSS_DEPTH} 2>&1 | tee -a "$OUT/bench.log"
  fi
  ab_variants gpt-oss-20b $G "${GOSS_DEPTH:+--depth $GOSS_DEPTH}"
fi
if has bench; then
  for n in ${BENCH_MODELS:-qwen2.5-coder-0.5b-instruct smollm2-135m-instruct}; do
    M=$ORCD_SHAPED_DIR/$n.gguf
    timeout 200 python3 -m orcd.cli bench $M --device cuda --depth 4096 ${LB:+--llama-bench $LB} 2>&1 | tee -a "$OUT/bench.log" \
      || { [ -n "$LB" ] && timeout 120 $LB -m $M -ngl 99 -fa 1 -p 512 -n 128 -d 0,4096 -r 3 -o md 2>&1 | tee -a "$OUT/bench.log"; }
    ab_variants $n $M "--depth 4096"
  done
fi
