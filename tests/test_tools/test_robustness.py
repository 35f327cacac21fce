"""tools/robustness.py end to end on one tiny world: files, checks, resume, refusal to mix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtdmd.evaluation.robustness import Criteria, stage1_checks, stage2_checks
from rtdmd.utils.config import load_config
from tests.test_tools.test_sweep import load_module

TINY = {
    'backbone.init_fit.iters': 20, 'backbone.init_fit.batch_size': 64, 'backbone.hidden_dim': 32,
    '*:train_cfg.max_iters': 4, '*:train_cfg.val_interval': 100,
    '*:train_dataloader.batch_size': 8, 'ac_dmd:model.fake_update_ratio': 2,
    'evaluation.samples_per_class': 128, 'evaluation.reference_draws': 2,
    'evaluation.num_projections': 16,
}


def _argv(work_dir: Path, options: dict) -> list[str]:
    return ['--worlds', '1', '--first-seed', '2', '--work-dir', str(work_dir), '--epochs', '1',
            '2', '--cfg-options', *[f'{k}={v}' for k, v in options.items()]]


def test_one_world_trains_evaluates_resumes_and_refuses_other_settings(tmp_path: Path) -> None:
    tool = load_module('robustness.py')
    assert tool.main(_argv(tmp_path, TINY)) == 0
    world = tmp_path / 'world_002'
    result = json.loads((world / 'result.json').read_text())
    assert result['status'] == 'ok' and result['world'].endswith('mode')
    assert set(result['checks']) == {'ac_dmd', 'rtdmd', 'rtdmd@2x'}
    assert set(result['metrics']) == {'teacher', 'ac_dmd', 'rtdmd', 'rtdmd@2x'}
    # stage 2 ran 2 x its 4 epochs with a checkpoint at each multiple
    assert (world / 'rtdmd' / 'iter_4.pth').is_file() and (world / 'rtdmd' / 'iter_8.pth').is_file()
    summary = json.loads((tmp_path / 'results.json').read_text())
    assert [a['row'] for a in summary['aggregate']] == ['ac_dmd', 'rtdmd', 'rtdmd@2x']
    assert (tmp_path / 'results.csv').read_text().startswith('seed,world,status,')
    assert '## Pass rates' in (tmp_path / 'results.md').read_text()
    # the leaf reproduces the world on its own: the world reaches the stage with its own file
    leaf = load_config(str(world / 'config.py'))
    assert leaf.stages[0]['cfg_options']['world'] == leaf.world.to_dict()
    assert leaf.reward.type == 'ModeReward' and leaf.model.terms.bp is None
    assert leaf.reward.means == leaf.world.means  # '${world.means}' resolved

    stamp = (world / 'rtdmd' / 'iter_8.pth').stat().st_mtime_ns
    assert tool.main(_argv(tmp_path, TINY)) == 0  # finished: read back, nothing retrained
    assert (world / 'rtdmd' / 'iter_8.pth').stat().st_mtime_ns == stamp
    assert json.loads((world / 'result.json').read_text()) == result

    (world / 'result.json').unlink()  # unfinished, and now asked with other settings
    with pytest.raises(RuntimeError, match='holds a run of other settings'):
        tool.main(_argv(tmp_path, {**TINY, 'model.matching.dmd_loss.loss_weight': 1.0}))


def _row(**kw: float) -> dict[str, float]:
    base = dict(sw2_teacher=0.1, sw2_floor=0.075, mode_tv_teacher=0.02, off_support=0.01,
                sw2_family=0.1, sw2_floor_family=0.07, beta_hat=0.3, beta_hat_at_bound=0.0,
                off_support_target=0.02, mean_reward=1.0, mean_reward_target=1.0,
                reward_std_target=2.0)
    return {**base, **kw}


def test_criteria_at_their_boundaries() -> None:
    crit, teacher = Criteria(), _row(off_support=0.01)
    assert stage1_checks(teacher, _row(sw2_teacher=0.1125), 1000, crit)['passed']  # 1.5x
    assert not stage1_checks(teacher, _row(sw2_teacher=0.113), 1000, crit)['pass_sw2']
    assert not stage1_checks(teacher, _row(off_support=0.021), 1000, crit)['pass_off']
    # an exact reference with no sample off the support: the ratio divides by one sample
    assert stage1_checks(_row(off_support=0.0), _row(off_support=0.001), 1000,
                         crit)['off_ratio'] == pytest.approx(1.0)
    assert stage2_checks(_row(), 2.0, 1000, crit)['passed']
    assert not stage2_checks(_row(sw2_family=0.141), 2.0, 1000, crit)['pass_sw2']
    assert not stage2_checks(_row(beta_hat=0.019), 2.0, 1000, crit)['pass_tilt']
    assert not stage2_checks(_row(beta_hat_at_bound=1.0), 2.0, 1000, crit)['pass_tilt']
    assert not stage2_checks(_row(off_support=0.041), 2.0, 1000, crit)['pass_off']
    hacked = stage2_checks(_row(mean_reward=1.21), 2.0, 1000, crit)  # 0.105 std above
    assert not hacked['pass_reward'] and hacked['reward_gap_z'] == pytest.approx(0.105)
    assert stage2_checks(_row(mean_reward=0.81), 2.0, 1000, crit)['pass_reward']
