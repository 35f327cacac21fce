"""What a checkpoint was trained with: a hash of the resolved config, stored beside it.

A stage counts as finished only when its final checkpoint was written by the same resolved
config (:func:`config_identity`); ``--resume`` and ``model.init_checkpoint`` refuse a checkpoint
of another stage or config, naming the keys that differ (:func:`changed_keys`).

The hash covers every key that can change the trained weights. Left out are the keys that only
say where and how a run is logged or saved (work dir, logger, checkpoint and sample-grid intervals,
validation and test settings, the launcher, the distributed engine ``model_wrapper_cfg``), and
``train_cfg.max_iters``, so that a finished run can be trained further with ``--resume``.
``train_dataloader.batch_size`` enters as the global batch (times ``WORLD_SIZE``), so a run
resumes on another number of processes with the same global batch. ``model.init_checkpoint``
enters as the checkpoint's content hash rather than its path: re-training stage 1 changes every
stage started from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
from typing import Any

from mmengine.config import Config

__all__ = ['IGNORED_KEYS', 'changed_keys', 'checkpoint_content_id', 'config_identity',
           'flatten_config']

#: Dotted key prefixes that do not change the trained weights (see module docstring).
IGNORED_KEYS: tuple[str, ...] = (
    'work_dir', 'experiment_name', 'launcher', 'resume', 'load_from', 'log_level', 'visualizer',
    'log_processor', 'env_cfg', 'default_hooks.logger', 'default_hooks.checkpoint',
    'default_hooks.timer', 'default_hooks.nonfinite', 'default_hooks.visualization',
    'train_cfg.max_iters',
    'train_cfg.val_interval', 'val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader',
    'test_evaluator', 'test_cfg', 'evaluation', 'stages', 'benchmark', 'filename', 'stage_name',
    'model_wrapper_cfg',  # DDP or FSDP train the same weights (tests/test_engine/test_fsdp.py)
)


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + '.') or key.startswith(p + '[')
               for p in IGNORED_KEYS)


def flatten_config(cfg: Config | dict) -> dict[str, Any]:
    """Dotted keys -> JSON-normalised leaf values (lists are leaves; tuples become lists)."""
    root = cfg.to_dict() if isinstance(cfg, Config) else dict(cfg)
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                if str(key).startswith('_'):
                    continue  # config-local helpers
                walk(value, f'{prefix}.{key}' if prefix else str(key))
        else:
            flat[prefix] = json.loads(json.dumps(node, sort_keys=True, default=str))

    walk(root, '')
    return flat


def checkpoint_content_id(path: str) -> str:
    """What a checkpoint holds: the hash of its weights (from its record), else of its bytes."""
    from .checkpoint_io import file_sha256, read_record

    record = read_record(path)
    if record is not None and record.weights_sha256:
        return f'weights:{record.weights_sha256}'
    if record is not None:
        return f'sha256:{record.sha256}'
    if osp.isfile(path):
        return f'sha256:{file_sha256(path)}'
    return f'missing:{path}'


def config_identity(cfg: Config | dict, stage: str | None = None) -> dict:
    """``dict(stage, model_type, config_file, config_hash, options)`` of a resolved config.

    ``options`` are the hashed dotted keys and their values (``changed_keys`` compares them).
    """
    flat = {k: v for k, v in flatten_config(cfg).items() if not _ignored(k)}
    batch = flat.get('train_dataloader.batch_size')
    if isinstance(batch, int):  # per process: the global batch is what is trained
        flat['train_dataloader.batch_size'] = batch * int(os.environ.get('WORLD_SIZE', '1'))
    init = flat.get('model.init_checkpoint')
    if isinstance(init, str) and init:
        flat['model.init_checkpoint'] = checkpoint_content_id(init)
    text = json.dumps(flat, sort_keys=True)
    filename = cfg.filename if isinstance(cfg, Config) else cfg.get('filename')
    return dict(stage=stage, model_type=flat.get('model.type'),
                config_file=osp.basename(filename) if filename else None,
                config_hash=hashlib.sha256(text.encode()).hexdigest(), options=flat)


def changed_keys(old: dict, new: dict, limit: int = 8) -> list[str]:
    """``'key: old -> new'`` for every hashed option that differs between two identities."""
    a, b = old.get('options') or {}, new.get('options') or {}
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, '<unset>') != b.get(key, '<unset>'):
            out.append(f'{key}: {_short(a.get(key, "<unset>"))} -> {_short(b.get(key, "<unset>"))}')
    if len(out) > limit:
        out = out[:limit] + [f'... and {len(out) - limit} more']
    return out


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= width else text[:width - 3] + '...'
