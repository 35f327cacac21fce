"""The README's main job (stage 1, stage 2, evaluation) end to end on a tiny budget."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_tools.test_train_test_tools import run_tool

PIPELINE = 'configs/rtdmd/toy2d_4step.py'
TINY_PIPELINE = [
    'backbone.init_fit.iters=20', 'backbone.init_fit.batch_size=64', 'backbone.hidden_dim=32',
    '*:train_cfg.max_iters=4', '*:train_cfg.val_interval=4',
    '*:default_hooks.checkpoint.interval=4', '*:default_hooks.logger.interval=2',
    '*:val_dataloader.dataset.samples_per_class=32', '*:val_evaluator.num_projections=8',
    '*:val_evaluator.reference_draws=1', '*:train_dataloader.batch_size=4',
    'ac_dmd:model.fake_update_ratio=2', 'model.group_size=4',
    'evaluation.samples_per_class=128', 'evaluation.num_projections=16',
    'evaluation.reference_draws=1',
]


def pipeline(config: str, work_dir: Path, *options: str, tool: str = 'train.py',
             flags: tuple[str, ...] = ()) -> str:
    args = [sys.executable, f'tools/{tool}', config, '--work-dir', str(work_dir), *flags,
            '--cfg-options', *TINY_PIPELINE, *options]
    result = run_tool(args, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_main_job_trains_every_stage_and_writes_the_comparison(tmp_path: Path) -> None:
    log = pipeline(PIPELINE, tmp_path, 'dmd2:model.fake_update_ratio=2')
    metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    models = ['teacher', 'ac_dmd', 'dmd2', 'rtdmd', 'rtdmd_final_step', 'dm_only', 'grpo_only',
              'bp_only']
    assert [m for m in metrics if not m.startswith('_')] == models
    for name in models:
        assert {'sw2_teacher', 'sw2_floor', 'beta_hat', 'sw2_family', 'mean_reward',
                'mean_reward_target', 'mode_tv_target', 'off_support'} <= set(metrics[name])
        arrays = np.load(tmp_path / 'eval' / name / 'samples.npz')
        assert arrays['x'].shape == (256, 2) and arrays['c'].shape == (256,)
        assert sorted(set(arrays['c'].tolist())) == [0, 1]
    assert (tmp_path / 'eval' / 'samples.png').stat().st_size > 10_000
    assert re.search(r'\| rtdmd +\|', log) and 'sw2_family' in log  # the table is printed
    # Every stage-2 run started from the stage-1 checkpoint.
    dumped = (tmp_path / 'rtdmd' / 'toy2d_4step.py').read_text()
    assert str(tmp_path / 'ac_dmd' / 'iter_4.pth') in dumped

    # A second run with --resume finds every stage finished and only evaluates again.
    log = pipeline(PIPELINE, tmp_path, 'dmd2:model.fake_update_ratio=2', flags=('--resume',))
    assert log.count('finished earlier with the same config, skipped') == 7


@pytest.mark.slow
def test_a_non_default_layout_trains_and_evaluates(tmp_path: Path) -> None:
    """d = 3, K = 4 components, C = 3 classes and another reward, all from the command line."""
    options = [
        'world.means=[[2,0,0],[0,2,0],[0,0,2],[-2,0,0]]', 'world.stds=[0.3,0.4,0.5,0.3]',
        'world.class_weights=[[0.5,0.3,0.1,0.1],[0.1,0.3,0.5,0.1],[0.25,0.25,0.25,0.25]]',
        'reward.direction=[0,0,1]',
    ]
    log = pipeline('configs/rtdmd/toy2d_4step_dm_grpo.py', tmp_path, *options)
    metrics = json.loads((tmp_path / 'eval' / 'metrics.json').read_text())
    assert metrics['_provenance']['rtdmd_version']
    table = (tmp_path / 'table.md').read_text()
    assert re.search(r'\| dm_grpo +\|', table)
    assert table == (tmp_path / 'eval' / 'table.md').read_text()
    # One short log: the environment and config once, the stages counted, the table last.
    assert log.count('System environment:') == 1 and log.count(' - INFO - Config:\n') == 1
    assert log.index('stage 1/2: ac_dmd') < log.index('stage 2/2: dm_grpo')
    assert 'environment: as logged by the first stage' in log
    last_row = table.strip().splitlines()[-1]
    assert ' - mmengine - ' not in log[log.rindex(last_row):]  # nothing logged after the table
    assert list((tmp_path / 'eval' / 'tensorboard').glob('events.out.tfevents.*'))
    arrays = np.load(tmp_path / 'eval' / 'dm_grpo' / 'samples.npz')
    assert arrays['x'].shape == (3 * 128, 3)
    assert sorted(set(arrays['c'].tolist())) == [0, 1, 2]
    # The floor is the exact-vs-exact distance of this layout, not a stored constant.
    assert 0 < metrics['teacher']['sw2_floor'] == metrics['dm_grpo']['sw2_floor']
    assert metrics['teacher']['sw2_teacher'] < 2 * metrics['teacher']['sw2_floor'] + 0.05


def _train_error(argv: list[str]) -> str:
    """tools/train.py's ``main`` in this process (its checks need no subprocess); the message
    it exits with."""
    from tests.test_tools.test_sweep import load_module

    with pytest.raises(SystemExit) as exit_info:
        load_module('train.py').main(argv)
    return str(exit_info.value.code)


def test_unknown_stage_in_options_is_an_error(tmp_path: Path) -> None:
    message = _train_error([PIPELINE, '--work-dir', str(tmp_path),
                            '--cfg-options', 'rtdmdd:train_cfg.max_iters=3'])
    assert message.startswith('error:') and 'unknown stages' in message


@pytest.mark.parametrize('option, message', [
    ('rtdmd:model.dm_layot=final_step', 'stage rtdmd: model.dm_layot'),
    ('ac_dmd:model.fake_update_ratoi=3', 'stage ac_dmd: model.fake_update_ratoi'),
    ("evaluation.models=['teacher','rtdm']", "evaluation.models: ['rtdm']"),
])
def test_every_stage_is_validated_before_anything_trains(tmp_path: Path, option: str,
                                                         message: str) -> None:
    error = _train_error([PIPELINE, '--work-dir', str(tmp_path), '--cfg-options', option])
    assert error.startswith('error:') and message in error, error[-2000:]
    assert not any(tmp_path.iterdir())
