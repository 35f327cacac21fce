"""RewardScorer: forward and score_details, whichever a scorer implements, agree."""

from __future__ import annotations

import pytest
import torch

from rtdmd.rewards.base import MAIN_SCORE, RewardScorer
from rtdmd.rewards.image_stats import ImageBrightnessReward


class MeanAndMax(RewardScorer):
    def score_details(self, samples, prompts=None, metadata=None):
        flat = samples.flatten(1)
        return {MAIN_SCORE: flat.mean(1), 'max': flat.max(1).values}


def test_forward_reads_the_reward_off_score_details() -> None:
    x = torch.rand(3, 3, 4, 4)
    torch.testing.assert_close(MeanAndMax()(x, None), x.flatten(1).mean(1))


def test_score_details_defaults_to_the_reward_alone() -> None:
    x = torch.rand(2, 3, 4, 4)
    details = ImageBrightnessReward().score_details(x, None)
    assert list(details) == [MAIN_SCORE]
    torch.testing.assert_close(details[MAIN_SCORE], x.mean(dim=(1, 2, 3)))


def test_a_scorer_implementing_neither_says_so() -> None:
    with pytest.raises(NotImplementedError, match='neither forward nor score_details'):
        RewardScorer()(torch.rand(1, 3, 2, 2), None)
