"""Export a trained student in diffusers form: its LoRA (default) or a merged pipeline.

    python tools/export.py CONFIG [CHECKPOINT | --checkpoint CKPT] --out DIR [--merged
                           [--copy-unchanged]] [--scheduler euler|cps] [--benchmark RESULTS_MD]
                           [--stage NAME] [--no-ema] [--cfg-options k=v ...]

For a config with ``stages`` (the RTDMD leaf configs train stage 1, then stage 2), ``--stage``
names the stage that wrote the checkpoint (default: the last one).

The generator's EMA weights (unless ``--no-ema``) are exported, every LoRA combined. By default
``DIR`` holds ``pytorch_lora_weights.safetensors`` for ``pipe.load_lora_weights(DIR)`` on the
generator's base pipeline; ``--merged`` writes the merged transformer instead (with
``--copy-unchanged``, a standalone pipeline folder). Either way ``README.md`` says how to load
it and ``pipeline.py`` gives ``pipe(prompt)`` the student's arguments (4 steps, its sigmas,
guidance 1). The default scheduler is diffusers' stock ``FlowMatchEulerDiscreteScheduler`` (the
deterministic sampler, no rtdmd needed); ``--scheduler cps`` writes rtdmd's stochastic
``CPSScheduler`` (``import rtdmd`` before loading).
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.cli import LazyDictAction  # noqa: E402  (light: parse before heavy imports)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export an rtdmd student in diffusers form.')
    parser.add_argument('config', help='the training config of the checkpoint')
    parser.add_argument('checkpoint_pos', nargs='?', metavar='CHECKPOINT',
                        help='training checkpoint to export (same as --checkpoint)')
    parser.add_argument('--checkpoint', help='training checkpoint to export')
    parser.add_argument('--out', required=True, help='folder to write')
    parser.add_argument('--merged', action='store_true',
                        help='write the transformer with the LoRA merged instead of the LoRA')
    parser.add_argument('--copy-unchanged', action='store_true',
                        help='with --merged: also copy the unchanged components (a standalone '
                        'pipeline folder)')
    parser.add_argument('--scheduler', choices=['euler', 'cps'], default='euler',
                        help="euler: diffusers' stock scheduler, the deterministic sampler "
                        "(default); cps: rtdmd's stochastic CPSScheduler (needs rtdmd)")
    parser.add_argument('--benchmark', metavar='RESULTS_MD',
                        help='a benchmark results.md (tools/test.py --benchmarks) for the card')
    parser.add_argument('--stage', help='for a config with stages: the stage that wrote the '
                        'checkpoint (default: the last)')
    parser.add_argument('--no-ema', action='store_true',
                        help='export the live generator weights instead of their EMA')
    parser.add_argument('--cfg-options', nargs='+', action=LazyDictAction, default={},
                        help='override config keys, e.g. weights_root=/data/weights')
    args = parser.parse_args(argv)
    if args.checkpoint_pos and args.checkpoint and args.checkpoint_pos != args.checkpoint:
        parser.error(f'two checkpoints given: {args.checkpoint_pos} and --checkpoint '
                     f'{args.checkpoint}')
    args.checkpoint = args.checkpoint or args.checkpoint_pos
    if not args.checkpoint:
        parser.error('a checkpoint is needed (CHECKPOINT or --checkpoint)')
    if args.copy_unchanged and not args.merged:
        parser.error('--copy-unchanged needs --merged (a LoRA folder holds the LoRA only)')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from rtdmd.apis.export import export_pipeline
    from rtdmd.apis.loading import stage_of
    from rtdmd.apis.stages import check_stage_options, split_stage_options
    from rtdmd.models.backbones.pretrained import MissingWeightsError
    from rtdmd.utils.config import ConfigError, load_config
    from rtdmd.utils.mmengine_compat import apply_mmengine_patches

    apply_mmengine_patches()
    try:
        cfg = load_config(args.config, split_stage_options(args.cfg_options)[0])
        if cfg.get('work_dir') is None:
            cfg.work_dir = 'work_dirs'  # stage configs name their work dirs below it (unused)
        check_stage_options(cfg, args.cfg_options)
        if cfg.get('stages'):
            cfg = stage_of(cfg, args.stage, args.cfg_options)
        elif args.stage:
            raise ConfigError([f'--stage {args.stage}: the config has no stages'])
    except (ConfigError, FileNotFoundError, KeyError) as err:
        sys.exit(f'error: {err.args[0] if isinstance(err, KeyError) else err}')
    if not osp.isfile(args.checkpoint):
        sys.exit(f'error: checkpoint {args.checkpoint} does not exist')
    try:
        export_pipeline(cfg, args.checkpoint, args.out, use_ema=not args.no_ema,
                        form='merged' if args.merged else 'lora',
                        copy_unchanged=args.copy_unchanged, scheduler=args.scheduler,
                        benchmark=args.benchmark)
    except (MissingWeightsError, KeyError, TypeError, ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err.args[0] if err.args else err}')


if __name__ == '__main__':
    main()
