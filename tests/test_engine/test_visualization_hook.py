"""SampleVisualizationHook and the evaluation's TensorBoard log, read back with EventAccumulator.

Real mmengine Runners train the analytic world (scatter grids) and a tiny SD3 (image grids with
prompt captions) with the hook the base runtime config installs; the event files TensorBoard
writes are read back with tensorboard's own ``EventAccumulator``.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import DictAction

from rtdmd.evaluation.tensorboard_report import log_report
from rtdmd.utils.config import load_config
from rtdmd.utils.mmengine_compat import apply_mmengine_patches
from rtdmd.utils.setup_env import register_all_modules
from tests.conftest import TINY_TOY_OPTIONS


def _options(options: list[str]) -> dict:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction)
    return parser.parse_args(['--o', *options]).o


def _train(config: str, work_dir: Path, options: list[str]):
    from mmengine.runner import Runner

    apply_mmengine_patches()
    register_all_modules()
    cfg = load_config(config, _options(options))
    cfg.work_dir = str(work_dir)
    # mmengine names a run's visualizer by config file and second: two in-process runs of one
    # config in the same second would share the first one's TensorBoard writer
    cfg.experiment_name = f'{work_dir.parent.name}_{work_dir.name}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def _images(work_dir: Path, tag: str = 'samples') -> list:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(str(work_dir / '**' / 'events.out.tfevents.*'), recursive=True)
    assert events, f'no TensorBoard event file under {work_dir}'
    found = []
    for path in events:
        acc = EventAccumulator(path, size_guidance={'images': 0})
        acc.Reload()
        if tag in acc.Tags()['images']:
            found += acc.Images(tag)
    return found


def _decode(event) -> np.ndarray:
    import io

    import matplotlib.pyplot as plt

    return plt.imread(io.BytesIO(event.encoded_image_string), format='png')


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    work = tmp_path_factory.mktemp('vis_toy')
    runner = _train('configs/ac_dmd/toy2d_4step.py', work,
                    [*TINY_TOY_OPTIONS, 'default_hooks.visualization.interval=3'])
    return runner, work


def test_toy_grids_reach_tensorboard_and_the_work_dir(toy_run: tuple) -> None:
    runner, work = toy_run
    images = _images(work)
    assert sorted(e.step for e in images) == [3, 6]
    first = _decode(images[0])
    assert first.ndim == 3 and first.shape[0] > 100 and first.std() > 0.01  # a drawn figure
    assert (work / 'vis' / 'samples_iter_3.png').is_file()
    assert (work / 'vis' / 'samples_iter_6.png').is_file()


def test_same_noise_and_prompts_each_time(toy_run: tuple) -> None:
    """Two grids of the unchanged model are identical; after a change of weights they differ."""
    runner, _ = toy_run
    hook = next(h for h in runner.hooks if type(h).__name__ == 'SampleVisualizationHook')
    a, b = hook.visualize(runner, 100), hook.visualize(runner, 101)
    assert hook.prompts == [0, 1]  # the toy world's classes, from the training dataset
    # The title holds the step: compare the plotting area only (below the title).
    np.testing.assert_array_equal(a[40:], b[40:])
    with torch.no_grad():
        for p in runner.model.backbone.generator.parameters():
            p.add_(0.5 * torch.randn_like(p))
    c = hook.visualize(runner, 100)
    assert not np.array_equal(a, c)


def test_sd3_image_grids_with_captions(tmp_path: Path) -> None:
    from rtdmd.testing.sd3 import TINY_RESOLUTION, build_sd3_dir

    build_sd3_dir(str(tmp_path))
    prompts = tmp_path / 'prompts.txt'
    prompts.write_text('a red car\ntwo dogs\n')
    _train('configs/ac_dmd/sd3m_4step.py', tmp_path / 'work', [
        f'weights_root={tmp_path}', f'backbone.resolution={TINY_RESOLUTION}',
        'backbone.dtype=float32', 'backbone.max_sequence_length=16',
        'backbone.gradient_checkpointing=False', 'backbone.lora.rank=4',
        'backbone.lora.alpha=8', 'train_cfg.max_iters=1', 'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0', f'train_dataloader.dataset.path={prompts}',
        'model.fake_update_ratio=1', 'default_hooks.checkpoint.interval=1',
        'default_hooks.visualization.interval=1', 'default_hooks.visualization.num_prompts=2'])
    images = _images(tmp_path / 'work')
    assert [e.step for e in images] == [1]
    grid = _decode(images[0])
    assert grid.shape[1] > grid.shape[0]  # two captioned images side by side
    assert (tmp_path / 'work' / 'vis' / 'samples_iter_1.png').is_file()


def test_evaluation_report_reaches_tensorboard(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    png = tmp_path / 'samples.png'
    plt.imsave(png, np.random.default_rng(0).random((20, 30, 3)))
    metrics = {'teacher': {'sw2_teacher': 0.01, 'off_support': 0.0},
               'rtdmd': {'sw2_teacher': 0.2, 'off_support': float('nan')}, '_settings': {}}
    log_report(str(tmp_path / 'tb'), metrics, '| model | sw2 |\n|---|---|', {'samples': str(png)})
    acc = EventAccumulator(glob.glob(str(tmp_path / 'tb' / 'events.*'))[0])
    acc.Reload()
    assert set(acc.Tags()['scalars']) == {'sw2_teacher/teacher', 'sw2_teacher/rtdmd',
                                          'off_support/teacher'}  # NaN skipped
    assert acc.Scalars('sw2_teacher/rtdmd')[0].value == pytest.approx(0.2)
    assert acc.Tags()['images'] == ['samples']
    assert 'comparison_table' in str(acc.Tags())
