from .base import ROLES, Backbone, Condition
from .gaussian_mixture import GaussianMixtureTeacher
from .toy import GaussianMixtureBackbone, VelocityMLP

__all__ = ['ROLES', 'Backbone', 'Condition', 'GaussianMixtureTeacher', 'GaussianMixtureBackbone',
           'VelocityMLP']
from .flux import FluxBackbone  # noqa: E402,F401
from .flux2 import Flux2KleinBackbone  # noqa: E402,F401
from .sd3 import SD3Backbone  # noqa: E402,F401
