"""SubGRPO's claim, measured: the spread of the policy-gradient estimate with and without step
subsets and group-shared noise, at equal compute, over many draws at one checkpoint.

    python tools/subgrpo_variance.py CHECKPOINT [--config CFG] [--stage grpo_only]
                                     [--draws 200] [--prompts 16] [--out FILE.json]

Every draw is one RL epoch's generator gradient (no optimizer step) of the stage's distiller,
computed by its own methods (:mod:`rtdmd.evaluation.policy_gradient`), at the weights stage 2
starts from (``CHECKPOINT``: a stage-1 checkpoint, the generator's EMA). The stage's terms say
which gradient it is: ``grpo_only`` (the default) is the GRPO term alone.

Conditions, for ``k`` trained steps out of the ``m`` stochastic ones: shared or independent noise
on the others, and two budgets: the same prompts per epoch (``--prompts``), or equal compute,
``prompts * m / k`` prompts so that every estimate costs the same generator backward passes
(samples x trained steps). The reference direction is the mean of ``--draws`` further draws of
the full estimator (all ``m`` steps, epochs not used by any condition) at 4x the prompts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import sys
import tempfile
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout

REFERENCE_EPOCH = 1_000_000  # the reference's epochs: after every condition's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='stage-1 checkpoint stage 2 starts from')
    parser.add_argument('--config', default=osp.join(ROOT, 'configs/rtdmd/toy2d_4step.py'))
    parser.add_argument('--stage', default='grpo_only', help='the stage whose terms to use')
    parser.add_argument('--draws', type=int, default=200, help='draws per condition')
    parser.add_argument('--prompts', type=int, default=16, help='prompts per epoch, all steps')
    parser.add_argument('--seed', type=int, default=0, help="the distiller's seed")
    parser.add_argument('--out', help='also write the figures to this JSON file')
    args = parser.parse_args(argv)
    if not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint not found: {args.checkpoint}')
    if args.draws < 2:
        parser.error('--draws must be at least 2')
    return args


def build(args: argparse.Namespace, steps: int | None = None):
    """The stage's distiller with ``steps`` trained SubGRPO steps (``None``: the config's),
    warm-started, and the world's number of classes."""
    from mmengine.config import Config

    from rtdmd.apis.loading import stage_of
    from rtdmd.registry import MODELS
    from rtdmd.utils.config import load_config
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    cfg: Config = load_config(args.config)
    cfg.work_dir = tempfile.gettempdir()
    options = {'model.init_checkpoint': osp.abspath(args.checkpoint), 'model.seed': args.seed}
    if steps is not None:
        options['model.subgrpo.num_train_steps'] = steps
    sub = stage_of(cfg, args.stage, options)
    model = MODELS.build(sub.model)
    model.init_weights()
    classes = len(sub.world['class_weights'])
    return model, classes


def conditions(num_stochastic: int, prompts: int) -> list[dict]:
    """(steps, shared noise, budget, prompts) of every measured estimator."""
    rows = [dict(steps=num_stochastic, shared=False, budget='all steps', prompts=prompts)]
    for k in range(num_stochastic - 1, 0, -1):
        for budget, n in (('same prompts', prompts),
                          ('equal compute', math.ceil(prompts * num_stochastic / k))):
            rows += [dict(steps=k, shared=s, budget=budget, prompts=n) for s in (True, False)]
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    import torch
    from tabulate import tabulate

    from rtdmd.evaluation.policy_gradient import gradient_draws, gradient_spread

    torch.set_num_threads(int(os.environ['OMP_NUM_THREADS']))
    full, classes = build(args)
    m = full.subgrpo['range_end'] - full.subgrpo['range_start'] + 1  # eligible steps
    full, classes = build(args, steps=m)
    start = time.perf_counter()
    reference = gradient_draws(full, args.draws, 4 * args.prompts, classes,
                               first_epoch=REFERENCE_EPOCH).mean(0)
    rows, models = [], {m: full}
    for cond in conditions(m, args.prompts):
        k = cond['steps']
        if k not in models:
            models[k] = build(args, steps=k)[0]
        draws = gradient_draws(models[k], args.draws, cond['prompts'], classes,
                               share_noise=cond['shared'])
        spread = gradient_spread(draws, reference)
        passes = cond['prompts'] * models[k].group_size * k
        rows.append({**cond, 'backward passes': passes, **spread})
        print(f"steps={k} shared={cond['shared']} {cond['budget']}: rel_var "
              f"{spread['rel_var']:.1f}, proj_cv2 {spread['proj_cv2']:.2f}", flush=True)
    elapsed = time.perf_counter() - start
    columns = ['steps', 'shared', 'budget', 'prompts', 'backward passes', 'rel_var', 'proj_cv2',
               'cos_ref', 'mean_norm']
    print(tabulate([[r[c] for c in columns] for r in rows], headers=columns, tablefmt='github',
                   floatfmt='.3f'))
    print(f'{args.draws} draws per condition, {len(rows)} conditions + reference, '
          f'{elapsed:.0f} s')
    if args.out:
        tmp = args.out + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(dict(rows=rows, draws=args.draws, checkpoint=args.checkpoint,
                           stage=args.stage, seconds=elapsed), f, indent=1)
        os.replace(tmp, args.out)  # atomic: a reader never sees half a file
    return 0


if __name__ == '__main__':
    sys.exit(main())
