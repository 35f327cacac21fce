"""Atomic writes, the safe checkpoint format, checksums and the resume fallback."""

from __future__ import annotations

import errno
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer

from rtdmd.utils.atomic import atomic_write, atomic_write_json, remove_stale_temporaries
from rtdmd.utils.checkpoint_io import (
    RECORD_FORMAT,
    CheckpointCorruptError,
    decode_checkpoint,
    encode_checkpoint,
    file_sha256,
    find_resume_checkpoint,
    record_path,
    verify_checkpoint,
    weights_sha256,
)
from rtdmd.utils.run_identity import changed_keys, config_identity


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / 'metrics.json'
    atomic_write_json(str(path), {'a': 1})

    def write_then_fail(f) -> None:
        f.write(b'{"a": 2, "trunc')
        raise OSError(errno.ENOSPC, 'No space left on device')

    with pytest.raises(OSError, match='No space'):
        atomic_write(str(path), write_then_fail)
    assert json.loads(path.read_text()) == {'a': 1}
    assert [p.name for p in tmp_path.iterdir()] == ['metrics.json']


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / '.iter_4.pth.123.rtdmd-tmp').write_bytes(b'half')
    (tmp_path / 'iter_2.pth').write_bytes(b'keep')
    removed = remove_stale_temporaries(str(tmp_path))
    assert [Path(p).name for p in removed] == ['.iter_4.pth.123.rtdmd-tmp']
    assert [p.name for p in tmp_path.iterdir()] == ['iter_2.pth']


def test_encoding_round_trips_mmengine_objects_and_loads_weights_only(tmp_path: Path) -> None:
    buffer = HistoryBuffer([1.0, 2.5], [1, 2], max_length=10)
    state = {'hub': {'log_scalars': {'train/loss': buffer}, 'eta': np.float64(3.5)},
             'rng': {'numpy': np.random.get_state(), 'python': random.getstate()},
             'w': torch.randn(3)}
    path = tmp_path / 'c.pth'
    torch.save(encode_checkpoint(state), path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    back = decode_checkpoint(torch.load(path, weights_only=True))
    log, count = back['hub']['log_scalars']['train/loss'].data
    assert log.tolist() == [1.0, 2.5] and count.tolist() == [1, 2]
    assert back['hub']['log_scalars']['train/loss'].max_length == 10
    assert back['hub']['eta'] == 3.5
    np.random.set_state(back['rng']['numpy'])  # accepted by NumPy as its own state
    assert np.array_equal(back['rng']['numpy'][1], state['rng']['numpy'][1])
    assert back['rng']['python'] == state['rng']['python']


def _checkpoint(folder: Path, it: int, value: float) -> Path:
    path = folder / f'iter_{it}.pth'
    torch.save({'state_dict': {'w': torch.full((64,), value)}}, path)
    record = dict(format=RECORD_FORMAT, sha256=file_sha256(str(path)),
                  size=path.stat().st_size, iter=it, identity={})
    record_path(str(path))
    Path(record_path(str(path))).write_text(json.dumps(record))
    return path


@pytest.mark.parametrize('damage', ['truncate', 'bitflip', 'missing_record'])
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path: Path,
                                                                  damage: str) -> None:
    for it in (2, 4, 6):
        _checkpoint(tmp_path, it, float(it))
    newest = tmp_path / 'iter_6.pth'
    data = bytearray(newest.read_bytes())
    if damage == 'truncate':
        newest.write_bytes(bytes(data[:-100]))
    elif damage == 'bitflip':
        data[len(data) // 2] ^= 1
        newest.write_bytes(bytes(data))
    else:
        Path(record_path(str(newest))).unlink()
    if damage != 'missing_record':
        with pytest.raises(CheckpointCorruptError):
            verify_checkpoint(str(newest))
    path, messages = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_4.pth')
    if damage != 'missing_record':
        assert len(messages) == 1 and str(newest) in messages[0]


def test_weights_hash_ignores_time_stamps_and_sees_one_changed_value() -> None:
    a = {'meta': {'time': 1}, 'state_dict': {'w': torch.ones(4)}, 'ema_state': {'w': torch.ones(4)}}
    b = {'meta': {'time': 2}, 'state_dict': {'w': torch.ones(4)}, 'ema_state': {'w': torch.ones(4)}}
    assert weights_sha256(a) == weights_sha256(b)
    b['ema_state']['w'][2] = 1.0 + 2 ** -20
    assert weights_sha256(a) != weights_sha256(b)


def test_identity_ignores_bookkeeping_and_names_changed_keys() -> None:
    base = dict(model=dict(type='M', lr=1.0), work_dir='a', train_cfg=dict(max_iters=4),
                default_hooks=dict(checkpoint=dict(interval=2)))
    other = dict(model=dict(type='M', lr=2.0), work_dir='b', train_cfg=dict(max_iters=8),
                 default_hooks=dict(checkpoint=dict(interval=5)))
    same = dict(base, work_dir='elsewhere')
    assert config_identity(base)['config_hash'] == config_identity(same)['config_hash']
    assert changed_keys(config_identity(base), config_identity(other)) == ['model.lr: 1.0 -> 2.0']
