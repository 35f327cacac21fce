"""Stage 2 of the SD3 recipe on the release's four rewards, each a tiny random-weight instance
of its real architecture in its real file layout (CLIPScore, HPSv2, PickScore, GenEval)."""

from __future__ import annotations

import math
import os.path as osp
from pathlib import Path

import pytest
import torch
from mmengine.optim import OptimWrapper, OptimWrapperDict

from rtdmd.apis.pipeline import check_training_rewards
from rtdmd.datasets.text_prompts import load_benchmark
from rtdmd.registry import MODELS
from rtdmd.rewards.weights import MissingRewardWeightsError
from rtdmd.testing.rewards import (
    TINY,
    build_tiny_clip_dir,
    build_tiny_geneval_dirs,
    build_tiny_hps_v2,
    register_tiny_hps_architecture,
)
from rtdmd.testing.sd3 import TINY_RESOLUTION, build_sd3_dir
from rtdmd.utils.config import load_config
from rtdmd.utils.setup_env import register_all_modules
from tests.conftest import REPO

pytest.importorskip('open_clip')


@pytest.fixture(scope='module')
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict:
    register_tiny_hps_architecture(str(tmp_path_factory.mktemp('open_clip_cfg')))
    rewards = str(tmp_path_factory.mktemp('rewards'))
    build_tiny_geneval_dirs(rewards)  # the detector's and CLIP's folders (CLIPScore's too)
    build_tiny_clip_dir(osp.join(rewards, 'PickScore_v1'), pad_token='!', seed=1,
                        logit_scale=math.log(90.0))
    build_tiny_hps_v2(osp.join(rewards, 'HPS_v2.1_compressed.pt'))
    weights = str(tmp_path_factory.mktemp('weights'))
    build_sd3_dir(weights)
    return dict(rewards=rewards, weights=weights)


def release_config(weights: str):
    return load_config(str(REPO / 'configs/rtdmd/sd3m_4step.py'), {
        'stages': None, 'weights_root': weights, 'backbone.resolution': TINY_RESOLUTION,
        'backbone.dtype': 'float32', 'backbone.max_sequence_length': 16,
        'backbone.gradient_checkpointing': False, 'backbone.lora.rank': 4,
        'backbone.lora.alpha': 8, 'model.group_size': 2,
        'train_rewards.hpsv2.scorer.model_name': TINY,  # the tiny ViT-H-14 stand-in
        'train_rewards.geneval.scorer.detector_size': (128, 128)})


def test_one_epoch_on_the_release_rewards(roots: dict, monkeypatch) -> None:
    monkeypatch.setenv('RTDMD_REWARD_WEIGHTS', roots['rewards'])
    register_all_modules()
    cfg = release_config(roots['weights'])
    check_training_rewards(cfg)  # the pre-flight finds every file of the real layout
    model = MODELS.build(cfg.model)
    assert sorted(model.reward.scorers) == ['clipscore', 'geneval', 'hpsv2', 'pickscore']
    assert model.reward.differentiable_names == [
        'clipscore', 'hpsv2', 'pickscore']  # back-propagation never sees GenEval (pitfall 10)
    optim = OptimWrapperDict(**{
        role: OptimWrapper(torch.optim.AdamW(model.backbone.trainable_parameters(role), lr=1e-3))
        for role in ('generator', 'fake_score')})
    items = load_benchmark('geneval', 2)  # GenEval prompts with their metadata, as in training
    data = dict(prompt=[i['prompt'] for i in items], metadata=[i['metadata'] for i in items],
                index=torch.arange(2))
    before = {n: p.detach().clone() for n, p in model.backbone.generator.named_parameters()
              if p.requires_grad}
    log_vars = model.train_step(data, optim)
    for name in ('reward_clipscore', 'reward_hpsv2', 'reward_pickscore', 'reward_geneval',
                 'loss_policy', 'loss_bp', 'loss_dm', 'loss_fake_dsm'):
        assert torch.isfinite(log_vars[name]), name
    assert float(log_vars['reward_geneval']) <= 1.0  # partial credit
    after = dict(model.backbone.generator.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    # checkpoints hold no reward model
    assert not [k for k in model.state_dict() if 'reward' in k]


def test_the_pre_flight_names_the_first_missing_reward_file(roots: dict, tmp_path: Path,
                                                            monkeypatch) -> None:
    monkeypatch.setenv('RTDMD_REWARD_WEIGHTS', str(tmp_path))
    with pytest.raises(MissingRewardWeightsError, match='clip-vit-large-patch14'):
        check_training_rewards(release_config(roots['weights']))
