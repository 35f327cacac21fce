"""Flux2KleinBackbone on tiny random-weight FLUX.2-klein snapshots, through the real loader."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch

from rtdmd.models.backbones.flux2 import Flux2KleinBackbone, flux2_lora_targets
from rtdmd.models.backbones.pretrained import MissingWeightsError
from rtdmd.models.lora import merge_lora
from rtdmd.models.samplers.cps import CPSSampler
from rtdmd.registry import MODELS
from rtdmd.testing.flux2 import (
    TINY_MAX_SEQUENCE_LENGTH,
    TINY_RESOLUTION,
    TINY_TEXT_ENCODER_OUT_LAYERS,
    build_flux2_klein_dirs,
    tiny_backbone_cfg,
)
from rtdmd.testing.lora import latent_noise, randomize_lora

PROMPTS = ['a photo of a cat', 'the cat at the table']
STEPS = [1000, 750, 500, 250]
# Float32 everywhere; rtdmd and the pipeline differ only in the order of a few operations (the
# pipeline feeds the transformer (1000 sigma) / 1000, steps with the scheduler's Euler update),
# so agreement is at float32 round-off, amplified a little by 4 steps through random weights.
ATOL = RTOL = 1e-4


@pytest.fixture(scope='module')
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp('flux2_weights')
    build_flux2_klein_dirs(str(path))
    return path


def _build(root: Path, **overrides) -> Flux2KleinBackbone:
    backbone = MODELS.build(tiny_backbone_cfg(str(root), **overrides))
    backbone.train()
    return backbone


@pytest.fixture(scope='module')
def backbone(root: Path) -> Flux2KleinBackbone:
    return _build(root)


def _pipeline(path: Path):
    from diffusers import Flux2KleinPipeline

    pipe = Flux2KleinPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_lora_targets_are_the_release_set(backbone: Flux2KleinBackbone) -> None:
    release = {'to_q', 'to_k', 'to_v', 'to_out.0', 'add_q_proj', 'add_k_proj', 'add_v_proj',
               'to_add_out', 'to_qkv_mlp_proj'}
    for blocks in (20, 24):  # 4B, 9B
        assert set(flux2_lora_targets(blocks)) == release | {
            f'single_transformer_blocks.{i}.attn.to_out' for i in range(blocks)}
    for role in ('generator', 'fake_score'):
        wrapped = {n.rsplit('.lora_A', 1)[0] for n, _ in getattr(backbone, role).named_parameters()
                   if '.lora_A.' in n}
        assert wrapped == {f'transformer_blocks.0.attn.{m}' for m in
                           ('to_q', 'to_k', 'to_v', 'to_out.0', 'add_q_proj', 'add_k_proj',
                            'add_v_proj', 'to_add_out')} | {
            f'single_transformer_blocks.{i}.attn.{m}' for i in range(2)
            for m in ('to_qkv_mlp_proj', 'to_out')}


def test_shapes_dtypes_and_decode_range(root: Path) -> None:
    backbone = _build(root, dtype='bfloat16', gradient_checkpointing=True)
    side = TINY_RESOLUTION // 16
    assert backbone.latent_shape() == (128, side, side)
    cond = backbone.encode_prompts([*PROMPTS, PROMPTS[0]])
    assert cond['prompt_embeds'].shape == (3, TINY_MAX_SEQUENCE_LENGTH, 3 * 16)  # 3 layers x 16
    assert cond['text_ids'].shape == (3, TINY_MAX_SEQUENCE_LENGTH, 4)
    assert torch.equal(cond['prompt_embeds'][0], cond['prompt_embeds'][2])
    assert backbone.generator.dtype == torch.bfloat16 and backbone.text_encoder.dtype == \
        torch.bfloat16
    assert backbone.generator.is_gradient_checkpointing
    x = latent_noise(backbone, batch=3)
    for role, scale in (('teacher', 4.0), ('generator', 1.0), ('fake_score', 1.0)):
        v = backbone.predict_velocity(role, x, 0.6, cond, scale)
        assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    images = backbone.decode(x)
    assert images.shape == (3, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    latents = backbone.encode_images(images)
    assert latents.shape == x.shape and latents.dtype == torch.float32
    assert backbone.null_condition(cond)['prompt_embeds'].shape == cond['prompt_embeds'].shape


def test_encoding_and_schedule_are_the_pipelines(backbone: Flux2KleinBackbone, root: Path
                                                 ) -> None:
    pipe = _pipeline(root / 'FLUX.2-klein-base-4B')
    embeds, text_ids = pipe.encode_prompt(PROMPTS, max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
                                          text_encoder_out_layers=TINY_TEXT_ENCODER_OUT_LAYERS)
    cond = backbone.encode_prompts(PROMPTS)
    torch.testing.assert_close(cond['prompt_embeds'], embeds, atol=0, rtol=0)
    assert torch.equal(cond['text_ids'], text_ids)
    # The pipeline's own 4-step schedule (linspace(1, 1/4, 4) = STEPS / 1000, empirical mu) up
    # to the rounding of the mu constants in ALGORITHM.md (8.738e-5 vs 8.73809524e-5, ...).
    sigmas = backbone.sigma_schedule(STEPS, backbone.latent_shape())
    pipe.scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25],
                                 mu=_pipeline_mu(backbone.latent_shape(), 4))
    torch.testing.assert_close(sigmas, pipe.scheduler.sigmas, atol=2e-5, rtol=0)
    at_512 = backbone.sigma_schedule(STEPS, (128, 32, 32))  # L = 1024 tokens at 512 px
    torch.testing.assert_close(at_512, torch.tensor([1.0, 0.958, 0.884, 0.7175, 0.0]),
                               atol=1e-3, rtol=0)


def _pipeline_mu(latent_shape: tuple[int, ...], steps: int) -> float:
    from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

    return compute_empirical_mu(latent_shape[1] * latent_shape[2], steps)


@pytest.mark.parametrize('role, snapshot, guidance', [
    ('generator', 'FLUX.2-klein-4B', 1.0),  # the distilled generator init, no CFG
    ('teacher', 'FLUX.2-klein-base-4B', 4.0),  # the base with real CFG on the empty prompt
])
def test_cps_eta0_reproduces_the_pipeline(backbone: Flux2KleinBackbone, root: Path, role: str,
                                          snapshot: str, guidance: float) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = _pipeline(root / snapshot)
    sampler = CPSSampler(step_list=STEPS, eta=0.0, guidance_scale=guidance)
    sigmas = sampler.sigmas(backbone)
    # The pipeline gets rtdmd's (already shifted) sigmas and a scheduler that does not shift
    # them again (pitfall 2), so both run the same 4-step Euler chain.
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        pipe.scheduler.config, use_dynamic_shifting=False, shift=1.0)
    noise = latent_noise(backbone, seed=3)
    with torch.no_grad():
        ro = sampler.rollout(backbone, backbone.encode_prompts(PROMPTS), noise, role=role)
        images = backbone.decode(ro.sample)
    kwargs = dict(prompt=PROMPTS, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
                  num_inference_steps=len(STEPS), sigmas=sigmas[:-1].tolist(),
                  guidance_scale=guidance, latents=noise.clone(),
                  max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
                  text_encoder_out_layers=TINY_TEXT_ENCODER_OUT_LAYERS)
    steps: list[torch.Tensor] = []  # the pipeline's packed latents after each step

    def keep(pipe, i, t, tensors):
        steps.append(tensors['latents'].clone())
        return {}

    ref_images = pipe(**kwargs, output_type='pt', callback_on_step_end=keep).images
    for j, ref in enumerate(steps):
        ours = pipe._pack_latents(ro.latents[j + 1] if j + 1 < len(STEPS) else ro.sample)
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(images, ref_images, atol=ATOL, rtol=RTOL)


def test_generator_starts_from_generator_init_and_teacher_from_base(
        backbone: Flux2KleinBackbone, root: Path) -> None:
    from diffusers import Flux2Transformer2DModel

    cond = backbone.encode_prompts(PROMPTS)
    x, sigma = latent_noise(backbone), torch.full((2,), 0.7)
    with torch.no_grad():
        for role, snapshot in (('generator', 'FLUX.2-klein-4B'),
                               ('teacher', 'FLUX.2-klein-base-4B')):
            net = Flux2Transformer2DModel.from_pretrained(str(root / snapshot),
                                                          subfolder='transformer').eval()
            expected = backbone._velocity(net, role, x, sigma, cond)
            torch.testing.assert_close(backbone.predict_velocity(role, x, sigma, cond), expected,
                                       atol=1e-6, rtol=1e-6)


def test_only_lora_trains_and_the_teacher_never_changes(root: Path) -> None:
    backbone = _build(root)
    for role in ('generator', 'fake_score'):
        params = dict(getattr(backbone, role).named_parameters())
        trainable = {n for n, p in params.items() if p.requires_grad}
        assert trainable and trainable == {n for n in params if 'lora_' in n}
    assert not any(p.requires_grad for m in backbone.frozen_modules() for p in m.parameters())
    state = backbone.state_dict()
    assert state and all(k.startswith(('generator.', 'fake_score.')) and 'lora_' in k
                         for k in state)
    cond = backbone.encode_prompts(PROMPTS)
    x, sigma = latent_noise(backbone), torch.full((2,), 0.6)
    with torch.no_grad():  # zero LoRA B: the fake score is exactly the teacher
        teacher = backbone.predict_velocity('teacher', x, sigma, cond)
        torch.testing.assert_close(backbone.predict_velocity('fake_score', x, sigma, cond),
                                   teacher, atol=0, rtol=0)
    for seed, role in enumerate(('generator', 'fake_score')):
        randomize_lora(getattr(backbone, role), seed)
    params = [p for role in ('generator', 'fake_score')
              for p in backbone.trainable_parameters(role)]
    optim = torch.optim.AdamW(params, lr=1e-2)
    before = {role: backbone.predict_velocity(role, x, sigma, cond).detach()
              for role in ('generator', 'fake_score')}
    for _ in range(3):
        loss = sum(backbone.predict_velocity(r, x, sigma, cond).pow(2).mean()
                   for r in ('generator', 'fake_score'))
        optim.zero_grad()
        loss.backward()
        optim.step()
    with torch.no_grad():
        for role in ('generator', 'fake_score'):
            assert not torch.allclose(backbone.predict_velocity(role, x, sigma, cond),
                                      before[role])
        torch.testing.assert_close(backbone.predict_velocity('teacher', x, sigma, cond),
                                   teacher, atol=0, rtol=0)


def test_stacking_stage1_lora_is_merging_it(root: Path) -> None:
    backbone = _build(root)
    randomize_lora(backbone.generator, seed=7)
    stage1 = {k: v.clone() for k, v in backbone.generator.state_dict().items() if 'lora_' in k}
    merged = merge_lora(copy.deepcopy(backbone.generator))
    cond = backbone.encode_prompts(PROMPTS)
    x, sigma = latent_noise(backbone), torch.full((2,), 0.8)
    with torch.no_grad():
        with_stage1 = backbone.predict_velocity('generator', x, sigma, cond)
        backbone.prepare_warm_start()
        backbone.warm_start('generator', stage1)
        stacked = backbone.predict_velocity('generator', x, sigma, cond)
        reference = backbone._velocity(merged, 'generator', x, sigma, cond).float()
    torch.testing.assert_close(stacked, with_stage1, atol=1e-6, rtol=1e-6)  # fresh B = 0
    torch.testing.assert_close(stacked, reference, atol=1e-5, rtol=1e-5)
    trainable = [n for n, p in backbone.generator.named_parameters() if p.requires_grad]
    assert trainable and all('.default.' in n for n in trainable)


def test_missing_or_incomplete_snapshots_name_path_files_and_repo(root: Path,
                                                                  tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        _build(root, pretrained=str(tmp_path / 'nowhere'))
    message = str(err.value)
    assert str(tmp_path / 'nowhere') in message and 'transformer' in message
    assert 'black-forest-labs/FLUX.2-klein-base-4B' in message and 'RTDMD_WEIGHTS' in message
    base = tmp_path / 'FLUX.2-klein-base-4B'
    shutil.copytree(root / 'FLUX.2-klein-base-4B', base)
    for weights in (base / 'transformer').glob('*.safetensors'):
        weights.unlink()
    with pytest.raises(MissingWeightsError, match='transformer/\\*.safetensors'):
        _build(root, pretrained=str(base))
    with pytest.raises(MissingWeightsError, match='black-forest-labs/FLUX.2-klein-9B') as err:
        _build(root, generator_init=str(tmp_path / 'gen'),
               generator_repo_id='black-forest-labs/FLUX.2-klein-9B')
    assert 'generator' in str(err.value)
