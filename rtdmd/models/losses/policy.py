"""Loss terms of the reward side: the clipped ratio (GRPO) loss and reward back-propagation."""

from __future__ import annotations

from torch import Tensor, nn

from rtdmd.functional.grpo import clipped_ratio_loss
from rtdmd.functional.reward_bp import reward_hinge_loss
from rtdmd.registry import LOSSES


@LOSSES.register_module()
class ClippedRatioLoss(nn.Module):
    """GRPO/PPO loss ``mean(max(-A r, -A clip(r, 1 - low, 1 + high)))`` on transition log-probs.

    Args:
        clip_low, clip_high: asymmetric clip range of the ratio (1e-5 in the release).
        loss_weight: multiplier of the term.
    """

    def __init__(self, clip_low: float = 1e-5, clip_high: float = 1e-5,
                 loss_weight: float = 1.0) -> None:
        super().__init__()
        self.clip_low = clip_low
        self.clip_high = clip_high
        self.loss_weight = loss_weight

    def forward(self, log_prob: Tensor, old_log_prob: Tensor, advantages: Tensor) -> Tensor:
        return self.loss_weight * clipped_ratio_loss(log_prob, old_log_prob, advantages,
                                                     self.clip_low, self.clip_high)


@LOSSES.register_module()
class RewardHingeLoss(nn.Module):
    """Reward back-propagation ``loss_weight * mean(relu(margin - R))`` (scale 1e-4, margin 3)."""

    def __init__(self, margin: float = 3.0, loss_weight: float = 1e-4) -> None:
        super().__init__()
        self.margin = margin
        self.loss_weight = loss_weight

    def forward(self, reward: Tensor) -> Tensor:
        return reward_hinge_loss(reward, self.margin, self.loss_weight)
