"""Tensors of a sharded (FSDP2) model and their full, unsharded form.

FSDP2 (``torch.distributed.fsdp.fully_shard``) turns a module's parameters into ``DTensor`` shards.
Checkpoints and the EMA's saved state hold full tensors, so a run resumes on any number of ranks;
these helpers go between the two forms, and do nothing to plain tensors, so callers need no
``if sharded`` of their own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, distribute_tensor

__all__ = ['full_tensor', 'is_sharded', 'like_param', 'no_split_units', 'shard_like_params']


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a DTensor (the module went through FSDP2)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


def no_split_units(module: nn.Module) -> list[nn.Module]:
    """The submodules whose class ``module`` lists as not to be split (``_no_split_modules``
    of a transformers or diffusers model: its layer / block classes), inner ones first, so
    they can be sharded one unit each before their parents."""
    names = set(getattr(module, '_no_split_modules', None) or ())
    return [m for m in reversed(list(module.modules())) if m is not module
            and type(m).__name__ in names]


def full_tensor(value: Tensor) -> Tensor:
    """The whole tensor of a ``DTensor`` (a collective: every rank must call it, in the same
    order); a plain tensor as it is."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def like_param(value: Tensor, param: Tensor) -> Tensor:
    """``value`` (the full tensor, present on every rank) laid out as ``param``: this rank's
    shard when ``param`` is a DTensor (no communication), else ``value`` on ``param``'s device.

    Raises:
        ValueError: the shapes differ.
    """
    if tuple(value.shape) != tuple(param.shape):
        raise ValueError(f'a tensor of shape {tuple(value.shape)} cannot fill a parameter of '
                         f'shape {tuple(param.shape)}')
    if isinstance(value, DTensor) or not isinstance(param, DTensor):
        return value.to(param.device)
    return distribute_tensor(value.to(param.device_mesh.device_type), param.device_mesh,
                             param.placements, src_data_rank=None)


def shard_like_params(module: nn.Module, state: dict[str, Tensor], prefix: str = '') -> None:
    """Replace, in place, every full tensor of ``state`` (keys below ``prefix``) whose parameter
    in ``module`` is a DTensor by this rank's shard of it, so ``load_state_dict`` copies shard
    into shard. Keys the module does not hold are left for ``load_state_dict`` to report."""
    params = {prefix + name: p for name, p in module.named_parameters()
              if isinstance(p, DTensor)}
    for key, value in list(state.items()):
        param = params.get(key)
        if param is not None and isinstance(value, Tensor) and not isinstance(value, DTensor):
            state[key] = like_param(value, param)


@torch.no_grad()
def copy_into_param(param: Tensor, value: Tensor) -> None:
    """``param.copy_(value)`` for a full ``value`` of ``param``'s shape, sharded or not."""
    param.copy_(like_param(value, param))
