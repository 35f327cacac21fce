from .base import RewardScorer
from .toy import LinearReward, ModeReward, QuadraticReward

__all__ = ['LinearReward', 'ModeReward', 'QuadraticReward', 'RewardScorer']
