"""End-to-end runs of tools/train.py, tools/test.py and tools/dist_train.sh on the tiny world."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import rtdmd
from rtdmd.utils.mmengine_compat import apply_mmengine_patches
from rtdmd.utils.provenance import git_commit
from tests.conftest import REPO, TINY_TOY_OPTIONS

CONFIG = 'configs/ac_dmd/toy2d_4step.py'


def run_tool(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def train(work_dir: Path, *options: str, resume: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(work_dir)]
    args += ['--resume'] if resume else []
    result = run_tool(args + ['--cfg-options', *TINY_TOY_OPTIONS, *options])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def load(path: Path) -> dict:
    apply_mmengine_patches()
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.mark.slow
def test_train_writes_config_checkpoints_logs_and_tensorboard(tmp_path: Path) -> None:
    result = train(tmp_path, 'model.sampler.step_list=[1000,500]')
    dumped = Config.fromfile(tmp_path / 'toy2d_4step.py')
    assert dumped.model.sampler.step_list == [1000, 500]  # a list through --cfg-options
    assert dumped.model.backbone.world == dumped.world  # references resolved in the dump
    ckpt = load(tmp_path / 'iter_6.pth')
    assert {'state_dict', 'optimizer', 'ema_state', 'rng_state', 'message_hub'} <= set(ckpt)
    assert set(ckpt['optimizer']) == {'generator', 'fake_score'}
    assert int(ckpt['state_dict']['iteration']) == 6
    events = glob.glob(str(tmp_path / '*' / 'vis_data' / 'events.out.tfevents.*'))
    assert events, 'no TensorBoard event file'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(events[0])
    acc.Reload()
    assert {'loss_fake_dsm', 'loss_dmd', 'toy/sw2_teacher'} <= set(acc.Tags()['scalars'])
    log = (result.stdout + result.stderr)
    assert 'eta:' in log and 'Iter(train) [6/6]' in log
    # 6 iterations, fewer than the sample grids' interval: none drawn, and the log says why
    assert not (tmp_path / 'vis').exists() and 'no sample grids' in log


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    train(tmp_path / 'full')
    train(tmp_path / 'split', 'train_cfg.max_iters=3')
    train(tmp_path / 'split', resume=True)
    full = load(tmp_path / 'full' / 'iter_6.pth')
    split = load(tmp_path / 'split' / 'iter_6.pth')
    for key, value in full['state_dict'].items():
        assert torch.equal(value, split['state_dict'][key]), key
    for role in ('generator', 'fake_score'):
        a = full['optimizer'][role]['state']
        b = split['optimizer'][role]['state']
        for idx in a:
            for name in a[idx]:
                assert torch.equal(a[idx][name], b[idx][name]), (role, idx, name)
    for key, value in full['ema_state'].items():
        assert torch.equal(value, split['ema_state'][key]), key


@pytest.mark.slow
def test_test_tool_writes_metrics_json(tmp_path: Path) -> None:
    train(tmp_path / 'train')
    options = [o for o in TINY_TOY_OPTIONS if o.startswith(('test_', 'backbone.'))]
    result = run_tool([sys.executable, 'tools/test.py', CONFIG,  # positional, as OpenMMLab's
                       str(tmp_path / 'train' / 'iter_6.pth'), '--work-dir',
                       str(tmp_path / 'test'), '--cfg-options', *options])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / 'test' / 'metrics.json').read_text())
    assert set(metrics) == {'toy/sw2_teacher', 'toy/sw2_floor', 'toy/mode_tv_teacher',
                            'toy/off_support', '_provenance'}
    assert metrics['_provenance']['rtdmd_version'] == rtdmd.__version__
    assert metrics['_provenance']['git_commit'] == git_commit()  # this checkout's, or None
    assert 0 < metrics['toy/sw2_floor'] < metrics['toy/sw2_teacher'] < 10


def test_mistyped_key_fails_before_any_work(tmp_path: Path) -> None:
    from tests.test_tools.test_pipeline import _train_error

    error = _train_error([CONFIG, '--work-dir', str(tmp_path),
                          '--cfg-options', 'model.fake_update_ratoi=3'])
    assert 'model.fake_update_ratoi' in error and 'fake_update_ratio' in error
    assert not any(tmp_path.iterdir()), 'nothing may be written before validation passes'


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    from tests.test_tools.test_pipeline import _train_error

    assert 'config file not found' in _train_error([str(tmp_path / 'nope.py')])


@pytest.mark.slow
def test_dist_train_runs_two_cpu_processes(tmp_path: Path) -> None:
    port = str(29500 + os.getpid() % 1000)
    env_args = ['env', f'MASTER_PORT={port}']
    result = run_tool(env_args + ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir',
                                  str(tmp_path), '--cfg-options', *TINY_TOY_OPTIONS],
                      timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log
    ckpt = load(tmp_path / 'iter_6.pth')
    assert int(ckpt['state_dict']['iteration']) == 6


def test_test_tool_needs_a_checkpoint_unless_untrained(tmp_path: Path) -> None:
    """Evaluating the untrained model by accident overwrote metrics.json with noise."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('rtdmd_test_tool_ckpt', REPO / 'tools/test.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit, match='no checkpoint to evaluate.*CONFIG CHECKPOINT.*'
                                         '--untrained'):
        tool.main([CONFIG, '--work-dir', str(tmp_path / 'none')])
    assert not (tmp_path / 'none').exists()
    for argv in ([CONFIG, 'a.pth', '--checkpoint', 'b.pth'], [CONFIG, 'a.pth', '--untrained'],
                 [CONFIG, 'a.pth', '--benchmarks', '--max-prompts', '0']):
        with pytest.raises(SystemExit) as info:
            tool.main(argv)
        assert info.value.code == 2  # argparse's usage error, before anything is loaded
    options = [o for o in TINY_TOY_OPTIONS if o.startswith(('test_', 'backbone.'))]
    tool.main([CONFIG, '--untrained', '--work-dir', str(tmp_path / 'untrained'),
               '--cfg-options', *options])
    metrics = json.loads((tmp_path / 'untrained' / 'metrics.json').read_text())
    assert metrics['toy/sw2_teacher'] > 0
