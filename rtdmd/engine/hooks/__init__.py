from .checkpoint import SafeCheckpointHook
from .ema import TrainableEMAHook
from .nonfinite import NonFiniteGuardHook
from .rng_state import RNGStateHook
from .visualization import SampleVisualizationHook

__all__ = ['NonFiniteGuardHook', 'RNGStateHook', 'SafeCheckpointHook',
           'SampleVisualizationHook', 'TrainableEMAHook']
