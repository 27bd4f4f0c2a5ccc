#!/usr/bin/env bash
# The issue-17 demonstration sweep on a multi-GPU machine: `curlora sweep` with 15 workers per GPU (the bench is
# CPU-launch-bound at batch 8), started in the background (setsid) so that a call that hits its time limit loses
# nothing; calling this script again waits on the running sweep, or resumes a killed one (finished runs are kept).
# GPU utilisation is sampled every 5 s into $OUT/gpu-util.csv for the throughput line in docs/BENCHMARKS.md.
# usage: bash tools/device-sweep.sh [WAIT_SECONDS] [JOBS_PER_GPU]
source tools/device-setup.sh
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
wait_s=${1:-540}
per_gpu=${2:-15}
ngpu=$(nvidia-smi -L | wc -l)
gpus=$(seq -s, 0 $((ngpu - 1)))
root=/tmp/sweep-demo
mkdir -p $root
python3 -c "import curlora; curlora.load_model()" > $root/convert.log 2>&1
if ! { [ -f $root/pid ] && kill -0 "$(cat $root/pid)" 2>/dev/null; }; then
  setsid nohup python3 -m curlora sweep --config configs/sweeps/paper-demo.toml --data-dir .devdata \
    --jobs $((per_gpu * ngpu)) --gpus "$gpus" --out $root/sweep >> $root/sweep.log 2>&1 < /dev/null &
  echo $! > $root/pid
fi
nvidia-smi --query-gpu=timestamp,index,utilization.gpu,memory.used --format=csv,noheader -l 5 \
  >> $root/gpu-util.csv 2>/dev/null &
smi=$!
t0=$(date +%s)
while kill -0 "$(cat $root/pid)" 2>/dev/null && [ $(( $(date +%s) - t0 )) -lt $wait_s ]; do sleep 10; done
kill $smi 2>/dev/null
nvidia-smi --query-gpu=name --format=csv,noheader | head -1
echo "finished runs: $(grep -c '^\[' $root/sweep.log)"; tail -3 $root/sweep.log
mkdir -p $OUT/sweep
cp $root/gpu-util.csv $root/sweep.log $OUT/sweep/ 2>/dev/null
for f in results.json report.md front-ppl.png front-forgetting.png sweep.json; do
  [ -f $root/sweep/$f ] && cp $root/sweep/$f $OUT/sweep/
done
if ! kill -0 "$(cat $root/pid)" 2>/dev/null && [ -f $root/sweep/results.json ]; then
  python3 -m curlora sweep recommend $root/sweep --max-ppl-increase 5% > $OUT/sweep/recommend-ppl5.txt 2>&1
  python3 -m curlora sweep recommend $root/sweep --max-forgetting 0.01 > $OUT/sweep/recommend-forg1.txt 2>&1
  python3 - <<'PY' > $OUT/sweep/throughput.txt
import csv, json
r = json.load(open("/tmp/sweep-demo/sweep/results.json"))
walls = [x["wall_s"] for x in r["runs"] if x["wall_s"]]
util = [float(row[2].strip().rstrip(" %")) for row in csv.reader(open("/tmp/sweep-demo/gpu-util.csv")) if len(row) > 2]
print(f"runs {r['n_runs_done']}, sweep wall {r['wall_s']:.0f} s (last invocation), jobs {r['search']['jobs']}")
print(f"runs/hour/GPU {r['n_runs_done'] / r['wall_s'] * 3600 / max(1, len(r['search']['gpus'] or [0])):.1f}")
print(f"run wall mean {sum(walls) / len(walls):.0f} s (alone on one H100: ~190 s), GPU busy {sum(util) / max(1, len(util)):.0f} %")
PY
  cat $OUT/sweep/throughput.txt
fi
