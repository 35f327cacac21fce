"""Registries of the ``rtdmd`` scope.

Every buildable thing in rtdmd is registered under its class name in one of these registries.
The first four are the project's own; the others are children of mmengine's registries so that
configs can name rtdmd hooks, loops, datasets, ... with ``type='ClassName'`` and the Runner finds
them (``default_scope = 'rtdmd'``).
"""

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import EVALUATOR as MMENGINE_EVALUATOR
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='rtdmd', locations=['rtdmd.models'])
LOSSES = Registry('loss', scope='rtdmd', locations=['rtdmd.models.losses'])
SAMPLERS = Registry('sampler', scope='rtdmd', locations=['rtdmd.models.samplers'])
REWARDS = Registry('reward', scope='rtdmd', locations=['rtdmd.rewards'])

HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='rtdmd', locations=['rtdmd.engine'])
LOOPS = Registry('loop', parent=MMENGINE_LOOPS, scope='rtdmd', locations=['rtdmd.engine'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='rtdmd',
                    locations=['rtdmd.datasets'])
DATA_SAMPLERS = Registry('data sampler', parent=MMENGINE_DATA_SAMPLERS, scope='rtdmd',
                         locations=['rtdmd.datasets'])
METRICS = Registry('metric', parent=MMENGINE_METRICS, scope='rtdmd',
                   locations=['rtdmd.evaluation'])
MODEL_WRAPPERS = Registry('model_wrapper', parent=MMENGINE_MODEL_WRAPPERS, scope='rtdmd',
                          locations=['rtdmd.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry('optimizer wrapper constructor',
                                      parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='rtdmd',
                                      locations=['rtdmd.engine'])

# Children without rtdmd entries of their own, so that building mmengine's optimizers, schedulers
# and visualizers from the 'rtdmd' scope finds them without a fallback warning.
OPTIMIZERS = Registry('optimizer', parent=MMENGINE_OPTIMIZERS, scope='rtdmd')
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS, scope='rtdmd')
PARAM_SCHEDULERS = Registry('parameter scheduler', parent=MMENGINE_PARAM_SCHEDULERS,
                            scope='rtdmd')
VISUALIZERS = Registry('visualizer', parent=MMENGINE_VISUALIZERS, scope='rtdmd')
VISBACKENDS = Registry('vis_backend', parent=MMENGINE_VISBACKENDS, scope='rtdmd')
LOG_PROCESSORS = Registry('log_processor', parent=MMENGINE_LOG_PROCESSORS, scope='rtdmd')
EVALUATOR = Registry('evaluator', parent=MMENGINE_EVALUATOR, scope='rtdmd')
