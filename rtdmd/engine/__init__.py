from .hooks import ExportWeightsHook, RNGStateHook, TrainableEMAHook
from .optim import DistillerOptimWrapperConstructor
from .wrappers import DistillerDataParallel

__all__ = ['DistillerDataParallel', 'DistillerOptimWrapperConstructor', 'RNGStateHook',
           'ExportWeightsHook', 'TrainableEMAHook']
