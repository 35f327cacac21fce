"""Score a shapes-world teacher folder on the held-out prompts at several Euler step counts.

    python tools/eval_shapes_teacher.py TEACHER_DIR [--steps 28 4] [--guidance 4.0]
        [--per-tag 32] [--split heldout] [--seed 0] [--out metrics.json] [--grid grid.png]
    python tools/eval_shapes_teacher.py TEACHER_DIR --export-from CONFIG CHECKPOINT ...

The teacher is loaded through its backbone (``rtdmd_backbone.json`` in the folder) and sampled
through the backbone's teacher role with the Euler sampler and real CFG, one seed per sample
(seed ``1000 * seed + i`` for prompt ``i``). ``--per-tag`` prompts per GenEval tag, cycling
through the split's prompts of that tag. With ``--export-from``, the folder is first written from
a flow-stage checkpoint of a teacher config (its EMA weights), e.g. to follow a run's progress.
Prints one row per step count and writes the figures as JSON (``--out``) and a grid of the first
samples of every tag (``--grid``: rows = step counts).
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

from rtdmd.rewards.geneval_rules import TAGS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Score a shapes teacher folder.')
    parser.add_argument('teacher', help='the teacher folder (diffusers layout)')
    parser.add_argument('--steps', type=int, nargs='+', default=[28, 4])
    parser.add_argument('--guidance', type=float, default=4.0, help='CFG scale')
    parser.add_argument('--per-tag', type=int, default=32)
    parser.add_argument('--split', default='heldout', choices=['train', 'heldout', 'all'])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--out', help='write the figures here (JSON)')
    parser.add_argument('--grid', help='write a sample grid here (PNG)')
    parser.add_argument('--export-from', nargs=2, metavar=('CONFIG', 'CHECKPOINT'),
                        help='first write TEACHER from a flow-stage checkpoint of CONFIG')
    return parser.parse_args(argv)


def export_from(config: str, checkpoint: str, out: str) -> None:
    """Write the teacher folder of a flow-stage checkpoint of a teacher config."""
    from mmengine.runner.checkpoint import CheckpointLoader

    from rtdmd.apis.stages import stage_config
    from rtdmd.registry import MODELS
    from rtdmd.utils.config import load_config
    from rtdmd.utils.mmengine_compat import apply_mmengine_patches

    apply_mmengine_patches()
    cfg = load_config(config)
    if cfg.get('stages'):
        cfg.work_dir = cfg.get('work_dir') or '/tmp/eval_shapes_teacher'
        flow = next(s for s in cfg.stages if s.get('init_from'))
        cfg = stage_config(cfg, {k: v for k, v in flow.items() if k != 'init_from'})
    model_cfg = dict(cfg.model, init_checkpoint=None, latent_stats_images=16)
    model = MODELS.build(model_cfg)
    state = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')['state_dict']
    model.load_state_dict(state)
    model.fit_latent_stats(cfg.model.get('latent_stats_images', 2048))  # of the loaded VAE
    os.makedirs(out, exist_ok=True)
    model.export_weights(out)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', '1')))
    if args.export_from:
        export_from(*args.export_from, args.teacher)

    from rtdmd.datasets.shapes import ShapesPromptDataset
    from rtdmd.evaluation.shapes_report import (
        score_images,
        teacher_backbone_cfg,
        teacher_samples,
    )
    from rtdmd.registry import MODELS
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    backbone = MODELS.build(teacher_backbone_cfg(args.teacher))
    backbone.eval()
    data = ShapesPromptDataset(args.split, per_tag=args.per_tag)
    prompts = [it['prompt'] for it in data.items]
    metadata = [it['metadata'] for it in data.items]
    seeds = [1000 * args.seed + i for i in range(len(prompts))]
    results, grids = {}, []
    for steps in args.steps:
        images = teacher_samples(backbone, prompts, seeds, steps, args.guidance)
        results[f'euler{steps}_cfg{args.guidance:g}'] = figures = score_images(images, metadata)
        grids.append(images[::args.per_tag][:len(TAGS)])
        tags = '  '.join(f'{t} {figures[f"strict/{t}"]:.2f}' for t in TAGS
                         if f'strict/{t}' in figures)
        print(f'{steps:3d} steps, CFG {args.guidance:g}: strict {figures["strict"]:.3f} '
              f'({tags})  partial {figures["partial"]:.3f}  soft {figures["soft"]:.3f}  '
              f'fidelity {figures["fidelity"]:.2f}  clean {figures["clean"]:.3f}', flush=True)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(teacher=osp.abspath(args.teacher), split=args.split,
                           per_tag=args.per_tag, seed=args.seed, results=results), f, indent=2)
    if args.grid:
        from torchvision.utils import save_image

        save_image(torch.cat(grids), args.grid, nrow=len(TAGS), padding=1, pad_value=1.0)


if __name__ == '__main__':
    main()
