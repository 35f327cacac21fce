from .checkpoint import SafeCheckpointHook
from .ema import TrainableEMAHook
<<<<<<< HEAD
from .nonfinite import NonFiniteGuardHook
from .rng_state import RNGStateHook

__all__ = ['NonFiniteGuardHook', 'RNGStateHook', 'SafeCheckpointHook', 'TrainableEMAHook']
=======
from .export_weights import ExportWeightsHook
from .rng_state import RNGStateHook

__all__ = ['RNGStateHook', 'ExportWeightsHook', 'TrainableEMAHook']
>>>>>>> shapes
