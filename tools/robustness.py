"""The robustness benchmark: one pipeline config on N seeded analytic worlds nobody tuned for.

    python tools/robustness.py [--config PIPELINE] [--worlds 20] [--first-seed 0]
                               [--work-dir DIR] [--epochs 1 2 4] [--cfg-options k=v ...]

Each world (``rtdmd/evaluation/worlds.py``: dimension 2-4, 3-10 components, unequal weights and
widths, 2-3 classes, linear / quadratic / mode rewards) trains the pipeline's two stages (stage 1,
then stage 2 from it) and is evaluated against exact truth with the pass criteria of
``rtdmd/evaluation/robustness.py``. ``--epochs 1 2 4`` trains stage 2 four times as long and
evaluates it at 1x, 2x and 4x its epochs. Finished worlds are read back, so an interrupted run
continues where it stopped. Tables: ``<work-dir>/results.{md,csv,json}``, one folder per world.
Runs on one thread (the work is many small ops; more threads only add contention).
"""

from __future__ import annotations

import argparse
import os
import os.path as osp
import sys

os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

from mmengine.config import DictAction  # noqa: E402

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

DEFAULT_CONFIG = osp.join(ROOT, 'configs', 'ablations', 'toy2d_rtdmd_pipeline.py')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Robustness benchmark on seeded toy worlds.')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='two-stage pipeline config (default: the main job cut to ac_dmd '
                        'and rtdmd, configs/ablations/toy2d_rtdmd_pipeline.py)')
    parser.add_argument('--worlds', type=int, default=20, help='number of worlds')
    parser.add_argument('--first-seed', type=int, default=0, help='seed of the first world')
    parser.add_argument('--work-dir', default=osp.join('work_dirs', 'robustness', 'default'))
    parser.add_argument('--epochs', type=int, nargs='+', default=[1],
                        help="multiples of stage 2's epochs to evaluate (e.g. 1 2 4)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='options for every world, as tools/train.py takes them '
                        '(stage:key=value for one stage)')
    args = parser.parse_args(argv)
    if args.worlds < 1 or args.first_seed < 0:
        parser.error('--worlds must be >= 1 and --first-seed >= 0')
    if sorted(set(args.epochs)) != args.epochs or args.epochs[0] < 1:
        parser.error('--epochs takes increasing positive multiples, e.g. 1 2 4')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from rtdmd.apis.robustness import run_benchmark
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()

    seeds = list(range(args.first_seed, args.first_seed + args.worlds))
    results = run_benchmark(osp.abspath(args.config), args.work_dir, seeds, args.cfg_options,
                            args.epochs)
    with open(osp.join(args.work_dir, 'results.md')) as f:
        print(f.read())
    failed = [r['seed'] for r in results if r['status'] != 'ok']
    if failed:
        print(f'worlds that failed to run: {failed} (see their folders)', file=sys.stderr)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
