"""Every config under configs/ loads and validates: each leaf, each stage of a pipeline, each
point of an ablation grid. A config that no other test touches cannot rot unnoticed."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtdmd.apis.pipeline import check_pipeline
from rtdmd.apis.sweep import load_sweep, plan_jobs
from rtdmd.utils.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p for p in (REPO / 'configs').rglob('*.py') if '_base_' not in p.parts)


def _is_sweep(path: Path) -> bool:
    return 'sweep = dict(' in path.read_text()


def test_every_config_is_found() -> None:
    names = {p.relative_to(REPO / 'configs').as_posix() for p in CONFIGS}
    assert {'rtdmd/toy2d_4step.py', 'rtdmd/flux2_4step.py', 'ac_dmd/sd3m_4step.py',
            'ablations/toy2d_gamma_subset.py'} <= names


@pytest.mark.parametrize('path', [p for p in CONFIGS if not _is_sweep(p)],
                         ids=lambda p: p.relative_to(REPO / 'configs').as_posix())
def test_config_and_every_stage_validate(path: Path, tmp_path: Path) -> None:
    cfg = load_config(str(path))
    cfg.work_dir = str(tmp_path)  # tools/train.py sets it; stage work dirs derive from it
    check_pipeline(cfg, {})
    assert cfg.model.type


@pytest.mark.parametrize('path', [p for p in CONFIGS if _is_sweep(p)],
                         ids=lambda p: p.relative_to(REPO / 'configs').as_posix())
def test_every_point_of_a_sweep_validates(path: Path, tmp_path: Path) -> None:
    sweep = load_sweep(str(path))
    jobs = plan_jobs(sweep, str(tmp_path), sweep.cfg_options)  # validates every point
    assert len(jobs) == len(sweep.points()) > 1
