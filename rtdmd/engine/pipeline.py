"""Build the mmengine Runner from a validated config and run training or evaluation."""

from __future__ import annotations

import json
import os.path as osp
from typing import Any

from mmengine.config import Config
from mmengine.runner import Runner

from rtdmd.utils.setup_env import register_all_modules



def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg``; it ignores the project-level keys and dumps the whole config."""
    register_all_modules()
    return Runner.from_cfg(cfg)


def run_training(cfg: Config) -> Runner:
    runner = build_runner(cfg)
    runner.train()
    return runner


def run_test(cfg: Config, checkpoint: str | None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the config's ``load_from``); writes ``metrics.json``."""
    if checkpoint is not None:
        cfg.load_from = checkpoint
    runner = build_runner(cfg)
    metrics = runner.test()
    path = osp.join(cfg.work_dir, 'metrics.json')
    with open(path, 'w') as f:
        json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2, sort_keys=True)
    runner.logger.info(f'metrics written to {path}')
    return metrics
