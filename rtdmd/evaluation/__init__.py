from .gaussian_mixture_metric import GaussianMixtureMetric
from .sliced_wasserstein import fixed_projections, sliced_wasserstein2

__all__ = ['GaussianMixtureMetric', 'fixed_projections', 'sliced_wasserstein2']
