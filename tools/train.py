"""Train with an rtdmd config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT] | --start-over]
                                 [--retrain-changed] [--amp] [--auto-scale-lr]
                                 [--cfg-options k=v ...] [--launcher none|pytorch|slurm]

The config is validated before anything is built: an unknown key, type or argument stops the run
with a message naming it. The resolved config is written into the work dir. A work dir that
already holds a run is used only with --resume (continue it) or --start-over (move it aside).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

from rtdmd.cli import LazyDictAction  # noqa: E402  (light: parse before heavy imports)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train an rtdmd model.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                        '(default: work_dirs/<config path below configs/>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CKPT, or from the newest intact checkpoint of the '
                        'work dir when no path is given (a pipeline of stages skips finished '
                        'stages and continues an interrupted one)')
    parser.add_argument('--start-over', action='store_true',
                        help='the work dir holds a run: move it to <work-dir>.superseded-<time> '
                        'and train from the start')
    parser.add_argument('--retrain-changed', action='store_true',
                        help='with --resume, a pipeline\'s stages trained with other options '
                        '(and the stages started from them) are moved aside and trained again '
                        'instead of refused')
    parser.add_argument('--amp', action='store_true',
                        help='bf16 autocast for the trainable roles\' forwards')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rates by the total batch size over the '
                        'config\'s auto_scale_lr.base_batch_size')
    parser.add_argument('--cfg-options', nargs='+', action=LazyDictAction, default={},
                        help='override config keys, e.g. model.fake_update_ratio=5 '
                        'world.stds="[0.3,0.3]"')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none')
    parser.add_argument('--local-rank', '--local_rank', type=int, default=0)
    args = parser.parse_args(argv)
    if args.start_over and args.resume is not None:
        parser.error('--start-over and --resume exclude each other')
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def check_weights_first(args: argparse.Namespace) -> None:
    """Stop on missing backbone weights before torch is imported (a fraction of a second).

    Only ``mmengine.config`` and ``rtdmd/models/backbones/pretrained.py`` (standard library
    only) are loaded, the latter from its file: importing it as a package module would import
    ``rtdmd.models`` (torch, diffusers) first. Config errors are left to the validation below.
    """
    from mmengine.config import Config

    spec = importlib.util.spec_from_file_location(
        '_rtdmd_pretrained', osp.join(ROOT, 'rtdmd', 'models', 'backbones', 'pretrained.py'))
    pretrained = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pretrained)
    try:
        # No environment substitution here: mmengine logs it, and its logger imports torch.
        cfg = Config.fromfile(args.config, import_custom_modules=False,
                              use_environment_variables=False)
        cfg.merge_from_dict({k: v for k, v in args.cfg_options.items() if ':' not in k})
    except Exception:  # noqa: BLE001  (reported with context by load_config)
        return
    try:
        pretrained.check_config_weights(cfg)
    except pretrained.MissingWeightsError as err:
        sys.exit(f'error: {err}')


def build_cfg(args: argparse.Namespace):
    from rtdmd.apis.stages import default_work_dir, split_stage_options
    from rtdmd.utils.config import load_config

    cfg = load_config(args.config, split_stage_options(args.cfg_options)[0])
    cfg.launcher = args.launcher
    cfg.train_options = [name for name in ('amp', 'auto_scale_lr') if getattr(args, name)]
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(args.config)
    if args.resume is not None:
        cfg.resume = True
        cfg.load_from = None if args.resume == 'auto' else args.resume
    return cfg


def check_train_options(cfg, cli_options: dict) -> None:
    """--amp / --auto-scale-lr fit every stage's config (applied for real in build_runner)."""
    import copy

    from rtdmd.apis.stages import stage_config
    from rtdmd.utils.train_options import apply_train_options

    if not cfg.train_options:
        return
    if cfg.get('stages'):  # stage_config applies them to each stage
        for s in cfg.stages:
            stage_config(cfg, {k: v for k, v in s.items() if k != 'init_from'}, cli_options)
    else:
        apply_train_options(copy.deepcopy(cfg), cfg.train_options)


def check_work_dir(cfg, args: argparse.Namespace) -> None:
    """A work dir that holds a run needs --resume or --start-over (moved aside here)."""
    from rtdmd.utils.run_dir import existing_runs, move_aside

    if cfg.get('stages') and args.resume not in (None, 'auto'):
        raise FileExistsError(f'--resume {args.resume}: a pipeline resumes each stage from the '
                              f'newest intact checkpoint of its own work dir; pass --resume '
                              f'without a path')
    runs = existing_runs(cfg.work_dir)
    if not runs or args.resume is not None:
        return
    if not args.start_over:
        raise FileExistsError(
            f'{cfg.work_dir} already holds a run (checkpoints in {", ".join(runs)}). Continue it '
            f'with --resume, or train from the start with --start-over (moves it to '
            f'{cfg.work_dir}.superseded-<time>); or pass another --work-dir')
    if int(os.environ.get('RANK', '0')) == 0:
        print(f'--start-over: moved the previous run to {move_aside(cfg.work_dir)}')


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_weights_first(args)
    from rtdmd.apis.pipeline import check_pipeline  # heavy imports from here on
    from rtdmd.utils.config import ConfigError
    from rtdmd.utils.errors import RunDirError, TrainingStopped
    from rtdmd.utils.mmengine_compat import apply_mmengine_patches, dist_timeout, init_distributed

    apply_mmengine_patches()
    try:
        cfg = build_cfg(args)
        check_pipeline(cfg, args.cfg_options)
        check_train_options(cfg, args.cfg_options)
        timeout = dist_timeout(cfg)
        check_work_dir(cfg, args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(f'error: {err}')
    init_distributed(args.launcher, timeout_s=timeout)

    from rtdmd.apis.pipeline import run_training  # heavy imports after validation
    from rtdmd.models.backbones.pretrained import MissingWeightsError
    from rtdmd.rewards.weights import MissingRewardWeightsError
    try:
        run_training(cfg, args.cfg_options, retrain_changed=args.retrain_changed)
    except (MissingWeightsError, MissingRewardWeightsError, RunDirError,
            TrainingStopped) as err:  # each message says what to do
        sys.exit(f'error: {err}')


if __name__ == '__main__':
    main()
