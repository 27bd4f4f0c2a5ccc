"""Mixed-adapter batches: one adapter name (or "__base__") per row, as PEFT's LoRA offers with `adapter_names=`.

`model(..., adapter_names=[...])` and `model.generate(..., adapter_names=[...])` go through PEFT's
`_enable_peft_forward_hooks`, which here checks the names once per call and hands them to every CURLoRA layer
(and to every modules_to_save wrapper) as a keyword argument.

A layer does not loop over the adapters of the batch, as LoRA's mixed forward does: the r × r U, the r row
indices and C of each row's adapter are gathered into per-row stacks ("banks"), and the whole batch takes one
gather, two batched GEMMs and one add, however many adapters it mixes. Rows of "__base__" (or of an adapter this
layer does not hold) get a zero U; adapters of different ranks are padded with zeros to the largest rank. Inside
one model call (a forward, or a whole `generate`) each layer builds its bank once and reuses it every step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from curlora.errors import CurloraError

BASE = "__base__"


def _check_names(adapter_names, batch: int) -> list[str]:
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
        raise CurloraError(
            f"adapter_names must be a list with one adapter name (or {BASE!r}) per row, "
            f"got {type(adapter_names).__name__}"
        )
    if len(adapter_names) != batch:
        raise CurloraError(
            f"adapter_names has {len(adapter_names)} names for a batch of {batch} rows; give one name per row "
            f"(or {BASE!r} for the base model)"
        )
    return list(adapter_names)


class _Bank:
    """Per-row factors of one layer for one list of adapter names (row b takes adapter names[b])."""

    def __init__(self, layer, names: list[str], device: torch.device) -> None:
        unique = [n for n in dict.fromkeys(names) if n != BASE and n in layer.curlora_U]
        self.empty = not unique
        if self.empty:
            return
        slot = {n: i + 1 for i, n in enumerate(unique)}  # slot 0: a zero adapter for base rows
        index = torch.tensor([slot.get(n, 0) for n in names], device=device)
        dtype = layer.curlora_C[unique[0]].dtype
        ranks = [layer.curlora_U[n].shape[0] for n in unique]
        rank = max(ranks)

        def stacked(tensors: list[torch.Tensor], widths) -> torch.Tensor:
            """One stack (padded to the largest rank where ranks differ) with a zero slot 0 in front: a few
            ops per layer whatever the number of adapters, not a few per adapter."""
            if any(k != rank for k in ranks):
                tensors = [F.pad(t, widths(rank - k)) for t, k in zip(tensors, ranks, strict=True)]
            bank = torch.stack(tensors)
            return F.pad(bank, (0, 0) * (bank.dim() - 1) + (1, 0))

        u = stacked([layer.curlora_U[n].detach() for n in unique], lambda d: (0, d, 0, d))
        alphas = [layer.curlora_alpha[n] for n in unique]
        if any(a != 1.0 for a in alphas):
            u = u * torch.tensor([1.0, *alphas], dtype=u.dtype, device=u.device).view(-1, 1, 1)
        self.ut = u.to(dtype).transpose(1, 2).index_select(0, index)  # (B, r, r): (αU)ᵀ per row
        c = stacked([layer.curlora_C[n] for n in unique], lambda d: (0, d))
        self.ct = c.transpose(1, 2).index_select(0, index)  # (B, r, out)
        self.rows = stacked([layer.curlora_rows[n] for n in unique], lambda d: (0, d)).index_select(0, index)
        self._r = [layer.curlora_R[n] for n in unique]
        self._ranks, self._index, self._rt = ranks, index, None
        bias = layer.base_layer.bias
        self.bias_rows = None if bias is None else bias.detach()[self.rows].to(dtype).unsqueeze(1)  # (B, 1, r)
        # x·Rᵀ read off the base output only where every adapter of the batch allows it (as `forward` decides)
        self.reuse = all(layer._frozen_plain_base(n) for n in unique)

    @property
    def rt(self) -> torch.Tensor:
        """Per-row Rᵀ (B, in, r), built only where x·Rᵀ cannot be read off the base output."""
        if self._rt is None:
            rank = max(self._ranks)
            rs = [F.pad(r, (0, 0, 0, rank - k)) if k != rank else r for r, k in zip(self._r, self._ranks, strict=True)]
            bank = F.pad(torch.stack(rs), (0, 0, 0, 0, 1, 0))
            self._rt = bank.transpose(1, 2).index_select(0, self._index)
        return self._rt


def mixed_batch_forward(layer, x: torch.Tensor, adapter_names, *args, **kwargs) -> torch.Tensor:
    """The layer's output where row b carries adapter `adapter_names[b]` alone (no gradient to U)."""
    names = _check_names(adapter_names, len(x))
    if layer.merged:
        raise CurloraError(
            "adapter_names cannot be used while adapters are merged into the base weights; call "
            "model.unmerge_adapter() first (or serve the merged model without adapter_names)"
        )
    result = layer.base_layer(x, *args, **kwargs)
    cache = getattr(layer, "_mixed_banks", None)
    key = tuple(names)
    bank = cache.get(key) if cache is not None else None
    if bank is None:
        bank = _Bank(layer, names, result.device)
        if cache is not None:
            cache[key] = bank
    if bank.empty:
        return result
    batch, out_f = result.shape[0], result.shape[-1]
    y = result.reshape(batch, -1, out_f)
    if bank.reuse and y.dtype == bank.ct.dtype:
        t = y.gather(2, bank.rows.unsqueeze(1).expand(-1, y.shape[1], -1))
        if bank.bias_rows is not None:
            t = t - bank.bias_rows
    else:
        t = torch.bmm(x.reshape(batch, -1, x.shape[-1]).to(bank.ct.dtype), bank.rt)
    h = torch.bmm(t, bank.ut)
    if y.dtype == bank.ct.dtype:
        return torch.baddbmm(y, h, bank.ct).view(result.shape)
    return (y + torch.bmm(h, bank.ct).to(y.dtype)).view(result.shape)


def _inject_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def adapter_names_hooks(tuner: nn.Module, layer_type: type, adapter_names, num_beams=None) -> Iterator[None]:
    """Hand `adapter_names` to every CURLoRA layer and modules_to_save wrapper for the duration of one call."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    if tuner.training:
        raise CurloraError("adapter_names is for inference: call model.eval() first (no mixed batches in training)")
    if isinstance(adapter_names, str) or not isinstance(adapter_names, Sequence):
        raise CurloraError(f"adapter_names must be a list with one adapter name (or {BASE!r}) per row")
    layers = [m for m in tuner.modules() if isinstance(m, layer_type)]
    loaded = sorted({name for layer in layers for name in layer.curlora_U})
    unknown = sorted({n for n in adapter_names if n != BASE and n not in loaded})
    if unknown:
        raise CurloraError(
            f"adapter_names names adapter(s) not loaded: {', '.join(map(repr, unknown))}; loaded: "
            f"{', '.join(map(repr, loaded)) or 'none'} (or {BASE!r} for the base model)"
        )
    if any(layer.merged for layer in layers):
        raise CurloraError(
            "adapter_names cannot be used while adapters are merged into the base weights; call "
            "model.unmerge_adapter() first"
        )
    names = list(adapter_names)
    if isinstance(num_beams, int) and num_beams > 1:  # generate repeats each row num_beams times
        names = [n for n in names for _ in range(num_beams)]
    hook = partial(_inject_names, adapter_names=names)
    handles = []
    try:
        for module in tuner.modules():
            if isinstance(module, layer_type | AuxiliaryTrainingWrapper):
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            if isinstance(module, layer_type):
                module._mixed_banks = {}
        yield
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            layer._mixed_banks = None
