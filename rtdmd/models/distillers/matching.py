"""Distribution matching, shared by both stages: the fake score's objective and the DM term.

Given a point ``x_s`` at noise level ``s`` produced by the generator, a matching component
renoises it to ``t in (s, 1]`` and provides

- the fake-score loss: ambient DSM towards the target unbiased for the marginal velocity at
  ``t`` (+ gamma times the two-sample consistency regulariser), ALGORITHM.md 3.3-3.4;
- the generator's DMD loss with teacher and fake predictions mapped back to ``s`` by CPS
  transitions that share their noise, ALGORITHM.md 3.2.

*Where* the generator is matched is the component's class, the same in both stages:

- :class:`RandomStopMatching`: on a fresh random-stop rollout, at the sub-interval of its last
  executed step (AC-DMD) or at its clean output (``sub_interval=False``: DMD2). Stage 1's
  recipe; in stage 2 it is a term with a rollout of its own.
- :class:`FinalStepMatching`: at the clean output of the final, deterministic step (``s = 0``):
  of the epoch's stored rollout in stage 2 (the release's ``last_step_loss``), of a fresh full
  rollout in stage 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from rtdmd.functional.ambient import ambient_target, renoise_sub_interval, sample_renoise_sigma
from rtdmd.functional.consistency import consistency_jump_sigma
from rtdmd.functional.flow import x0_from_velocity
from rtdmd.models.losses.base import EpochContext, GeneratorTerm, StepView, UpdateContext
from rtdmd.models.samplers.cps import Rollout
from rtdmd.registry import LOSSES

RENOISE_DEFAULTS = dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0)


class DistributionMatching(GeneratorTerm):
    """The AC-DMD terms at a generator point ``(x_s, s)`` (see module docstring).

    Args:
        fake_loss: fake-score regression config (``AmbientDSMLoss``).
        dmd_loss: generator loss config (``DMDLoss``; its ``loss_weight`` is the DM weight), or
            ``None``: the fake score still tracks the generator, but the generator gets no DM
            term.
        consistency_loss: consistency regulariser config, or ``None``.
        teacher_guidance: teacher CFG scale, a float or a ``(min, max)`` range per update.
        renoise: ``dict(offset, end, min_step, max_step)`` of the renoise time in model steps.
        consistency_max_jump: ``eps_T``: the jump is uniform in ``1..eps_T`` model steps.
    """

    name = 'dm'
    dict_arg_keys = {'renoise': tuple(RENOISE_DEFAULTS)}

    def __init__(self, fake_loss: dict, dmd_loss: dict | None = None,
                 consistency_loss: dict | None = None,
                 teacher_guidance: float | Sequence[float] = 1.0, renoise: dict | None = None,
                 consistency_max_jump: int = 200) -> None:
        super().__init__()
        self.dmd_loss = LOSSES.build(dmd_loss) if dmd_loss else None
        self.fake_loss = LOSSES.build(fake_loss)
        self.consistency_loss = LOSSES.build(consistency_loss) if consistency_loss else None
        self.teacher_guidance = teacher_guidance
        unknown = set(renoise or {}) - set(RENOISE_DEFAULTS)
        if unknown:
            raise TypeError(f'renoise got unknown keys {sorted(unknown)}; '
                            f'valid: {sorted(RENOISE_DEFAULTS)}')
        self.renoise = {**RENOISE_DEFAULTS, **(renoise or {})}
        self.consistency_max_jump = consistency_max_jump

    # ------------------------------------------------------------------- where (per subclass)
    def fake_point(self, ctx: UpdateContext, rollout: Rollout | None) -> tuple[Tensor, Tensor]:
        """``(x_s, s)`` the fake score trains on (``rollout``: the epoch's, in stage 2)."""
        raise NotImplementedError

    def generator_point(self, ctx: UpdateContext) -> tuple[Tensor, Tensor]:
        """``(x_s, s)`` of a rollout of the component's own, ``x_s`` carrying the graph."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ the math
    def fake_losses(self, ctx: UpdateContext, rollout: Rollout | None = None
                    ) -> dict[str, Tensor]:
        """Ambient DSM (+ consistency) of the fake score on generator points (no grad to them)."""
        x_s, s = self.fake_point(ctx, rollout)
        x_s = x_s.detach()
        x_t, t, z, sigma_ts = self._renoise(x_s, s, ctx)
        v_fake = ctx.backbone.predict_velocity('fake_score', x_t, t, ctx.cond)
        losses = {'loss_fake_dsm': self.fake_loss(v_fake, ambient_target(x_s, s, t, z), sigma_ts)}
        if self.consistency_loss is not None:
            losses['loss_consistency'] = self._consistency(ctx, x_t, t, v_fake)
        return losses

    def generator_loss(self, ctx: UpdateContext, x_s: Tensor, s: Tensor) -> Tensor:
        """DMD on ``[s, 1]``: ``x_s`` carries the generator's graph, teacher and fake do not."""
        if self.dmd_loss is None:
            raise RuntimeError('this matching component has no dmd_loss (fake-score only)')
        backbone = ctx.backbone
        with torch.no_grad():
            x_t, t, _, _ = self._renoise(x_s.detach(), s, ctx)
            scale = self.draw_guidance(ctx)
            v_real = backbone.predict_velocity('teacher', x_t, t, ctx.cond, scale)
            v_fake = backbone.predict_velocity('fake_score', x_t, t, ctx.cond)
            # Shared transition noise: it cancels in the fake-real difference (pitfall 15).
            z = ctx.draws.normal('back_project', x_s.shape[1:], x_s.device)
            xs_real, xs_fake = ctx.sampler.transition.back_project(x_t, v_real, v_fake, t, s, z)
        return self.dmd_loss(x_s, xs_fake, xs_real)

    def own_rollout_loss(self, ctx: UpdateContext) -> Tensor | None:
        """The DM term on the component's own rollout (stage 1; stage 2's random stop)."""
        if self.dmd_loss is None:
            return None
        return self.generator_loss(ctx, *self.generator_point(ctx))

    def _renoise(self, x_s: Tensor, s: Tensor, ctx: UpdateContext
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        u = ctx.draws.uniform('renoise_time', x_s.device)
        t = sample_renoise_sigma(s, u, **self.renoise)
        z = ctx.draws.normal('renoise', x_s.shape[1:], x_s.device)
        x_t, sigma_ts = renoise_sub_interval(x_s, s, t, z)
        return x_t, t, z, sigma_ts

    def _consistency(self, ctx: UpdateContext, x_t: Tensor, t: Tensor, v_fake: Tensor
                     ) -> Tensor:
        """Two independent CPS hops from the anchor to a shared ``t'``; anchor keeps its grad."""
        jump = ctx.draws.randint('consistency_jump', 1, self.consistency_max_jump + 1,
                                 x_t.device)
        t_next = consistency_jump_sigma(t, jump)
        h_anchor = x0_from_velocity(x_t, v_fake, t)
        preds = []
        for hop in range(2):
            with torch.no_grad():
                z = ctx.draws.normal(f'consistency_hop{hop}', x_t.shape[1:], x_t.device)
                x_next, _, _ = ctx.sampler.transition(x_t, v_fake.detach(), t, t_next, z)
            v_next = ctx.backbone.predict_velocity('fake_score', x_next, t_next, ctx.cond)
            preds.append(x0_from_velocity(x_next, v_next, t_next))
        return self.consistency_loss(preds[0], preds[1], h_anchor)

    def draw_guidance(self, ctx: UpdateContext) -> float:
        """The teacher's CFG scale: fixed, or uniform in ``(min, max)`` once per update."""
        g = self.teacher_guidance
        if isinstance(g, (int, float)):
            return float(g)
        low, high = g
        return float(low + (high - low) * ctx.draws.scalar('guidance'))


@LOSSES.register_module()
class RandomStopMatching(DistributionMatching):
    """Matching on fresh random-stop rollouts (stage 1's AC-DMD; DMD2 with
    ``sub_interval=False``).

    Args:
        sub_interval: match at the CPS sample after the last executed step, on ``[s, 1]``
            (AC-DMD); ``False`` matches the clean output at ``s = 0`` (DMD2).
        fake_loss, dmd_loss, consistency_loss, teacher_guidance, renoise,
        consistency_max_jump: see :class:`DistributionMatching`.
    """

    def __init__(self, fake_loss: dict, dmd_loss: dict | None = None,
                 consistency_loss: dict | None = None,
                 teacher_guidance: float | Sequence[float] = 1.0, renoise: dict | None = None,
                 consistency_max_jump: int = 200, sub_interval: bool = True) -> None:
        super().__init__(fake_loss, dmd_loss, consistency_loss, teacher_guidance, renoise,
                         consistency_max_jump)
        self.sub_interval = sub_interval

    def _point(self, ro: Rollout) -> tuple[Tensor, Tensor]:
        if self.sub_interval:
            return ro.x_s, ro.s
        return ro.sample, torch.zeros_like(ro.s)

    def fake_point(self, ctx: UpdateContext, rollout: Rollout | None) -> tuple[Tensor, Tensor]:
        return self._point(ctx.fresh_rollout(random_stop=True))

    def generator_point(self, ctx: UpdateContext) -> tuple[Tensor, Tensor]:
        return self._point(ctx.fresh_rollout(random_stop=True, grad_last=True))

    def steps(self, ctx: EpochContext) -> set[int]:
        return set()  # matches on its own rollout


@LOSSES.register_module()
class FinalStepMatching(DistributionMatching):
    """Matching at the clean output of the final, deterministic step (``s = 0``).

    In stage 2 the generator term reads the final step of the epoch's stored rollout and the
    fake score trains on its samples (ALGORITHM.md 4.5, 4.6 (a)); in stage 1 both use a fresh
    full rollout (DMD without random stop).
    """

    def fake_point(self, ctx: UpdateContext, rollout: Rollout | None) -> tuple[Tensor, Tensor]:
        ro = rollout if rollout is not None else ctx.fresh_rollout(random_stop=False)
        return ro.sample, torch.zeros_like(ro.s)

    def generator_point(self, ctx: UpdateContext) -> tuple[Tensor, Tensor]:
        ro = ctx.fresh_rollout(random_stop=False, grad_last=True)
        return ro.sample, torch.zeros_like(ro.s)

    def steps(self, ctx: EpochContext) -> set[int]:
        return {ctx.sampler.last_step} if self.dmd_loss is not None else set()

    def forward(self, view: StepView) -> Tensor:
        return self.generator_loss(view.ctx, view.x0, view.x.new_zeros(view.x.shape[0]))


__all__ = ['DistributionMatching', 'FinalStepMatching', 'RandomStopMatching']
