"""What a multi-stage config is: its stages' resolved configs, options and checkpoints.

A config with a top-level ``stages`` list trains each stage with its own Runner and work dir
(``<work_dir>/<name>``); a stage may start from an earlier one (``init_from``). This module
resolves one stage's config from the pipeline's (its own file or the pipeline's, plus the
command line's options), validates every stage up front, and finds a stage's checkpoints.
"""

from __future__ import annotations

import ast
import datetime
import os.path as osp
from dataclasses import dataclass, field

from mmengine.config import Config

from rtdmd.utils.checkpoint_io import find_resume_checkpoint, list_checkpoints, read_record
from rtdmd.utils.config import ConfigError, load_config
from rtdmd.utils.run_identity import changed_keys, config_identity
from rtdmd.utils.train_options import apply_train_options

PIPELINE_KEYS = ('stages', 'evaluation')
# Command-line overrides of these keys reach every stage (one world, one reward, one backbone,
# one teacher family, one seed: `randomness.seed=N` reseeds the whole run).
SHARED_KEYS = ('world', 'reward', 'backbone', 'weights_root', 'family', 'randomness')


def stage_config(cfg: Config, stage: dict, cli_options: dict | None = None,
                 init_checkpoint: str | None = None) -> Config:
    """The resolved config of one stage: its own file (or the pipeline's) plus its options.

    A relative ``config`` path is read from the folder of the file that declares ``stages``
    (which may be a base of ``cfg``'s file), so a leaf anywhere on disk can inherit a pipeline.
    ``init_checkpoint`` overrides the ``init_from`` stage's newest checkpoint.
    """
    unknown = set(stage) - {'name', 'config', 'init_from', 'cfg_options'}
    if unknown or 'name' not in stage:
        raise ValueError(f'stages entries are dict(name, config=None, init_from=None, '
                         f'cfg_options=None); got keys {sorted(stage)}')
    own_file = not stage.get('config')
    path = cfg.filename if own_file else osp.normpath(
        osp.join(osp.dirname(declaring_file(cfg.filename, 'stages')), stage['config']))
    plain, scoped = split_stage_options(cli_options)
    options = {k: v for k, v in plain.items() if own_file or k.split('.')[0] in SHARED_KEYS}
    options.update(_dotted(stage.get('cfg_options') or {}))
    options.update(scoped.get('*', {}))
    options.update(scoped.get(stage['name'], {}))
    if stage.get('init_from'):
        options['model.init_checkpoint'] = init_checkpoint or final_checkpoint(
            cfg, stage['init_from'])
    sub = load_config(path, options)
    for key in PIPELINE_KEYS:
        sub.pop(key, None)
    sub.stage_name = stage['name']
    sub.work_dir = osp.join(cfg.work_dir, stage['name'])
    sub.launcher = cfg.get('launcher', 'none')
    # --amp, --auto-scale-lr applied here, so the stage's resolved config (and the identity its
    # checkpoints record and a resume compares) is the one its Runner trains with.
    apply_train_options(sub, list(cfg.get('train_options') or []))
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
    names = [s['name'] for s in (cfg.get('stages') or [])]
    unknown = set(scoped) - set(names) - {'*'}
    if unknown:
        raise ConfigError([f'--cfg-options names unknown stages {sorted(unknown)}; the stages '
                           f'are {names} (or * for all)'])
    for index, stage in enumerate(cfg.get('stages') or []):
        earlier = names[:index]
        if stage.get('init_from') and stage['init_from'] not in earlier:
            raise ConfigError([f"stages[{index}].init_from: {stage['init_from']!r} is not an "
                               f'earlier stage ({earlier})'])
        try:
            stage_config(cfg, {k: v for k, v in stage.items() if k != 'init_from'}, cli_options)
        except ConfigError as err:
            raise ConfigError([f"stage {stage.get('name')}: {e}" for e in err.errors]) from None


def latest_checkpoint(work_dir: str) -> str:
    """The newest checkpoint of ``work_dir`` that passes its checksum (clear error if none)."""
    path, messages = find_resume_checkpoint(work_dir)
    if path is None:
        detail = f' ({"; ".join(messages)})' if messages else ''
        raise FileNotFoundError(f'no intact checkpoint in {work_dir}{detail}: train that stage '
                                f'first (stages run in order)')
    return path


def final_checkpoint(cfg: Config, name: str) -> str:
    return latest_checkpoint(osp.join(cfg.work_dir, name))


def declaring_file(path: str, key: str) -> str:
    """The file of ``path``'s ``_base_`` chain whose own text assigns top-level ``key``.

    The leaf first, then each base in order, depth first; ``path`` itself when none does (or
    for non-Python configs).
    """
    return _find_declaring(path, key) or path


def _find_declaring(path: str, key: str) -> str | None:
    if not path.endswith('.py') or not osp.isfile(path):
        return None
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    bases: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        names = {t.id for t in targets if isinstance(t, ast.Name)}
        if key in names:
            return path
        if '_base_' in names and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            bases = [value] if isinstance(value, str) else list(value)
    for base in bases:
        if '::' not in base:  # package configs (pkg::path) declare no project stages
            found = _find_declaring(osp.normpath(osp.join(osp.dirname(path), base)), key)
            if found:
                return found
    return None


@dataclass
class StagePlan:
    """What a (re)run does with one stage.

    ``state``: ``'fresh'`` (nothing trained yet), ``'resume'`` (an interrupted run continues from
    ``checkpoint``), ``'done'`` (``checkpoint`` is the final one, written by the same resolved
    config), ``'changed'`` (its checkpoints were written with other options; ``reason``) or
    ``'pending'`` (it has checkpoints, but the stage it starts from trains first: whether they
    still fit is known once that stage's final weights are).
    """

    name: str
    cfg: Config
    state: str
    checkpoint: str | None = None
    reason: str = ''
    skipped: list[str] = field(default_factory=list)  # damaged checkpoints passed over


def plan_stage(cfg: Config, stage: dict, cli_options: dict | None,
               plans: dict[str, StagePlan]) -> StagePlan:
    """Classify one stage from its work dir; ``plans`` holds the earlier stages' plans."""
    name, upstream = stage['name'], stage.get('init_from')
    if upstream and plans[upstream].state != 'done':
        # The stage it starts from trains first; its final weights decide about these.
        sub = stage_config(cfg, {k: v for k, v in stage.items() if k != 'init_from'},
                           cli_options)
        if list_checkpoints(sub.work_dir):
            return StagePlan(name, sub, 'pending', reason=f'it starts from stage {upstream}, '
                             f'which trains first')
        return StagePlan(name, sub, 'fresh')
    init = plans[upstream].checkpoint if upstream else None
    sub = stage_config(cfg, stage, cli_options, init_checkpoint=init)
    path, skipped = find_resume_checkpoint(sub.work_dir)
    if path is None:
        return StagePlan(name, sub, 'fresh', skipped=skipped)
    max_iters = sub.train_cfg.max_iters
    record = read_record(path)
    if record is None:  # written before checkpoints had records: trust the file name
        done = path.endswith(f'iter_{max_iters}.pth')
        return StagePlan(name, sub, 'done' if done else 'resume', path, skipped=skipped)
    ours = config_identity(sub, name)
    if record.identity.get('config_hash', ours['config_hash']) != ours['config_hash']:
        keys = changed_keys(record.identity, ours)
        what = 'its start weights changed' if all(
            k.startswith('model.init_checkpoint') for k in keys) else 'options changed'
        return StagePlan(name, sub, 'changed', path, f'{what}: {"; ".join(keys)}', skipped)
    if record.iter is not None and record.iter > max_iters:
        return StagePlan(name, sub, 'changed', path, f'trained to iter {record.iter}, past '
                         f'train_cfg.max_iters={max_iters}', skipped)
    state = 'done' if record.iter == max_iters else 'resume'
    return StagePlan(name, sub, state, path, skipped=skipped)


def plan_stages(cfg: Config, cli_options: dict | None = None) -> list[StagePlan]:
    """:func:`plan_stage` for every stage, in order."""
    plans: dict[str, StagePlan] = {}
    for stage in cfg.stages:
        plans[stage['name']] = plan_stage(cfg, stage, cli_options, plans)
    return list(plans.values())
