"""Print the reward-hacking monitors of finished stage-2 runs as one Markdown table.

    python tools/monitor_traces.py WORK_DIR [WORK_DIR ...] [--epochs 0 100 200 400]

``WORK_DIR`` is a stage's work dir (``<pipeline work dir>/<stage>``) or a pipeline's work dir
(every stage under it with monitor scalars). The values are read from the scalars the visualizer's
local backend wrote (``<run>/vis_data/scalars.json``, the same values TensorBoard holds); a cell
ends in ``!`` where that monitor fired (the run's ``monitor/firing`` names none, so the mark is
recomputed from the thresholds of the run's config).
"""

from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import sys

from tabulate import tabulate

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.engine.hooks.monitors import THRESHOLD_DEFAULTS  # noqa: E402

COLUMNS = ('drift', 'diversity_ratio', 'x0_norm_ratio', 'saturation_shift', 'brightness_shift',
           'edge_energy_ratio', 'rare_colour_shift', 'reward_gap', 'reward_train', 'firing')


def read_traces(stage_dir: str) -> dict[int, dict[str, float]]:
    """``{epoch: {monitor: value}}`` of the latest run under ``stage_dir``."""
    files = sorted(glob.glob(osp.join(stage_dir, '*', 'vis_data', 'scalars.json')))
    traces: dict[int, dict[str, float]] = {}
    for path in files[-1:]:
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                values = {k[len('monitor/'):]: v for k, v in row.items()
                          if k.startswith('monitor/')}
                if values:
                    traces.setdefault(int(row['step']), {}).update(values)
    return traces


def _thresholds(stage_dir: str) -> dict:
    from mmengine.config import Config

    configs = sorted(glob.glob(osp.join(stage_dir, '*.py')))
    hooks = Config.fromfile(configs[0]).get('custom_hooks', []) if configs else []
    spec = next((h for h in hooks if h.get('type') == 'RewardHackingMonitorHook'), {})
    return {**THRESHOLD_DEFAULTS, **(spec.get('thresholds') or {})}


def _cell(name: str, value: float, thr: dict) -> str:
    from rtdmd.engine.hooks.monitors import MONITORS

    text = f'{0.0 if abs(value) < 1e-9 else value:.3g}'  # rounding residue of an exact zero
    if name in MONITORS:
        key, kind, _ = MONITORS[name]
        t = thr[key]
        fired = t is not None and {'max': value > t, 'min': value < t, 'abs': abs(value) > t,
                                   'ratio': not 1 / t <= value <= t}[kind]
        text += ' !' if fired else ''
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dirs', nargs='+')
    parser.add_argument('--epochs', type=int, nargs='*', help='rows to show (default: all)')
    args = parser.parse_args(argv)
    rows = []
    for work_dir in args.work_dirs:
        stages = [work_dir] if read_traces(work_dir) else sorted(
            d for d in glob.glob(osp.join(work_dir, '*')) if osp.isdir(d) and read_traces(d))
        if not stages:
            print(f'error: no monitor scalars under {work_dir!r}', file=sys.stderr)
            return 1
        for stage in stages:
            thr = _thresholds(stage)
            for epoch, values in sorted(read_traces(stage).items()):
                if args.epochs and epoch not in args.epochs:
                    continue
                rows.append([osp.basename(stage.rstrip('/')), epoch, *(
                    _cell(c, values[c], thr) if c in values else '-' for c in COLUMNS)])
    print(tabulate(rows, headers=['run', 'epoch', *COLUMNS], tablefmt='github'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
