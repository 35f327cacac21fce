from .base import EpochContext, GeneratorTerm, StepView, UpdateContext
from .distribution_matching import AmbientDSMLoss, ConsistencyLoss, DMDLoss
from .policy import ClippedRatioLoss, RewardHingeLoss

__all__ = ['AmbientDSMLoss', 'ClippedRatioLoss', 'ConsistencyLoss', 'DMDLoss', 'EpochContext',
           'GeneratorTerm', 'RewardHingeLoss', 'StepView', 'UpdateContext']
