"""SafeCheckpointHook on the real mmengine Runner: records, rotation, refusal of NaN state."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from rtdmd.engine.hooks import SafeCheckpointHook
from rtdmd.utils.checkpoint_io import list_checkpoints, load_checkpoint_file, verify_checkpoint
from rtdmd.utils.errors import TrainingStopped
from rtdmd.utils.mmengine_compat import apply_mmengine_patches


class _Data(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, idx: int) -> dict:
        g = torch.Generator().manual_seed(idx)
        return dict(inputs=torch.randn(2, generator=g), labels=torch.randn(1, generator=g))


def _runner(work_dir: Path, max_iters: int, keep: int, poison_at: int | None = None):
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Model(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 1)
            self.steps = 0

        def forward(self, inputs, labels=None, mode='tensor'):
            self.steps += 1
            if poison_at is not None and self.steps == poison_at:
                with torch.no_grad():
                    self.linear.weight[0, 0] = float('nan')  # weights break behind the guard
            out = self.linear(inputs)
            return dict(loss=F.mse_loss(out, labels)) if mode == 'loss' else out

    return Runner(
        model=Model(), work_dir=str(work_dir),
        experiment_name=f'safe_{os.getpid()}_{keep}_{max_iters}_{poison_at}',
        train_dataloader=dict(dataset=_Data(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type=SafeCheckpointHook, interval=1, by_epoch=False,
                                           max_keep_ckpts=keep)),
        log_level='WARNING')


@pytest.fixture(scope='module', autouse=True)
def _restore_mmengine_globals():
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer

    managers = (DefaultScope, MMLogger, MessageHub, Visualizer)
    before = {cls: dict(cls._instance_dict) for cls in managers}
    yield
    for cls in managers:
        for name in set(cls._instance_dict) - set(before[cls]):
            del cls._instance_dict[name]


def test_every_save_is_recorded_and_rotation_keeps_exactly_the_newest(tmp_path: Path) -> None:
    apply_mmengine_patches()
    _runner(tmp_path, max_iters=3, keep=1).train()
    assert [it for it, _ in list_checkpoints(str(tmp_path))] == [3]
    record = verify_checkpoint(str(tmp_path / 'iter_3.pth'))
    assert record.iter == 3 and record.weights_sha256
    assert (tmp_path / 'last_checkpoint').read_text() == str(tmp_path / 'iter_3.pth')
    assert not (tmp_path / 'iter_2.pth.json').exists()  # records leave with their files
    data = json.loads((tmp_path / 'iter_3.pth.json').read_text())
    assert data['identity']['config_hash'] and 'options' in data['identity']
    ckpt = load_checkpoint_file(str(tmp_path / 'iter_3.pth'))
    assert ckpt['meta']['rtdmd']['config_hash'] == data['identity']['config_hash']
    assert ckpt['message_hub']['runtime_info']['keep_ckpt_ids'] == [3]


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    apply_mmengine_patches()
    runner = _runner(tmp_path, max_iters=4, keep=1, poison_at=3)
    with pytest.raises(TrainingStopped, match='refusing to write a checkpoint at iter 3: '
                                              'non-finite values in state_dict.linear.weight'):
        runner.train()
    assert [it for it, _ in list_checkpoints(str(tmp_path))] == [2]  # the last good one stays
    verify_checkpoint(str(tmp_path / 'iter_2.pth'))
    assert not list(tmp_path.glob('.*rtdmd-tmp'))
