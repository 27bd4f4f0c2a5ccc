#!/usr/bin/env bash
# Issue-8 evidence for `curlora sft`: the same short SFT run on 1 GPU and on 2 GPUs (accelerate launch, DDP),
# float32 so that the two compare tightly; prints EM/F1/perplexity/train loss side by side. Needs the built-in
# model and .devdata (see tools/device-setup.sh). usage: bash tools/device-sft-ddp.sh   (logs under $OUT)
# CONFIG=fsdp (and METHODS=curlora) runs the 2-GPU part with configs/accelerate/fsdp.yaml instead.
source tools/device-setup.sh
export OMP_NUM_THREADS=4 TOKENIZERS_PARALLELISM=false
mkdir -p $CURLORA_CACHE/data/vader && cp .devdata/vader/*_GroundTruth.txt $CURLORA_CACHE/data/vader/
python3 -c "import curlora; curlora.load_model()" > $OUT/convert.log 2>&1
S="--model smollm2-135m --data .devdata/squad/dev-v2.0-sample.json --method ${METHODS:-none,curlora,lora} --epochs 1
   --batch-size 16 --max-length 512 --eval-batch-size 64 --ppl-max-tokens 16384 --dtype float32"
t0=$(date +%s)
CUDA_VISIBLE_DEVICES=0 timeout 250 python3 -m curlora sft $S --out /tmp/sft1 > $OUT/sft1.log 2>&1
echo "1 GPU: exit $? in $(( $(date +%s) - t0 ))s"; t0=$(date +%s)
timeout 250 accelerate launch --config_file configs/accelerate/${CONFIG:-ddp}.yaml -m curlora sft $S --out /tmp/sft2 > $OUT/sft2.log 2>&1
echo "2 GPUs: exit $? in $(( $(date +%s) - t0 ))s"
mkdir -p $OUT/sft1 $OUT/sft2 && cp /tmp/sft1/results.json $OUT/sft1/ ; cp /tmp/sft2/results.json $OUT/sft2/
python3 - <<'PY'
import json
a, b = (json.load(open(f"/tmp/sft{i}/results.json")) for i in (1, 2))
print("processes:", a["environment"].get("processes", 1), "vs", b["environment"].get("processes", 1))
for ra, rb in zip(a["methods"], b["methods"]):
    keys = ("exact_match", "f1", "ppl_after", "train_loss", "train_s", "steps")
    print(ra["label"], "  ".join(f"{k} {ra.get(k)} | {rb.get(k)}" for k in keys if k in ra))
PY
tail -3 $OUT/sft2.log
