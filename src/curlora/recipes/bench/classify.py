"""Sequence classification on top of a causal LM: tokenization, dynamic-padding batches, last-token pooling.

The LM's own head is never touched: each task gets a fresh `nn.Linear(hidden, n_labels)` on the hidden state of
the last non-padding token (the original implementation pooled on padding for GPT-2).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn


def backbone_of(model: nn.Module) -> nn.Module:
    """The transformer body (LlamaModel, GPT2Model, ...) of a causal LM, a PeftModel around one, or itself."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(inner, "base_model", inner)
    return body if body is not None else inner


def hidden_size(model: nn.Module) -> int:
    config = getattr(model, "config", None) or backbone_of(model).config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


@dataclass
class Encoded:
    """Token ids per example (unpadded) and labels."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def encode(
    tokenizer, texts: Sequence[str], pairs: Sequence[str | None] | None, labels: Sequence[int], max_length: int
) -> Encoded:
    """Tokenize single texts or pairs (joined by a newline, the same for every model) with truncation."""
    if pairs is not None and any(p is not None for p in pairs):
        texts = [t if p is None else f"{t}\n{p}" for t, p in zip(texts, pairs, strict=True)]
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
    # an empty encoding has no last token to pool on
    ids = [x if len(x) > 0 else [tokenizer.eos_token_id or 0] for x in ids]
    return Encoded(ids=ids, labels=list(labels))


def batches(
    data: Encoded,
    batch_size: int,
    pad_id: int,
    *,
    generator: torch.Generator | None = None,
    sort_by_length: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (input_ids, attention_mask, labels, example_index) padded on the right to the batch's longest row.

    `generator` shuffles (training); `sort_by_length` groups similar lengths (evaluation: little padding)."""
    order = list(range(len(data)))
    if generator is not None:
        order = torch.randperm(len(data), generator=generator).tolist()
    elif sort_by_length:
        order.sort(key=lambda i: len(data.ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(data.ids[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            seq = data.ids[i]
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
        yield input_ids, mask, torch.tensor([data.labels[i] for i in idx]), torch.tensor(idx)


def pooled_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last non-padding token (right padding)."""
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    last = attention_mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def new_head(hidden: int, n_labels: int, seed: int) -> nn.Linear:
    """A fresh, seeded classification head (fp32)."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    head = nn.Linear(hidden, n_labels)
    torch.random.set_rng_state(gen_state)
    return head
