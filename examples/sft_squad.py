"""Fine-tune the built-in SmolLM2-135M for SQuAD question answering with CURLoRA through TRL's SFTTrainer.

Run:  python examples/sft_squad.py /path/to/dev-v2.0.json

It trains on the first two articles of the file, answers 40 questions about the last (held-out) article with
greedy decoding, and compares against the untouched base model: SQuAD EM/F1 and general-text perplexity (NYT
editorials) before and after. Everything lands in runs/sft-example/ (results.json, results.md, checkpoints).
A few minutes on a laptop CPU; the same call uses bf16 on a CUDA GPU automatically.
"""

import logging
import sys

from curlora.recipes.sft import SFTRecipeConfig, run_sft

logging.basicConfig(level=logging.INFO, format="%(message)s")

config = SFTRecipeConfig(
    data=sys.argv[1] if len(sys.argv) > 1 else "dev-v2.0.json",  # official SQuAD JSON (v1.1 or v2.0)
    model="smollm2-135m",  # or a local save_pretrained folder / hub id
    methods=["none", "curlora"],  # base model vs CURLoRA (add "lora" for the LoRA baseline)
    rank=16,
    train_articles=2,  # train on the first 2 articles ...
    eval_articles=1,  # ... evaluate on the last one (never trained on)
    eval_questions=40,
    max_steps=40,
    max_length=384,  # prompt + answer; longer contexts are cut, never the question or the answer
    ppl_max_tokens=4096,
)
results = run_sft(config, "runs/sft-example", overwrite=True)

for m in results["methods"]:
    print(f"{m['label']:>10}: EM {m['exact_match']:5.1f}  F1 {m['f1']:5.1f}  perplexity {m['ppl_after']:.2f}")
# The trained adapter is a regular PEFT folder:
#   PeftModel.from_pretrained(base_model, "runs/sft-example/runs/curlora-16/final")  (after `import curlora`)
