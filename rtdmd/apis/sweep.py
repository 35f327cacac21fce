"""Ablation grids: a sweep spec, its points, their ``--cfg-options`` and the results table.

A sweep file is a Python config holding one dict ``sweep`` (``configs/ablations/*`` are examples):
``config`` (the experiment, relative to the sweep file), ``axes`` (``name=dict(values=[...],
keys=[...])``: each value is set on every key), ``cfg_options`` (common to all points) and
``metrics`` (``'model.metric'`` of a pipeline's ``eval/metrics.json`` or ``'metric'`` of a flat
``metrics.json``). Each point of the axes' Cartesian product runs in ``<work_dir>/<axis>=<value>,
...``; ``tools/sweep.py`` drives the runs.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os.path as osp
from dataclasses import dataclass
from typing import Any

from mmengine.config import Config, DictAction

from rtdmd.utils.config_refs import REFERENCE

SWEEP_KEYS = {'config': True, 'axes': True, 'cfg_options': False, 'metrics': True}  # required?
AXIS_KEYS = ('values', 'keys')


class SweepError(ValueError):
    """A sweep spec, a point's config or the requested metrics are wrong."""


@dataclass(frozen=True)
class Point:
    """One grid point: its directory name, one value per axis, and the keys those values set."""

    name: str
    values: tuple
    options: dict


@dataclass
class Sweep:
    """A validated sweep spec (``config`` is an absolute path)."""

    config: str
    axes: dict[str, dict]
    cfg_options: dict
    metrics: list[str]

    def points(self) -> list[Point]:
        """The Cartesian product of the axes, first axis slowest."""
        points = []
        for combo in itertools.product(*(a['values'] for a in self.axes.values())):
            pairs = list(zip(self.axes.items(), combo, strict=True))
            name = ','.join(f'{axis}={value_label(v)}' for (axis, _), v in pairs)
            options = {key: v for (_, axis), v in pairs for key in axis['keys']}
            points.append(Point(name, combo, options))
        return points


@dataclass
class Job:
    """A point ready to run: its directory, all its options and what its config is."""

    point: Point
    work_dir: str
    options: dict  # the common options, then the point's keys (which win)
    pipeline: bool  # a config with `stages` (metrics in eval/metrics.json)
    max_iters: int | None


def load_sweep(path: str) -> Sweep:
    """Read and strictly validate a sweep file; every problem is reported at once."""
    if not osp.isfile(path):
        raise SweepError(f'sweep file not found: {path!r}')
    cfg = Config.fromfile(path).to_dict()
    errors = [f'{k}: unknown top-level key (a sweep file holds `sweep` only)'
              for k in cfg if k != 'sweep' and not k.startswith('_')]
    spec = cfg.get('sweep')
    if not isinstance(spec, dict):
        raise SweepError(f'{path}: needs a top-level dict `sweep`; ' + '; '.join(errors))
    valid = ', '.join(SWEEP_KEYS)
    errors += [f'sweep.{k}: unknown key; valid: {valid}' for k in spec if k not in SWEEP_KEYS]
    errors += [f'sweep.{k}: missing (valid keys: {valid})'
               for k, required in SWEEP_KEYS.items() if required and k not in spec]
    axes = spec.get('axes', {})
    if 'axes' in spec and (not isinstance(axes, dict) or not axes):
        errors.append('sweep.axes: a non-empty dict(name=dict(values=[...], keys=[...]))')
        axes = {}
    for name, axis in axes.items():
        errors += _axis_errors(name, axis)
    keys = [k for a in axes.values() if isinstance(a, dict) for k in a.get('keys') or []]
    errors += [f'sweep.axes: key {k!r} is set by two axes' for k in sorted(set(keys))
               if keys.count(k) > 1]
    metrics = spec.get('metrics', ['-'])
    if not isinstance(metrics, list) or not metrics or not all(
            isinstance(m, str) for m in metrics):
        errors.append("sweep.metrics: a non-empty list of 'model.metric' or 'metric' names")
    if not isinstance(spec.get('cfg_options') or {}, dict):
        errors.append("sweep.cfg_options: a dict {'dotted.key': value}")
    config = osp.normpath(osp.join(osp.dirname(osp.abspath(path)), str(spec.get('config'))))
    if 'config' in spec and not osp.isfile(config):
        errors.append(f'sweep.config: {config} does not exist')
    if errors:
        raise SweepError(f'sweep file {path}:\n  - ' + '\n  - '.join(errors))
    sweep = Sweep(config, axes, dict(spec.get('cfg_options') or {}), list(metrics))
    names = [p.name for p in sweep.points()]
    if len(set(names)) < len(names):
        raise SweepError(f'two points share a directory name: {names}')
    return sweep


def _axis_errors(name: str, axis: Any) -> list[str]:
    where = f'sweep.axes.{name}'
    if not str(name).isidentifier() or not isinstance(axis, dict):
        return [f'{where}: expected an identifier = dict(values=[...], keys=[...])']
    errors = [f'{where}.{k}: unknown key; valid: values, keys' for k in axis if k not in AXIS_KEYS]
    errors += [f'{where}.{k}: missing' for k in AXIS_KEYS if k not in axis]
    values, keys = axis.get('values', [None]), axis.get('keys', ['-'])
    if not isinstance(values, (list, tuple)) or not values:
        errors.append(f'{where}.values: a non-empty list')
    else:
        for value in values if 'values' in axis else []:
            try:
                format_value(value)
            except SweepError as err:
                errors.append(f'{where}.values: {err}')
    if not isinstance(keys, (list, tuple)) or not keys or not all(
            isinstance(k, str) and k for k in keys):
        errors.append(f'{where}.keys: a non-empty list of dotted config keys')
    return errors


def format_value(value: Any) -> str:
    """``value`` as mmengine's ``DictAction`` reads it back (checked): ``[1,2]``, ``"a"``, ``None``.

    Raises:
        SweepError: the value would not come back unchanged (a dict, a string with spaces or
            commas, a string that reads as a number or None, ...).
    """
    if isinstance(value, (list, tuple)):
        brackets = '[]' if isinstance(value, list) else '()'
        text = brackets[0] + ','.join(format_value(v) for v in value) + brackets[1]
    elif isinstance(value, str):
        text = f'"{value}"'
    elif value is None or isinstance(value, (bool, int, float)):
        text = repr(value)
    else:
        raise SweepError(f'{value!r}: --cfg-options carries numbers, strings, None, lists, tuples')
    parsed = DictAction._parse_iterable(text)
    if not _same(parsed, value):
        raise SweepError(f'{value!r} cannot pass through --cfg-options '
                         f'(mmengine DictAction reads {text} back as {parsed!r})')
    return text


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):  # True == 1, but not for a config
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    return a == b


def format_options(options: dict) -> list[str]:
    """``key=value`` arguments for ``--cfg-options``."""
    return [f'{key}={format_value(value)}' for key, value in options.items()]


def value_label(value: Any) -> str:
    """A value as it appears in a point's directory name and in the results table; a config
    reference (``'${backbones.sd3}'``) by its last key (``sd3``)."""
    if isinstance(value, str) and (ref := REFERENCE.match(value)):
        return ref.group(1).rsplit('.', 1)[-1]
    return format_value(value).replace('"', '').replace('/', '_')


def plan_jobs(sweep: Sweep, work_dir: str, common: dict,
              points: list[Point] | None = None) -> list[Job]:
    """One job per point (``points``: these only, default the whole grid); every point's config,
    and each of its stages', loads and validates."""
    from rtdmd.apis.pipeline import check_pipeline
    from rtdmd.apis.stages import split_stage_options
    from rtdmd.utils.config import load_config

    jobs, errors = [], []
    for point in sweep.points() if points is None else points:
        options = {**common, **point.options}
        point_dir = osp.join(work_dir, point.name)
        where = point.name
        try:
            format_options(options)
            cfg = load_config(sweep.config, split_stage_options(options)[0])
            cfg.work_dir = point_dir
            check_pipeline(cfg, options)  # validates every stage too
        except (ValueError, KeyError, TypeError, OSError) as err:  # ConfigError, SweepError, ...
            errors.append(f'{where}: {err}')
            continue
        max_iters = (cfg.get('train_cfg') or {}).get('max_iters')
        jobs.append(Job(point, point_dir, options, bool(cfg.get('stages')), max_iters))
    if errors:
        raise SweepError('invalid points:\n' + '\n'.join(errors))
    return jobs


def metrics_file(job: Job) -> str:
    """Where a point's metrics land: the pipeline's evaluation, or tools/test.py's file."""
    return osp.join(job.work_dir, *(['eval'] if job.pipeline else []), 'metrics.json')


def read_metrics(path: str) -> dict[str, Any]:
    """A metrics.json flattened to ``{'model.metric': v}`` (pipelines) or ``{'metric': v}``."""
    with open(path) as f:
        data = json.load(f)
    flat = {}
    for key, value in data.items():  # '_settings' and the like are no metrics
        if not key.startswith('_'):
            nested = isinstance(value, dict)
            flat.update({f'{key}.{k}': v for k, v in value.items()} if nested else {key: value})
    return flat


def collect(sweep: Sweep, results: dict[str, dict]) -> list[dict]:
    """One row per point, ``{axis: label, ..., metric: value or None}``.

    ``results`` maps point names to their flattened metrics (failed points are absent).

    Raises:
        SweepError: a requested metric is in no point's results (lists the available ones).
    """
    available = set().union(*results.values())
    missing = [m for m in sweep.metrics if m not in available]
    if results and missing:
        raise SweepError(f"sweep.metrics {missing} are in no point's metrics file; "
                         f'available: {sorted(available)}')
    return [{**{axis: value_label(v) for axis, v in zip(sweep.axes, point.values, strict=True)},
             **{m: results.get(point.name, {}).get(m) for m in sweep.metrics}}
            for point in sweep.points()]


def write_results(work_dir: str, sweep: Sweep, rows: list[dict]) -> str:
    """Write ``results.md`` (3 decimals), ``results.csv`` and ``results.png``; return the table."""
    def cell(value: Any) -> str:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return f'{value:.3f}' if number else '-' if value is None else str(value)

    columns = [*sweep.axes, *sweep.metrics]
    lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(cell(row[c]) for c in columns) + ' |' for row in rows]
    table = '\n'.join(lines) + '\n'
    with open(osp.join(work_dir, 'results.md'), 'w') as f:
        f.write(table)
    with open(osp.join(work_dir, 'results.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: '' if v is None else v for k, v in row.items()} for row in rows)
    plot_results(osp.join(work_dir, 'results.png'), sweep, rows)
    return table


def plot_results(path: str, sweep: Sweep, rows: list[dict]) -> None:
    """Per metric: a heatmap for two axes, else lines over the first axis (one per combination
    of the other axes). Each panel names its metric on the y axis (the colour bar of a
    heatmap); limits span at least 10% of the largest magnitude (:func:`value_limits`), so
    differences of a fraction of a percent do not fill the panel like cliffs."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    axes = list(sweep.axes)
    labels = [[value_label(v) for v in sweep.axes[a]['values']] for a in axes]
    per_x = len(rows) // len(labels[0])  # rows per first-axis value (first axis slowest)
    ncols = min(3, len(sweep.metrics))
    nrows = math.ceil(len(sweep.metrics) / ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, metric in zip(grid.flat, sweep.metrics, strict=False):
        values = [row[metric] for row in rows]
        values = [float(v) if isinstance(v, (int, float)) else math.nan for v in values]
        limits = value_limits(values)
        ax.set_title(metric)
        ax.set_xlabel(axes[-1] if len(axes) == 2 else axes[0])
        if len(axes) == 2:
            image = ax.imshow([values[i * per_x:(i + 1) * per_x] for i in range(len(labels[0]))],
                              cmap='viridis', aspect='auto', vmin=limits[0], vmax=limits[1])
            for k, v in enumerate(values):
                ax.text(k % per_x, k // per_x, '-' if math.isnan(v) else f'{v:.3f}',
                        ha='center', va='center', color='w', fontsize=8)
            ax.set_xticks(range(per_x), labels[1])
            ax.set_yticks(range(len(labels[0])), labels[0])
            ax.set_ylabel(axes[0])
            fig.colorbar(image, ax=ax, label=metric)
            continue
        for k in range(per_x):  # one line per combination of the other axes
            label = ','.join(f'{a}={rows[k][a]}' for a in axes[1:]) or None
            ax.plot(range(len(labels[0])), values[k::per_x], marker='o', label=label)
        ax.set_xticks(range(len(labels[0])), labels[0])
        ax.set_ylabel(metric)
        ax.set_ylim(*limits)
        ax.grid(alpha=0.3)
        if len(axes) > 2:
            ax.legend(fontsize=7)
    for ax in list(grid.flat)[len(sweep.metrics):]:
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def value_limits(values: list[float], min_span: float = 0.1, pad: float = 0.08
                 ) -> tuple[float, float]:
    """Axis limits of ``values`` (NaN ignored): their range, widened around its centre to at
    least ``min_span`` times the largest magnitude, then padded by ``pad`` of the span."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    span = max(high - low, min_span * max(abs(low), abs(high)), 1e-12)
    centre = (low + high) / 2
    half = (0.5 + pad) * span
    return centre - half, centre + half
