"""The fake score's tracking error of trained stages of the analytic world.

    python tools/fake_tracking.py STAGE_DIR [STAGE_DIR ...] [--samples 4096] [--out FILE.json]

``STAGE_DIR`` is a stage's work dir (e.g. ``work_dirs/rtdmd/toy2d_4step/ac_dmd``): its newest
checkpoint is loaded (the generator's EMA, the fake score as trained) with the config the stage
dumped there. Per stage, averaged over the classes and the levels 0.25 / 0.5 / 0.75, against the
velocity of the generator's own samples (:mod:`rtdmd.evaluation.fake_tracking`): ``fake_err``
(the fake score's error), ``dm_signal`` (the teacher's distance from the generator, what the DM
term should see), their ratio, ``fake_teacher`` and the estimator's ``floor``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

COLUMNS = ['fake_err', 'dm_signal', 'fake_err_rel', 'fake_teacher', 'floor']


def stage_files(stage_dir: str) -> tuple[str, str]:
    """The config a stage dumped into its work dir and its newest checkpoint."""
    from rtdmd.apis.stages import latest_checkpoint

    configs = sorted(glob.glob(osp.join(stage_dir, '*.py')))
    if len(configs) != 1:
        raise SystemExit(f'{stage_dir}: expected the one config the stage dumped there, found '
                         f'{configs or "none"}; pass a stage dir such as <work-dir>/ac_dmd')
    try:
        return configs[0], latest_checkpoint(stage_dir)
    except FileNotFoundError as err:
        raise SystemExit(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('stage_dirs', nargs='+')
    parser.add_argument('--samples', type=int, default=4096, help='samples per class and set')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    files = [stage_files(d) for d in args.stage_dirs]  # every problem before any work

    os.environ.setdefault('OMP_NUM_THREADS', '1')
    import torch
    from tabulate import tabulate

    from rtdmd.apis.loading import load_trained_model
    from rtdmd.evaluation.fake_tracking import fake_tracking
    from rtdmd.utils.config import load_config

    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    rows = {}
    for stage_dir, (config, checkpoint) in zip(args.stage_dirs, files, strict=True):
        model, _ = load_trained_model(load_config(config), checkpoint)
        rows[stage_dir] = fake_tracking(model, args.samples, seed=args.seed)
    print(tabulate([[d, *(r[c] for c in COLUMNS)] for d, r in rows.items()],
                   headers=['stage', *COLUMNS], tablefmt='github', floatfmt='.4f'))
    if args.out:
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(rows, f, indent=1)
        os.replace(tmp, args.out)  # atomic: a reader never sees half a file
    return 0


if __name__ == '__main__':
    sys.exit(main())
