from .checkpoint import SafeCheckpointHook
from .ema import TrainableEMAHook
from .export_weights import ExportWeightsHook
from .monitors import RewardHackingMonitorHook
from .nonfinite import NonFiniteGuardHook
from .rng_state import RNGStateHook
from .visualization import SampleVisualizationHook

__all__ = ['ExportWeightsHook', 'NonFiniteGuardHook', 'RNGStateHook', 'RewardHackingMonitorHook',
           'SafeCheckpointHook', 'SampleVisualizationHook', 'TrainableEMAHook']
