"""Training the shapes world's teachers: families (SD3, FLUX.2-klein) and their trainers."""

from .base import TeacherFamily
from .features import ShapesFeatureTrainer
from .flux2 import Flux2ShapesFamily
from .sd3 import SD3ShapesFamily
from .trainers import ShapesFlowTeacher, ShapesVAETrainer

__all__ = ['Flux2ShapesFamily', 'SD3ShapesFamily', 'ShapesFeatureTrainer', 'ShapesFlowTeacher',
           'ShapesVAETrainer', 'TeacherFamily']
