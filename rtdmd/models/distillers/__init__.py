from .ac_dmd import ACDMDDistiller
from .base import DistillerBase, load_stage_checkpoint
from .matching import SubIntervalMatching
from .rtdmd import RTDMDDistiller

__all__ = ['ACDMDDistiller', 'DistillerBase', 'RTDMDDistiller', 'SubIntervalMatching',
           'load_stage_checkpoint']
