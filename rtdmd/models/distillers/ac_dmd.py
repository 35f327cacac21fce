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

from rtdmd.functional.ambient import (ambient_target, cps_back_project, renoise_sub_interval,
                                      sample_renoise_sigma)
from rtdmd.functional.consistency import consistency_jump_sigma
from rtdmd.functional.cps import cps_step
from rtdmd.functional.flow import x0_from_velocity
from rtdmd.models.backbones.base import Condition
from rtdmd.models.samplers.cps import Rollout
from rtdmd.registry import LOSSES, MODELS

from .base import DistillerBase


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
    """

    def __init__(self, backbone: dict, sampler: dict, dmd_loss: dict, fake_loss: dict,
                 consistency_loss: dict | None = None,
                 teacher_guidance: float | Sequence[float] = 1.0, fake_update_ratio: int = 10,
                 sub_interval: bool = True, random_stop: bool = True,
                 renoise: dict | None = None, consistency_max_jump: int = 200, seed: int = 0,
                 eval_seed: int = 42, data_preprocessor: dict | None = None) -> None:
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, eval_seed=eval_seed,
                         data_preprocessor=data_preprocessor)
        self.dmd_loss = LOSSES.build(dmd_loss)
        self.fake_loss = LOSSES.build(fake_loss)
        self.consistency_loss = LOSSES.build(consistency_loss) if consistency_loss else None
        self.teacher_guidance = teacher_guidance
        if fake_update_ratio < 1:
            raise ValueError(f'fake_update_ratio must be >= 1, got {fake_update_ratio}')
        self.fake_update_ratio = fake_update_ratio
        self.sub_interval = sub_interval
        self.random_stop = random_stop
        self.renoise = dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0)
        unknown = set(renoise or {}) - set(self.renoise)
        if unknown:
            raise TypeError(f'renoise got unknown keys {sorted(unknown)}; '
                            f'valid: {sorted(self.renoise)}')
        self.renoise.update(renoise or {})
        self.consistency_max_jump = consistency_max_jump

    # ------------------------------------------------------------------------------ training
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

    def _matching_point(self, ro: Rollout) -> tuple[Tensor, Tensor]:
        """``(x_s, s)``: the sub-interval start (AC-DMD) or the clean output with ``s = 0``."""
        if self.sub_interval:
            return ro.x_s, ro.s
        return ro.sample, torch.zeros_like(ro.s)

    def _renoise(self, x_s: Tensor, s: Tensor, shared: torch.Generator,
                 local: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        u = torch.rand(x_s.shape[0], generator=shared, device=x_s.device)
        t = sample_renoise_sigma(s, u, **self.renoise)
        z = torch.randn(x_s.shape, generator=local, device=x_s.device)
        x_t, sigma_ts = renoise_sub_interval(x_s, s, t, z)
        return x_t, t, z, sigma_ts

    def fake_score_losses(self, cond: Condition, step: int) -> dict[str, Tensor]:
        """Ambient DSM (+ consistency) on a fresh no-grad rollout of the online generator."""
        shared, local = self.streams(step, 'fake')
        with torch.no_grad():
            ro = self.sampler.rollout(self.backbone, cond, self.initial_noise(cond, local),
                                      stop=self.draw_stop(shared), generator=local)
        x_s, s = self._matching_point(ro)
        x_t, t, z, sigma_ts = self._renoise(x_s, s, shared, local)
        v_fake = self.backbone.predict_velocity('fake_score', x_t, t, cond)
        losses = {'loss_fake_dsm': self.fake_loss(v_fake, ambient_target(x_s, s, t, z), sigma_ts)}
        if self.consistency_loss is not None:
            losses['loss_consistency'] = self._consistency(cond, x_t, t, v_fake, shared, local)
        return losses

    def _consistency(self, cond: Condition, x_t: Tensor, t: Tensor, v_fake: Tensor,
                     shared: torch.Generator, local: torch.Generator) -> Tensor:
        """Two independent CPS hops from the anchor to a shared ``t'``; anchor keeps its grad."""
        jump = torch.randint(1, self.consistency_max_jump + 1, (x_t.shape[0],), generator=shared,
                             device=x_t.device)
        t_next = consistency_jump_sigma(t, jump)
        h_anchor = x0_from_velocity(x_t, v_fake, t)
        preds = []
        for _ in range(2):
            with torch.no_grad():
                z = torch.randn(x_t.shape, generator=local, device=x_t.device)
                x_next, _, _ = cps_step(x_t, v_fake.detach(), t, t_next, self.sampler.eta, z)
            v_next = self.backbone.predict_velocity('fake_score', x_next, t_next, cond)
            preds.append(x0_from_velocity(x_next, v_next, t_next))
        return self.consistency_loss(preds[0], preds[1], h_anchor)

    def generator_losses(self, cond: Condition, step: int) -> dict[str, Tensor]:
        """DMD on the sub-interval of the last executed step, teacher vs fake score."""
        shared, local = self.streams(step, 'generator')
        ro = self.sampler.rollout(self.backbone, cond, self.initial_noise(cond, local),
                                  stop=self.draw_stop(shared), grad_last=True, generator=local)
        x_s, s = self._matching_point(ro)
        with torch.no_grad():
            x_t, t, _, _ = self._renoise(x_s.detach(), s, shared, local)
            scale = self.draw_guidance(shared)
            v_real = self.backbone.predict_velocity('teacher', x_t, t, cond, scale)
            v_fake = self.backbone.predict_velocity('fake_score', x_t, t, cond)
            # Shared transition noise: it cancels in the fake-real difference (item 15).
            z = torch.randn(x_s.shape, generator=local, device=x_s.device)
            xs_real, xs_fake = cps_back_project(x_t, v_real, v_fake, t, s, self.sampler.eta, z)
        return {'loss_dmd': self.dmd_loss(x_s, xs_fake, xs_real)}

    # ----------------------------------------------------------------------------- draws
    def draw_stop(self, shared: torch.Generator) -> int:
        if not self.random_stop:
            return self.sampler.num_steps
        return int(torch.randint(1, self.sampler.num_steps + 1, (1,), generator=shared))

    def draw_guidance(self, shared: torch.Generator) -> float:
        g = self.teacher_guidance
        if isinstance(g, (int, float)):
            return float(g)
        low, high = g
        return float(low + (high - low) * torch.rand(1, generator=shared))

