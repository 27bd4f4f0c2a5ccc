#!/usr/bin/env bash
# Speed measurements on one GPU (no model weights needed: the benchmarks build random-init models).
# usage: bash tools/device-perf.sh check|eager|compile|compile-default   (writes JSON and logs under $OUT)
source tools/device-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
part=${1:-eager}
M=smollm2-135m,llama-1b,mistral-7b
case $part in
  check)  # the Triton kernels on this GPU (tests), then one layer at the q/k/v shapes, torch ops vs kernels
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    python3 -m pytest -q -p no:cacheprovider tests/test_kernels.py ${TESTS:-} 2>&1 | tail -15
    [ -n "$LAYER" ] && timeout 200 python3 perf/layer_bench.py --device cuda --tokens ${TOKENS:-4096} --reps 50 \
      --variants lora,torch,library --shapes 576x576,576x192,2048x2048,2048x512,4096x4096,4096x1024 \
      > $OUT/layer.log 2>&1
    [ -n "$LAYER" ] && tail -20 $OUT/layer.log ;;
  eager)
    V=${VARIANTS:-floor,lora,curlora,curlora-torch,infer-base,infer-curlora,infer-curlora-torch,infer-merged,disk}
    timeout ${LIMIT:-500} python3 perf/step_bench.py --device cuda --models ${MODELS:-$M} --variants $V --steps 30 --warmup 5 \
      ${PROFILE:+--profile /tmp/profile} --out $OUT/gpu-eager.json > $OUT/eager.log 2>&1
    echo "eager exit $?"; grep -v "^\s*\[" $OUT/eager.log | grep -v warm-up | tail -36; grep "\[" $OUT/eager.log | grep -v info
    [ -n "$PROFILE" ] && tar czf $OUT/profile.tgz -C /tmp profile
    if [ -n "$LAYER" ]; then
      timeout 150 python3 perf/layer_bench.py --device cuda --tokens 8192 --reps 50 \
        --shapes 576x576,576x192,2048x2048,2048x512,4096x4096,4096x1024 > $OUT/layer.log 2>&1
      echo "layer exit $?"; tail -32 $OUT/layer.log
    fi ;;
  compile)  # CUDA graphs through inductor (mode reduce-overhead); EXTRA="--back-to-back 4" also times queued steps
    timeout 560 python3 perf/step_bench.py --device cuda --models ${MODELS:-smollm2-135m,llama-1b} \
      --variants ${VARIANTS:-floor-compile,lora-compile,curlora-compile,curlora-torch-compile,infer-base-compile,infer-curlora-compile} --steps ${STEPS:-30} --warmup 4 \
      --compile-mode reduce-overhead ${PROFILE:+--profile /tmp/profile} ${EXTRA:-} --out $OUT/gpu-compile-ro.json \
      > $OUT/compile.log 2>&1
    echo "compile exit $?"; grep -v "^\s*\[" $OUT/compile.log | tail -30; grep "\[" $OUT/compile.log | grep -v info
    [ -n "$PROFILE" ] && tar czf $OUT/profile.tgz -C /tmp profile ;;
  compile-default)
    timeout 560 python3 perf/step_bench.py --device cuda --models ${MODELS:-mistral-7b} \
      --variants floor,lora,curlora,floor-compile,lora-compile,curlora-compile --steps 20 --warmup 3 \
      --out $OUT/gpu-compile-default.json > $OUT/compile-default.log 2>&1
    echo "compile exit $?"; grep -v "^\s*\[" $OUT/compile-default.log | tail -30 ;;
esac
