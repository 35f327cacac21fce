"""Which checkpoint a run may start from, and whether a work dir may be used at all.

- A work dir that already holds a run is reused only when asked (``--resume``), or moved aside
  first (``--start-over``): two runs never mix their checkpoints in one folder.
- ``--resume`` takes the newest checkpoint that passes its checksum (saying which newer ones it
  skipped and why), and only one written by the same resolved config (naming the keys that
  differ otherwise) and not past ``train_cfg.max_iters``.
- ``model.init_checkpoint`` must be an intact checkpoint of the same backbone.
"""

from __future__ import annotations

import datetime
import os
import os.path as osp

from mmengine.config import Config
from mmengine.logging import print_log

from .checkpoint_io import (
    CheckpointRecord,
    find_resume_checkpoint,
    list_checkpoints,
    read_record,
    verify_checkpoint,
)
from .errors import RunDirError
from .run_identity import changed_keys, config_identity

__all__ = ['check_init_checkpoint', 'check_resume_checkpoint', 'existing_runs', 'move_aside',
           'prepare_run']


def existing_runs(work_dir: str) -> list[str]:
    """Folders at or directly below ``work_dir`` that hold checkpoints (a stage each)."""
    found = []
    candidates = [work_dir] + ([osp.join(work_dir, d) for d in sorted(os.listdir(work_dir))]
                               if osp.isdir(work_dir) else [])
    for folder in candidates:
        if osp.isdir(folder) and (list_checkpoints(folder)
                                  or osp.isfile(osp.join(folder, 'last_checkpoint'))):
            found.append(folder)
    return found


def move_aside(work_dir: str) -> str:
    """Rename ``work_dir`` to ``<work_dir>.superseded-<time>`` (nothing is deleted)."""
    stamp = datetime.datetime.now().strftime('%Y%m%d_%H%M%S_%f')
    target = f'{work_dir.rstrip(os.sep)}.superseded-{stamp}'
    os.replace(work_dir, target)
    return target


def _describe(path: str, record: CheckpointRecord | None) -> str:
    return f'{path} ({record.describe()})' if record else path


def check_resume_checkpoint(path: str, identity: dict, max_iters: int | None) -> CheckpointRecord:
    """Refuse a checkpoint that is corrupt, of another stage or config, or past ``max_iters``.

    Raises:
        RunDirError: saying what the checkpoint is and why it does not fit.
    """
    try:
        record = verify_checkpoint(path)
    except (OSError, ValueError) as err:
        raise RunDirError(f'cannot resume from {path}: {err}') from None
    theirs = record.identity
    if theirs.get('config_hash') and theirs['config_hash'] != identity['config_hash']:
        what = ('another stage' if theirs.get('stage') != identity.get('stage')
                else 'the same stage with other options')
        keys = changed_keys(theirs, identity)
        ours = f'stage {identity["stage"]}' if identity.get('stage') else 'a single-stage run'
        raise RunDirError(
            f'cannot resume from {_describe(path, record)}: it is a checkpoint of {what}, not '
            f'of this run ({ours}, {identity.get("model_type")}). Differences: '
            f'{"; ".join(keys)}. Use its own config and options, or train this config without '
            f'--resume')
    if max_iters is not None and record.iter is not None and record.iter > max_iters:
        raise RunDirError(
            f'cannot resume from {_describe(path, record)}: it is at iter {record.iter}, past '
            f'this run\'s train_cfg.max_iters={max_iters}, so nothing would be trained')
    return record


def check_init_checkpoint(cfg: Config) -> None:
    """``model.init_checkpoint`` exists, passes its checksum and holds the same backbone.

    Raises:
        RunDirError: naming the checkpoint, what it is and the backbone keys that differ.
    """
    path = (cfg.get('model') or {}).get('init_checkpoint')
    if not path:
        return
    if not osp.isfile(path):
        raise RunDirError(f'model.init_checkpoint: {path} does not exist')
    record = read_record(path)
    if record is None:
        return  # a checkpoint from elsewhere: loaded with weights_only=True, not checked here
    try:
        verify_checkpoint(path)
    except (OSError, ValueError) as err:
        raise RunDirError(f'model.init_checkpoint: {err}') from None
    ours = config_identity(cfg)['options']
    theirs = record.identity.get('options') or {}
    if not theirs:
        return
    keys = [k for k in sorted(set(ours) | set(theirs)) if k.startswith('model.backbone.')
            and ours.get(k, '<unset>') != theirs.get(k, '<unset>')]
    if keys:
        diff = changed_keys(dict(options={k: theirs.get(k, '<unset>') for k in keys}),
                            dict(options={k: ours.get(k, '<unset>') for k in keys}))
        raise RunDirError(f'model.init_checkpoint: {_describe(path, record)} was trained on '
                          f'another backbone: {"; ".join(diff)}')
    print_log(f'starting from {_describe(path, record)}', logger='current')


def prepare_run(cfg: Config) -> None:
    """Resolve ``--resume`` to a verified checkpoint of this run and check the start weights.

    With ``cfg.resume`` and no ``load_from``: the newest intact checkpoint of the work dir (none:
    train from the start). With ``load_from``: that checkpoint, checked. Sets ``cfg.load_from``.

    Raises:
        RunDirError: the checkpoint is corrupt, of another run, or past ``max_iters``.
    """
    identity = config_identity(cfg, cfg.get('stage_name'))
    max_iters = (cfg.get('train_cfg') or {}).get('max_iters')
    if cfg.get('resume'):
        path = cfg.get('load_from')
        if not path:
            path, messages = find_resume_checkpoint(cfg.work_dir)
            for message in messages:
                print_log(message, logger='current', level=30)
            if path is None:
                if messages:
                    raise RunDirError(f'no intact checkpoint in {cfg.work_dir} to resume from '
                                      f'({len(messages)} failed their checksum, see above); '
                                      f'--start-over moves them aside and trains anew')
                print_log(f'--resume: no checkpoint in {cfg.work_dir} yet, training from the '
                          f'start', logger='current')
                cfg.resume = False
                cfg.load_from = None
                check_init_checkpoint(cfg)
                return
        record = check_resume_checkpoint(path, identity, max_iters)
        print_log(f'resuming from {_describe(path, record)}', logger='current')
        cfg.load_from = path
    elif cfg.get('load_from'):
        try:
            record = verify_checkpoint(cfg.load_from) if read_record(cfg.load_from) else None
        except (OSError, ValueError) as err:
            raise RunDirError(f'load_from: {err}') from None
        print_log(f'loading weights from {_describe(cfg.load_from, record)}', logger='current')
    check_init_checkpoint(cfg)
