"""Reward scorers: toy rewards of the analytic world and image reward models (REWARDS)."""

from .aesthetic import AestheticScore
from .base import RewardScorer
from .clip_score import CLIPScore
from .geneval import GenEvalReward
from .geneval2 import GenEval2Reward
from .hps_v2 import HPSv2
from .hps_v3 import HPSv3
from .image_reward import ImageReward
from .image_stats import ImageBrightnessReward
from .imagenet_classifier import ImageNetClassifierReward
from .multi import MultiReward
from .ocr import OCRReward
from .pick_score import PickScore
from .shapes import ShapesGenEvalReward, ShapesSoftReward
from .toy import LinearReward, ModeReward, QuadraticReward

__all__ = [
    'AestheticScore', 'CLIPScore', 'GenEval2Reward', 'GenEvalReward', 'HPSv2', 'HPSv3',
    'ImageBrightnessReward', 'ImageNetClassifierReward', 'ImageReward', 'LinearReward',
    'ModeReward', 'MultiReward', 'OCRReward', 'PickScore', 'QuadraticReward', 'RewardScorer',
    'ShapesGenEvalReward', 'ShapesSoftReward',
]
