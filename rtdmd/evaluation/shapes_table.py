"""The shapes world's results table: the teacher and a pipeline's students on held-out prompts.

A pipeline config declares it as the analytic world declares its report::

    evaluation = dict(kind='shapes', models=['teacher', 'ac_dmd', 'rtdmd'], per_tag=16,
                      seeds=[0, 1], teacher=[dict(steps=28, guidance_scale=4.0),
                                             dict(steps=4, guidance_scale=4.0)])

``'teacher'`` stands for one row per ``teacher`` setting (Euler steps with real CFG through the
backbone's teacher role); a stage name for that stage's final checkpoint (its EMA generator and
its own 4-step CPS sampler). Every model samples the same prompts with the same per-sample seeds
(``1000 * seed + i``), so rows differ by the model only. Figures:
:func:`~rtdmd.evaluation.shapes_report.summarise_record` on the images of all seeds together
(the fidelity distance on the pooled set), with 95 % bootstrap intervals over the prompts
(:func:`~rtdmd.evaluation.shapes_bootstrap.bootstrap_rows`, ``bootstrap`` resamples, stratified
by tag), plus the NFE (network evaluations per image: CFG doubles the teacher's). Written to
``<work_dir>/eval``: ``metrics.json`` (figures, standard errors, interval ends ``<column>_low``
and ``<column>_high``), ``table.md``, ``grid.png`` (one row per model: the first prompt of each
tag, first seed) and ``scores.npz``, every model's per-image record, from which
``tools/shapes_table.py`` pools the runs of a sweep (:func:`pooled_table`).
"""

from __future__ import annotations

import glob
import os
import os.path as osp
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rtdmd.rewards.geneval_rules import TAGS
from rtdmd.utils.atomic import atomic_write, atomic_write_json, atomic_write_text

from .shapes_bootstrap import FIELDS, bootstrap_rows

SHAPES_EVALUATION_DEFAULTS = dict(
    kind='shapes', models=None, split='heldout', per_tag=16, seeds=[0], bootstrap=1000,
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
    if int(evaluation.get('bootstrap', 1000)) < 1:
        errors.append('evaluation.bootstrap (resamples of the intervals) must be >= 1')
    return errors


def teacher_row_name(setting: dict) -> str:
    return f"teacher_{setting['steps']}steps_cfg{setting['guidance_scale']:g}"


def evaluate_shapes_models(samplers: dict[str, tuple[Callable, int]], settings: dict,
                           out_dir: str) -> dict[str, dict[str, float]]:
    """Sample and score every model; write the table and the per-image scores.

    Args:
        samplers: ``{row name: (sample(prompts, seeds) -> images, nfe)}``, in table order.
        settings: the evaluation section with its defaults applied.
        out_dir: where ``metrics.json``, ``table.md``, ``grid.png`` and ``scores.npz`` go.
    """
    from mmengine.logging import print_log

    from rtdmd.datasets.shapes import ShapesPromptDataset

    from .shapes_report import score_record, summarise_record

    data = ShapesPromptDataset(settings['split'], per_tag=int(settings['per_tag']))
    prompts = [it['prompt'] for it in data.items]
    metadata = [it['metadata'] for it in data.items]
    seeds = settings['seeds']
    metrics, records, grid = {}, {}, []
    for name, (sample, nfe) in samplers.items():
        images = torch.cat([sample(prompts, [1000 * int(s) + i for i in range(len(prompts))])
                            for s in seeds])
        records[name] = score_record(images, metadata * len(seeds),
                                     np.tile(np.arange(len(prompts)), len(seeds)))
        metrics[name] = dict(summarise_record(records[name]), nfe=nfe)
        grid.append(images[:len(prompts)][::int(settings['per_tag'])])
        print_log(f'evaluation: {name}: strict {metrics[name]["strict"]:.3f}', logger='current')
    for name, row in bootstrap_rows([records], int(settings['bootstrap'])).items():
        metrics[name].update(_interval_ends(row))
    os.makedirs(out_dir, exist_ok=True)
    save_scores(osp.join(out_dir, 'scores.npz'), records, {n: m['nfe'] for n, m in metrics.items()})
    write_table(out_dir, metrics, settings, grid)
    return metrics


def _interval_ends(row: dict[str, dict[str, float]]) -> dict[str, float]:
    """``<column>_low`` and ``<column>_high`` of a :func:`bootstrap_rows` row, as the table
    reads them."""
    return {f'{c}_{end}': cell[end] for c, cell in row.items() for end in ('low', 'high')}


def save_scores(path: str, records: dict[str, dict[str, np.ndarray]], nfe: dict[str, int]
                ) -> None:
    """Every model's record (:data:`~rtdmd.evaluation.shapes_bootstrap.FIELDS`) and NFE, as
    ``<model>/<field>`` arrays of one ``.npz`` (written atomically; no pickles)."""
    arrays = {f'{name}/{field}': np.asarray(record[field]) for name, record in records.items()
              for field in FIELDS}
    arrays.update({f'{name}/nfe': np.asarray(nfe[name]) for name in records})
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_scores(path: str) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
    """``(records, nfe)`` of a :func:`save_scores` file, models in their table order."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    models = list(dict.fromkeys(k.rsplit('/', 1)[0] for k in arrays))
    records, nfe = {}, {}
    for name in models:
        missing = [f for f in (*FIELDS, 'nfe') if f'{name}/{f}' not in arrays]
        if missing:
            raise ValueError(f'{path}: model {name!r} lacks {missing}; is it a scores.npz '
                             f'written by the shapes evaluation?')
        records[name] = {f: arrays[f'{name}/{f}'] for f in FIELDS}
        nfe[name] = int(arrays[f'{name}/nfe'])
    return records, nfe


def _number(col: str, value: float) -> str:
    return f'{value:.1f}' if col == 'fidelity' else f'{value:.3f}'  # a distance, or a rate


def _cell(m: dict[str, float], col: str) -> str:
    if col not in m:
        return '-'
    if col == 'nfe':
        return str(int(m[col]))
    if f'{col}_low' in m:
        return (f'{_number(col, m[col])} [{_number(col, m[f"{col}_low"])}, '
                f'{_number(col, m[f"{col}_high"])}]')
    return _number(col, m[col])


def format_shapes_table(metrics: dict[str, dict[str, float]]) -> str:
    """Markdown, one row per model: each figure with its 95 % bootstrap interval."""
    cols = [c for c in COLUMNS if any(c in m for m in metrics.values())]
    lines = ['| model | ' + ' | '.join(cols) + ' |', '|---' * (len(cols) + 1) + '|']
    lines += [f'| {name} | ' + ' | '.join(_cell(m, c) for c in cols) + ' |'
              for name, m in metrics.items()]
    return '\n'.join(lines)


def write_table(out_dir: str, metrics: dict[str, dict[str, float]], settings: dict,
                grid: Sequence[Tensor]) -> None:
    from torchvision.utils import save_image

    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(osp.join(out_dir, 'metrics.json'), {**metrics, '_settings': settings})
    atomic_write_text(osp.join(out_dir, 'table.md'), format_shapes_table(metrics) + '\n')
    save_image(torch.cat(list(grid)), osp.join(out_dir, 'grid.png'), nrow=len(grid[0]),
               padding=1, pad_value=1.0)


def find_scores(roots: Sequence[str]) -> list[str]:
    """Every ``scores.npz`` below ``roots`` (directories, searched recursively) or the files
    named, sorted."""
    found = []
    for root in roots:
        if osp.isfile(root):
            found.append(root)
        elif osp.isdir(root):
            found += sorted(glob.glob(osp.join(root, '**', 'scores.npz'), recursive=True))
        else:
            raise FileNotFoundError(f'{root}: neither a scores.npz nor a directory')
    if not found:
        raise FileNotFoundError(f'no scores.npz below {list(roots)}: run the shapes '
                                f'evaluation first (tools/train.py on a shapes pipeline)')
    return found


def pooled_table(paths: Sequence[str], num_resamples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> str:
    """Markdown of the runs in ``paths`` pooled (one training run per ``scores.npz``).

    Each cell is the mean over runs with its bootstrap interval over prompts and runs
    (:func:`~rtdmd.evaluation.shapes_bootstrap.bootstrap_rows`); a second table gives each
    model's range over the runs.
    """
    loaded = [load_scores(p) for p in paths]
    runs = [records for records, _ in loaded]
    nfe = {name: n for _, table in loaded for name, n in table.items()}
    rows = bootstrap_rows(runs, num_resamples, confidence, seed)
    metrics = {name: {'nfe': nfe[name], **{c: v['mean'] for c, v in row.items()},
                      **_interval_ends(row)} for name, row in rows.items()}
    spread_cols = ('strict', 'partial', 'soft', 'fidelity', 'clean')
    spread = ['| model | runs | ' + ' | '.join(spread_cols) + ' |',
              '|---' * (len(spread_cols) + 2) + '|']
    for name, row in rows.items():
        spread.append(f'| {name} | {row["strict"]["runs"]} | ' + ' | '.join(
            f'{_number(c, row[c]["run_min"])} - {_number(c, row[c]["run_max"])}'
            for c in spread_cols) + ' |')
    return (format_shapes_table(metrics) + f'\n\n{len(paths)} runs; mean over runs '
            f'[{confidence:.0%} bootstrap interval over prompts and runs].\n\n'
            + '\n'.join(spread) + '\n\nRange over runs (min - max).')


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
           'find_scores', 'format_shapes_table', 'load_scores', 'pooled_table', 'save_scores',
           'shapes_samplers', 'teacher_row_name']
