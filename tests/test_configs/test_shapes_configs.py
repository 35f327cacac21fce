"""The shapes-world configs: they validate, and the teacher pipelines hand one family to both
stages."""

from __future__ import annotations

import pytest

from rtdmd.apis.pipeline import check_pipeline
from rtdmd.apis.stages import stage_config
from rtdmd.utils.config import load_config
from tests.conftest import REPO


@pytest.mark.parametrize('family', ['sd3', 'flux2'])
def test_teacher_pipeline_stages_share_the_family(family: str, tmp_path) -> None:
    cfg = load_config(str(REPO / f'configs/teachers/shapes_{family}.py'))
    cfg.work_dir = str(tmp_path)
    options = {'family.num_attention_heads': 2}
    check_pipeline(cfg, options)
    vae, flow = (stage_config(cfg, {k: v for k, v in s.items() if k != 'init_from'}, options)
                 for s in cfg.stages)
    assert vae.model.type == 'ShapesVAETrainer' and flow.model.type == 'ShapesFlowTeacher'
    assert vae.model.family == flow.model.family
    assert flow.model.family.num_attention_heads == 2  # a command-line family key reaches both
    assert [s.get('init_from') for s in cfg.stages] == [None, 'vae']
    assert flow.custom_hooks[0].type == 'ExportWeightsHook'


def test_feature_network_config_validates() -> None:
    cfg = load_config(str(REPO / 'configs/evaluation/shapes_features.py'))
    assert cfg.model.type == 'ShapesFeatureTrainer'
    assert cfg.train_dataloader.dataset.split == 'all'
