"""The CUR selection math (curlora.cur), against float64 references."""

import pytest
import torch

from curlora import cur
from curlora.errors import CurloraError


def _weight(out_f=40, in_f=30, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    # spread the column norms over two orders of magnitude so strategies differ clearly
    scales = torch.logspace(-1, 1, in_f)
    return (torch.randn(out_f, in_f, generator=g) * scales).to(dtype)


@pytest.mark.parametrize("strategy", list(cur.SAMPLING_STRATEGIES))
def test_probabilities_sum_to_one(strategy):
    sq = cur.squared_norms(_weight(), 0)
    probs = cur.selection_probabilities(sq, strategy)
    assert probs.dtype == torch.float64
    assert abs(float(probs.sum()) - 1.0) < 1e-12
    assert (probs >= 0).all()


def test_inverted_matches_paper_formula_float64():
    w = _weight().double()
    p = (w**2).sum(0) / (w**2).sum()  # p_j = ||W[:, j]||² / ||W||_F²
    expected = (1 / p) / (1 / p).sum()
    got = cur.selection_probabilities(cur.squared_norms(w, 0), "inverted")
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    # rows likewise
    p_rows = (w**2).sum(1) / (w**2).sum()
    got_rows = cur.selection_probabilities(cur.squared_norms(w, 1), "inverted")
    torch.testing.assert_close(got_rows, (1 / p_rows) / (1 / p_rows).sum(), rtol=1e-12, atol=0)


def test_standard_and_reference_formulas():
    w = _weight().double()
    p = (w**2).sum(0) / (w**2).sum()
    sq = cur.squared_norms(w, 0)
    torch.testing.assert_close(cur.selection_probabilities(sq, "standard"), p, rtol=1e-12, atol=0)
    ref = 1 / (p + 0.001)
    torch.testing.assert_close(cur.selection_probabilities(sq, "reference"), ref / ref.sum(), rtol=1e-12, atol=0)


def test_inverted_prefers_low_norm_columns():
    w = _weight(out_f=64, in_f=64)
    norms = cur.squared_norms(w, 0)
    low_half = set(torch.argsort(norms)[:32].tolist())
    picks = []
    for seed in range(50):
        sel = cur.cur_select(w, 8, "inverted", seed=seed)
        picks += sel.cols.tolist()
    share_low = sum(i in low_half for i in picks) / len(picks)
    assert share_low > 0.8, share_low
    picks_std = sum((cur.cur_select(w, 8, "standard", seed=s).cols.tolist() for s in range(50)), [])
    assert sum(i in low_half for i in picks_std) / len(picks_std) < 0.2


def test_reference_samples_with_replacement_others_without():
    w = _weight(out_f=8, in_f=8)
    # with replacement and r = n, duplicates are (nearly) certain across seeds
    dup = any(len(set(cur.cur_select(w, 8, "reference", seed=s).cols.tolist())) < 8 for s in range(20))
    assert dup
    for s in range(20):
        assert len(set(cur.cur_select(w, 8, "inverted", seed=s).cols.tolist())) == 8


def test_same_seed_same_indices_and_seed_matters():
    w = _weight()
    a, b = cur.cur_select(w, 5, seed=7), cur.cur_select(w.clone(), 5, seed=7)
    assert torch.equal(a.cols, b.cols) and torch.equal(a.rows, b.rows)
    c = cur.cur_select(w, 5, seed=8)
    assert not (torch.equal(a.cols, c.cols) and torch.equal(a.rows, c.rows))


def test_half_precision_weights_do_not_overflow():
    w = _weight() * 1e-4  # tiny norms: 1/p overflows float16
    for dtype in (torch.float16, torch.bfloat16):
        sel = cur.cur_select(w.to(dtype), 6, "inverted", seed=0)
        assert sel.cols.numel() == 6
        probs = cur.selection_probabilities(cur.squared_norms(w.to(dtype), 0), "inverted")
        assert torch.isfinite(probs).all()


def test_lowest_highest_are_deterministic_extremes():
    w = _weight()
    norms = cur.squared_norms(w, 0)
    low = cur.cur_select(w, 4, "lowest").cols
    high = cur.cur_select(w, 4, "highest").cols
    assert set(low.tolist()) == set(torch.argsort(norms)[:4].tolist())
    assert set(high.tolist()) == set(torch.argsort(norms, descending=True)[:4].tolist())


def test_zero_norm_columns_are_never_selected():
    w = _weight(out_f=10, in_f=10)
    w[:, :5] = 0
    for strategy in cur.SAMPLING_STRATEGIES:
        for s in range(10):
            sel = cur.cur_select(w, 3, strategy, seed=s)
            assert all(int(i) >= 5 for i in sel.cols), strategy
    with pytest.raises(CurloraError, match="non-zero norm"):
        cur.cur_select(w, 6, "inverted")


def test_bad_inputs():
    w = _weight(out_f=10, in_f=6)
    with pytest.raises(CurloraError, match="1 <= r <= 6"):
        cur.cur_select(w, 7)
    with pytest.raises(CurloraError, match="1 <= r"):
        cur.cur_select(w, 0)
    with pytest.raises(CurloraError, match="unknown sampling strategy"):
        cur.cur_select(w, 2, "bogus")
    bad = w.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(CurloraError, match="NaN or Inf"):
        cur.cur_select(bad, 2)
    bad[0, 0] = float("inf")
    with pytest.raises(CurloraError, match="NaN or Inf"):
        cur.cur_select(bad, 2)
    with pytest.raises(CurloraError, match="non-zero norm"):
        cur.cur_select(torch.zeros(10, 6), 2)


def test_factors_and_delta():
    w = _weight()
    sel = cur.cur_select(w, 5, seed=1)
    c, r = cur.cur_factors(w, sel)
    assert torch.equal(c, w[:, sel.cols]) and torch.equal(r, w[sel.rows, :])
    u = torch.randn(5, 5)
    torch.testing.assert_close(cur.delta_weight(c, u, r, 2.0), 2.0 * c @ u @ r)


def test_fingerprint_detects_other_weights_but_tolerates_bf16():
    w = _weight()
    sel = cur.cur_select(w, 5, seed=1)
    fp = cur.fingerprint(*cur.cur_factors(w, sel))
    assert cur.fingerprints_match(fp, cur.fingerprint(*cur.cur_factors(w.bfloat16(), sel)))
    assert not cur.fingerprints_match(fp, cur.fingerprint(*cur.cur_factors(_weight(seed=1), sel)))
