"""The OpenMMLab conventions of tools/*.py: --amp, --auto-scale-lr, hf download, light --help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtdmd.engine.optim_wrappers import AmpGuardOptimWrapper
from rtdmd.utils.config import ConfigError, load_config
from rtdmd.utils.train_options import apply_train_options
from tests.conftest import REPO, TINY_TOY_OPTIONS
from tests.test_engine.test_visualization_hook import _options

CONFIG = 'configs/ac_dmd/toy2d_4step.py'


def _runner(options: list[str], train_options: list[str], work_dir: Path):
    from mmengine.runner import Runner

    from rtdmd.apis.pipeline import build_runner

    cfg = load_config(CONFIG, _options([*TINY_TOY_OPTIONS, 'train_cfg.max_iters=1', *options]))
    cfg.work_dir = str(work_dir)
    cfg.train_options = train_options
    runner = build_runner(cfg)
    assert isinstance(runner, Runner)
    return runner


@pytest.fixture(scope='module')
def trained(tmp_path_factory: pytest.TempPathFactory):
    """One iteration with both options (they touch disjoint parts: wrapper type, lr)."""
    runner = _runner(['auto_scale_lr.base_batch_size=8'], ['amp', 'auto_scale_lr'],
                     tmp_path_factory.mktemp('train_options'))
    cfg_lr = runner.cfg.optim_wrapper.generator.optimizer.lr
    runner.train()
    return runner, cfg_lr


def test_amp_trains_under_bf16_autocast(trained) -> None:
    runner, _ = trained
    wrappers = runner.optim_wrapper
    assert {type(wrappers[k]) for k in ('generator', 'fake_score')} == {AmpGuardOptimWrapper}
    layer = torch.nn.Linear(4, 4)
    with wrappers['generator'].optim_context(layer):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16  # autocast is on
    assert layer(torch.randn(2, 4)).dtype == torch.float32  # and only inside
    assert all(p.dtype == torch.float32 for p in runner.model.parameters())  # fp32 masters


def test_auto_scale_lr_scales_by_the_total_batch(trained) -> None:
    runner, cfg_lr = trained
    # batch 16 (TINY_TOY_OPTIONS) on one process over a base of 8: twice the configured lr
    assert runner.optim_wrapper['generator'].get_lr()['lr'][0] == pytest.approx(2 * cfg_lr)


def test_train_options_refuse_what_they_cannot_apply() -> None:
    cfg = load_config(CONFIG, _options(TINY_TOY_OPTIONS))
    with pytest.raises(ConfigError, match='auto_scale_lr.base_batch_size'):
        apply_train_options(cfg, ['auto_scale_lr'])
    cfg.optim_wrapper.generator.type = 'SomeOtherWrapper'
    with pytest.raises(ConfigError, match='--amp: optim_wrapper generator'):
        apply_train_options(cfg, ['amp'])


def test_train_tool_checks_the_options_before_any_work(tmp_path: Path) -> None:
    """tools/train.py's main, in this process (a subprocess would add ~10 s of imports)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location('rtdmd_train_tool', REPO / 'tools/train.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit, match='auto_scale_lr.base_batch_size'):
        tool.main([CONFIG, '--auto-scale-lr', '--work-dir', str(tmp_path / 'w')])
    assert not (tmp_path / 'w').exists()  # nothing started


def test_missing_weight_hints_say_hf_download(tmp_path: Path) -> None:
    from rtdmd.models.backbones.pretrained import MissingWeightsError, check_pretrained_dir

    with pytest.raises(MissingWeightsError) as err:
        check_pretrained_dir(str(tmp_path / 'nope'), {'transformer': ['config.json']},
                             'org/model', 'teacher')
    assert f'hf download org/model --local-dir {tmp_path / "nope"}' in str(err.value)
    assert 'huggingface-cli' not in str(err.value)


@pytest.mark.parametrize('tool', ['train.py', 'test.py', 'export.py', 'chaos.py',
                                  'ocr_check.py', 'benchmark_cli.py', 'gpu_check.py',
                                  'profile_step.py'])
def test_help_parses_before_heavy_imports(tool: str) -> None:
    """``--help`` never loads torch, diffusers or mmengine's runner (what made it take 6-8 s)."""
    probe = ('import runpy, sys\n'
             f'sys.argv = [{tool!r}, "--help"]\n'
             'try:\n'
             f'    runpy.run_path("tools/{tool}", run_name="__main__")\n'
             'except SystemExit:\n'
             '    pass\n'
             'print(sorted(m for m in ("torch", "diffusers", "mmengine.runner") '
             'if m in sys.modules))')
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, '-c', probe], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == '[]'
    assert 'usage:' in result.stdout


def test_lazy_cfg_options_parse_like_mmengines() -> None:
    import argparse

    from rtdmd.cli import LazyDictAction

    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=LazyDictAction, default={})
    args = parser.parse_args(['--cfg-options', 'a.b=1', 'c=[1,2]', 'd=x'])
    assert args.cfg_options == _options(['a.b=1', 'c=[1,2]', 'd=x']) == {
        'a.b': 1, 'c': [1, 2], 'd': 'x'}
