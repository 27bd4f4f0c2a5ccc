#!/usr/bin/env bash
# The second-edition study (configs/studies/continual.toml) on a GPU machine: the four settings run side by side
# (`curlora study run --only SETTING`, workers spread over every GPU), started in the background (setsid) so
# that a call that hits its time limit loses nothing; calling this script again waits on the running settings, or
# resumes killed ones (finished runs are kept). When all are done it gathers results.json and renders the report.
# usage: [DESIGN=configs/studies/X.toml] CURLORA_COMMIT=abc1234 bash tools/device-study2.sh [WAIT_SECONDS] [JOBS_PER_ORDER] [JOBS_PAPER]
# (per GPU-machine: the three task orders take 5 workers each and the shorter paper sequence 3, on one H200;
# configs/studies/quantized.toml: DESIGN=configs/studies/quantized.toml ... 540 8, with .whl/ carried)
source tools/device-setup.sh
# a design with `quantize` needs bitsandbytes: carry its wheel in .whl/ (docs/QUANTIZED.md)
[ -d .whl ] && [ ! -d /tmp/site/bitsandbytes ] && \
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
wait_s=${1:-540}
jobs_order=${2:-5}
jobs_paper=${3:-3}
design=${DESIGN:-configs/studies/continual.toml}
ngpu=$(nvidia-smi -L | wc -l)
gpus=$(seq -s, 0 $((ngpu - 1)))
root=/tmp/$(basename $design .toml)
mkdir -p $root
python3 -c "import curlora; curlora.load_model()" > $root/convert.log 2>&1
settings=$(python3 -c "import tomllib; print(' '.join(s['name'] for s in tomllib.load(open('$design', 'rb'))['setting']))")
for s in $settings; do
  if ! { [ -f $root/$s.pid ] && kill -0 "$(cat $root/$s.pid)" 2>/dev/null; } && ! grep -q '^done' $root/$s.log 2>/dev/null; then
    jobs=$jobs_order; [ "$s" = paper ] && jobs=$jobs_paper
    setsid nohup bash -c "python3 -m curlora study run $design --data-dir .devdata --out $root/study --only $s \
      --jobs $jobs --gpus $gpus && echo done" >> $root/$s.log 2>&1 < /dev/null &
    echo $! > $root/$s.pid
  fi
done
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 5 >> $root/gpu-util.csv &
smi=$!
t0=$(date +%s)
running() { for s in $settings; do kill -0 "$(cat $root/$s.pid)" 2>/dev/null && return 0; done; return 1; }
while running && [ $(( $(date +%s) - t0 )) -lt $wait_s ]; do sleep 10; done
kill $smi 2>/dev/null
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
for s in $settings; do
  echo "$s: $(find $root/study/$s -name run.json 2>/dev/null | wc -l) runs finished; $(tail -1 $root/$s.log | cut -c1-200)"
done
mkdir -p $OUT/study2
cp $root/*.log $root/gpu-util.csv $OUT/study2/ 2>/dev/null
if ! running; then
  python3 -m curlora study collect $design $root/study --data-dir .devdata > $OUT/study2/collect.log 2>&1
  cp $root/study/results.json $OUT/study2/ 2>/dev/null
  for s in $settings; do
    mkdir -p $OUT/study2/$s
    cp $root/study/$s/results.json $root/study/$s/report.md $root/study/$s/*.png $OUT/study2/$s/ 2>/dev/null
  done
fi
ls -la $OUT/study2
