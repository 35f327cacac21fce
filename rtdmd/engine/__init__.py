from .fsdp import DistillerFullyShard
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

__all__ = ['DistillerDataParallel', 'DistillerFullyShard', 'DistillerOptimWrapperConstructor',
           'ExportWeightsHook', 'NonFiniteGuardHook', 'NonFiniteGuardOptimWrapper', 'RNGStateHook',
           'SafeCheckpointHook', 'TrainableEMAHook']
