"""LoRA on diffusers transformers (peft): attach, stack, merge, save.

Generator and fake score each carry a trainable adapter named ``'default'``. Stage 2 starts from
stage 1's adapter: it is kept as a frozen adapter ``'stage1'`` under a fresh trainable
``'default'`` one, which computes ``W + s1 B1 A1 + s2 B2 A2``, exactly what merging stage 1 into
the base and adding a fresh LoRA computes, while the base weights stay shared and pristine (the
teacher runs the fake score's base with adapters disabled).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from peft import LoraConfig
from torch import nn

from rtdmd.utils.sharding import copy_into_param

TRAINABLE = 'default'
FROZEN_STAGE = 'stage1'


def lora_config(rank: int, alpha: float, target_modules: Sequence[str],
                init: str | bool = 'gaussian') -> LoraConfig:
    """peft config of the release's LoRA (r 32, alpha 64, gaussian init: A ~ N(0, 1/r), B = 0)."""
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                      init_lora_weights=init, use_rslora=False)


def attach_lora(model: nn.Module, config: LoraConfig, name: str = TRAINABLE) -> None:
    """Add a LoRA adapter to a diffusers model; only LoRA weights stay trainable."""
    model.requires_grad_(False)
    model.add_adapter(config, adapter_name=name)
    active = [name] + ([FROZEN_STAGE] if FROZEN_STAGE in getattr(model, 'peft_config', {})
                       else [])
    model.set_adapters(active) if len(active) > 1 else model.set_adapter(name)
    for pname, param in model.named_parameters():
        param.requires_grad_(f'.{name}.' in pname and 'lora_' in pname)
        if param.requires_grad and param.is_floating_point():
            # fp32 master weights on a bf16 base (peft casts the input to the adapter's dtype):
            # in bf16 an AdamW step of lr 3e-6 on lora_A (|a| ~ 0.18) rounds away entirely.
            param.data = param.data.float()


def lora_state_dict(model: nn.Module, name: str = TRAINABLE) -> dict[str, torch.Tensor]:
    """The adapter's weights with adapter-free keys (``...lora_A.weight``)."""
    tag = f'.{name}.'
    return {k.replace(tag, '.'): v.detach().clone() for k, v in model.state_dict().items()
            if 'lora_' in k and tag in k}


def load_lora_state(model: nn.Module, state: dict[str, torch.Tensor],
                    name: str = TRAINABLE) -> None:
    """Load adapter-free LoRA keys into adapter ``name`` (strict on the LoRA keys)."""
    own = {k.replace(f'.{name}.', '.'): k for k in model.state_dict()
           if 'lora_' in k and f'.{name}.' in k}
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    if missing or unexpected:
        raise KeyError(f'LoRA state does not fit adapter {name!r}: missing '
                       f'{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}')
    model.load_state_dict({own[k]: v for k, v in state.items()}, strict=False)


def add_frozen_stage(model: nn.Module, config: LoraConfig) -> None:
    """A frozen adapter ``'stage1'`` under a fresh trainable one (load its values with
    ``load_lora_state(model, state, FROZEN_STAGE)``); a no-op if it is there already."""
    if FROZEN_STAGE in getattr(model, 'peft_config', {}):
        return
    if TRAINABLE in getattr(model, 'peft_config', {}):
        model.delete_adapters(TRAINABLE)
    model.add_adapter(config, adapter_name=FROZEN_STAGE)
    attach_lora(model, config, TRAINABLE)


def has_frozen_stage(model: nn.Module) -> bool:
    return FROZEN_STAGE in getattr(model, 'peft_config', {})


def stack_under_fresh_lora(model: nn.Module, previous: dict[str, torch.Tensor],
                           config: LoraConfig) -> None:
    """Freeze ``previous`` (stage 1) as adapter ``'stage1'`` under a fresh trainable adapter."""
    add_frozen_stage(model, config)
    load_lora_state(model, previous, FROZEN_STAGE)


@torch.no_grad()
def reinit_lora(model: nn.Module, std: float, generator: torch.Generator,
                name: str = TRAINABLE) -> None:
    """Adapter ``name`` restarts at ``lora_A ~ N(0, std^2)``, ``lora_B = 0`` (in place, in
    a fixed parameter order, drawn on the CPU: the same on every rank and device)."""
    for pname, param in sorted(model.named_parameters()):
        if f'.{name}.' not in pname:
            continue
        if 'lora_A' in pname:  # drawn whole on every rank; a sharded one keeps its shard
            copy_into_param(param, std * torch.randn(param.shape, generator=generator))
        elif 'lora_B' in pname:
            param.zero_()


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every active adapter into the base weights and remove the adapters."""
    model.fuse_lora(lora_scale=1.0)
    model.unload_lora()
    return model


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Run the pristine base of a LoRA'd model (the teacher shares the fake score's base)."""
    if not getattr(model, '_hf_peft_config_loaded', False):
        yield model
        return
    # peft's enable_adapters() sets requires_grad=True on every active adapter, a frozen
    # stacked one (stage 1's) included: put every LoRA weight's flag back as it was.
    flags = [(p, p.requires_grad) for n, p in model.named_parameters() if 'lora_' in n]
    model.disable_adapters()
    try:
        yield model
    finally:
        model.enable_adapters()
        for param, flag in flags:
            param.requires_grad_(flag)


class AdapterDisabledView(nn.Module):
    """The teacher as a view of another model with its adapters disabled.

    The target is not registered as a submodule: the view owns no parameters, so it adds
    nothing to state dicts, optimizers, EMA or distributed wrappers.
    """

    def __init__(self, target: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, '_target', target)

    @property
    def target(self) -> nn.Module:
        return self._target

    def forward(self, *args, **kwargs):
        with torch.no_grad(), adapters_disabled(self._target) as base:
            return base(*args, **kwargs)


def combined_lora(model: nn.Module) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """Every active adapter of ``model`` as one LoRA with peft's adapter-free keys.

    One adapter is returned as trained (peft's ``get_peft_model_state_dict``). Stacked adapters
    (stage 2: stage 1's frozen one under the trained one, ``W + s1 B1 A1 + s2 B2 A2``) are
    concatenated along the rank, ``A = [A1; A2]`` and ``B = [c1 B1, c2 B2]`` with
    ``c_i = s_i / s``, where ``s = alpha / rank`` of the result (``alpha = alpha1 + alpha2``), so
    ``s B A`` equals the sum exactly: no SVD truncation, no approximation.

    Returns:
        ``(state, config)``: ``lora_A`` / ``lora_B`` weights keyed like
        ``transformer_blocks.0.attn.to_q.lora_A.weight`` and the matching ``LoraConfig``.
    """
    from peft import get_peft_model_state_dict

    configs = getattr(model, 'peft_config', {})
    names = [n for n in (FROZEN_STAGE, TRAINABLE) if n in configs]
    if not names:
        raise ValueError(f'{type(model).__name__} carries no LoRA adapter')
    states = {n: get_peft_model_state_dict(model, adapter_name=n) for n in names}
    if len(names) == 1:
        return {k: v.detach().clone() for k, v in states[names[0]].items()}, configs[names[0]]
    if any(configs[n].rank_pattern or configs[n].alpha_pattern for n in names):
        raise ValueError('stacked adapters with per-module rank or alpha patterns cannot be '
                         'combined')
    targets = [set(configs[n].target_modules) for n in names]
    if set(states[names[0]]) != set(states[names[1]]) or targets[0] != targets[1]:
        raise ValueError(f'adapters {names} adapt different modules: cannot combine them')
    rank = sum(configs[n].r for n in names)
    alpha = sum(configs[n].lora_alpha for n in names)
    factors = {n: (configs[n].lora_alpha / configs[n].r) / (alpha / rank) for n in names}
    state = {}
    for key in states[names[0]]:
        if '.lora_A.' in key:
            state[key] = torch.cat([states[n][key].detach() for n in names], dim=0)
        elif '.lora_B.' in key:
            state[key] = torch.cat([factors[n] * states[n][key].detach() for n in names], dim=1)
        else:
            raise ValueError(f'cannot combine LoRA entry {key} (only lora_A / lora_B weights)')
    config = lora_config(rank, alpha, sorted(targets[0]), configs[names[0]].init_lora_weights)
    return state, config
