"""A tiny model and a two-task generated suite for the sweep tests; `load` is importable by spawned workers."""

import random

from curlora.data import Example, Suite, Task
from curlora.testing import tiny_llama, tiny_tokenizer

WORDS = "alpha beta gamma delta river stone cloud paper green quiet light storm".split()
BENCH = dict(model="tiny", n_train=8, n_eval=8, batch_size=4, eval_batch_size=8, max_length=24, ppl_max_length=32,
             ppl_stride=32, ppl_max_tokens=64, warmup_steps=0)


def suite() -> Suite:
    rng = random.Random(0)

    def sentences(n, marker):
        return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + f" {marker}" for _ in range(n)]

    def task(name, markers):
        splits = []
        for n in (8, 8):
            examples = [Example(text=t, label=k) for k, m in enumerate(markers) for t in sentences(n // 2, m)]
            rng.shuffle(examples)
            splits.append(examples)
        return Task(name=name, kind="single", label_names=tuple(markers), train=splits[0], eval=splits[1])

    tasks = [task("polar", ["good", "bad"]), task("topic", ["sun", "moon"])]
    return Suite(name="tiny", tasks=tasks, ppl_name="tiny-text", ppl_text="\n".join(sentences(20, "end")), notes=[])


def load(config):
    return tiny_llama(), tiny_tokenizer(), suite()
