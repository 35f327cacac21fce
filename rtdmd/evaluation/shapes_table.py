"""The shapes world's results table: the teacher and a pipeline's students on held-out prompts.

A pipeline config declares it as the analytic world declares its report::

    evaluation = dict(kind='shapes', models=['teacher', 'ac_dmd', 'rtdmd'], per_tag=16,
                      seeds=[0, 1], teacher=[dict(steps=28, guidance_scale=4.0),
                                             dict(steps=4, guidance_scale=4.0)])

``'teacher'`` stands for one row per ``teacher`` setting (Euler steps with real CFG through the
backbone's teacher role); a stage name for that stage's final checkpoint (its EMA generator and
its own 4-step CPS sampler). Every model samples the same prompts with the same per-sample seeds
(``1000 * seed + i``), so rows differ by the model only. Figures:
:func:`~rtdmd.evaluation.shapes_report.score_images` on the images of all seeds together
(means with standard errors; the fidelity distance on the pooled set), plus the NFE (network
evaluations per image: CFG doubles the teacher's). Written to ``<work_dir>/eval``:
``metrics.json``, ``table.md`` and ``grid.png`` (one row per model: the first prompt of each
tag, first seed).
"""

from __future__ import annotations

import os
import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from rtdmd.rewards.geneval_rules import TAGS
from rtdmd.utils.atomic import atomic_write_json, atomic_write_text

SHAPES_EVALUATION_DEFAULTS = dict(
    kind='shapes', models=None, split='heldout', per_tag=16, seeds=[0],
    teacher=[dict(steps=28, guidance_scale=4.0), dict(steps=4, guidance_scale=4.0)])
TEACHER_KEYS = ('steps', 'guidance_scale')
COLUMNS = ('nfe', *(f'strict/{t}' for t in TAGS), 'strict', 'partial', 'soft', 'fidelity',
           'clean')


def check_shapes_evaluation(evaluation: dict, stages: Sequence[str]) -> list[str]:
    """Errors of a shapes ``evaluation`` section (empty when it is valid)."""
    errors = []
    unknown = set(evaluation) - set(SHAPES_EVALUATION_DEFAULTS)
    if unknown:
        errors.append(f'evaluation: unknown keys {sorted(unknown)}; valid: '
                      f'{sorted(SHAPES_EVALUATION_DEFAULTS)}')
    bad = [m for m in evaluation.get('models') or [] if m != 'teacher' and m not in stages]
    if bad:
        errors.append(f'evaluation.models: {bad} are neither teacher nor a stage ({list(stages)})')
    for i, setting in enumerate(evaluation.get('teacher') or []):
        if set(setting) != set(TEACHER_KEYS) or int(setting['steps']) < 1:
            errors.append(f'evaluation.teacher[{i}]: expected dict(steps>=1, guidance_scale), '
                          f'got {setting}')
    seeds = evaluation.get('seeds', [0])
    if not seeds or len(set(seeds)) != len(seeds):
        errors.append(f'evaluation.seeds: a non-empty list of distinct ints, got {seeds}')
    if int(evaluation.get('per_tag', 16)) < 1:
        errors.append('evaluation.per_tag must be >= 1')
    return errors


def teacher_row_name(setting: dict) -> str:
    return f"teacher_{setting['steps']}steps_cfg{setting['guidance_scale']:g}"


def evaluate_shapes_models(samplers: dict[str, tuple[Callable, int]], settings: dict,
                           out_dir: str) -> dict[str, dict[str, float]]:
    """Sample and score every model; write the table.

    Args:
        samplers: ``{row name: (sample(prompts, seeds) -> images, nfe)}``, in table order.
        settings: the evaluation section with its defaults applied.
        out_dir: where ``metrics.json``, ``table.md`` and ``grid.png`` go.
    """
    from mmengine.logging import print_log

    from rtdmd.datasets.shapes import ShapesPromptDataset

    from .shapes_report import score_images

    data = ShapesPromptDataset(settings['split'], per_tag=int(settings['per_tag']))
    prompts = [it['prompt'] for it in data.items]
    metadata = [it['metadata'] for it in data.items]
    metrics, grid = {}, []
    for name, (sample, nfe) in samplers.items():
        images = torch.cat([sample(prompts, [1000 * int(s) + i for i in range(len(prompts))])
                            for s in settings['seeds']])
        metrics[name] = dict(score_images(images, metadata * len(settings['seeds'])), nfe=nfe)
        grid.append(images[:len(prompts)][::int(settings['per_tag'])])
        print_log(f'evaluation: {name}: strict {metrics[name]["strict"]:.3f}', logger='current')
    write_table(out_dir, metrics, settings, grid)
    return metrics


def format_shapes_table(metrics: dict[str, dict[str, float]]) -> str:
    """Markdown, one row per model: accuracies and rewards as mean +- standard error."""
    cols = [c for c in COLUMNS if any(c in m for m in metrics.values())]
    lines = ['| model | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
    for name, m in metrics.items():
        cells = []
        for col in cols:
            if col not in m:
                cells.append('-')
            elif col == 'nfe':
                cells.append(str(int(m[col])))
            elif f'{col}_se' in m:
                cells.append(f'{m[col]:.3f} ± {m[f"{col}_se"]:.3f}')
            else:
                cells.append(f'{m[col]:.3f}')
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def write_table(out_dir: str, metrics: dict[str, dict[str, float]], settings: dict,
                grid: Sequence[Tensor]) -> None:
    from torchvision.utils import save_image

    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(osp.join(out_dir, 'metrics.json'), {**metrics, '_settings': settings})
    atomic_write_text(osp.join(out_dir, 'table.md'), format_shapes_table(metrics) + '\n')
    save_image(torch.cat(list(grid)), osp.join(out_dir, 'grid.png'), nrow=len(grid[0]),
               padding=1, pad_value=1.0)


def shapes_samplers(cfg: Any, settings: dict, load_stage: Callable[[str], torch.nn.Module]
                    ) -> dict[str, tuple[Callable, int]]:
    """The rows of the table: each teacher setting, then each stage (``load_stage(name)``)."""
    from rtdmd.models.samplers.cps import EulerSampler
    from rtdmd.registry import MODELS

    from .generators import sample_per_seed

    rows: dict[str, tuple[Callable, int]] = {}
    names = settings['models'] or ['teacher', *[s['name'] for s in cfg.stages]]
    for name in names:
        if name == 'teacher':
            backbone = MODELS.build(cfg.backbone.to_dict()).eval()
            for setting in settings['teacher']:
                sampler = EulerSampler(num_steps=int(setting['steps']),
                                       guidance_scale=float(setting['guidance_scale']))
                nfe = int(setting['steps']) * (2 if setting['guidance_scale'] != 1 else 1)
                rows[teacher_row_name(setting)] = (
                    lambda p, s, sampler=sampler, net=backbone: sample_per_seed(
                        net, sampler, p, s, role='teacher'), nfe)
            continue
        model = load_stage(name)
        nfe = len(model.sampler.step_list) * (2 if model.sampler.guidance_scale != 1 else 1)
        rows[name] = (lambda p, s, model=model: sample_per_seed(model.backbone, model.sampler,
                                                                p, s), nfe)
    return rows


__all__ = ['SHAPES_EVALUATION_DEFAULTS', 'check_shapes_evaluation', 'evaluate_shapes_models',
           'format_shapes_table', 'shapes_samplers', 'teacher_row_name']
