"""``tools/train.py --amp`` and ``--auto-scale-lr``, as in the OpenMMLab toolboxes' train.py."""

from __future__ import annotations

from mmengine.config import Config
from mmengine.logging import print_log

from .config import ConfigError

__all__ = ['TRAIN_OPTIONS', 'apply_train_options', 'enable_amp', 'enable_auto_scale_lr']

#: Wrapper types ``--amp`` turns into their bf16-autocast counterpart.
_AMP = {'NonFiniteGuardOptimWrapper': 'AmpGuardOptimWrapper',
        'OptimWrapper': 'AmpGuardOptimWrapper'}


def _wrappers(cfg: Config) -> dict:
    """The optimizer wrapper configs: one per role (``generator``, ``fake_score``) or one."""
    optim = cfg.optim_wrapper
    if 'type' in optim or 'optimizer' in optim:
        return {'optim_wrapper': optim}
    return {k: v for k, v in optim.items() if isinstance(v, dict)}


def enable_amp(cfg: Config) -> None:
    """bf16 autocast for every role's forwards (``AmpGuardOptimWrapper``).

    Raises:
        ConfigError: a wrapper type that has no bf16-autocast counterpart.
    """
    for role, wrapper in _wrappers(cfg).items():
        kind = wrapper.get('type', 'OptimWrapper')
        if kind in ('AmpGuardOptimWrapper', 'AmpOptimWrapper'):
            print_log(f'AMP is already enabled for {role} in the config', logger='current')
            continue
        if kind not in _AMP:
            raise ConfigError([f'--amp: optim_wrapper {role} is a {kind}; --amp knows '
                               f'{sorted(_AMP)}'])
        wrapper['type'] = _AMP[kind]
        wrapper['dtype'] = 'bfloat16'


def enable_auto_scale_lr(cfg: Config) -> None:
    """Scale every learning rate by (world size x batch size) / ``auto_scale_lr.base_batch_size``.

    Raises:
        ConfigError: the config states no ``auto_scale_lr.base_batch_size``.
    """
    auto = cfg.get('auto_scale_lr') or {}
    if 'base_batch_size' not in auto:
        raise ConfigError(['--auto-scale-lr: the config has no auto_scale_lr.base_batch_size (the '
                           'total batch size its learning rates were tuned for); add '
                           'auto_scale_lr = dict(base_batch_size=N) or pass --cfg-options '
                           'auto_scale_lr.base_batch_size=N'])
    cfg.auto_scale_lr = dict(auto, enable=True)


TRAIN_OPTIONS = {'amp': enable_amp, 'auto_scale_lr': enable_auto_scale_lr}


def apply_train_options(cfg: Config, options: list[str]) -> None:
    """Apply the named options (``'amp'``, ``'auto_scale_lr'``) to ``cfg`` in place."""
    unknown = set(options) - set(TRAIN_OPTIONS)
    if unknown:
        raise ValueError(f'unknown train options {sorted(unknown)}; known: {sorted(TRAIN_OPTIONS)}')
    for name in options:
        TRAIN_OPTIONS[name](cfg)
