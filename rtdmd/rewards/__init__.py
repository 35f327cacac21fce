"""Reward scorers: toy rewards of the analytic world and image reward models (REWARDS)."""

from .aesthetic import AestheticScore
from .base import RewardScorer
from .clip_score import CLIPScore
from .hps_v2 import HPSv2
from .image_stats import ImageBrightnessReward
from .imagenet_classifier import ImageNetClassifierReward
from .multi import MultiReward
from .pick_score import PickScore
from .toy import LinearReward, ModeReward, QuadraticReward

__all__ = ['AestheticScore', 'CLIPScore', 'HPSv2', 'ImageBrightnessReward',
           'ImageNetClassifierReward', 'LinearReward', 'ModeReward', 'MultiReward', 'PickScore',
           'QuadraticReward', 'RewardScorer']
