"""What quantizing the base does to a CURLoRA adapter, on the built-in SmolLM2-135M (CPU is enough).

For each base (nf4 + double quantization, fp4, int8) against the float32 base, with one curlora-16 adapter whose
U is random at a scale where the adapter moves the logits about as much as a trained one (‖ΔW‖/‖W‖ ≈ 1e-2):
  fingerprint shift   max relative change of the four fingerprint numbers when C and R are rebuilt from the
                      quantized base at the same indices (the usual load check allows 2 %)
  cross-load          the adapter made on the float base, loaded onto the quantized one: how far its effect on the
                      logits (adapted − base) moves, relative to that effect on the float base
  merge               merge_adapter() into the quantized layers against the unmerged adapter on the same base:
                      max |Δlogit| and ‖Δlogits‖ relative to the adapter's own effect, and the same after
                      unmerge_adapter()

    python perf/quant_accuracy.py --out docs/perf/quant_accuracy.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

TEXTS = [
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Quantization stores each weight in four bits with one scale per block of sixty-four weights.",
    "She said the movie was wonderful, but the ending left everyone in the theatre confused.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
]
KINDS = {
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "int8": dict(load_in_8bit=True),
}


def rel_l2(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | None = None) -> float:
    """‖a − b‖ / ‖scale‖ (scale defaults to b): the difference relative to the adapter's effect."""
    return float((a - b).norm() / (b if scale is None else scale).norm())


def main(argv=None) -> int:
    import peft
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import curlora
    from curlora import cur
    from curlora.metrics import delta_norm_ratios
    from curlora.models.builtin import ensure_builtin_model
    from curlora.tuner.layer import CURLoRALayer

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--u-scale", type=float, default=0.005)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    folder = ensure_builtin_model()
    _, tok = curlora.load_model(folder)
    batch = tok(TEXTS, return_tensors="pt", padding=True)

    def load(kind):
        if kind == "none":
            return AutoModelForCausalLM.from_pretrained(folder).eval()
        extra = {} if kind == "int8" else {"bnb_4bit_compute_dtype": torch.float32}
        qc = BitsAndBytesConfig(**KINDS[kind], **extra)
        return AutoModelForCausalLM.from_pretrained(folder, quantization_config=qc, device_map={"": "cpu"}).eval()

    def logits(model):
        with torch.no_grad():
            out = model(**batch).logits.float()
        return out[batch["attention_mask"].bool()]

    def effect(peft_model):
        with peft_model.disable_adapter():
            base = logits(peft_model)
        return base, logits(peft_model)

    dense = peft.get_peft_model(load("none"), curlora.CURLoRAConfig(r=args.rank, seed=1311))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in dense.modules():
            if isinstance(m, CURLoRALayer):
                m.curlora_U["default"].copy_(torch.randn(args.rank, args.rank, generator=gen) * args.u_scale)
    ratio = sum(delta_norm_ratios(dense)) / len(delta_norm_ratios(dense))
    base_d, adapted_d = effect(dense)
    effect_d = (adapted_d - base_d).abs().max().item()
    results = {"model": "smollm2-135m", "rank": args.rank, "mean_delta_norm_ratio": ratio,
               "adapter_effect_max_abs_logit": effect_d, "bases": {}}  # fmt: skip
    fps = {n: b.view(torch.float64) for n, b in dense.state_dict().items() if "fingerprint" in n}
    with tempfile.TemporaryDirectory() as tmp:
        dense.save_pretrained(tmp)
        for kind in KINDS:
            row = {}
            loaded = peft.PeftModel.from_pretrained(load(kind), tmp)
            # the layer refreshes its fingerprint after a cross-quantization load: compare with the saved ones
            shifts = []
            for name, layer in loaded.named_modules():
                if isinstance(layer, CURLoRALayer):
                    now = cur.fingerprint(layer.curlora_C["default"], layer.curlora_R["default"])
                    saved = fps[f"{name}.curlora_fingerprint.default"]
                    shifts.append(((now - saved).abs() / saved.abs()).tolist())
            shifts = torch.tensor(shifts)
            row["fingerprint_shift_max"] = shifts.max().item()
            row["fingerprint_shift_max_per_number"] = dict(zip(("C_norm", "C_abs_sum", "R_norm", "R_abs_sum"),
                                                               shifts.max(0).values.tolist(), strict=True))
            base_q, adapted_q = effect(loaded)
            moved = ((adapted_q - base_q) - (adapted_d - base_d)).abs().max().item()
            row["cross_load_effect_change_rel"] = moved / effect_d
            row["cross_load_effect_change_rel_l2"] = rel_l2(adapted_q - base_q, adapted_d - base_d)
            row["base_logit_change_max_abs"] = (base_q - base_d).abs().max().item()
            with torch.no_grad():
                loaded.merge_adapter()
                merged = logits(loaded)
                loaded.unmerge_adapter()
                unmerged = logits(loaded)
            row["merge_max_abs_logit_vs_unmerged"] = (merged - adapted_q).abs().max().item()
            row["merge_error_rel_to_effect"] = row["merge_max_abs_logit_vs_unmerged"] / effect_d
            row["unmerge_max_abs_logit_vs_unmerged"] = (unmerged - adapted_q).abs().max().item()
            row["unmerge_error_rel_to_effect"] = row["unmerge_max_abs_logit_vs_unmerged"] / effect_d
            row["merge_error_rel_l2"] = rel_l2(merged, adapted_q, adapted_q - base_q)
            row["unmerge_error_rel_l2"] = rel_l2(unmerged, adapted_q, adapted_q - base_q)
            results["bases"][kind] = row
            print(kind, json.dumps(row))
    print(json.dumps({k: v for k, v in results.items() if k != "bases"}))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        from curlora.files import atomic_write_json, finite_or_null

        atomic_write_json(args.out, finite_or_null(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
