"""Tiny, seeded, random-init models and a matching tokenizer for fast tests (no downloads, milliseconds).

- `tiny_tokenizer()`: a byte-level BPE tokenizer trained in memory on a few sentences; any text encodes (no
  unknown tokens), it pads on the right with a dedicated ``<|pad|>`` token and has a ChatML chat template.
- `tiny_llama()`: LlamaForCausalLM (q_proj/k_proj/v_proj/o_proj and MLP are ``nn.Linear``).
- `tiny_gpt2()`: GPT2LMHeadModel (c_attn/c_proj/c_fc are transformers ``Conv1D``, weights stored transposed).

Both models use the tokenizer's special-token ids and a vocabulary of `TINY_VOCAB_SIZE` (>= the tokenizer's),
tie their output embeddings to the input embeddings like the built-in SmolLM2, and are returned in eval mode.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

TINY_VOCAB_SIZE = 320
TINY_MAX_LENGTH = 256

UNK_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)  # ids 0, 1, 2, 3
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIAL_TOKENS))

_TOKENIZER_VOCAB = 300  # trained size; the models' embedding tables (TINY_VOCAB_SIZE) are a bit larger

_CORPUS = (
    "A small model learns a new task and should not forget the old ones.",
    "The cat sat on the mat, and the dog sat on the log.",
    "Question: what is 12 plus 30? Answer: 42.",
    "Translate to French: good morning -> bonjour.",
    "def square(x):\n    return x * x\n",
    "Sentiment of 'what a wonderful film' is positive; of 'a dull mess' is negative.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 and symbols ( ) [ ] { } < > = + - * / % # @ !",
    "Low-rank adapters keep the base weights frozen and train a few extra parameters.",
    "user asks, assistant answers; the system sets the rules.",
    "Once upon a time there was a tiny tokenizer that lived inside a test suite.",
)

# ChatML, as used by the built-in SmolLM2-Instruct.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the byte-level BPE once per process (deterministic) and keep its serialized form."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_CORPUS) * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(*, padding_side: str = "right") -> PreTrainedTokenizerFast:
    """A fresh tiny tokenizer (~300 tokens): pad ``<|pad|>`` (id 3) != eos ``<|im_end|>`` (id 2)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side=padding_side,
        model_max_length=TINY_MAX_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _seeded_build(cls, config, seed: int, dtype: torch.dtype) -> PreTrainedModel:
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(seed)
        model = cls(config)
    return model.to(dtype).eval()


def tiny_llama(
    *,
    vocab_size: int = TINY_VOCAB_SIZE,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    max_position_embeddings: int = TINY_MAX_LENGTH,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A random-init Llama (grouped-query attention like SmolLM2: 4 query heads share 2 kv heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    return _seeded_build(LlamaForCausalLM, config, seed, dtype)


def tiny_gpt2(
    *,
    vocab_size: int = TINY_VOCAB_SIZE,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = TINY_MAX_LENGTH,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> GPT2LMHeadModel:
    """A random-init GPT-2 (fused c_attn is a transformers Conv1D); no dropout, so outputs are repeatable."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden_size,
        n_layer=num_layers,
        n_head=num_heads,
        n_positions=max_position_embeddings,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    return _seeded_build(GPT2LMHeadModel, config, seed, dtype)


_FACTORIES = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def tiny_model_and_tokenizer(
    arch: str = "llama", **kwargs
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """`tiny_llama()` or `tiny_gpt2()` (extra keyword arguments go to the factory) plus `tiny_tokenizer()`."""
    if arch not in _FACTORIES:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {sorted(_FACTORIES)}")
    return _FACTORIES[arch](**kwargs), tiny_tokenizer()


def save_tiny_model(path: str | os.PathLike, arch: str = "llama", **kwargs) -> Path:
    """Write a tiny model + tokenizer with `save_pretrained` into `path` (a loadable model folder)."""
    path = Path(path)
    model, tokenizer = tiny_model_and_tokenizer(arch, **kwargs)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Real architectures for speed/memory benchmarks and meta-device tests, as `AutoConfig.for_model` arguments.
# Values from the models' published config.json files; llama-1b is Llama-3.2-1B-like (its llama3 RoPE scaling is
# left out: it does not change the cost of a step); llama-7b is Llama-2-7B-like (untied head, no grouped kv heads).
ARCHITECTURES: dict[str, dict] = {
    "smollm2-135m": dict(
        model_type="llama", hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
        intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, head_dim=64,
        max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
    ),
    "llama-1b": dict(
        model_type="llama", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, head_dim=64,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
    ),
    "llama-7b": dict(
        model_type="llama", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
        intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, max_position_embeddings=4096,
        rms_norm_eps=1e-5,
    ),
    "mistral-7b": dict(
        model_type="mistral", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, vocab_size=32000, tie_word_embeddings=False, head_dim=128,
        max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5, sliding_window=None,
    ),
}  # fmt: skip


def architecture_config(name: str, **overrides):
    """A transformers config for one of `ARCHITECTURES` (e.g. `num_hidden_layers=4` for a short smoke run)."""
    from transformers import AutoConfig

    spec = {**ARCHITECTURES[name], **overrides}
    return AutoConfig.for_model(spec.pop("model_type"), **spec)


@torch.no_grad()
def random_init_(
    module: torch.nn.Module, device: torch.device, dtype: torch.dtype, generator: torch.Generator | None = None
) -> torch.nn.Module:
    """Allocate a meta-device model on `device` directly in `dtype` and fill it: matrices ~ N(0, 0.02²) (CUR
    selection needs finite, non-zero weights), vectors = 1 (RMSNorm scales; Llama/Mistral have no biases), RoPE
    tables rebuilt in float32 (they are non-persistent buffers that `to_empty` leaves uninitialised)."""
    module.to(dtype)  # on meta: free; weights are then allocated once, directly in `dtype`
    module.to_empty(device=device)
    for param in module.parameters():
        if param.dim() >= 2:
            param.normal_(0.0, 0.02, generator=generator)
        else:
            param.fill_(1.0)
    for sub in module.modules():
        if "inv_freq" in sub._buffers:
            fresh = type(sub)(sub.config)
            for key, buf in fresh.named_buffers(recurse=False):
                sub._buffers[key] = buf.to(device)
    return module
