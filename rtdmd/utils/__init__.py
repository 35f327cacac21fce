"""Config validation and mmengine compatibility helpers used by tools/train.py and tools/test.py."""

from .config import EXTRA_TOP_LEVEL_KEYS, ConfigError, load_config, validate_config
from .mmengine_compat import (
    CheckpointReadError,
    apply_mmengine_patches,
    init_distributed,
    patch_checkpoint_loader,
)

__all__ = [
    'EXTRA_TOP_LEVEL_KEYS',
    'CheckpointReadError',
    'ConfigError',
    'apply_mmengine_patches',
    'init_distributed',
    'load_config',
    'patch_checkpoint_loader',
    'validate_config',
]
