from .ac_dmd import ACDMDDistiller
from .base import DistillerBase
from .matching import DistributionMatching, FinalStepMatching, RandomStopMatching
from .rtdmd import RTDMDDistiller

__all__ = ['ACDMDDistiller', 'DistillerBase', 'DistributionMatching', 'FinalStepMatching',
           'RTDMDDistiller', 'RandomStopMatching']
