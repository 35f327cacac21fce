"""A pipeline's documented acceptance bounds, checked against its evaluation.

A bound is declarative (no expression is evaluated from a config):
``dict(model='rtdmd', metric='mean_reward', minus='ac_dmd.mean_reward', min=0.15)`` checks
``metrics['rtdmd']['mean_reward'] - metrics['ac_dmd']['mean_reward'] >= 0.15``; ``minus`` names
another column of the same model (``'mean_reward_target'``) or ``'<model>.<column>'``.
"""

from __future__ import annotations

import math
from typing import Any

BOUND_KEYS = frozenset({'model', 'metric', 'minus', 'min', 'max'})


def check_bounds(bounds: list[dict], models: list[str]) -> list[str]:
    """Errors of ``evaluation.bounds`` (known keys, a model of the table, a min or a max)."""
    errors = []
    for i, bound in enumerate(bounds or []):
        where = f'evaluation.bounds[{i}]'
        if not isinstance(bound, dict):
            errors.append(f'{where}: expected dict(model, metric, minus=None, min=None, '
                          f'max=None), got {bound!r}')
            continue
        unknown = set(bound) - BOUND_KEYS
        if unknown:
            errors.append(f'{where}: unknown keys {sorted(unknown)}; valid: {sorted(BOUND_KEYS)}')
        if 'model' not in bound or 'metric' not in bound:
            errors.append(f'{where}: needs model and metric')
        elif bound['model'] not in models:
            errors.append(f"{where}.model: {bound['model']!r} is not evaluated ({models})")
        minus = bound.get('minus')
        if minus and '.' in minus and minus.split('.')[0] not in models:
            errors.append(f'{where}.minus: {minus!r} names a model that is not evaluated')
        if bound.get('min') is None and bound.get('max') is None:
            errors.append(f'{where}: give min, max or both')
    return errors


def _value(metrics: dict[str, dict[str, float]], model: str, column: str) -> float:
    row = metrics.get(model, {})
    return float(row[column]) if column in row and row[column] is not None else math.nan


def evaluate_bounds(bounds: list[dict], metrics: dict[str, dict[str, float]]
                    ) -> list[dict[str, Any]]:
    """One row per bound: ``check``, ``bound``, ``measured`` and ``met`` (a missing or
    non-finite figure is not met)."""
    rows = []
    for bound in bounds or []:
        model, metric, minus = bound['model'], bound['metric'], bound.get('minus')
        value, check = _value(metrics, model, metric), f'{model}: {metric}'
        if minus:
            other_model, column = minus.split('.', 1) if '.' in minus else (model, minus)
            value -= _value(metrics, other_model, column)
            check += f' - {minus}'
        low, high = bound.get('min'), bound.get('max')
        met = math.isfinite(value) and (low is None or value >= low) and (
            high is None or value <= high)
        text = (f'in [{low:g}, {high:g}]' if low is not None and high is not None else
                f'>= {low:g}' if low is not None else f'<= {high:g}')
        rows.append(dict(check=check, bound=text, measured=value, met=bool(met)))
    return rows


def format_bounds(rows: list[dict[str, Any]]) -> str:
    """Markdown table of :func:`evaluate_bounds`' rows and a one-line verdict."""
    from tabulate import tabulate

    table = tabulate([[r['check'], r['bound'], r['measured'], 'yes' if r['met'] else 'NO']
                      for r in rows], headers=['check', 'bound', 'measured', 'met'],
                     tablefmt='github', floatfmt='.3f')
    missed = [r['check'] for r in rows if not r['met']]
    verdict = (f'all {len(rows)} documented bounds met' if not missed else
               f'{len(missed)} of {len(rows)} documented bounds missed: {missed}')
    return f'{table}\n\n{verdict}'
