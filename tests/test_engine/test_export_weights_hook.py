"""ExportWeightsHook: writes the model's export under the work dir, atomically."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from rtdmd.engine.hooks import ExportWeightsHook


class _Model:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def export_weights(self, path: str) -> None:
        (Path(path) / 'weights.safetensors').write_text('new')
        if self.fail:
            raise RuntimeError('disk full')


def _runner(tmp_path: Path, model) -> SimpleNamespace:
    return SimpleNamespace(model=model, work_dir=str(tmp_path), logger=logging.getLogger('t'))


def test_export_lands_under_the_work_dir_and_replaces_an_old_one(tmp_path: Path) -> None:
    old = tmp_path / 'teacher'
    old.mkdir()
    (old / 'stale.txt').write_text('old')
    ExportWeightsHook('teacher').after_train(_runner(tmp_path, _Model()))
    assert sorted(os.listdir(old)) == ['weights.safetensors']
    assert sorted(os.listdir(tmp_path)) == ['teacher']  # no temporary folder left


def test_a_failed_export_leaves_the_previous_folder(tmp_path: Path) -> None:
    old = tmp_path / 'teacher'
    old.mkdir()
    (old / 'good.txt').write_text('old')
    with pytest.raises(RuntimeError, match='disk full'):
        ExportWeightsHook('teacher').after_train(_runner(tmp_path, _Model(fail=True)))
    assert sorted(os.listdir(old)) == ['good.txt'] and sorted(os.listdir(tmp_path)) == ['teacher']


def test_a_model_without_export_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match='export_weights'):
        ExportWeightsHook().after_train(_runner(tmp_path, object()))
