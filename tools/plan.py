"""Plan the per-rank GPU memory of a config's training, without a GPU and without weights.

    python tools/plan.py CONFIG [--gpu-memory GiB] [--nproc N] [--strategy ddp|fsdp] [--json]
                         [--json-out FILE]
                         [--only PHASE] [--batch B] [--micro-batch rollout=R fake_score=F
                         generator=G] [--no-gradient-checkpointing]
                         [--text-encoders replicate|shard|offload]
                         [--no-search] [--stage NAME ...] [--jobs J] [--cfg-options k=v ...]

Real-size modules are built from the architectures shipped in the package (no weights, meta
device, FakeTensors) and every phase of each stage runs under torch's memory tracker; the table
shows per rank: resident weights, optimizer state, activations, the FSDP all-gather, the peak,
whether it fits in --gpu-memory, and the largest micro-batch that does; each stage's notes give
the text encoders' placement and GiB. Phases: text-encode, fake-update, generator-update
(stage 1); text-encode, rollout, fake-update, policy-step, final-step (stage 2);
transformer-fwd-bwd (--only: one frozen-weight forward + backward of the
transformer, the calibration against GPU measurements). See docs/scale.md.
"""

from __future__ import annotations

import argparse
import os.path as osp
import sys

from mmengine.config import DictAction

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout

PHASES = ('text-encode', 'fake-update', 'generator-update', 'rollout', 'policy-step',
          'final-step', 'transformer-fwd-bwd')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Per-rank GPU memory of each training phase.')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--gpu-memory', type=float, default=70.0,
                        help='GiB a rank may use (default 70: an 80 GB GPU with headroom)')
    parser.add_argument('--nproc', type=int, help='ranks (default: the release\'s GPU count)')
    parser.add_argument('--strategy', choices=['ddp', 'fsdp'],
                        help='default: FSDP when model_wrapper_cfg names an FSDP wrapper')
    parser.add_argument('--json', action='store_true', help='print JSON instead of tables')
    parser.add_argument('--json-out', metavar='FILE',
                        help='also write the JSON to FILE (written whole, atomically)')
    parser.add_argument('--only', choices=PHASES, help='plan this phase only')
    parser.add_argument('--batch', type=int, help='micro-batch of every phase')
    parser.add_argument('--micro-batch', nargs='+', action=DictAction, default=None,
                        help='stage-2 chunks, e.g. rollout=8 fake_score=4 generator=2')
    parser.add_argument('--no-gradient-checkpointing', dest='gradient_checkpointing',
                        action='store_false', default=None,
                        help='plan without checkpointing (transformers and VAE decoder)')
    parser.add_argument('--text-encoders', choices=['replicate', 'shard', 'offload'],
                        help='FSDP\'s text-encoder placement (default: the config\'s '
                             'model_wrapper_cfg.text_encoders, else replicate)')
    parser.add_argument('--no-search', dest='search', action='store_false',
                        help='skip the largest-micro-batch search (half the time)')
    parser.add_argument('--stage', nargs='+', dest='stages',
                        help='plan only these stages of a pipeline (e.g. rtdmd)')
    parser.add_argument('--jobs', type=int, default=2,
                        help='stages planned in parallel processes (default 2)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    if args.gpu_memory <= 0 or (args.nproc is not None and args.nproc < 1) \
            or (args.batch is not None and args.batch < 1):
        parser.error('need --gpu-memory > 0, --nproc >= 1 and --batch >= 1')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)  # FakeTensors do no arithmetic; threads only contend
    from rtdmd.apis.plan import PlanOptions, plan
    from rtdmd.apis.planning.report import format_tables, to_json
    from rtdmd.utils.config import ConfigError

    opts = PlanOptions(gpu_memory=args.gpu_memory, nproc=args.nproc, strategy=args.strategy,
                       micro_batch=args.micro_batch, batch=args.batch,
                       gradient_checkpointing=args.gradient_checkpointing, only=args.only,
                       text_encoders=args.text_encoders, search=args.search,
                       cfg_options=args.cfg_options, stages=args.stages)
    try:
        stages = plan(args.config, opts, jobs=args.jobs)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    report = to_json(stages, args.gpu_memory)
    if args.json_out:
        write_atomic(args.json_out, report + '\n')
    print(report if args.json else format_tables(stages, args.gpu_memory))


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder, so a reader
    never sees half a report."""
    import os
    import tempfile

    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


if __name__ == '__main__':
    main()
