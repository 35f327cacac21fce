from .ac_dmd import ACDMDDistiller
from .base import DistillerBase

__all__ = ['ACDMDDistiller', 'DistillerBase']
