from .cps import CPSSampler, CPSTransition, EulerSampler, Rollout
from .noise import (
    GeneratorNoise,
    GivenNoise,
    GroupSharedNoise,
    NoiseSource,
    PerSampleNoise,
    PrefetchedNoise,
)

__all__ = ['CPSSampler', 'CPSTransition', 'EulerSampler', 'GeneratorNoise', 'GivenNoise',
           'GroupSharedNoise', 'NoiseSource', 'PerSampleNoise', 'PrefetchedNoise', 'Rollout']
