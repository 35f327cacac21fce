"""What every distiller shares: the backbone, the sampler, random streams, generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.dist import get_rank
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from mmengine.runner.checkpoint import CheckpointLoader
from torch import Tensor

from rtdmd.models.backbones.base import Backbone, Condition, condition_batch_size
from rtdmd.models.samplers.cps import CPSSampler, Rollout
from rtdmd.registry import MODELS, SAMPLERS
from rtdmd.utils.mmengine_compat import apply_mmengine_patches
from rtdmd.utils.rng import stream, stream_seed


class DistillerBase(BaseModel):
    """Owns a backbone (teacher, generator, fake score) and the generator's sampler.

    The iteration counter is a persistent buffer, so it is saved in every checkpoint; all draws
    of an iteration come from counter-based streams (:mod:`rtdmd.utils.rng`), which makes a
    resumed run continue exactly as the uninterrupted one.
    """

    def __init__(self, backbone: dict, sampler: dict, seed: int = 0, eval_seed: int = 42,
                 data_preprocessor: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.backbone: Backbone = MODELS.build(backbone)
        self.sampler: CPSSampler = SAMPLERS.build(sampler)
        self.seed = seed
        self.eval_seed = eval_seed
        self.register_buffer('iteration', torch.zeros((), dtype=torch.long))

    # ------------------------------------------------------------------------------- helpers
    def streams(self, step: int, tag: str) -> tuple[torch.Generator, torch.Generator]:
        """``(shared, local)`` generators of ``step``: shared is identical on every rank."""
        device = self.iteration.device
        return (stream(self.seed, step, tag, 'shared', device=device),
                stream(self.seed, step, tag, 'local', get_rank(), device=device))

    def draw_stop(self, shared: torch.Generator, random_stop: bool = True) -> int:
        """Number of executed steps: uniform in ``1..S`` (one draw for the whole batch)."""
        if not random_stop:
            return self.sampler.num_steps
        return int(torch.randint(1, self.sampler.num_steps + 1, (1,), generator=shared,
                                 device=shared.device))

    def fresh_rollout(self, cond: Condition, shared: torch.Generator, local: torch.Generator,
                      grad_last: bool = False, random_stop: bool = True) -> Rollout:
        """A new generator rollout from fresh noise, stopped at a (shared) random step count;
        only the last executed step keeps its graph, and only with ``grad_last``."""
        return self.sampler.rollout(self.backbone, cond, self.initial_noise(cond, local),
                                    stop=self.draw_stop(shared, random_stop),
                                    grad_last=grad_last, generator=local)

    def initial_noise(self, cond: Condition, generator: torch.Generator) -> Tensor:
        batch = condition_batch_size(cond)
        return torch.randn((batch, *self.backbone.latent_shape()), generator=generator,
                           device=self.iteration.device)

    def _update(self, role: str, losses: dict[str, Tensor], optim_wrapper: OptimWrapperDict
                ) -> dict[str, Tensor]:
        """Sum the ``loss_*`` terms on purpose, step ``role``'s optimizer, return log values."""
        wrapper = optim_wrapper[role]
        with wrapper.optim_context(self.backbone.net(role)):
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
        ro = self.sampler.rollout(self.backbone, cond, self.initial_noise(cond, gen),
                                  generator=gen)
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


def load_stage_checkpoint(backbone: Backbone, path: str, use_ema: bool = True) -> None:
    """Start the trainable roles from a previous stage's checkpoint.

    The generator takes the EMA weights (``ema_state``) when present and ``use_ema``, as the
    release starts stage 2 from the cold start's ``generator_ema``; the fake score takes its
    trained weights. The backbone decides how (``Backbone.load_role_state``: plain weights for
    the toy, merging LoRA for the real families).
    """
    apply_mmengine_patches()  # the project's own checkpoints need weights_only=False
    checkpoint = CheckpointLoader.load_checkpoint(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    for role in ('generator', 'fake_score'):
        prefix = f'backbone.{role}.'
        role_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if role == 'generator' and use_ema and checkpoint.get('ema_state'):
            role_state.update(checkpoint['ema_state'])
        if not role_state:
            raise KeyError(f'{path} holds no weights of backbone.{role}: is it a checkpoint of '
                           f'an rtdmd distiller?')
        backbone.load_role_state(role, role_state)
