#!/usr/bin/env bash
# Issue-19 measurements on one GPU, in one call each (no model weights needed for `step`, the built-in model for
# `trainer`): usage: bash tools/device-eager.sh step|trainer   (JSON and logs under $OUT)
#   step:    the GPU-only kernel tests (the compiled layer, the q/k/v groups, a bounded number of graphs over many
#            token counts), then the eager step and the default-mode compiled step on 135M and 1B, and 7B eager
#            (perf/step_bench.py; ~8 min on an H200)
#   step-135m: the 135M rows alone: the eager step, then the default-mode compiled step (each compile ~1 min)
#   trainer-eager: HF Trainer eager only, 2 rounds, CURLoRA with and without its q/k/v groups, LoRA, head_only
#            (METHODS=... picks others, e.g. curlora-xr)
#   trainer: HF Trainer steps/s, eager and torch_compile=True, per-batch padding and padding to a multiple of 64
#            (perf/trainer_bench.py; needs the built-in model and .devdata carried, as tools/device-setup.sh says)
source tools/device-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
V=floor,lora,curlora,curlora-ungrouped
case ${1:-step} in
  step)
    timeout 120 python3 -m pytest -q -p no:cacheprovider tests/tuner/test_kernels.py -k "gpu or compiled or bounded" \
      > $OUT/kernel-tests.log 2>&1; tail -3 $OUT/kernel-tests.log
    timeout 200 python3 perf/step_bench.py --device cuda --models smollm2-135m \
      --variants $V,floor-compile,lora-compile,curlora-compile --out $OUT/step-135m.json > $OUT/step-135m.log 2>&1
    timeout 100 python3 perf/step_bench.py --device cuda --models llama-1b --variants $V --out $OUT/step-1b.json \
      > $OUT/step-1b.log 2>&1
    timeout 150 python3 perf/step_bench.py --device cuda --models mistral-7b --variants $V --out $OUT/step-7b.json \
      > $OUT/step-7b.log 2>&1
    grep -hE "^\s+\[|PASS|FAIL" $OUT/step-*.log | head -40 ;;
  step-135m)
    timeout 120 python3 perf/step_bench.py --device cuda --models smollm2-135m --variants $V \
      --out $OUT/step-135m-eager.json > $OUT/step-135m-eager.log 2>&1
    timeout 330 python3 perf/step_bench.py --device cuda --models smollm2-135m \
      --variants floor-compile,curlora-compile --out $OUT/step-135m-compile.json > $OUT/step-135m-compile.log 2>&1
    grep -hE "^\s+\[|PASS|FAIL" $OUT/step-135m-*.log | head -40 ;;
  trainer-eager)
    timeout 400 python3 perf/trainer_bench.py --device cuda --data-dir .devdata --steps 120 --warmup 20 --rounds 2 \
      --modes eager --methods ${METHODS:-curlora,curlora-ungrouped,lora,head_only} --out $OUT/trainer-135m-eager.json \
      > $OUT/trainer-eager.log 2>&1
    grep -hE "^[a-z_-]+/(eager|compile)" $OUT/trainer-eager.log ;;
  trainer)
    A="--device cuda --data-dir .devdata --steps 120 --warmup 20 --rounds 1"
    timeout 270 python3 perf/trainer_bench.py $A --out $OUT/trainer-135m.json > $OUT/trainer.log 2>&1
    timeout 270 python3 perf/trainer_bench.py $A --modes compile --pad-to-multiple-of 64 \
      --out $OUT/trainer-135m-pad64.json > $OUT/trainer-pad64.log 2>&1
    grep -hE "^[a-z_]+/(eager|compile)" $OUT/trainer*.log ;;
esac
