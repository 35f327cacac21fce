"""tools/train.py on FLUX.1-dev: missing weights fail fast; both stages train on a tiny snapshot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtdmd.testing.flux import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, build_flux_dir
from rtdmd.testing.lora import STANDIN_REWARD_OPTIONS
from tests.conftest import REPO

CONFIG = 'configs/rtdmd/flux1_dev_4step.py'


def _train(work_dir: Path, weights: Path, *options: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', RTDMD_WEIGHTS=str(weights))
    args = [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(work_dir)]
    if options:
        args += ['--cfg-options', *options]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _load(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=False)


def _lora(state: dict, role: str, adapter: str = 'default') -> dict:
    return {k: v for k, v in state['state_dict'].items()
            if k.startswith(f'backbone.{role}.') and f'.{adapter}.' in k}


def test_train_without_weights_says_where_to_put_them(tmp_path: Path) -> None:
    result = _train(tmp_path / 'work', tmp_path / 'no_weights')
    assert result.returncode != 0
    err = result.stderr
    assert 'Traceback' not in err, err[-3000:]
    where = tmp_path / 'no_weights' / 'FLUX.1-dev'
    assert f"error: the teacher / fake score weights are not at '{where}'" in err
    assert 'hf download black-forest-labs/FLUX.1-dev' in err
    assert 'RTDMD_WEIGHTS' in err and 'transformer/*.safetensors' in err


@pytest.mark.slow
def test_ac_dmd_then_rtdmd_train_the_generator_lora(tmp_path: Path) -> None:
    weights = tmp_path / 'weights'
    build_flux_dir(str(weights))
    work = tmp_path / 'work'
    result = _train(
        work, tmp_path / 'elsewhere',  # the command line's weights_root wins over the env
        f'weights_root={weights}', f'backbone.resolution={TINY_RESOLUTION}',
        f'backbone.max_sequence_length={TINY_MAX_SEQUENCE_LENGTH}',
        '*:train_cfg.max_iters=2', '*:train_dataloader.batch_size=2',
        '*:train_dataloader.num_workers=0', '*:default_hooks.checkpoint.interval=1',
        '*:default_hooks.logger.interval=1', 'ac_dmd:model.fake_update_ratio=1',
        'rtdmd:model.group_size=2', *STANDIN_REWARD_OPTIONS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    for term in ('loss_fake_dsm', 'loss_consistency', 'loss_dmd', 'reward_main', 'loss_policy',
                 'loss_dm', 'loss_bp'):
        assert f'{term}: ' in log, term
    stage1 = [_load(work / 'ac_dmd' / f'iter_{i}.pth') for i in (1, 2)]
    stage2 = [_load(work / 'rtdmd' / f'iter_{i}.pth') for i in (1, 2)]
    for first, last in (stage1, stage2):  # every generator LoRA tensor moved between iterations
        before, after = _lora(first, 'generator'), _lora(last, 'generator')
        assert before and all(not torch.equal(before[k], after[k]) for k in before)
        assert all(v.dtype == torch.float32 for v in after.values())  # fp32 on a bf16 base
    # Stage 2 stacks stage 1's LoRA (generator: its EMA) frozen under the fresh trainable one.
    frozen = _lora(stage2[1], 'generator', 'stage1')
    ema = stage1[1]['ema_state']
    assert len(frozen) == len(ema)
    for key, value in ema.items():
        stacked = frozen['backbone.generator.' + key.replace('.default.', '.stage1.')]
        assert torch.equal(stacked, value.to(stacked.dtype))
    frozen_fake = _lora(stage2[1], 'fake_score', 'stage1')
    trained_fake = _lora(stage1[1], 'fake_score')
    assert frozen_fake and all(
        torch.equal(v, trained_fake[k.replace('.stage1.', '.default.')].to(v.dtype))
        for k, v in frozen_fake.items())
