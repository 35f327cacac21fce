"""DistillerDataParallel on 2 gloo processes: gradients of each role are averaged."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mmengine.optim import OptimWrapper, OptimWrapperDict

from rtdmd.engine.wrappers import DistillerDataParallel
from rtdmd.registry import MODELS

WORLD = dict(means=[[2.0, 0.0], [-2.0, 0.0]], stds=[0.3, 0.5], class_weights=[[0.7, 0.3]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, cache: str, out: dict) -> None:
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RTDMD_CACHE=cache)
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        model = MODELS.build(dict(
            type='ACDMDDistiller', sampler=dict(type='CPSSampler'),
            backbone=dict(type='GaussianMixtureBackbone', world=WORLD, hidden_dim=16, depth=2,
                          init_fit=dict(iters=5, batch_size=32)),
            matching=dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss'),
                          fake_loss=dict(type='AmbientDSMLoss')),
            fake_update_ratio=1))
        wrapped = DistillerDataParallel(model)
        optim = OptimWrapperDict(**{
            r: OptimWrapper(torch.optim.SGD(model.backbone.trainable_parameters(r), lr=0.1))
            for r in ('generator', 'fake_score')})
        before = torch.cat([p.detach().flatten() for p in model.backbone.generator.parameters()])
        # Different prompts per rank: unsynchronised updates would differ.
        wrapped.train_step(dict(prompt=torch.full((8,), rank)), optim)
        for role in ('generator', 'fake_score'):
            flat = torch.cat([p.detach().flatten()
                              for p in getattr(model.backbone, role).parameters()])
            gathered = [torch.empty_like(flat) for _ in range(2)]
            dist.all_gather(gathered, flat)
            out[f'{role}_{rank}'] = bool(torch.equal(gathered[0], gathered[1]))
        out[f'moved_{rank}'] = not torch.equal(
            before, torch.cat([p.detach().flatten()
                               for p in model.backbone.generator.parameters()]))
        out[f'keys_{rank}'] = sorted(model.state_dict()) == sorted(
            k for k in model.state_dict() if '.module.' not in k)
    finally:
        dist.destroy_process_group()


def test_both_roles_stay_in_sync_across_ranks(tmp_path) -> None:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), str(tmp_path), out), nprocs=2, join=True)
        out = dict(out)
    assert all(out[f'{role}_{r}'] for role in ('generator', 'fake_score') for r in (0, 1)), out
    assert out['moved_0'] and out['moved_1']
    assert out['keys_0'] and out['keys_1']  # the wrappers add no 'module.' keys
