from .cps import CPSSampler, EulerSampler, Rollout

__all__ = ['CPSSampler', 'EulerSampler', 'Rollout']
