"""Sweep worker processes: spawned, each loads the model once and runs points from a queue (grid) or takes Optuna
trials; events (started / finished / failed / exit) flow back to the parent through a queue."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
import traceback
from pathlib import Path

from curlora.recipes.sweep.runner import Options, SweepReporter, _Context, _do, _load
from curlora.recipes.sweep.space import Space

# how long a loaded worker waits for the others before it starts anyway (a slow disk, a GPU still busy)
_READY_TIMEOUT_S = 600


def _die_with_parent() -> None:
    """A worker must not outlive a killed sweep (it would keep writing into the folder a rerun works in)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def _quiet() -> None:
    import warnings

    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    warnings.filterwarnings("ignore")


def _worker(wid: int, space: Space, out: str, device: str, options: Options, tasks, events, ready) -> None:
    _die_with_parent()
    _quiet()
    try:
        try:
            model, tokenizer, suite = _load(space, options.loader, device)
        except BaseException:
            ready.abort()  # the others must not wait for a worker that will never be ready
            raise
        # every worker starts taking points at once: the first to finish loading would otherwise take every point
        # that is over before the others are ready, and the sweep would run on fewer processes than asked for
        try:
            ready.wait(timeout=_READY_TIMEOUT_S)
        except threading.BrokenBarrierError:
            pass  # another worker failed to load (it reports why) or is slow: run anyway
        ctx = _Context(space, Path(out), device, model, tokenizer, suite)
        confs = {c.label: c for c in space.configurations()}
        if options.search == "optuna":
            from curlora.recipes.sweep.search_optuna import optuna_loop

            optuna_loop(ctx, options, wid, events, None)
        else:
            while (item := tasks.get()) is not None:
                label, seed = item
                try:
                    _do(ctx, confs[label], seed, wid, events, None)
                except Exception:  # one failed run must not stop the others; the sweep reports it
                    events.put(("failed", wid, label, seed, traceback.format_exc(limit=6)))
    except Exception:
        events.put(("failed", wid, None, None, traceback.format_exc(limit=6)))
    finally:
        events.put(("exit", wid))


def device_of(options: Options, wid: int) -> tuple[str, dict]:
    """(device string, environment) for worker `wid`: GPUs round-robin, each worker sees only its own GPU."""
    if not options.gpus:
        return options.device, {}
    gpu = options.gpus[wid % len(options.gpus)]
    return "cuda", {"CUDA_VISIBLE_DEVICES": str(gpu)}


def spawn(space: Space, out: Path, options: Options, tasks, events, n: int) -> tuple[list, object]:
    """Start `n` workers; returns them and their start barrier, which the caller must hold until they have exited
    (a spawned child rebuilds the barrier from the parent's semaphore: dropped early, it is gone)."""
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(n)
    procs = []
    for wid in range(n):
        device, env = device_of(options, wid)
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)  # a spawned child copies the environment at start
        try:
            p = ctx.Process(target=_worker, args=(wid, space, str(out), device, options, tasks, events, ready),
                            daemon=True)
            p.start()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        procs.append(p)
    return procs, ready


def pump(procs: list, events, reporter: SweepReporter, failures: list) -> None:
    """Forward worker events to the reporter until every worker has exited."""
    alive = {p: wid for wid, p in enumerate(procs)}
    exited: set[int] = set()
    while len(exited) < len(procs):
        try:
            event = events.get(timeout=1.0)
        except queue.Empty:
            for p, wid in alive.items():
                if wid not in exited and not p.is_alive() and p.exitcode not in (0, None):
                    exited.add(wid)
                    failures.append((None, None, f"worker {wid} died (exit code {p.exitcode})"))
            continue
        kind, wid = event[0], event[1]
        if kind == "started":
            reporter.started(wid, event[2], event[3])
        elif kind == "finished":
            reporter.finished(wid, *event[2:])
        elif kind == "failed":
            failures.append((event[2], event[3], event[4]))
            reporter.failed(wid, event[2], event[3], event[4])
        elif kind == "exit":
            exited.add(wid)
    for p in procs:
        p.join()
