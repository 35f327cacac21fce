"""FluxBackbone on a tiny random-weight FLUX.1 snapshot, loaded through the production loader."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch

from rtdmd.models.backbones.flux import FluxBackbone
from rtdmd.models.backbones.pretrained import MissingWeightsError
from rtdmd.models.lora import merge_lora
from rtdmd.models.samplers.cps import CPSSampler
from rtdmd.registry import MODELS
from rtdmd.testing.flux import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, build_flux_dir
from rtdmd.testing.lora import latent_noise, randomize_lora

PROMPTS = ['a photo of a cat', 'two red apples on the table']
STEPS = [1000, 750, 500, 250]


@pytest.fixture(scope='module')
def flux_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('flux_weights')
    build_flux_dir(str(root))
    return root


def _build(root: Path, **overrides) -> FluxBackbone:
    cfg = dict(type='FluxBackbone', pretrained='FLUX.1-dev', weights_root=str(root),
               dtype='float32', resolution=TINY_RESOLUTION,
               max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, lora=dict(rank=4, alpha=8))
    cfg.update(overrides)
    backbone = MODELS.build(cfg)
    backbone.train()
    return backbone


@pytest.fixture(scope='module')
def backbone(flux_root: Path) -> FluxBackbone:
    return _build(flux_root)


def test_shapes_dtypes_and_decode_range(flux_root: Path) -> None:
    backbone = _build(flux_root, dtype='bfloat16')
    assert backbone.latent_shape() == (16, TINY_RESOLUTION // 8, TINY_RESOLUTION // 8)
    cond = backbone.encode_prompts(PROMPTS)
    assert cond['prompt_embeds'].shape == (2, TINY_MAX_SEQUENCE_LENGTH, 32)  # T5 sequence
    assert cond['pooled_prompt_embeds'].shape == (2, 24)  # CLIP pooler_output
    assert backbone.generator.dtype == torch.bfloat16
    # fp32 LoRA on the bf16 base: small AdamW steps must not round away
    assert {p.dtype for p in backbone.trainable_parameters('generator')} == {torch.float32}
    assert backbone.generator.is_gradient_checkpointing
    x = latent_noise(backbone)
    for role, scale in (('teacher', 3.5), ('generator', 1.0), ('fake_score', 1.0)):
        v = backbone.predict_velocity(role, x, 0.6, cond, scale)
        assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    images = backbone.decode(x)
    assert images.shape == (2, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert backbone.encode_images(images).shape == x.shape
    null = backbone.null_condition(cond)
    assert null['prompt_embeds'].shape == cond['prompt_embeds'].shape


def test_sigma_schedule_uses_the_dynamic_shift_of_the_token_count(backbone: FluxBackbone
                                                                  ) -> None:
    # ALGORITHM.md 1.2: 512 px = 64x64 latents = 1024 packed tokens, mu 0.63; 1024 px mu 1.15.
    at_512 = backbone.sigma_schedule(STEPS, (16, 64, 64))
    at_1024 = backbone.sigma_schedule(STEPS, (16, 128, 128))
    torch.testing.assert_close(at_512, torch.tensor([1.0, 0.849, 0.653, 0.385, 0.0]),
                               atol=1e-3, rtol=0)
    torch.testing.assert_close(at_1024, torch.tensor([1.0, 0.905, 0.760, 0.513, 0.0]),
                               atol=1e-3, rtol=0)


def test_timestep_is_sigma_and_guidance_goes_to_the_embedding(backbone: FluxBackbone) -> None:
    calls = []
    net = backbone.fake_score  # the teacher is a view of the fake score's base

    def record(module, args, kwargs):
        calls.append((kwargs['timestep'].clone(), kwargs['guidance'].clone()))

    handle = net.register_forward_pre_hook(record, with_kwargs=True)
    try:
        cond = backbone.encode_prompts(PROMPTS)
        x = latent_noise(backbone)
        backbone.predict_velocity('teacher', x, torch.tensor([0.3, 0.8]), cond, 3.5)
        backbone.predict_velocity('fake_score', x, 0.5, cond)
    finally:
        handle.remove()
    assert len(calls) == 2  # distilled guidance: one pass, no unconditional forward
    torch.testing.assert_close(calls[0][0], torch.tensor([0.3, 0.8]))  # sigma, not 1000 sigma
    torch.testing.assert_close(calls[0][1], torch.tensor([3.5, 3.5]))
    torch.testing.assert_close(calls[1][1], torch.tensor([1.0, 1.0]))  # 1.0, never None


def test_only_lora_is_trainable_and_saved(backbone: FluxBackbone) -> None:
    for role in ('generator', 'fake_score'):
        trainable = [n for n, p in getattr(backbone, role).named_parameters() if p.requires_grad]
        assert trainable and all('lora_' in n for n in trainable)
        # both stream kinds carry LoRA: double blocks (8 projections) and single blocks (q/k/v)
        assert any('single_transformer_blocks.0.attn.to_q.lora_A' in n for n in trainable)
        assert any('transformer_blocks.0.attn.to_add_out.lora_B' in n for n in trainable)
    for module in (backbone.vae, backbone.text_encoder, backbone.text_encoder_2):
        assert not any(p.requires_grad for p in module.parameters())
    assert not any(p.requires_grad for p in backbone.teacher.parameters())
    state = backbone.state_dict()
    assert state and all('lora_' in k and k.startswith(('generator.', 'fake_score.'))
                         for k in state)


def test_teacher_equals_zero_lora_fake_score_and_never_changes(flux_root: Path) -> None:
    backbone = _build(flux_root)
    cond = backbone.encode_prompts(PROMPTS)
    x, sigma = latent_noise(backbone), torch.tensor([0.9, 0.4])
    teacher_before = backbone.predict_velocity('teacher', x, sigma, cond)
    torch.testing.assert_close(backbone.predict_velocity('fake_score', x, sigma, cond),
                               teacher_before, rtol=0, atol=0)
    params = []
    for seed, role in enumerate(('generator', 'fake_score')):
        randomize_lora(getattr(backbone, role), seed)
        params += list(backbone.trainable_parameters(role))
    optim = torch.optim.Adam(params, lr=1e-2)
    for _ in range(3):
        loss = sum(backbone.predict_velocity(role, x, sigma, cond).pow(2).mean()
                   for role in ('generator', 'fake_score'))
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert not torch.allclose(backbone.predict_velocity('fake_score', x, sigma, cond),
                              teacher_before)
    torch.testing.assert_close(backbone.predict_velocity('teacher', x, sigma, cond),
                               teacher_before, rtol=0, atol=0)


@pytest.mark.parametrize('role,guidance', [('generator', 1.0), ('teacher', 3.5)])
def test_cps_eta0_reproduces_the_diffusers_pipeline(flux_root: Path, backbone: FluxBackbone,
                                                    role: str, guidance: float) -> None:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(flux_root / 'FLUX.1-dev', torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    noise = latent_noise(backbone, seed=3)
    b, c, h, w = noise.shape
    # The pipeline shifts the raw u = step/1000 with mu of its 16 tokens, exactly like
    # sigma_schedule (checked), so both integrate the same ODE on the same grid.
    packed = pipe(PROMPTS, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
                  sigmas=[s / 1000 for s in STEPS], guidance_scale=guidance,
                  latents=FluxPipeline._pack_latents(noise, b, c, h, w),
                  max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, output_type='latent').images
    expected = FluxPipeline._unpack_latents(packed, TINY_RESOLUTION, TINY_RESOLUTION, 8)
    sigmas = backbone.sigma_schedule(STEPS, backbone.latent_shape())
    torch.testing.assert_close(pipe.scheduler.sigmas, sigmas, atol=1e-6, rtol=0)
    sampler = CPSSampler(step_list=STEPS, eta=0.0, guidance_scale=guidance)
    with torch.no_grad():
        ro = sampler.rollout(backbone, backbone.encode_prompts(PROMPTS), noise, role=role)
    # fp32 on both sides; the only differences are the pipeline's timestep round trip
    # (1000 sigma) / 1000 and the order of the float32 Euler update: measured 5e-7 (one ulp at
    # |x| ~ 4), while guidance 3.5 vs 1 moves the result by 0.17. 1e-5 leaves a 20x margin.
    torch.testing.assert_close(ro.latents[-1], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ro.sample, expected, atol=1e-5, rtol=1e-5)


def test_missing_weights_name_the_path_and_how_to_get_them(flux_root: Path,
                                                           tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        _build(tmp_path, pretrained='FLUX.1-dev')
    message = str(err.value)
    assert str(tmp_path / 'FLUX.1-dev') in message
    assert 'black-forest-labs/FLUX.1-dev' in message and 'hf download' in message
    assert 'RTDMD_WEIGHTS' in message
    broken = tmp_path / 'broken'
    shutil.copytree(flux_root / 'FLUX.1-dev', broken / 'FLUX.1-dev')
    for name in os.listdir(broken / 'FLUX.1-dev' / 'transformer'):
        if name.endswith('.safetensors'):
            os.remove(broken / 'FLUX.1-dev' / 'transformer' / name)
    with pytest.raises(MissingWeightsError, match=r'transformer/\*\.safetensors'):
        _build(broken)


def test_stage1_lora_under_fresh_lora_equals_merging_it(flux_root: Path) -> None:
    stage1 = _build(flux_root)
    randomize_lora(stage1.generator, seed=5)
    cond = stage1.encode_prompts(PROMPTS)
    x, sigma = latent_noise(stage1, seed=1), torch.tensor([0.7, 0.2])
    expected = stage1.predict_velocity('generator', x, sigma, cond)
    assert not torch.allclose(expected, stage1.predict_velocity('teacher', x, sigma, cond))
    merged = merge_lora(copy.deepcopy(stage1.generator))
    prefix = 'generator.'
    state = {k[len(prefix):]: v for k, v in stage1.state_dict().items() if k.startswith(prefix)}

    stage2 = _build(flux_root)
    stage2.prepare_warm_start()
    stage2.warm_start('generator', state)
    with torch.no_grad():
        stacked = stage2.predict_velocity('generator', x, sigma, cond)
        via_merge = stage2._forward(merged, x, sigma, cond, torch.ones(2)).float()
    torch.testing.assert_close(stacked, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stacked, via_merge, atol=1e-5, rtol=1e-5)
    trainable = [n for n, p in stage2.generator.named_parameters() if p.requires_grad]
    assert trainable and all('.default.' in n for n in trainable)  # stage 1 stays frozen
