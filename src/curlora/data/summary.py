"""What a task suite holds, as plain data (for `curlora data show` and `curlora data prepare`)."""

from __future__ import annotations

import re
from typing import Any

from curlora.data.tasks import Suite


def suite_summary(suite: Suite) -> dict[str, Any]:
    """Tasks in training order with kind, labels, split sizes, label counts and notes; the perplexity text."""
    tasks = []
    for task in suite.tasks:
        tasks.append(
            {
                "name": task.name,
                "kind": task.kind,
                "labels": list(task.label_names),
                "train": len(task.train),
                "eval": len(task.eval),
                "train_label_counts": task.label_counts("train"),
                "eval_label_counts": task.label_counts("eval"),
                "notes": list(task.notes),
            }
        )
    text = suite.ppl_text
    return {
        "suite": suite.name,
        "tasks": tasks,
        "perplexity": {
            "name": suite.ppl_name,
            "chars": len(text),
            "bytes": len(text.encode("utf-8")),
            "lines": len(text.splitlines()),
            "words": len(re.findall(r"\S+", text)),
        },
        "notes": list(suite.notes),
    }
