"""q, k and v of one attention block as one adapter computation: one kernel launch each way instead of three.

The three projections read the same input, and under torch.compile on CUDA each one's adapter is a fused Triton
kernel (`curlora.tuner.kernels`) of a few microseconds; on a small model those launches, not the bytes they move,
are much of what the adapters cost. So the first projection called (q, the group's leader) also computes k's
and v's base outputs, runs all three adapters in one launch, and holds k's and v's results; k and v, called next
with the very same input tensor, take them. Without the fused kernels (eager mode, CPU) the leader runs the three
adapters as one batch of torch ops instead (`SharedInputGroup._lead_torch_ops`): fewer autograd nodes, which is
what an eager step's host time is made of (H200 eager steps 0.02–0.06× the floor faster at 135M and 7B, mixed at
1B; docs/BENCHMARKS.md). Anything else (another input, another order, a member merged, disabled or with several
adapters) takes the ordinary per-layer path, so results never depend on the grouping beyond rounding: it changes
how many launches and autograd nodes there are, not what they compute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from curlora.tuner import kernels
from curlora.tuner.layer import autocast_output, scaled_u

# sibling layers of one parent module that are called in this order on the same input
SHARED_INPUT_NAMES = ("q_proj", "k_proj", "v_proj")


class _GroupFromBaseOutput(torch.autograd.Function):
    """`layer._FromBaseOutput` with the fused kernels, for the three projections of a group."""

    @staticmethod
    def forward(ctx, alphas, y0, y1, y2, c0, c1, c2, u0, u1, u2, rows0, rows1, rows2, bias0, bias1, bias2):
        ys, cs, us = (y0, y1, y2), (c0, c1, c2), (u0, u1, u2)
        rows, biases = (rows0, rows1, rows2), (bias0, bias1, bias2)
        outs, ts = kernels.forward_group(_flat(ys, cs), cs, us, rows, biases, alphas)
        ctx.save_for_backward(*ts, *cs, *us, *rows)
        ctx.alphas, ctx.u_dtypes = alphas, tuple(u.dtype for u in us)
        return tuple(out.view(y.shape) for out, y in zip(outs, ys, strict=True))

    @staticmethod
    def backward(ctx, g0, g1, g2):
        saved = ctx.saved_tensors
        ts, cs, us, rows = saved[0:3], saved[3:6], saved[6:9], saved[9:12]
        gs = (g0, g1, g2)
        need_y = ctx.needs_input_grad[1]
        grad_ys, grad_us = kernels.backward_group(_flat(gs, cs), ts, cs, us, rows, ctx.alphas, need_y)
        grad_ys = [None] * 3 if grad_ys is None else [gy.view(g.shape) for gy, g in zip(grad_ys, gs, strict=True)]
        grad_us = [gu.to(dtype) for gu, dtype in zip(grad_us, ctx.u_dtypes, strict=True)]
        return None, *grad_ys, None, None, None, *grad_us, *([None] * 6)


def _flat(tensors, cs):
    """Each (…, N) activation as (tokens, N)."""
    return [x.reshape(-1, c.shape[0]) for x, c in zip(tensors, cs, strict=True)]


class SharedInputGroup:
    """Three adapted sibling projections that read the same input; held by each member, not a submodule."""

    def __init__(self, members: tuple[nn.Module, nn.Module, nn.Module]) -> None:
        self.members = members
        self._input: torch.Tensor | None = None  # the leader's input while its followers' outputs wait
        self._waiting: list[torch.Tensor | None] = [None, None, None]
        self._rows_cache: tuple | None = None  # (the R buffers and their versions, their concatenation)

    def take(self, member: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """A follower's output computed by the leader for this same input, or None (then it computes its own)."""
        if self._input is None or self._input is not x:
            return None
        slot = 1 if member is self.members[1] else 2
        out = self._waiting[slot]
        self._waiting[slot] = None
        if self._waiting[1] is None and self._waiting[2] is None:
            self._input = None  # nothing left to hand out: let the input go
        return out

    def lead(self, x: torch.Tensor, name: str, result: torch.Tensor) -> torch.Tensor | None:
        """The leader's output with its followers' computed alongside, or None where the group cannot run."""
        leader, *followers = self.members
        c = leader.curlora_C._buffers[name]
        names = [name] + [m._single_base_output_adapter() for m in followers]
        if any(n is None for n in names):
            return None
        cs = [m.curlora_C._buffers[n] for m, n in zip(self.members, names, strict=True)]
        if any(f.shape[1] != c.shape[1] or f.dtype != c.dtype for f in cs):
            return None  # one rank and one factor dtype, in both forms
        if not leader._fused_kernels(result, c.shape[1]):
            return self._lead_torch_ops(x, names, cs, result)
        if len({m.base_layer.bias is not None for m in self.members}) > 1:
            return None
        ys = [result] + [m.base_layer(x) for m in followers]
        us = [m.curlora_U._parameters[n] for m, n in zip(self.members, names, strict=True)]
        rows = [m.curlora_rows._buffers[n] for m, n in zip(self.members, names, strict=True)]
        bias_rows = [m._bias_rows(n, c.dtype) for m, n in zip(self.members, names, strict=True)]
        alphas = tuple(m.curlora_alpha[n] for m, n in zip(self.members, names, strict=True))
        if torch.is_grad_enabled() and (result.requires_grad or any(u.requires_grad for u in us)):
            outs = _GroupFromBaseOutput.apply(alphas, *ys, *cs, *us, *rows, *bias_rows)
        else:
            flat, _ = kernels.forward_group(_flat(ys, cs), cs, us, rows, bias_rows, alphas)
            outs = [out.view(y.shape) for out, y in zip(flat, ys, strict=True)]
        self._input, self._waiting = x, [None, outs[1], outs[2]]
        return outs[0]

    def _lead_torch_ops(self, x, names, cs, result):
        """The eager form: the three adapters as one batch of torch ops (autograd's C++ nodes, no Python Function).

        t = x·[R_q; R_k; R_v]ᵀ is one GEMM, the three r × r products one bmm, and each output one addmm into its
        base output: 7 forward ops for the group instead of 4 per projection, and about half the backward nodes."""
        members = self.members
        us = [m.curlora_U._parameters[n] for m, n in zip(members, names, strict=True)]
        rs = [m.curlora_R._buffers[n] for m, n in zip(members, names, strict=True)]
        rank, dtype, factors = cs[0].shape[1], result.dtype, cs[0].dtype  # `lead` checked the Cs share both
        same = all(r.dtype == factors for r in rs) and len({u.dtype for u in us}) == 1
        # one dtype throughout, or autocast's output over float32 factors (autocast casts the GEMMs' operands)
        if not same or (factors != dtype or x.dtype != dtype) and not autocast_output(result, cs[0]):
            return None
        ys = [result] + [m.base_layer(x) for m in members[1:]]
        # α folded into each U in U's own dtype, then one cast of the stack (not one per member)
        u = torch.stack([scaled_u(u, m.curlora_alpha[n], u.dtype) for u, m, n in zip(us, members, names, strict=True)])
        if u.dtype != dtype:
            u = u.to(dtype)
        t = F.linear(x.reshape(-1, x.shape[-1]), self._stacked_rows(rs))  # (tokens, 3r)
        h = torch.bmm(t.view(-1, 3, rank).transpose(0, 1), u.transpose(1, 2)).unbind(0)  # 3 × (tokens, r)
        outs = [
            torch.addmm(y.reshape(-1, c.shape[0]), hp, c.t()).view(y.shape) for y, hp, c in zip(ys, h, cs, strict=True)
        ]
        self._input, self._waiting = x, [None, outs[1], outs[2]]
        return outs[0]

    def _stacked_rows(self, rs: list[torch.Tensor]) -> torch.Tensor:
        """[R_q; R_k; R_v] (3r × in), kept while the three frozen R buffers are the same tensors, unchanged.
        One made under torch.inference_mode (an evaluation) is made again outside it: autograd refuses to save
        inference tensors for backward."""
        key = [(r, r._version) for r in rs]
        cached = self._rows_cache
        stale = cached is None or (cached[1].is_inference() and not torch.is_inference_mode_enabled())
        if stale or any(a is not b or va != vb for (a, va), (b, vb) in zip(cached[0], key, strict=True)):
            cached = self._rows_cache = (key, torch.cat(rs))
        return cached[1]


def link_shared_input_groups(model: nn.Module, layer_type: type) -> None:
    """Give every parent's adapted q/k/v (all three `layer_type`, one input width) a group."""
    for parent in model.modules():
        members = [getattr(parent, n, None) for n in SHARED_INPUT_NAMES]
        if all(isinstance(m, layer_type) for m in members) and len({m.in_features for m in members}) == 1:
            group = SharedInputGroup(tuple(members))
            for member in members:
                member._shared_input_group = group
