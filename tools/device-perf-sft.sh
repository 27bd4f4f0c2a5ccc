#!/usr/bin/env bash
# One H100 call for issues 6 and 7: the SFT comparison on the built-in model, then the step benchmark.
source tools/device-setup.sh
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import curlora; curlora.load_model()" > /dev/null 2>&1
t0=$(date +%s)
timeout ${SFT_S:-250} python3 -m curlora sft --model smollm2-135m --data .devdata/squad/dev-v2.0-sample.json \
  --method none,curlora,lora --epochs 3 --batch-size 16 --max-length 512 --eval-batch-size 64 \
  --ppl-max-tokens 16384 --out /tmp/sft-gpu > $OUT/sft.log 2>&1
echo "sft exit $? in $(( $(date +%s) - t0 ))s"; cp /tmp/sft-gpu/*.json /tmp/sft-gpu/*.md $OUT/ 2>/dev/null
tail -12 $OUT/sft.log
V=floor,lora,curlora,infer-base,infer-curlora,infer-merged,disk
timeout ${PERF_S:-280} python3 perf/step_bench.py --device cuda --models smollm2-135m,llama-1b,mistral-7b \
  --variants $V --steps 10 --warmup 3 --out $OUT/gpu-perf.json > $OUT/perf.log 2>&1
echo "perf exit $?"; tail -45 $OUT/perf.log
