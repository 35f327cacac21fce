from .cps import CPSSampler, CPSTransition, EulerSampler, Rollout
from .noise import GeneratorNoise, GroupSharedNoise, NoiseSource, PerSampleNoise, PrefetchedNoise

__all__ = ['CPSSampler', 'CPSTransition', 'EulerSampler', 'GeneratorNoise', 'GroupSharedNoise',
           'NoiseSource', 'PerSampleNoise', 'PrefetchedNoise', 'Rollout']
