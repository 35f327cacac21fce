"""What a multi-stage config is: its stages' resolved configs, options and checkpoints.

A config with a top-level ``stages`` list trains each stage with its own Runner and work dir
(``<work_dir>/<name>``); a stage may start from an earlier one (``init_from``). This module
resolves one stage's config from the pipeline's (its own file or the pipeline's, plus the
command line's options), validates every stage up front, and finds a stage's checkpoints.
"""

from __future__ import annotations

import datetime
import os.path as osp

from mmengine.config import Config

from rtdmd.utils.config import ConfigError, load_config

PIPELINE_KEYS = ('stages', 'evaluation')
# Command-line overrides of these keys reach every stage (one world, one reward, one backbone,
# one teacher family).
SHARED_KEYS = ('world', 'reward', 'backbone', 'weights_root', 'family')


def stage_config(cfg: Config, stage: dict, cli_options: dict | None = None) -> Config:
    """The resolved config of one stage: its own file (or the pipeline's) plus its options."""
    unknown = set(stage) - {'name', 'config', 'init_from', 'cfg_options'}
    if unknown or 'name' not in stage:
        raise ValueError(f'stages entries are dict(name, config=None, init_from=None, '
                         f'cfg_options=None); got keys {sorted(stage)}')
    own_file = not stage.get('config')
    path = cfg.filename if own_file else osp.normpath(
        osp.join(osp.dirname(cfg.filename), stage['config']))
    plain, scoped = split_stage_options(cli_options)
    options = {k: v for k, v in plain.items() if own_file or k.split('.')[0] in SHARED_KEYS}
    options.update(_dotted(stage.get('cfg_options') or {}))
    options.update(scoped.get('*', {}))
    options.update(scoped.get(stage['name'], {}))
    if stage.get('init_from'):
        options['model.init_checkpoint'] = final_checkpoint(cfg, stage['init_from'])
    sub = load_config(path, options)
    for key in PIPELINE_KEYS:
        sub.pop(key, None)
    sub.work_dir = osp.join(cfg.work_dir, stage['name'])
    sub.launcher = cfg.get('launcher', 'none')
    stamp = datetime.datetime.now().strftime('%Y%m%d_%H%M%S_%f')
    sub.experiment_name = f"{stage['name']}_{stamp}"
    return sub


def _dotted(options: dict, prefix: str = '') -> dict:
    """Nested option dicts as dotted keys, so they merge beside dotted keys (mmengine would let
    a nested ``model`` dict silently replace the ``model.*`` keys next to it)."""
    flat = {}
    for key, value in options.items():
        if isinstance(value, dict) and value and '_delete_' not in value:
            flat.update(_dotted(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def split_stage_options(options: dict | None) -> tuple[dict, dict[str, dict]]:
    """Split ``--cfg-options`` into plain ones and ``{stage: options}`` for ``stage:key=value``."""
    plain: dict = {}
    scoped: dict[str, dict] = {}
    for key, value in (options or {}).items():
        if ':' in key:
            stage, _, sub_key = key.partition(':')
            scoped.setdefault(stage, {})[sub_key] = value
        else:
            plain[key] = value
    return plain, scoped


def default_work_dir(config_path: str) -> str:
    """``work_dirs/<config path below configs/, without .py>`` (``work_dirs/<name>`` elsewhere),
    so ``configs/ac_dmd/x.py`` and ``configs/rtdmd/x.py`` never share a folder."""
    parts = osp.normpath(osp.abspath(config_path)).split(osp.sep)
    stem = osp.splitext(parts[-1])[0]
    if 'configs' in parts[:-1]:
        below = parts[len(parts) - 1 - parts[::-1][1:].index('configs'):-1]
        return osp.join('work_dirs', *below, stem)
    return osp.join('work_dirs', stem)


def check_stage_options(cfg: Config, cli_options: dict | None) -> None:
    """Validate a pipeline before anything trains.

    ``NAME:key=value`` options must name a stage (or ``*``); every stage's config must load
    and validate with its options (``init_from`` is checked by name, as its checkpoint does not
    exist yet).
    """
    _, scoped = split_stage_options(cli_options)
    if scoped and not cfg.get('stages'):
        raise ConfigError([f'stage-scoped options {sorted(scoped)} need a config with stages'])
    names = [s['name'] for s in cfg.get('stages', [])]
    unknown = set(scoped) - set(names) - {'*'}
    if unknown:
        raise ConfigError([f'--cfg-options names unknown stages {sorted(unknown)}; the stages '
                           f'are {names} (or * for all)'])
    for index, stage in enumerate(cfg.get('stages', [])):
        earlier = names[:index]
        if stage.get('init_from') and stage['init_from'] not in earlier:
            raise ConfigError([f"stages[{index}].init_from: {stage['init_from']!r} is not an "
                               f'earlier stage ({earlier})'])
        try:
            stage_config(cfg, {k: v for k, v in stage.items() if k != 'init_from'}, cli_options)
        except ConfigError as err:
            raise ConfigError([f"stage {stage.get('name')}: {e}" for e in err.errors]) from None


def latest_checkpoint(work_dir: str) -> str:
    """The checkpoint named in ``<work_dir>/last_checkpoint`` (clear error if there is none)."""
    path = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(path):
        raise FileNotFoundError(f'no checkpoint in {work_dir}: train that stage first '
                                f'(stages run in order)')
    with open(path) as f:
        return f.read().strip()


def final_checkpoint(cfg: Config, name: str) -> str:
    return latest_checkpoint(osp.join(cfg.work_dir, name))
