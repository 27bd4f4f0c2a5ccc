"""`curlora info`: a model's architecture, the layers the adapters wrap, and CURLoRA vs LoRA sizes per rank."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from curlora.cli._ui import console


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _architecture_table(arch: dict) -> Table:
    table = Table(title="Architecture", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    heads = arch["attention_heads"]
    kv = arch["kv_heads"]
    rows = [
        ("model type", arch["model_type"] or "?"),
        ("layers", _count(arch["layers"])),
        ("hidden size", _count(arch["hidden_size"])),
        ("intermediate size", _count(arch["intermediate_size"])),
        ("heads / kv heads", f"{_count(heads)} / {_count(kv)}" + (f" (head dim {arch['head_dim']})" if arch[
            "head_dim"] else "")),
        ("vocabulary", _count(arch["vocab_size"])),
        ("total parameters", f"{_count(arch['total_params'])}" + (
            f" ({arch['total_params'] / 1e9:.2f} B)" if arch["total_params"] else "")),
        ("tied embeddings", "yes" if arch["tie_word_embeddings"] else "no"),
    ]  # fmt: skip
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    return table


def _targets_table(targets: dict) -> Table:
    how = "default" if targets["default"] else "--targets"
    table = Table(
        title=f"Adapted layers: {targets['count']} × {escape(', '.join(targets['modules']))} ({how})",
        title_justify="left",
    )
    table.add_column("layer names")
    table.add_column("indices", justify="right")
    table.add_column("count", justify="right")
    table.add_column("type")
    table.add_column("out × in", justify="right", no_wrap=True)
    for g in targets["groups"]:
        table.add_row(
            escape(g["pattern"]), g["indices"] or "-", str(g["count"]), g["kind"], f"{g['out']:,} × {g['in']:,}"
        )
    return table


def _ratio(x: float) -> str:
    return f"{x:,.0f}×" if x >= 100 else f"{x:.1f}×"


def _ranks_table(rows: list[dict]) -> Table:
    table = Table(title="Trainable parameters and adapter_model.safetensors bytes", title_justify="left")
    headers = ("r", "CURLoRA\nparams", "LoRA\nparams", "LoRA/\nCURLoRA", "CURLoRA\nfile (B)", "LoRA\nfile (B)",
               "LoRA/\nCURLoRA")  # fmt: skip
    for name in headers:
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            str(row["r"]),
            f"{row['curlora_params']:,}",
            f"{row['lora_params']:,}",
            _ratio(row["params_ratio"]),
            f"{row['curlora_bytes']:,}",
            f"{row['lora_bytes']:,}",
            _ratio(row["bytes_ratio"]),
        )
    return table


def info(
    model: str | None = typer.Argument(
        None, help="Built-in smollm2-135m, a local model folder or a Hugging Face hub id (omit with --config)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A config.json to inspect instead of MODEL; built on the meta device, no weights."
    ),
    targets: str | None = typer.Option(
        None, help="Comma-separated module names to adapt (default: the model type's q/k/v projections)."
    ),
    ranks: str | None = typer.Option(None, help="Comma-separated ranks (default: 1,2,4,8,16,24)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables."),
) -> None:
    """Architecture, adapted layers, and CURLoRA vs LoRA trainable parameters and file sizes per rank."""
    from curlora.models.info import model_info

    result = model_info(model, config_file=config, targets=targets, ranks=ranks)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console.print(f"[bold]curlora info[/] {escape(result['source'])}")
    console.print(_architecture_table(result["architecture"]))
    console.print(_targets_table(result["targets"]))
    if result["targets"]["unmatched"]:
        console.print(
            f"[yellow]note:[/] {escape(', '.join(result['targets']['unmatched']))} match no layer and would be "
            "ignored; the table counts only the layers above"
        )
    console.print(_ranks_table(result["ranks"]))
    console.print(
        "[dim]Per layer, CURLoRA trains U (r × r) and saves U, its column/row indices and a fingerprint; "
        "LoRA trains and saves A (r × in) and B (out × r). Sizes are exact safetensors file sizes "
        "(float32 weights).[/]"
    )
