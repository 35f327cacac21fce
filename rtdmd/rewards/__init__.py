from .base import RewardScorer
from .toy import LinearReward, ModeReward, QuadraticReward

__all__ = ['LinearReward', 'ModeReward', 'QuadraticReward', 'RewardScorer']
from .image_stats import ImageBrightnessReward  # noqa: E402,F401
