"""Fully sharded data parallel (FSDP2) for a distiller, and its full-state checkpoints.

Chosen in the config by the model wrapper (DDP stays the default for models that fit)::

    model_wrapper_cfg = dict(type='rtdmd.DistillerFullyShard', reshard_after_forward=True,
                             param_dtype=None, reduce_dtype='float32')

The generator and the fake score are each sharded over all ranks with
``torch.distributed.fsdp.fully_shard``: every transformer block the backbone names
(:meth:`~rtdmd.models.backbones.base.Backbone.shard_units`) is its own unit, then the network's
root holds the rest. Frozen base weights are sharded too; the teacher (the fake score's module
with adapters disabled) runs through the same sharded module. FSDP1 (what mmengine's
``FSDPStrategy`` wraps) cannot hold fp32 LoRA weights on a bf16 base in one flat parameter; FSDP2
keeps each parameter's own dtype.

Text encoders (frozen, never in a checkpoint) are placed by ``text_encoders``: ``'replicate'``
(every rank holds a whole copy), ``'shard'`` (FSDP2 over all ranks, one unit per layer: a rank
holds 1/N and gathers one layer, and the prefetched next, while the encoder runs) or
``'offload'`` (the same sharding with FSDP2's ``CPUOffloadPolicy``: the shards live in CPU memory
and each layer is copied to the GPU and gathered for its forward). See :func:`shard_frozen`.

Checkpoints hold full tensors, exactly what a DDP or single-process run writes: before a save,
every rank joins :func:`gather_checkpoint_state` (``get_model_state_dict`` /
``get_optimizer_state_dict`` with ``full_state_dict=True, cpu_offload=True``) and rank 0 writes
the result; a load lays every full tensor out as this rank's shard (``shard_like_params``,
:meth:`NonFiniteGuardOptimWrapper.load_state_dict`). So a run resumes on any number of ranks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

from rtdmd.registry import MODEL_WRAPPERS
from rtdmd.utils.sharding import is_sharded, no_split_units, shard_like_params

from .wrappers import DistillerWrapper

__all__ = ['TEXT_ENCODER_PLACEMENTS', 'DistillerFullyShard', 'full_optimizer_state',
           'gather_checkpoint_state', 'load_full_optimizer_state', 'local_shards', 'shard_frozen']

DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': torch.float32}
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)
TEXT_ENCODER_PLACEMENTS = ('replicate', 'shard', 'offload')


def _dtype(name: str | None, key: str) -> torch.dtype | None:
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f'model_wrapper_cfg.{key} must be one of {sorted(DTYPES)} or None, '
                         f'got {name!r}')
    return DTYPES[name]


@MODEL_WRAPPERS.register_module()
class DistillerFullyShard(DistillerWrapper):
    """Shards the distiller's trainable roles with FSDP2, per transformer block, in place.

    The wrapper holds no parameters of its own, so state dicts look the same with and
    without it; ``Backbone.net(role)`` is the role's module itself (FSDP2 works in place).

    Args:
        module: the distiller.
        reshard_after_forward: free the gathered weights of a unit after its forward (and
            gather them again for backward): least memory; ``False`` keeps them until backward.
        param_dtype: dtype of the gathered weights used for compute; ``None`` keeps every
            parameter's own (a bf16 base with fp32 LoRA masters; the backbone's autocast makes
            the compute bf16).
        reduce_dtype: dtype of the gradient reduce-scatter (fp32: LoRA gradients are averaged
            over ranks without rounding); ``None`` is the gradients' own.
        roles: the roles to shard.
        text_encoders: ``'replicate'`` (default: a whole copy on every rank), ``'shard'`` or
            ``'offload'`` (CPU memory, streamed per layer), see :func:`shard_frozen`.
        find_unused_parameters: DDP's option, accepted and unused (FSDP2 needs no such
            search), so a DDP config switches to FSDP by its wrapper's type alone:
            ``--cfg-options model_wrapper_cfg.type=rtdmd.DistillerFullyShard``.
    """

    def __init__(self, module: nn.Module, reshard_after_forward: bool = True,
                 param_dtype: str | None = None, reduce_dtype: str | None = 'float32',
                 roles: Sequence[str] = ('generator', 'fake_score'),
                 find_unused_parameters: bool = False,
                 text_encoders: Literal['replicate', 'shard', 'offload'] = 'replicate') -> None:
        super().__init__()
        if text_encoders not in TEXT_ENCODER_PLACEMENTS:
            raise ValueError(f'model_wrapper_cfg.text_encoders must be one of '
                             f'{list(TEXT_ENCODER_PLACEMENTS)}, got {text_encoders!r}')
        policy = MixedPrecisionPolicy(param_dtype=_dtype(param_dtype, 'param_dtype'),
                                      reduce_dtype=_dtype(reduce_dtype, 'reduce_dtype'))
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError('DistillerFullyShard needs torch.distributed: launch with '
                               'tools/dist_train.sh (or --launcher pytorch / slurm)')
        self.module = module
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
        self.mesh = init_device_mesh(device, (dist.get_world_size(),))
        backbone = module.backbone
        for role in roles:
            net = getattr(backbone, role)
            for unit in backbone.shard_units(role):
                fully_shard(unit, mesh=self.mesh, mp_policy=policy,
                            reshard_after_forward=reshard_after_forward)
            fully_shard(net, mesh=self.mesh, mp_policy=policy,
                        reshard_after_forward=reshard_after_forward)
            net.register_load_state_dict_pre_hook(_shard_incoming)
        if text_encoders != 'replicate':
            for encoder in backbone.text_encoders():
                shard_frozen(encoder, self.mesh, offload=text_encoders == 'offload')
        # state_dict() gives full tensors on every rank, as under DDP: mmengine broadcasts
        # the state dict after init_weights, and every reader sees the same layout.
        module._register_state_dict_hook(_gather_shards)



def shard_frozen(encoder: nn.Module, mesh: Any, offload: bool = False) -> None:
    """Shard a frozen model (a text encoder) with FSDP2 in place, for forwards only.

    Units, inner first: every layer the model names as not to be split (its
    ``_no_split_modules``: ``T5Block``, ``CLIPEncoderLayer``, ``Qwen3DecoderLayer``), then its
    base model (transformers' ``base_model``: a caller may run a causal LM's decoder stack
    alone, without its vocabulary head; the first unit to run forward becomes FSDP's root), then
    the model itself (what is left: a head, a projection). Every unit frees its gathered weights
    after its forward (also the root's: no backward follows). A model without layer classes is
    one unit. The weights keep their dtype (no mixed-precision cast), so a forward computes what
    the replicated model computes.

    Args:
        encoder: the model; its parameters need no gradients.
        mesh: the 1-D device mesh of all ranks.
        offload: keep the shards in CPU memory (FSDP2's ``CPUOffloadPolicy``, pinned when CUDA is
            present); each unit is copied to the device and gathered for its forward.
    """
    if any(p.requires_grad for p in encoder.parameters()):
        raise ValueError(f'{type(encoder).__name__}: shard_frozen shards frozen models only '
                         f'(some parameters require gradients)')
    placement = (CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if offload
                 else OffloadPolicy())
    base = getattr(encoder, 'base_model', encoder)
    units = [*no_split_units(encoder), *([base] if base is not encoder else []), encoder]
    with _output_capture_kept(encoder):
        for unit in units:
            fully_shard(unit, mesh=mesh, reshard_after_forward=True, offload_policy=placement)


@contextlib.contextmanager
def _output_capture_kept(model: nn.Module) -> Iterator[None]:
    """Keep a transformers model's ``output_hidden_states`` working across ``fully_shard``.

    transformers (5.x) records hidden states through hooks it looks up in a registry keyed by
    the model's class name; ``fully_shard`` gives every unit a new class (``FSDP<name>``), so
    the lookup would find nothing and ``hidden_states`` would come back ``None`` (SD3's CLIP
    features are ``hidden_states[-2]``). The entries are registered again under the new classes.
    """
    try:
        from transformers import PreTrainedModel
        from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY as registry
    except ImportError:  # an older transformers: no such registry, nothing to keep
        yield
        return
    entries = [(m, registry.get(m)) for m in model.modules() if isinstance(m, PreTrainedModel)]
    yield
    for module, entry in entries:
        registry[module] = entry


_LOCAL_DEPTH = [0]


@contextlib.contextmanager
def local_shards() -> Iterator[None]:
    """Inside, ``state_dict()`` of a sharded distiller keeps this rank's shards instead of
    gathering: for a caller that runs on one rank alone (mmengine's ``save_checkpoint`` runs on
    rank 0 only, so the checkpoint hook gathers on every rank beforehand)."""
    _LOCAL_DEPTH[0] += 1
    try:
        yield
    finally:
        _LOCAL_DEPTH[0] -= 1


def _gather_shards(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    """State-dict hook of a sharded distiller: every DTensor becomes its full tensor (a
    collective over the kept entries, in the state dict's order, the same on every rank)."""
    if _LOCAL_DEPTH[0]:
        return
    for key, value in state.items():
        if isinstance(value, DTensor):
            state[key] = value.full_tensor()


def _shard_incoming(module: nn.Module, state: dict, prefix: str, *args: Any) -> None:
    """Load pre-hook of a sharded network: full tensors (a checkpoint, a warm start) become
    this rank's shards before ``load_state_dict`` copies them."""
    shard_like_params(module, state, prefix)


# ------------------------------------------------------------------------ full-state checkpoints
def full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The full optimizer state of a sharded ``net`` in ``optimizer.state_dict()``'s own
    layout (states keyed by the parameter's index), so it is what DDP writes.

    Every rank must call it (it gathers); the tensors are on the CPU of rank 0, empty elsewhere.
    """
    by_name = get_optimizer_state_dict(net, optimizer, options=FULL)
    if not by_name:  # not rank 0 (cpu_offload keeps the gathered state on rank 0 only)
        return {}
    groups, state, index = [], {}, 0
    for group in by_name['param_groups']:
        ids = []
        for name in group['params']:
            if name in by_name['state']:
                state[index] = by_name['state'][name]
            ids.append(index)
            index += 1
        groups.append({**group, 'params': ids})
    return {'state': state, 'param_groups': groups}


def load_full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer,
                              state_dict: dict) -> None:
    """Load a full ``optimizer.state_dict()`` (any rank count's) into the optimizer of a sharded
    ``net``: every rank holds the whole state and keeps its shards."""
    names = {id(p): n for n, p in net.named_parameters()}
    order = [names[id(p)] for g in optimizer.param_groups for p in g['params']]
    if len(order) != sum(len(g['params']) for g in state_dict['param_groups']):
        raise ValueError(f'the checkpoint\'s optimizer has '
                         f'{sum(len(g["params"]) for g in state_dict["param_groups"])} '
                         f'parameters, this one {len(order)}')
    by_name = {'state': {order[i]: v for i, v in state_dict['state'].items()},
               'param_groups': [{**g, 'params': [order[i] for i in g['params']]}
                                for g in state_dict['param_groups']]}
    set_optimizer_state_dict(net, optimizer, by_name,
                             options=StateDictOptions(full_state_dict=True))


def gather_checkpoint_state(runner: Any, save_optimizer: bool) -> dict | None:
    """What a checkpoint of a sharded run holds, gathered to full tensors; ``None`` when the
    run is not sharded (the Runner's own state is already full).

    Every rank must call it. Returns, on rank 0, ``state_dict``, ``optimizer`` (with
    ``save_optimizer``) and every entry a hook's ``full_checkpoint_state()`` gives (the EMA);
    an empty dict on the other ranks.
    """
    model = getattr(runner.model, 'module', runner.model)
    backbone = getattr(model, 'backbone', None)
    roles = [r for r in ('generator', 'fake_score')
             if backbone is not None and is_sharded(getattr(backbone, r))]
    if not roles:
        return None
    out = {'state_dict': get_model_state_dict(model, options=FULL)}
    if save_optimizer:
        out['optimizer'] = {role: wrapper.full_state_dict()
                            for role, wrapper in runner.optim_wrapper.items()}
    for hook in runner.hooks:
        if hasattr(hook, 'full_checkpoint_state'):
            out.update(hook.full_checkpoint_state(runner))
    return out if dist.get_rank() == 0 else {}
