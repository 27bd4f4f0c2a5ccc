"""Fused Triton kernels for the CURLoRA layer's base-output path (`layer._FromBaseOutput`), used on CUDA.

The torch formulation costs about nine small kernels per adapted projection and step (a gather, the r × r
products, a skinny GEMM with the add in its epilogue; in backward g·C, two r × r products, a copy of the
gradient and a scatter), each far from the memory bandwidth at these shapes. Here the same math is one kernel
forward and one or two backward, plus one tiny torch reduction; all of them run over (block of rows, share of the
columns), so that even a small batch fills the GPU:

- forward: `h = (y[:, rows] − b[rows])·(αU)ᵀ` once per block of rows (r gathered values per row: uncoalesced
  loads, amortised over the block's columns), then `out = y + h·Cᵀ` tile by tile; α·U is formed in the kernel;
- backward 1: partial sums of `gh = g·C` (a reduction over the output width), one per share of the columns;
  the same pass copies g into `grad_y`, so g is read once;
- backward 2 (one program per block of rows): `gh` = the sum of those partials, `d = gh·(αU)`, then the r
  selected columns are overwritten with `g[:, rows] + d` (repeated rows add up), and this block's partial of the
  gradient for U, `ghᵀ·t`, which torch sums. No atomics anywhere, so results are deterministic.
- with many tokens (enough blocks of rows to fill the GPU on their own) both backward steps run as one kernel
  per block of rows: one launch fewer, which is what counts at these sizes.
- the group kernels do the forward and the one-kernel backward for the q, k and v projections of a block in one
  launch (program = block of rows × projection; `curlora.tuner.group` decides when).

Rounding follows the torch path where it rounds (h and g·C to the activation dtype before the next product)
and keeps fp32 where the torch path would round twice (the final adds). fp32 activations use IEEE fp32 dots,
never TF32. `TRITON_INTERPRET=1` runs the kernels on CPU tensors, which is how the tests check them without a
GPU. perf/kernel_sweep.py times launch configurations against the torch ops and the bandwidth bound.
`CURLORA_TRITON=0` in the environment (read at import) turns the kernels off.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the torch formulation is used
    triton = None

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DISABLED = os.environ.get("CURLORA_TRITON", "1") == "0"  # read once: `usable` runs on every adapted forward
_MAX_RANK = 64  # a block of r × r fp32 values per program; larger ranks use the torch ops
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def usable(y: torch.Tensor, rank: int, *, eager: bool = False) -> bool:
    """Whether the fused kernels run: Triton present, a CUDA tensor under torch.compile (or the interpreter).
    `eager=True` also allows them outside torch.compile (the benchmarks' `curlora-triton` variant)."""
    if triton is None or _DISABLED:
        return False
    # offsets inside the kernels are int32: larger activations take the torch ops
    if y.dtype not in _DTYPES or not 0 < rank <= _MAX_RANK or y.numel() >= 2**31:
        return False
    if y.is_cuda:
        # only inside torch.compile: eagerly, Triton's Python launcher costs more host time per call than the
        # ~9 torch launches it replaces, and small models are host-bound (docs/BENCHMARKS.md)
        return eager or torch.compiler.is_compiling()
    # the interpreter runs eagerly on CPU tensors; inside torch.compile a CPU graph has no Triton to call
    return _INTERPRET and y.device.type == "cpu" and not torch.compiler.is_compiling()


def _rank_block(rank: int) -> int:
    return max(16, triton.next_power_of_2(rank))  # tl.dot needs every dimension ≥ 16


def _precision(x: torch.Tensor) -> str:
    """fp32 activations get IEEE fp32 dots (as torch's default matmul), never TF32; half types use tensor cores."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


# launch configuration: rows per program, columns per tile, programs per SM to aim for, warps
# (chosen with perf/kernel_sweep.py on an H100)
_FORWARD = {"rows": 16, "tile": 256, "per_sm": 2, "warps": 4}
_BACKWARD_REDUCE = {"rows": 32, "tile": 128, "per_sm": 2, "warps": 4}
_BACKWARD_FINISH = {"rows": 32, "warps": 4}
# once the blocks of rows alone about fill the GPU, one backward kernel per block of rows beats two kernels over
# more programs (H100: 4096 tokens and more)
_BACKWARD_ROWS = {"rows": 32, "tile": 128, "min_programs_per_sm": 0.9, "warps": 4}
# q, k and v in one launch (`curlora.tuner.group`): three projections' blocks of rows, each over all its columns
# (the sweep favours 64 rows for the backward, 22.7 vs 33.0 µs at 135M, but the 135M step did not move: 1.084 vs
# 1.082 × floor; 32 is what all three models' steps were measured with, docs/BENCHMARKS.md)
_FORWARD_GROUP = {"rows": 16, "tile": 256, "warps": 4}
_BACKWARD_GROUP = {"rows": 32, "tile": 128, "warps": 4}


def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _grid(tokens: int, width: int, config: dict, device: torch.device) -> tuple[tuple[int, int], int]:
    """((row blocks, column shares), columns per share): the fewest shares that give each SM a few programs."""
    row_blocks = triton.cdiv(tokens, config["rows"])
    tiles = triton.cdiv(width, config["tile"])
    shares = max(1, min(tiles, triton.cdiv(config["per_sm"] * _sm_count(device), row_blocks)))
    cols_per_share = triton.cdiv(tiles, shares) * config["tile"]
    return (row_blocks, triton.cdiv(width, cols_per_share)), cols_per_share


if triton is not None:

    @triton.jit
    def _dot(a, b, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """tl.dot with fp32 accumulation; UPCAST (interpreter only, whose half-precision dot is broken) multiplies
        the same half-precision values in fp32."""
        if UPCAST:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        return tl.dot(a, b, input_precision=PRECISION)

    @triton.jit
    def _scaled_u(u_ptr, offs_r, mask_r, R, alpha, dtype):
        """α·U (RP × RP, zero padded) in the activation dtype, as the torch path's `layer.scaled_u`."""
        u = tl.load(u_ptr + offs_r[:, None] * R + offs_r[None, :], mask=mask_r[:, None] & mask_r[None, :], other=0.0)
        return (u.to(tl.float32) * alpha).to(dtype)

    @triton.jit
    def _forward_kernel(
        y_ptr, c_ptr, u_ptr, rows_ptr, bias_ptr, out_ptr, t_ptr, T, N, R, alpha, cols_per_share,
        HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        _forward_block(
            y_ptr, c_ptr, u_ptr, rows_ptr, bias_ptr, out_ptr, t_ptr, T, N, R, alpha, cols_per_share,
            tl.program_id(0), tl.program_id(1), HAS_BIAS, PRECISION, UPCAST, BM, BN, RP,
        )  # fmt: skip

    @triton.jit
    def _forward_block(
        y_ptr, c_ptr, u_ptr, rows_ptr, bias_ptr, out_ptr, t_ptr, T, N, R, alpha, cols_per_share, pid_m, pid_n,
        HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        """One block of rows, one share of the columns."""
        dtype = out_ptr.dtype.element_ty
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_r = tl.arange(0, RP)
        mask_m = offs_m < T
        mask_r = offs_r < R
        mask_mr = mask_m[:, None] & mask_r[None, :]
        rows = tl.load(rows_ptr + offs_r, mask=mask_r, other=0)
        t = tl.load(y_ptr + offs_m[:, None] * N + rows[None, :], mask=mask_mr, other=0.0)
        if HAS_BIAS:
            b = tl.load(bias_ptr + offs_r, mask=mask_r, other=0.0)
            t = (t.to(tl.float32) - b.to(tl.float32)[None, :]).to(dtype)
        if pid_n == 0:
            tl.store(t_ptr + offs_m[:, None] * R + offs_r[None, :], t, mask=mask_mr)
        ua = _scaled_u(u_ptr, offs_r, mask_r, R, alpha, dtype)
        h = _dot(t, tl.trans(ua), PRECISION, UPCAST).to(dtype)  # h[i, m] = Σ_k t[i, k]·αU[m, k], rounded as torch
        start = pid_n * cols_per_share
        for n0 in range(0, cols_per_share, BN):  # the last share may run past N: masked
            offs_n = start + n0 + tl.arange(0, BN)
            mask_n = offs_n < N
            c = tl.load(
                c_ptr + offs_n[:, None] * R + offs_r[None, :], mask=mask_n[:, None] & mask_r[None, :], other=0.0
            )
            mask_mn = mask_m[:, None] & mask_n[None, :]
            tile = offs_m[:, None] * N + offs_n[None, :]
            y = tl.load(y_ptr + tile, mask=mask_mn, other=0.0)
            out = y.to(tl.float32) + _dot(h, tl.trans(c), PRECISION, UPCAST)
            tl.store(out_ptr + tile, out.to(dtype), mask=mask_mn)

    @triton.jit
    def _g_times_c(
        g_ptr, c_ptr, gy_ptr, offs_m, mask_m, offs_r, mask_r, start, cols, N, R,
        COPY_G: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        """g·C over the columns start .. start + cols (masked at N) for one block of rows: (BM, RP) in fp32.
        With COPY_G the same pass writes grad_y = g on those columns; `_store_selected_grad_y` overwrites the
        r selected ones once g·C is complete: one read of g for the whole backward."""
        acc = tl.zeros((BM, RP), dtype=tl.float32)
        for n0 in range(0, cols, BN):  # a range over scalars only (Triton's interpreter)
            offs_n = start + n0 + tl.arange(0, BN)
            mask_n = offs_n < N
            mask_mn = mask_m[:, None] & mask_n[None, :]
            tile = offs_m[:, None] * N + offs_n[None, :]
            g = tl.load(g_ptr + tile, mask=mask_mn, other=0.0)
            c = tl.load(
                c_ptr + offs_n[:, None] * R + offs_r[None, :], mask=mask_n[:, None] & mask_r[None, :], other=0.0
            )
            acc += _dot(g, c, PRECISION, UPCAST)
            if COPY_G:  # all columns: a mask that skipped the selected ones would cost the stores' vectorisation
                tl.store(gy_ptr + tile, g, mask=mask_mn)
        return acc

    @triton.jit
    def _store_grad_u_partial(
        gh, t_ptr, gu_ptr, block, offs_m, mask_m, offs_r, mask_r, R, alpha,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        """This block of rows' share of the gradient for U, α·Σ_i gh[i, m]·t[i, k], to partial sum `block`."""
        t = tl.load(t_ptr + offs_m[:, None] * R + offs_r[None, :], mask=mask_m[:, None] & mask_r[None, :], other=0.0)
        gu = _dot(tl.trans(gh), t, PRECISION, UPCAST) * alpha
        tl.store(gu_ptr + block * RP * RP + offs_r[:, None] * RP + offs_r[None, :], gu)

    @triton.jit
    def _store_selected_grad_y(
        gh, g_ptr, u_ptr, rows, gy_ptr, offs_m, mask_m, offs_r, mask_r, N, R, alpha,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):  # fmt: skip
        """grad_y[:, rows[k]] = g[:, rows[k]] + Σ_{k' : rows[k'] = rows[k]} d[:, k'] with d = gh·(αU): the r
        columns the adapter reads; a repeated row gets the sum of its entries, written identically by each."""
        dtype = g_ptr.dtype.element_ty
        ua = _scaled_u(u_ptr, offs_r, mask_r, R, alpha, dtype)
        d = _dot(gh, ua, PRECISION, UPCAST)  # d[i, k] = Σ_m gh[i, m]·αU[m, k]: the gradient of y[i, rows[k]]
        same = ((rows[:, None] == rows[None, :]) & mask_r[:, None] & mask_r[None, :]).to(tl.float32)
        d = tl.dot(d, same, input_precision="ieee")  # summed over repeated rows, in fp32
        mask = mask_m[:, None] & mask_r[None, :]
        selected = offs_m[:, None] * N + rows[None, :]
        g = tl.load(g_ptr + selected, mask=mask, other=0.0)
        tl.store(gy_ptr + selected, (g.to(tl.float32) + d).to(dtype), mask=mask)

    @triton.jit
    def _backward_reduce_kernel(
        g_ptr, c_ptr, gy_ptr, ghp_ptr, T, N, R, cols_per_share,
        WRITE_GRAD_Y: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_r = tl.arange(0, RP)
        mask_m = offs_m < T
        acc = _g_times_c(
            g_ptr, c_ptr, gy_ptr, offs_m, mask_m, offs_r, offs_r < R, pid_n * cols_per_share, cols_per_share,
            N, R, WRITE_GRAD_Y, PRECISION, UPCAST, BM, BN, RP,
        )  # fmt: skip
        tl.store(ghp_ptr + (pid_n * T + offs_m[:, None]) * RP + offs_r[None, :], acc, mask=mask_m[:, None])

    @triton.jit
    def _backward_finish_kernel(
        g_ptr, ghp_ptr, u_ptr, t_ptr, rows_ptr, gy_ptr, gu_ptr, T, N, R, alpha, reduce_shares,
        WRITE_GRAD_Y: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        offs_m = pid * BM + tl.arange(0, BM)
        offs_r = tl.arange(0, RP)
        mask_m = offs_m < T
        mask_r = offs_r < R
        acc = tl.zeros((BM, RP), dtype=tl.float32)
        for s in range(0, reduce_shares):
            acc += tl.load(ghp_ptr + (s * T + offs_m[:, None]) * RP + offs_r[None, :], mask=mask_m[:, None], other=0.0)
        gh = acc.to(g_ptr.dtype.element_ty)  # g·C, rounded like the torch path's GEMM output
        _store_grad_u_partial(gh, t_ptr, gu_ptr, pid, offs_m, mask_m, offs_r, mask_r, R, alpha, PRECISION, UPCAST, RP)
        if WRITE_GRAD_Y:
            rows = tl.load(rows_ptr + offs_r, mask=mask_r, other=-1)
            _store_selected_grad_y(
                gh, g_ptr, u_ptr, rows, gy_ptr, offs_m, mask_m, offs_r, mask_r, N, R, alpha, PRECISION, UPCAST
            )

    @triton.jit
    def _backward_rows_kernel(
        g_ptr, c_ptr, u_ptr, t_ptr, rows_ptr, gy_ptr, gu_ptr, T, N, R, alpha,
        WRITE_GRAD_Y: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        _backward_rows_block(
            g_ptr, c_ptr, u_ptr, t_ptr, rows_ptr, gy_ptr, gu_ptr, T, N, R, alpha, tl.program_id(0),
            WRITE_GRAD_Y, PRECISION, UPCAST, BM, BN, RP,
        )  # fmt: skip

    @triton.jit
    def _backward_rows_block(
        g_ptr, c_ptr, u_ptr, t_ptr, rows_ptr, gy_ptr, gu_ptr, T, N, R, alpha, pid,
        WRITE_GRAD_Y: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        """The whole backward for one block of rows: g·C, its U-gradient partial and grad_y."""
        offs_m = pid * BM + tl.arange(0, BM)
        offs_r = tl.arange(0, RP)
        mask_m = offs_m < T
        mask_r = offs_r < R
        rows = tl.load(rows_ptr + offs_r, mask=mask_r, other=-1)
        acc = _g_times_c(
            g_ptr, c_ptr, gy_ptr, offs_m, mask_m, offs_r, mask_r, 0, N, N, R,
            WRITE_GRAD_Y, PRECISION, UPCAST, BM, BN, RP,
        )  # fmt: skip
        gh = acc.to(g_ptr.dtype.element_ty)  # g·C, rounded like the torch path's GEMM output
        _store_grad_u_partial(gh, t_ptr, gu_ptr, pid, offs_m, mask_m, offs_r, mask_r, R, alpha, PRECISION, UPCAST, RP)
        if WRITE_GRAD_Y:
            tl.debug_barrier()  # the copy of g into grad_y (other threads) lands before its r columns are overwritten
            _store_selected_grad_y(
                gh, g_ptr, u_ptr, rows, gy_ptr, offs_m, mask_m, offs_r, mask_r, N, R, alpha, PRECISION, UPCAST
            )

    @triton.jit
    def _pick(p, a, b, c):
        """a, b or c for projection p (0, 1, 2) of a group: each program of a group kernel serves one of them."""
        if p == 0:
            v = a
        elif p == 1:
            v = b
        else:
            v = c
        return v

    @triton.jit
    def _forward_group_kernel(
        y0, y1, y2, c0, c1, c2, u0, u1, u2, rows0, rows1, rows2, bias0, bias1, bias2, out0, out1, out2,
        t0, t1, t2, N0, N1, N2, alpha0, alpha1, alpha2, T, R,
        HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        """`_forward_kernel` for the three projections of a group at once: program (m, p) does block of rows m
        of projection p, all its columns."""
        p = tl.program_id(1)
        N = _pick(p, N0, N1, N2)
        _forward_block(
            _pick(p, y0, y1, y2), _pick(p, c0, c1, c2), _pick(p, u0, u1, u2), _pick(p, rows0, rows1, rows2),
            _pick(p, bias0, bias1, bias2), _pick(p, out0, out1, out2), _pick(p, t0, t1, t2), T, N, R,
            _pick(p, alpha0, alpha1, alpha2), N, tl.program_id(0), 0, HAS_BIAS, PRECISION, UPCAST, BM, BN, RP,
        )  # fmt: skip

    @triton.jit
    def _backward_group_kernel(
        g0, g1, g2, c0, c1, c2, u0, u1, u2, t0, t1, t2, rows0, rows1, rows2, gy0, gy1, gy2, gu_ptr,
        N0, N1, N2, alpha0, alpha1, alpha2, T, R,
        WRITE_GRAD_Y: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, RP: tl.constexpr,
    ):  # fmt: skip
        """`_backward_rows_kernel` for the three projections of a group at once; U-gradient partials of
        projection p at gu_ptr[p]."""
        p = tl.program_id(1)
        _backward_rows_block(
            _pick(p, g0, g1, g2), _pick(p, c0, c1, c2), _pick(p, u0, u1, u2), _pick(p, t0, t1, t2),
            _pick(p, rows0, rows1, rows2), _pick(p, gy0, gy1, gy2), gu_ptr + p * tl.num_programs(0) * RP * RP,
            T, _pick(p, N0, N1, N2), R, _pick(p, alpha0, alpha1, alpha2), tl.program_id(0),
            WRITE_GRAD_Y, PRECISION, UPCAST, BM, BN, RP,
        )  # fmt: skip


def forward(y2, c, u, rows, bias_rows, alpha: float):
    """(out, t) for y2 (T × N): out = y2 + ((y2[:, rows] − b[rows])·(αU)ᵀ)·Cᵀ and t = y2[:, rows] − b[rows]."""
    y2, c, u = y2.contiguous(), c.contiguous(), u.contiguous()
    tokens, width = y2.shape
    rank = c.shape[1]
    out = torch.empty_like(y2)
    t = torch.empty(tokens, rank, device=y2.device, dtype=y2.dtype)
    grid, cols_per_share = _grid(tokens, width, _FORWARD, y2.device)
    _forward_kernel[grid](
        y2, c, u, rows, y2 if bias_rows is None else bias_rows, out, t, tokens, width, rank, float(alpha),
        cols_per_share, HAS_BIAS=bias_rows is not None, PRECISION=_precision(y2), UPCAST=_INTERPRET,
        BM=_FORWARD["rows"], BN=_FORWARD["tile"], RP=_rank_block(rank), num_warps=_FORWARD["warps"],
    )  # fmt: skip
    return out, t


def backward(g2, t, c, u, rows, alpha: float, need_grad_y: bool):
    """(grad_y or None, grad_u in fp32) for the output gradient g2 (T × N) of `forward`."""
    g2, c, u = g2.contiguous(), c.contiguous(), u.contiguous()
    tokens, width = g2.shape
    rank = c.shape[1]
    rank_block = _rank_block(rank)
    common = {"PRECISION": _precision(g2), "UPCAST": _INTERPRET, "RP": rank_block}
    grad_y = torch.empty_like(g2) if need_grad_y else None
    row_blocks = triton.cdiv(tokens, _BACKWARD_ROWS["rows"])
    if row_blocks >= _BACKWARD_ROWS["min_programs_per_sm"] * _sm_count(g2.device):
        partial_gu = torch.empty(row_blocks, rank_block, rank_block, device=g2.device, dtype=torch.float32)
        _backward_rows_kernel[(row_blocks,)](
            g2, c, u, t, rows, g2 if grad_y is None else grad_y, partial_gu, tokens, width, rank, float(alpha),
            WRITE_GRAD_Y=need_grad_y, BM=_BACKWARD_ROWS["rows"], BN=_BACKWARD_ROWS["tile"],
            num_warps=_BACKWARD_ROWS["warps"], **common,
        )  # fmt: skip
        return grad_y, partial_gu.sum(0)[:rank, :rank]
    reduce_grid, reduce_cols = _grid(tokens, width, _BACKWARD_REDUCE, g2.device)
    partial_gh = torch.empty(reduce_grid[1], tokens, rank_block, device=g2.device, dtype=torch.float32)
    _backward_reduce_kernel[reduce_grid](
        g2, c, g2 if grad_y is None else grad_y, partial_gh, tokens, width, rank, reduce_cols,
        WRITE_GRAD_Y=need_grad_y, BM=_BACKWARD_REDUCE["rows"], BN=_BACKWARD_REDUCE["tile"],
        num_warps=_BACKWARD_REDUCE["warps"], **common,
    )  # fmt: skip
    finish_blocks = triton.cdiv(tokens, _BACKWARD_FINISH["rows"])
    partial_gu = torch.empty(finish_blocks, rank_block, rank_block, device=g2.device, dtype=torch.float32)
    _backward_finish_kernel[(finish_blocks,)](
        g2, partial_gh, u, t, rows, g2 if grad_y is None else grad_y, partial_gu, tokens, width, rank, float(alpha),
        reduce_grid[1], WRITE_GRAD_Y=need_grad_y, BM=_BACKWARD_FINISH["rows"], num_warps=_BACKWARD_FINISH["warps"],
        **common,
    )  # fmt: skip
    return grad_y, partial_gu.sum(0)[:rank, :rank]


def forward_group(ys, cs, us, rows, biases, alphas):
    """`forward` for the three projections of a group (lists of three; all or none with a bias; one rank),
    in one launch: ([out], [t])."""
    ys, cs, us = [y.contiguous() for y in ys], [c.contiguous() for c in cs], [u.contiguous() for u in us]
    tokens, rank = ys[0].shape[0], cs[0].shape[1]
    outs = [torch.empty_like(y) for y in ys]
    ts = [torch.empty(tokens, rank, device=y.device, dtype=y.dtype) for y in ys]
    has_bias = biases[0] is not None
    _forward_group_kernel[(triton.cdiv(tokens, _FORWARD_GROUP["rows"]), 3)](
        *ys, *cs, *us, *rows, *(biases if has_bias else ys), *outs, *ts, *(y.shape[1] for y in ys),
        *(float(a) for a in alphas), tokens, rank, HAS_BIAS=has_bias, PRECISION=_precision(ys[0]),
        UPCAST=_INTERPRET, BM=_FORWARD_GROUP["rows"], BN=_FORWARD_GROUP["tile"], RP=_rank_block(rank),
        num_warps=_FORWARD_GROUP["warps"],
    )  # fmt: skip
    return outs, ts


def backward_group(gs, ts, cs, us, rows, alphas, need_grad_y: bool):
    """`backward` for `forward_group`, in one launch (the one-kernel design: three projections' blocks of rows
    fill the GPU): ([grad_y] or None, [grad_u] in fp32)."""
    gs, cs, us = [g.contiguous() for g in gs], [c.contiguous() for c in cs], [u.contiguous() for u in us]
    tokens, rank = gs[0].shape[0], cs[0].shape[1]
    rank_block = _rank_block(rank)
    grad_ys = [torch.empty_like(g) for g in gs] if need_grad_y else None
    row_blocks = triton.cdiv(tokens, _BACKWARD_GROUP["rows"])
    partial_gu = torch.empty(3, row_blocks, rank_block, rank_block, device=gs[0].device, dtype=torch.float32)
    _backward_group_kernel[(row_blocks, 3)](
        *gs, *cs, *us, *ts, *rows, *(gs if grad_ys is None else grad_ys), partial_gu, *(g.shape[1] for g in gs),
        *(float(a) for a in alphas), tokens, rank, WRITE_GRAD_Y=need_grad_y, PRECISION=_precision(gs[0]),
        UPCAST=_INTERPRET, BM=_BACKWARD_GROUP["rows"], BN=_BACKWARD_GROUP["tile"], RP=rank_block,
        num_warps=_BACKWARD_GROUP["warps"],
    )  # fmt: skip
    grad_us = partial_gu.sum(1)[:, :rank, :rank]
    return grad_ys, list(grad_us.unbind(0))
