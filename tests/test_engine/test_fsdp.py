"""FSDP2 (DistillerFullyShard) on gloo: the same LoRA as DDP and as one process.

Two spawned ranks train tiny SD3 and FLUX.2 (real diffusers classes) for two iterations of each
stage under DDP and under FSDP; one process trains the same global batch. Stage 2's draws are
keyed by each sample's group, so one process draws what two ranks draw. Stage 1's normals come
from each rank's own stream (as the release's), so its one-process reference draws them the way
two ranks do (:class:`TwoRankDraws`): rows of rank r from rank r's stream, the shared stream's
numbers repeated per rank. SGD with clipping: an update is the clipped mean gradient times the
rate, so a wrong reduction, a rank's shard used as the whole, or a local clipping norm all show.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rtdmd.engine.optim import DistillerOptimWrapperConstructor
from rtdmd.models.losses.base import UpdateContext
from rtdmd.models.samplers.draws import Draws
from rtdmd.registry import MODELS
from rtdmd.testing.lora import randomize_lora
from rtdmd.utils.rng import stream
from rtdmd.utils.sharding import full_tensor
from tests.test_models.test_rtdmd_scale import _free_port, _image_model

PROMPTS = ['a red cat', 'two blue dogs', 'a cat', 'the dog']
STEPS = 2
# clipping at this norm is active in every step of these runs (their norms: 2e-4 and up)
CLIP = 1e-4


def _stage1_model(family: str, root: Path):
    backbone = _image_model(family, root).backbone_cfg_for_test
    model = MODELS.build(dict(
        type='ACDMDDistiller', backbone=backbone, sampler=dict(type='CPSSampler', eta=0.9),
        # a loss scale that lifts tiny FLUX.2's generator gradient (5e-7) above the clipping norm
        matching=dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss', loss_weight=1e3),
                      fake_loss=dict(type='AmbientDSMLoss')), fake_update_ratio=1))
    for role in ('generator', 'fake_score'):
        randomize_lora(getattr(model.backbone, role), seed=len(role))
    return model


def _model(stage: int, family: str, root: Path):
    return _stage1_model(family, root) if stage == 1 else _image_model(family, root)


def _optim(model):
    role = dict(type='rtdmd.NonFiniteGuardOptimWrapper', optimizer=dict(type='SGD', lr=1.0),
                clip_grad=dict(max_norm=CLIP))
    return DistillerOptimWrapperConstructor(dict(generator=role, fake_score=role))(model)


def _lora(model) -> dict[str, torch.Tensor]:
    """Trainable weights as full tensors (a sharded model gathers: every rank calls this)."""
    return {f'{role}.{n}': full_tensor(p.detach()).clone()
            for role in ('generator', 'fake_score')
            for n, p in getattr(model.backbone, role).named_parameters() if p.requires_grad}


def _train(model, batches: list[dict]) -> tuple[dict, list[float]]:
    """The LoRA update of ``len(batches)`` iterations, and the generator's gradient norms."""
    torch.set_num_threads(1)
    optim = _optim(model)
    before = _lora(model)
    norms = []
    for data in batches:
        model.train_step(data, optim)
        norms.append(float(optim['generator'].message_hub.get_scalar(
            'train/grad_norm').current()))
    return {k: v - before[k] for k, v in _lora(model).items()}, norms


def _batches(rows: slice) -> list[dict]:
    return [dict(prompt=PROMPTS[rows], index=torch.arange(len(PROMPTS))[rows])] * STEPS


def _worker(rank: int, port: int, family: str, root: str, out: dict) -> None:
    from rtdmd.engine.fsdp import DistillerFullyShard
    from rtdmd.engine.wrappers import DistillerDataParallel

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        rows = slice(2 * rank, 2 * rank + 2)  # this rank's half of the global batch
        for stage in (1, 2):
            for name, wrap in (('ddp', lambda m: DistillerDataParallel(
                    m, find_unused_parameters=True)), ('fsdp', DistillerFullyShard)):
                model = _model(stage, family, Path(root))
                wrap(model)
                if name == 'fsdp':
                    assert type(model.backbone.generator).__name__.startswith('FSDP')
                delta, norms = _train(model, _batches(rows))
                if rank == 0:
                    out[f'{name}{stage}'] = (delta, norms)
    finally:
        dist.destroy_process_group()


class TwoRankDraws(Draws):
    """Stage 1's draws of a batch split over ``len(local)`` ranks, in one process: every rank
    takes its per-sample uniforms and integers from the shared stream (the same numbers), its
    normals from its own stream."""

    def __init__(self, shared: torch.Generator, local: list[torch.Generator], batch: int) -> None:
        self.shared, self.local, self.per_rank = shared, local, batch // len(local)

    def uniform(self, name, device):
        return torch.rand(self.per_rank, generator=self.shared).repeat(len(self.local))

    def normal(self, name, shape, device):
        return torch.cat([torch.randn((self.per_rank, *shape), generator=g)
                          for g in self.local])

    def randint(self, name, low, high, device):
        return torch.randint(low, high, (self.per_rank,), generator=self.shared).repeat(
            len(self.local))

    def scalar(self, name):
        return float(torch.rand(1, generator=self.shared))

    def stop(self, name, num_steps):
        return int(torch.randint(1, num_steps + 1, (1,), generator=self.shared))


def _one_process(stage: int, family: str, root: Path) -> tuple[dict, list[float]]:
    model = _model(stage, family, root)
    if stage == 1:
        def context(cond, step, tag):
            draws = TwoRankDraws(stream(model.seed, step, tag, 'shared'),
                                 [stream(model.seed, step, tag, 'local', r) for r in (0, 1)],
                                 len(PROMPTS))
            return UpdateContext(model.backbone, model.sampler, cond, draws)
        model.context = context
    return _train(model, _batches(slice(None)))



@pytest.mark.parametrize('family', ['sd3', 'flux2'])
def test_fsdp_equals_ddp_and_one_process(family: str, tmp_path: Path) -> None:
    _image_model(family, tmp_path)  # the snapshots, written once before the ranks read them
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(_free_port(), family, str(tmp_path), out), nprocs=2, join=True)
        out = copy.deepcopy(dict(out))
    for stage in (1, 2):
        one, one_norms = _one_process(stage, family, tmp_path)
        assert all(n > CLIP for n in one_norms), one_norms  # the clipping is exercised
        moved = max(float(v.abs().max()) for v in one.values())
        assert moved > 0, 'nothing trained'
        for name in ('ddp', 'fsdp'):
            delta, norms = out[f'{name}{stage}']
            assert delta.keys() == one.keys()
            # the global norm, not a rank's shard's
            torch.testing.assert_close(norms, one_norms, rtol=1e-4, atol=0)
            for key in one:
                # an update is a difference of weights of |w| <= 0.5: two fp32 ulps of those
                torch.testing.assert_close(delta[key], one[key], rtol=1e-3,
                                           atol=1e-4 * moved + 6e-8,
                                           msg=f'stage {stage} {name} {key}: '.__add__)
