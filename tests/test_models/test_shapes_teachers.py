"""The shapes teachers: the training path equals the backbone path, and the shipped teachers load
through SD3Backbone / Flux2KleinBackbone as real weights do, round-trip the world through their
VAE and draw what the prompt asks."""

from __future__ import annotations

import os.path as osp
from pathlib import Path

import pytest
import torch

from rtdmd.datasets.shapes import ShapesImageDataset
from rtdmd.evaluation.shapes_detector import clean_fraction, detect, score_metadata
from rtdmd.evaluation.shapes_report import teacher_backbone_cfg
from rtdmd.registry import MODELS
from rtdmd.utils.setup_env import register_all_modules

ASSETS = Path(__file__).resolve().parents[2] / 'rtdmd' / 'assets' / 'shapes'
TINY = {
    'sd3': dict(type='SD3ShapesFamily', vae_channels=(8, 16), num_layers=1,
                attention_head_dim=16, num_attention_heads=2, clip_dim=16, clip_layers=1,
                t5_dim=32, t5_layers=1),
    'flux2': dict(type='Flux2ShapesFamily', vae_channels=(8, 16), num_layers=1,
                  num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                  qwen_dim=16, qwen_layers=2, text_layers=(1, 2)),
}


def _world(n: int, seed: int = 2) -> tuple[torch.Tensor, list[dict]]:
    ds = ShapesImageDataset(n, split='all', seed=seed)
    items = [ds[i] for i in range(n)]
    return torch.stack([it['image'] for it in items]), [it['metadata'] for it in items]


@pytest.mark.parametrize('family', ['sd3', 'flux2'])
def test_training_path_equals_the_backbone_path(tmp_path: Path, family: str) -> None:
    """Text encoding, latents and velocity of the trainer match the backbone that loads the
    saved folder (float32 storage, so the comparison is exact up to float error)."""
    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(dict(type='ShapesFlowTeacher', family=TINY[family],
                              latent_stats_images=16)).eval()
    with torch.no_grad():  # non-zero output layers (adaLN-zero starts at v = 0)
        for p in model.transformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_teacher(str(tmp_path), use_ema=False, dtype=torch.float32)
    backbone = MODELS.build(teacher_backbone_cfg(str(tmp_path))).eval()
    prompts = ['a photo of a red circle left of a blue square', '', 'a photo of two squares']
    images, _ = _world(3)
    with torch.no_grad():
        ours = model.family.encode_prompts(model.text, prompts)
        theirs = backbone.encode_prompts(prompts)
        for key in theirs:
            torch.testing.assert_close(ours[key].float(), theirs[key].float())
        latents = model.family.to_latents(model.vae, images)
        torch.testing.assert_close(latents, backbone.encode_images(images), rtol=1e-4,
                                   atol=1e-4)
        sigma = torch.tensor([0.9, 0.5, 0.1])
        x = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
        v_ours = model.family.velocity(model.transformer, x, sigma, ours)
        v_theirs = backbone.predict_velocity('teacher', x, sigma, theirs)
        assert v_theirs.abs().mean() > 1e-3
        torch.testing.assert_close(v_ours.float(), v_theirs, rtol=1e-4, atol=1e-5)


#: The families whose trained teacher ships in rtdmd/assets/shapes (configs/teachers/shapes_*.py).
SHIPPED = {'flux2': 'Flux2KleinBackbone', 'sd3': 'SD3Backbone'}


def test_every_shipped_teacher_folder_is_tested() -> None:
    folders = {p.parent.name for p in ASSETS.glob('*/model_index.json')}
    assert folders == set(SHIPPED)


def _shipped(family: str) -> torch.nn.Module:
    folder = ASSETS / family
    if not (folder / 'model_index.json').is_file():
        pytest.fail(f'the shipped {family} teacher is missing from {folder}: train it with '
                    f'python tools/train.py configs/teachers/shapes_{family}.py')
    register_all_modules()
    return MODELS.build(teacher_backbone_cfg(str(folder))).eval()


@pytest.mark.parametrize(('family', 'backbone_type'), sorted(SHIPPED.items()))
def test_shipped_teacher_is_small_and_loads_as_real_weights(family: str,
                                                            backbone_type: str) -> None:
    folder = ASSETS / family
    size = sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())
    assert size <= 10 * 2 ** 20, f'{family}: {size / 2 ** 20:.1f} MiB'
    assert not list(folder.rglob('*.bin')) and list(folder.rglob('*.safetensors'))
    backbone = _shipped(family)
    assert type(backbone).__name__ == backbone_type
    assert osp.samefile(teacher_backbone_cfg(str(folder))['pretrained'], folder)


@pytest.mark.parametrize('family', sorted(SHIPPED))
def test_shipped_vae_round_trips_the_world(family: str) -> None:
    backbone = _shipped(family)
    images, metadata = _world(24)
    with torch.no_grad():
        decoded = backbone.decode(backbone.encode_images(images))
    assert (decoded - images).abs().mean() < 0.02
    found = detect(decoded)
    assert all(score_metadata(f, m)[2] for f, m in zip(found, metadata, strict=True))
    assert clean_fraction(decoded) >= 0.95


#: Measured on the five held-out colour bindings x 4 seeds (28 Euler steps, CFG 4): images
#: holding an object of the prompt's colour (flux2 18, sd3 18 of 20) and images read exactly
#: (flux2 4, sd3 11). The bounds leave room for a few flips across CPUs.
DRAWS = {'flux2': dict(colour=14, exact=2), 'sd3': dict(colour=14, exact=8)}


@pytest.mark.parametrize('family', sorted(SHIPPED))
def test_shipped_teacher_draws_held_out_bindings(family: str) -> None:
    """Through its backbone's teacher role, the shipped teacher follows prompts it never saw:
    the five ``colors`` prompts of the held-out split name bindings that no training prompt of
    that tag holds. Sampled unconditionally (the empty prompt, same seeds), the same teachers put
    the prompt's colour in 4 of the 20 images and draw the binding in 0 (flux2) and 1 (sd3)."""
    from rtdmd.datasets.shapes import ShapesPromptDataset
    from rtdmd.evaluation.shapes_report import teacher_samples

    items = [it for it in ShapesPromptDataset('heldout').items
             if it['metadata']['tag'] == 'colors'] * 4
    metadata = [it['metadata'] for it in items]
    images = teacher_samples(_shipped(family), [it['prompt'] for it in items],
                             list(range(len(items))), steps=28, guidance_scale=4.0)
    found = detect(images)
    colour = sum(any(o.color == m['include'][0]['color'] for o in f)
                 for f, m in zip(found, metadata, strict=True))
    exact = sum(score_metadata(f, m)[2] for f, m in zip(found, metadata, strict=True))
    assert colour >= DRAWS[family]['colour'] and exact >= DRAWS[family]['exact'], (colour, exact)
