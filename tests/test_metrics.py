import math

import pytest
import torch
import torch.nn.functional as F
import transformers

from curlora.errors import CurloraError
from curlora.metrics import (
    average_accuracy,
    backward_transfer,
    forgetting,
    mean_sd,
    perplexity,
    validate_acc_matrix,
)

# acc[i][j]: accuracy on task j after training task i.
# Task 0 peaks after stage 1 (0.95 > 0.90), so forgetting != -BWT here.
ACC = [
    [0.90, None, None],
    [0.95, 0.80, None],
    [0.70, 0.60, 0.85],
]


def test_average_accuracy():
    # (0.70 + 0.60 + 0.85) / 3 = 2.15 / 3
    assert average_accuracy(ACC) == pytest.approx(2.15 / 3)
    assert average_accuracy([[0.5]]) == pytest.approx(0.5)


def test_backward_transfer():
    # ((0.70 - 0.90) + (0.60 - 0.80)) / 2 = -0.20
    assert backward_transfer(ACC) == pytest.approx(-0.20)


def test_forgetting_uses_max_not_diagonal():
    # task 0: max(0.90, 0.95) - 0.70 = 0.25; task 1: max(0.80) - 0.60 = 0.20; mean = 0.225
    assert forgetting(ACC) == pytest.approx(0.225)
    assert forgetting(ACC) != pytest.approx(-backward_transfer(ACC))


def test_forgetting_equals_minus_bwt_when_peak_on_diagonal():
    acc = [[0.9, None], [0.7, 0.8]]
    assert backward_transfer(acc) == pytest.approx(-0.2)
    assert forgetting(acc) == pytest.approx(0.2)


def test_positive_transfer_gives_negative_forgetting():
    acc = [[0.6, None], [0.7, 0.8]]
    assert backward_transfer(acc) == pytest.approx(0.1)
    # max over l in [0, 0] is acc[0][0] = 0.6; 0.6 - 0.7 = -0.1
    assert forgetting(acc) == pytest.approx(-0.1)


def test_single_task_bwt_and_forgetting_are_none():
    assert backward_transfer([[0.7]]) is None
    assert forgetting([[0.7]]) is None


def test_nan_above_diagonal_and_numpy_like_rows_accepted():
    acc = [(0.9, float("nan")), (0.8, 0.7)]
    assert validate_acc_matrix(acc) == [[0.9], [0.8, 0.7]]
    assert backward_transfer(acc) == pytest.approx(-0.1)


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ([], "empty"),
        ([[0.9, None], [0.8]], "not square"),
        ([[0.9, None, None], [0.8, 0.7, None]], "not square"),
        ([[0.9, 0.5], [0.8, 0.7]], "above the diagonal"),
        ([[0.9, None], [None, 0.7]], "[1][0]"),
        ([[0.9, None], [float("inf"), 0.7]], "[1][0]"),
        ([[0.9, None], ["0.8", 0.7]], "[1][0]"),
        ([[True]], "[0][0]"),
        (0.5, "list of rows"),
    ],
)
def test_shape_validation(bad, fragment):
    with pytest.raises(CurloraError) as info:
        average_accuracy(bad)
    assert fragment in str(info.value)


def test_mean_sd():
    m, sd = mean_sd([0.80, 0.84])
    assert m == pytest.approx(0.82)
    assert sd == pytest.approx(0.04 / math.sqrt(2))  # ddof=1: sqrt(2 * 0.02**2 / 1)
    m, sd = mean_sd([1, 2, 3, 4])
    assert m == pytest.approx(2.5)
    assert sd == pytest.approx(math.sqrt(5 / 3))  # (2.25 + 0.25 + 0.25 + 2.25) / 3
    assert mean_sd([0.5]) == (0.5, None)
    assert mean_sd([]) == (None, None)
    assert mean_sd([None, float("nan")]) == (None, None)
    assert mean_sd([None, 2.0, 4.0]) == pytest.approx((3.0, math.sqrt(2)))
    with pytest.raises(CurloraError):
        mean_sd(["x"])


# ---------------------------------------------------------------------------------------------- perplexity

VOCAB = 300


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = transformers.LlamaForCausalLM(config)
    model.eval()
    return model


def _ids(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g)


def test_non_overlapping_windows_match_manual(tiny_llama):
    ids = _ids(200)
    res = perplexity(tiny_llama, input_ids=ids, max_length=64, stride=64)
    total, count = 0.0, 0
    with torch.no_grad():
        for begin in range(0, 200, 64):  # chunks of 64, 64, 64, 8
            chunk = ids[begin : begin + 64]
            logits = tiny_llama(input_ids=chunk[None]).logits[0]
            total += F.cross_entropy(logits[:-1].float(), chunk[1:], reduction="sum").item()
            count += len(chunk) - 1  # the first token of each chunk has no context
    assert res["tokens"] == count == 200 - 4
    assert res["windows"] == 4
    assert res["nll"] == pytest.approx(total / count, rel=1e-5)
    assert res["ppl"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert (res["max_length"], res["stride"]) == (64, 64)


def test_single_window_matches_model_loss(tiny_llama):
    ids = _ids(100)
    res = perplexity(tiny_llama, input_ids=ids[None], max_length=128, stride=64)
    with torch.no_grad():
        loss = tiny_llama(input_ids=ids[None], labels=ids[None]).loss.item()
    assert res["tokens"] == 99
    assert res["ppl"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_overlapping_windows_score_every_token_once(tiny_llama):
    ids = _ids(290)
    res = perplexity(tiny_llama, input_ids=ids, max_length=64, stride=32)
    assert res["tokens"] == 289
    # windows start at 0, 32, ..., 256 (end 290 reached)
    assert res["windows"] == 9
    # more context per token than non-overlapping windows, so not identical, but the same ballpark
    flat = perplexity(tiny_llama, input_ids=ids, max_length=64, stride=64)
    assert res["ppl"] == pytest.approx(flat["ppl"], rel=0.05)


def test_uniform_logits_give_vocab_size(tiny_llama):
    import copy

    model = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    res = perplexity(model, input_ids=_ids(150), max_length=64, stride=16)
    assert res["ppl"] == pytest.approx(VOCAB, rel=1e-5)
    assert res["nll"] == pytest.approx(math.log(VOCAB), rel=1e-6)


def test_batched_equals_unbatched(tiny_llama):
    ids = _ids(290)  # 9 windows: 8 full ones and a final 34-token one
    calls = []
    one = perplexity(tiny_llama, input_ids=ids, max_length=64, stride=32, batch_size=1)
    many = perplexity(
        tiny_llama,
        input_ids=ids,
        max_length=64,
        stride=32,
        batch_size=4,
        progress=lambda adv, tot: calls.append((adv, tot)),
    )
    assert many["tokens"] == one["tokens"]
    assert many["ppl"] == pytest.approx(one["ppl"], rel=1e-5)
    assert calls == [(4, 9), (4, 9), (1, 9)]


def test_text_and_simple_tokenizer(tiny_llama):
    def tokenizer(text, **_):
        return [ord(c) % VOCAB for c in text]

    text = "the quick brown fox jumps over the lazy dog " * 5
    res = perplexity(tiny_llama, tokenizer, text, max_length=32, stride=16)
    ref = perplexity(tiny_llama, input_ids=torch.tensor(tokenizer(text)), max_length=32, stride=16)
    assert res == ref


def test_max_length_clamped_and_training_mode_restored(tiny_llama):
    tiny_llama.train()
    try:
        res = perplexity(tiny_llama, input_ids=_ids(300), max_length=1024, stride=512)
        assert tiny_llama.training
    finally:
        tiny_llama.eval()
    assert (res["max_length"], res["stride"]) == (256, 256)
    assert res["tokens"] == 300 - 2


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"input_ids": torch.tensor([5])}, "at least 2"),
        ({"input_ids": torch.zeros(2, 10, dtype=torch.long)}, "one sequence"),
        ({}, "nothing to score"),
        ({"input_ids": torch.arange(10), "stride": 128, "max_length": 64}, "stride"),
        ({"input_ids": torch.arange(10), "max_length": 1}, "max_length"),
        ({"input_ids": torch.arange(10), "batch_size": 0}, "batch_size"),
    ],
)
def test_perplexity_errors(tiny_llama, kwargs, fragment):
    with pytest.raises(CurloraError) as info:
        perplexity(tiny_llama, **kwargs)
    assert fragment in str(info.value)


class _PlainLM(torch.nn.Module):
    """A model whose forward knows nothing of logits_to_keep/use_cache: the full-logits path."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids):
        return (self.inner(input_ids=input_ids).logits,)


def test_plain_forward_matches_logits_to_keep_path(tiny_llama):
    ids = _ids(290)
    fast = perplexity(tiny_llama, input_ids=ids, max_length=64, stride=32, batch_size=3)
    plain = perplexity(_PlainLM(tiny_llama), input_ids=ids, max_length=64, stride=32, batch_size=3)
    assert plain["tokens"] == fast["tokens"]
    assert plain["ppl"] == pytest.approx(fast["ppl"], rel=1e-5)


# ---------------------------------------------------------------------------------------------- kl_to_base


def _kl_rows(model, base, window):
    """KL(p_base || p_model) at every position of one window, straight from the full-window logits."""
    with torch.no_grad():
        logq = F.log_softmax(model(input_ids=window[None]).logits[0].float(), dim=-1)
        logp = F.log_softmax(base(input_ids=window[None]).logits[0].float(), dim=-1)
    return (logp.exp() * (logp - logq)).sum(-1)


@pytest.fixture(scope="module")
def kl_pair():
    """A tiny Llama base and a copy with every weight nudged (tiny_llama's own helper: vocab 320)."""
    import copy

    from curlora.testing import tiny_llama as make_tiny_llama

    base = make_tiny_llama(seed=3)
    model = copy.deepcopy(base)
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model, base


def test_kl_to_identical_model_is_zero(kl_pair):
    import copy

    from curlora.metrics import kl_to_base

    _, base = kl_pair
    res = kl_to_base(copy.deepcopy(base), base, _ids(120), max_length=64, stride=32)
    assert res["kl"] < 1e-6 and res["kl_max_token"] < 1e-6
    assert res["tokens"] == 119 == perplexity(base, input_ids=_ids(120), max_length=64, stride=32)["tokens"]


def test_kl_full_sequence_matches_direct(kl_pair):
    from curlora.metrics import kl_to_base

    model, base = kl_pair
    ids = _ids(100)
    res = kl_to_base(model, base, ids, max_length=128, stride=64)
    direct = _kl_rows(model, base, ids)[:-1]  # the last position predicts a token that is not there
    assert res["tokens"] == 99
    assert res["kl"] > 1e-3  # the nudged copy really differs
    assert res["kl"] == pytest.approx(direct.double().mean().item(), abs=1e-5)
    assert res["kl_max_token"] == pytest.approx(direct.max().item(), abs=1e-5)


def test_kl_overlapping_windows_score_each_token_once(kl_pair):
    from curlora.metrics import kl_to_base

    model, base = kl_pair
    n, max_length, stride = 40, 16, 6
    ids = _ids(n, seed=5)
    # token t is scored in the first window [k*stride, k*stride + max_length) that reaches past it, with
    # the context from that window's start; compute each one on its own
    per_token = []
    for t in range(1, n):
        begin = next(k * stride for k in range(n) if min(k * stride + max_length, n) > t)
        per_token.append(_kl_rows(model, base, ids[begin : t + 1])[-2].item())
    res = kl_to_base(model, base, ids, max_length=max_length, stride=stride)
    assert res["tokens"] == n - 1
    assert res["kl"] == pytest.approx(sum(per_token) / len(per_token), abs=1e-5)
    assert res["kl_max_token"] == pytest.approx(max(per_token), abs=1e-5)
    batched = kl_to_base(model, base, ids, max_length=max_length, stride=stride, batch_size=3)
    assert batched["kl"] == pytest.approx(res["kl"], abs=1e-6)


def test_kl_max_tokens_truncates_and_modes_restore(kl_pair):
    from curlora.metrics import kl_to_base

    model, base = kl_pair
    ids = _ids(200)
    model.train()
    try:
        res = kl_to_base(model, base, ids, max_length=64, stride=64, max_tokens=50)
        assert model.training and not base.training
    finally:
        model.eval()
    full = kl_to_base(model, base, ids[:50], max_length=64, stride=64)
    assert res == full and res["tokens"] == 49
    with pytest.raises(CurloraError, match="max_tokens"):
        kl_to_base(model, base, ids, max_length=64, stride=64, max_tokens=1)
    with pytest.raises(CurloraError, match="kl_to_base: stride"):
        kl_to_base(model, base, ids, max_length=16, stride=32)
