"""Run a config: one Runner, or a pipeline of stages followed by a side-by-side evaluation.

A config with a top-level ``stages`` list trains each stage with its own Runner and work dir
(``<work_dir>/<name>``); a stage may start from an earlier one (``init_from``). A finished stage
is skipped and an interrupted one resumed, so a crashed pipeline continues where it stopped.
``evaluation`` then samples every listed model and writes the comparison (the analytic world's
ground-truth report for the toy configs).
"""

from __future__ import annotations

import datetime
import json
import os
import os.path as osp
from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from rtdmd.utils.config import ConfigError, load_config
from rtdmd.utils.setup_env import register_all_modules

PIPELINE_KEYS = ('stages', 'evaluation')
# Command-line overrides of these keys reach every stage (one world, one reward, one backbone).
SHARED_KEYS = ('world', 'reward', 'backbone', 'weights_root')


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg``; it ignores the project-level keys and dumps the whole config."""
    register_all_modules()
    return Runner.from_cfg(cfg)


def run_training(cfg: Config, cli_options: dict | None = None) -> Runner | None:
    """Train ``cfg``: a single Runner, or every stage and then the evaluation.

    ``cli_options`` are the command line's ``--cfg-options``: they reach every stage that uses
    the pipeline's own file, and their world / reward / backbone keys reach every stage;
    ``NAME:key=value`` reaches stage NAME only and ``*:key=value`` every stage.
    """
    check_stage_options(cfg, cli_options)
    check_training_rewards(cfg, cli_options)
    if not cfg.get('stages'):
        runner = build_runner(cfg)
        runner.train()
        return runner
    for stage in cfg.stages:
        run_stage(cfg, stage, cli_options)
    if cfg.get('evaluation'):
        run_evaluation(cfg, cli_options)
    return None


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
    exist yet); ``evaluation`` may only hold known keys and name known models.
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
    if cfg.get('stages') and cfg.get('evaluation'):
        from rtdmd.evaluation.stage_evaluation import check_evaluation
        check_evaluation(cfg.evaluation, names)


def check_training_rewards(cfg: Config, cli_options: dict | None = None) -> None:
    """Every reward model a run will train on finds its weight files, before anything trains.

    A pipeline builds its stage-2 rewards only after stage 1 has run for hours; this checks them
    all up front from the configs (no model is built).

    Raises:
        MissingRewardWeightsError: naming every reward with missing files and their sources.
    """
    from rtdmd.rewards.weights import check_all_reward_weights

    configs = ([stage_config(cfg, {k: v for k, v in stage.items() if k != 'init_from'},
                             cli_options) for stage in cfg.stages]
               if cfg.get('stages') else [cfg])
    scorers = [spec['scorer'] for sub in configs
               for spec in (sub.get('model', {}).get('rewards') or {}).values()
               if isinstance(spec, dict) and isinstance(spec.get('scorer'), dict)]
    check_all_reward_weights(scorers)


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


def run_stage(cfg: Config, stage: dict, cli_options: dict | None = None) -> None:
    sub = stage_config(cfg, stage, cli_options)
    max_iters = sub.train_cfg.max_iters
    if osp.isfile(osp.join(sub.work_dir, 'last_checkpoint')):
        done = final_checkpoint(cfg, stage['name']).endswith(f'iter_{max_iters}.pth')
        if done:
            print_log(f"stage {stage['name']}: finished earlier, skipped", logger='current')
            return
        sub.resume = True  # an interrupted stage continues from its last checkpoint
    print_log(f"stage {stage['name']}: training in {sub.work_dir}", logger='current')
    build_runner(sub).train()


def run_evaluation(cfg: Config, cli_options: dict | None = None) -> dict[str, Any]:
    """Evaluate every model of ``cfg.evaluation`` from its stage's final checkpoint."""
    from rtdmd.evaluation.stage_evaluation import evaluate_stages
    stages = {s['name']: s for s in cfg.stages}
    return evaluate_stages(cfg, lambda name: stage_config(cfg, stages[name], cli_options),
                           list(stages))


def run_test(cfg: Config, checkpoint: str | None, cli_options: dict | None = None
             ) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the config's ``load_from``); writes ``metrics.json``.

    For a pipeline config (``stages``), evaluates the trained stages side by side instead.
    """
    if cfg.get('stages'):
        return run_evaluation(cfg, cli_options)
    if checkpoint is not None:
        cfg.load_from = checkpoint
    runner = build_runner(cfg)
    metrics = runner.test()
    os.makedirs(cfg.work_dir, exist_ok=True)
    path = osp.join(cfg.work_dir, 'metrics.json')
    with open(path, 'w') as f:
        json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2, sort_keys=True)
    runner.logger.info(f'metrics written to {path}')
    return metrics
