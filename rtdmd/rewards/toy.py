"""Rewards of the analytic world (samples are points in R^d)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rtdmd.registry import REWARDS

from .base import RewardScorer


@REWARDS.register_module()
class LinearReward(RewardScorer):
    """``r(x) = <a, x>``; differentiable. The tilt of a Gaussian mixture by it is exact."""

    differentiable = True

    def __init__(self, direction: Sequence[float], name: str | None = None) -> None:
        super().__init__(name)
        self.register_buffer('direction', torch.as_tensor(direction, dtype=torch.float32))

    def forward(self, samples: Tensor, prompts: Any = None, metadata: Any = None) -> Tensor:
        return samples.float() @ self.direction


@REWARDS.register_module()
class QuadraticReward(RewardScorer):
    """``r(x) = -||x - center||^2``; differentiable, peaked at ``center``."""

    differentiable = True

    def __init__(self, center: Sequence[float], name: str | None = None) -> None:
        super().__init__(name)
        self.register_buffer('center', torch.as_tensor(center, dtype=torch.float32))

    def forward(self, samples: Tensor, prompts: Any = None, metadata: Any = None) -> Tensor:
        return -(samples.float() - self.center).pow(2).sum(dim=1)


@REWARDS.register_module()
class ModeReward(RewardScorer):
    """``r(x) = values[k*(x)]`` with ``k*`` the nearest component mean: piecewise constant.

    Not differentiable (its gradient is zero almost everywhere), so only the policy-gradient path
    may use it; asking to back-propagate through it is a config error.
    """

    differentiable = False

    def __init__(self, values: Sequence[float], means: Sequence[Sequence[float]],
                 name: str | None = None) -> None:
        super().__init__(name)
        values_t = torch.as_tensor(values, dtype=torch.float32)
        means_t = torch.as_tensor(means, dtype=torch.float32)
        if values_t.shape != (means_t.shape[0],):
            raise ValueError(f'ModeReward needs one value per component ({means_t.shape[0]}), '
                             f'got {values_t.numel()}')
        self.register_buffer('values', values_t)
        self.register_buffer('means', means_t)

    @property
    def upper_bound(self) -> float:
        return float(self.values.max())

    def forward(self, samples: Tensor, prompts: Any = None, metadata: Any = None) -> Tensor:
        nearest = torch.cdist(samples.float(), self.means).argmin(dim=1)
        return self.values[nearest]
