"""The CUR math of CURLoRA, torch only: which columns and rows of W become C and R.

A weight is always viewed as out × in (nn.Linear's layout). "Column j" is W[:, j] (an input feature) and
"row i" is W[i, :] (an output feature). CURLoRA's delta is C·U·R with C = W[:, cols] (out × r),
R = W[rows, :] (r × in) and a trainable r × r U.

Probabilities are computed in float64 from the squared norms, whatever the weight's dtype: in half precision
1/p overflows to inf for the small norms the inverted rule favours.

Zero-norm rule: a column (row) whose norm is exactly zero carries no information (C would hold a zero
column), so every strategy gives it probability 0 and never selects it; this is also what keeps `inverted`
free of 1/0. If fewer than r columns (rows) have a non-zero norm, selection fails with a clear error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from curlora.errors import CurloraError

#: Strategies: name -> (sampled randomly?, default "with replacement").
SAMPLING_STRATEGIES: dict[str, tuple[bool, bool]] = {
    "inverted": (True, False),  # the paper: p ∝ 1/p_j, low-norm columns preferred
    "reference": (True, True),  # the original code: p ∝ 1/(p_j + 0.001), sampled with replacement
    "standard": (True, False),  # classic CUR (Drineas et al.): p ∝ p_j
    "uniform": (True, False),
    "lowest": (False, False),  # deterministic: the r smallest norms
    "highest": (False, False),  # deterministic: the r largest norms
}
REFERENCE_EPSILON = 1e-3


def check_strategy(name: str) -> None:
    if name not in SAMPLING_STRATEGIES:
        raise CurloraError(
            f"unknown sampling strategy {name!r}; choose one of: {', '.join(SAMPLING_STRATEGIES)}"
        )


def squared_norms(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """Squared L2 norms along `dim` (dim=0: of each column, dim=1: of each row), in float64 on the CPU."""
    return weight.detach().to(torch.float64).pow(2).sum(dim=dim).cpu()


def selection_probabilities(sq_norms: torch.Tensor, strategy: str) -> torch.Tensor:
    """Probability of picking each column/row given its squared norm; zero-norm entries get probability 0."""
    check_strategy(strategy)
    sq = sq_norms.to(torch.float64)
    if not torch.isfinite(sq).all():
        raise CurloraError("the weight holds NaN or Inf values; CUR selection needs a finite weight")
    usable = sq > 0
    total = sq.sum()
    probs = torch.zeros_like(sq)
    if not usable.any():
        return probs
    p = sq / total  # the paper's p_j = ||W[:, j]||² / ||W||_F²
    if strategy == "inverted":
        probs[usable] = 1.0 / p[usable]
    elif strategy == "reference":
        probs[usable] = 1.0 / (p[usable] + REFERENCE_EPSILON)
    elif strategy == "standard":
        probs[usable] = p[usable]
    else:  # uniform; also the base for the deterministic strategies, which never sample
        probs[usable] = 1.0
    return probs / probs.sum()


def layer_seed(seed: int, name: str) -> int:
    """A stable per-layer seed, so layers sharing one config seed still draw independently."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def select_indices(
    sq_norms: torch.Tensor,
    r: int,
    strategy: str = "inverted",
    *,
    generator: torch.Generator | None = None,
    replacement: bool | None = None,
    what: str = "columns",
) -> torch.Tensor:
    """Pick r indices (int64, CPU) by `strategy`. Sampling happens on the CPU, so the same generator state gives
    the same indices whichever device the weight lives on."""
    check_strategy(strategy)
    n = sq_norms.numel()
    if not 1 <= r <= n:
        raise CurloraError(f"rank r={r} is out of range for {n} {what}; choose 1 <= r <= {n}")
    probs = selection_probabilities(sq_norms, strategy)
    usable = int((probs > 0).sum())
    sampled, default_replacement = SAMPLING_STRATEGIES[strategy]
    replacement = default_replacement if replacement is None else replacement
    if usable < r and not (sampled and replacement and usable > 0):
        raise CurloraError(
            f"only {usable} of {n} {what} have a non-zero norm, fewer than r={r}; lower r or check the weight "
            "(an all-zero or mostly zero weight cannot be adapted with CURLoRA)"
        )
    if not sampled:
        sq = sq_norms.to(torch.float64).clone()
        # never pick zero-norm entries, even for `lowest`
        sq[probs == 0] = float("inf") if strategy == "lowest" else float("-inf")
        order = torch.sort(sq, descending=(strategy == "highest"), stable=True).indices
        return order[:r].to(torch.int64)
    return torch.multinomial(probs, r, replacement=replacement, generator=generator).to(torch.int64)


@dataclass(frozen=True)
class CURSelection:
    """Indices into W (out × in): C = W[:, cols], R = W[rows, :]."""

    cols: torch.Tensor
    rows: torch.Tensor


def cur_select(
    weight: torch.Tensor,
    r: int,
    strategy: str = "inverted",
    *,
    seed: int = 0,
    replacement: bool | None = None,
) -> CURSelection:
    """Choose r columns and r rows of `weight` (viewed out × in). Same seed + same weight -> same indices."""
    if weight.dim() != 2:
        raise CurloraError(f"CURLoRA adapts 2-D weights, got a weight of shape {tuple(weight.shape)}")
    out_f, in_f = weight.shape
    if not 1 <= r <= min(out_f, in_f):
        raise CurloraError(
            f"rank r={r} does not fit a {out_f} × {in_f} weight; choose 1 <= r <= {min(out_f, in_f)}"
        )
    if not torch.isfinite(weight).all():
        raise CurloraError("the weight holds NaN or Inf values; CURLoRA needs a finite base weight")
    generator = torch.Generator(device="cpu").manual_seed(seed)
    cols = select_indices(squared_norms(weight, 0), r, strategy, generator=generator, replacement=replacement)
    rows = select_indices(
        squared_norms(weight, 1), r, strategy, generator=generator, replacement=replacement, what="rows"
    )
    return CURSelection(cols=cols, rows=rows)


def cur_factors(weight: torch.Tensor, selection: CURSelection) -> tuple[torch.Tensor, torch.Tensor]:
    """C (out × r) and R (r × in) as contiguous copies in the weight's dtype and device."""
    cols = selection.cols.to(weight.device)
    rows = selection.rows.to(weight.device)
    c = weight.detach().index_select(1, cols).contiguous()
    r = weight.detach().index_select(0, rows).contiguous()
    return c, r


#: Entries of C and of R sampled into the fingerprint (the first 4 numbers are the norms of older adapters).
FINGERPRINT_SAMPLES = 8
FINGERPRINT_LEN = 4 + 2 * FINGERPRINT_SAMPLES
#: Two roundings to bfloat16 (unit roundoff 2⁻⁸ each) move a value by < 2⁻⁷ relative: a base in another dtype
#: passes, while a negated, shuffled or noised one (1 % noise moves most entries by more) does not.
FINGERPRINT_RTOL = 2.0**-7


def fingerprint(c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Numbers that identify C and R, in float64: their Frobenius norms and absolute sums, then FINGERPRINT_SAMPLES
    entries of each at fixed spread-out positions. Saved with an adapter so loading it onto a different base model
    (another model, or the same one negated, permuted or perturbed) is caught instead of silently computing garbage."""
    c64, r64 = c.detach().to(torch.float64), r.detach().to(torch.float64)
    samples = []
    for t in (c64, r64):
        flat = t.reshape(-1)
        pos = torch.linspace(0, flat.numel() - 1, FINGERPRINT_SAMPLES, device=flat.device).round().long()
        samples.append(flat[pos])
    return torch.cat([torch.stack([c64.norm(), c64.abs().sum(), r64.norm(), r64.abs().sum()]), *samples]).cpu()


def fingerprints_match(saved: torch.Tensor, current: torch.Tensor, rtol: float | None = None) -> bool:
    """Whether a saved fingerprint fits C and R rebuilt now. Adapters saved with only the 4 norms (older versions)
    keep their old 2 % check; newer ones compare every number within dtype rounding (FINGERPRINT_RTOL). An
    explicit `rtol` (an adapter moved between a dense and a quantized base, whose entries differ by the
    quantization error) compares the 4 norms alone at that tolerance."""
    saved, current = saved.to(torch.float64).cpu(), current.to(torch.float64).cpu()
    if rtol is not None:
        return bool(torch.allclose(saved[:4], current[:4], rtol=rtol, atol=1e-6))
    if saved.numel() == 4:
        return bool(torch.allclose(saved, current[:4], rtol=2e-2, atol=1e-6))
    if saved.shape != current.shape or not bool(torch.isfinite(saved).all()):
        return False
    return bool(torch.allclose(saved, current, rtol=FINGERPRINT_RTOL, atol=1e-30))


def delta_weight(c: torch.Tensor, u: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """α·C·U·R (out × in). Only for merging and analysis: the forward pass never builds it."""
    return alpha * (c @ u.to(c.dtype) @ r)
