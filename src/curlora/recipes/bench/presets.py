"""Bench presets, as data. CLI options override single fields."""

from __future__ import annotations

PRESETS: dict[str, dict] = {
    # A laptop-CPU demo of the whole protocol on the built-in suite (measured ~10 minutes on 2 cores).
    # Fewer records, one epoch and a larger lr than the paper, so that something is learned in few steps.
    "quick": {
        "n_train": 480,
        "n_eval": 300,
        "epochs": 1,
        "batch_size": 8,
        "eval_batch_size": 64,
        "lr": 1e-3,
        "warmup_steps": None,
        "warmup_ratio": 0.1,
        "max_length": 64,
        "ppl_max_length": 256,
        "ppl_stride": 256,
        "ppl_max_tokens": 8192,
        "methods": ["curlora-16", "lora-16", "head_only"],
        "seeds": [0],
    },
    # The paper's §6.4 settings: 1,000 records per task, 3 epochs, batch 8, lr 2.5e-4, 500 warmup steps
    # (longer than the 375 steps of a task: the peak lr is never reached, which results.json records).
    "paper": {
        "n_train": 1000,
        "n_eval": None,
        "epochs": 3,
        "batch_size": 8,
        "eval_batch_size": 64,
        "lr": 2.5e-4,
        "warmup_steps": 500,
        "warmup_ratio": None,
        "max_length": 512,
        "ppl_max_length": 1024,
        "ppl_stride": 512,
        "ppl_max_tokens": None,
        "methods": ["curlora-8", "curlora-16", "curlora-24", "lora-8", "lora-16", "lora-24"],
        "seeds": [0],
    },
}
