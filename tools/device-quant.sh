#!/usr/bin/env bash
# Issue-20 measurements on one GPU: CURLoRA vs QLoRA vs the 4-bit floor, and 7B bf16/8-bit/4-bit memory
# (perf/quant_bench.py; random-init Mistral-7B, no weights needed). bitsandbytes comes as a carried wheel in .whl/
# (docs/QUANTIZED.md says how to download it); one call carries it, and it stays installed while the machine is warm.
# usage: bash tools/device-quant.sh eager|compile   (JSON and logs under $OUT)
source tools/device-setup.sh
[ -d .whl ] && [ ! -d /tmp/site/bitsandbytes ] && \
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
python3 -c "import bitsandbytes, torch; print('bitsandbytes', bitsandbytes.__version__, 'torch', torch.__version__)" || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader
case ${1:-eager} in
  eager)  # bf16, 8bit and 4bit bases, floor / LoRA / CURLoRA, eager (~5 min on an H100/H200)
    timeout ${LIMIT:-560} python3 perf/quant_bench.py --out $OUT/quant-eager.json > $OUT/quant-eager.log 2>&1
    echo "exit $?"; grep -v -i warn $OUT/quant-eager.log | tail -22 ;;
  compile)  # the 4-bit variants eager and under torch.compile
    timeout ${LIMIT:-560} python3 perf/quant_bench.py --bases 4bit --compile --out $OUT/quant-compile.json \
      > $OUT/quant-compile.log 2>&1
    echo "exit $?"; grep -v -i warn $OUT/quant-compile.log | tail -16 ;;
esac
