"""tools/train.py on the shapes teacher configs: both stages at toy size, then the exported
teacher loads through its backbone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rtdmd.utils.mmengine_compat import apply_mmengine_patches
from tests.conftest import REPO

TINY = {
    'sd3': ['family.num_layers=1', 'family.attention_head_dim=16', 'family.clip_dim=16',
            'family.t5_dim=32', 'family.clip_layers=1', 'family.t5_layers=1'],
    'flux2': ['family.num_layers=1', 'family.num_single_layers=1', 'family.attention_head_dim=16',
              'family.qwen_dim=16', 'family.qwen_layers=2', 'family.text_layers=[1,2]'],
}
COMMON = ['family.vae_channels=[8,16]', 'family.num_attention_heads=2',
          '*:train_cfg.max_iters=2', '*:train_dataloader.batch_size=2',
          '*:default_hooks.checkpoint.interval=1', '*:default_hooks.logger.interval=1',
          '*:default_hooks.visualization.interval=1',  # not a generator: the hook stands aside
          'flow:model.latent_stats_images=8']


def _load(path: Path) -> dict:
    apply_mmengine_patches()
    return torch.load(path, map_location='cpu', weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize('family', ['sd3', 'flux2'])
def test_teacher_config_trains_both_stages_and_exports_a_loadable_teacher(
        tmp_path: Path, family: str) -> None:
    work = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, 'tools/train.py', f'configs/teachers/shapes_{family}.py', '--work-dir',
         str(work), '--cfg-options', *TINY[family], *COMMON],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert 'loss_rec' in log and 'loss_fm' in log
    assert log.count('is not a generator (no generate() and backbone): no sample grids') == 2
    for stage in ('vae', 'flow'):
        assert list((work / stage).glob('*/vis_data/events.out.tfevents.*')), stage  # TensorBoard
        assert int(_load(work / stage / 'iter_2.pth')['state_dict']['iteration']) == 2

    teacher = work / 'flow' / 'teacher'
    record = json.loads((teacher / 'rtdmd_backbone.json').read_text())
    assert record['resolution'] == 32
    weights = {p.parent.name for p in teacher.rglob('*.safetensors')}
    expected = {'sd3': {'vae', 'transformer', 'text_encoder', 'text_encoder_2', 'text_encoder_3'},
                'flux2': {'vae', 'transformer', 'text_encoder'}}[family]
    assert weights == expected and not list(teacher.rglob('*.bin'))

    from rtdmd.evaluation.shapes_report import teacher_backbone_cfg, teacher_samples
    from rtdmd.registry import MODELS
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    backbone = MODELS.build(teacher_backbone_cfg(str(teacher)))
    # The teacher's VAE is the VAE stage's (frozen in the flow stage; stored in fp16).
    vae_state = {k[4:]: v for k, v in _load(work / 'vae' / 'iter_2.pth')['state_dict'].items()
                 if k.startswith('vae.') and 'bn.' not in k}
    loaded = backbone.vae.state_dict()
    assert all(torch.allclose(loaded[k], v, rtol=2e-3, atol=2e-4) for k, v in vae_state.items())
    images = teacher_samples(backbone, ['a photo of a red circle', ''], [0, 1], steps=2,
                             guidance_scale=3.0)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
