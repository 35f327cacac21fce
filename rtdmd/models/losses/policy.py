"""The reward side of stage 2: the clipped ratio (GRPO) term and reward back-propagation.

Both are generator terms (:class:`~rtdmd.models.losses.base.GeneratorTerm`): the GRPO term reads
the stochastic steps trained this epoch, reward back-propagation the deterministic final step.
Each calls one function of ``rtdmd/functional``.
"""

from __future__ import annotations

from torch import Tensor

from rtdmd.functional.grpo import clipped_ratio_loss
from rtdmd.functional.reward_bp import reward_hinge_loss
from rtdmd.registry import LOSSES

from .base import EpochContext, GeneratorTerm, StepView


@LOSSES.register_module()
class ClippedRatioLoss(GeneratorTerm):
    """GRPO/PPO loss ``mean(max(-A r, -A clip(r, 1 - low, 1 + high)))`` on the trained steps.

    ``r = exp(log pi(x_{j+1} | x_j) - log pi_old)`` with the sampler's transition log-prob,
    on each stochastic step SubGRPO selected this epoch (ALGORITHM.md 4.6).

    Args:
        clip_low, clip_high: asymmetric clip range of the ratio (1e-5 in the release).
        loss_weight: multiplier of the term.
    """

    name = 'policy'

    def __init__(self, clip_low: float = 1e-5, clip_high: float = 1e-5,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.clip_low = clip_low
        self.clip_high = clip_high
        self.loss_weight = loss_weight

    def steps(self, ctx: EpochContext) -> set[int]:
        return set(ctx.selected)

    def forward(self, view: StepView) -> Tensor:
        log_prob = view.ctx.sampler.transition.log_prob(view.x_next, view.x, view.v, view.sigma,
                                                        view.sigma_next)
        return self.loss_weight * clipped_ratio_loss(log_prob, view.old_log_prob,
                                                     view.ctx.advantages, self.clip_low,
                                                     self.clip_high)


@LOSSES.register_module()
class RewardHingeLoss(GeneratorTerm):
    """Reward back-propagation on the final step: ``loss_weight * mean(relu(margin - R))``.

    ``R`` is the weighted sum of the differentiable rewards of the decoded clean prediction
    (ALGORITHM.md 4.6 (b), pitfall 10); scale 1e-4 and margin 3 in the release.
    """

    name = 'bp'
    needs_differentiable_reward = True

    def __init__(self, margin: float = 3.0, loss_weight: float = 1e-4) -> None:
        super().__init__()
        self.margin = margin
        self.loss_weight = loss_weight

    def steps(self, ctx: EpochContext) -> set[int]:
        return {ctx.sampler.last_step}

    def forward(self, view: StepView) -> Tensor:
        ctx = view.ctx
        images = ctx.backbone.decode(view.x0)
        reward = ctx.reward.differentiable_sum(images, ctx.prompts, ctx.metadata)
        return reward_hinge_loss(reward, self.margin, self.loss_weight)
