"""The FLUX.2-klein configs load, validate and carry the release's numbers (ALGORITHM.md 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

from rtdmd.models.backbones.pretrained import MissingWeightsError, check_config_weights
from rtdmd.utils.config import load_config
from tests.conftest import REPO

STAGE1 = {'4B': 'configs/ac_dmd/flux2_klein_4b_4step.py',
          '9B': 'configs/ac_dmd/flux2_klein_9b_4step.py'}
STAGE2 = {'4B': 'configs/rtdmd/flux2_klein_4b_4step.py',
          '9B': 'configs/rtdmd/flux2_klein_9b_4step.py'}
DESIGN_CARD = 'configs/rtdmd/flux2_4step.py'  # = the 4B stage-2 recipe
GPUS = {'4B': 16, '9B': 32}  # stage-2 GPUs of the release (ALGORITHM.md 6.3)


def _load(path: str, **options):
    return load_config(str(REPO / path), options or None)


@pytest.mark.parametrize('size', ['4B', '9B'])
@pytest.mark.parametrize('stage', [STAGE1, STAGE2])
def test_backbone_is_klein_base_with_a_distilled_generator(size: str, stage: dict,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.delenv('RTDMD_WEIGHTS', raising=False)
    cfg = _load(stage[size])
    backbone = cfg.model.backbone
    assert backbone.type == 'Flux2KleinBackbone'
    assert backbone.pretrained == f'FLUX.2-klein-base-{size}'  # teacher and fake score
    assert backbone.generator_init == f'FLUX.2-klein-{size}'  # step-distilled (pitfall 20)
    assert backbone.repo_id == f'black-forest-labs/FLUX.2-klein-base-{size}'
    assert backbone.generator_repo_id == f'black-forest-labs/FLUX.2-klein-{size}'
    assert backbone.weights_root == cfg.weights_root == 'weights'
    assert backbone.resolution == 512 and backbone.max_sequence_length == 512
    assert tuple(backbone.text_encoder_out_layers) == (9, 18, 27)
    assert backbone.dtype == 'bfloat16' and backbone.gradient_checkpointing
    # None: the release's list, built from the loaded transformer's single-block count.
    assert dict(backbone.lora) == dict(rank=32, alpha=64, init='gaussian', target_modules=None)
    assert cfg.model.sampler.step_list == [1000, 750, 500, 250] and cfg.model.sampler.eta == 0.9
    assert cfg.model.matching.teacher_guidance == 4.0  # real CFG against the empty prompt


def test_weights_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('RTDMD_WEIGHTS', '/data/weights')
    assert _load(STAGE2['4B']).model.backbone.weights_root == '/data/weights'
    assert _load(STAGE1['9B'], weights_root='/else').model.backbone.weights_root == '/else'


@pytest.mark.parametrize('size', ['4B', '9B'])
def test_stage1_hyperparameters(size: str) -> None:
    cfg = _load(STAGE1[size])
    model = cfg.model
    assert model.type == 'ACDMDDistiller' and model.fake_update_ratio == 10
    match = model.matching
    assert match.type == 'RandomStopMatching'  # AC-DMD, random stop
    assert match.get('sub_interval', True)  # the class's default: the sub-interval
    assert match.consistency_loss.loss_weight == 0.01 and match.consistency_max_jump == 200
    assert dict(match.renoise) == dict(offset=10.0, end=1000.0, min_step=20.0, max_step=980.0)
    for role in ('generator', 'fake_score'):
        optimizer = cfg.optim_wrapper[role].optimizer
        assert optimizer.lr == 1e-6 and optimizer.weight_decay == 0.0
        assert optimizer.betas == (0.9, 0.999) and cfg.optim_wrapper[role].clip_grad.max_norm == 1
    assert cfg.train_dataloader.batch_size == 9
    assert cfg.train_dataloader.dataset.path == 'pickscore_train.txt'
    assert cfg.train_cfg.max_iters == 15000
    (ema,) = cfg.custom_hooks
    assert ema.decay == 0.99 and ema.interval == 1


MICRO_BATCH = {'4B': dict(rollout=32, fake_score=24, generator=12),
               '9B': dict(rollout=24, fake_score=24, generator=16)}


@pytest.mark.parametrize('size, consistency, save_every', [('4B', True, 100), ('9B', False, 50)])
def test_stage2_hyperparameters(size: str, consistency: bool, save_every: int) -> None:
    cfg = _load(STAGE2[size])
    model = cfg.model
    assert model.type == 'RTDMDDistiller' and model.group_size == 24
    assert model.matching.teacher_guidance == 4.0 and model.matching.type == 'FinalStepMatching'
    assert (model.matching.consistency_loss is not None) == consistency  # on 4B, off 9B
    if consistency:  # gamma 0.01, eps_T 200 (the distiller's default jump)
        assert model.matching.consistency_loss.loss_weight == 0.01
        assert model.matching.consistency_max_jump == 200
    assert model.matching.dmd_loss.loss_weight == 1e-3
    assert model.terms.bp.loss_weight == 1e-4 and model.terms.bp.margin == 3.0
    assert model.terms.policy.clip_low == model.terms.policy.clip_high == 1e-5
    assert dict(model.subgrpo) == dict(range_start=0, range_end=2, num_train_steps=2)
    assert model.advantage_clip == 5.0 and model.sampler.eta == 0.9
    # what tools/plan.py fits in 70 GiB per rank (4B: DDP on 16 GPUs, 9B: FSDP on 32)
    assert model.micro_batch == MICRO_BATCH[size]
    # the release's stage-2 recipe: loss / (sub-batches x trained steps), a fresh N(0, 1) LoRA
    assert model.loss_normalization == 'per_step' and model.fresh_lora_std == 1.0
    # the release's training rewards, weight 1 each (ALGORITHM.md 6.3)
    assert {k: (v.scorer.type, v.weight) for k, v in model.rewards.items()} == {
        'clipscore': ('CLIPScore', 1.0), 'hpsv2': ('HPSv2', 1.0),
        'pickscore': ('PickScore', 1.0), 'geneval': ('GenEvalReward', 1.0)}
    generator = cfg.optim_wrapper.generator.optimizer
    assert generator.lr == 3e-6 and generator.weight_decay == 1e-4
    assert cfg.optim_wrapper.fake_score.optimizer.lr == 1e-6
    # 64 prompts per epoch over the release's GPUs, x K = 1536 images.
    assert cfg.train_dataloader.batch_size * GPUS[size] == 64
    assert cfg.train_dataloader.dataset.require_metadata
    assert cfg.train_cfg.max_iters == 1000
    assert cfg.default_hooks.checkpoint.interval == save_every
    ema, monitors = cfg.custom_hooks
    assert ema.decay == 0.9 and ema.interval == 8 and ema.warmup and ema.sub_batches == 16
    assert monitors.type == 'RewardHackingMonitorHook' and monitors.interval == 10
    assert [s['name'] for s in cfg.stages] == ['ac_dmd', 'rtdmd']
    assert cfg.stages[0]['config'] == f'../ac_dmd/flux2_klein_{size.lower()}_4step.py'
    assert cfg.stages[1]['init_from'] == 'ac_dmd'


def test_design_card_config_is_the_4b_recipe() -> None:
    card, leaf = _load(DESIGN_CARD), _load(STAGE2['4B'])
    assert card.to_dict() == leaf.to_dict()


def _cfg(path: str) -> Config:
    """The config as tools/train.py reads it before the imports: no env substitution."""
    return Config.fromfile(str(REPO / path), use_environment_variables=False)


def test_preflight_check_names_each_missing_snapshot(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv('RTDMD_WEIGHTS', str(tmp_path))
    with pytest.raises(MissingWeightsError, match='teacher / fake score') as err:
        check_config_weights(_cfg(DESIGN_CARD))
    assert str(tmp_path / 'FLUX.2-klein-base-4B' / 'transformer' / 'config.json') in str(err.value)
    assert 'black-forest-labs/FLUX.2-klein-base-4B' in str(err.value)
    transformer = tmp_path / 'FLUX.2-klein-base-9B' / 'transformer'
    transformer.mkdir(parents=True)
    (transformer / 'config.json').write_text('{}')
    (transformer / 'diffusion_pytorch_model.safetensors').write_bytes(b'')
    with pytest.raises(MissingWeightsError, match='generator') as err:
        check_config_weights(_cfg(STAGE2['9B']))
    assert str(tmp_path / 'FLUX.2-klein-9B') in str(err.value)
    assert 'hf download black-forest-labs/FLUX.2-klein-9B' in str(err.value)
    gen = tmp_path / 'FLUX.2-klein-9B' / 'transformer'
    gen.mkdir(parents=True)
    (gen / 'config.json').write_text('{}')
    (gen / 'diffusion_pytorch_model.safetensors').write_bytes(b'')
    check_config_weights(_cfg(STAGE1['9B']))  # both present: passes
