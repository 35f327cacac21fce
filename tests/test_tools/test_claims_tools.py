"""tools/world_options.py, and the claims' configs (the sweeps and the hybrid pipeline) load."""

from __future__ import annotations

import argparse
import importlib.util
import shlex
from pathlib import Path

import pytest
from mmengine.config import DictAction

from rtdmd.apis.pipeline import check_pipeline
from rtdmd.apis.stages import split_stage_options
from rtdmd.apis.sweep import load_sweep
from rtdmd.evaluation.worlds import draw_world
from rtdmd.utils.config import load_config
from rtdmd.utils.setup_env import register_all_modules
from tests.conftest import REPO

HYBRID = str(REPO / 'configs' / 'ablations' / 'toy2d_hybrid_pipeline.py')


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f'rtdmd_tools_{name}', REPO / 'tools' / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('seed', [1, 3])  # a quadratic and a linear world
def test_world_options_put_the_pipeline_on_the_world(seed: int, capsys, tmp_path: Path) -> None:
    """What the shell passes on (split on spaces) reaches every stage as the drawn world, and a
    reward of another type loses the base's keys (a quadratic reward has no direction)."""
    assert _tool('world_options.py').main([str(seed)]) == 0
    words = shlex.split(capsys.readouterr().out)
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = parser.parse_args(['--cfg-options', *words]).cfg_options
    register_all_modules()
    cfg = load_config(HYBRID, split_stage_options(options)[0])
    cfg.work_dir = str(tmp_path)
    check_pipeline(cfg, options)  # every stage validates on the world
    spec = draw_world(seed)
    assert cfg.world.to_dict() == spec.world
    assert cfg.reward.to_dict() == spec.reward
    assert cfg.evaluation.beta_grid_max == spec.beta_grid_max


POINTS = {'toy2d_fake_ratio_gamma': 9, 'toy2d_gamma_ratio1_short': 3, 'toy2d_beta_weights': 9,
          'toy2d_beta_dm': 3}


@pytest.mark.parametrize('name', sorted(POINTS))
def test_claims_sweeps_load(name: str) -> None:
    sweep = load_sweep(str(REPO / 'configs' / 'ablations' / f'{name}.py'))
    assert len(sweep.points()) == POINTS[name]
