"""The project's checkpoint files: safe to load, checksummed, and found again after a crash.

Format. A checkpoint is a ``torch.save`` file holding tensors and plain Python values only, so it
loads with ``torch.load(weights_only=True)`` and nothing in it can run code. mmengine puts two
other kinds of objects into its training checkpoints: NumPy arrays and scalars (RNG state, the
message hub's runtime info) and ``HistoryBuffer`` objects (the logged scalars), whose pickle
refers to ``builtins.getattr`` -- allowing that global would let a crafted file reach arbitrary
code. :func:`encode_checkpoint` turns those into tagged dicts of tensors before the file is
written and :func:`decode_checkpoint` rebuilds them after loading, so the allow-list of extra
globals is empty: a file that needs any global beyond torch's own safe set is refused.

Checksum. Beside every checkpoint ``X`` lies ``X.json`` (:data:`RECORD_SUFFIX`) with the SHA-256
and size of ``X``'s bytes, its iteration and the identity of the run that wrote it (stage, config
hash, the options that hash covers; see :mod:`rtdmd.utils.run_identity`). The record is written
before ``X`` is renamed into place, so every checkpoint file has one; a truncated or bit-flipped
file fails :func:`verify_checkpoint`, and :func:`find_resume_checkpoint` falls back to the newest
checkpoint that passes.
"""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    'CheckpointCorruptError', 'CheckpointReadError', 'CheckpointRecord', 'RECORD_FORMAT',
    'RECORD_SUFFIX', 'UnsafeCheckpointError', 'decode_checkpoint', 'encode_checkpoint',
    'file_sha256', 'find_resume_checkpoint', 'list_checkpoints', 'load_checkpoint_file',
    'read_record', 'record_path', 'verify_checkpoint', 'weights_sha256',
]

RECORD_SUFFIX = '.json'
RECORD_FORMAT = 'rtdmd-checkpoint/1'
_ITER_FILE = re.compile(r'^iter_(\d+)\.pth$')
_NDARRAY = '__rtdmd_ndarray__'
_HISTORY = '__rtdmd_history_buffer__'
_CHUNK = 1 << 22


class CheckpointReadError(RuntimeError):
    """A checkpoint file exists but cannot be read (truncated, not a torch file, ...)."""


class CheckpointCorruptError(CheckpointReadError):
    """A checkpoint's bytes do not match the checksum recorded when it was written."""


class UnsafeCheckpointError(CheckpointReadError):
    """A file needs code to load (pickled classes or functions): it is refused, not run."""


@dataclass
class CheckpointRecord:
    """What the record file beside a checkpoint says about it."""

    path: str
    sha256: str
    size: int
    iter: int | None = None
    identity: dict = field(default_factory=dict)
    weights_sha256: str | None = None

    def describe(self) -> str:
        """One line naming what this checkpoint is (stage, model, config, iteration)."""
        ident = self.identity
        parts = [f"stage {ident['stage']}" if ident.get('stage') else 'a single-stage run']
        if ident.get('model_type'):
            parts.append(ident['model_type'])
        if ident.get('config_file'):
            parts.append(f"config {ident['config_file']}")
        if self.iter is not None:
            parts.append(f'iter {self.iter}')
        return ', '.join(parts)


# --------------------------------------------------------------------------------- encoding
def encode_checkpoint(obj: Any) -> Any:
    """``obj`` with NumPy values and ``HistoryBuffer`` objects replaced by tensors and dicts.

    NumPy scalars become Python scalars; arrays become ``{_NDARRAY: tensor}`` (restored by
    :func:`decode_checkpoint`); anything else is returned unchanged.
    """
    from mmengine.logging import HistoryBuffer

    if isinstance(obj, HistoryBuffer):
        log, count = obj.data
        return {_HISTORY: dict(max_length=int(obj.max_length), log=encode_checkpoint(log),
                               count=encode_checkpoint(count))}
    if isinstance(obj, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, encode_checkpoint(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(encode_checkpoint(v) for v in obj)
    return obj


def decode_checkpoint(obj: Any) -> Any:
    """Inverse of :func:`encode_checkpoint`."""
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY}:
            return obj[_NDARRAY].numpy()
        if set(obj) == {_HISTORY}:
            from mmengine.logging import HistoryBuffer

            spec = obj[_HISTORY]
            return HistoryBuffer(list(decode_checkpoint(spec['log'])),
                                 list(decode_checkpoint(spec['count'])), spec['max_length'])
        return type(obj)((k, decode_checkpoint(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)) and not hasattr(obj, '_fields'):
        return type(obj)(decode_checkpoint(v) for v in obj)
    return obj


def weights_sha256(checkpoint: dict) -> str:
    """SHA-256 of a checkpoint's weights and EMA (names, dtypes, shapes and bytes).

    Unlike the file's checksum it does not change with the time stamps in ``meta``: a stage
    re-trained to the same weights keeps the identity of every stage started from it.
    """
    digest = hashlib.sha256()
    for section in ('state_dict', 'ema_state'):
        tensors = checkpoint.get(section) or {}
        for name in sorted(tensors):
            value = tensors[name]
            if not isinstance(value, torch.Tensor):
                continue
            value = value.detach().cpu().contiguous()
            digest.update(f'{section}.{name}:{value.dtype}:{tuple(value.shape)}'.encode())
            digest.update(value.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------- records
def record_path(path: str) -> str:
    return path + RECORD_SUFFIX


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def read_record(path: str) -> CheckpointRecord | None:
    """The record of checkpoint ``path``, or None when it has none (or an unreadable one)."""
    try:
        with open(record_path(path), encoding='utf-8') as f:
            data = json.load(f)
        if data.get('format') != RECORD_FORMAT:
            return None
        return CheckpointRecord(path=path, sha256=data['sha256'], size=int(data['size']),
                                iter=data.get('iter'), identity=data.get('identity') or {},
                                weights_sha256=data.get('weights_sha256'))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_checkpoint(path: str) -> CheckpointRecord:
    """Check ``path`` against its record (size, then SHA-256 of every byte).

    Raises:
        FileNotFoundError: no such file.
        CheckpointCorruptError: no record, or the bytes differ from the recorded ones.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    record = read_record(path)
    if record is None:
        raise CheckpointCorruptError(f'{path} has no checksum record ({osp.basename(path)}'
                                     f'{RECORD_SUFFIX}): it was not written completely by rtdmd')
    size = osp.getsize(path)
    if size != record.size:
        raise CheckpointCorruptError(f'{path} is {size} bytes, {record.size} were written: it is '
                                     f'truncated or was changed after writing')
    if file_sha256(path) != record.sha256:
        raise CheckpointCorruptError(f'{path} fails its SHA-256 check: its bytes changed after '
                                     f'writing (disk or copy corruption)')
    return record


# --------------------------------------------------------------------------------- loading
def load_checkpoint_file(path: str, map_location: Any = None, verify: bool = True) -> dict:
    """Load a checkpoint with ``weights_only=True``, checking its record first when it has one.

    Args:
        path: local checkpoint file.
        map_location: as :func:`torch.load`.
        verify: check the recorded checksum when a record exists (a file without one, e.g. a
            weights file from elsewhere, is still loaded safely, just not checked).

    Raises:
        FileNotFoundError: no such file.
        CheckpointCorruptError: the bytes differ from the recorded ones.
        UnsafeCheckpointError: the file needs arbitrary code (pickled classes) to load.
        CheckpointReadError: the file is truncated or not a torch checkpoint.
    """
    path = osp.expanduser(path)
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if verify and read_record(path) is not None:
        verify_checkpoint(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if 'weights_only' in str(err) or 'Unsupported global' in str(err):
            raise UnsafeCheckpointError(_unsafe_message(path)) from None
        raise _unreadable(path, err) from err
    except (EOFError, zipfile.BadZipFile, ValueError) as err:
        raise _unreadable(path, err) from err
    except RuntimeError as err:
        # Only the zip reader's errors mean a damaged file; others (e.g. a CUDA tensor on a
        # CPU-only machine) are real and pass through unchanged.
        if 'PytorchStreamReader' in str(err) or 'zip archive' in str(err):
            raise _unreadable(path, err) from err
        raise
    return decode_checkpoint(obj)


def _unsafe_message(path: str) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001  (the listing is only a hint)
        names = []
    listed = f' ({", ".join(names[:6])})' if names else ''
    return (f'{path} was refused: loading it would unpickle Python objects{listed}, which can '
            f'run arbitrary code. rtdmd checkpoints hold tensors and plain values only; this '
            f'file was written by other software or by an rtdmd older than the safe format. '
            f'If you trust its origin, convert it once with '
            f'`python -m rtdmd.utils.convert_checkpoint {path} OUT.pth`')


def _unreadable(path: str, error: BaseException) -> CheckpointReadError:
    return CheckpointReadError(f'{path} is not a readable checkpoint (truncated or corrupt?): '
                               f'{type(error).__name__}: {error}')


# --------------------------------------------------------------------------------- resuming
def list_checkpoints(work_dir: str) -> list[tuple[int, str]]:
    """``(iteration, path)`` of every ``iter_N.pth`` in ``work_dir``, newest first."""
    if not osp.isdir(work_dir):
        return []
    found = [(int(m.group(1)), osp.join(work_dir, name)) for name in os.listdir(work_dir)
             if (m := _ITER_FILE.match(name))]
    return sorted(found, reverse=True)


def find_resume_checkpoint(work_dir: str) -> tuple[str | None, list[str]]:
    """The newest checkpoint of ``work_dir`` that passes its checksum, and why others did not.

    Checkpoints without a record (written before records existed) are used only when no
    checkpoint in the folder has one, newest first, as named by ``last_checkpoint``.

    Returns:
        ``(path or None, messages)``: one message per skipped checkpoint, naming it and why.
    """
    checkpoints = list_checkpoints(work_dir)
    messages: list[str] = []
    recorded = [(it, p) for it, p in checkpoints if read_record(p) is not None]
    if not recorded:
        legacy = _legacy_last_checkpoint(work_dir)
        return (legacy or (checkpoints[0][1] if checkpoints else None)), messages
    for _, path in recorded:
        try:
            verify_checkpoint(path)
            return path, messages
        except (OSError, CheckpointReadError) as err:
            messages.append(f'skipped {path}: {err}')
    return None, messages


def _legacy_last_checkpoint(work_dir: str) -> str | None:
    path = osp.join(work_dir, 'last_checkpoint')
    try:
        with open(path, encoding='utf-8') as f:
            name = f.read().strip()
    except OSError:
        return None
    return name if name and osp.isfile(name) else None
