"""Several processes, one GPU each (`accelerate launch`, `torchrun`): process group, data sharding, gradient sync.

The bench (`curlora.recipes.bench`) uses these helpers so that `curlora bench` runs unchanged under
`accelerate launch --config_file configs/accelerate/ddp.yaml -m curlora bench ...` (replicated model, gradients
averaged by one flattened all-reduce per step) or `.../fsdp.yaml` (FSDP2 `fully_shard` of the decoder layers and
the transformer body). A process started without WORLD_SIZE > 1 gets `SINGLE` and every helper is a no-op.
docs/DISTRIBUTED.md describes the design.
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from curlora.errors import CurloraError

log = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among `world_size` processes and whether the model is FSDP-sharded."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise CurloraError(f"environment variable {name}={value!r} is not an integer") from None


def launched_world_size() -> int:
    """WORLD_SIZE as set by `accelerate launch` / `torchrun` (1 when not launched that way)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return _env_int("WORLD_SIZE", 1)


def is_main_process() -> bool:
    """True on rank 0 or in a single process; usable before the process group exists (reads RANK)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return _env_int("RANK", 0) == 0


def fsdp_requested() -> bool:
    """`accelerate launch` with an FSDP config exports ACCELERATE_USE_FSDP=true."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").strip().lower() in _TRUE


def setup(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group when launched with WORLD_SIZE > 1 (nccl for CUDA, gloo for CPU) and return this
    process's `DistInfo` and device (`cuda:LOCAL_RANK` on GPUs). An already initialised group is reused."""
    dist = torch.distributed
    if not dist.is_available() or (not dist.is_initialized() and _env_int("WORLD_SIZE", 1) <= 1):
        return SINGLE, device
    local_rank = _env_int("LOCAL_RANK", _env_int("RANK", 0))
    if device.type == "cuda":
        if device.index is not None and device.index != local_rank:
            raise CurloraError(
                f"--device {device}: with several processes each one uses cuda:LOCAL_RANK; pass --device cuda "
                "(or auto) and choose the GPUs with CUDA_VISIBLE_DEVICES or accelerate's --gpu_ids"
            )
        if local_rank >= torch.cuda.device_count():
            raise CurloraError(
                f"process LOCAL_RANK={local_rank} has no GPU: only {torch.cuda.device_count()} visible; "
                "launch at most one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CurloraError(f"multi-process runs support cuda and cpu devices, not {device.type}")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kwargs)
        atexit.register(_shutdown)
        log.debug("rank %d/%d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    world = dist.get_world_size()
    if world == 1:
        return SINGLE, device
    info = DistInfo(rank=dist.get_rank(), world_size=world, local_rank=local_rank, fsdp=fsdp_requested())
    return info, device


def _shutdown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier(info: DistInfo, group=None) -> None:
    """Wait for every rank (of `group`, default: all); a no-op for one process."""
    if info.enabled:
        torch.distributed.barrier(group=group)


# -- data -----------------------------------------------------------------------------------------------------
def shard_range(n: int, rank: int, world_size: int) -> range:
    """This rank's contiguous part of n items; parts differ in size by at most one (the first ranks get more)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def local_rows(
    ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, index: torch.Tensor, info: DistInfo
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """This rank's contiguous slice of one global (right-padded) batch, padding trimmed to its longest row, and
    the loss scale that makes averaged gradients equal one process's: `sum of per-example losses * scale` with
    scale = world_size / global batch size. A rank whose slice is empty (a last batch smaller than the number
    of ranks) takes the batch's first row with scale 0, so that it still runs the forward and backward that
    the collectives (FSDP) expect and contributes a zero gradient."""
    rows = shard_range(len(index), info.rank, info.world_size)
    scale = info.world_size / len(index)
    if len(rows) == 0:
        rows, scale = range(0, 1), 0.0
    sl = slice(rows.start, rows.stop)
    ids, mask = ids[sl], mask[sl]
    width = int(mask.sum(dim=1).max())
    return ids[:, :width], mask[:, :width], labels[sl], index[sl], scale


# -- collectives ------------------------------------------------------------------------------------------------
def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _flat_groups(tensors: Sequence[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


def average_grads_(params: Sequence[nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of `params` over the ranks, in place: one flattened all-reduce per (device, dtype).
    Every rank must pass the same parameters in the same order; a missing gradient counts as zero."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for grads in _flat_groups([p.grad for p in params]).values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat.div_(info.world_size)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def sum_over_ranks_(t: torch.Tensor, info: DistInfo, group=None) -> torch.Tensor:
    if info.enabled:
        torch.distributed.all_reduce(t, group=group)
    return t


@torch.no_grad()
def broadcast_(tensors: Sequence[torch.Tensor], info: DistInfo, src: int = 0) -> None:
    """Give every rank rank `src`'s values (in place)."""
    if info.enabled:
        for t in tensors:
            torch.distributed.broadcast(t.data, src=src)


@torch.no_grad()
def check_replicated(module: nn.Module, info: DistInfo, what: str = "model") -> None:
    """Raise CurloraError unless every rank holds the same parameters and buffers (a float64 sum per tensor is
    compared), e.g. CURLoRA's C/R selection, which each rank makes on its own from the same seed and weights."""
    if not info.enabled:
        return
    named = list(module.named_parameters()) + list(module.named_buffers())
    if not named:
        return
    device = named[0][1].device
    sums = torch.stack([t.detach().to(device).sum(dtype=torch.float64) for _, t in named])
    gathered = [torch.empty_like(sums) for _ in range(info.world_size)]
    torch.distributed.all_gather(gathered, sums)
    for r, other in enumerate(gathered):
        differ = ~torch.isclose(other, gathered[0], rtol=0, atol=0, equal_nan=True)
        if bool(differ.any()):
            name = named[int(differ.nonzero()[0])][0]
            raise CurloraError(
                f"the {what} differs between rank 0 and rank {r} (first at {name}): every process must load "
                "the same base weights (same checkpoint, or the same seed for a random init)"
            )


# -- FSDP -------------------------------------------------------------------------------------------------------
def _layer_classes(body: nn.Module, model: nn.Module) -> set[str]:
    """FSDP_TRANSFORMER_CLS_TO_WRAP (accelerate's fsdp_transformer_layer_cls_to_wrap), else the model's
    `_no_split_modules` (LlamaDecoderLayer, GPT2Block, ...)."""
    names = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if names.strip():
        return {n.strip() for n in names.split(",") if n.strip()}
    for m in (model, body):
        found = getattr(m, "_no_split_modules", None)
        if found:
            return set(found)
    return set()


def fully_shard_body(body: nn.Module, model: nn.Module, device: torch.device, info: DistInfo) -> list[nn.Module]:
    """FSDP2 `fully_shard` every transformer layer of `body` (the transformer body, e.g. LlamaModel) and then
    `body` itself, which becomes the root: calling `body` (classification) or the whole model (perplexity) runs
    FSDP's hooks. Parameters are sharded on dim 0 across the ranks; buffers (CURLoRA's C and R, rotary tables)
    stay whole on every rank. Returns the sharded modules, layers first, root last.

    Parts outside `body` (the LM head) are not sharded; a head tied to the input embedding keeps a full copy
    of that weight on every rank. FSDP_RESHARD_AFTER_FORWARD=false keeps layers gathered between forward
    and backward (more memory, fewer all-gathers)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    classes = _layer_classes(body, model)
    layers = [m for m in body.modules() if type(m).__name__ in classes and m is not body]
    if not layers:
        raise CurloraError(
            f"FSDP: found no transformer layer of class {sorted(classes) or '?'} in {type(body).__name__}; "
            "set fsdp_transformer_layer_cls_to_wrap in the accelerate config"
        )
    mesh = init_device_mesh(device.type, (info.world_size,))
    reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower() in _TRUE
    for layer in layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(body, mesh=mesh, reshard_after_forward=reshard)
    return [*layers, body]


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered from the ranks' shards for an FSDP parameter (a collective), else `t`."""
    return t.full_tensor() if is_sharded(t) else t


@contextmanager
def unsharded(module: nn.Module) -> Iterator[None]:
    """Inside the block, the parameters of one FSDP-sharded module (its own group, not its sharded children)
    are whole, plain tensors on every rank. A collective: every rank must enter it."""
    module.unshard()
    try:
        yield
    finally:
        module.reshard()
