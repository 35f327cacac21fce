"""Evaluate a model and write ``metrics.json`` into the work dir.

    python tools/test.py CONFIG [--checkpoint CKPT] [--work-dir DIR] [--cfg-options k=v ...]
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.engine.pipeline import check_stage_options, default_work_dir, split_stage_options  # noqa: E402
from rtdmd.utils.config import ConfigError, load_config  # noqa: E402
from rtdmd.utils.mmengine_compat import apply_mmengine_patches, init_distributed  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate an rtdmd model.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--checkpoint', help='checkpoint to evaluate (default: load_from)')
    parser.add_argument('--work-dir', help='where metrics.json goes '
                        '(default: the training work dir for a pipeline of stages, '
                        'else its test/ folder)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    apply_mmengine_patches()
    try:
        cfg = load_config(args.config, split_stage_options(args.cfg_options)[0])
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    if args.checkpoint is not None and not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint} does not exist')
    cfg.launcher = args.launcher
    # A pipeline evaluates the stages trained in its own work dir; a single model gets test/.
    default = default_work_dir(args.config)
    cfg.work_dir = args.work_dir or (default if cfg.get('stages') else osp.join(default, 'test'))
    try:
        check_stage_options(cfg, args.cfg_options)
    except (ConfigError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    init_distributed(args.launcher)

    from rtdmd.engine.pipeline import run_test
    run_test(cfg, args.checkpoint, args.cfg_options)


if __name__ == '__main__':
    main()
