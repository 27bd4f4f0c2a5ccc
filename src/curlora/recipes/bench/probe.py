"""The linear-probe reference: a converged, L2-regularised multinomial logistic regression on frozen features.

A trained head moves with its optimiser's schedule; the probe does not: features are standardised with the
training mean/sd, the objective mean cross-entropy + l2 * ||W||² (bias unpenalised) is minimised full-batch
by L-BFGS in float64 until its gradient is tiny, and l2 is chosen by stratified k-fold cross-validation on the
training rows. The returned `nn.Linear` has the standardisation folded in, so it takes the raw features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from curlora.errors import CurloraError

GRAD_TOL = 1e-7  # gradient norm at which a fit counts as converged (float64: reachable, and far below noise)
MAX_ITER = 2000  # L-BFGS iterations per fit before giving up (reported as converged=False)


def _check(features: torch.Tensor, labels: torch.Tensor, n_classes: int, l2_grid: tuple[float, ...]) -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] == 0:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise CurloraError(f"fit_probe: features must be a non-empty 2-D tensor [rows, hidden], got {shape}.")
    if not isinstance(labels, torch.Tensor) or labels.shape != features.shape[:1]:
        raise CurloraError("fit_probe: labels must be a 1-D tensor with one label per feature row.")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise CurloraError("fit_probe: labels must be integer class ids; convert them with labels.long().")
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
        raise CurloraError(f"fit_probe: n_classes must be an integer >= 2, got {n_classes!r}.")
    if int(labels.min()) < 0 or int(labels.max()) >= n_classes:
        raise CurloraError(
            f"fit_probe: labels range over [{int(labels.min())}, {int(labels.max())}] but n_classes is "
            f"{n_classes}; labels must lie in [0, n_classes)."
        )
    if not bool(torch.isfinite(features).all()):
        raise CurloraError("fit_probe: features hold NaN or Inf values; fix the feature extraction first.")
    if len(l2_grid) == 0 or not all(isinstance(a, (int, float)) and math.isfinite(a) and a > 0 for a in l2_grid):
        raise CurloraError(f"fit_probe: l2_grid must be a non-empty tuple of positive numbers, got {l2_grid!r}.")


def _fold_ids(labels: torch.Tensor, folds: int, seed: int) -> tuple[torch.Tensor, int]:
    """Stratified fold of every row (seeded shuffle inside each class, dealt round-robin) and the fold count.

    Each class must appear in every training fold, so the count drops to the smallest class size (min 2)."""
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise CurloraError(f"fit_probe: folds must be an integer >= 2, got {folds!r}.")
    counts = torch.bincount(labels)
    smallest = int(counts[counts > 0].min())
    if smallest < 2:
        raise CurloraError(
            "fit_probe: a class has a single example, so cross-validation cannot hold it out and train on it; "
            "give every present class at least 2 training rows."
        )
    k = min(folds, smallest)
    g = torch.Generator().manual_seed(seed)
    fold = torch.empty_like(labels)
    dealt = 0  # continue the round-robin across classes so fold sizes stay balanced
    for c in torch.nonzero(counts).flatten().tolist():
        rows = torch.nonzero(labels == c).flatten()
        rows = rows[torch.randperm(rows.numel(), generator=g)]
        fold[rows] = (torch.arange(rows.numel()) + dealt) % k
        dealt += rows.numel()
    return fold, k


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(0)
    sd = x.std(0, unbiased=False)
    # a constant feature carries nothing: divide by 1 and it stays exactly 0 after centring
    sd = torch.where(sd > 1e-12 * (1.0 + mean.abs()), sd, torch.ones_like(sd))
    return mean, sd


def _fit(
    z: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, init: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Minimise mean CE + l2 * ||W||² on standardised float64 features; (W, b, iterations, gradient norm)."""
    d = z.shape[1]
    w = (init[0].clone() if init else torch.zeros(n_classes, d, dtype=torch.float64)).requires_grad_(True)
    b = (init[1].clone() if init else torch.zeros(n_classes, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=MAX_ITER,
        history_size=20,
        tolerance_grad=GRAD_TOL / math.sqrt(w.numel() + b.numel()),  # its test is on the max |gradient|
        tolerance_change=0.0,  # stop on the gradient only, never on a stalled loss
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    closure()
    grad_norm = float(torch.cat([w.grad.flatten(), b.grad.flatten()]).norm())
    iterations = int(opt.state[opt._params[0]].get("n_iter", 0))
    return w.detach(), b.detach(), iterations, grad_norm


def fit_probe(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    seed: int,
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0),
    folds: int = 5,
) -> tuple[nn.Linear, dict]:
    """Fit the linear probe on training rows; return (head, info).

    ``head(raw_features)`` gives the logits: a float32 ``nn.Linear(hidden, n_classes)`` on ``features``'s
    device with ``requires_grad`` off. l2 is the grid value with the best mean held-out accuracy over
    stratified folds (seeded by ``seed``; ties go to the larger l2); the fold count drops to the smallest
    class's size when that is below ``folds``. ``info`` is JSON-able:
    ``{"l2", "cv_acc": {str(l2): mean accuracy}, "folds", "iterations", "converged", "grad_norm"}``, where
    iterations, converged (gradient norm <= 1e-7) and grad_norm describe the final fit on all rows.
    """
    _check(features, labels, n_classes, l2_grid)
    x = features.detach().to("cpu", torch.float64)
    y = labels.detach().to("cpu", torch.long)
    fold, k = _fold_ids(y, folds, seed)
    grid = sorted({float(a) for a in l2_grid}, reverse=True)  # strongest first: each fit warm-starts the next

    acc = {a: 0.0 for a in grid}
    for f in range(k):
        train, held = fold != f, fold == f
        mean, sd = _standardise(x[train])
        z_train, z_held = (x[train] - mean) / sd, (x[held] - mean) / sd
        init = None
        for a in grid:
            w, b, _, _ = _fit(z_train, y[train], n_classes, a, init)
            init = (w, b)
            acc[a] += float(((z_held @ w.T + b).argmax(1) == y[held]).double().mean()) / k
    # ties (up to float summation order) go to the larger l2, the simpler model
    best = max(grid, key=lambda a: (round(acc[a], 12), a))

    mean, sd = _standardise(x)
    w, b, iterations, grad_norm = _fit((x - mean) / sd, y, n_classes, best, None)
    with torch.random.fork_rng(devices=[]):  # nn.Linear's random init must not move the caller's RNG
        head = nn.Linear(x.shape[1], n_classes)
    with torch.no_grad():
        # (x - mean) / sd @ W.T + b == x @ (W / sd).T + (b - W @ (mean / sd))
        head.weight.copy_((w / sd).float())
        head.bias.copy_((b - w @ (mean / sd)).float())
    head.requires_grad_(False)
    head.to(features.device)
    info = {
        "l2": best,
        "cv_acc": {str(a): acc[a] for a in sorted(grid)},
        "folds": k,
        "iterations": iterations,
        "converged": grad_norm <= GRAD_TOL,
        "grad_norm": grad_norm,
    }
    return head, info
