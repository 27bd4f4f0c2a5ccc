"""Compare bench run folders against a reference run: accuracies, final weights, perplexity, wall time.

usage: python3 tools/compare_runs.py REF_DIR OTHER_DIR [OTHER_DIR ...] > comparison.txt
Used for the 1-GPU vs 2-GPU evidence (docs/DISTRIBUTED.md); reads results.json and the last stage's safetensors.
"""

from __future__ import annotations

import json
import pathlib
import sys

from safetensors.torch import load_file


def runs(folder: pathlib.Path) -> dict:
    return {r["label"]: r for r in json.loads((folder / "results.json").read_text())["runs"]}


def avg(run: dict) -> float:
    last = run["acc"][-1]
    return sum(last) / len(last)


def final_tensors(folder: pathlib.Path, label: str) -> dict:
    stages = sorted((folder / "runs" / label / "seed-0").glob("stage-*"))
    if not stages:  # a copy with results.json only
        return {}
    last = stages[-1]
    files = [last / "heads.safetensors", last / "adapter" / "adapter_model.safetensors"]
    out = {}
    for f in files:
        if f.exists():
            out.update({k: v.float() for k, v in load_file(str(f)).items() if v.is_floating_point()})
    return out


def main(ref_dir: str, *other_dirs: str) -> None:
    ref = pathlib.Path(ref_dir)
    ref_runs = runs(ref)
    for other in map(pathlib.Path, other_dirs):
        env = json.loads((other / "results.json").read_text())["environment"]
        launch = f"processes: {env.get('processes')}, fsdp: {env.get('fsdp')}"
        print(f"{ref} (first value) vs {other} (second value; {launch})")
        other_runs = runs(other)
        for label, a in ref_runs.items():
            b = other_runs[label]
            pairs = zip(sum(a["acc"], []), sum(b["acc"], []), strict=True)
            dacc = max(abs(x - y) for x, y in pairs if x is not None)
            ta, tb = final_tensors(ref, label), final_tensors(other, label)
            dw = max(((ta[k] - tb[k]).abs().max().item() for k in ta if k in tb), default=float("nan"))
            print(
                f"  {label:12s} avg acc {avg(a):.4f} vs {avg(b):.4f}  max|Δacc| {dacc:.4f}  "
                f"max|Δweights| {dw:.2e}  ppl {a['ppl_after']:.4f} vs {b['ppl_after']:.4f}  "
                f"wall {a['wall_s']:.0f}s vs {b['wall_s']:.0f}s"
            )


if __name__ == "__main__":
    main(*sys.argv[1:])
