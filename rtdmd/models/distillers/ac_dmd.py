"""Stage 1: AC-DMD (and plain DMD2 as a configuration of it).

Per iteration (ALGORITHM.md section 3.5): one fake-score update on a fresh no-grad rollout with
random stop; every ``fake_update_ratio`` iterations one generator update on another fresh rollout
with gradient through the last executed step. The generator is matched on the *sub-interval*
``[s, 1]`` of its last step (``sub_interval=True``) or on its clean output (``False``, DMD2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from rtdmd.models.backbones.base import Condition
from rtdmd.models.samplers.cps import Rollout
from rtdmd.registry import MODELS

from .base import DistillerBase
from .matching import SubIntervalMatching


@MODELS.register_module()
class ACDMDDistiller(DistillerBase):
    """Ambient-consistent DMD distiller of a few-step CPS generator.

    Args:
        backbone: backbone config (builds teacher, generator and fake score).
        sampler: few-step sampler config (``CPSSampler``: step list, eta).
        dmd_loss: generator loss config (``DMDLoss``).
        fake_loss: fake-score regression config (``AmbientDSMLoss``).
        consistency_loss: consistency regulariser config, or ``None`` to switch it off.
        teacher_guidance: teacher CFG scale, a float or a ``(min, max)`` range drawn per step.
        fake_update_ratio: one generator update every this many fake-score updates.
        sub_interval: match on the sub-interval of the last step (AC-DMD) instead of on the
            clean output (DMD2).
        random_stop: draw the number of executed steps uniformly per update.
        renoise: ``dict(offset, end, min_step, max_step)`` of the renoise time in model steps.
        consistency_max_jump: ``eps_T``: the consistency jump is uniform in ``1..eps_T`` steps.
        seed: base seed of the counter-based random streams.
        eval_seed: seed of generation in val / test.
    """

    def __init__(self, backbone: dict, sampler: dict, dmd_loss: dict, fake_loss: dict,
                 consistency_loss: dict | None = None,
                 teacher_guidance: float | Sequence[float] = 1.0, fake_update_ratio: int = 10,
                 sub_interval: bool = True, random_stop: bool = True,
                 renoise: dict | None = None, consistency_max_jump: int = 200, seed: int = 0,
                 eval_seed: int = 42, data_preprocessor: dict | None = None) -> None:
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor)
        if fake_update_ratio < 1:
            raise ValueError(f'fake_update_ratio must be >= 1, got {fake_update_ratio}')
        self.matching = SubIntervalMatching(dmd_loss, fake_loss, consistency_loss,
                                            teacher_guidance, renoise, consistency_max_jump,
                                            self.sampler.eta)
        self.fake_update_ratio = fake_update_ratio
        self.sub_interval = sub_interval
        self.random_stop = random_stop

    def train_step(self, data: dict | Sequence, optim_wrapper: OptimWrapperDict
                   ) -> dict[str, Tensor]:
        data = self.data_preprocessor(data, True)
        cond = self.backbone.encode_prompts(data['prompt'])
        step = int(self.iteration)
        log_vars = self._update('fake_score', self.fake_score_losses(cond, step), optim_wrapper)
        if (step + 1) % self.fake_update_ratio == 0:
            log_vars.update(self._update('generator', self.generator_losses(cond, step),
                                         optim_wrapper))
        self.iteration += 1
        return log_vars

    def matching_point(self, ro: Rollout) -> tuple[Tensor, Tensor]:
        """``(x_s, s)``: the sub-interval start (AC-DMD) or the clean output with ``s = 0``."""
        if self.sub_interval:
            return ro.x_s, ro.s
        return ro.sample, torch.zeros_like(ro.s)

    def fake_score_losses(self, cond: Condition, step: int) -> dict[str, Tensor]:
        """Fake-score terms on a fresh no-grad random-stop rollout of the online generator."""
        shared, local = self.streams(step, 'fake')
        ro = self.fresh_rollout(cond, shared, local, random_stop=self.random_stop)
        x_s, s = self.matching_point(ro)
        return self.matching.fake_losses(self.backbone, cond, x_s, s, shared, local)

    def generator_losses(self, cond: Condition, step: int) -> dict[str, Tensor]:
        """DMD on the sub-interval of the last executed step of a fresh rollout."""
        shared, local = self.streams(step, 'generator')
        ro = self.fresh_rollout(cond, shared, local, grad_last=True, random_stop=self.random_stop)
        x_s, s = self.matching_point(ro)
        return {'loss_dmd': self.matching.generator_loss(self.backbone, cond, x_s, s, shared,
                                                         local)}
