"""tools/train.py on configs/rtdmd/shapes_4step.py from the shipped teacher: a few iterations of
both stages and the results table, with the config's own backbone (rtdmd/assets/shapes/flux2)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtdmd.utils.mmengine_compat import apply_mmengine_patches
from tests.conftest import REPO

CONFIG = 'configs/rtdmd/shapes_4step.py'
SHORT = [
    '*:train_cfg.max_iters=2', '*:train_dataloader.batch_size=2',
    '*:default_hooks.logger.interval=1', '*:default_hooks.checkpoint.interval=2',
    'ac_dmd:model.fake_update_ratio=1',  # a generator step in each of the two iterations
    'rtdmd:model.group_size=2', 'evaluation.per_tag=1', 'evaluation.seeds=[0]',
    'evaluation.teacher.0.steps=2',  # the 28-step row at 2 steps (the 4-step row stays)
]


def _load(path: Path) -> dict:
    apply_mmengine_patches()
    return torch.load(path, map_location='cpu', weights_only=False)


def _generator_lora_b(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state['state_dict'].items()
            if k.startswith('backbone.generator.') and 'lora_B.default' in k}


@pytest.mark.slow
def test_both_stages_train_from_the_shipped_teacher_and_the_table_is_scored(
        tmp_path: Path) -> None:
    work = tmp_path / 'run'
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, 'tools/train.py', CONFIG, '--work-dir', str(work), '--cfg-options',
         *SHORT], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert 'loss_dmd' in log and 'loss_policy' in log and 'loss_bp' in log
    # The stage-2 rewards are the detector's (GRPO) and the soft one (GRPO and BP), finite.
    for name in ('reward_geneval', 'reward_soft'):
        values = [float(line.split(f'{name}: ')[1].split()[0]) for line in log.splitlines()
                  if f'{name}: ' in line]
        assert len(values) == 2 and all(0 <= v <= 1 for v in values), (name, values)

    # The teacher came from the shipped folder (the config's path, nothing else).
    dumped = (work / 'rtdmd' / 'shapes_4step.py').read_text()
    assert 'rtdmd/assets/shapes/flux2' in dumped
    # Both stages trained the generator's LoRA (B starts at 0: non-zero means trained); stage 2
    # keeps stage 1's EMA LoRA frozen under its fresh one.
    stage1, stage2 = _load(work / 'ac_dmd' / 'iter_2.pth'), _load(work / 'rtdmd' / 'iter_2.pth')
    for state in (stage1, stage2):
        lora_b = _generator_lora_b(state)
        assert lora_b and any(v.abs().max() > 0 for v in lora_b.values())
    for key, value in stage1['ema_state'].items():
        frozen = stage2['state_dict']['backbone.generator.' + key.replace('.default.', '.stage1.')]
        assert torch.equal(frozen, value), key

    metrics = json.loads((work / 'eval' / 'metrics.json').read_text())
    rows = [k for k in metrics if not k.startswith('_')]
    assert rows == ['teacher_2steps_cfg4', 'teacher_4steps_cfg4', 'ac_dmd', 'rtdmd']
    assert [metrics[r]['nfe'] for r in rows] == [4, 8, 4, 4]  # CFG: two evaluations a step
    for row in rows:
        m = metrics[row]
        assert 0 <= m['strict'] <= 1 and 0 <= m['partial'] <= 1 and 0 <= m['clean'] <= 1
        assert 0 <= m['soft'] <= 1 and math.isfinite(m['fidelity']) and m['fidelity'] >= 0
    assert (work / 'eval' / 'grid.png').is_file() and (work / 'eval' / 'scores.npz').is_file()
    assert '| ac_dmd | 4 |' in (work / 'eval' / 'table.md').read_text()


@pytest.mark.slow
def test_shapes_benchmark_scores_the_shipped_teacher(tmp_path: Path) -> None:
    """tools/test.py --benchmarks shapes on the teacher: the detector's and the soft reward's
    columns, per tag, for the first held-out prompts."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, 'tools/test.py', CONFIG, '--work-dir', str(tmp_path), '--benchmarks',
         'shapes', '--models', 'teacher', '--teacher-steps', '2', '--max-prompts', '4',
         '--seeds', '0', '--name', 'teacher=t2'],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads((tmp_path / 'benchmarks' / 't2' / 'metrics.json').read_text())
    assert metrics['_settings']['shapes']['steps'] == 2
    for key in ('shapes/shapes_geneval', 'shapes/shapes_geneval/strict_accuracy',
                'shapes/shapes_geneval/clean', 'shapes/shapes_soft'):
        summary = metrics[key]
        assert summary['count'] == 4 and 0 <= summary['mean'] <= 1, key
    lines = (tmp_path / 'benchmarks' / 't2' / 'shapes' / 'scores.jsonl').read_text().splitlines()
    scores = [json.loads(line) for line in lines if '_settings' not in json.loads(line)]
    assert len(scores) == 4  # one row per image, after the settings header
