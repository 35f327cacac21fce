"""Shared fixtures: a tiny version of the analytic world and a per-session weight cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# Small enough for a few-second run, big enough to exercise every code path.
TINY_TOY_OPTIONS = [
    'backbone.init_fit.iters=20', 'backbone.init_fit.batch_size=64', 'backbone.hidden_dim=32',
    'train_dataloader.batch_size=16', 'train_cfg.max_iters=6', 'train_cfg.val_interval=6',
    'model.fake_update_ratio=2', 'default_hooks.checkpoint.interval=3',
    'default_hooks.logger.interval=1',
    'val_dataloader.batch_size=64', 'val_dataloader.dataset.samples_per_class=64',
    'test_dataloader.batch_size=64', 'test_dataloader.dataset.samples_per_class=64',
    'val_evaluator.num_projections=16', 'val_evaluator.reference_draws=1',
    'test_evaluator.num_projections=16', 'test_evaluator.reference_draws=1',
]


@pytest.fixture(scope='session', autouse=True)
def _weight_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Students' teacher-fit weights are cached per test session, never in the user's home."""
    os.environ['RTDMD_CACHE'] = str(tmp_path_factory.mktemp('rtdmd_cache'))
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture()
def tiny_world() -> dict:
    return dict(means=[[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]], stds=[0.3, 0.5, 0.4],
                class_weights=[[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])


@pytest.fixture()
def tiny_backbone_cfg(tiny_world: dict) -> dict:
    return dict(type='GaussianMixtureBackbone', world=tiny_world, hidden_dim=32, depth=2,
                init_fit=dict(iters=30, batch_size=64, lr=2e-3, seed=0))


def pytest_collection_modifyitems(config, items) -> None:
    """The memory planner's tests run last. They run backward passes on FakeTensors of a CUDA
    device, which starts autograd's device threads in this process; after that torch refuses
    autograd in a forked child ("Unable to handle autograd's threading in combination with
    fork-based multiprocessing"), and the fault-injection and FSDP tests fork their ranks."""
    planner = [item for item in items if item.nodeid.startswith('tests/test_apis/test_plan.py')]
    if planner:
        items[:] = [item for item in items if item not in planner] + planner
