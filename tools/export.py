"""Export a trained generator as a diffusers pipeline directory.

    python tools/export.py CONFIG --checkpoint CKPT --out DIR [--stage NAME] [--no-ema]
                           [--cfg-options k=v ...]

For a config with ``stages`` (the RTDMD leaf configs train stage 1, then stage 2), ``--stage``
names the stage that wrote the checkpoint (default: the last one).

The generator's EMA weights (unless ``--no-ema``) with every LoRA merged become the pipeline's
transformer; its scheduler is rtdmd's ``CPSScheduler`` on the student's few-step sigmas and eta.
Load it with ``import rtdmd; DiffusionPipeline.from_pretrained(DIR)`` and call it with the
arguments recorded in ``DIR/rtdmd_export.json`` (``call_kwargs``: ``guidance_scale=1``, the
training resolution, ...).
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.apis.stages import check_stage_options, split_stage_options  # noqa: E402
from rtdmd.models.backbones.pretrained import MissingWeightsError  # noqa: E402
from rtdmd.utils.config import ConfigError, load_config  # noqa: E402
from rtdmd.utils.mmengine_compat import apply_mmengine_patches  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Export an rtdmd generator as a diffusers '
                                     'pipeline directory.')
    parser.add_argument('config', help='the training config of the checkpoint')
    parser.add_argument('--checkpoint', required=True, help='training checkpoint to export')
    parser.add_argument('--out', required=True, help='pipeline directory to write')
    parser.add_argument('--stage', help='for a config with stages: the stage that wrote the '
                        'checkpoint (default: the last)')
    parser.add_argument('--no-ema', action='store_true',
                        help='export the live generator weights instead of their EMA')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='override config keys, e.g. weights_root=/data/weights')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    apply_mmengine_patches()
    from rtdmd.apis.export import export_pipeline
    from rtdmd.apis.loading import stage_of
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
        export_pipeline(cfg, args.checkpoint, args.out, use_ema=not args.no_ema)
    except (MissingWeightsError, KeyError, TypeError) as err:
        sys.exit(f'error: {err.args[0] if err.args else err}')


if __name__ == '__main__':
    main()
