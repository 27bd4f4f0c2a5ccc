#!/usr/bin/env bash
# The issue-5 study on a multi-GPU machine: one bench process per (configuration, seed), many per GPU (the bench
# is CPU-launch-bound at batch 8, so a GPU serves ~15 processes), all in the background (setsid) so that a call
# that hits its time limit loses nothing; a later call re-runs this script: finished runs are kept, unfinished
# ones resume from their last finished task. Merges whatever exists into $OUT/study at the end.
# usage: bash tools/device-study.sh WAIT_SECONDS
source tools/device-setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
wait_s=${1:-540}
ngpu=$(nvidia-smi -L | wc -l)
root=/tmp/study
mkdir -p $root
python3 -c "import curlora; curlora.load_model()" > $root/convert.log 2>&1
methods=(curlora-8 curlora-16 curlora-24 lora-1 lora-2 lora-4 lora-8 lora-16 lora-24 head_only full
  curlora-16:sampling=reference curlora-16:sampling=standard curlora-16:sampling=uniform
  curlora-16:sampling=lowest curlora-16:sampling=highest
  curlora-16:lr=1e-3 curlora-16:lr=1e-2 lora-16:lr=1e-3 lora-16:lr=1e-2)
k=0
if [ ! -f $root/launched ]; then
  for seed in 0 1 2; do for m in "${methods[@]}"; do
    d=$root/$(echo "$m" | tr ':=' '__')-s$seed
    CUDA_VISIBLE_DEVICES=$((k % ngpu)) setsid nohup python3 -m curlora bench --preset paper --suite paper \
      --data-dir .devdata --methods "$m" --seeds $seed --out $d > $d.log 2>&1 < /dev/null &
    k=$((k+1))
  done; done
  date +%s > $root/launched
fi
t0=$(date +%s)
while pgrep -f "curlora bench" > /dev/null && [ $(( $(date +%s) - t0 )) -lt $wait_s ]; do sleep 10; done
echo "running: $(pgrep -fc 'curlora bench'); elapsed since launch: $(( $(date +%s) - $(cat $root/launched) ))s"
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
dirs=$(for d in $root/*/; do [ -f $d/results.json ] && echo $d; done)
python3 -m curlora merge $dirs --out $OUT/study > $OUT/merge.log 2>&1; tail -3 $OUT/merge.log
grep -l "Error\|Traceback" $root/*.log | head; for f in $(grep -l "Traceback" $root/*.log | head -2); do tail -5 $f; done
