"""mmengine 0.10.7 on torch >= 2.6: resume through the patched loader; gloo process group on CPU."""

import os
import pickle
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from rtdmd.utils.mmengine_compat import (
    CheckpointReadError,
    apply_mmengine_patches,
    init_distributed,
    load_from_local,
)

# mmengine.model / mmengine.runner are imported inside the tests that need them: importing them
# takes seconds (transformers/peft), which the spawned distributed workers should not pay.


class ToyDataset(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, idx: int) -> dict:
        g = torch.Generator().manual_seed(idx)
        return dict(inputs=torch.randn(2, generator=g), labels=torch.randn(1, generator=g))


def toy_model() -> nn.Module:
    from mmengine.model import BaseModel

    class ToyModel(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(2, 1)
            self.train_steps = 0

        def forward(self, inputs, labels=None, mode='tensor'):
            out = self.linear(inputs)
            if mode == 'loss':
                self.train_steps += 1
                return dict(loss=F.mse_loss(out, labels))
            return out

    return ToyModel()


def toy_runner(work_dir: Path, name: str, max_iters: int, hook: str = 'safe', **kwargs):
    from mmengine.hooks import CheckpointHook
    from mmengine.runner import Runner

    from rtdmd.engine.hooks import SafeCheckpointHook

    hook_type = SafeCheckpointHook if hook == 'safe' else CheckpointHook

    return Runner(
        model=toy_model(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=ToyDataset(),
            batch_size=2,
            num_workers=0,
            sampler=dict(type='DefaultSampler', shuffle=True),
            collate_fn=dict(type='default_collate'),
        ),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type=hook_type, interval=2, by_epoch=False)),
        experiment_name=name,
        log_level='WARNING',
        **kwargs,
    )


@pytest.fixture(scope='module', autouse=True)
def restore_mmengine_globals():
    """A Runner makes its DefaultScope ('mmengine' here), logger, message hub and visualizer the
    process-wide current instances; later tests building from rtdmd registries must not see them.
    """
    from mmengine.logging import MessageHub, MMLogger
    from mmengine.registry import DefaultScope
    from mmengine.visualization import Visualizer

    managers = (DefaultScope, MMLogger, MessageHub, Visualizer)
    before = {cls: dict(cls._instance_dict) for cls in managers}
    yield
    for cls in managers:
        for name in set(cls._instance_dict) - set(before[cls]):
            del cls._instance_dict[name]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory) -> Path:
    """A real mmengine training checkpoint after 2 iterations (message hub, optimizer, ...)."""
    work_dir = tmp_path_factory.mktemp('toy_run')
    toy_runner(work_dir, f'toy_save_{os.getpid()}', max_iters=2).train()
    path = work_dir / 'iter_2.pth'
    assert path.is_file()
    return path


@pytest.fixture(scope='module')
def mmengine_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of mmengine's own CheckpointHook (HistoryBuffer and NumPy objects inside)."""
    work_dir = tmp_path_factory.mktemp('toy_run_mmengine')
    toy_runner(work_dir, f'toy_save_mm_{os.getpid()}', max_iters=2, hook='mmengine').train()
    return work_dir / 'iter_2.pth'


def test_safe_checkpoints_need_no_unsafe_global(checkpoint):
    """rtdmd's checkpoints load with torch's default weights_only=True, no allow-list."""
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint)) == []
    loaded = torch.load(checkpoint, weights_only=True)
    assert {'meta', 'state_dict', 'optimizer', 'message_hub'} <= set(loaded)


def test_mmengine_checkpoint_is_refused_and_converts_when_trusted(mmengine_checkpoint,
                                                                  tmp_path):
    """Unpickling it would run HistoryBuffer's getattr reduction: the loader refuses, saying
    why and how to convert a trusted file; the converted copy resumes."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from rtdmd.utils.checkpoint_io import UnsafeCheckpointError
    from rtdmd.utils.convert_checkpoint import convert_trusted_checkpoint

    apply_mmengine_patches()
    with pytest.raises(pickle.UnpicklingError, match='HistoryBuffer'):
        torch.load(mmengine_checkpoint)
    with pytest.raises(UnsafeCheckpointError, match='refused.*builtins.getattr.*convert'):
        CheckpointLoader.load_checkpoint(str(mmengine_checkpoint), map_location='cpu')
    safe = convert_trusted_checkpoint(str(mmengine_checkpoint), str(tmp_path / 'safe.pth'))
    runner = toy_runner(tmp_path / 'run', f'toy_conv_{os.getpid()}', max_iters=4,
                        load_from=safe, resume=True)
    runner.train()
    assert runner.model.train_steps == 2


def test_crafted_pickle_is_refused_without_running_it(tmp_path):
    """A file whose unpickling would run code (here: create a marker file) is refused."""
    from rtdmd.utils.checkpoint_io import UnsafeCheckpointError

    marker = tmp_path / 'pwned'

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), 'w'))

    crafted = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {}, 'payload': Exploit()}, crafted)
    with pytest.raises(UnsafeCheckpointError, match='refused'):
        load_from_local(str(crafted))
    assert not marker.exists()


def test_convert_refuses_a_file_importing_more_than_mmengine_without_running_it(tmp_path):
    """The trusted conversion still refuses a pickle importing what no mmengine file does."""
    from rtdmd.utils.convert_checkpoint import convert_trusted_checkpoint

    marker = tmp_path / 'pwned'

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), 'w'))

    crafted = tmp_path / 'crafted.pth'
    torch.save({'state_dict': {}, 'payload': Exploit()}, crafted)
    with pytest.raises(ValueError, match=r'crafted\.pth was not converted.*io\.open'):
        convert_trusted_checkpoint(str(crafted), str(tmp_path / 'out.pth'))
    assert not marker.exists()
    assert not (tmp_path / 'out.pth').exists()


def test_resume_after_patch(checkpoint, tmp_path):
    apply_mmengine_patches()
    runner = toy_runner(
        tmp_path, f'toy_resume_{os.getpid()}', max_iters=4, load_from=str(checkpoint), resume=True
    )
    runner.train()
    assert runner.iter == 4
    assert runner.model.train_steps == 2  # iterations 3 and 4 only: resumed at iter 2
    assert (tmp_path / 'iter_4.pth').is_file()


def test_patch_is_idempotent_and_keeps_remote_schemes():
    from mmengine.runner.checkpoint import CheckpointLoader

    http_loader = CheckpointLoader._schemes['https://']
    apply_mmengine_patches()
    apply_mmengine_patches()
    assert CheckpointLoader._schemes[''] is load_from_local
    assert CheckpointLoader._schemes['https://'] is http_loader
    assert list(CheckpointLoader._schemes)[-1] == ''  # the catch-all prefix still comes last


@pytest.mark.parametrize('keep', [0.5, 0.0])
def test_truncated_checkpoint_gives_clear_error(checkpoint, tmp_path, keep):
    from mmengine.runner.checkpoint import CheckpointLoader

    apply_mmengine_patches()
    data = checkpoint.read_bytes()
    broken = tmp_path / 'broken.pth'
    broken.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointReadError) as info:
        CheckpointLoader.load_checkpoint(str(broken), map_location='cpu')
    assert str(info.value).startswith(f'{broken} is not a readable checkpoint')
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_from_local(str(tmp_path / 'missing.pth'))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world_size: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    try:
        assert init_distributed('pytorch') == (rank, world_size)
        assert dist.get_backend() == 'gloo'
        assert init_distributed('pytorch') == (rank, world_size)  # idempotent
        total = torch.tensor([float(rank + 1)])
        dist.all_reduce(total)
        assert total.item() == world_size * (world_size + 1) / 2
        # What Runner.setup_env checks before calling mmengine's CUDA-only init_dist.
        from mmengine.dist import get_dist_info, is_distributed

        assert is_distributed() and get_dist_info() == (rank, world_size)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_init_distributed_two_cpu_processes(monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')  # the CPU path even on a GPU machine
    world_size = 2
    mp.spawn(_dist_worker, args=(world_size, _free_port()), nprocs=world_size, join=True)


def test_init_distributed_none_and_bad_launcher():
    assert init_distributed('none') == (0, 1)
    with pytest.raises(ValueError, match='launcher'):
        init_distributed('mpi')
