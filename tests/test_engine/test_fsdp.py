"""FSDP2 (DistillerFullyShard) on gloo: the same LoRA as DDP and as one process.

One spawn of two ranks trains tiny SD3 and FLUX.2 (real diffusers classes) for two iterations of
each stage under DDP and under FSDP (every model built once, then copied per engine); after the
process group ends, each rank trains one family's one-process references on the same global
batch. Stage 2's draws are keyed by each sample's group, so one process draws what two ranks
draw. Stage 1's normals come from each rank's own stream (as the release's), so its one-process
reference draws them the way two ranks do (:class:`TwoRankDraws`): rows of rank r from rank r's
stream, the shared stream's numbers repeated per rank. SGD with clipping: an update is the
clipped mean gradient times the rate, so a wrong reduction, a rank's shard used as the whole, or
a local clipping norm all show.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from rtdmd.engine.optim import DistillerOptimWrapperConstructor
from rtdmd.models.losses.base import UpdateContext
from rtdmd.models.samplers.draws import Draws
from rtdmd.registry import MODELS
from rtdmd.testing.lora import randomize_lora
from rtdmd.utils.rng import stream
from rtdmd.utils.sharding import full_tensor
from tests.ranks import free_port, start_ranks
from tests.test_models.test_rtdmd_scale import _image_model, image_backbone_cfg

PROMPTS = ['a red cat', 'two blue dogs', 'a cat', 'the dog']
STEPS = 2
# clipping at this norm is active in every step of these runs (their norms: 2e-4 and up)
CLIP = 1e-4
FAMILIES = ('sd3', 'flux2')
ENGINES = ('ddp', 'fsdp')


def _model(stage: int, family: str, root: Path):
    if stage == 2:
        return _image_model(family, root)
    model = MODELS.build(dict(
        type='ACDMDDistiller', backbone=image_backbone_cfg(family, root),
        sampler=dict(type='CPSSampler', eta=0.9),
        # a loss scale that lifts tiny FLUX.2's generator gradient (5e-7) above the clipping norm
        matching=dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss', loss_weight=1e3),
                      fake_loss=dict(type='AmbientDSMLoss')), fake_update_ratio=1))
    for role in ('generator', 'fake_score'):
        randomize_lora(getattr(model.backbone, role), seed=len(role))
    return model


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


def _one_process(stage: int, model) -> tuple[dict, list[float]]:
    """The whole global batch in this process (no process group)."""
    if stage == 1:
        def context(cond, step, tag):
            draws = TwoRankDraws(stream(model.seed, step, tag, 'shared'),
                                 [stream(model.seed, step, tag, 'local', r) for r in (0, 1)],
                                 len(PROMPTS))
            return UpdateContext(model.backbone, model.sampler, cond, draws)
        model.context = context
    return _train(model, _batches(slice(None)))


def _worker(rank: int, port: int, root: str) -> None:
    """Every (family, stage) under DDP and FSDP on 2 ranks, then rank r's one-process
    references of family r; results in ``root/rank{r}.pt``."""
    from rtdmd.engine.fsdp import DistillerFullyShard
    from rtdmd.engine.wrappers import DistillerDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    out, references = {}, {}
    rows = slice(2 * rank, 2 * rank + 2)  # this rank's half of the global batch
    try:
        for family in FAMILIES:
            for stage in (1, 2):
                model = _model(stage, family, Path(root) / family)
                for engine in ENGINES:
                    copied = copy.deepcopy(model)
                    if engine == 'ddp':
                        DistillerDataParallel(copied, find_unused_parameters=True)
                    else:
                        DistillerFullyShard(copied)
                        assert type(copied.backbone.generator).__name__.startswith('FSDP')
                    result = _train(copied, _batches(rows))
                    if rank == 0:
                        out[f'{family}.{engine}{stage}'] = result
                if FAMILIES.index(family) == rank:
                    references[stage] = model  # untouched: trained after the group ends
    finally:
        dist.destroy_process_group()
    family = FAMILIES[rank]
    for stage, model in references.items():
        out[f'{family}.one{stage}'] = _one_process(stage, model)
    torch.save(out, Path(root) / f'rank{rank}.pt')


@pytest.fixture(scope='module')
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every run's LoRA update and gradient norms, by ``family.engine+stage``."""
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()  # imported here once: forked ranks inherit the modules
    root = tmp_path_factory.mktemp('fsdp')
    for family in FAMILIES:  # the snapshots, written once before the ranks read them
        image_backbone_cfg(family, root / family)
    start_ranks(_worker, (free_port(), str(root)))
    return {**torch.load(root / 'rank0.pt'), **torch.load(root / 'rank1.pt')}


@pytest.mark.parametrize('stage', [1, 2])
@pytest.mark.parametrize('family', FAMILIES)
def test_fsdp_equals_ddp_and_one_process(runs: dict, family: str, stage: int) -> None:
    one, one_norms = runs[f'{family}.one{stage}']
    assert all(n > CLIP for n in one_norms), one_norms  # the clipping is exercised
    moved = max(float(v.abs().max()) for v in one.values())
    assert moved > 0, 'nothing trained'
    for engine in ENGINES:
        delta, norms = runs[f'{family}.{engine}{stage}']
        assert delta.keys() == one.keys()
        # the global norm, not a rank's shard's
        torch.testing.assert_close(norms, one_norms, rtol=1e-4, atol=0)
        for key in one:
            # an update is a difference of weights of |w| <= 0.5: two fp32 ulps of those
            torch.testing.assert_close(delta[key], one[key], rtol=1e-3,
                                       atol=1e-4 * moved + 6e-8,
                                       msg=f'stage {stage} {engine} {key}: '.__add__)
