"""The Markdown report of a `curlora sft` run (results.md), from its results alone."""

from __future__ import annotations


def render_markdown(results: dict) -> str:
    ppl = results["ppl"]
    lines = [
        "# curlora sft: SQuAD question answering",
        "",
        f"Model `{results['config']['model']}`, data `{results['data']['source']}`: trained on "
        f"{results['data']['train_examples']} questions from {len(results['data']['train_articles'])} article(s), "
        f"evaluated on {results['data']['eval_examples']} held-out questions from "
        f"{len(results['data']['eval_articles'])} other article(s) ({', '.join(results['data']['eval_articles'])}). "
        f"EM/F1: official SQuAD normalisation, greedy decoding. Perplexity: {ppl['name']}, "
        f"{ppl['tokens']} tokens (lower is better; before = base model {ppl['before']:.3f}).",
        "",
        "| method | trainable params | EM | F1 | ppl after | Δppl | train loss | steps | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def num(r: dict, key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if isinstance(v, int | float) else "–"

    for r in results["methods"]:
        change = r.get("ppl_change_pct")
        lines.append(
            f"| {r['label']} | {r.get('trainable_params', 0):,} | "
            f"{num(r, 'exact_match', '.2f')} | {num(r, 'f1', '.2f')} | "
            f"{num(r, 'ppl_after', '.3f')} | {format(change, '+.2f') + '%' if change is not None else '–'} | "
            f"{num(r, 'train_loss', '.3f')} | {num(r, 'train_steps', 'd')} | {num(r, 'train_s', '.0f')} |"
        )
    env = results.get("environment", {})
    quantized = results.get("config", {}).get("quantize")
    base = f"; {quantized} base (bitsandbytes)" if quantized else ""
    lines += ["", f"Device: {env.get('device_name', '?')}; dtype {results.get('dtype', '?')}{base}.", ""]
    return "\n".join(lines)
