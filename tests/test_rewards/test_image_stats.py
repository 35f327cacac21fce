"""ImageBrightnessReward: the weight-free differentiable image reward of tests and mini runs."""

from __future__ import annotations

import pytest
import torch

from rtdmd.registry import REWARDS


def test_brightness_is_the_mean_pixel_and_differentiable() -> None:
    import rtdmd.rewards  # noqa: F401  (registers)

    reward = REWARDS.build(dict(type='ImageBrightnessReward'))
    assert reward.differentiable
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    r = reward(images, ['a', 'b', 'c'])
    assert r.shape == (3,) and r.dtype == torch.float32
    torch.testing.assert_close(r, images.detach().mean(dim=(1, 2, 3)))
    r.sum().backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 1 / (3 * 8 * 8)))
    assert reward(torch.ones(2, 3, 4, 4, dtype=torch.bfloat16)).tolist() == [1.0, 1.0]


def test_brightness_rejects_non_images() -> None:
    import rtdmd.rewards  # noqa: F401

    with pytest.raises(ValueError, match='expected images'):
        REWARDS.build(dict(type='ImageBrightnessReward'))(torch.zeros(2, 4))
