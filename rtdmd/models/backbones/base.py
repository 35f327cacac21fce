"""The backbone protocol: everything family-specific stays behind it.

A backbone builds and owns the three networks of the method (frozen ``teacher``, trainable
``generator`` and ``fake_score``) and answers, for any of them, "what velocity do you predict at
``(x, sigma)`` for these prompts?". Distillers, samplers and losses only talk to this protocol, so
they do not know whether they run a 2-D toy or a 4-billion-parameter DiT. Everywhere outside the
backbones ``sigma`` is the continuous noise level in [0, 1]; timestep scaling, latent packing,
guidance handling and text encoding are the backbone's business.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rtdmd.functional.flow import cfg_combine

Condition = dict[str, Any]
ROLES = ('teacher', 'generator', 'fake_score')


def index_condition(cond: Condition, index: Tensor) -> Condition:
    """Rows ``index`` of every per-sample entry of ``cond`` (tensors and lists with the batch as
    their leading size); other entries are kept. Repeats a condition K times without encoding
    its prompt K times."""
    batch = condition_batch_size(cond)
    out: Condition = {}
    for key, value in cond.items():
        if isinstance(value, Tensor) and value.ndim and value.shape[0] == batch:
            out[key] = value[index.to(value.device)]
        elif isinstance(value, (list, tuple)) and len(value) == batch:
            out[key] = [value[i] for i in index.tolist()]
        else:
            out[key] = value
    return out


def condition_batch_size(cond: Condition) -> int:
    """Batch size of an encoded condition: the first tensor's (or list's) leading size."""
    for value in cond.values():
        if isinstance(value, Tensor):
            return value.shape[0]
        if isinstance(value, (list, tuple)):
            return len(value)
    raise ValueError('cannot infer the batch size of an empty condition')


class Backbone(nn.Module):
    """Base class of every backbone; subclasses implement the ``_velocity`` forward."""

    teacher: nn.Module
    generator: nn.Module
    fake_score: nn.Module
    #: The classes of a network's repeated blocks (transformer blocks): under FSDP each is its
    #: own unit, gathered before and freed after its forward. Empty: the network is one unit.
    shard_block_classes: ClassVar[tuple[type, ...]] = ()

    def __init__(self) -> None:
        super().__init__()
        # Distributed wrappers (DDP/FSDP) of trainable roles. Kept out of the module tree so that
        # state dicts and checkpoints are identical with and without distribution.
        self._wrapped: dict[str, nn.Module] = {}

    # ----------------------------------------------------------------- to implement per family
    def encode_prompts(self, prompts: Sequence[Any]) -> Condition:
        """Encode a batch of prompts once; the result is reused by every model call."""
        raise NotImplementedError

    def null_condition(self, cond: Condition) -> Condition:
        """The empty-prompt condition with the batch size of ``cond`` (for CFG)."""
        raise NotImplementedError

    def _velocity(self, net: nn.Module, role: str, x: Tensor, sigma: Tensor,
                  cond: Condition) -> Tensor:
        """One forward of ``net`` at continuous ``sigma`` ``(B,)``; returns a velocity."""
        raise NotImplementedError

    def sigma_schedule(self, step_list: Sequence[int], latent_shape: Sequence[int]) -> Tensor:
        """Few-step sigmas (already shifted for this family) with a trailing 0, ``(S + 1,)``."""
        raise NotImplementedError

    def latent_shape(self) -> tuple[int, ...]:
        """Per-sample latent shape used for generation."""
        raise NotImplementedError

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that never train (text encoders, VAE, an exact teacher); frozen by
        :meth:`freeze_frozen_modules` and kept in eval mode by :meth:`train`."""
        return []

    def text_encoders(self) -> list[nn.Module]:
        """The frozen prompt encoders, each a whole model (the FSDP wrapper may shard or
        offload them: ``model_wrapper_cfg.text_encoders``). Default: none."""
        return []

    def prepare_warm_start(self) -> None:
        """Shape the trainable roles to start from a previous stage (values come later, from
        :meth:`warm_start`). Default: nothing to add (the roles load the previous weights)."""

    def warm_start(self, role: str, state: dict[str, Tensor],
                   fresh: tuple[float, torch.Generator] | None = None) -> None:
        """Load a previous stage's weights of ``role`` in place (strict: every key must match).

        In place, so optimizers and distributed wrappers built earlier keep their parameters.
        ``fresh = (std, generator)`` re-initialises a fresh trainable adapter where the family
        has one (LoRA); a plain network has none and ignores it.
        """
        getattr(self, role).load_state_dict(state, strict=True)

    def prepare_for_state(self, state: dict[str, Tensor], prefix: str = '') -> None:
        """Add what a saved ``state`` (keys below ``prefix``) holds beyond a freshly built
        backbone, e.g. a stage-2 model's frozen stage-1 adapter. Default: nothing."""

    def decode(self, x: Tensor) -> Tensor:
        """Latents to the space rewards see (images in [0, 1] for image models)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------ shared machinery
    def net(self, role: str) -> nn.Module:
        """The module to call for ``role``: its distributed wrapper if one is set."""
        if role not in ROLES:
            raise KeyError(f'unknown role {role!r}; expected one of {ROLES}')
        return self._wrapped.get(role, getattr(self, role))

    def wrap_roles(self, wrap: Callable[[nn.Module], nn.Module],
                   roles: Sequence[str] = ('generator', 'fake_score')) -> None:
        """Wrap trainable roles for distributed training (the teacher is never wrapped)."""
        for role in roles:
            self._wrapped[role] = wrap(getattr(self, role))

    def shard_units(self, role: str) -> list[nn.Module]:
        """The modules of ``role``'s network that FSDP shards as units of their own, inner ones
        first (every instance of :attr:`shard_block_classes`); the network's root holds the
        rest."""
        net = getattr(self, role)
        if not self.shard_block_classes:
            return []
        return [m for m in net.modules() if isinstance(m, self.shard_block_classes)]

    def trainable_parameters(self, role: str) -> Iterator[nn.Parameter]:
        return (p for p in getattr(self, role).parameters() if p.requires_grad)

    def predict_velocity(self, role: str, x: Tensor, sigma: Tensor | float, cond: Condition,
                         guidance_scale: float | Tensor = 1.0) -> Tensor:
        """Velocity of ``role`` at ``(x, sigma)``, with real CFG when ``guidance_scale != 1``.

        Returns float32 whatever the network dtype (sampler and loss math is fp32).
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        net = self.net(role)
        with self.compute_context(x.device):
            v_cond = self._velocity(net, role, x, sigma, cond).float()
            if isinstance(guidance_scale, (int, float)) and guidance_scale == 1.0:
                return v_cond
            v_uncond = self._velocity(net, role, x, sigma, self.null_condition(cond)).float()
        return cfg_combine(v_uncond, v_cond, guidance_scale)

    def compute_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The context every network forward runs in (default: none; the diffusers families
        run their bf16 networks under autocast, see ``DiffusersBackbone``)."""
        return contextlib.nullcontext()

    def freeze_frozen_modules(self) -> None:
        """The one place frozen modules are frozen: no gradients, eval mode."""
        for module in self.frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen and always in eval mode
        for module in self.frozen_modules():
            module.eval()
        return self
