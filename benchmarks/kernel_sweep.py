"""GPU-side time of the fused CURLoRA kernels (curlora.tuner.kernels) over launch configurations, per q/k/v shape.

Times come from CUDA graphs (triton.testing.do_bench_cudagraph), so they are kernel time without Python launch
cost, as inside a compiled training step. Printed per shape: the torch-ops path, the current configuration,
the best configuration found, and the bandwidth bound (bytes that must move / the measured copy bandwidth).

    python benchmarks/kernel_sweep.py            # needs a CUDA GPU and Triton
"""

from __future__ import annotations

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


def _ms(fn) -> float:
    return do_bench_cudagraph(fn, rep=40) * 1e3  # µs


def _set(**config) -> dict:
    old = {k: getattr(kernels, k) for k in config}
    for k, v in config.items():
        setattr(kernels, k, v)
    return old


FORWARD_GRID = list(itertools.product([16, 32, 64], [64, 128], [2, 4, 8], [4, 8]))  # rows, cols, per SM, warps
BACKWARD_GRID = list(itertools.product([16, 32], [64, 128, 256], [4, 8]))  # rows, cols, warps


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

    fwd, bwd = {}, {}
    for bm, bn, per_sm, warps in FORWARD_GRID:
        old = _set(_FORWARD_ROWS=bm, _TILE_N=bn, _PROGRAMS_PER_SM=per_sm, _FORWARD_WARPS=warps)
        fwd[(bm, bn, per_sm, warps)] = _ms(lambda: kernels.forward(y, c, u, rows, None, 1.0))
        _set(**old)
    for bm, bn, warps in BACKWARD_GRID:
        old = _set(_BACKWARD_ROWS=bm, _BACKWARD_TILE_N=bn, _BACKWARD_WARPS=warps)
        bwd[(bm, bn, warps)] = _ms(lambda: kernels.backward(g, t, c, u, rows, 1.0, True))
        _set(**old)
    now_f = (kernels._FORWARD_ROWS, kernels._TILE_N, kernels._PROGRAMS_PER_SM, kernels._FORWARD_WARPS)
    now_b = (kernels._BACKWARD_ROWS, kernels._BACKWARD_TILE_N, kernels._BACKWARD_WARPS)
    top_f, top_b = sorted(fwd, key=fwd.get)[:4], sorted(bwd, key=bwd.get)[:4]
    print(
        f"{tokens}x{width}: bound {bound:6.1f} | forward torch {_ms(torch_fwd):6.1f} now {fwd[now_f]:6.1f} "
        f"best {fwd[top_f[0]]:6.1f} | backward torch {_ms(torch_bwd):6.1f} now {bwd[now_b]:6.1f} "
        f"best {bwd[top_b[0]]:6.1f}"
    )
    print("   forward top:", [(k, round(fwd[k], 1)) for k in top_f])
    print("   backward top:", [(k, round(bwd[k], 1)) for k in top_b])


def main() -> None:
    copy_src = torch.empty(256 * 2**20, device="cuda", dtype=torch.uint8)
    copy_dst = torch.empty_like(copy_src)
    bandwidth = 2 * copy_src.numel() / (_ms(lambda: copy_dst.copy_(copy_src)) * 1e-6)  # bytes/s, read + write
    print(f"{torch.cuda.get_device_name()}: copy bandwidth {bandwidth / 1e12:.2f} TB/s; times in µs (CUDA graphs)")
    for tokens, width in SHAPES:
        sweep_shape(tokens, width, bandwidth)


if __name__ == "__main__":
    main()
