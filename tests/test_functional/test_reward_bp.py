"""Hinge reward loss for back-propagation on the final step."""

from __future__ import annotations

import torch

from rtdmd.functional.reward_bp import reward_hinge_loss


def test_hinge_value_and_gradient() -> None:
    reward = torch.tensor([0.5, 1.5, 2.9, 3.5, 10.0], requires_grad=True)
    loss = reward_hinge_loss(reward, margin=3.0, scale=1e-4)
    # relu(3 - r) = [2.5, 1.5, 0.1, 0, 0] -> mean 0.82.
    torch.testing.assert_close(loss, torch.tensor(1e-4 * 4.1 / 5))
    loss.backward()
    expected = torch.tensor([-1e-4 / 5] * 3 + [0.0, 0.0])
    torch.testing.assert_close(reward.grad, expected)


def test_always_active_hinge_is_a_shifted_negative_mean_reward() -> None:
    # Rewards below the margin (the release's regime): L = scale * (margin - mean R).
    gen = torch.Generator().manual_seed(0)
    reward = torch.rand(32, generator=gen, dtype=torch.float64) * 2
    loss = reward_hinge_loss(reward, margin=3.0, scale=2e-3)
    torch.testing.assert_close(loss, 2e-3 * (3.0 - reward.mean()))
    assert loss.dtype == torch.float64
    assert reward_hinge_loss(torch.full((4,), 5.0)).item() == 0.0
    assert reward_hinge_loss(torch.ones(4, dtype=torch.bfloat16)).dtype == torch.float32
