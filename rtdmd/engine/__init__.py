from .hooks import (
                    ExportWeightsHook,
                    NonFiniteGuardHook,
                    RNGStateHook,
                    SafeCheckpointHook,
                    TrainableEMAHook,
)
from .optim import DistillerOptimWrapperConstructor
from .optim_wrappers import NonFiniteGuardOptimWrapper
from .wrappers import DistillerDataParallel

__all__ = ['DistillerDataParallel', 'DistillerOptimWrapperConstructor', 'ExportWeightsHook',
           'NonFiniteGuardHook', 'NonFiniteGuardOptimWrapper', 'RNGStateHook',
           'SafeCheckpointHook', 'TrainableEMAHook']
