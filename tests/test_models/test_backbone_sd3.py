"""SD3Backbone on tiny random-weight SD3 / SD3.5 snapshots, loaded through the production loader."""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch

from rtdmd.models.backbones.pretrained import MissingWeightsError
from rtdmd.models.backbones.sd3 import SD3Backbone
from rtdmd.models.lora import merge_lora
from rtdmd.models.samplers.cps import CPSSampler
from rtdmd.registry import MODELS
from rtdmd.testing.lora import latent_noise, randomize_lora
from rtdmd.testing.sd3 import TINY_RESOLUTION, build_sd3_dir

PROMPTS = ['a photo of a cat', 'two red apples on the table']
STEPS = [1000, 750, 500, 250]
FOLDERS = {'sd3': 'stable-diffusion-3-medium-diffusers', 'sd35': 'stable-diffusion-3.5-medium'}
REPOS = {'sd3': 'stabilityai/stable-diffusion-3-medium-diffusers',
         'sd35': 'stabilityai/stable-diffusion-3.5-medium'}


@pytest.fixture(scope='module')
def sd3_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('sd3_weights')
    for variant in FOLDERS:
        build_sd3_dir(str(root), variant)
    return root


def _build(root: Path, variant: str = 'sd3', **overrides) -> SD3Backbone:
    cfg = dict(type='SD3Backbone', pretrained=FOLDERS[variant], weights_root=str(root),
               repo_id=REPOS[variant], dtype='float32', resolution=TINY_RESOLUTION,
               lora=dict(rank=4, alpha=8))
    cfg.update(overrides)
    backbone = MODELS.build(cfg)
    backbone.train()
    return backbone


@pytest.mark.parametrize('variant', ['sd3', 'sd35'])
def test_shapes_dtypes_and_decode_range(sd3_root: Path, variant: str) -> None:
    backbone = _build(sd3_root, variant, dtype='bfloat16')
    assert backbone.latent_shape() == (16, TINY_RESOLUTION // 8, TINY_RESOLUTION // 8)
    assert backbone.generator.dtype == torch.bfloat16 and backbone.vae.dtype == torch.bfloat16
    assert backbone.generator.is_gradient_checkpointing
    cond = backbone.encode_prompts(PROMPTS)
    # 77 CLIP tokens + 128 T5 tokens, T5 width; pooled = CLIP-L (8) + CLIP-G (16) projections.
    assert cond['prompt_embeds'].shape == (2, 77 + 128, 32)
    assert cond['pooled_prompt_embeds'].shape == (2, 24)
    assert cond['prompt_embeds'].dtype == torch.bfloat16
    x = latent_noise(backbone)
    for role, scale in (('teacher', 7.0), ('generator', 1.0), ('fake_score', 1.0)):
        v = backbone.predict_velocity(role, x, 0.75, cond, scale)
        assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    images = backbone.decode(x)
    assert images.shape == (2, 3, TINY_RESOLUTION, TINY_RESOLUTION)
    assert images.dtype == torch.float32 and 0 <= images.min() and images.max() <= 1
    assert backbone.encode_images(images).shape == x.shape
    null = backbone.null_condition(cond)
    assert null['prompt_embeds'].shape == cond['prompt_embeds'].shape


def test_text_encoding_and_schedule_are_the_pipelines(sd3_root: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    backbone = _build(sd3_root)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(sd3_root / FOLDERS['sd3']))
    with torch.no_grad():  # as in the pipeline's __call__ (SDPA picks other kernels with grad)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, None, None, max_sequence_length=128)
    cond = backbone.encode_prompts(PROMPTS)
    torch.testing.assert_close(cond['prompt_embeds'], embeds, rtol=0, atol=0)
    torch.testing.assert_close(cond['pooled_prompt_embeds'], pooled, rtol=0, atol=0)
    # The pipeline's negative prompt is '' too; ours is encoded once at batch 1 (float32 matmul
    # kernels differ by batch size in the last bit).
    null = backbone.null_condition(cond)
    torch.testing.assert_close(null['prompt_embeds'], negative, rtol=0, atol=1e-6)
    torch.testing.assert_close(null['pooled_prompt_embeds'], negative_pooled, rtol=0, atol=1e-6)
    sigmas = backbone.sigma_schedule(STEPS, backbone.latent_shape())
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))


@pytest.mark.parametrize('variant', ['sd3', 'sd35'])
def test_lora_targets_exactly_the_joint_attention_projections(sd3_root: Path,
                                                              variant: str) -> None:
    backbone = _build(sd3_root, variant)
    names = ('to_q', 'to_k', 'to_v', 'to_out.0', 'add_q_proj', 'add_k_proj', 'add_v_proj',
             'to_add_out')
    all_modules = dict(backbone.generator.named_modules())
    expected = {f'transformer_blocks.{i}.attn.{n}'
                for i in range(len(backbone.generator.transformer_blocks)) for n in names
                if f'transformer_blocks.{i}.attn.{n}' in all_modules}
    for net in (backbone.generator, backbone.fake_score):
        wrapped = {n.rsplit('.lora_A', 1)[0] for n, _ in net.named_parameters()
                   if '.lora_A.' in n}
        assert wrapped == expected
    assert not any('attn2' in n for n in expected)
    if variant == 'sd35':  # the dual-attention block's attn2 exists but stays un-adapted
        assert 'transformer_blocks.0.attn2.to_q' in all_modules
    last = len(backbone.generator.transformer_blocks) - 1  # context_pre_only: no to_add_out
    assert f'transformer_blocks.{last}.attn.to_add_out' not in expected
    assert 'transformer_blocks.0.attn.to_add_out' in expected


def test_only_lora_is_trainable_and_saved(sd3_root: Path) -> None:
    backbone = _build(sd3_root)
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert trainable and all('lora_' in n and '.default.' in n for n in trainable)
    assert {n.split('.')[0] for n in trainable} == {'generator', 'fake_score'}
    for module in backbone.frozen_modules():
        assert not any(p.requires_grad for p in module.parameters()) and not module.training
    keys = list(backbone.state_dict())
    assert keys and all('lora_' in k and k.startswith(('generator.', 'fake_score.'))
                        for k in keys)


def test_teacher_is_frozen_and_equals_the_fake_score_with_zero_lora(sd3_root: Path) -> None:
    backbone = _build(sd3_root)
    cond = backbone.encode_prompts(PROMPTS)
    x, sigma = latent_noise(backbone), torch.tensor([0.9, 0.5])
    teacher0 = backbone.predict_velocity('teacher', x, sigma, cond, 7.0)
    torch.testing.assert_close(backbone.predict_velocity('fake_score', x, sigma, cond),
                               backbone.predict_velocity('teacher', x, sigma, cond),
                               rtol=0, atol=0)
    for role in ('generator', 'fake_score'):
        net = getattr(backbone, role)
        randomize_lora(net, seed=1)
        opt = torch.optim.AdamW(backbone.trainable_parameters(role), lr=1e-2)
        for _ in range(2):  # through gradient checkpointing (train mode, grad enabled)
            loss = backbone.predict_velocity(role, x, sigma, cond).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            assert all(p.grad is not None for p in backbone.trainable_parameters(role))
            opt.step()
    torch.testing.assert_close(backbone.predict_velocity('teacher', x, sigma, cond, 7.0),
                               teacher0, rtol=0, atol=0)
    fake = backbone.predict_velocity('fake_score', x, sigma, cond)
    assert not torch.allclose(fake, backbone.predict_velocity('teacher', x, sigma, cond))


@pytest.mark.parametrize('variant,guidance', [('sd3', 1.0), ('sd35', 1.0), ('sd3', 7.0)])
def test_cps_eta0_reproduces_the_diffusers_pipeline(sd3_root: Path, variant: str,
                                                    guidance: float) -> None:
    """Same noise, same sigmas: the eta = 0 CPS rollout is the pipeline's Euler sampler.

    The pipeline shifts the sigmas it is given with its scheduler's shift 3.0, so it gets the
    un-shifted ``u = step / 1000``; both then run ``[1, .9, .75, .5, 0]``. Everything is fp32;
    the remaining differences are float32 rounding (the scheduler shifts in float32 numpy, we
    in float64) and batching the CFG pair in one forward: 1e-5 is ~100 ulp of O(1) latents.
    """
    from diffusers import StableDiffusion3Pipeline

    backbone = _build(sd3_root, variant)
    backbone.eval()
    pipe = StableDiffusion3Pipeline.from_pretrained(str(sd3_root / FOLDERS[variant]))
    noise = latent_noise(backbone, seed=3)
    role = 'teacher' if guidance != 1.0 else 'generator'
    sampler = CPSSampler(step_list=STEPS, eta=0.0, guidance_scale=guidance)
    with torch.no_grad():
        ro = sampler.rollout(backbone, backbone.encode_prompts(PROMPTS), noise, role=role)
        out = pipe(PROMPTS, height=TINY_RESOLUTION, width=TINY_RESOLUTION,
                   sigmas=[s / 1000 for s in STEPS], latents=noise.clone(),
                   guidance_scale=guidance, max_sequence_length=128, output_type='latent')
    torch.testing.assert_close(pipe.scheduler.sigmas, ro.sigmas, rtol=0, atol=1e-6)
    torch.testing.assert_close(ro.sample, out.images, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ro.latents[-1], out.images, rtol=1e-5, atol=1e-5)


def test_stacked_stage1_lora_equals_merging_it_into_the_base(sd3_root: Path) -> None:
    stage1 = _build(sd3_root)
    randomize_lora(stage1.generator, seed=2)
    state = {k[len('generator.'):]: v for k, v in stage1.state_dict().items()
             if k.startswith('generator.')}
    stage2 = _build(sd3_root)
    stage2.prepare_warm_start()
    stage2.warm_start('generator', state)
    cond = stage1.encode_prompts(PROMPTS)
    x, sigma = latent_noise(stage1), torch.tensor([0.75, 0.3])
    with torch.no_grad():
        v1 = stage1.predict_velocity('generator', x, sigma, cond)
        v2 = stage2.predict_velocity('generator', x, sigma, cond)  # fresh LoRA: B = 0
        merged = merge_lora(copy.deepcopy(stage1.generator))
        v_merged = stage1._velocity(merged, 'generator', x, sigma, cond).float()
    torch.testing.assert_close(v2, v1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v2, v_merged, rtol=1e-4, atol=1e-4)  # fused weights: fp32 sums
    assert not torch.allclose(v1, stage2.predict_velocity('teacher', x, sigma, cond))
    trainable = [n for n, p in stage2.generator.named_parameters() if p.requires_grad]
    assert trainable and all('.default.' in n for n in trainable)


def test_missing_directory_names_the_path_and_the_download(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError) as err:
        MODELS.build(dict(type='SD3Backbone', pretrained='stable-diffusion-3.5-medium',
                          weights_root=str(tmp_path), repo_id=REPOS['sd35']))
    message = str(err.value)
    assert str(tmp_path / 'stable-diffusion-3.5-medium') in message
    assert 'hf download stabilityai/stable-diffusion-3.5-medium' in message


def test_missing_transformer_weights_name_the_folder(sd3_root: Path, tmp_path: Path) -> None:
    broken = tmp_path / FOLDERS['sd3']
    shutil.copytree(sd3_root / FOLDERS['sd3'], broken)
    for name in os.listdir(broken / 'transformer'):
        if name.endswith('.safetensors'):
            os.remove(broken / 'transformer' / name)
    with pytest.raises(MissingWeightsError) as err:
        _build(tmp_path)
    message = str(err.value)
    assert f'{broken}/transformer/*.safetensors' in message
    assert 'vae' not in message.split('missing:')[1].split(')')[0]  # only what is missing
    assert REPOS['sd3'] in message


def test_resolution_and_sequence_length_are_checked(sd3_root: Path) -> None:
    with pytest.raises(ValueError, match='multiple of 16'):
        _build(sd3_root, resolution=72)
    with pytest.raises(ValueError, match='max_sequence_length'):
        _build(sd3_root, max_sequence_length=1024)


def test_each_distinct_prompt_is_encoded_once(sd3_root: Path) -> None:
    """K copies of a prompt cost one row of every text encoder; the repeated condition equals
    encoding each prompt on its own."""
    backbone = _build(sd3_root)
    rows = []
    hooks = [m.register_forward_hook(lambda mod, args, kwargs, out: rows.append(
        (kwargs.get('input_ids') if 'input_ids' in kwargs else args[0]).shape[0]),
        with_kwargs=True)
             for m in (backbone.text_encoder, backbone.text_encoder_2, backbone.text_encoder_3)]
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    cond = backbone.encode_prompts(prompts)
    for hook in hooks:
        hook.remove()
    assert rows == [2, 2, 2]  # CLIP-L, CLIP-G, T5: the two distinct prompts
    single = [backbone.encode_prompts([p]) for p in PROMPTS]
    for key in ('prompt_embeds', 'pooled_prompt_embeds'):
        assert cond[key].shape[0] == 6
        for i, prompt in enumerate(prompts):
            torch.testing.assert_close(cond[key][i], single[PROMPTS.index(prompt)][key][0],
                                       rtol=1e-5, atol=1e-6)


def test_a_family_declares_what_the_base_constructor_reads(sd3_root: Path) -> None:
    """The base constructor reads only what a family declares on its class (repo ids, LoRA
    targets, components): nothing a family instance must set before ``super().__init__()``."""
    from rtdmd.models.backbones.diffusers_base import DiffusersBackbone
    from rtdmd.models.backbones.flux import FluxBackbone
    from rtdmd.models.backbones.flux2 import Flux2KleinBackbone

    declared = ('transformer_class', 'pipeline_class', 'pipeline_component_names',
                'components', 'default_repo_id', 'lora_targets')
    for family in (SD3Backbone, FluxBackbone, Flux2KleinBackbone):
        assert all(name in vars(family) for name in declared), family
        assert family.__init__ is not DiffusersBackbone.__init__
    backbone = _build(sd3_root, repo_id=None)
    assert backbone.repo_id == SD3Backbone.default_repo_id == backbone.generator_repo_id
    assert not any(p.requires_grad for m in backbone.frozen_modules() for p in m.parameters())
