"""Export a trained generator as a diffusers pipeline directory (``tools/export.py``).

The distiller is built from its config, the checkpoint loaded (LoRA weights in ``state_dict``, the
generator's EMA in ``ema_state``), every active adapter of the generator (stage 1's frozen one and
the trainable one) merged into its base, and the family's own diffusers pipeline rebuilt from the
backbone's components (``DiffusersBackbone.pipeline_class`` / ``pipeline_component_names``) with
the merged generator as ``transformer`` and a
:class:`~rtdmd.models.samplers.cps_scheduler.CPSScheduler` on the student's few-step sigmas and
eta. Nothing here asks which family it exports.

The folder loads with ``import rtdmd; DiffusionPipeline.from_pretrained(folder)``;
``rtdmd_export.json`` records where it came from and the call arguments that reproduce rtdmd's
sampler (``guidance_scale=1``: the student is CFG-free; the training resolution, for which the
sigmas were computed).
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
from rtdmd.models.lora import merge_lora
from rtdmd.version import __version__

from .loading import load_trained_model

__all__ = ['EXPORT_RECORD', 'build_pipeline', 'export_pipeline', 'student_schedule']

#: Pipeline call arguments a backbone may hold as attributes of the same name (its text encoding).
_TEXT_ENCODING_ARGS = ('max_sequence_length', 'text_encoder_out_layers')


def student_schedule(model: nn.Module) -> tuple[list[float], float]:
    """``(sigmas, eta)`` of the distiller's sampler: shifted sigmas without the trailing 0."""
    sigmas = model.sampler.sigmas(model.backbone)
    return [float(s) for s in sigmas[:-1].cpu()], float(model.sampler.eta)


def build_pipeline(model: nn.Module) -> Any:
    """The family's diffusers pipeline around the merged generator and a CPS scheduler.

    The generator's adapters are merged in place (the model is not trained afterwards).
    """
    from rtdmd.models.samplers.cps_scheduler import CPSScheduler

    backbone = model.backbone
    pipeline_class = getattr(backbone, 'pipeline_class', None)
    if pipeline_class is None:
        raise TypeError(f'{type(backbone).__name__} names no diffusers pipeline '
                        f'(pipeline_class): only diffusers backbones can be exported')
    sigmas, eta = student_schedule(model)
    generator = merge_lora(backbone.generator).eval()
    components = {name: getattr(backbone, name) for name in backbone.pipeline_component_names}
    components.update(transformer=generator, scheduler=CPSScheduler(sigmas=sigmas, eta=eta))
    params = inspect.signature(pipeline_class.__init__).parameters
    if 'is_distilled' in params:  # FLUX.2-klein: the student is CFG-free, guidance is ignored
        components['is_distilled'] = True
    missing = [n for n, p in params.items() if n != 'self' and p.default is p.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and n not in components]
    if missing:
        raise TypeError(f'{pipeline_class.__name__} needs {missing}, which '
                        f'{type(backbone).__name__}.pipeline_component_names does not list')
    return pipeline_class(**{k: v for k, v in components.items() if k in params})


def export_pipeline(cfg: Config, checkpoint: str, out_dir: str, use_ema: bool = True
                    ) -> dict[str, Any]:
    """Write the exported pipeline to ``out_dir`` and return the export record.

    Args:
        cfg: the training config (``cfg.filename`` is recorded).
        checkpoint: the training checkpoint to export.
        out_dir: the pipeline directory to write (``model_index.json``, safetensors weights,
            ``rtdmd_export.json``).
        use_ema: export the generator's EMA weights (the release's ``generator_ema``).
    """
    model, ema_applied = load_trained_model(cfg, checkpoint, use_ema)
    sigmas, eta = student_schedule(model)
    pipe = build_pipeline(model)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _name_scheduler_library(out_dir)
    backbone = model.backbone
    record = dict(
        rtdmd_version=__version__,
        config=osp.abspath(cfg.filename) if getattr(cfg, 'filename', None) else None,
        checkpoint=osp.abspath(checkpoint), ema=ema_applied,
        step_list=list(model.sampler.step_list), sigmas=sigmas, eta=eta,
        latent_shape=list(backbone.latent_shape()), pipeline_class=type(pipe).__name__,
        call_kwargs=_call_kwargs(pipe, model))
    with open(osp.join(out_dir, EXPORT_RECORD), 'w') as f:
        json.dump(record, f, indent=2)
    print_log(f'exported {type(pipe).__name__} ({len(sigmas)} steps, eta {eta}) to {out_dir}',
              logger='current')
    return record


# ------------------------------------------------------------------------------------ helpers
def _name_scheduler_library(out_dir: str) -> None:
    """Record the scheduler as ``["rtdmd", "CPSScheduler"]`` in ``model_index.json``.

    diffusers writes a class of another library under its full module path; the package name is
    stable across refactors and resolves once ``rtdmd`` is imported.
    """
    path = osp.join(out_dir, 'model_index.json')
    with open(path) as f:
        index = json.load(f)
    index['scheduler'] = ['rtdmd', 'CPSScheduler']
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(index, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _call_kwargs(pipe: Any, model: nn.Module) -> dict[str, Any]:
    """Pipeline call arguments under which it samples as rtdmd's ``CPSSampler`` does."""
    call = inspect.signature(type(pipe).__call__).parameters
    backbone = model.backbone
    kwargs: dict[str, Any] = dict(guidance_scale=float(model.sampler.guidance_scale),
                                  num_inference_steps=model.sampler.num_steps)
    resolution = getattr(backbone, 'resolution', None)
    if resolution is not None:
        kwargs.update(height=resolution, width=resolution)
    for name in _TEXT_ENCODING_ARGS:  # the backbone's text encoding, where it sets one
        value = getattr(backbone, name, None)
        if value is not None:
            kwargs[name] = list(value) if isinstance(value, tuple) else value
    return {k: v for k, v in kwargs.items() if k in call}
