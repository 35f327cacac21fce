"""Hinge loss for reward back-propagation on the deterministic final step (ALGORITHM.md 4.6 (b)).

The final step decodes ``x0_hat`` through the VAE with grad and scores it with the
differentiable rewards; the pathwise term is ``L_bp = scale * mean_b relu(margin - R_b)``. With
the release's margin 3 and summed rewards around 1.5, the hinge is always active and
``L_bp = -scale * mean(R) + const`` (ALGORITHM.md 9.10).
"""

from __future__ import annotations

import torch
from torch import Tensor


def reward_hinge_loss(reward: Tensor, margin: float = 3.0, scale: float = 1e-4) -> Tensor:
    """``L_bp = scale * mean_b relu(margin - R_b)``.

    ``dL/dR_b = -scale / B`` where ``R_b < margin`` and 0 where ``R_b > margin``: samples that
    already clear the margin stop pulling. Float32 (float64 stays float64).

    Args:
        reward: ``(B,)`` weighted sum of the differentiable rewards, with grad.
        margin: hinge margin (``bp_margin``).
        scale: loss coefficient (``bp_grad_scale``).

    Returns:
        Scalar loss.
    """
    work = torch.float64 if reward.dtype == torch.float64 else torch.float32
    return scale * torch.relu(margin - reward.to(work)).mean()


__all__ = ['reward_hinge_loss']
