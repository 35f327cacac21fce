"""Pool the shapes world's tables of several training runs, with bootstrap intervals.

    python tools/shapes_table.py work_dirs/ablations/shapes_seeds [--out table.md]
                                 [--resamples 1000] [--confidence 0.95] [--seed 0]

Every argument is a ``scores.npz`` (written by the shapes evaluation into ``<work_dir>/eval``)
or a directory searched for ``**/scores.npz`` (a sweep's work dir: one run per point). Each
row is a model's mean over the runs that have it, with a bootstrap interval that resamples the
held-out prompts within each tag and the runs
(:func:`rtdmd.evaluation.shapes_bootstrap.bootstrap_rows`), and a second table gives each
model's range over the runs. Printed, and written atomically to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.evaluation.shapes_table import find_scores, pooled_table  # noqa: E402
from rtdmd.utils.atomic import atomic_write_text  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Pool shapes-world tables over runs.')
    parser.add_argument('paths', nargs='+', help='scores.npz files or directories to search')
    parser.add_argument('--out', help='also write the Markdown here')
    parser.add_argument('--resamples', type=int, default=1000, help='bootstrap resamples')
    parser.add_argument('--confidence', type=float, default=0.95, help='interval level')
    parser.add_argument('--seed', type=int, default=0, help='seed of the resamples')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = find_scores(args.paths)
    for path in paths:
        print(f'run: {path}')
    table = pooled_table(paths, args.resamples, args.confidence, args.seed)
    print(table)
    if args.out:
        atomic_write_text(args.out, table + '\n')


if __name__ == '__main__':
    main()
