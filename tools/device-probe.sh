#!/usr/bin/env bash
# GPU probe: one solo paper-preset run, then 4 runs sharing the GPU, to plan the study. Writes under $OUT.
source tools/device-setup.sh
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import torch, transformers, peft; print(torch.__version__, transformers.__version__, peft.__version__)"
B="python3 -m curlora bench --preset paper --suite paper --data-dir .devdata"
t0=$(date +%s)
$B --methods curlora-16 --out $OUT/solo > $OUT/solo.log 2>&1; echo "solo exit $? in $(( $(date +%s) - t0 ))s"
t0=$(date +%s)
for m in curlora-8 lora-8 lora-1 full; do $B --methods $m --out $OUT/par-$m > $OUT/par-$m.log 2>&1 & done; wait
echo "4 parallel in $(( $(date +%s) - t0 ))s"
for f in $OUT/solo $OUT/par-*; do python3 -c "
import json,sys; r=json.load(open('$f/results.json'))
for x in r['runs']: print(x['label'], round(x['wall_s'],1), [round(a,3) for a in x['acc'][-1]], round(x['ppl_before'],3), round(x['ppl_after'],3), [round(s['train_s'],1) for s in x['stages']])"; done
tail -3 $OUT/solo.log
