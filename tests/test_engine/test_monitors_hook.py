"""RewardHackingMonitorHook through the real Runner: finite scalars in TensorBoard, training
unchanged by it, and each monitor firing on a generator pushed to the hack it is meant to see.

Worlds: the analytic one (points: drift, diversity, x0 norm), the shipped shapes FLUX.2 student
(images: saturation and brightness too, the reward gap on the held-out split) and a tiny
random-weight SD3 (a second scorer as the held-out reward).
"""

from __future__ import annotations

import glob
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mmengine.config import DictAction

from rtdmd.engine.hooks.monitors import RewardHackingMonitorHook, check_thresholds
from rtdmd.utils.config import ConfigError, load_config
from rtdmd.utils.mmengine_compat import apply_mmengine_patches
from rtdmd.utils.setup_env import register_all_modules
from tests.conftest import TINY_TOY_OPTIONS

MONITOR = 'custom_hooks.1'  # the algorithm base's hook list: EMA, monitors
NO_PIPELINE = ['stages=None', 'evaluation=None', 'default_hooks.visualization.interval=1000']


def _options(options: list[str]) -> dict:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    return parser.parse_args(['--o', *options]).o


def _train(config: str, work_dir: Path, options: list[str], monitors: bool = True):
    from mmengine.runner import Runner

    apply_mmengine_patches()
    register_all_modules()
    cfg = load_config(config, _options(options))
    if not monitors:
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h.type != 'RewardHackingMonitorHook']
    cfg.work_dir = str(work_dir)
    # mmengine names a run's visualizer by config file and second: two in-process runs of one
    # config in the same second would share the first one's TensorBoard writer
    cfg.experiment_name = f'{work_dir.parent.name}_{work_dir.name}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def _hook(runner) -> RewardHackingMonitorHook:
    return next(h for h in runner.hooks if isinstance(h, RewardHackingMonitorHook))


def _scalars(work_dir: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(str(work_dir / '**' / 'events.out.tfevents.*'), recursive=True)
    assert events, f'no TensorBoard event file under {work_dir}'
    found: dict[str, list] = {}
    for path in events:
        acc = EventAccumulator(path)
        acc.Reload()
        for tag in acc.Tags()['scalars']:
            found.setdefault(tag, []).extend(acc.Scalars(tag))
    return found


def _trainable(runner) -> dict[str, torch.Tensor]:
    net = runner.model.backbone.net('generator')
    return {k: p.detach().clone() for k, p in net.named_parameters() if p.requires_grad}


def _hacked(backbone, x0_map: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """A generator whose every x0 prediction is ``x0_map`` of its own: the velocity becomes
    ``(x - x0') / sigma`` under the rectified-flow interpolant."""
    real = backbone.predict_velocity

    def predict(role, x, sigma, cond, *args, **kwargs):
        v = real(role, x, sigma, cond, *args, **kwargs)
        if role != 'generator':
            return v
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(
            x.shape[0]).view(-1, *[1] * (x.ndim - 1))
        return (x - x0_map(x - s * v)) / s

    return predict


def _firing(hook: RewardHackingMonitorHook, runner) -> set[str]:
    from rtdmd.engine.hooks.monitors import MONITORS, monitor_values

    values = monitor_values(hook.probe(runner), hook.reference)
    return {name for name in values if name in MONITORS and hook._fires(name, values)}


# ------------------------------------------------------------------------------ analytic world
TOY_STAGE2 = [*(o for o in TINY_TOY_OPTIONS if not o.startswith('model.fake_update_ratio')),
              *NO_PIPELINE, 'train_cfg.val_interval=100', 'model.group_size=4',
              f'{MONITOR}.interval=2', f'{MONITOR}.samples_per_prompt=128']


@pytest.fixture(scope='module')
def toy_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    work = tmp_path_factory.mktemp('mon_toy')
    with_hook = _train('configs/rtdmd/toy2d_4step.py', work / 'with', TOY_STAGE2)
    without = _train('configs/rtdmd/toy2d_4step.py', work / 'without', TOY_STAGE2,
                     monitors=False)
    return with_hook, without, work


def test_toy_scalars_reach_tensorboard_and_training_is_unchanged(toy_runs: tuple) -> None:
    with_hook, without, work = toy_runs
    assert not any(isinstance(h, RewardHackingMonitorHook) for h in without.hooks)
    a, b = _trainable(with_hook), _trainable(without)
    assert a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical: the hook draws nothing
    scalars = _scalars(work / 'with')
    for name in ('drift', 'diversity_ratio', 'x0_norm_ratio', 'x0_rms', 'reward_train',
                 'firing'):
        steps = scalars[f'monitor/{name}']
        assert [e.step for e in steps] == [0, 2, 4, 6], name
        assert all(torch.isfinite(torch.tensor(e.value)) for e in steps), name
    assert scalars['monitor/drift'][0].value == pytest.approx(0.0, abs=1e-6)
    assert scalars['monitor/diversity_ratio'][0].value == pytest.approx(1.0)
    assert abs(scalars['monitor/drift'][-1].value) < 0.05  # six small steps: near the start
    assert not any(t.startswith('monitor/saturation') or 'reward_gap' in t for t in scalars)
    assert not any('loss' in t for t in scalars if t.startswith('monitor/'))


def test_the_reference_survives_a_resume(toy_runs: tuple, tmp_path: Path) -> None:
    """The checkpoint keeps the stage-2 start's probe; a resumed run compares with it, not with
    the resumed model."""
    from rtdmd.utils.checkpoint import read_checkpoint

    first, _, work = toy_runs
    saved = read_checkpoint(str(work / 'with' / 'iter_6.pth'))['reward_monitor_reference']
    assert torch.equal(saved['x0'], _hook(first).reference['x0'])
    resumed = _train('configs/rtdmd/toy2d_4step.py', tmp_path, [
        *TOY_STAGE2, 'train_cfg.max_iters=8', 'resume=True',
        f'load_from={work / "with" / "iter_6.pth"}'])
    hook = _hook(resumed)
    assert torch.equal(hook.reference['x0'], saved['x0'])
    assert [h['epoch'] for h in hook.history] == [8]  # no new epoch-0 row


def test_toy_hacked_generators_fire_their_monitors(toy_runs: tuple,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    runner = toy_runs[0]
    hook, backbone = _hook(runner), runner.model.backbone
    assert _firing(hook, runner) == set()  # the trained generator is still healthy
    # Collapse: every sample of a prompt 95 % of the way to their common mean.
    monkeypatch.setattr(backbone, 'predict_velocity', _hacked(
        backbone, lambda x0: x0.mean(0, keepdim=True) + 0.05 * (x0 - x0.mean(0, keepdim=True))))
    assert 'diversity_ratio' in _firing(hook, runner)
    monkeypatch.undo()
    # Off the support: every sample pushed 10 units along the reward direction (the toy's
    # GRPO-only failure, taken further); a translation keeps the spread.
    push = torch.tensor([0.5, 0.8660254])
    monkeypatch.setattr(backbone, 'predict_velocity', _hacked(backbone, lambda x0: x0 + 10 * push))
    assert _firing(hook, runner) == {'drift', 'x0_norm_ratio'}
    monkeypatch.undo()
    assert _firing(hook, runner) == set()


def test_monitor_warning_names_the_monitor_value_and_threshold(toy_runs: tuple,
                                                               caplog: pytest.LogCaptureFixture
                                                               ) -> None:
    runner = toy_runs[0]
    hook = _hook(runner)
    values = dict(drift=2.5, diversity_ratio=0.9, x0_norm_ratio=0.5, x0_rms=1.0)
    logger = runner.logger  # an MMLogger: not in logging's registry, caplog needs its handler
    logger.addHandler(caplog.handler)
    hook.streaks, patience = {}, hook.patience
    assert patience == 2  # the default: two probes in a row past a threshold
    try:
        hook._log(runner, 5, values)  # past two thresholds once: counted, not yet a warning
        assert hook.history[-1]['crossing'] == 2.0 and hook.history[-1]['firing'] == 0.0
        assert not [r for r in caplog.records if r.levelno == logging.WARNING]
        hook._log(runner, 6, {**values, 'drift': 0.1})  # drift back: its count starts over
        hook._log(runner, 7, values)
        hook._log(runner, 8, {**values, 'x0_norm_ratio': float('nan')})
    finally:
        logger.removeHandler(caplog.handler)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [h['firing'] for h in hook.history[-3:]] == [1.0, 1.0, 2.0]
    assert hook.streaks == {'drift': 2, 'x0_norm_ratio': 4}
    assert 'x0_norm_ratio = 0.5' in warnings[0] and 'outside [0.667, 1.5]' in warnings[0]
    assert warnings[0].endswith('(thresholds.x0_norm), 2 probes in a row: the size of the final '
                                'latents changed: outputs drifting off the data manifold '
                                '(blown-out or washed-out samples)')
    assert len(warnings) == 4 and 'at epoch 6' in warnings[0]
    assert warnings[1].startswith('reward-hacking monitor x0_norm_ratio = 0.5 at epoch 7, '
                                  'threshold outside [0.667, 1.5] (thresholds.x0_norm), '
                                  '3 probes in a row: ')
    assert warnings[2].startswith('reward-hacking monitor drift = 2.5 at epoch 8, threshold > 0.5 '
                                  '(thresholds.drift), 2 probes in a row: ')
    assert "leaving the teacher's support" in warnings[2]
    assert warnings[3].startswith('reward-hacking monitor x0_norm_ratio = nan at epoch 8')


def test_thresholds_are_validated_with_the_key_named() -> None:
    assert check_thresholds(dict(drift=None))['drift'] is None
    with pytest.raises(ValueError, match=r"unknown keys \['drfit'\]; valid: \['brightness'"):
        check_thresholds(dict(drfit=1.0))
    with pytest.raises(ValueError, match=r'thresholds.diversity must be a number in \(0, 1\]'):
        check_thresholds(dict(diversity=2.0))
    with pytest.raises(ValueError, match=r'thresholds.x0_norm must be a number in \(1, inf\]'):
        check_thresholds(dict(x0_norm=0.5))
    with pytest.raises(ValueError, match=r'thresholds.edge_energy must be a number in \(1, inf'):
        check_thresholds(dict(edge_energy=0.9))
    with pytest.raises(ValueError, match=r'thresholds.rare_colour must be a number in \(0, 1\]'):
        check_thresholds(dict(rare_colour=1.5))
    with pytest.raises(ValueError, match='heldout_prompts must be'):
        RewardHackingMonitorHook(heldout_prompts='held')
    # The config loader names a mistyped key before anything is built.
    with pytest.raises(ConfigError, match=r"custom_hooks\[1\].thresholds.drfit: 'drfit' is not "
                                          r'a key of thresholds.*Did you mean: drift'):
        load_config('configs/rtdmd/toy2d_4step.py',
                    _options([f'{MONITOR}.thresholds.drfit=1.0']))


# --------------------------------------------------------------------------------- shapes world
@pytest.mark.slow
def test_shapes_images_monitors_and_a_saturated_generator(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    runner = _train('configs/rtdmd/shapes_4step.py', tmp_path / 'work', [
        *NO_PIPELINE, 'model.group_size=2', 'train_dataloader.batch_size=2',
        'train_cfg.max_iters=1', 'default_hooks.checkpoint.interval=1',
        f'{MONITOR}.num_prompts=2', f'{MONITOR}.samples_per_prompt=3'])
    hook, backbone = _hook(runner), runner.model.backbone
    scalars = _scalars(tmp_path / 'work')
    for name in ('saturation_shift', 'brightness_shift', 'edge_energy_ratio', 'rare_colour_shift',
                 'colour_shift', 'reward_gap', 'reward_heldout'):
        events = scalars[f'monitor/{name}']
        assert [e.step for e in events] == [0, 1]
        assert all(torch.isfinite(torch.tensor(e.value)) for e in events)
    train, heldout = hook._sets['train'][0], hook._sets['heldout'][0]
    assert len(train) == len(heldout) == 2 and not set(train) & set(heldout)
    assert _firing(hook, runner) == set()
    # Saturated: every output the latent of a flat red image (palette red, 220 40 40).
    red = torch.tensor([220, 40, 40]).div(255).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    with torch.no_grad():
        z_red = backbone.encode_images(red.clone())
    monkeypatch.setattr(backbone, 'predict_velocity', _hacked(
        backbone, lambda x0: z_red.expand_as(x0)))
    assert {'saturation_shift', 'brightness_shift'} <= _firing(hook, runner)
    # Streaked: the background crossed by bands of an off-palette cyan (the shapes world's
    # GRPO-only hack, exaggerated; bands of 3 px, as the VAE smooths 1-px lines to grey).
    streaks = torch.tensor([235, 235, 235]).div(255).view(1, 3, 1, 1).repeat(1, 1, 32, 32)
    for row in range(2, 32, 8):
        streaks[..., row:row + 3, :] = torch.tensor([40, 210, 210]).div(255).view(1, 3, 1, 1)
    with torch.no_grad():
        z_streaks = backbone.encode_images(streaks)
    monkeypatch.setattr(backbone, 'predict_velocity', _hacked(
        backbone, lambda x0: z_streaks.expand_as(x0)))
    assert {'edge_energy_ratio', 'rare_colour_shift'} <= _firing(hook, runner)


# ----------------------------------------------------------------------------------- tiny SD3
@pytest.mark.slow
def test_sd3_with_a_second_scorer_as_the_held_out_reward(tmp_path: Path) -> None:
    from rtdmd.testing.lora import STANDIN_REWARD_OPTIONS
    from rtdmd.testing.sd3 import TINY_RESOLUTION, build_sd3_dir

    build_sd3_dir(str(tmp_path), 'sd3')
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('a red car\ntwo dogs\n')
    runner = _train('configs/rtdmd/sd3m_4step.py', tmp_path / 'work', [
        f'weights_root={tmp_path}', f'backbone.resolution={TINY_RESOLUTION}',
        'backbone.dtype=float32', 'backbone.max_sequence_length=16',
        'backbone.gradient_checkpointing=False', 'backbone.lora.rank=4',
        'backbone.lora.alpha=8', 'train_cfg.max_iters=1', 'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0', f'train_dataloader.dataset.path={prompts}',
        'train_dataloader.dataset.require_metadata=False', 'model.group_size=2',
        'default_hooks.checkpoint.interval=1', *NO_PIPELINE, *STANDIN_REWARD_OPTIONS,
        f'{MONITOR}.samples_per_prompt=2', f'{MONITOR}.heldout_reward.type=ImageBrightnessReward'])
    history = _hook(runner).history
    assert [h['epoch'] for h in history] == [0, 1]
    # The held-out scorer is the training one on the same images: no gap, whatever trained.
    assert [h['reward_gap'] for h in history] == pytest.approx([0.0, 0.0], abs=1e-6)
    assert history[0]['drift'] == pytest.approx(0.0, abs=1e-6)
    assert abs(history[1]['drift']) < 0.05  # one step at the release's learning rate
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert 'monitor/reward_gap' in _scalars(tmp_path / 'work')


def test_monitor_traces_tool_prints_the_run_table(toy_runs: tuple,
                                                  capsys: pytest.CaptureFixture) -> None:
    import runpy

    tool = runpy.run_path('tools/monitor_traces.py')
    assert tool['main']([str(toy_runs[2] / 'with'), '--epochs', '0', '6']) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [c.strip() for c in lines[0].strip('|').split('|')][:3] == ['run', 'epoch', 'drift']
    rows = [[c.strip() for c in line.strip('|').split('|')] for line in lines[2:]]
    assert [r[1] for r in rows] == ['0', '6'] and rows[0][2] == '0' and float(rows[1][2]) > 0
    assert tool['main']([str(toy_runs[2] / 'nothing')]) == 1
