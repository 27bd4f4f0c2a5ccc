"""Continual-learning metrics over an accuracy matrix, and sliding-window perplexity of a causal LM.

Accuracy matrix convention
--------------------------
One model learns tasks T0, T1, ..., TT in order. After training task ``i`` every task seen so far is
evaluated, so ``acc[i][j]`` is the accuracy on task ``j`` after training task ``i``, defined for
``j <= i``. The matrix is passed as a square list of lists (or anything indexable the same way, such as a
NumPy array) with ``None`` (or NaN) above the diagonal::

    [[0.81, None, None],
     [0.79, 0.70, None],
     [0.77, 0.66, 0.74]]

Every entry on or below the diagonal must be a finite number. A malformed matrix raises
:class:`~curlora.errors.CurloraError`.

Metrics (``T`` is the index of the last task):

* :func:`average_accuracy` - mean of the last row, ``mean_j acc[T][j]``.
* :func:`backward_transfer` - BWT (Lopez-Paz & Ranzato, 2017): ``mean_{j<T} (acc[T][j] - acc[j][j])``.
  Negative values mean forgetting.
* :func:`forgetting` - average forgetting (Chaudhry et al., 2018):
  ``mean_{j<T} (max_{l in [j, T-1]} acc[l][j] - acc[T][j])``. It equals ``-BWT`` only when every task's
  best accuracy before the last stage was reached right after training it.

BWT and forgetting need at least two tasks; with a single task both return ``None`` (not NaN), which
keeps them JSON-serialisable and makes "undefined" explicit.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from curlora.errors import CurloraError

logger = logging.getLogger(__name__)

__all__ = [
    "average_accuracy",
    "backward_transfer",
    "delta_norm_ratio",
    "delta_norm_ratios",
    "forgetting",
    "kl_to_base",
    "mean_sd",
    "perplexity",
    "validate_acc_matrix",
]


def _is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isnan(float(x)))


def _as_number(x: Any) -> float | None:
    """float(x) for a real, non-bool number (NumPy scalars and 0-d tensors included), else None."""
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        return None
    return float(x)


def validate_acc_matrix(acc: Sequence[Sequence[Any]]) -> list[list[float]]:
    """Check that ``acc`` is a square, lower-triangular accuracy matrix; return its lower triangle.

    The result is a ragged list: ``rows[i] == [acc[i][0], ..., acc[i][i]]`` as floats.
    Raises :class:`CurloraError` when the matrix is empty, not square, has a missing or non-finite value on
    or below the diagonal, or has a value above the diagonal (the future tasks are not evaluated).
    """
    try:
        rows = [list(r) for r in acc]
    except TypeError as err:
        raise CurloraError(
            f"accuracy matrix must be a list of rows (lists), got {type(acc).__name__}: "
            "pass acc[i][j] = accuracy on task j after training task i."
        ) from err
    n = len(rows)
    if n == 0:
        raise CurloraError("accuracy matrix is empty: it needs one row per trained task.")
    out: list[list[float]] = []
    for i, row in enumerate(rows):
        if len(row) != n:
            raise CurloraError(
                f"accuracy matrix is not square: row {i} has {len(row)} entries but there are {n} rows; "
                "give every row one entry per task, with None above the diagonal."
            )
        vals: list[float] = []
        for j, x in enumerate(row):
            if j <= i:
                v = _as_number(x)
                if v is None or not math.isfinite(v):
                    raise CurloraError(
                        f"accuracy matrix entry [{i}][{j}] is {x!r}: entries on or below the diagonal "
                        "must be finite numbers (accuracy on task j after training task i)."
                    )
                vals.append(v)
            elif not _is_missing(x):
                raise CurloraError(
                    f"accuracy matrix entry [{i}][{j}] is {x!r} but lies above the diagonal: the matrix "
                    "must be lower-triangular; put None there (task j is not trained yet after task i)."
                )
        out.append(vals)
    return out


def average_accuracy(acc: Sequence[Sequence[Any]]) -> float:
    """Mean accuracy over all tasks after training the last one (mean of the last row)."""
    rows = validate_acc_matrix(acc)
    last = rows[-1]
    return math.fsum(last) / len(last)


def backward_transfer(acc: Sequence[Sequence[Any]]) -> float | None:
    """BWT = mean over j < T of (acc[T][j] - acc[j][j]); ``None`` when there is only one task."""
    rows = validate_acc_matrix(acc)
    t = len(rows) - 1
    if t == 0:
        return None
    return math.fsum(rows[t][j] - rows[j][j] for j in range(t)) / t


def forgetting(acc: Sequence[Sequence[Any]]) -> float | None:
    """Average forgetting = mean over j < T of (max_{l in [j, T-1]} acc[l][j] - acc[T][j]).

    ``None`` when there is only one task.
    """
    rows = validate_acc_matrix(acc)
    t = len(rows) - 1
    if t == 0:
        return None
    return math.fsum(max(rows[k][j] for k in range(j, t)) - rows[t][j] for j in range(t)) / t


def mean_sd(values: Iterable[Any]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1) of ``values``.

    ``None`` and NaN values are skipped (a seed that has no value for this quantity).
    Returns ``(None, None)`` when nothing is left and ``(mean, None)`` for a single value: the sample sd of
    one value is undefined, and ``None`` lets a report print the mean alone.
    """
    xs: list[float] = []
    for v in values:
        if _is_missing(v):
            continue
        f = _as_number(v)
        if f is None:
            raise CurloraError(f"mean_sd: {v!r} is not a number; pass numbers (None is skipped).")
        xs.append(f)
    if not xs:
        return None, None
    m = math.fsum(xs) / len(xs)
    if len(xs) == 1:
        return m, None
    var = math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1)
    return m, math.sqrt(var)


# --------------------------------------------------------------------------------------------------------
# Perplexity
# --------------------------------------------------------------------------------------------------------


def _max_positions(model: Any) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    configs = [config]
    get_text = getattr(config, "get_text_config", None)
    if callable(get_text):
        try:
            configs.append(get_text())
        except Exception:  # noqa: BLE001 - a config without a text part is fine
            pass
    for cfg in configs:
        for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            v = getattr(cfg, attr, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


def _forward_kwargs(model: Any) -> set[str]:
    """Which of logits_to_keep / use_cache the inner model's forward declares (PEFT wrappers unwrapped)."""
    inner = model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        try:
            inner = get_base()
        except Exception:  # noqa: BLE001
            inner = model
    try:
        params = inspect.signature(inner.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return set()
    return {name for name in ("logits_to_keep", "use_cache") if name in params}


def _resolve_ids(tokenizer: Any, text: str | None, input_ids: Any, what: str = "perplexity") -> torch.Tensor:
    if input_ids is not None:
        if text is not None:
            raise CurloraError(f"{what}: pass either text (with a tokenizer) or input_ids, not both.")
        ids = input_ids
    else:
        if text is None or tokenizer is None:
            raise CurloraError(f"{what}: nothing to score; pass text and a tokenizer, or input_ids.")
        try:
            enc = tokenizer(text, return_tensors="pt")
        except TypeError:
            enc = tokenizer(text)
        ids = enc["input_ids"] if isinstance(enc, dict) or hasattr(enc, "keys") else enc
    ids = torch.as_tensor(ids)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise CurloraError(
            f"{what}: input_ids must be one sequence (shape [n] or [1, n]), "
            f"got shape {tuple(ids.shape)}; join the texts into one string first."
        )
    if ids.is_floating_point() or ids.is_complex():
        raise CurloraError(f"{what}: input_ids must be integer token ids.")
    return ids.long().cpu()


def _windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) per window, all in global token positions.

    Window k covers [k*stride, min(k*stride + max_length, n)). Only tokens after the previous window's end
    are scored, so every token is scored once; token 0 has no context and is never scored.
    """
    out = []
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        first = max(prev_end, begin + 1)
        out.append((begin, end, first))
        prev_end = end
        if end == n:
            break
    return out


def perplexity(
    model: Any,
    tokenizer: Any = None,
    text: str | None = None,
    *,
    input_ids: Any = None,
    max_length: int = 1024,
    stride: int = 512,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Perplexity of a causal LM on one long text, with overlapping sliding windows.

    The text is tokenised once (``tokenizer(text, return_tensors="pt")``; a plain callable returning a list
    of ids works too), or the ids are given directly as ``input_ids`` (shape ``[n]`` or ``[1, n]``).
    Windows of ``max_length`` tokens start every ``stride`` tokens; in each window only the tokens after the
    previous window's end are scored, so each one is predicted with at least ``max_length - stride`` tokens of
    context. Token 0 of the text (and, when ``stride == max_length``, the first token of every window) has no
    context and is not scored; ``tokens`` counts exactly the scored tokens.

    ``max_length`` is clamped to the model's ``max_position_embeddings`` (and ``stride`` to ``max_length``).
    Runs under ``torch.inference_mode()`` with ``model.eval()``; the model's previous train/eval mode is
    restored afterwards. Inputs go to ``device`` (default: the device of the model's first parameter); the
    model itself is not moved. ``batch_size > 1`` runs that many full-length windows per forward pass (a
    shorter final window runs on its own), which gives the same result up to float rounding.
    ``progress(advance, total)`` is called after every forward pass with the number of windows just done
    and the total number of windows.

    Returns ``{"ppl", "nll", "tokens", "max_length", "stride", "windows"}`` where ``nll`` is the mean
    negative log-likelihood per scored token in nats (``ppl == exp(nll)``) and ``max_length``/``stride`` are
    the values actually used.
    """
    ids = _resolve_ids(tokenizer, text, input_ids)
    max_length, stride, batches, device = _plan("perplexity", [model], ids, max_length, stride, batch_size, device)
    total_nll = 0.0
    total_tokens = 0
    with _eval_mode(model), torch.inference_mode():
        for pred, target in _scored_logits(model, ids, batches, device, progress):
            total_nll += F.cross_entropy(pred.float(), target, reduction="sum").item()
            total_tokens += int(target.numel())

    nll = total_nll / total_tokens
    return {
        "ppl": math.exp(nll),
        "nll": nll,
        "tokens": total_tokens,
        "max_length": max_length,
        "stride": stride,
        "windows": sum(len(b) for b in batches),
    }


def _plan(
    what: str, models: list[Any], ids: torch.Tensor, max_length: Any, stride: Any, batch_size: Any, device: Any
) -> tuple[int, int, list[list[tuple[int, int, int]]], torch.device]:
    """Check the window arguments and lay out the windows in batches; shared by perplexity and kl_to_base so
    both score exactly the same tokens with the same context."""
    if not isinstance(max_length, int) or max_length < 2:
        raise CurloraError(f"{what}: max_length must be an integer >= 2, got {max_length!r}.")
    if not isinstance(stride, int) or not 1 <= stride <= max_length:
        raise CurloraError(
            f"{what}: stride must be an integer between 1 and max_length ({max_length}), got {stride!r}; "
            "a larger stride would skip tokens."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CurloraError(f"{what}: batch_size must be a positive integer, got {batch_size!r}.")
    n = int(ids.numel())
    if n < 2:
        raise CurloraError(f"{what}: the text has {n} token(s); at least 2 are needed to score one. Use a longer text.")
    limits = [lim for lim in (_max_positions(m) for m in models) if lim is not None]
    if limits and max_length > min(limits):
        limit = min(limits)
        logger.info("%s: max_length %d exceeds the model's %d positions; using %d", what, max_length, limit, limit)
        max_length = limit
        stride = min(stride, max_length)

    if device is None:
        try:
            device = next(models[0].parameters()).device
        except (StopIteration, AttributeError, TypeError):
            device = torch.device("cpu")

    # Consecutive windows of equal length form batches (all but possibly the last have length max_length).
    batches: list[list[tuple[int, int, int]]] = []
    for w in _windows(n, max_length, stride):
        same_length = bool(batches) and batches[-1][0][1] - batches[-1][0][0] == w[1] - w[0]
        if same_length and len(batches[-1]) < batch_size:
            batches[-1].append(w)
        else:
            batches.append([w])
    return max_length, stride, batches, torch.device(device)


@contextlib.contextmanager
def _eval_mode(*models: Any) -> Iterator[None]:
    """Put the models in eval mode and restore each one's train/eval mode afterwards."""
    modes = [bool(getattr(m, "training", False)) for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)


def _scored_logits(
    model: Any,
    ids: torch.Tensor,
    batches: list[list[tuple[int, int, int]]],
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per window, yield (logits [m, vocab] in the model's dtype, target ids [m]) for its m scored tokens.

    The caller holds the grad mode (inference_mode); ``progress(advance, total)`` runs after each forward pass.
    """
    accepted = _forward_kwargs(model)
    total = sum(len(b) for b in batches)
    for batch in batches:
        length = batch[0][1] - batch[0][0]
        x = torch.stack([ids[b:e] for b, e, _ in batch]).to(device)
        # Logits at window position p predict token p+1, so scoring tokens [s, length) needs logits
        # at positions [s-1, length-1); keep only the last `keep` positions of the output.
        keep = length - min(f - b for b, _, f in batch) + 1
        kwargs: dict[str, Any] = {"input_ids": x}
        if "logits_to_keep" in accepted:
            kwargs["logits_to_keep"] = keep
        if "use_cache" in accepted:
            kwargs["use_cache"] = False
        out = model(**kwargs)
        logits = out.logits if hasattr(out, "logits") else out[0]
        logits = logits[:, -keep:, :]
        offset = length - keep  # window position of logits[:, 0]
        for row, (b, _, f) in enumerate(batch):
            s = f - b  # first scored window position (>= 1)
            yield logits[row, s - 1 - offset : length - 1 - offset], x[row, s:length]
        if progress is not None:
            progress(len(batch), total)


_KL_CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32 per intermediate: 341 tokens at a 49k vocabulary


def kl_to_base(
    model: Any,
    base: Any,
    input_ids: Any,
    *,
    max_length: int,
    stride: int,
    device: str | torch.device | None = None,
    batch_size: int = 1,
    max_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Mean per-token KL(p_base || p_model) of the next-token distributions, in nats.

    Scores the same tokens with the same context as :func:`perplexity` (the windows are laid out by the
    same code; ``max_length`` is clamped to the smaller of the two models' position limits): each scored
    token's distribution under ``base`` and under ``model`` comes from log_softmax of the logits in float32,
    a chunk of tokens at a time so a 49k vocabulary stays within bounded memory. ``max_tokens`` keeps only
    the first ``max_tokens`` ids. Both models run in eval mode under ``torch.inference_mode()`` (their modes
    are restored afterwards); inputs go to ``device`` (default: the model's first parameter's device), and
    the base's logits are moved to the model's logits' device. ``progress(advance, total)`` counts windows.

    Returns ``{"kl": mean nats per scored token, "kl_max_token": largest per-token KL, "tokens": n}``.
    """
    ids = _resolve_ids(None, None, input_ids, "kl_to_base").clone()
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 2:
            raise CurloraError(f"kl_to_base: max_tokens must be an integer >= 2 or None, got {max_tokens!r}.")
        ids = ids[:max_tokens]
    _, _, batches, device = _plan("kl_to_base", [model, base], ids, max_length, stride, batch_size, device)
    total_kl = 0.0
    max_kl = 0.0
    tokens = 0
    with _eval_mode(model, base), torch.inference_mode():
        pairs = zip(
            _scored_logits(model, ids, batches, device, progress),
            _scored_logits(base, ids, batches, device),
            strict=True,
        )
        for (pred, target), (ref, _) in pairs:
            ref = ref.to(pred.device)
            step = max(1, _KL_CHUNK_ELEMENTS // pred.shape[-1])
            for start in range(0, pred.shape[0], step):
                logq = F.log_softmax(pred[start : start + step].float(), dim=-1)
                logp = F.log_softmax(ref[start : start + step].float(), dim=-1)
                kl = (logp.exp() * (logp - logq)).sum(-1)
                total_kl += kl.double().sum().item()
                max_kl = max(max_kl, kl.max().item())
            tokens += int(target.numel())
    return {"kl": total_kl / tokens, "kl_max_token": max_kl, "tokens": tokens}


def delta_norm_ratio(delta: torch.Tensor, weight: torch.Tensor) -> float:
    """‖ΔW‖_F / ‖W‖_F in float32; a zero weight counts as norm 1e-12 instead of dividing by zero."""
    return float(delta.float().norm() / weight.float().norm().clamp_min(1e-12))


@torch.no_grad()
def delta_norm_ratios(
    model: torch.nn.Module,
    adapter_name: str | None = "default",
    originals: dict[str, torch.Tensor] | None = None,
) -> list[float]:
    """‖ΔW‖_F / ‖W‖_F for every adapted layer: tells "nothing changed" apart from "nothing learned".

    Any PEFT tuner layer that states its delta (CURLoRA, LoRA, ...) counts; `adapter_name=None` takes each
    layer's active adapters. With `originals` (name -> weight before training), every trainable parameter is
    compared with its original instead (full fine-tuning, which has no adapter to ask)."""
    if originals is not None:
        return [
            delta_norm_ratio(p.float() - originals[n].to(p.device).float(), originals[n])
            for n, p in model.named_parameters()
            if p.requires_grad
        ]
    from peft.tuners.tuners_utils import BaseTunerLayer  # peft only where adapters are measured: reports stay light

    ratios = []
    for module in model.modules():
        if not (isinstance(module, BaseTunerLayer) and hasattr(module, "get_delta_weight")):
            continue
        adapters = getattr(module, module.adapter_layer_names[0])
        for name in module.active_adapters if adapter_name is None else [adapter_name]:
            if name in adapters:
                ratios.append(delta_norm_ratio(module.get_delta_weight(name), _dense_weight(module)))
    return ratios


def _dense_weight(module: torch.nn.Module) -> torch.Tensor:
    """The float weight a tuner layer's base multiplies with: a quantized base stores packed integers, whose norm
    says nothing (PEFT's LoRA on a bitsandbytes layer included, which has no `dense_weight` of its own)."""
    if hasattr(module, "dense_weight"):
        return module.dense_weight()
    base = module.get_base_layer()
    kind = type(base).__name__
    if kind in ("Linear4bit", "Linear8bitLt"):  # bitsandbytes is importable whenever its layers exist
        from curlora.tuner import bnb

        return bnb.dequantize_4bit(base.weight) if kind == "Linear4bit" else bnb.dequantize_8bit(base)
    return base.weight
