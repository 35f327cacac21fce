from .distribution_matching import AmbientDSMLoss, ConsistencyLoss, DMDLoss

__all__ = ['AmbientDSMLoss', 'ConsistencyLoss', 'DMDLoss']
