"""Sub-interval distribution matching: the AC-DMD terms shared by both stages.

Given a point ``x_s`` at noise level ``s`` produced by the generator (the CPS sample after its
last executed step, or its clean output with ``s = 0``), this component renoises it to
``t in (s, 1]`` and provides

- the fake-score loss: ambient DSM towards the target unbiased for the marginal velocity at
  ``t`` (+ gamma times the two-sample consistency regulariser);
- the generator loss: DMD with teacher and fake predictions mapped back to ``s`` by CPS
  transitions that share their noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rtdmd.functional.ambient import (
    ambient_target,
    cps_back_project,
    renoise_sub_interval,
    sample_renoise_sigma,
)
from rtdmd.functional.consistency import consistency_jump_sigma
from rtdmd.functional.cps import cps_step
from rtdmd.functional.flow import x0_from_velocity
from rtdmd.models.backbones.base import Backbone, Condition
from rtdmd.registry import LOSSES


class SubIntervalMatching(nn.Module):
    """The AC-DMD loss terms (see module docstring).

    Args:
        dmd_loss: generator loss config (``DMDLoss``), or ``None`` (fake-score terms only).
        fake_loss: fake-score regression config (``AmbientDSMLoss``).
        consistency_loss: consistency regulariser config, or ``None``.
        teacher_guidance: teacher CFG scale, a float or a ``(min, max)`` range per update.
        renoise: ``dict(offset, end, min_step, max_step)`` of the renoise time in model steps.
        consistency_max_jump: ``eps_T``: the jump is uniform in ``1..eps_T`` model steps.
        eta: CPS stochasticity of the back-projections and consistency hops.
    """

    def __init__(self, dmd_loss: dict | None, fake_loss: dict, consistency_loss: dict | None,
                 teacher_guidance: float | Sequence[float], renoise: dict | None,
                 consistency_max_jump: int, eta: float) -> None:
        super().__init__()
        self.dmd_loss = LOSSES.build(dmd_loss) if dmd_loss else None
        self.fake_loss = LOSSES.build(fake_loss)
        self.consistency_loss = LOSSES.build(consistency_loss) if consistency_loss else None
        self.teacher_guidance = teacher_guidance
        self.renoise = dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0)
        unknown = set(renoise or {}) - set(self.renoise)
        if unknown:
            raise TypeError(f'renoise got unknown keys {sorted(unknown)}; '
                            f'valid: {sorted(self.renoise)}')
        self.renoise.update(renoise or {})
        self.consistency_max_jump = consistency_max_jump
        self.eta = eta

    def _renoise(self, x_s: Tensor, s: Tensor, shared: torch.Generator,
                 local: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        u = torch.rand(x_s.shape[0], generator=shared, device=x_s.device)
        t = sample_renoise_sigma(s, u, **self.renoise)
        z = torch.randn(x_s.shape, generator=local, device=x_s.device)
        x_t, sigma_ts = renoise_sub_interval(x_s, s, t, z)
        return x_t, t, z, sigma_ts

    def fake_losses(self, backbone: Backbone, cond: Condition, x_s: Tensor, s: Tensor,
                    shared: torch.Generator, local: torch.Generator) -> dict[str, Tensor]:
        """Ambient DSM (+ consistency) of the fake score on generator points ``x_s`` (no grad)."""
        x_s = x_s.detach()
        x_t, t, z, sigma_ts = self._renoise(x_s, s, shared, local)
        v_fake = backbone.predict_velocity('fake_score', x_t, t, cond)
        losses = {'loss_fake_dsm': self.fake_loss(v_fake, ambient_target(x_s, s, t, z), sigma_ts)}
        if self.consistency_loss is not None:
            losses['loss_consistency'] = self._consistency(backbone, cond, x_t, t, v_fake,
                                                           shared, local)
        return losses

    def _consistency(self, backbone: Backbone, cond: Condition, x_t: Tensor, t: Tensor,
                     v_fake: Tensor, shared: torch.Generator, local: torch.Generator) -> Tensor:
        """Two independent CPS hops from the anchor to a shared ``t'``; anchor keeps its grad."""
        jump = torch.randint(1, self.consistency_max_jump + 1, (x_t.shape[0],),
                             generator=shared, device=x_t.device)
        t_next = consistency_jump_sigma(t, jump)
        h_anchor = x0_from_velocity(x_t, v_fake, t)
        preds = []
        for _ in range(2):
            with torch.no_grad():
                z = torch.randn(x_t.shape, generator=local, device=x_t.device)
                x_next, _, _ = cps_step(x_t, v_fake.detach(), t, t_next, self.eta, z)
            v_next = backbone.predict_velocity('fake_score', x_next, t_next, cond)
            preds.append(x0_from_velocity(x_next, v_next, t_next))
        return self.consistency_loss(preds[0], preds[1], h_anchor)

    def generator_loss(self, backbone: Backbone, cond: Condition, x_s: Tensor, s: Tensor,
                       shared: torch.Generator, local: torch.Generator) -> Tensor:
        """DMD on ``[s, 1]``: ``x_s`` carries the generator's graph, teacher and fake do not."""
        if self.dmd_loss is None:
            raise RuntimeError('generator_loss needs a dmd_loss')
        with torch.no_grad():
            x_t, t, _, _ = self._renoise(x_s.detach(), s, shared, local)
            scale = self.draw_guidance(shared)
            v_real = backbone.predict_velocity('teacher', x_t, t, cond, scale)
            v_fake = backbone.predict_velocity('fake_score', x_t, t, cond)
            # Shared transition noise: it cancels in the fake-real difference (pitfall 15).
            z = torch.randn(x_s.shape, generator=local, device=x_s.device)
            xs_real, xs_fake = cps_back_project(x_t, v_real, v_fake, t, s, self.eta, z)
        return self.dmd_loss(x_s, xs_fake, xs_real)

    def draw_guidance(self, shared: torch.Generator) -> float:
        g = self.teacher_guidance
        if isinstance(g, (int, float)):
            return float(g)
        low, high = g
        return float(low + (high - low) * torch.rand(1, generator=shared, device=shared.device))
