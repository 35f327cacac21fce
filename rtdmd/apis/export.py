"""Export a trained student (``tools/export.py``) in diffusers form: its LoRA, or merged.

The distiller is built from its config and the checkpoint loaded (LoRA weights in ``state_dict``,
the generator's EMA in ``ema_state``). Then, by ``form``:

- ``'lora'`` (default): every active adapter of the generator (stage 1's frozen one and the
  trained one) combined exactly into one LoRA (:func:`rtdmd.models.lora.combined_lora`), written
  with the family pipeline's own ``save_lora_weights`` as ``pytorch_lora_weights.safetensors``
  (its LoraConfig in the file's metadata, so diffusers restores rank and alpha);
  ``pipe.load_lora_weights(folder)`` on the generator's base pipeline loads it.
- ``'merged'``: the adapters merged into the transformer; with ``copy_unchanged`` the family's
  pipeline is rebuilt around it and saved whole, else only the changed components are written.

Every form also writes the student's scheduler (``scheduler/``), ``pipeline.py`` (a diffusers
custom pipeline with the student's call defaults: 4 steps, explicit sigmas, guidance 1, the
training resolution), a ``README.md`` model card and ``rtdmd_export.json`` (what was exported;
no absolute paths). With the stock ``FlowMatchEulerDiscreteScheduler`` (the default, the
deterministic sampler) the folder loads without rtdmd; ``CPSScheduler`` (the stochastic sampler
at the student's eta) needs ``import rtdmd``. Nothing here asks which family it exports.
"""

from __future__ import annotations

import inspect
import json
import os
import os.path as osp
from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log
from torch import nn

from rtdmd.evaluation.generators import EXPORT_RECORD
from rtdmd.models.lora import combined_lora, merge_lora
from rtdmd.utils.atomic import atomic_write_json, atomic_write_text
from rtdmd.version import __version__

from .loading import load_trained_model
from .model_card import CUSTOM_PIPELINE, PIPELINE_FILE, StudentCard, model_card, pipeline_source

__all__ = ['EXPORT_RECORD', 'build_pipeline', 'export_pipeline', 'student_schedule']

#: Pipeline call arguments a backbone may hold as attributes of the same name (its text encoding).
_TEXT_ENCODING_ARGS = ('max_sequence_length', 'text_encoder_out_layers')


def student_schedule(model: nn.Module) -> tuple[list[float], float]:
    """``(sigmas, eta)`` of the distiller's sampler: shifted sigmas without the trailing 0."""
    sigmas = model.sampler.sigmas(model.backbone)
    return [float(s) for s in sigmas[:-1].cpu()], float(model.sampler.eta)


def build_pipeline(model: nn.Module, scheduler: Any = None) -> Any:
    """The family's diffusers pipeline around the merged generator.

    The generator's adapters are merged in place (the model is not trained afterwards).

    Args:
        model: a loaded distiller with a diffusers backbone.
        scheduler: the pipeline's scheduler; default rtdmd's ``CPSScheduler`` at the student's
            sigmas and eta.
    """
    backbone = model.backbone
    pipeline_class = _pipeline_class(backbone)
    sigmas, eta = student_schedule(model)
    generator = merge_lora(backbone.generator).eval()
    components = {name: getattr(backbone, name) for name in backbone.pipeline_component_names}
    components.update(transformer=generator,
                      scheduler=scheduler if scheduler is not None else _scheduler('cps', sigmas,
                                                                                     eta))
    params = inspect.signature(pipeline_class.__init__).parameters
    if 'is_distilled' in params:  # FLUX.2-klein: the student is CFG-free, guidance is ignored
        components['is_distilled'] = True
    missing = [n for n, p in params.items() if n != 'self' and p.default is p.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in components]
    if missing:
        raise TypeError(f'{pipeline_class.__name__} needs {missing}, which '
                        f'{type(backbone).__name__}.pipeline_component_names does not list')
    return pipeline_class(**{k: v for k, v in components.items() if k in params})


def export_pipeline(cfg: Config, checkpoint: str, out_dir: str, use_ema: bool = True,
                    form: str = 'lora', copy_unchanged: bool = False,
                    scheduler: str = 'euler', benchmark: str | None = None) -> dict[str, Any]:
    """Write the student to ``out_dir`` and return the export record.

    Args:
        cfg: the training config of the stage that wrote ``checkpoint``.
        checkpoint: the training checkpoint to export.
        out_dir: the folder to write.
        use_ema: export the generator's EMA weights (the release's ``generator_ema``).
        form: ``'lora'``: the LoRA in diffusers format (every adapter combined, exactly);
            ``'merged'``: the transformer with the LoRA merged and the scheduler.
        copy_unchanged: with ``'merged'``, also write the unchanged components (text encoders,
            tokenizers, VAE) and ``model_index.json``: a standalone pipeline.
        scheduler: ``'euler'``: diffusers' stock ``FlowMatchEulerDiscreteScheduler`` on the
            explicit sigmas (the deterministic sampler, loads without rtdmd); ``'cps'``: rtdmd's
            ``CPSScheduler`` at the student's eta (needs ``import rtdmd``).
        benchmark: a Markdown benchmark table (``results.md``) for the model card.
    """
    if form not in ('lora', 'merged') or scheduler not in ('euler', 'cps'):
        raise ValueError(f"form must be 'lora' or 'merged' and scheduler 'euler' or 'cps', "
                         f'got {form!r}, {scheduler!r}')
    if copy_unchanged and form != 'merged':
        raise ValueError('copy_unchanged needs the merged form')
    bench_table = _read_benchmark(benchmark)
    model, ema_applied = load_trained_model(cfg, checkpoint, use_ema)
    backbone = model.backbone
    pipeline_class = _pipeline_class(backbone)
    sigmas, eta = student_schedule(model)
    call = _call_kwargs(pipeline_class, model, sigmas)
    os.makedirs(out_dir, exist_ok=True)
    student_scheduler = _scheduler(scheduler, sigmas, eta)
    if form == 'lora':
        _write_lora(backbone.generator, pipeline_class, out_dir)
        student_scheduler.save_pretrained(osp.join(out_dir, 'scheduler'))
    elif copy_unchanged:
        pipe = build_pipeline(model, student_scheduler)
        pipe.save_pretrained(out_dir, safe_serialization=True)
        _name_custom_pipeline(out_dir, scheduler)
    else:
        merge_lora(backbone.generator).eval().save_pretrained(
            osp.join(out_dir, 'transformer'), safe_serialization=True)
        student_scheduler.save_pretrained(osp.join(out_dir, 'scheduler'))
    _drop_local_paths(out_dir)
    atomic_write_text(osp.join(out_dir, PIPELINE_FILE),
                      pipeline_source(pipeline_class.__name__, call))
    card = StudentCard(
        form=form, standalone=copy_unchanged, base_repo=backbone.generator_repo_id,
        teacher_repo=backbone.repo_id, pipeline_class=pipeline_class.__name__,
        transformer_class=type(backbone.generator).__name__, method=_method(model),
        step_list=[int(t) for t in model.sampler.step_list], sigmas=sigmas, eta=eta,
        resolution=getattr(backbone, 'resolution', None), call_kwargs=call,
        scheduler=scheduler, benchmark=bench_table)
    atomic_write_text(osp.join(out_dir, 'README.md'), model_card(card))
    record = dict(
        rtdmd_version=__version__, form=form, standalone=copy_unchanged, scheduler=scheduler,
        config=osp.basename(cfg.filename) if getattr(cfg, 'filename', None) else None,
        checkpoint=osp.basename(checkpoint), ema=ema_applied, base_model=card.base_repo,
        teacher=card.teacher_repo, method=card.method, step_list=card.step_list,
        sigmas=sigmas, eta=eta, latent_shape=list(backbone.latent_shape()),
        pipeline_class=pipeline_class.__name__, transformer_class=card.transformer_class,
        call_kwargs=call)
    atomic_write_json(osp.join(out_dir, EXPORT_RECORD), record)
    if scheduler == 'euler' and eta > 0 and len(sigmas) > 1:
        print_log(f'the student samples with CPS eta {eta}; the export\'s stock scheduler runs '
                  'the deterministic sampler (eta 0); README.md shows how to use rtdmd\'s '
                  'CPSScheduler, or export with --scheduler cps', logger='current', level=30)
    print_log(f'exported the {form} student ({len(sigmas)} steps, {scheduler} scheduler) to '
              f'{out_dir}', logger='current')
    return record


# ------------------------------------------------------------------------------------ helpers
def _pipeline_class(backbone: nn.Module) -> type:
    pipeline_class = getattr(backbone, 'pipeline_class', None)
    if pipeline_class is None:
        raise TypeError(f'{type(backbone).__name__} names no diffusers pipeline '
                        f'(pipeline_class): only diffusers backbones can be exported')
    return pipeline_class


def _scheduler(kind: str, sigmas: list[float], eta: float) -> Any:
    """The student's scheduler: stock Euler that never re-shifts, or rtdmd's CPS."""
    if kind == 'cps':
        from rtdmd.models.samplers.cps_scheduler import CPSScheduler

        return CPSScheduler(sigmas=sigmas, eta=eta)
    from diffusers import FlowMatchEulerDiscreteScheduler

    # shift 1 and no dynamic shifting: the explicit sigmas of the call are used as given.
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0,
                                           use_dynamic_shifting=False)


def _write_lora(generator: nn.Module, pipeline_class: type, out_dir: str) -> None:
    """``pytorch_lora_weights.safetensors`` through the pipeline's own LoRA writer."""
    state, config = combined_lora(generator)
    metadata = {k: sorted(v) if isinstance(v, set) else v for k, v in config.to_dict().items()}
    # diffusers writes the file directly; write it to a temporary folder and move it in whole.
    tmp = osp.join(out_dir, f'.lora.{os.getpid()}.tmp')
    pipeline_class.save_lora_weights(tmp, transformer_lora_layers=state,
                                     transformer_lora_adapter_metadata=metadata,
                                     safe_serialization=True)
    name = 'pytorch_lora_weights.safetensors'
    os.replace(osp.join(tmp, name), osp.join(out_dir, name))
    os.rmdir(tmp)


def _name_custom_pipeline(out_dir: str, scheduler: str) -> None:
    """``model_index.json`` names ``pipeline.py``'s class and the scheduler's library.

    diffusers writes a class of another library under its full module path; ``rtdmd`` is
    stable across refactors and resolves once ``rtdmd`` is imported.
    """
    path = osp.join(out_dir, 'model_index.json')
    with open(path) as f:
        index = json.load(f)
    index['_class_name'] = list(CUSTOM_PIPELINE)
    if scheduler == 'cps':
        index['scheduler'] = ['rtdmd', 'CPSScheduler']
    atomic_write_json(path, index, sort_keys=True)


def _drop_local_paths(out_dir: str) -> None:
    """Remove the exporting machine's paths from the saved configs.

    diffusers and transformers record where a module was loaded from (``_name_or_path``,
    ``name_or_path``); in an export that is a path of this machine, meaningless elsewhere.
    """
    for folder, _, files in os.walk(out_dir):
        for name in files:
            if not name.endswith('.json'):
                continue
            path = osp.join(folder, name)
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict):
                continue
            keys = [k for k in ('_name_or_path', 'name_or_path')
                    if isinstance(data.get(k), str) and osp.isabs(data[k])]
            if keys:
                atomic_write_json(path, {k: v for k, v in data.items() if k not in keys})


def _read_benchmark(path: str | None) -> str | None:
    if path is None:
        return None
    if not osp.isfile(path):
        raise FileNotFoundError(f'benchmark table {path} does not exist (give the results.md '
                                f'that tools/test.py --benchmarks wrote)')
    with open(path) as f:
        return f.read()


def _method(model: nn.Module) -> str:
    name = type(model).__name__
    if 'RTDMD' in name:
        return ('RTDMD (stage 2: distribution matching + hybrid policy gradient, on the AC-DMD '
                'stage-1 LoRA)')
    if 'ACDMD' in name:
        return 'AC-DMD (stage 1: adversarial-consistency distribution matching)'
    return name


def _call_kwargs(pipeline_class: type, model: nn.Module, sigmas: list[float]) -> dict[str, Any]:
    """Pipeline call arguments under which it samples as rtdmd's ``CPSSampler`` does."""
    call = inspect.signature(pipeline_class.__call__).parameters
    backbone = model.backbone
    kwargs: dict[str, Any] = dict(num_inference_steps=model.sampler.num_steps,
                                  sigmas=list(sigmas),
                                  guidance_scale=float(model.sampler.guidance_scale))
    resolution = getattr(backbone, 'resolution', None)
    if resolution is not None:
        kwargs.update(height=resolution, width=resolution)
    for name in _TEXT_ENCODING_ARGS:  # the backbone's text encoding, where it sets one
        value = getattr(backbone, name, None)
        if value is not None:
            kwargs[name] = list(value) if isinstance(value, tuple) else value
    return {k: v for k, v in kwargs.items() if k in call}
