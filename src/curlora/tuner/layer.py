"""The CURLoRA layer: y = base(x) + α·((x·Rᵀ)·Uᵀ)·Cᵀ, never building the out × in product.

C (out × r) and R (r × in) are frozen copies of W's selected columns and rows, held as non-persistent buffers
in the base layer's dtype and device (they follow `.to()`/`.half()`). What is saved per adapter: U, the column
and row indices, and a fingerprint of C and R. Loading rebuilds C and R from the indices and the (unmerged)
base weight and checks the fingerprint, so an adapter put on the wrong base model fails loudly.

Because R holds rows of W, x·Rᵀ is already inside the base output: (x·Wᵀ + b)[..., rows] − b[rows]. The
forward takes it from there (`_FromBaseOutput`) instead of reading x again, and its backward adds the adapter's
gradient into r columns of the output gradient instead of building an in-sized gradient for x: the adapter then
costs two skinny GEMMs and one pass over the output each way, whatever the input width. This rests on W being
the weight the adapter was made from (the same contract as loading: C and R are rebuilt from W), so it is used
only where that holds — a frozen plain nn.Linear/Conv1D, one active adapter, nothing merged — and
`reuse_base_output=False` in the config turns it off. Under torch.compile on CUDA this path runs as the fused
Triton kernels of `curlora.tuner.kernels` (one launch forward, one or two backward, instead of ~9).

Elsewhere (eager mode, CPU) it runs as plain torch ops that autograd differentiates (`base_output_ops`): an eager
step is bound by host work, and C++ autograd nodes cost less host time than a Python autograd.Function's forward
and backward calls (perf/host_bench.py). For the same reason `forward` reads the layer's state through plain
attribute and dict lookups rather than PEFT's properties and the ParameterDict/BufferDict accessors.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer, check_adapters_to_merge
from torch import nn
from transformers.pytorch_utils import Conv1D

from curlora import cur
from curlora.errors import CurloraError
from curlora.tuner import basis, kernels, mixed
from curlora.tuner.saved import fit_fingerprint_buffers


def scaled_u(u: torch.Tensor, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """α·U in the factors' dtype: α is folded into the r × r matrix, never applied to an activation."""
    if alpha != 1.0:
        u = alpha * u
    return u if u.dtype == dtype else u.to(dtype)  # no dispatch for a no-op cast: eager steps are host-bound


def base_output_ops(y, c, u, rows, bias_rows, alpha: float):
    """y + α·((y[..., rows] − b[rows])·Uᵀ)·Cᵀ as torch ops (the eager base-output path; autograd differentiates it).

    The gradient autograd forms for y is g + scatter(rows, α·(g·C)·U), as `_FromBaseOutput`'s backward: only
    through y's r selected columns, never in-sized. For U it is (α·(g·C)ᵀ·t) in U's dtype, also the same."""
    y2 = y.reshape(-1, c.shape[0])
    t = y2.index_select(1, rows)
    if bias_rows is not None:
        t = t - bias_rows
    return torch.addmm(y2, F.linear(t, scaled_u(u, alpha, c.dtype)), c.t()).view(y.shape)


class _FromBaseOutput(torch.autograd.Function):
    """out = y + α·((y[..., rows] − b[rows])·Uᵀ)·Cᵀ for y = x·Wᵀ + b with R = W[rows]; gradients for y and U.

    The gradient for y is g + scatter(rows, α·(g·C)·U): one copy of the out-sized gradient with r columns
    updated, instead of the in-sized (g·C·αU)·R that the x·Rᵀ formulation sends back to x. With `fused`, the
    same math runs as the Triton kernels of `curlora.tuner.kernels` (CUDA under torch.compile), else as torch ops.
    The layer uses it with `fused` only; without, `base_output_ops` is cheaper on the host (the tests keep this
    torch-ops form as the kernels' reference).
    """

    @staticmethod
    def compute(y, c, u, rows, bias_rows, alpha: float, fused: bool):
        """(out, t, αU) with t = y[..., rows] − b[rows]; αU is None when fused (the kernels form it themselves).
        Also used directly where no gradient is needed."""
        y2 = y.reshape(-1, c.shape[0])
        if fused:
            out, t = kernels.forward(y2, c, u, rows, bias_rows, alpha)
            return out.view(y.shape), t, None
        t = y2.index_select(1, rows)
        if bias_rows is not None:
            t = t - bias_rows
        ua = scaled_u(u, alpha, c.dtype)
        return torch.addmm(y2, F.linear(t, ua), c.t()).view(y.shape), t, ua

    @staticmethod
    def forward(ctx, y, c, u, rows, bias_rows, alpha: float, fused: bool):
        out, t, ua = _FromBaseOutput.compute(y, c, u, rows, bias_rows, alpha, fused)
        # the torch ops reuse the forward's αU; the kernels take U as it is
        ctx.save_for_backward(t, u if fused else ua, c, rows)
        ctx.alpha, ctx.fused, ctx.u_dtype = alpha, fused, u.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        t, u_or_ua, c, rows = ctx.saved_tensors
        need_y, need_u = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
        if ctx.fused:
            g2 = grad_out.reshape(-1, c.shape[0])
            grad_y, grad_u = kernels.backward(g2, t, c, u_or_ua, rows, ctx.alpha, need_grad_y=need_y)
            grad_y = None if grad_y is None else grad_y.view(grad_out.shape)
            return grad_y, None, grad_u.to(ctx.u_dtype) if need_u else None, None, None, None, None
        grad_y, grad_u = _FromBaseOutput.torch_backward(
            grad_out, t, u_or_ua, c, rows, ctx.alpha, ctx.u_dtype, need_y, need_u
        )
        return grad_y, None, grad_u, None, None, None, None

    @staticmethod
    def torch_backward(grad_out, t, ua, c, rows, alpha: float, u_dtype, need_y: bool, need_u: bool):
        """(grad_y, grad_u) as torch ops; also the eager q/k/v group's backward (`curlora.tuner.group`)."""
        g2 = grad_out.reshape(-1, c.shape[0])
        gh = g2.mm(c)
        grad_y = grad_u = None
        if need_u:
            grad_u = gh.t().mm(t)
            if grad_u.dtype != u_dtype:
                grad_u = grad_u.to(u_dtype)
            if alpha != 1.0:
                grad_u = grad_u * alpha
        if need_y:
            grad_y = g2.index_add(1, rows, gh.mm(ua)).view(grad_out.shape)
        return grad_y, grad_u


def autocast_output(result: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether `result` is an autocast GEMM's output over float32 weights, for the torch-ops path.

    Autocast multiplies x and W both cast to its dtype, and would multiply x and R = W[rows] cast the same way,
    so the base output's columns are the x·Rᵀ the other path computes. The fused kernels take one dtype for
    activations and factors, so under autocast they keep the x·Rᵀ path (their `usable` is asked last: it is
    the most host work)."""
    device = result.device.type
    return (
        c.dtype == torch.float32
        and torch.is_autocast_enabled(device)
        and result.dtype == torch.get_autocast_dtype(device)
        and not kernels.usable(result, c.shape[1])
    )


# base layers whose output is exactly x·Wᵀ + b (checked by exact type: a subclass may compute something else)
_PLAIN_BASES = (nn.Linear, Conv1D)


class CURLoRALayer(BaseTunerLayer):
    adapter_layer_names = ("curlora_U",)
    other_param_names = (
        "curlora_alpha",
        "curlora_reuse_base_output",
        "curlora_basis",
        "curlora_layer_seed",
        "curlora_cols",
        "curlora_rows",
        "curlora_fingerprint",
        "curlora_C",
        "curlora_R",
    )

    def __init__(self, base_layer: nn.Module, **kwargs: Any) -> None:
        self.base_layer = base_layer
        self.curlora_U = nn.ParameterDict({})
        self.curlora_alpha: dict[str, float] = {}
        self.curlora_reuse_base_output: dict[str, bool] = {}
        # which C and R (`curlora.tuner.basis`) and the layer's seed they are rebuilt from; the config holds both
        self.curlora_basis: dict[str, str] = {}
        self.curlora_layer_seed: dict[str, int] = {}
        # indices and fingerprint are saved; the fingerprint's float64 bits are stored as int64 so that
        # `.half()` or `.to(bf16)` on the model cannot round it
        self.curlora_cols = BufferDict({}, persistent=True)
        self.curlora_rows = BufferDict({}, persistent=True)
        self.curlora_fingerprint = BufferDict({}, persistent=True)
        self.curlora_C = BufferDict({}, persistent=False)
        self.curlora_R = BufferDict({}, persistent=False)
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.kwargs = kwargs
        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            self.in_features, self.out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            self.in_features, self.out_features = base.weight.shape
        else:
            raise CurloraError(
                f"CURLoRA adapts nn.Linear and transformers Conv1D layers, not {type(base).__name__}; "
                "choose other target_modules"
            )

    # -- the base weight, always as out × in ------------------------------------------------------------------
    def dense_weight(self) -> torch.Tensor:
        """The base weight as a dense out × in tensor (the bitsandbytes variants dequantize it)."""
        weight = self.get_base_layer().weight
        return weight.T if self.fan_in_fan_out else weight

    def unmerged_dense_weight(self) -> torch.Tensor:
        if self.merged:
            raise CurloraError(
                "this layer has merged adapters; call unmerge_adapter() before adding or loading a CURLoRA adapter"
            )
        return self.dense_weight()

    # -- adapter creation -------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config, layer_name: str = "", inference_mode: bool = False) -> None:
        weight = self.unmerged_dense_weight()
        if weight.device.type == "meta":
            raise CurloraError("CURLoRA selects columns from real weights; load the model's weights (not meta)")
        seed = cur.layer_seed(config.seed, layer_name)
        try:
            selection = cur.cur_select(weight, config.r, config.sampling, seed=seed, replacement=config.replacement)
        except CurloraError as err:
            raise CurloraError(f"{layer_name or 'layer'}: {err}") from None
        self.curlora_alpha[adapter_name] = float(config.alpha)
        adapter_basis = config.basis
        self.curlora_basis[adapter_name] = adapter_basis
        self.curlora_layer_seed[adapter_name] = seed
        # only CUR's R holds rows of W: the other bases take x·Rᵀ from x (and stay out of the q/k/v group)
        self.curlora_reuse_base_output[adapter_name] = bool(config.reuse_base_output) and adapter_basis == "cur"
        self.curlora_cols[adapter_name] = selection.cols
        self.curlora_rows[adapter_name] = selection.rows
        u_dtype = getattr(torch, config.u_dtype)  # a name from config.U_DTYPES
        self.curlora_U[adapter_name] = nn.Parameter(
            torch.zeros(config.r, config.r, dtype=u_dtype, device=weight.device)
        )
        self._build_factors(adapter_name)
        self.curlora_fingerprint[adapter_name] = self._current_fingerprint(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _build_factors(self, adapter_name: str) -> None:
        weight = self.unmerged_dense_weight()
        cols = self.curlora_cols[adapter_name].to(torch.int64)
        rows = self.curlora_rows[adapter_name].to(torch.int64)
        out_f, in_f = weight.shape
        if cols.numel() != rows.numel() or cols.numel() != self.curlora_U[adapter_name].shape[0]:
            raise CurloraError(
                f"adapter {adapter_name!r} is inconsistent: {cols.numel()} columns, {rows.numel()} rows, "
                f"U of shape {tuple(self.curlora_U[adapter_name].shape)}; the adapter file is corrupted"
            )
        if cols.numel() and (
            int(cols.min()) < 0 or int(cols.max()) >= in_f or int(rows.min()) < 0 or int(rows.max()) >= out_f
        ):
            raise CurloraError(
                f"adapter {adapter_name!r} indexes outside this {out_f} × {in_f} weight: it was made for a "
                "different base model; load it onto the model it was trained on"
            )
        selection = cur.CURSelection(cols=cols, rows=rows)
        c, r = basis.factors(weight, selection, self.curlora_basis[adapter_name], self.curlora_layer_seed[adapter_name])
        self.curlora_C[adapter_name] = c
        self.curlora_R[adapter_name] = r
        # indices live with the weight so that save/load and DDP see one device
        self.curlora_cols[adapter_name] = cols.to(weight.device)
        self.curlora_rows[adapter_name] = rows.to(weight.device)

    def _current_fingerprint(self, adapter_name: str) -> torch.Tensor:
        fp = cur.fingerprint(self.curlora_C[adapter_name], self.curlora_R[adapter_name])
        return fp.view(torch.int64).to(self.dense_weight().device)

    def _after_load(self) -> None:
        """Rebuild C and R from freshly loaded indices; refuse an adapter made for another base model."""
        for name in list(self.curlora_U.keys()):
            self._build_factors(name)
            saved = self.curlora_fingerprint[name].detach().cpu().view(torch.float64)
            now = self._current_fingerprint(name).cpu().view(torch.float64)
            # widened by CURLoRAModel for an adapter made on a base quantized differently (docs/QUANTIZED.md)
            rtol = getattr(self, "_curlora_fingerprint_rtol", {}).get(name)
            if not cur.fingerprints_match(saved, now, **({} if rtol is None else {"rtol": rtol})):
                raise CurloraError(
                    f"adapter {name!r} does not match this base model: the C and R rebuilt from its weights "
                    f"differ (fingerprint {saved[:4].tolist()}... vs {now[:4].tolist()}...); load it onto "
                    "the base model it was trained on"
                )
            if rtol is not None:  # from now on the adapter belongs to this base: save its fingerprint
                self.curlora_fingerprint[name] = self._current_fingerprint(name)

    # -- math -------------------------------------------------------------------------------------------------
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """α·C·U·R in the base weight's storage layout (transposed for Conv1D), in the base weight's dtype."""
        c = self.curlora_C[adapter_name].float()
        r = self.curlora_R[adapter_name].float()
        u = self.curlora_U[adapter_name].float()
        delta = cur.delta_weight(c, u, r, self.curlora_alpha[adapter_name])
        if self.fan_in_fan_out:
            delta = delta.T
        return delta.to(self.get_base_layer().weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        base = self.get_base_layer()
        for name in adapter_names:
            if name not in self.curlora_U:
                continue
            merged = base.weight.data + self.get_delta_weight(name)
            if safe_merge and not torch.isfinite(merged).all():
                raise CurloraError(f"merging adapter {name!r} gives NaN/Inf weights; the adapter is broken")
            base.weight.data = merged
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.curlora_U:
                base.weight.data = base.weight.data - self.get_delta_weight(name)


class CURLoRALinear(nn.Module, CURLoRALayer):
    """CURLoRA around an nn.Linear (fan_in_fan_out=False) or a GPT-2 Conv1D (fan_in_fan_out=True)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, config, layer_name: str = "", **kwargs: Any):
        super().__init__()
        CURLoRALayer.__init__(self, base_layer, **kwargs)
        self.fan_in_fan_out = isinstance(self.get_base_layer(), Conv1D)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, layer_name=layer_name, inference_mode=config.inference_mode)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._after_load())
        self.register_load_state_dict_pre_hook(fit_fingerprint_buffers)  # older 4-number fingerprints
        # q, k and v of one block, set by CURLoRAModel (`curlora.tuner.group`); a plain attribute, not a submodule
        self._shared_input_group = None
        # per-row factor stacks of mixed-adapter batches, kept for one model call (`curlora.tuner.mixed`)
        self._mixed_banks: dict | None = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # Only Python-side, non-data-dependent branches (flags, adapter names, dtypes), so that
        # torch.compile(fullgraph=True) traces this without graph breaks (tests/test_compile.py). The state is read
        # as plain attributes (`_disable_adapters`, not the `disable_adapters` property): eager steps are host-bound.
        if kwargs and "adapter_names" in kwargs:
            adapter_names = kwargs.pop("adapter_names")
            if adapter_names is not None and not self._disable_adapters:
                return mixed.mixed_batch_forward(self, x, adapter_names, *args, **kwargs)
        group = self._shared_input_group if not args and not kwargs else None
        if group is not None and group.members[0] is not self:
            taken = group.take(self, x)  # computed by the group's leader for this very input
            if taken is not None:
                return taken
        if self._disable_adapters:
            if self.merged_adapters:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged_adapters:
            return result
        names = self._active_here()
        if len(names) == 1 and self._can_reuse_base_output(names[0], result):
            if group is not None and group.members[0] is self:
                grouped = group.lead(x, names[0], result)
                if grouped is not None:
                    return grouped
            return self._add_from_base_output(names[0], result)
        for name in names:
            result = self._add_from_input(name, x, result)
        return result

    def _can_reuse_base_output(self, name: str, result: torch.Tensor) -> bool:
        """Whether result[..., rows] − b[rows] is x·Rᵀ: a frozen plain Linear/Conv1D in the factors' dtype, or
        in autocast's dtype where the factors are float32 (HF Trainer's `bf16=True` on a float32 model)."""
        c = self.curlora_C._buffers[name]
        if result.dtype != c.dtype and not autocast_output(result, c):
            return False
        return self._frozen_plain_base(name)

    def _frozen_plain_base(self, name: str) -> bool:
        base = self.base_layer  # this class wraps its base directly (no nested tuner layers)
        if not self.curlora_reuse_base_output[name] or type(base) not in _PLAIN_BASES:
            return False
        bias = base.bias
        return not base.weight.requires_grad and (bias is None or not bias.requires_grad)

    def _single_base_output_adapter(self) -> str | None:
        """The one active adapter, where this layer would take the base-output path for an output in its
        factors' dtype (as `forward` decides); else None. Asked by its group's leader before computing for it."""
        if self._disable_adapters or self.merged_adapters:
            return None
        names = self._active_here()
        return names[0] if len(names) == 1 and self._frozen_plain_base(names[0]) else None

    def _active_here(self) -> list[str]:
        """The active adapters this layer holds."""
        active, held = self._active_adapter, self.curlora_U._parameters  # a str or a list of str (PEFT)
        if isinstance(active, str):
            return [active] if active in held else []
        return [name for name in active if name in held]

    def _bias_rows(self, name: str, dtype: torch.dtype) -> torch.Tensor | None:
        """b[rows] in `dtype`: what the base output holds beyond x·Rᵀ at the adapter's rows (None: no bias)."""
        bias = self.base_layer.bias
        return None if bias is None else bias.index_select(0, self.curlora_rows[name]).to(dtype)

    def _add_from_base_output(self, name: str, result: torch.Tensor) -> torch.Tensor:
        rows = self.curlora_rows._buffers[name]
        bias_rows = self._bias_rows(name, result.dtype)
        c, u, alpha = self.curlora_C._buffers[name], self.curlora_U._parameters[name], self.curlora_alpha[name]
        if not self._fused_kernels(result, c.shape[1]):
            # autograd's C++ nodes, not a Python autograd.Function: cheaper on the host, same gradients
            return base_output_ops(result, c, u, rows, bias_rows, alpha)
        if torch.is_grad_enabled() and (result.requires_grad or u.requires_grad):
            return _FromBaseOutput.apply(result, c, u, rows, bias_rows, alpha, True)
        return _FromBaseOutput.compute(result, c, u, rows, bias_rows, alpha, True)[0]

    def _fused_kernels(self, result: torch.Tensor, rank: int) -> bool:
        """Whether the base-output path runs as Triton kernels (CUDA, Triton, torch.compile) or as torch ops."""
        return kernels.usable(result, rank)

    def _add_from_input(self, name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        c, r = self.curlora_C[name], self.curlora_R[name]
        u = scaled_u(self.curlora_U[name], self.curlora_alpha[name], c.dtype)
        h = F.linear(F.linear(x.to(r.dtype), r), u)
        if result.dtype == c.dtype:
            # result + h·Cᵀ as one GEMM with the add in its epilogue (beta=1): no out-sized temporary and
            # no separate elementwise pass over the output, forward or backward
            out_f, rank = c.shape
            return torch.addmm(result.reshape(-1, out_f), h.reshape(-1, rank), c.t()).view(result.shape)
        # e.g. under autocast, where the base output's dtype is not the factors'
        return result + F.linear(h, c).to(result.dtype)

    def __repr__(self) -> str:
        return "curlora." + super().__repr__()
