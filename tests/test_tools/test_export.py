"""tools/export.py: a trained generator as a diffusers pipeline that samples like rtdmd.

Per family with a tiny fixture: build the distiller from a config pointing at the tiny pipeline
directory, save a checkpoint the way training does (LoRA-only ``state_dict`` with non-zero LoRA,
``ema_state`` that differs from the live weights), export it, load the folder with diffusers' own
``DiffusionPipeline.from_pretrained`` and compare its latents with rtdmd's ``CPSSampler`` rollout
for the same prompts, initial noise and transition noise.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor

from rtdmd.apis.export import EXPORT_RECORD
from rtdmd.apis.loading import load_trained_model
from rtdmd.models.lora import merge_lora
from rtdmd.models.samplers import CPSSampler
from rtdmd.models.samplers.cps_scheduler import CPSScheduler
from rtdmd.models.samplers.noise import GeneratorNoise, GivenNoise
from rtdmd.testing.lora import STANDIN_REWARDS, train_like_checkpoint
from rtdmd.utils.config import load_config
from tests.conftest import REPO

PROMPTS = ['a photo of a red car', 'two dogs']
RANK, ALPHA = 4, 8


def _identity(x: Tensor, pipe) -> Tensor:
    return x


def _flux_pack(x: Tensor, pipe) -> Tensor:
    b, c, h, w = x.shape
    return pipe._pack_latents(x, b, c, h, w)


def _flux_unpack(x: Tensor, pipe) -> Tensor:
    side = int(x.shape[1] ** 0.5) * 2 * pipe.vae_scale_factor
    return pipe._unpack_latents(x, side, side, pipe.vae_scale_factor)


def _flux2_unpack(x: Tensor, pipe) -> Tensor:
    b, length, c = x.shape
    side = int(length ** 0.5)
    return x.permute(0, 2, 1).reshape(b, c, side, side)


def _flux2_finish(x: Tensor, pipe) -> Tensor:
    """What Flux2KleinPipeline does to its latents before returning them (output 'latent')."""
    bn, eps = pipe.vae.bn, pipe.vae.config.batch_norm_eps
    x = x * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + eps) + bn.running_mean.view(1, -1, 1, 1)
    return pipe._unpatchify_latents(x)


@dataclass
class Family:
    """How one family's tiny fixture, backbone and pipeline layout fit together.

    rtdmd latents are ``(B, C, H, W)``. ``pack`` / ``unpack`` convert them to the layout the
    pipeline's scheduler sees and back (pure layout changes, also applied to the transition
    noise); ``latents`` gives the pipeline's ``latents=`` argument; ``finish`` maps rtdmd's output
    to what the pipeline returns with ``output_type='latent'``. ``exact``: the pipeline feeds the
    transformer bit-identical timesteps (SD3 passes ``1000 sigma`` as the backbone does; the FLUX
    pipelines pass ``(1000 sigma) / 1000``, up to an ulp away from ``sigma``).
    """

    fixture: tuple[str, str]
    backbone: dict
    pack: Callable[[Tensor, object], Tensor] = _identity
    unpack: Callable[[Tensor, object], Tensor] = _identity
    latents: Callable[[Tensor, object], Tensor] = _identity
    finish: Callable[[Tensor, object], Tensor] = _identity
    exact: bool = True


FAMILIES = {
    'sd3': Family(('rtdmd.testing.sd3', 'build_sd3_dir'),
                  dict(type='SD3Backbone', pretrained='stable-diffusion-3-medium-diffusers',
                       max_sequence_length=16)),
    'flux': Family(('rtdmd.testing.flux', 'build_flux_dir'),
                   dict(type='FluxBackbone', pretrained='FLUX.1-dev', max_sequence_length=16),
                   pack=_flux_pack, unpack=_flux_unpack, latents=_flux_pack, finish=_flux_pack,
                   exact=False),
    'flux2': Family(('rtdmd.testing.flux2', 'build_flux2_klein_dirs'),
                    dict(type='Flux2KleinBackbone', pretrained='FLUX.2-klein-base-4B',
                         generator_init='FLUX.2-klein-4B', max_sequence_length=16,
                         text_encoder_out_layers=(1, 2, 3)),
                    pack=lambda x, pipe: pipe._pack_latents(x), unpack=_flux2_unpack,
                    finish=_flux2_finish, exact=False),
}

CONFIG = """
_base_ = ['{repo}/configs/_base_/default_runtime.py', '{repo}/configs/_base_/algorithms/ac_dmd.py']
backbone = {backbone!r}
"""


def _export_tool():
    spec = importlib.util.spec_from_file_location('rtdmd_export_tool', REPO / 'tools/export.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    family = FAMILIES[request.param]
    module, builder = family.fixture
    try:
        build_dir = getattr(importlib.import_module(module), builder)
    except (ImportError, AttributeError):
        pytest.skip(f'no tiny {request.param} fixture')
    root = tmp_path_factory.mktemp(f'export_{request.param}')
    dirs = build_dir(str(root))  # a path, or {'pretrained': ..., 'generator_init': ...}
    generator_base = dirs if isinstance(dirs, str) else dirs['generator_init']
    backbone = dict(family.backbone, weights_root=str(root), lora=dict(rank=RANK, alpha=ALPHA),
                    dtype='float32', gradient_checkpointing=False, resolution=64)
    config = root / 'config.py'
    config.write_text(CONFIG.format(repo=REPO, backbone=backbone))
    cfg = load_config(str(config))
    ckpt = root / 'iter_2.pth'
    ema = train_like_checkpoint(cfg, ckpt)
    out = root / 'exported'
    # tools/export.py's main, in this process (a subprocess would add ~10 s of imports).
    _export_tool().main([str(config), '--checkpoint', str(ckpt), '--out', str(out), '--merged',
                         '--copy-unchanged', '--scheduler', 'cps'])
    return dict(name=request.param, family=family, cfg=cfg, ckpt=ckpt, ema=ema, out=out,
                generator_base=generator_base)


def test_folder_names_the_cps_scheduler_and_records_the_schedule(exported: dict) -> None:
    out, cfg = exported['out'], exported['cfg']
    index = json.loads((out / 'model_index.json').read_text())
    assert index['scheduler'] == ['rtdmd', 'CPSScheduler']
    assert index.get('is_distilled', True) is True  # FLUX.2-klein: the student is CFG-free
    record = json.loads((out / EXPORT_RECORD).read_text())
    model, _ = load_trained_model(cfg, str(exported['ckpt']))
    sigmas = model.backbone.sigma_schedule(model.sampler.step_list,
                                           model.backbone.latent_shape())
    assert record['sigmas'] == [float(s) for s in sigmas[:-1]]
    assert record['eta'] == 0.9 and record['step_list'] == [1000, 750, 500, 250]
    assert record['ema'] is True and record['checkpoint'] == exported['ckpt'].name
    assert record['call_kwargs']['guidance_scale'] == 1.0
    scheduler = json.loads((out / 'scheduler' / 'scheduler_config.json').read_text())
    assert scheduler['sigmas'] == record['sigmas'] and scheduler['eta'] == 0.9
    if exported['name'] == 'sd3':
        assert record['sigmas'] == pytest.approx([1.0, 0.9, 0.75, 0.5])  # static shift 3


def test_transformer_is_the_base_with_the_ema_lora_merged(exported: dict) -> None:
    from safetensors.torch import load_file

    out, ema = exported['out'], exported['ema']
    merged = load_file(str(out / 'transformer' / 'diffusion_pytorch_model.safetensors'))
    assert not [k for k in merged if 'lora' in k]
    base = load_file(str(Path(exported['generator_base']) / 'transformer' /
                         'diffusion_pytorch_model.safetensors'))
    assert set(merged) == set(base)
    checked = 0
    for name in [k for k in ema if '.lora_A.default.' in k][:4]:
        module = name.split('.lora_A.')[0]
        a, b = ema[name], ema[name.replace('lora_A', 'lora_B')]
        expected = base[f'{module}.weight'] + (ALPHA / RANK) * b @ a
        torch.testing.assert_close(merged[f'{module}.weight'], expected, rtol=0, atol=1e-5)
        checked += 1
    assert checked == 4


def _pipeline_latents(pipe, family: Family, noise: Tensor, kwargs: dict,
                      seed: int | None) -> Tensor:
    """The pipeline's output latents from ``noise``; transition noise seeded by ``seed``."""
    pipe.scheduler.noise_generator = None if seed is None else torch.Generator().manual_seed(seed)
    return pipe(prompt=PROMPTS, latents=family.latents(noise, pipe), output_type='latent',
                generator=torch.Generator().manual_seed(123), **kwargs).images


def _rtdmd_latents(model, family: Family, pipe, noise: Tensor, eta: float,
                   seed: int | None) -> Tensor:
    """rtdmd's rollout, in the pipeline's output space.

    Transition noise: where the layouts agree (SD3) the sampler draws from its own generator;
    for packed families the same draws are made in the scheduler's layout and unpacked.
    """
    sampler = CPSSampler(model.sampler.step_list, eta=eta)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    step_noise = None
    if gen is not None and family.pack is not _identity:  # packed: same draws, other layout
        layout = family.pack(noise, pipe).shape
        step_noise = {j: family.unpack(torch.randn(layout, generator=gen), pipe)
                      for j in range(sampler.num_steps - 1)}
    with torch.no_grad():
        cond = model.backbone.encode_prompts(PROMPTS)
        steps = step_noise if step_noise is not None else (
            GeneratorNoise(gen) if gen is not None else None)
        sample = sampler.rollout(model.backbone, cond, GivenNoise(noise, steps)).sample
        return family.finish(sample, pipe)


def test_exported_pipeline_samples_like_rtdmds_sampler(exported: dict) -> None:
    from diffusers import DiffusionPipeline

    family, out = exported['family'], exported['out']
    record = json.loads((out / EXPORT_RECORD).read_text())
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)  # the real loader
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, CPSScheduler)
    assert type(pipe).__mro__[1].__name__ == record['pipeline_class']  # pipeline.py's subclass
    kwargs = dict(record['call_kwargs'])
    model, ema_applied = load_trained_model(exported['cfg'], str(exported['ckpt']))
    assert ema_applied
    noise = torch.randn((2, *model.backbone.latent_shape()),
                        generator=torch.Generator().manual_seed(1))

    # The exported 0.9 scheduler, run deterministically, against rtdmd with eta 0.
    eta0 = CPSScheduler.from_config(pipe.scheduler.config, eta=0.0)
    exported_scheduler, pipe.scheduler = pipe.scheduler, eta0
    ours_eta0 = _pipeline_latents(pipe, family, noise, kwargs, None)
    # Unmerged LoRA (W x + s B A x) vs merged weights: equal up to float rounding.
    lora_eta0 = _rtdmd_latents(model, family, pipe, noise, 0.0, None)
    torch.testing.assert_close(ours_eta0, lora_eta0, rtol=1e-4, atol=1e-4)
    # With the generator merged as the export merges it, the samplers agree bit for bit.
    merge_lora(model.backbone.generator)
    # FLUX pipelines feed (1000 sigma) / 1000; bit-exact too where that round trip is exact.
    sigmas = torch.tensor(record['sigmas'])
    exact = family.exact or bool(torch.equal(sigmas * 1000 / 1000, sigmas))
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours_eta0, _rtdmd_latents(model, family, pipe, noise, 0.0, None),
                               **tol)

    # eta 0.9: the scheduler's and rtdmd's transition noise from identically seeded generators.
    pipe.scheduler = exported_scheduler
    ours = _pipeline_latents(pipe, family, noise, kwargs, seed=7)
    torch.testing.assert_close(ours, _rtdmd_latents(model, family, pipe, noise, 0.9, 7), **tol)
    assert not torch.allclose(ours, ours_eta0, atol=1e-3)  # the noise did enter


def test_cli_refuses_what_it_cannot_export(tmp_path: Path) -> None:
    from rtdmd.apis.export import build_pipeline

    tool = _export_tool()
    out = ['--out', str(tmp_path / 'out')]
    with pytest.raises(SystemExit, match='does not exist'):
        tool.main(['configs/ac_dmd/toy2d_4step.py', '--checkpoint', str(tmp_path / 'no.pth'),
                   *out])
    with pytest.raises(SystemExit, match='the config has no stages'):
        tool.main(['configs/ac_dmd/toy2d_4step.py', '--checkpoint', 'x.pth', '--stage', 'a',
                   *out])

    class Toy(torch.nn.Module):
        backbone = torch.nn.Module()

    with pytest.raises(TypeError, match='names no diffusers pipeline'):
        build_pipeline(Toy())


def _stage2_checkpoint(cfg, path: Path) -> dict[str, Tensor]:
    """A stage-2 model's checkpoint: stage 1's LoRA frozen under a trained fresh one, no EMA."""
    from rtdmd.models.lora import lora_state_dict
    from rtdmd.registry import MODELS

    model = MODELS.build(cfg.model)
    gen = torch.Generator().manual_seed(3)
    model.backbone.prepare_warm_start()
    for role in ('generator', 'fake_score'):  # what init_weights does in stage 2
        stage1 = {k: 0.2 * torch.randn(v.shape, generator=gen)
                  for k, v in lora_state_dict(getattr(model.backbone, role)).items()}
        model.backbone.warm_start(role, stage1)
    with torch.no_grad():
        for param in model.backbone.generator.parameters():
            if param.requires_grad:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen))
    state = model.state_dict()
    assert any('.stage1.' in k for k in state)
    torch.save({'state_dict': state}, path)
    return state


def _assert_both_loras_merged(out: Path, base_dir: str, state: dict[str, Tensor]) -> None:
    from safetensors.torch import load_file

    merged = load_file(str(out / 'transformer' / 'diffusion_pytorch_model.safetensors'))
    base = load_file(str(Path(base_dir) / 'transformer' / 'diffusion_pytorch_model.safetensors'))
    name = next(k for k in state if k.startswith('backbone.generator.')
                and '.lora_A.stage1.' in k)
    module = name[len('backbone.generator.'):].split('.lora_A.')[0]
    expected = base[f'{module}.weight'].clone()
    for adapter in ('stage1', 'default'):
        a = state[name.replace('stage1', adapter)]
        b = state[name.replace('stage1', adapter).replace('lora_A', 'lora_B')]
        expected += (ALPHA / RANK) * b @ a
    torch.testing.assert_close(merged[f'{module}.weight'], expected, rtol=0, atol=1e-5)
    assert json.loads((out / EXPORT_RECORD).read_text())['ema'] is False  # none saved


def _assert_lora_file_holds_both(out: Path, base_dir: str, state: dict[str, Tensor]) -> None:
    """diffusers' own LoRA loader on the base transformer, fused, equals base + both LoRAs."""
    import diffusers
    from safetensors.torch import load_file

    record = json.loads((out / EXPORT_RECORD).read_text())
    cls = getattr(diffusers, record['pipeline_class'])
    transformer = getattr(diffusers, record['transformer_class']).from_pretrained(
        base_dir, subfolder='transformer')
    lora = load_file(str(out / 'pytorch_lora_weights.safetensors'))
    assert all(k.startswith('transformer.') for k in lora)
    # stage 1 and stage 2 concatenated along the rank: A is (2r, in), B is (out, 2r)
    assert {v.shape[0] for k, v in lora.items() if '.lora_A.' in k} == {2 * RANK}
    state_dict, metadata = cls.lora_state_dict(str(out), return_lora_metadata=True)
    assert metadata['transformer.r'] == 2 * RANK and metadata['transformer.lora_alpha'] == 2 * ALPHA
    transformer.load_lora_adapter(state_dict, prefix='transformer', metadata=metadata)
    transformer.fuse_lora(lora_scale=1.0)
    transformer.unload_lora()
    merged = {k: v for k, v in transformer.state_dict().items()}
    base = load_file(str(Path(base_dir) / 'transformer' / 'diffusion_pytorch_model.safetensors'))
    name = next(k for k in state if k.startswith('backbone.generator.')
                and '.lora_A.stage1.' in k)
    module = name[len('backbone.generator.'):].split('.lora_A.')[0]
    expected = base[f'{module}.weight'].clone()
    for adapter in ('stage1', 'default'):
        a = state[name.replace('stage1', adapter)]
        b = state[name.replace('stage1', adapter).replace('lora_A', 'lora_B')]
        expected += (ALPHA / RANK) * b @ a
    torch.testing.assert_close(merged[f'{module}.weight'], expected, rtol=0, atol=1e-5)


def test_stage2_checkpoint_merges_both_loras_without_the_stage1_file(exported: dict,
                                                                     tmp_path: Path) -> None:
    """Stage 2 stacks stage 1's LoRA (frozen) under a fresh one; both are merged. The stage-1
    checkpoint (``init_checkpoint``) is not needed: the stage-2 checkpoint holds both."""
    from rtdmd.apis.export import export_pipeline

    state = _stage2_checkpoint(exported['cfg'], tmp_path / 'stage2.pth')
    export_pipeline(exported['cfg'], str(tmp_path / 'stage2.pth'), str(tmp_path / 'out'),
                    form='merged')
    _assert_both_loras_merged(tmp_path / 'out', exported['generator_base'], state)
    export_pipeline(exported['cfg'], str(tmp_path / 'stage2.pth'), str(tmp_path / 'lora'))
    _assert_lora_file_holds_both(tmp_path / 'lora', exported['generator_base'], state)


def test_rtdmd_leaf_config_with_stages_exports_its_last_stage(tmp_path: Path) -> None:
    """configs/rtdmd/sd3m_4step.py trains stage 1 then stage 2; --stage defaults to the last."""
    from rtdmd.apis.loading import stage_of
    from rtdmd.testing.sd3 import build_sd3_dir

    config = REPO / 'configs/rtdmd/sd3m_4step.py'
    if not config.is_file():
        pytest.skip('no SD3 RTDMD config')
    base_dir = build_sd3_dir(str(tmp_path))
    options = {'weights_root': str(tmp_path), 'backbone.resolution': 64,
               'backbone.dtype': 'float32', 'backbone.max_sequence_length': 16,
               'backbone.gradient_checkpointing': False, 'backbone.lora.rank': RANK,
               'backbone.lora.alpha': ALPHA, **STANDIN_REWARDS}
    stage_cfg = stage_of(load_config(str(config), options), None, options)
    assert 'stages' not in stage_cfg and stage_cfg.model.type == 'RTDMDDistiller'
    state = _stage2_checkpoint(stage_cfg, tmp_path / 'iter_1.pth')
    tool = _export_tool()
    args = [str(config), '--checkpoint', str(tmp_path / 'iter_1.pth'), '--out',
            str(tmp_path / 'out'), '--merged',
            '--cfg-options', *(f'{k}={v}' for k, v in options.items())]
    with pytest.raises(SystemExit, match="no stage 'nope'"):
        tool.main(args + ['--stage', 'nope'])
    tool.main(args)
    _assert_both_loras_merged(tmp_path / 'out', base_dir, state)
