"""GPU-side time of the fused CURLoRA kernels (curlora.tuner.kernels) over launch configurations, per q/k/v shape.

Times come from CUDA graphs (triton.testing.do_bench_cudagraph), so they are kernel time without Python launch
cost, as inside a compiled training step. Printed per shape: the torch-ops path, the current configuration
(forward, and whichever backward design the library picks for the shape), the best configurations of each
kernel (both backward designs swept), and the bandwidth bound (bytes that must move / the measured copy bandwidth).

    python perf/kernel_sweep.py            # needs a CUDA GPU and Triton
    python perf/kernel_sweep.py --groups   # the q/k/v group kernels instead, per model
"""

from __future__ import annotations

import argparse
import itertools

import torch
from triton.testing import do_bench_cudagraph

from curlora.tuner import kernels
from curlora.tuner.layer import _FromBaseOutput

SHAPES = [(8192, 576), (8192, 192), (4096, 2048), (4096, 512), (2048, 4096), (2048, 1024)]  # tokens × out
RANK = 16


def _inputs(tokens, width):
    dev, dt = "cuda", torch.bfloat16
    y = torch.randn(tokens, width, device=dev, dtype=dt)
    c = 0.1 * torch.randn(width, RANK, device=dev, dtype=dt)
    u = 0.1 * torch.randn(RANK, RANK, device=dev)
    rows = torch.randperm(width, device=dev)[:RANK]
    return y, c, u, rows


def _us(fn) -> float:  # do_bench_cudagraph reports ms
    return do_bench_cudagraph(fn, rep=40) * 1e3  # µs


def _sweep(config: dict, grid: list[tuple], fn, keys=("rows", "tile", "per_sm", "warps")) -> dict[tuple, float]:
    """µs of fn() for each point of `grid`, its values set into `config` under `keys` (restored afterwards)."""
    saved = dict(config)
    times = {}
    for point in grid:
        config.update(zip(keys, point, strict=True))
        times[point] = _us(fn)
    config.clear()
    config.update(saved)
    return times


GRID = list(itertools.product([16, 32], [64, 128, 256], [2, 4, 8], [4]))  # rows, tile, per SM, warps
FINISH_GRID = list(itertools.product([16, 32, 64], [4, 8]))  # the split backward's second kernel: rows, warps
ROWS_GRID = list(itertools.product([16, 32], [64, 128, 256], [4, 8]))  # the one-kernel backward: rows, tile, warps


def _best(times: dict) -> str:
    top = sorted(times, key=times.get)[:3]
    return ", ".join(f"{k}: {times[k]:.1f}" for k in top)


def sweep_shape(tokens: int, width: int, bandwidth: float) -> None:
    y, c, u, rows = _inputs(tokens, width)
    g = torch.randn_like(y)
    _, t = kernels.forward(y, c, u, rows, None, 1.0)
    bound = 2 * y.numel() * y.element_size() / bandwidth * 1e6  # read y, write out (backward: g, grad_y)

    def torch_fwd():
        return _FromBaseOutput.compute(y, c, u, rows, None, 1.0, False)

    def torch_bwd():
        gh = g.mm(c)
        gh.t().mm(t)
        return g.index_add(1, rows, gh.mm(u.to(g.dtype)))

    def fused_fwd():
        return kernels.forward(y, c, u, rows, None, 1.0)

    def fused_bwd():
        return kernels.backward(g, t, c, u, rows, 1.0, True)

    now_f, now_b = _us(fused_fwd), _us(fused_bwd)
    fwd = _sweep(kernels._FORWARD, GRID, fused_fwd)
    # each backward design in turn, whichever the library picks for this shape
    switch = kernels._BACKWARD_ROWS["min_programs_per_sm"]
    kernels._BACKWARD_ROWS["min_programs_per_sm"] = float("inf")  # the split backward
    reduce = _sweep(kernels._BACKWARD_REDUCE, GRID, fused_bwd)
    finish = _sweep(kernels._BACKWARD_FINISH, FINISH_GRID, fused_bwd, keys=("rows", "warps"))
    kernels._BACKWARD_ROWS["min_programs_per_sm"] = 0  # the one-kernel backward
    one_kernel = _sweep(kernels._BACKWARD_ROWS, ROWS_GRID, fused_bwd, keys=("rows", "tile", "warps"))
    kernels._BACKWARD_ROWS["min_programs_per_sm"] = switch
    print(
        f"{tokens}x{width}: bound {bound:5.1f} | forward torch {_us(torch_fwd):5.1f} fused {now_f:5.1f} "
        f"| backward torch {_us(torch_bwd):5.1f} fused {now_b:5.1f}"
    )
    print(f"   forward best {_best(fwd)}")
    print(f"   backward, reduce kernel best {_best(reduce)}")
    print(f"   backward, finish kernel best {_best(finish)}")
    print(f"   backward, one kernel per block of rows best {_best(one_kernel)}")


GROUP_SHAPES = {"135M": (8192, (576, 192, 192)), "1B": (4096, (2048, 512, 512)), "7B": (2048, (4096, 1024, 1024))}
GROUP_GRID = list(itertools.product([16, 32, 64], [64, 128, 256], [4, 8]))  # rows, tile, warps


def sweep_group(model: str, bandwidth: float) -> None:
    """The q/k/v group kernels (one launch for three projections) against the three single launches."""
    tokens, widths = GROUP_SHAPES[model]
    inputs = [_inputs(tokens, w) for w in widths]
    ys, cs, us, rows = (list(x) for x in zip(*inputs, strict=True))
    gs = [torch.randn_like(y) for y in ys]
    ts = kernels.forward_group(ys, cs, us, rows, [None] * 3, (1.0,) * 3)[1]
    bound = sum(2 * y.numel() * y.element_size() for y in ys) / bandwidth * 1e6

    def singles_fwd():
        return [kernels.forward(y, c, u, r, None, 1.0) for y, c, u, r in inputs]

    def singles_bwd():
        return [kernels.backward(g, t, c, u, r, 1.0, True) for g, t, (_, c, u, r) in zip(gs, ts, inputs, strict=True)]

    def group_fwd():
        return kernels.forward_group(ys, cs, us, rows, [None] * 3, (1.0,) * 3)

    def group_bwd():
        return kernels.backward_group(gs, ts, cs, us, rows, (1.0,) * 3, True)

    now_f, now_b = _us(group_fwd), _us(group_bwd)
    keys = ("rows", "tile", "warps")
    fwd = _sweep(kernels._FORWARD_GROUP, GROUP_GRID, group_fwd, keys=keys)
    bwd = _sweep(kernels._BACKWARD_GROUP, GROUP_GRID, group_bwd, keys=keys)
    print(
        f"{model} ({tokens} x {'+'.join(map(str, widths))}): bound {bound:5.1f} | forward: 3 launches "
        f"{_us(singles_fwd):5.1f}, group {now_f:5.1f} | backward: 3 launches {_us(singles_bwd):5.1f}, "
        f"group {now_b:5.1f}"
    )
    print(f"   group forward best {_best(fwd)}")
    print(f"   group backward best {_best(bwd)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", action="store_true", help="sweep the q/k/v group kernels, per model")
    args = parser.parse_args()
    copy_src = torch.empty(256 * 2**20, device="cuda", dtype=torch.uint8)
    copy_dst = torch.empty_like(copy_src)
    bandwidth = 2 * copy_src.numel() / (_us(lambda: copy_dst.copy_(copy_src)) * 1e-6)  # bytes/s, read + write
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s; times in µs (CUDA graphs)")
    if args.groups:
        for model in GROUP_SHAPES:
            sweep_group(model, bandwidth)
        return
    for tokens, width in SHAPES:
        sweep_shape(tokens, width, bandwidth)


if __name__ == "__main__":
    main()
