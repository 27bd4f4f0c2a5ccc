"""The linear-probe reference (recipes/bench/probe.py): converged, cross-validated, standardisation folded in."""

import json

import pytest
import torch
import torch.nn.functional as F

from curlora.errors import CurloraError
from curlora.recipes.bench.probe import GRAD_TOL, fit_probe


def _blobs(n, d, n_classes, shift, seed, weights=None):
    """Gaussian features whose class means differ by `shift` along the first few axes, with an offset and
    uneven scales so the standardisation has something to do."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.tensor(weights) if weights else torch.ones(n_classes)
    y = torch.multinomial(probs, n, replacement=True, generator=g)
    x = torch.randn(n, d, generator=g)
    x[:, :n_classes] += shift * F.one_hot(y, n_classes)
    scale = torch.linspace(0.5, 20.0, d)
    return x * scale + 7.0, y


def test_probe_beats_chance_on_held_out_rows():
    x, y = _blobs(600, 32, 4, shift=2.5, seed=0)
    head, info = fit_probe(x[:400], y[:400], 4, seed=0)
    acc = (head(x[400:]).argmax(1) == y[400:]).float().mean().item()
    assert acc > 0.7  # chance is 0.25
    assert info["converged"] and info["folds"] == 5
    assert head.weight.dtype == torch.float32 and not head.weight.requires_grad and not head.bias.requires_grad
    assert json.loads(json.dumps(info)) == info
    assert set(info["cv_acc"]) == {"0.0001", "0.001", "0.01", "0.1", "1.0"}


def test_cross_validation_shrinks_noise_and_keeps_signal():
    # 80/20 classes: a heavily penalised W leaves the (free) bias to predict the majority class, which is the
    # best one can do on noise but throws away a strong signal
    x, y = _blobs(300, 20, 2, shift=4.0, seed=1, weights=[0.8, 0.2])
    _, signal = fit_probe(x, y, 2, seed=0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    _, chance = fit_probe(noise, y, 2, seed=0)
    assert signal["l2"] <= 0.01 and signal["cv_acc"][str(signal["l2"])] > 0.95
    assert chance["l2"] >= 0.1 and chance["cv_acc"]["1.0"] < 0.8  # majority class: 0.79 of the rows


def test_same_seed_same_probe():
    x, y = _blobs(200, 16, 3, shift=1.5, seed=3)
    rng = torch.get_rng_state()
    h1, i1 = fit_probe(x, y, 3, seed=7)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is left alone
    h2, i2 = fit_probe(x, y, 3, seed=7)
    assert i1 == i2
    assert torch.equal(h1.weight, h2.weight) and torch.equal(h1.bias, h2.bias)


def test_folded_standardisation_matches_explicit():
    x, y = _blobs(200, 16, 3, shift=1.5, seed=4)
    head, _ = fit_probe(x, y, 3, seed=0, l2_grid=(1e-2,))
    z = (x - x.mean(0)) / x.std(0, unbiased=False)  # already standardised: the probe's own step is ~identity
    ref, _ = fit_probe(z, y, 3, seed=0, l2_grid=(1e-2,))
    torch.testing.assert_close(head(x), ref(z), atol=1e-4, rtol=1e-4)


def test_probe_converges():
    x, y = _blobs(300, 24, 3, shift=1.0, seed=5)
    head, info = fit_probe(x, y, 3, seed=0, l2_grid=(1e-3,))
    assert info["converged"] and info["grad_norm"] <= GRAD_TOL and info["iterations"] > 0
    # the objective's gradient at the returned head, rebuilt in the standardised space, is ~0 (float32 head)
    xd = x.double()
    mean, sd = xd.mean(0), xd.std(0, unbiased=False)
    w = (head.weight.double() * sd).requires_grad_(True)
    b = (head.bias.double() + w.detach() @ (mean / sd)).requires_grad_(True)
    loss = F.cross_entropy(((xd - mean) / sd) @ w.T + b, y) + 1e-3 * (w * w).sum()
    loss.backward()
    assert torch.cat([w.grad.flatten(), b.grad.flatten()]).norm() < 1e-4


def test_small_class_reduces_folds():
    x, y = _blobs(60, 8, 2, shift=2.0, seed=6)
    y[:] = 0
    y[:3] = 1  # three examples of class 1: three folds at most
    _, info = fit_probe(x, y, 3, seed=0)  # class 2 never appears: fine
    assert info["folds"] == 3


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda x, y: (x, y + 5), "n_classes"),
        (lambda x, y: (x, y - 1), "n_classes"),
        (lambda x, y: (x.index_fill(0, torch.tensor([3]), float("nan")), y), "NaN"),
        (lambda x, y: (x, y.float()), "integer"),
        (lambda x, y: (x, y[:-1]), "one label per"),
        (lambda x, y: (x[0], y), "2-D"),
        (lambda x, y: (x, torch.cat([torch.tensor([1]), torch.zeros(len(y) - 1, dtype=torch.long)])), "single"),
    ],
)
def test_bad_inputs_raise(change, match):
    x, y = _blobs(40, 4, 2, shift=2.0, seed=8)
    x, y = change(x, y)
    with pytest.raises(CurloraError, match=match):
        fit_probe(x, y, 2, seed=0)


def test_bad_grid_or_folds_raise():
    x, y = _blobs(40, 4, 2, shift=2.0, seed=8)
    with pytest.raises(CurloraError, match="l2_grid"):
        fit_probe(x, y, 2, seed=0, l2_grid=())
    with pytest.raises(CurloraError, match="l2_grid"):
        fit_probe(x, y, 2, seed=0, l2_grid=(0.0,))
    with pytest.raises(CurloraError, match="folds"):
        fit_probe(x, y, 2, seed=0, folds=1)
