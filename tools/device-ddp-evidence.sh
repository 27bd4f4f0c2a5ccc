#!/usr/bin/env bash
# Issue-8 evidence on a 2-GPU machine: the same short bench on 1 GPU, on 2 GPUs with DDP and on 2 GPUs with FSDP,
# one after the other (so wall times compare), in the background (setsid) so that a call that hits its time limit
# loses nothing: a later call re-runs this script, which waits for the rest and compares whatever finished.
# usage: bash tools/device-ddp-evidence.sh WAIT_SECONDS   (results and logs under $OUT/ddp-evidence)
source tools/device-setup.sh
export OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
wait_s=${1:-540}
root=/tmp/ddp-evidence
mkdir -p $root
A="--preset quick --suite paper --data-dir .devdata --methods curlora-16,lora-16,head_only --n-eval 200 --dtype float32"
if [ ! -f $root/launched ]; then
  python3 -c "import curlora; curlora.load_model()" > $root/convert.log 2>&1
  setsid nohup bash -c "
    CUDA_VISIBLE_DEVICES=0 python3 -m curlora bench $A --out $root/g1 > $root/g1.log 2>&1
    accelerate launch --config_file configs/accelerate/ddp.yaml -m curlora bench $A --out $root/g2 > $root/g2.log 2>&1
    accelerate launch --config_file configs/accelerate/fsdp.yaml -m curlora bench $A --out $root/g3 > $root/g3.log 2>&1
    touch $root/done" > $root/driver.log 2>&1 < /dev/null &
  date +%s > $root/launched
fi
t0=$(date +%s)
while [ ! -f $root/done ] && [ $(( $(date +%s) - t0 )) -lt $wait_s ]; do sleep 5; done
echo "finished: $([ -f $root/done ] && echo all || echo no); elapsed since launch: $(( $(date +%s) - $(cat $root/launched) ))s"
nvidia-smi -L
finished=()
for g in g2 g3; do [ -f $root/$g/results.json ] && finished+=($root/$g); done
[ -f $root/g1/results.json ] && [ ${#finished[@]} -gt 0 ] && python3 tools/compare_runs.py $root/g1 "${finished[@]}" | tee $root/comparison.txt
mkdir -p $OUT/ddp-evidence
for g in g1 g2 g3; do
  [ -d $root/$g ] && rsync -a --include='*/' --include='*.json' --include='*.md' --include='*.png' --exclude='*' $root/$g $OUT/ddp-evidence/ 2>/dev/null \
    || { mkdir -p $OUT/ddp-evidence/$g; cp $root/$g/*.json $root/$g/*.md $OUT/ddp-evidence/$g/ 2>/dev/null; }
done
cp $root/*.log $root/comparison.txt $OUT/ddp-evidence/ 2>/dev/null
tail -5 $root/g*.log
