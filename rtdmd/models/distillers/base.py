"""What every distiller shares: the backbone, the sampler, random streams, generation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from mmengine.dist import get_rank
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from rtdmd.models.backbones.base import Backbone, Condition
from rtdmd.models.losses.base import UpdateContext
from rtdmd.models.samplers.cps import CPSSampler
from rtdmd.models.samplers.noise import GeneratorNoise
from rtdmd.registry import MODELS, SAMPLERS
from rtdmd.utils.checkpoint import read_checkpoint, role_states
from rtdmd.utils.rng import stream, stream_seed


class DistillerBase(BaseModel):
    """Owns a backbone (teacher, generator, fake score) and the generator's sampler.

    The iteration counter is a persistent buffer, so it is saved in every checkpoint; all draws
    of an iteration come from counter-based streams (:mod:`rtdmd.utils.rng`), which makes a
    resumed run continue exactly as the uninterrupted one.

    Args:
        backbone: backbone config (builds teacher, generator and fake score).
        sampler: few-step sampler config (``CPSSampler``: step list, eta).
        init_checkpoint: a previous stage's checkpoint to start from. The model is shaped for it
            at construction; its weights are read by :meth:`init_weights`, which the Runner
            calls when training starts (never when a model is only built to sample).
        seed: base seed of the counter-based random streams.
        eval_seed: seed of generation in val / test.
    """

    def __init__(self, backbone: dict, sampler: dict, init_checkpoint: str | None = None,
                 seed: int = 0, eval_seed: int = 42, data_preprocessor: dict | None = None
                 ) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.backbone: Backbone = MODELS.build(backbone)
        self.sampler: CPSSampler = SAMPLERS.build(sampler)
        self.init_checkpoint = init_checkpoint
        self.seed = seed
        self.eval_seed = eval_seed
        self.register_buffer('iteration', torch.zeros((), dtype=torch.long))
        if init_checkpoint:
            self.backbone.prepare_warm_start()

    def init_weights(self) -> None:
        """Start the trainable roles from ``init_checkpoint`` (the generator from its EMA).

        Loads in place: the optimizers and distributed wrappers the Runner built before this
        call keep their parameters.
        """
        if not self.init_checkpoint:
            return
        states = role_states(read_checkpoint(self.init_checkpoint), self.init_checkpoint)
        for role, state in states.items():
            self.backbone.warm_start(role, state)

    # ------------------------------------------------------------------------------- helpers
    def streams(self, step: int, tag: str) -> tuple[torch.Generator, torch.Generator]:
        """``(shared, local)`` generators of ``step``: shared is identical on every rank."""
        device = self.iteration.device
        return (stream(self.seed, step, tag, 'shared', device=device),
                stream(self.seed, step, tag, 'local', get_rank(), device=device))

    def context(self, cond: Condition, step: int, tag: str) -> UpdateContext:
        """The context of one update: networks, sampler, condition and ``(step, tag)``'s
        streams."""
        return UpdateContext(self.backbone, self.sampler, cond, *self.streams(step, tag))

    def _update(self, role: str, compute: Callable[[], dict[str, Tensor]],
                optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        """Compute ``role``'s terms inside its optimizer context (autocast, DDP ``no_sync``),
        sum the ``loss_*`` ones on purpose, step, and return the log values."""
        wrapper = optim_wrapper[role]
        with wrapper.optim_context(self.backbone.net(role)):
            losses = compute()
            total = sum(v for k, v in losses.items() if k.startswith('loss_'))
        wrapper.update_params(total)
        log_vars = {k: v.detach().float() for k, v in losses.items()}
        log_vars[f'loss_{role}'] = total.detach().float()
        return log_vars

    # ---------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: Sequence[Any] | Tensor, seed: int | None = None) -> Tensor:
        """Few-step samples for ``prompts`` (no random stop), decoded by the backbone."""
        cond = self.backbone.encode_prompts(prompts)
        gen = stream(self.eval_seed if seed is None else seed, 'generate',
                     device=self.iteration.device)
        ro = self.sampler.rollout(self.backbone, cond, GeneratorNoise(gen))
        return self.backbone.decode(ro.sample)

    def val_step(self, data: dict | Sequence) -> list[dict[str, Any]]:
        data = self.data_preprocessor(data, False)
        prompts = data['prompt']
        # Seeded by the index of the batch's first sample: evaluation is reproducible.
        index = data.get('index')
        seed_key = int(index[0]) if index is not None else 0
        samples = self.generate(prompts, seed=stream_seed(self.eval_seed, seed_key))
        return [dict(sample=samples[i].cpu(), prompt=item(prompts, i))
                for i in range(samples.shape[0])]

    def test_step(self, data: dict | Sequence) -> list[dict[str, Any]]:
        return self.val_step(data)

    def forward(self, inputs: Any = None, data_samples: Any = None, mode: str = 'tensor'
                ) -> Any:
        raise RuntimeError('distillers are driven through train_step / val_step / test_step')


def item(prompts: Sequence[Any] | Tensor, i: int) -> Any:
    return prompts[i].item() if isinstance(prompts, Tensor) else prompts[i]
