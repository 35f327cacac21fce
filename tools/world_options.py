"""Print the ``--cfg-options`` that put any analytic-world config on world ``SEED`` of the
seeded family (``rtdmd/evaluation/worlds.py``): its mixture, its reward and the evaluation's
``beta`` search bound, e.g.

    python tools/train.py configs/ablations/toy2d_hybrid_pipeline.py \\
        --work-dir work_dirs/claims/hybrid_world3 --cfg-options $(python tools/world_options.py 3)

``world.*`` and ``reward.*`` reach every stage of a pipeline. The output has no spaces, so the
shell splits it into one option per word; ``--describe`` prints the world instead.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout


def world_options(seed: int) -> dict:
    """``{'world.means': ..., 'reward.type': ..., 'evaluation.beta_grid_max': ...}``."""
    from rtdmd.evaluation.worlds import draw_world

    spec = draw_world(seed)
    options = {f'world.{k}': v for k, v in spec.world.items()}
    options.update({f'reward.{k}': v for k, v in spec.reward.items()})
    options['evaluation.beta_grid_max'] = spec.beta_grid_max
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('seed', type=int)
    parser.add_argument('--describe', action='store_true', help='print the world, not options')
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error('world seeds are non-negative')
    if args.describe:
        from rtdmd.evaluation.worlds import draw_world

        print(draw_world(args.seed).describe())
        return 0
    from rtdmd.apis.sweep import format_options

    print(' '.join(format_options(world_options(args.seed))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
