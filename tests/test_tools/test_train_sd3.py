"""tools/train.py on SD3 configs: both stages on a tiny snapshot, and the missing-weights error."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rtdmd.testing.lora import STANDIN_REWARD_OPTIONS
from rtdmd.testing.sd3 import TINY_RESOLUTION, build_sd3_dir
from rtdmd.utils.mmengine_compat import apply_mmengine_patches
from tests.conftest import REPO

# Tiny geometry for both stages of the pipeline config: 2 prompts x group 2, 2 iterations, a
# generator update every stage-1 iteration, a checkpoint per iteration, no validation (the real
# configs define none).
TINY_SD3_OPTIONS = [
    f'backbone.resolution={TINY_RESOLUTION}', 'backbone.dtype=float32',
    'backbone.lora.rank=4', 'backbone.lora.alpha=8',
    '*:train_cfg.max_iters=2', '*:default_hooks.checkpoint.interval=1',
    '*:default_hooks.logger.interval=1', '*:train_dataloader.batch_size=2',
    '*:train_dataloader.num_workers=0', 'ac_dmd:model.fake_update_ratio=1',
    'rtdmd:model.group_size=2', *STANDIN_REWARD_OPTIONS,
]


def run_train(args: list[str], env: dict | None = None, timeout: float = 300
              ) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', **(env or {}))
    return subprocess.run([sys.executable, 'tools/train.py', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def load(path: Path) -> dict:
    apply_mmengine_patches()
    return torch.load(path, map_location='cpu', weights_only=False)


def generator_lora(ckpt: dict, adapter: str = 'default') -> dict[str, torch.Tensor]:
    prefix = 'backbone.generator.'
    return {k[len(prefix):]: v for k, v in ckpt['state_dict'].items()
            if k.startswith(prefix) and f'.{adapter}.' in k}


@pytest.mark.slow
def test_both_stages_train_and_change_the_generator_lora(tmp_path: Path) -> None:
    root = tmp_path / 'weights'
    build_sd3_dir(str(root), 'sd3')
    work = tmp_path / 'work'
    result = run_train(['configs/rtdmd/sd3m_4step.py', '--work-dir', str(work), '--cfg-options',
                        f'weights_root={root}', *TINY_SD3_OPTIONS])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    for name in ('loss_dmd', 'loss_fake_dsm', 'loss_policy', 'loss_dm', 'loss_bp',
                 'reward_main'):
        assert name in log, name

    s1 = [load(work / 'ac_dmd' / f'iter_{i}.pth') for i in (1, 2)]
    assert int(s1[1]['state_dict']['iteration']) == 2
    lora1 = [generator_lora(c) for c in s1]
    assert lora1[0] and set(lora1[0]) == set(lora1[1])
    assert any(float(v.abs().max()) > 0 for k, v in lora1[0].items() if 'lora_B' in k)
    assert any(not torch.equal(lora1[0][k], lora1[1][k]) for k in lora1[0])
    # Only LoRA weights are checkpointed, never the frozen bases.
    assert all('lora_' in k for k in s1[1]['state_dict'] if k.startswith('backbone.'))

    s2 = [load(work / 'rtdmd' / f'iter_{i}.pth') for i in (1, 2)]
    assert int(s2[1]['state_dict']['iteration']) == 2
    # Stage 2 starts from stage 1's EMA generator, frozen under a fresh adapter.
    frozen = generator_lora(s2[1], 'stage1')
    ema = s1[1]['ema_state']
    assert frozen and all(torch.equal(v, ema[k.replace('.stage1.', '.default.')])
                          for k, v in frozen.items())
    fresh = [generator_lora(c) for c in s2]
    assert any(not torch.equal(fresh[0][k], fresh[1][k]) for k in fresh[0])


@pytest.mark.parametrize('config,repo', [
    ('configs/rtdmd/sd3m_4step.py', 'stabilityai/stable-diffusion-3-medium-diffusers'),
    ('configs/rtdmd/sd35m_4step.py', 'stabilityai/stable-diffusion-3.5-medium'),
])
def test_missing_weights_fail_fast_saying_where_to_put_them(tmp_path: Path, config: str,
                                                            repo: str) -> None:
    start = time.perf_counter()
    result = run_train([config, '--work-dir', str(tmp_path / 'work')],
                       env={'RTDMD_WEIGHTS': str(tmp_path)})  # weights_root from the env var
    assert result.returncode != 0
    folder = tmp_path / repo.split('/')[1]
    assert f'error: the teacher / fake score weights are not at {str(folder)!r}' in result.stderr
    assert f'hf download {repo} --local-dir {folder}' in result.stderr
    assert 'RTDMD_WEIGHTS' in result.stderr and 'Traceback' not in result.stderr
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_stage2_trains_with_a_weighted_multi_reward(tmp_path: Path) -> None:
    """Two weighted rewards: advantages combine both, back-propagation uses both (both
    differentiable), and each is logged on its own."""
    root = tmp_path / 'weights'
    build_sd3_dir(str(root), 'sd3')
    work = tmp_path / 'work'
    result = run_train([
        'configs/rtdmd/sd3m_4step.py', '--work-dir', str(work), '--cfg-options',
        f'weights_root={root}', *TINY_SD3_OPTIONS,
        'train_rewards.cat.scorer.type=ImageNetClassifierReward',
        'train_rewards.cat.scorer.class_index=281', 'train_rewards.cat.weight=0.5'])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert 'reward_main' in log and 'reward_cat' in log and 'loss_bp' in log
    dumped = (work / 'rtdmd' / 'sd3m_4step.py').read_text()
    assert 'ImageNetClassifierReward' in dumped and 'ImageBrightnessReward' in dumped
    fresh = [generator_lora(load(work / 'rtdmd' / f'iter_{i}.pth')) for i in (1, 2)]
    assert any(not torch.equal(fresh[0][k], fresh[1][k]) for k in fresh[0])


def test_missing_reward_weights_stop_the_pipeline_before_stage_one(tmp_path: Path) -> None:
    """Stage 2's rewards are checked when the pipeline starts, not after stage 1 has trained."""
    root = tmp_path / 'weights'
    build_sd3_dir(str(root), 'sd3')
    rewards = tmp_path / 'rewards'
    options = [o for o in TINY_SD3_OPTIONS if o not in STANDIN_REWARD_OPTIONS]
    result = run_train(['configs/rtdmd/sd3m_4step.py', '--work-dir', str(tmp_path / 'work'),
                        '--cfg-options', f'weights_root={root}', *options],
                       env={'RTDMD_REWARD_WEIGHTS': str(rewards)})
    assert result.returncode != 0
    assert 'error: 4 reward models are missing weights' in result.stderr  # all named at once
    for scorer, expected in (('CLIPScore', 'clip-vit-large-patch14/config.json'),
                             ('HPSv2', 'HPS_v2.1_compressed.pt'),
                             ('PickScore', 'PickScore_v1/config.json'),
                             ('GenEvalReward', 'mask2former-swin-small-coco-instance/config.json'),
                             ('GenEvalReward', 'clip-vit-large-patch14/config.json')):
        assert f'the {scorer} reward weights are not at' in result.stderr
        assert str(rewards / expected) in result.stderr
    assert 'Traceback' not in result.stderr
    assert not (tmp_path / 'work' / 'ac_dmd').exists()  # nothing trained
