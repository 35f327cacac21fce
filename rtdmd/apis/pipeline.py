"""Run a config: one Runner, or a pipeline of stages followed by a side-by-side evaluation.

A config with a top-level ``stages`` list trains each stage with its own Runner and work dir
(``<work_dir>/<name>``); a stage may start from an earlier one (``init_from``). On a rerun with
``--resume``, a stage whose final checkpoint was written by the same resolved config is skipped
and an interrupted one resumed, so a crashed pipeline continues where it stopped. A stage whose
checkpoints were written with other options is refused before anything trains, naming the
changed keys: re-training it would silently replace hours of work that the change may not have
meant to discard (``retrain_changed=True``, ``--retrain-changed``, moves such stages and the
stages started from them aside and trains them again). ``evaluation`` then samples every listed
model and writes the comparison (the analytic world's ground-truth report for the toy configs).
"""

from __future__ import annotations

import os
import os.path as osp
from typing import Any

from mmengine.config import Config
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.runner import Runner

from rtdmd.engine.runner import LaterStageRunner
from rtdmd.utils.atomic import atomic_write_json, remove_stale_temporaries
from rtdmd.utils.config import ConfigError
from rtdmd.utils.errors import RunDirError
from rtdmd.utils.provenance import provenance
from rtdmd.utils.run_dir import move_aside, prepare_run
from rtdmd.utils.setup_env import register_all_modules
from rtdmd.utils.train_options import apply_train_options

from .stage_evaluation import check_evaluation, evaluate_stages
from .stages import StagePlan, check_stage_options, plan_stage, plan_stages, stage_config


def build_runner(cfg: Config, log_env: bool = True) -> Runner:
    """``Runner.from_cfg``; it ignores the project-level keys and dumps the whole config.

    ``cfg.train_options`` (tools/train.py's ``--amp``, ``--auto-scale-lr``) are applied here,
    so they reach every stage of a pipeline. ``log_env=False`` (a pipeline's later stages): the
    environment and config are not logged again (:class:`LaterStageRunner`).
    """
    register_all_modules()
    apply_train_options(cfg, cfg.pop('train_options', None) or [])
    return (Runner if log_env else LaterStageRunner).from_cfg(cfg)


def run_training(cfg: Config, cli_options: dict | None = None,
                 retrain_changed: bool = False) -> Runner | None:
    """Train ``cfg``: a single Runner, or every stage and then the evaluation.

    ``cli_options`` are the command line's ``--cfg-options``: they reach every stage that uses
    the pipeline's own file, and their world / reward / backbone keys reach every stage;
    ``NAME:key=value`` reaches stage NAME only and ``*:key=value`` every stage. With
    ``cfg.resume`` the run continues from its newest intact checkpoint (see module docstring).

    Raises:
        RunDirError: a checkpoint to resume from is corrupt, or of another stage or config.
    """
    check_pipeline(cfg, cli_options)
    check_training_rewards(cfg, cli_options)
    if not cfg.get('stages'):
        # before prepare_run: a resume compares the config the Runner trains with
        apply_train_options(cfg, cfg.pop('train_options', None) or [])
        prepare_run(cfg)
        runner = build_runner(cfg)
        runner.train()
        return runner
    check_stage_plans(plan_stages(cfg, cli_options), retrain_changed)
    plans: dict[str, StagePlan] = {}
    trained = False  # the environment and config are logged by the first stage that trains
    for index, stage in enumerate(cfg.stages):
        plan = plan_stage(cfg, stage, cli_options, plans)  # after the stages before it trained
        print_log(f'stage {index + 1}/{len(cfg.stages)}: {stage["name"]}', logger='current')
        plans[stage['name']] = run_stage(plan, log_env=not trained)
        trained = trained or plan.state != 'done'
    if cfg.get('evaluation'):
        run_evaluation(cfg, cli_options)
    return None


def check_stage_plans(plans: list[StagePlan], retrain_changed: bool) -> None:
    """Refuse, before anything trains, stages whose checkpoints another config wrote."""
    changed = [p for p in plans if p.state == 'changed']
    if changed and not retrain_changed:
        lines = '\n'.join(f'  - {p.name} ({p.cfg.work_dir}): {p.reason}' for p in changed)
        raise RunDirError(
            f'{len(changed)} stage(s) of this work dir were trained with other options:\n'
            f'{lines}\nRerun with the options they were trained with, pass --retrain-changed to '
            f'move them aside and train them (and the stages started from them) again, use '
            f'another --work-dir, or --start-over')


#: Training datasets cheap enough to build up front (they read a text file or nothing), so an
#: empty, undecodable or malformed prompt file of stage 2 stops the run before stage 1 trains.
PREFLIGHT_DATASETS = frozenset({'TextPromptDataset', 'ClassPromptDataset'})


def check_pipeline(cfg: Config, cli_options: dict | None = None) -> None:
    """Validate a run before anything trains: every stage's config with its options, the
    ``evaluation`` section (known keys, known models) and every stage's prompt dataset."""
    check_stage_options(cfg, cli_options)
    if cfg.get('stages') and cfg.get('evaluation'):
        check_evaluation(cfg.evaluation, [s['name'] for s in cfg.stages])
    configs = ([(s['name'], stage_config(cfg, {k: v for k, v in s.items() if k != 'init_from'},
                                         cli_options)) for s in cfg.stages]
               if cfg.get('stages') else [(None, cfg)])
    errors = []
    for name, sub in configs:
        dataset = (sub.get('train_dataloader') or {}).get('dataset')
        if not isinstance(dataset, dict) or dataset.get('type') not in PREFLIGHT_DATASETS:
            continue
        from rtdmd.registry import DATASETS

        register_all_modules()
        try:
            if len(DATASETS.build(dataset)) == 0:
                raise ValueError('it holds no item')
        except (ValueError, TypeError) as err:  # PromptFileError is a ValueError
            where = f'stage {name}: ' if name else ''
            errors.append(f'{where}train_dataloader.dataset: {err}')
    if errors:
        raise ConfigError(errors)


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


def run_stage(plan: StagePlan, log_env: bool = True) -> StagePlan:
    """Train one planned stage; returns its plan as ``'done'`` with the final checkpoint.

    ``log_env``: its Runner logs the environment and config (see :func:`build_runner`).
    """
    sub = plan.cfg
    if get_rank() == 0:
        for path in remove_stale_temporaries(sub.work_dir):
            print_log(f'removed {path}, left by an interrupted write', logger='current')
    for message in plan.skipped:
        print_log(f'stage {plan.name}: {message}', logger='current', level=30)
    if plan.state == 'done':
        print_log(f'stage {plan.name}: finished earlier with the same config, skipped '
                  f'({plan.checkpoint})', logger='current')
        return plan
    if plan.state == 'changed':  # allowed by check_stage_plans, or its start stage retrained
        moved = move_aside(sub.work_dir)
        print_log(f'stage {plan.name}: {plan.reason}; its old run moved to {moved}',
                  logger='current')
    sub.resume = plan.state == 'resume'  # an interrupted stage continues from its checkpoint
    sub.load_from = plan.checkpoint if plan.state == 'resume' else None
    print_log(f'stage {plan.name}: training in {sub.work_dir}', logger='current')
    prepare_run(sub)
    build_runner(sub, log_env).train()
    final = osp.join(sub.work_dir, f'iter_{sub.train_cfg.max_iters}.pth')
    return StagePlan(plan.name, sub, 'done', final)


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
    atomic_write_json(path, {**{k: float(v) for k, v in metrics.items()},
                             '_provenance': provenance()}, sort_keys=True)
    runner.logger.info(f'metrics written to {path}')
    return metrics
