from .cps import CPSSampler, CPSTransition, EulerSampler, Rollout
from .draws import Draws, DrawsNoise, GroupDraws, StreamDraws
from .noise import GeneratorNoise, GivenNoise, GroupSharedNoise, NoiseSource, PerSampleNoise

__all__ = ['CPSSampler', 'CPSTransition', 'Draws', 'DrawsNoise', 'EulerSampler',
           'GeneratorNoise', 'GivenNoise', 'GroupDraws', 'GroupSharedNoise', 'NoiseSource',
           'PerSampleNoise', 'Rollout', 'StreamDraws']
