"""Image-statistics rewards: tiny, differentiable stand-ins for the image reward models.

They need no weights, so tests and mini runs can exercise reward back-propagation through the VAE
and the GRPO path on real backbones while the learned scorers (CLIPScore, PickScore, HPSv2,
GenEval) are not available.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from rtdmd.registry import REWARDS

from .base import RewardScorer


@REWARDS.register_module()
class ImageBrightnessReward(RewardScorer):
    """``r(img) = mean pixel value``; images ``(B, 3, H, W)`` in [0, 1], rewards in [0, 1].

    Differentiable, so reward back-propagation may use it.
    """

    differentiable = True

    def forward(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                metadata: Sequence[dict] | None = None) -> Tensor:
        if samples.ndim != 4:
            raise ValueError(f'expected images (B, C, H, W), got shape {tuple(samples.shape)}')
        return samples.float().mean(dim=(1, 2, 3))
