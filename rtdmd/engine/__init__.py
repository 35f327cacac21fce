<<<<<<< HEAD
from .hooks import NonFiniteGuardHook, RNGStateHook, SafeCheckpointHook, TrainableEMAHook
=======
from .hooks import ExportWeightsHook, RNGStateHook, TrainableEMAHook
>>>>>>> shapes
from .optim import DistillerOptimWrapperConstructor
from .optim_wrappers import NonFiniteGuardOptimWrapper
from .wrappers import DistillerDataParallel

<<<<<<< HEAD
__all__ = ['DistillerDataParallel', 'DistillerOptimWrapperConstructor', 'NonFiniteGuardHook',
           'NonFiniteGuardOptimWrapper', 'RNGStateHook', 'SafeCheckpointHook',
           'TrainableEMAHook']
=======
__all__ = ['DistillerDataParallel', 'DistillerOptimWrapperConstructor', 'RNGStateHook',
           'ExportWeightsHook', 'TrainableEMAHook']
>>>>>>> shapes
