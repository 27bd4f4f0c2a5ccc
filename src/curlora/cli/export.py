"""`curlora export-lora`: a CURLoRA adapter as a standard PEFT LoRA adapter folder (same ΔW) for LoRA servers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape


def export_lora(
    adapter: Path = typer.Argument(..., help="CURLoRA adapter folder (written by save_pretrained)."),
    out: Path = typer.Argument(..., help="Folder to write the LoRA adapter to (refused if it exists)."),
    model: str | None = typer.Option(
        None, "--model", help="Base model (built-in smollm2-135m, folder or hub id); default: the adapter's own."
    ),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Export as PEFT LoRA: A = R, B = α·C·U, lora_alpha = r; plain `peft` loads it, any LoRA server serves it."""
    from curlora.tuner.export import export_lora as export

    written = export(adapter, out, model, force=force)
    console = Console()
    for name, folder in written.items():
        size = (folder / "adapter_model.safetensors").stat().st_size
        console.print(f"[green]✓[/] {escape(name)} → {escape(str(folder))} ({size:,} bytes)")
