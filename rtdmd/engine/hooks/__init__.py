from .ema import TrainableEMAHook
from .export_weights import ExportWeightsHook
from .rng_state import RNGStateHook

__all__ = ['RNGStateHook', 'ExportWeightsHook', 'TrainableEMAHook']
