from .hooks import RNGStateHook, TrainableEMAHook
from .optim import DistillerOptimWrapperConstructor
from .wrappers import DistillerDataParallel

__all__ = ['DistillerDataParallel', 'DistillerOptimWrapperConstructor', 'RNGStateHook',
           'TrainableEMAHook']
