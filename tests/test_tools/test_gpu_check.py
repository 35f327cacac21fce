"""tools/gpu_check.py: the tiny CPU run prints every phase; the real-size configs are right."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

from tests.conftest import REPO

PHASES = ('write_snapshot', 'load_stage1', 'stage1_iteration', 'load_stage2',
          'stage2_policy_step')


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location('rtdmd_tools_gpu_check',
                                                  REPO / 'tools' / 'gpu_check.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_prints_both_models_and_phases(tmp_path: Path) -> None:
    out = tmp_path / 'check.json'
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, 'tools/gpu_check.py', '--scale', 'tiny', '--device', 'cpu', '--model',
         'all', '--resolution', '64', '--tmpdir', str(tmp_path), '--out', str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'RANDOM weights' in result.stdout and 'Tiny transformers' in result.stdout
    table = {}
    for line in result.stdout.splitlines():
        match = re.match(r'^(flux2_klein_4b|sd35m)\s+(\w+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)$', line)
        if match:
            table[match.group(1), match.group(2)] = match.groups()[2:]
    for model in ('flux2_klein_4b', 'sd35m'):
        for phase in PHASES:
            seconds, _, peak, losses = table[model, phase]
            assert math.isfinite(float(seconds)) and float(seconds) > 0, (model, phase)
            assert float(peak) > 0
        for phase in ('stage1_iteration', 'stage2_policy_step'):
            assert table[model, phase][3] == 'finite', (model, phase)
    rows = json.loads(out.read_text())['rows']
    assert [(r['model'], r['phase']) for r in rows if '/' not in r['phase']] == [
        (m, p) for m in ('flux2_klein_4b', 'sd35m') for p in PHASES]
    # the per-phase rows of the extra step: every phase of an epoch, with FLOPs where compute
    per_phase = {(r['model'], r['phase']): r for r in rows if '/' in r['phase']}
    for model in ('flux2_klein_4b', 'sd35m'):
        for phase in ('stage1/fake_score_update', 'stage1/generator_update', 'stage2/rollout',
                      'stage2/decode', 'stage2/rewards', 'stage2/fake_update',
                      'stage2/generator_step3', 'stage2/generator_optimizer_step'):
            row = per_phase[model, phase]
            assert row['seconds'] > 0 and row['peak_gib'] > 0, (model, phase)
        assert per_phase[model, 'stage2/rollout']['tflop'] > 0
        assert 0 < per_phase[model, 'stage2/generator_step3']['mfu']
    stage1 = [r['losses'] for r in rows if r['phase'] == 'stage1_iteration']
    assert all('loss_dmd' in s and 'loss_fake_score' in s for s in stage1)  # both updates ran
    stage2 = [r['losses'] for r in rows if r['phase'] == 'stage2_policy_step']
    assert all('loss_policy' in s and 'reward_main' in s for s in stage2)
    assert not list(tmp_path.glob('tmp*'))  # the random snapshots are removed


def test_real_size_configs_match_the_released_models() -> None:
    """On the meta device (no memory): parameter counts and text widths of the full scale."""
    from diffusers import Flux2Transformer2DModel, SD3Transformer2DModel

    tool = load_tool()
    with torch.device('meta'):
        flux2 = Flux2Transformer2DModel(**tool.FLUX2['full'])
        sd35 = SD3Transformer2DModel(**tool.SD35M['full'])
    assert round(sum(p.numel() for p in flux2.parameters()) / 1e9, 2) == 3.88
    assert round(sum(p.numel() for p in sd35.parameters()) / 1e9, 2) == 2.24
    assert (flux2.config.num_layers, flux2.config.num_single_layers) == (5, 20)
    assert flux2.inner_dim == 24 * 128 and not flux2.config.guidance_embeds
    for scale in ('full', 'tiny'):  # the stand-ins feed the transformer its context widths
        assert tool.FLUX2[scale]['joint_attention_dim'] == 3 * tool.TEXT['flux2_klein_4b'][scale]
        clip_l, clip_g, t5 = tool.TEXT['sd35m'][scale]
        assert tool.SD35M[scale]['pooled_projection_dim'] == clip_l + clip_g
        assert tool.SD35M[scale]['joint_attention_dim'] == t5
    assert tool.SD35M['full']['dual_attention_layers'] == tuple(range(13))
