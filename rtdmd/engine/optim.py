"""One optimizer wrapper per trainable role: ``OptimWrapperDict(generator=..., fake_score=...)``."""

from __future__ import annotations

import copy

from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS
from torch import nn

from rtdmd.registry import OPTIM_WRAPPER_CONSTRUCTORS
from rtdmd.utils.sharding import is_sharded

from .optim_wrappers import NonFiniteGuardOptimWrapper


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class DistillerOptimWrapperConstructor:
    """Builds an optimizer wrapper for each role named in the config.

    Config::

        optim_wrapper = dict(
            constructor='DistillerOptimWrapperConstructor',
            generator=dict(type='NonFiniteGuardOptimWrapper',
                           optimizer=dict(type='AdamW', lr=1e-4), clip_grad=dict(max_norm=1.0)),
            fake_score=dict(type='NonFiniteGuardOptimWrapper',
                            optimizer=dict(type='AdamW', lr=1e-4)))

    Only parameters with ``requires_grad`` (e.g. the LoRA weights) are handed to the optimizer.
    A role without ``type`` gets :class:`NonFiniteGuardOptimWrapper`, which skips non-finite
    steps; each guarded wrapper learns its role name for the logs.
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        if paramwise_cfg:
            raise ValueError('paramwise_cfg is not supported by DistillerOptimWrapperConstructor')
        if not optim_wrapper_cfg:
            raise ValueError('optim_wrapper needs one entry per trainable role, e.g. generator= '
                             'and fake_score=')
        self.optim_wrapper_cfg = copy.deepcopy(dict(optim_wrapper_cfg))

    def __call__(self, model: nn.Module) -> OptimWrapperDict:
        module = model.module if is_model_wrapper(model) else model
        wrappers = {}
        for role, cfg in self.optim_wrapper_cfg.items():
            cfg = copy.deepcopy(dict(cfg))
            params = list(module.backbone.trainable_parameters(role))
            if not params:
                raise ValueError(f'optim_wrapper.{role}: the {role} has no trainable parameters')
            optimizer_cfg = dict(cfg.pop('optimizer'))
            optimizer_cfg['params'] = params
            cfg.setdefault('type', 'NonFiniteGuardOptimWrapper')
            wrapper = OPTIM_WRAPPERS.build(
                cfg, default_args=dict(optimizer=OPTIMIZERS.build(optimizer_cfg)))
            net = getattr(module.backbone, role)
            if isinstance(wrapper, NonFiniteGuardOptimWrapper):
                wrapper.role = role
                wrapper.sharded_net = net if is_sharded(net) else None
            elif is_sharded(net):
                raise ValueError(f'optim_wrapper.{role}: under FSDP (DistillerFullyShard) the '
                                 f'wrapper must be NonFiniteGuardOptimWrapper (it gathers and '
                                 f'loads the sharded state), got {type(wrapper).__name__}')
            wrappers[role] = wrapper
        return OptimWrapperDict(**wrappers)
