"""Pass criteria of the robustness benchmark and its tables (per world and aggregate).

A world's evaluation (``analytic_report.evaluate_models``) holds a ``teacher`` row (exact
samples), a stage-1 row and one or more stage-2 rows. The criteria (``Criteria``):

- **stage 1**: ``sw2_teacher / sw2_floor <= 1.5`` and ``off_support <= 2 x`` the exact teacher's
  (its fresh exact samples' ``off_support``);
- **stage 2**: on the tilted family (``sw2_family / sw2_floor_family <= 2``: the floor is that of
  exact sets of the fitted member itself), tilted (``beta_hat >= beta_grid_max / 100`` and not
  at the search bound), ``off_support <= 2 x`` the exact member's (a strong tilt leaves the
  teacher's support legitimately), and the mean reward within ``0.1`` of the member's reward
  standard deviation of the member's exact mean reward (``|gap_z| <= 0.1``).

Why ``0.1`` standard deviations: a model on the family within the SW2 bound can still be
shifted; a pure mean shift ``delta`` along a unit reward direction raises ``SW2^2`` by about
``delta^2 / d``, so ``SW2 <= 2 x floor`` allows ``delta`` up to about ``sqrt(3 d) x floor``
(0.13-0.26 at the floor 0.075 and d = 2-4), i.e. 0.06-0.12 of a typical reward spread (~2).
Off-support ratios divide by at least ``1 / n`` (one sample) so that an empty reference does not
divide by zero.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import os.path as osp
from typing import Any

import numpy as np
from tabulate import tabulate


@dataclasses.dataclass(frozen=True)
class Criteria:
    """The thresholds of the module docstring."""

    stage1_sw2_ratio: float = 1.5
    stage1_off_ratio: float = 2.0
    stage2_sw2_ratio: float = 2.0
    stage2_off_ratio: float = 2.0
    min_beta_fraction: float = 0.01
    reward_gap_z: float = 0.1


def _ratio(num: float, den: float, n: int) -> float:
    return float(num) / max(float(den), 1.0 / n)


def stage1_checks(teacher: dict[str, float], model: dict[str, float], n: int,
                  crit: Criteria) -> dict[str, Any]:
    """Figures and pass flags of a stage-1 row against the teacher row (``n`` samples)."""
    sw2 = model['sw2_teacher'] / model['sw2_floor']
    off = _ratio(model['off_support'], teacher['off_support'], n)
    return dict(sw2_ratio=sw2, off_ratio=off, mode_tv=model['mode_tv_teacher'],
                pass_sw2=sw2 <= crit.stage1_sw2_ratio, pass_off=off <= crit.stage1_off_ratio,
                passed=sw2 <= crit.stage1_sw2_ratio and off <= crit.stage1_off_ratio)


def stage2_checks(model: dict[str, float], beta_grid_max: float, n: int,
                  crit: Criteria) -> dict[str, Any]:
    """Figures and pass flags of a stage-2 row against its fitted family member."""
    sw2 = model['sw2_family'] / model['sw2_floor_family']
    off = _ratio(model['off_support'], model['off_support_target'], n)
    gap = model['mean_reward'] - model['mean_reward_target']
    gap_z = gap / model['reward_std_target'] if model['reward_std_target'] > 0 else math.inf
    tilted = (model['beta_hat'] >= crit.min_beta_fraction * beta_grid_max
              and not model['beta_hat_at_bound'])
    flags = dict(pass_sw2=sw2 <= crit.stage2_sw2_ratio, pass_tilt=bool(tilted),
                 pass_off=off <= crit.stage2_off_ratio, pass_reward=abs(gap_z) <= crit.reward_gap_z)
    return dict(sw2_ratio=sw2, beta_hat=model['beta_hat'], off_ratio=off, reward_gap=gap,
                reward_gap_z=gap_z, mean_reward=model['mean_reward'], **flags,
                passed=all(flags.values()))


def world_checks(metrics: dict[str, dict[str, float]], stage1: str, stage2_rows: list[str],
                 beta_grid_max: float, n: int, crit: Criteria | None = None
                 ) -> dict[str, dict[str, Any]]:
    """``{row: checks}`` for the stage-1 row and every stage-2 row of one world."""
    crit = crit or Criteria()
    out = {stage1: stage1_checks(metrics['teacher'], metrics[stage1], n, crit)}
    for row in stage2_rows:
        out[row] = stage2_checks(metrics[row], beta_grid_max, n, crit)
    return out


STAGE1_COLS = ('sw2_ratio', 'off_ratio', 'mode_tv', 'passed')
STAGE2_COLS = ('sw2_ratio', 'beta_hat', 'off_ratio', 'reward_gap_z', 'passed')


def world_rows(results: list[dict]) -> list[dict[str, Any]]:
    """One flat row per world: ``seed``, ``world``, ``<row>.<figure>`` and the run time."""
    rows = []
    for res in results:
        row: dict[str, Any] = dict(seed=res['seed'], world=res['world'], status=res['status'])
        for name, checks in (res.get('checks') or {}).items():
            cols = STAGE1_COLS if name == res['stage1'] else STAGE2_COLS
            row.update({f'{name}.{c}': checks[c] for c in cols})
        row['minutes'] = res.get('wall_s', float('nan')) / 60
        rows.append(row)
    return rows


def aggregate(results: list[dict]) -> list[dict[str, Any]]:
    """Per stage row: pass rate of every criterion and overall, medians of the ratios."""
    names: list[str] = []
    for res in results:
        names += [n for n in (res.get('checks') or {}) if n not in names]
    out = []
    for name in names:
        checks = [res['checks'][name] for res in results if name in (res.get('checks') or {})]
        failed = sum(1 for res in results if res['status'] != 'ok')
        total = len(checks) + failed  # a world that crashed counts as failed
        entry: dict[str, Any] = dict(row=name, worlds=total)
        for key in [k for k in checks[0] if k.startswith('pass')] + ['passed']:
            entry[f'{key}_rate'] = sum(bool(c[key]) for c in checks) / total
        for key in ('sw2_ratio', 'off_ratio', 'reward_gap_z'):
            if key in checks[0]:
                entry[f'median_{key}'] = float(np.median([c[key] for c in checks]))
        out.append(entry)
    return out


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return 'yes' if value else 'NO'
    if isinstance(value, float):
        return f'{value:.3f}'
    return value


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """GitHub markdown, floats to 3 decimals, booleans as yes / NO, missing as '-'."""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    body = [[_cell(r.get(c, '-')) for c in cols] for r in rows]
    return tabulate(body, headers=cols, tablefmt='github', disable_numparse=True)


def csv_text(rows: list[dict[str, Any]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _atomic_write(path: str, text: str) -> None:
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(work_dir: str, results: list[dict], settings: dict) -> str:
    """``results.{json,md,csv}`` in ``work_dir``: per-world rows and the aggregate; returns the
    markdown."""
    worlds, summary = world_rows(results), aggregate(results)
    cpu = sum(r.get('cpu_s', 0.0) for r in results)
    wall = sum(r.get('wall_s', 0.0) for r in results)
    timing = (f'{len(results)} worlds: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU of this '
              f'process (worlds read back from an earlier run count with their own times)')
    text = (f'## Pass rates\n\n{markdown_table(summary)}\n\n## Worlds\n\n'
            f'{markdown_table(worlds)}\n\n{timing}\n')
    os.makedirs(work_dir, exist_ok=True)
    _atomic_write(osp.join(work_dir, 'results.md'), text)
    _atomic_write(osp.join(work_dir, 'results.csv'), csv_text(worlds))
    _atomic_write(osp.join(work_dir, 'results.json'), json.dumps(
        dict(settings=settings, aggregate=summary, worlds=results), indent=2, default=str))
    return text
