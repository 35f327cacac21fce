"""Run a config: one Runner, or a pipeline of stages followed by a side-by-side evaluation.

A config with a top-level ``stages`` list trains each stage with its own Runner and work dir
(``<work_dir>/<name>``); a stage may start from an earlier one (``init_from``). A finished stage
is skipped and an interrupted one resumed, so a crashed pipeline continues where it stopped.
``evaluation`` then samples every listed model and writes the comparison (the analytic world's
ground-truth report for the toy configs).
"""

from __future__ import annotations

import json
import os
import os.path as osp
from typing import Any

from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from rtdmd.utils.setup_env import register_all_modules

from .stage_evaluation import check_evaluation, evaluate_stages
from .stages import check_stage_options, final_checkpoint, stage_config


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg``; it ignores the project-level keys and dumps the whole config."""
    register_all_modules()
    return Runner.from_cfg(cfg)


def run_training(cfg: Config, cli_options: dict | None = None) -> Runner | None:
    """Train ``cfg``: a single Runner, or every stage and then the evaluation.

    ``cli_options`` are the command line's ``--cfg-options``: they reach every stage that uses
    the pipeline's own file, and their world / reward / backbone keys reach every stage;
    ``NAME:key=value`` reaches stage NAME only and ``*:key=value`` every stage.
    """
    check_pipeline(cfg, cli_options)
    check_training_rewards(cfg, cli_options)
    if not cfg.get('stages'):
        runner = build_runner(cfg)
        runner.train()
        return runner
    for stage in cfg.stages:
        run_stage(cfg, stage, cli_options)
    if cfg.get('evaluation'):
        run_evaluation(cfg, cli_options)
    return None


def check_pipeline(cfg: Config, cli_options: dict | None = None) -> None:
    """Validate a run before anything trains: every stage's config with its options, and the
    ``evaluation`` section (known keys, known models)."""
    check_stage_options(cfg, cli_options)
    if cfg.get('stages') and cfg.get('evaluation'):
        check_evaluation(cfg.evaluation, [s['name'] for s in cfg.stages])


def check_training_rewards(cfg: Config, cli_options: dict | None = None) -> None:
    """Every reward model a run will train on finds its weight files, before anything trains.

    A pipeline builds its stage-2 rewards only after stage 1 has run for hours; this checks them
    all up front from the configs (no model is built).

    Raises:
        MissingRewardWeightsError: naming every reward with missing files and their sources.
    """
    from rtdmd.rewards.weights import check_all_reward_weights

    configs = ([stage_config(cfg, {k: v for k, v in stage.items() if k != 'init_from'},
                             cli_options) for stage in cfg.stages]
               if cfg.get('stages') else [cfg])
    scorers = [spec['scorer'] for sub in configs
               for spec in (sub.get('model', {}).get('rewards') or {}).values()
               if isinstance(spec, dict) and isinstance(spec.get('scorer'), dict)]
    check_all_reward_weights(scorers)


def run_stage(cfg: Config, stage: dict, cli_options: dict | None = None) -> None:
    sub = stage_config(cfg, stage, cli_options)
    max_iters = sub.train_cfg.max_iters
    if osp.isfile(osp.join(sub.work_dir, 'last_checkpoint')):
        done = final_checkpoint(cfg, stage['name']).endswith(f'iter_{max_iters}.pth')
        if done:
            print_log(f"stage {stage['name']}: finished earlier, skipped", logger='current')
            return
        sub.resume = True  # an interrupted stage continues from its last checkpoint
    print_log(f"stage {stage['name']}: training in {sub.work_dir}", logger='current')
    build_runner(sub).train()


def run_evaluation(cfg: Config, cli_options: dict | None = None) -> dict[str, Any]:
    """Evaluate every model of ``cfg.evaluation`` from its stage's final checkpoint."""
    stages = {s['name']: s for s in cfg.stages}
    return evaluate_stages(cfg, lambda name: stage_config(cfg, stages[name], cli_options),
                           list(stages))


def run_test(cfg: Config, checkpoint: str | None, cli_options: dict | None = None
             ) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (or the config's ``load_from``); writes ``metrics.json``.

    For a pipeline config (``stages``), evaluates the trained stages side by side instead.
    """
    if cfg.get('stages'):
        return run_evaluation(cfg, cli_options)
    if checkpoint is not None:
        cfg.load_from = checkpoint
    runner = build_runner(cfg)
    metrics = runner.test()
    os.makedirs(cfg.work_dir, exist_ok=True)
    path = osp.join(cfg.work_dir, 'metrics.json')
    with open(path, 'w') as f:
        json.dump({k: float(v) for k, v in metrics.items()}, f, indent=2, sort_keys=True)
    runner.logger.info(f'metrics written to {path}')
    return metrics
