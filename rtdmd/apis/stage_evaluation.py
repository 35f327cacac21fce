"""Sample every model of a pipeline from its final checkpoint and compare them."""

from __future__ import annotations

import os.path as osp
from collections.abc import Callable
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from rtdmd.evaluation.analytic_report import evaluate_models, format_table
from rtdmd.evaluation.bounds import check_bounds, evaluate_bounds, format_bounds
from rtdmd.evaluation.tensorboard_report import log_report
from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.registry import REWARDS
from rtdmd.utils.atomic import atomic_write_text
from rtdmd.utils.config import ConfigError

from .loading import load_trained_model
from .stages import latest_checkpoint

EVALUATION_DEFAULTS = dict(models=None, samples_per_class=4096, num_projections=256,
                           reference_draws=5, beta=None, beta_grid_max=2.0, seed=0, bounds=None)


def check_evaluation(evaluation: dict, stages: list[str]) -> None:
    """Known keys only; every model is ``'teacher'`` or a stage name."""
    if evaluation.get('kind') == 'shapes':  # the shapes world's table
        from rtdmd.evaluation.shapes_table import check_shapes_evaluation

        errors = check_shapes_evaluation(evaluation, stages)
        if errors:
            raise ConfigError(errors)
        return
    unknown = set(evaluation) - set(EVALUATION_DEFAULTS)
    if unknown:
        raise ConfigError([f'evaluation: unknown keys {sorted(unknown)}; valid: '
                           f'{sorted(EVALUATION_DEFAULTS)}'])
    bad = [m for m in evaluation.get('models') or [] if m != 'teacher' and m not in stages]
    if bad:
        raise ConfigError([f'evaluation.models: {bad} are neither teacher nor a stage '
                           f'({stages})'])
    errors = check_bounds(evaluation.get('bounds'), evaluation.get('models') or
                          ['teacher', *stages])
    if errors:
        raise ConfigError(errors)


def evaluate_stages(cfg: Config, stage_config: Callable[[str], Config],
                    stages: list[str]) -> dict[str, Any]:
    """Evaluate ``cfg.evaluation.models`` (``'teacher'`` or stage names) side by side.

    ``stage_config(name)`` gives a stage's resolved config; its final checkpoint is read from
    the stage's work dir.
    """
    check_evaluation(cfg.evaluation, stages)
    if cfg.evaluation.get('kind') == 'shapes':
        return _evaluate_shapes(cfg, stage_config)
    settings = {**EVALUATION_DEFAULTS, **cfg.evaluation}
    names = settings['models'] or ['teacher', *stages]
    teacher = GaussianMixtureTeacher.from_world(cfg.world.to_dict())
    reward = REWARDS.build(cfg.reward) if cfg.get('reward') else None
    n = settings['samples_per_class']
    classes = torch.arange(teacher.num_classes).repeat_interleave(n)
    samples = {}
    for name in names:
        if name == 'teacher':
            gen = torch.Generator().manual_seed(settings['seed'] + 7)
            samples[name] = (teacher.sample(classes, gen), classes)
            continue
        sub = stage_config(name)
        model, _ = load_trained_model(sub, latest_checkpoint(sub.work_dir))
        samples[name] = (model.generate(classes, seed=settings['seed']), classes)
        print_log(f'evaluation: sampled {name}', logger='current')
    out_dir = osp.join(cfg.work_dir, 'eval')
    metrics = evaluate_models(
        teacher, reward, samples, beta=settings['beta'],
        beta_grid_max=settings['beta_grid_max'], num_projections=settings['num_projections'],
        reference_draws=settings['reference_draws'], seed=settings['seed'], out_dir=out_dir)
    table = format_table(metrics)
    log_report(osp.join(out_dir, 'tensorboard'), metrics, table,
               {'samples': osp.join(out_dir, 'samples.png')})
    # The pipeline's result, at the top of its work dir and the last thing the run prints.
    if settings['bounds']:  # each documented figure against its bound, after the table
        table += '\n\n' + format_bounds(evaluate_bounds(settings['bounds'], metrics))
    table_path = osp.join(cfg.work_dir, 'table.md')
    atomic_write_text(table_path, table + '\n')
    print_log(f'evaluation written to {out_dir} (TensorBoard: {out_dir}/tensorboard); '
              f'comparison ({table_path}):\n{table}', logger='current')
    return metrics


def _evaluate_shapes(cfg: Config, stage_config: Callable[[str], Config]) -> dict[str, Any]:
    """The shapes world's table (:mod:`rtdmd.evaluation.shapes_table`)."""
    from rtdmd.evaluation.shapes_table import (
        SHAPES_EVALUATION_DEFAULTS,
        evaluate_shapes_models,
        format_shapes_table,
        shapes_samplers,
    )

    settings = {**SHAPES_EVALUATION_DEFAULTS, **cfg.evaluation.to_dict()}

    def load_stage(name: str) -> torch.nn.Module:
        sub = stage_config(name)
        return load_trained_model(sub, latest_checkpoint(sub.work_dir))[0]

    out_dir = osp.join(cfg.work_dir, 'eval')
    with torch.no_grad():
        metrics = evaluate_shapes_models(shapes_samplers(cfg, settings, load_stage), settings,
                                         out_dir)
    print_log('\n' + format_shapes_table(metrics), logger='current')
    print_log(f'evaluation written to {out_dir}', logger='current')
    return metrics
