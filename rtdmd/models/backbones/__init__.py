from .base import ROLES, Backbone, Condition
from .gaussian_mixture import GaussianMixtureTeacher
from .toy import GaussianMixtureBackbone, VelocityMLP

__all__ = ['ROLES', 'Backbone', 'Condition', 'GaussianMixtureTeacher', 'GaussianMixtureBackbone',
           'VelocityMLP']
