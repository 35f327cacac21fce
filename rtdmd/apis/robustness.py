"""The robustness benchmark: one fixed pipeline config on N seeded analytic worlds.

World ``seed`` (``rtdmd.evaluation.worlds.draw_world``) runs in ``<work_dir>/world_<seed>/``:

1. ``config.py``, a leaf of the pipeline config that sets the world, the reward and the
   evaluation's ``beta`` search bound, and nothing else (a mode reward is not differentiable, so
   its worlds also drop ``model.terms.bp``). Stage config paths are written absolute and
   the world reaches a stage with its own config file through that stage's ``cfg_options``, so
   ``python tools/train.py <work_dir>/world_<seed>/config.py`` reproduces the world's run;
2. the pipeline's stages (finished stages are skipped, an interrupted one resumes);
3. the evaluation against exact truth of the teacher, stage 1 and stage 2 (at every requested
   multiple of stage 2's epochs): ``MODEL_SETS`` sets of the pipeline's ``N`` samples per class
   and model, ``REFERENCE_DRAWS`` exact reference sets, off-support at the 1% quantile (so a
   perfect model's SW2 ratio is 1 within about 0.05, and its off-support ratio 1 within about
   0.1); then the pass criteria (``rtdmd.evaluation.robustness``), in
   ``result.json`` (written atomically; a world with one is finished and not run again).

``run.json`` records a fingerprint of the resolved stage configs; a work dir that holds results
of other settings is refused rather than mixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import os.path as osp
import time
import traceback
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from rtdmd.evaluation.analytic_report import evaluate_models
from rtdmd.evaluation.robustness import Criteria, world_checks, write_results
from rtdmd.evaluation.worlds import WorldSpec, draw_world
from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher
from rtdmd.registry import REWARDS
from rtdmd.utils.config import load_config

from .loading import load_trained_model
from .pipeline import check_pipeline, check_stage_plans, run_stage
from .stage_evaluation import EVALUATION_DEFAULTS
from .stages import (
    StagePlan,
    latest_checkpoint,
    plan_stage,
    plan_stages,
    split_stage_options,
    stage_config,
)

# Evaluation settings of the benchmark (the pipeline's N, projections and seed are kept):
OFF_SUPPORT_QUANTILE = 0.01  # 1%: ~100 exact samples per class below it, a stable reference
MODEL_SETS = 4  # sets of N samples per class and model, SW2 averaged over them
REFERENCE_DRAWS = 10  # exact reference sets per class; the floor averages all their pairs


def pipeline_stages(cfg: Config) -> tuple[dict, dict]:
    """``(stage 1, stage 2)``: the pipeline must be exactly a first stage and one started from it.
    """
    stages = list(cfg.get('stages') or [])
    if len(stages) != 2 or stages[1].get('init_from') != stages[0]['name']:
        raise ValueError(f'{cfg.filename}: the robustness benchmark needs a pipeline of two '
                         f'stages, the second started from the first (init_from); got '
                         f'{[(s.get("name"), s.get("init_from")) for s in stages]}')
    return stages[0], stages[1]


def leaf_text(spec: WorldSpec, pipeline: str) -> str:
    """The world's leaf config (see the module docstring)."""
    base = Config.fromfile(pipeline)
    folder = osp.dirname(osp.abspath(pipeline))
    stages = []
    for stage in base.stages:
        fields = [f'{k}={v!r}' for k, v in stage.items() if k not in ('config', 'cfg_options')]
        if stage.get('config'):  # absolute, and its own file gets the world through options
            path = osp.normpath(osp.join(folder, stage['config']))
            options = dict(stage.get('cfg_options') or {})
            merged = f"{{**{options!r}, 'world': world}}" if options else 'dict(world=world)'
            fields += [f'config={path!r}', f'cfg_options={merged}']
        elif stage.get('cfg_options'):
            fields.append(f"cfg_options={dict(stage['cfg_options'])!r}")
        stages.append(f"    dict({', '.join(fields)}),")
    world = ',\n'.join(f'    {k}={v!r}' for k, v in spec.world.items())
    reward = ', '.join(f'{k}={v!r}' for k, v in spec.reward.items())
    lines = [f'# World {spec.seed} of the robustness family: {spec.describe()}.',
             '# Written by tools/robustness.py; runs alone with tools/train.py.',
             f'_base_ = [{osp.abspath(pipeline)!r}]',
             f'world = dict(\n{world})',
             f'reward = dict(_delete_=True, {reward})',
             'stages = [', *stages, ']',
             f'evaluation = dict(beta_grid_max={spec.beta_grid_max})']
    if spec.kind == 'mode':  # not differentiable: reward back-propagation is impossible
        lines.append('model = dict(terms=dict(bp=None))')
    return '\n'.join(lines) + '\n'


def epoch_options(stage2: str, epochs: int, multiples: list[int]) -> dict[str, Any]:
    """Stage 2 trained to ``max(multiples) x epochs``, a checkpoint at every ``epochs``."""
    if multiples == [1]:
        return {}
    longest = epochs * max(multiples)
    return {f'{stage2}:train_cfg.max_iters': longest, f'{stage2}:train_cfg.val_interval': longest,
            f'{stage2}:default_hooks.checkpoint.interval': epochs,
            f'{stage2}:default_hooks.checkpoint.max_keep_ckpts': max(multiples) + 1}


def fingerprint(cfg: Config, options: dict) -> str:
    """Hash of every stage's resolved config (work dirs and time stamps left out)."""
    parts = []
    for stage in cfg.stages:
        sub = stage_config(cfg, {k: v for k, v in stage.items() if k != 'init_from'}, options)
        data = {k: v for k, v in sub.to_dict().items()
                if k not in ('work_dir', 'experiment_name')}
        parts.append(json.dumps(data, sort_keys=True, default=str))
    return hashlib.sha256('\n'.join(parts).encode()).hexdigest()[:16]


def _write_json(path: str, data: Any) -> None:
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)  # atomic: an interrupted write never leaves half a file


def _checked_run_file(world_dir: str, print_: str) -> None:
    path = osp.join(world_dir, 'run.json')
    if osp.isfile(path):
        with open(path) as f:
            old = json.load(f).get('fingerprint')
        if old != print_:
            raise RuntimeError(f'{world_dir} holds a run of other settings (fingerprint {old}, '
                               f'now {print_}): use another --work-dir, or delete that folder')
    else:
        _write_json(path, dict(fingerprint=print_))


def run_world(spec: WorldSpec, pipeline: str, work_dir: str, options: dict,
              multiples: list[int], crit: Criteria) -> dict[str, Any]:
    """Train and evaluate one world; returns (and writes) its result."""
    world_dir = osp.join(work_dir, f'world_{spec.seed:03d}')
    result_path = osp.join(world_dir, 'result.json')
    os.makedirs(world_dir, exist_ok=True)
    leaf = osp.join(world_dir, 'config.py')
    with open(leaf, 'w') as f:
        f.write(leaf_text(spec, pipeline))
    cfg = load_config(leaf, split_stage_options(options)[0])
    cfg.work_dir = world_dir
    stage1, stage2 = pipeline_stages(cfg)
    epochs = stage_config(cfg, {**stage2, 'init_from': None}, options).train_cfg.max_iters
    options = {**options, **epoch_options(stage2['name'], epochs, multiples)}
    print_ = fingerprint(cfg, options)
    if osp.isfile(result_path):
        with open(result_path) as f:
            done = json.load(f)
        if done.get('fingerprint') == print_:
            return done
    _checked_run_file(world_dir, print_)
    start, cpu = time.perf_counter(), time.process_time()
    result: dict[str, Any] = dict(seed=spec.seed, world=spec.describe(), kind=spec.kind,
                                  fingerprint=print_, stage1=stage1['name'], status='ok')
    try:
        check_pipeline(cfg, options)
        check_stage_plans(plan_stages(cfg, options), retrain_changed=False)
        plans: dict[str, StagePlan] = {}
        for stage in cfg.stages:  # planned after the stages before it trained
            plan = plan_stage(cfg, stage, options, plans)
            plans[stage['name']] = run_stage(plan, log_env=not plans)
        result.update(_evaluate(cfg, spec, options, stage1, stage2, epochs, multiples, crit))
    except Exception as err:  # noqa: BLE001  (one world's failure is a result, not the end)
        result.update(status='failed', error=f'{type(err).__name__}: {err}',
                      traceback=traceback.format_exc())
        print_log(f'world {spec.seed} failed: {err}', logger='current')
    result.update(wall_s=time.perf_counter() - start, cpu_s=time.process_time() - cpu)
    if result['status'] == 'ok':
        _write_json(result_path, result)
    return result


def stage2_rows(stage2: str, multiples: list[int]) -> list[str]:
    return [stage2 if m == 1 else f'{stage2}@{m}x' for m in multiples]


def _evaluate(cfg: Config, spec: WorldSpec, options: dict, stage1: dict, stage2: dict,
              epochs: int, multiples: list[int], crit: Criteria) -> dict[str, Any]:
    """Sample teacher, stage 1 and stage 2 (each epoch multiple); metrics and checks."""
    settings = {**EVALUATION_DEFAULTS, **cfg.evaluation}
    teacher = GaussianMixtureTeacher.from_world(cfg.world.to_dict())
    reward = REWARDS.build(cfg.reward)
    n = settings['samples_per_class']
    classes = torch.arange(teacher.num_classes).repeat_interleave(n * MODEL_SETS)
    gen = torch.Generator().manual_seed(settings['seed'] + 7)
    samples = {'teacher': (teacher.sample(classes, gen), classes)}
    checkpoints = {stage1['name']: (stage1, None)}
    for m, row in zip(multiples, stage2_rows(stage2['name'], multiples), strict=True):
        checkpoints[row] = (stage2, None if multiples == [1] else f'iter_{epochs * m}.pth')
    for row, (stage, ckpt) in checkpoints.items():
        sub = stage_config(cfg, stage, options)
        path = latest_checkpoint(sub.work_dir) if ckpt is None else osp.join(sub.work_dir, ckpt)
        model, _ = load_trained_model(sub, path)
        samples[row] = (model.generate(classes, seed=settings['seed']), classes)
    metrics = evaluate_models(
        teacher, reward, samples, beta=settings['beta'], beta_grid_max=spec.beta_grid_max,
        num_projections=settings['num_projections'], reference_draws=REFERENCE_DRAWS,
        seed=settings['seed'], out_dir=osp.join(cfg.work_dir, 'eval'),
        off_support_quantile=OFF_SUPPORT_QUANTILE, set_size=n)
    rows2 = stage2_rows(stage2['name'], multiples)
    checks = world_checks(metrics, stage1['name'], rows2, spec.beta_grid_max,
                          n * MODEL_SETS * teacher.num_classes, crit)
    return dict(metrics=metrics, checks=checks)


def run_benchmark(pipeline: str, work_dir: str, seeds: list[int], options: dict,
                  multiples: list[int], crit: Criteria | None = None) -> list[dict[str, Any]]:
    """Every world in turn (finished ones read back); the tables after each world."""
    crit = crit or Criteria()
    results = []
    for seed in seeds:
        spec = draw_world(seed)
        print_log(f'robustness: world {seed} ({spec.describe()})', logger='current')
        results.append(run_world(spec, pipeline, work_dir, options, multiples, crit))
        write_results(work_dir, results, dict(pipeline=pipeline, options=options,
                                              multiples=multiples, criteria=vars(crit)))
    return results
