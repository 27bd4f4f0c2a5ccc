#!/usr/bin/env bash
# Speed on one GPU machine with two GPUs, no model weights needed (random-init models): the eager and default-
# compile training step and the reduce-overhead check (perf/step_bench.py) on GPU 0, then the 4-bit/8-bit
# benchmark (perf/quant_bench.py) and the serving benchmark (perf/serve_bench.py) on GPU 1, at the same time.
# bitsandbytes travels as a wheel in .whl/ (docs/QUANTIZED.md). usage: bash tools/device-speed.sh [7b]
set -u
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
V_EAGER=floor,lora,curlora,curlora-ungrouped
V_ALL=$V_EAGER,floor-compile,lora-compile,curlora-compile
if [ "${1:-}" = 7b ]; then  # the 7B model alone (its own call): eager and default compile
  CUDA_VISIBLE_DEVICES=0 timeout 560 python3 perf/step_bench.py --device cuda --models mistral-7b --variants $V_ALL \
    --out $OUT/step-7b.json > $OUT/speed-7b.log 2>&1
  grep -E "^\s+\[|^variant|^floor|^lora|^curlora" $OUT/speed-7b.log
  exit 0
fi
(
  CUDA_VISIBLE_DEVICES=0 timeout 300 python3 perf/step_bench.py --device cuda --models smollm2-135m --variants $V_ALL \
    --out $OUT/step-135m.json
  CUDA_VISIBLE_DEVICES=0 timeout 150 python3 perf/step_bench.py --device cuda --models smollm2-135m \
    --compile-mode reduce-overhead --back-to-back 4 --variants floor-compile,lora-compile,curlora-compile \
    --out $OUT/step-135m-reduce-overhead.json
  CUDA_VISIBLE_DEVICES=0 timeout 120 python3 perf/step_bench.py --device cuda --models llama-1b --variants $V_EAGER \
    --out $OUT/step-1b.json
) > $OUT/speed-gpu0.log 2>&1 &
(
  CUDA_VISIBLE_DEVICES=1 timeout 330 python3 perf/quant_bench.py --out $OUT/quant-eager.json
  CUDA_VISIBLE_DEVICES=1 timeout 270 python3 perf/serve_bench.py --device cuda --rounds 3 --decode 32 --out $OUT/serve.json
) > $OUT/speed-gpu1.log 2>&1 &
wait
grep -E "^\s+\[|^==" $OUT/speed-gpu0.log
grep -iE "PASS|FAIL|peak|error|Traceback" $OUT/speed-gpu1.log | head -30
tail -5 $OUT/speed-gpu1.log
