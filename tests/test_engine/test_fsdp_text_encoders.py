"""Text encoders under FSDP2 (``model_wrapper_cfg.text_encoders``): sharded or offloaded, they
encode what a replicated copy encodes, and a stage trains the same LoRA.

One fork of two gloo ranks builds tiny SD3 (two CLIPs with projection and a T5: the pipeline
runs each whole), tiny FLUX.2 (a Qwen3 causal LM with tied embeddings whose decoder stack the
backbone runs alone) and tiny FLUX.1 (CLIP and T5) from real transformers classes, wraps a copy
of each per placement with ``DistillerFullyShard``, encodes each rank's own prompts (and the
empty prompt of CFG) and trains two stage-1 iterations (SD3 and FLUX.2). The two ranks' shards
make up every encoder weight; the offloaded shards sit in CPU memory (trivially here: the device
is the CPU; the planned GPU figures are in docs/scale.md).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from rtdmd.testing.flux import TINY_MAX_SEQUENCE_LENGTH, TINY_RESOLUTION, build_flux_dir
from tests.ranks import free_port, start_ranks
from tests.test_engine.test_fsdp import PROMPTS, _batches, _model, _train
from tests.test_models.test_rtdmd_scale import image_backbone_cfg

FAMILIES = ('sd3', 'flux2', 'flux1')
TRAINED = ('sd3', 'flux2')  # FLUX.1's encoders are encoded only (its transformer is the costly one)
ENCODERS = {'sd3': 3, 'flux2': 1, 'flux1': 2}  # CLIP-L, CLIP-G, T5; Qwen3; CLIP-L, T5
PLACEMENTS = ('replicate', 'shard', 'offload')


def _encoder_layout(backbone) -> dict:
    """Per encoder: (local elements of this rank, whole elements, every weight a DTensor)."""
    out = {}
    for i, encoder in enumerate(backbone.text_encoders()):
        params = list(encoder.parameters())
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel()
                    for p in params)
        out[i] = (local, sum(p.numel() for p in params),
                  all(isinstance(p, DTensor) for p in params))
    return out


def _offloaded(backbone) -> bool:
    """Whether every FSDP unit of every encoder keeps its shards in CPU memory (FSDP2's own
    record of its placement policy)."""
    from torch.distributed.fsdp import CPUOffloadPolicy

    groups = [m._get_fsdp_state()._fsdp_param_group for e in backbone.text_encoders()
              for m in e.modules() if hasattr(m, '_get_fsdp_state')]
    return bool(groups) and all(isinstance(g.offload_policy, CPUOffloadPolicy)
                                for g in groups if g is not None)


def _flux1_model(root: Path):
    """A stage-1 distiller on tiny FLUX.1 (its snapshot written beforehand)."""
    from rtdmd.registry import MODELS

    return MODELS.build(dict(
        type='ACDMDDistiller', sampler=dict(type='CPSSampler', eta=0.9),
        backbone=dict(type='FluxBackbone', pretrained='FLUX.1-dev', weights_root=str(root),
                      dtype='float32', resolution=TINY_RESOLUTION, gradient_checkpointing=False,
                      max_sequence_length=TINY_MAX_SEQUENCE_LENGTH, lora=dict(rank=4, alpha=8)),
        matching=dict(type='RandomStopMatching', dmd_loss=dict(type='DMDLoss'),
                      fake_loss=dict(type='AmbientDSMLoss'))))


def _worker(rank: int, port: int, root: str) -> None:
    from rtdmd.engine.fsdp import DistillerFullyShard

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    rows = slice(2 * rank, 2 * rank + 2)
    out = {}
    try:
        for family in FAMILIES:
            model = (_model(1, family, Path(root) / family) if family in TRAINED
                     else _flux1_model(Path(root) / family))
            for placement in PLACEMENTS:
                copied = copy.deepcopy(model)
                DistillerFullyShard(copied, text_encoders=placement)
                backbone = copied.backbone
                cond = backbone.encode_prompts(PROMPTS[rows])
                null = backbone.null_condition(cond)
                out[f'{family}.{placement}'] = dict(
                    cond=cond, null=null, layout=_encoder_layout(backbone),
                    offloaded=_offloaded(backbone),
                    train=_train(copied, _batches(rows))[0] if family in TRAINED else None)
    finally:
        dist.destroy_process_group()
    torch.save(out, Path(root) / f'rank{rank}.pt')


@pytest.fixture(scope='module')
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every rank's results by ``family.placement``: ``{rank: {...}}``."""
    from rtdmd.utils.setup_env import register_all_modules

    register_all_modules()
    root = tmp_path_factory.mktemp('fsdp_text')
    for family in TRAINED:
        image_backbone_cfg(family, root / family)
    build_flux_dir(str(root / 'flux1'))
    start_ranks(_worker, (free_port(), str(root)))
    return {r: torch.load(root / f'rank{r}.pt') for r in (0, 1)}


def _assert_equal_conditions(got: dict, want: dict, what: str) -> None:
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], torch.Tensor):
            assert torch.equal(got[key], want[key]), f'{what}: {key}'


@pytest.mark.parametrize('placement', ['shard', 'offload'])
@pytest.mark.parametrize('family', FAMILIES)
def test_sharded_text_encoders_encode_and_train_as_replicated(runs: dict, family: str,
                                                              placement: str) -> None:
    # a replicated encoder is whole on each rank; placed, the two ranks' shards make it up
    encoders = runs[0][f'{family}.replicate']['layout']
    assert len(encoders) == ENCODERS[family]
    for name in encoders:
        for rank in (0, 1):
            local, whole, sharded = runs[rank][f'{family}.replicate']['layout'][name]
            assert local == whole and not sharded
        (l0, whole, s0), (l1, _, s1) = (runs[r][f'{family}.{placement}']['layout'][name]
                                         for r in (0, 1))
        assert s0 and s1 and l0 + l1 == whole and max(l0, l1) < 0.6 * whole, (l0, l1, whole)
    for rank in (0, 1):
        ref, got = runs[rank][f'{family}.replicate'], runs[rank][f'{family}.{placement}']
        assert got['offloaded'] == (placement == 'offload')
        assert ref['cond']['prompt_embeds'].abs().max() > 0  # the encoders compute something
        _assert_equal_conditions(got['cond'], ref['cond'], f'{family} {placement} rank {rank}')
        _assert_equal_conditions(got['null'], ref['null'], f'{family} {placement} null')
        if family not in TRAINED:
            continue
        moved = max(float(v.abs().max()) for v in ref['train'].values())
        assert moved > 0, 'nothing trained'
        for key, delta in ref['train'].items():
            # the gathered weights are the replicated ones and run the same kernels: exact
            torch.testing.assert_close(got['train'][key], delta, rtol=0, atol=0,
                                       msg=f'{family} {placement} {key}: '.__add__)
    # the ranks encoded different prompts: the test is not of one shared batch
    assert not torch.equal(runs[0][f'{family}.replicate']['cond']['prompt_embeds'],
                           runs[1][f'{family}.replicate']['cond']['prompt_embeds'])


def test_an_unknown_placement_names_the_key_and_the_choices() -> None:
    from rtdmd.engine.fsdp import DistillerFullyShard
    from rtdmd.utils.config import ConfigError, load_config

    # the config is refused when it is loaded, before any model is built ...
    with pytest.raises(ConfigError, match=r"model_wrapper_cfg.text_encoders: must be one of "
                                          r"\['replicate', 'shard', 'offload'\], got 'cpu'"):
        load_config('configs/rtdmd/flux2_klein_9b_4step.py',
                    {'model_wrapper_cfg.text_encoders': 'cpu'})
    # ... and the wrapper refuses it before anything else (no process group, no model)
    with pytest.raises(ValueError, match=r"model_wrapper_cfg.text_encoders must be one of "
                                         r"\['replicate', 'shard', 'offload'\], got 'cpu'"):
        DistillerFullyShard(torch.nn.Module(), text_encoders='cpu')
