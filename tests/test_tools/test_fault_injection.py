"""Faults at exact moments of a two-stage toy pipeline: each case ends bit-identical to an
uninterrupted run, or stops with a message that names the cause and loses nothing.

Runs are forked children of this process (``rtdmd.testing.faults``) running ``tools/train.py``'s
``main``, so each starts in well under a second; faults are installed in the child only.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from mmengine.config import DictAction
from mmengine.hooks import Hook

from rtdmd.registry import HOOKS, REWARDS
from rtdmd.rewards.toy import LinearReward
from rtdmd.testing.faults import (
    ReplaceFault,
    WriteFault,
    compare_checkpoints,
    load_train_main,
    run_forked,
)
from rtdmd.utils.checkpoint_io import list_checkpoints, load_checkpoint_file, verify_checkpoint
from tests.conftest import REPO

STAGES = ('ac_dmd', 'rtdmd')
FAULT_OPTIONS = [
    'backbone.init_fit.iters=20', 'backbone.init_fit.batch_size=64', 'backbone.hidden_dim=32',
    '*:train_cfg.max_iters=4', '*:default_hooks.checkpoint.interval=2',
    '*:default_hooks.logger.interval=2', '*:train_dataloader.batch_size=4',
    'ac_dmd:model.fake_update_ratio=2', 'model.group_size=4', '*:val_cfg=None',
    '*:val_dataloader=None', '*:val_evaluator=None',
    '*:default_hooks.nonfinite.max_consecutive=2',
]
KEEP_ONE = ['*:default_hooks.checkpoint.max_keep_ckpts=1']  # the harshest rotation


@REWARDS.register_module(force=True)
class NaNAfterReward(LinearReward):
    """The toy's linear reward until ``after`` back-propagated calls (one per training step; the
    monitors' probes run under no_grad and do not count), NaN from then on (a reward that
    breaks)."""

    def __init__(self, direction: list[float], after: int = 2) -> None:
        super().__init__(direction=direction)
        self.after = after
        self.calls = 0

    def forward(self, images, prompts=None, metadata=None):
        self.calls += torch.is_grad_enabled()
        scores = super().forward(images, prompts, metadata)
        return scores if self.calls <= self.after else scores * float('nan')


@HOOKS.register_module(force=True)
class NaNLearningRateHook(Hook):
    """Sets ``role``'s learning rate to NaN from iteration ``at_iter`` on (a broken schedule)."""

    def __init__(self, role: str = 'generator', at_iter: int = 1) -> None:
        self.role, self.at_iter = role, at_iter

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter >= self.at_iter:
            for group in runner.optim_wrapper[self.role].optimizer.param_groups:
                group['lr'] = float('nan')


def parsed(options: list[str]) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    return parser.parse_args(['--o', *options]).o


@pytest.fixture(scope='module')
def harness(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Everything imported once; the leaf config (outside configs/); one reference run."""
    import rtdmd.apis.pipeline  # noqa: F401  (imported before forking)
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    root = tmp_path_factory.mktemp('faults')
    leaf = root / 'pipeline.py'
    leaf.write_text(
        f"_base_ = ['{REPO}/configs/rtdmd/toy2d_4step.py']\n"
        f"stages = [dict(name='ac_dmd', config='{REPO}/configs/ac_dmd/toy2d_4step.py'),\n"
        f"          dict(name='rtdmd', init_from='ac_dmd')]\n"
        'evaluation = None\n')
    main = load_train_main()
    ref = root / 'reference'
    result = run_forked(main, [str(leaf), '--work-dir', str(ref), '--cfg-options',
                               *FAULT_OPTIONS], str(root / 'reference.log'))
    assert result.exitcode == 0, result.log[-3000:]
    return dict(root=root, leaf=str(leaf), main=main, ref=ref)


def train(h: dict, work_dir: Path, *flags: str, options: tuple[str, ...] = (), **kwargs):
    argv = [h['leaf'], '--work-dir', str(work_dir), *flags, '--cfg-options', *FAULT_OPTIONS,
            *options]
    return run_forked(h['main'], argv, str(work_dir) + '.log', **kwargs)


def assert_identical_to_reference(h: dict, work_dir: Path) -> None:
    for stage in STAGES:
        final = work_dir / stage / 'iter_4.pth'
        verify_checkpoint(str(final))
        assert compare_checkpoints(str(h['ref'] / stage / 'iter_4.pth'), str(final)) == [], stage


def assert_nothing_non_finite(work_dir: Path) -> None:
    for folder in [work_dir / s for s in STAGES if (work_dir / s).is_dir()]:
        for _, path in list_checkpoints(str(folder)):
            ckpt = load_checkpoint_file(path)
            for section in ('state_dict', 'ema_state'):
                for name, value in (ckpt.get(section) or {}).items():
                    if value.is_floating_point():
                        assert torch.isfinite(value).all(), (path, section, name)


@pytest.mark.slow
@pytest.mark.parametrize('fault', [
    WriteFault('ac_dmd/.iter_4.pth'),          # SIGKILL half-way through a checkpoint write
    WriteFault('ac_dmd/.last_checkpoint', 2),  # ... through the second last_checkpoint write
    ReplaceFault('ac_dmd/iter_4.pth'),         # record written, file not yet renamed
    WriteFault('rtdmd/.iter_2.pth'),           # mid-stage-2
], ids=['checkpoint', 'last_checkpoint', 'before_rename', 'mid_stage2'])
def test_a_kill_at_a_write_resumes_bit_identical(harness: dict, tmp_path: Path, fault) -> None:
    work = tmp_path / 'run'
    killed = train(harness, work, options=tuple(KEEP_ONE), faults=[fault])
    assert killed.killed, killed.log[-2000:]
    resumed = train(harness, work, '--resume', options=tuple(KEEP_ONE))
    assert resumed.exitcode == 0, resumed.log[-3000:]
    assert_identical_to_reference(harness, work)
    assert not [p for p in work.rglob('*.rtdmd-tmp')], 'a stray temporary file was left'


@pytest.mark.slow
def test_a_full_disk_stops_with_its_message_and_keeps_the_previous_checkpoint(
        harness: dict, tmp_path: Path) -> None:
    work = tmp_path / 'run'
    full = train(harness, work, options=tuple(KEEP_ONE),
                 faults=[WriteFault('ac_dmd/.iter_4.pth', action='enospc')])
    assert full.exitcode == 1
    assert 'could not write checkpoint' in full.log and 'No space left on device' in full.log
    assert 'previous checkpoints are intact' in full.log
    verify_checkpoint(str(work / 'ac_dmd' / 'iter_2.pth'))  # max_keep_ckpts=1 kept it
    assert (work / 'ac_dmd' / 'last_checkpoint').read_text().endswith('iter_2.pth')
    resumed = train(harness, work, '--resume')  # the disk has room again
    assert resumed.exitcode == 0, resumed.log[-3000:]
    assert_identical_to_reference(harness, work)


@pytest.mark.slow
@pytest.mark.parametrize('damage', ['truncate', 'bitflip', 'empty_last_checkpoint'])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(
        harness: dict, tmp_path: Path, damage: str) -> None:
    work = tmp_path / 'run'
    shutil.copytree(harness['ref'], work)
    newest = work / 'rtdmd' / 'iter_4.pth'
    data = bytearray(newest.read_bytes())
    if damage == 'truncate':
        newest.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == 'bitflip':
        data[len(data) // 2] ^= 0x10  # one bit inside the tensor data
        newest.write_bytes(bytes(data))
    else:
        (work / 'rtdmd' / 'last_checkpoint').write_text('')
        newest.unlink()
    resumed = train(harness, work, '--resume')
    assert resumed.exitcode == 0, resumed.log[-3000:]
    if damage != 'empty_last_checkpoint':
        why = 'truncated' if damage == 'truncate' else 'fails its SHA-256 check'
        assert f'skipped {newest}' in resumed.log and why in resumed.log
    assert f'resuming from {work / "rtdmd" / "iter_2.pth"}' in resumed.log
    assert 'stage ac_dmd: finished earlier with the same config, skipped' in resumed.log
    assert_identical_to_reference(harness, work)


def test_a_nan_learning_rate_in_the_config_is_refused_before_any_work(harness: dict,
                                                                      tmp_path: Path) -> None:
    work = tmp_path / 'run'
    result = train(harness, work, options=('ac_dmd:optim_wrapper.generator.optimizer.lr=nan',))
    assert result.exitcode == 1
    assert 'stage ac_dmd: optim_wrapper.generator.optimizer.lr: nan is not a usable value' \
        in result.log
    assert not work.exists()


@pytest.mark.slow
def test_a_huge_learning_rate_stops_with_its_message_and_no_nan_checkpoint(
        harness: dict, tmp_path: Path) -> None:
    """lr=1e12: the first step blows the weights up, every later one is non-finite."""
    work = tmp_path / 'run'
    result = train(harness, work, options=('ac_dmd:optim_wrapper.fake_score.optimizer.lr=1e12',))
    assert result.exitcode == 1, result.log[-3000:]
    assert 'iterations in a row had a non-finite loss, gradient or learning rate' in result.log
    assert not (work / 'rtdmd').exists()  # stopped in stage 1, stage 2 never started
    assert_nothing_non_finite(work)


@pytest.mark.slow
def test_a_learning_rate_turning_nan_mid_stage2_stops_it_and_keeps_its_checkpoint(
        harness: dict, tmp_path: Path) -> None:
    leaf = tmp_path / 'nan_lr.py'
    leaf.write_text(
        f"_base_ = ['{harness['leaf']}']\n"
        "custom_hooks = [dict(type='TrainableEMAHook', role='generator', decay=0.9, interval=8,"
        " warmup=True), dict(type='NaNLearningRateHook', at_iter=2)]\n")
    work = tmp_path / 'run'
    result = run_forked(harness['main'], [str(leaf), '--work-dir', str(work), '--cfg-options',
                                          *FAULT_OPTIONS], str(tmp_path / 'run.log'))
    assert result.exitcode == 1, result.log[-3000:]
    assert 'skipped the optimizer step of generator (learning rate is nan)' in result.log
    assert f'Last good checkpoint: {work / "rtdmd" / "iter_2.pth"}' in result.log
    assert [p for _, p in list_checkpoints(str(work / 'rtdmd'))] == [
        str(work / 'rtdmd' / 'iter_2.pth')]
    verify_checkpoint(str(work / 'rtdmd' / 'iter_2.pth'))
    assert_nothing_non_finite(work)


@pytest.mark.slow
def test_a_reward_turning_nan_stops_stage2_with_good_checkpoints_kept(
        harness: dict, tmp_path: Path) -> None:
    work = tmp_path / 'run'
    result = train(harness, work, options=('reward.type=NaNAfterReward', 'reward.after=2'))
    assert result.exitcode == 1, result.log[-3000:]
    assert 'skipped the optimizer step of generator (loss is nan' in result.log
    assert 'Last good checkpoint:' in result.log
    assert compare_checkpoints(str(harness['ref'] / 'ac_dmd' / 'iter_4.pth'),
                               str(work / 'ac_dmd' / 'iter_4.pth')) == []
    assert list_checkpoints(str(work / 'rtdmd'))  # written before the reward broke
    assert_nothing_non_finite(work)


@pytest.mark.slow
def test_reruns_refuse_what_would_mix_or_discard_runs(harness: dict, tmp_path: Path) -> None:
    work = tmp_path / 'run'
    shutil.copytree(harness['ref'], work)
    before = sorted(p.name for p in (work / 'rtdmd').iterdir())
    # A new run into a work dir that holds one: both ways out are named, nothing is touched.
    again = train(harness, work)
    assert again.exitcode == 1 and '--resume' in again.log and '--start-over' in again.log
    # Changed options with --resume: refused before anything trains, naming the changed key.
    changed = train(harness, work, '--resume', options=('rtdmd:model.advantage_clip=3.0',))
    assert changed.exitcode == 1
    assert 'rtdmd' in changed.log and 'model.advantage_clip: 5.0 -> 3.0' in changed.log
    assert sorted(p.name for p in (work / 'rtdmd').iterdir()) == before
    # A stage-1 checkpoint handed to --resume of the stage-2 config: refused, saying what it is.
    from rtdmd.apis.stages import plan_stages, split_stage_options
    from rtdmd.utils.config import load_config
    from rtdmd.utils.run_dir import check_resume_checkpoint
    from rtdmd.utils.run_identity import config_identity

    options = parsed(FAULT_OPTIONS)
    cfg = load_config(harness['leaf'], split_stage_options(options)[0])
    cfg.work_dir = str(work)
    plans = {p.name: p for p in plan_stages(cfg, options)}
    assert [p.state for p in plans.values()] == ['done', 'done']
    with pytest.raises(Exception, match='checkpoint of another stage') as info:
        check_resume_checkpoint(str(work / 'ac_dmd' / 'iter_4.pth'),
                                config_identity(plans['rtdmd'].cfg, 'rtdmd'), 4)
    assert 'stage ac_dmd, ACDMDDistiller' in str(info.value)
    # model.init_checkpoint of another backbone: refused, naming the backbone keys that differ.
    from rtdmd.utils.run_dir import check_init_checkpoint

    other = plans['rtdmd'].cfg
    other.model.backbone.hidden_dim = 16
    with pytest.raises(Exception, match=r'trained on another backbone: '
                                        r'model.backbone.hidden_dim: 32 -> 16'):
        check_init_checkpoint(other)
    # --start-over moves the old run aside (nothing deleted) and trains anew.
    fresh = train(harness, work, '--start-over')
    assert fresh.exitcode == 0, fresh.log[-3000:]
    moved = [p for p in tmp_path.iterdir() if p.name.startswith('run.superseded-')]
    assert len(moved) == 1 and (moved[0] / 'rtdmd' / 'iter_4.pth').is_file()
    assert_identical_to_reference(harness, work)
