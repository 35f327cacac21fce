"""tools/export.py as a diffusers user meets it: a fresh Python, plain diffusers, no rtdmd.

A tiny SD3 and a tiny FLUX.2-klein student (non-zero LoRA, EMA differing from the live weights)
are exported three ways: the LoRA (default), the merged transformer alone (``--merged``) and a
standalone merged pipeline (``--merged --copy-unchanged``). One fresh subprocess, which never
imports rtdmd, loads each the way the model card says (``DiffusionPipeline.from_pretrained`` of
the base with ``custom_pipeline=`` and ``load_lora_weights``; of the standalone folder; of the
stock pipeline class with the card's explicit arguments) and samples with a bare
``pipe(prompts, latents=...)``. Its latents and images must equal rtdmd's own ``CPSSampler``
rollout at eta 0 (the stock Euler scheduler is the deterministic sampler) from the same initial
noise, to 1e-4: the LoRA branch ``W x + s B A x`` versus merged weights and Euler's
``x + (s' - s) v`` versus CPS's ``(1 - s') x0 + s' eps`` differ only by float32 rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rtdmd.apis.export import EXPORT_RECORD
from rtdmd.apis.loading import load_trained_model
from rtdmd.models.samplers import CPSSampler
from rtdmd.testing.lora import train_like_checkpoint
from rtdmd.utils.config import load_config
from tests.conftest import REPO
from tests.test_tools.test_export import ALPHA, CONFIG, FAMILIES, PROMPTS, RANK, _export_tool

NAMES = ('sd3', 'flux2')
FORMS = {'lora': [], 'merged': ['--merged'], 'standalone': ['--merged', '--copy-unchanged']}
# How each family's exports are reloaded. The LoRA and the merged transformer are the two ways
# of the model card for both families; the stock pipeline class with the card's explicit
# arguments and the standalone copy are load paths that do not depend on the family, so each is
# checked on one (the fresh process and the exports are this file's whole cost).
JOBS = {'sd3': ('lora', 'lora_stock', 'merged'), 'flux2': ('lora', 'merged', 'standalone')}
FORM_OF = {'lora': 'lora', 'lora_stock': 'lora', 'merged': 'merged', 'standalone': 'standalone'}
TOL = dict(rtol=1e-4, atol=1e-4)

# Runs in a fresh interpreter without rtdmd on its path; every load follows README.md.
LOADER = textwrap.dedent('''
    import json, sys
    import diffusers, torch
    from safetensors.torch import load_file, save_file

    jobs = json.load(open(sys.argv[1]))
    out = {}
    for job in jobs:
        folder, base = job['folder'], job['base']
        record = json.load(open(folder + '/rtdmd_export.json'))
        if job['how'] == 'standalone':
            pipe = diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
        elif job['how'] == 'merged':
            cls = getattr(diffusers, job['transformer_class'])
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                base, custom_pipeline=folder, trust_remote_code=True,
                transformer=cls.from_pretrained(folder, subfolder='transformer'))
        elif job['how'] == 'lora':
            pipe = diffusers.DiffusionPipeline.from_pretrained(base, custom_pipeline=folder,
                                                               trust_remote_code=True)
            pipe.load_lora_weights(folder)
        else:  # the stock class, with the card's explicit call arguments
            pipe = getattr(diffusers, record['pipeline_class']).from_pretrained(base)
            pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(
                folder, subfolder='scheduler')
            pipe.load_lora_weights(folder)
        pipe.set_progress_bar_config(disable=True)
        kwargs = record['call_kwargs'] if job['how'] == 'lora_stock' else {}
        latents = load_file(job['noise'])['noise']
        key = job['name'] + '/' + job['how']
        for output_type in ('latent', 'pt'):
            out[key + '/' + output_type] = pipe(prompt=job['prompts'], latents=latents,
                                                output_type=output_type, **kwargs).images
        out[key + '/class'] = torch.tensor([type(pipe).__name__ == 'RTDMDStudentPipeline'])
    assert not [m for m in sys.modules if m.split('.')[0] == 'rtdmd'], 'rtdmd was imported'
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
''')


def _student(name: str, root: Path) -> dict:
    """A trained-like checkpoint of ``name``'s tiny student, exported in the forms it needs."""
    family = FAMILIES[name]
    module, builder = family.fixture
    dirs = getattr(__import__(module, fromlist=[builder]), builder)(str(root))
    base = dirs if isinstance(dirs, str) else dirs['generator_init']
    backbone = dict(family.backbone, weights_root=str(root), lora=dict(rank=RANK, alpha=ALPHA),
                    dtype='float32', gradient_checkpointing=False, resolution=64)
    config = root / 'config.py'
    config.write_text(CONFIG.format(repo=REPO, backbone=backbone))
    cfg = load_config(str(config))
    ckpt = root / 'iter_2.pth'
    train_like_checkpoint(cfg, ckpt)
    tool = _export_tool()
    for form in sorted({FORM_OF[how] for how in JOBS[name]}):
        tool.main([str(config), str(ckpt), '--out', str(root / form), *FORMS[form]])
    return dict(cfg=cfg, ckpt=ckpt, base=base, root=root)


def _reference(student: dict) -> dict:
    """Seeded initial noise, rtdmd's deterministic rollout from it (LoRA unmerged, EMA weights),
    its decoded images, and the images of the base model (adapters off) from the same noise."""
    model, ema = load_trained_model(student['cfg'], str(student['ckpt']))
    assert ema
    noise = torch.randn((2, *model.backbone.latent_shape()),
                        generator=torch.Generator().manual_seed(1))
    sampler = CPSSampler(model.sampler.step_list, eta=0.0)
    with torch.no_grad():
        cond = model.backbone.encode_prompts(PROMPTS)
        sample = sampler.rollout(model.backbone, cond, noise).sample
        out = dict(noise=noise, latents=sample, images=model.backbone.decode(sample))
        model.backbone.generator.disable_adapters()
        out['base_images'] = model.backbone.decode(
            sampler.rollout(model.backbone, cond, noise).sample)
    out['transformer_class'] = type(model.backbone.generator).__name__
    return out


@pytest.fixture(scope='module')
def reloaded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from safetensors.torch import load_file, save_file

    students, jobs = {}, []
    for name in NAMES:
        root = tmp_path_factory.mktemp(f'export_{name}')
        students[name] = student = _student(name, root)
        student['reference'] = _reference(student)
        save_file({'noise': student['reference']['noise']}, str(root / 'noise.safetensors'))
        for how in JOBS[name]:
            jobs.append(dict(name=name, how=how, folder=str(root / FORM_OF[how]),
                             base=student['base'], noise=str(root / 'noise.safetensors'),
                             prompts=PROMPTS,
                             transformer_class=student['reference']['transformer_class']))
    work = tmp_path_factory.mktemp('reload')
    (work / 'load.py').write_text(LOADER)
    (work / 'jobs.json').write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(OMP_NUM_THREADS='1', HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, str(work / 'load.py'), str(work / 'jobs.json'),
                             str(work / 'out.safetensors')], cwd=work, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(students=students, out=load_file(str(work / 'out.safetensors')))


@pytest.mark.parametrize(('name', 'how'), [(n, h) for n in NAMES for h in JOBS[n]])
def test_plain_diffusers_samples_the_student(reloaded: dict, name: str, how: str) -> None:
    ref, out = reloaded['students'][name]['reference'], reloaded['out']
    theirs = out[f'{name}/{how}/latent']
    if theirs.shape != ref['latents'].shape:  # FLUX.2 returns patchified, batch-normed latents
        assert theirs.numel() == ref['latents'].numel()
    else:
        torch.testing.assert_close(theirs, ref['latents'], **TOL)
    torch.testing.assert_close(out[f'{name}/{how}/pt'], ref['images'], **TOL)
    assert ref['images'].std() > 1e-3  # the images are not blank, so the comparison can fail
    assert bool(out[f'{name}/{how}/class']) == (how != 'lora_stock')


@pytest.mark.parametrize('name', NAMES)
def test_the_lora_changes_the_images(reloaded: dict, name: str) -> None:
    """Against the base model's own few-step sample the student differs: the LoRA is applied."""
    base = reloaded['students'][name]['reference']['base_images']
    assert not torch.allclose(reloaded['out'][f'{name}/lora/pt'], base, atol=1e-3)


@pytest.mark.parametrize('name', NAMES)
def test_exports_hold_no_absolute_path_and_a_model_card(reloaded: dict, name: str) -> None:
    student = reloaded['students'][name]
    root = student['root']
    forms = sorted({FORM_OF[how] for how in JOBS[name]})
    for form in forms:
        folder = root / form
        for path in folder.rglob('*'):
            if path.suffix in ('.json', '.md', '.py', '.txt') and path.is_file():
                text = path.read_text(errors='replace')
                assert str(root) not in text and '/tmp/' not in text, path
        card = (folder / 'README.md').read_text()
        record = json.loads((folder / EXPORT_RECORD).read_text())
        for fact in ('base_model:', 'license:', 'guidance scale 1', '64 x 64 px', 'eta 0.9',
                     'CPSScheduler', str(record['step_list'])):
            assert fact in card, fact
        assert f"{record['sigmas'][1]:.6g}" in card
        assert record['call_kwargs']['num_inference_steps'] == 4
        assert record['call_kwargs']['guidance_scale'] == 1.0
    assert (root / 'lora' / 'pytorch_lora_weights.safetensors').is_file()
    assert not (root / 'merged' / 'text_encoder').exists()  # unchanged: not copied
    if 'standalone' not in forms:
        return
    assert (root / 'standalone' / 'text_encoder').is_dir()
    index = json.loads((root / 'standalone' / 'model_index.json').read_text())
    assert index['_class_name'] == ['pipeline', 'RTDMDStudentPipeline']
    assert index['scheduler'] == ['diffusers', 'FlowMatchEulerDiscreteScheduler']
