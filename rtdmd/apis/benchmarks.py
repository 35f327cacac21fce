"""``tools/test.py --benchmarks``: evaluate a checkpoint, an exported pipeline or the teacher.

Every reward's weight files are checked first (a missing one stops the run before any model is
loaded); then each requested model is built in turn, evaluated on every chosen suite
(:func:`rtdmd.evaluation.suites.evaluate_method`, resumable; a suite's reward models are built
when its turn comes and released after, so memory holds one suite's rewards) and released;
finally
``results.md`` / ``results.csv`` put every method evaluated under the same output folder side
by side (plus any ``--compare`` folders).
"""

from __future__ import annotations

import os.path as osp
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from rtdmd.evaluation.suites import (
    SuiteScorers,
    check_benchmark_config,
    check_suite_weights,
    evaluate_method,
    method_slug,
    release_memory,
    write_results,
)

MODEL_KINDS = ('student', 'teacher', 'pipeline')


@dataclass
class BenchmarkRequest:
    """What to evaluate (the command line of ``tools/test.py --benchmarks``).

    Attributes:
        suites: suite names; empty = the section's ``default_suites`` (else all suites).
        models: any of ``student`` (the checkpoint), ``teacher`` (N-step Euler with CFG),
            ``pipeline`` (an exported folder).
        checkpoint: the student's training checkpoint (default: the final checkpoint of the
            stage being evaluated, for a config with ``stages``; else ``load_from``).
        pipeline: the exported pipeline folder for ``pipeline``.
        stage: for a config with ``stages``: the stage whose model is evaluated (default last).
        use_ema: the student samples with its EMA generator.
        teacher_steps, teacher_guidance: override ``benchmark.teacher``.
        seeds, batch_size, max_prompts: override the section's values.
        method_names: ``{kind: name}`` of the methods in the results table.
        compare: ``{method: folder}`` of earlier results to add to the table.
        out_root: where the results go (default ``<work_dir>/benchmarks``).
        device: where models and rewards run (default: this process's GPU, else the CPU).
    """

    suites: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ['student'])
    checkpoint: str | None = None
    pipeline: str | None = None
    stage: str | None = None
    use_ema: bool = True
    teacher_steps: int | None = None
    teacher_guidance: float | None = None
    seeds: list[int] | None = None
    batch_size: int | None = None
    max_prompts: int | None = None
    method_names: dict[str, str] = field(default_factory=dict)
    compare: dict[str, str] = field(default_factory=dict)
    out_root: str | None = None
    device: str | None = None


def chosen_suites(bench: dict, suites: list[str]) -> list[str]:
    if suites == ['all']:
        return list(bench['suites'])
    return suites or list(bench.get('default_suites') or bench['suites'])


def check_request(cfg: Config, req: BenchmarkRequest) -> list[str]:
    """Validate everything that can be checked without loading a model; returns the suites."""
    bench = cfg.get('benchmark')
    if not bench:
        raise ValueError(f'{cfg.filename} has no benchmark section: add '
                         "'../_base_/evaluation/benchmarks.py' to its _base_ (image models) or "
                         'define benchmark=dict(rewards=..., suites=...)')
    unknown = set(req.models) - set(MODEL_KINDS)
    if unknown or not req.models:
        raise ValueError(f'--models: choose from {list(MODEL_KINDS)}, got {req.models}')
    if 'pipeline' in req.models and not req.pipeline:
        raise ValueError('--models pipeline needs --pipeline <exported folder>')
    suites = chosen_suites(bench, req.suites)
    check_benchmark_config(bench, suites)
    if req.checkpoint is not None and not osp.isfile(req.checkpoint):
        raise FileNotFoundError(f'checkpoint {req.checkpoint} does not exist')
    return suites


def run_benchmarks(cfg: Config, req: BenchmarkRequest, cli_options: dict | None = None
                   ) -> str:
    """Evaluate the requested models on the chosen suites; returns the results table."""
    suites = check_request(cfg, req)
    if req.device is None:  # after init_distributed: each process its own GPU
        req.device = (f'cuda:{torch.cuda.current_device()}' if torch.cuda.is_available()
                      else 'cpu')
    bench = cfg.benchmark.to_dict()
    out_root = Path(req.out_root or osp.join(cfg.work_dir, 'benchmarks'))
    out_root.mkdir(parents=True, exist_ok=True)
    check_suite_weights(bench, suites)  # a missing reward weight fails here, before any model
    scorers = SuiteScorers(bench, req.device)
    for kind in req.models:
        generate, settings = _build_generator(cfg, req, kind, bench, cli_options)
        name = req.method_names.get(kind) or _default_name(cfg, kind, settings)
        print_log(f'[benchmark] evaluating {name} ({kind}) on {suites}', logger='current')
        evaluate_method(generate, settings, bench, suites, out_root / method_slug(name), scorers,
                        seeds=req.seeds, batch_size=req.batch_size, max_prompts=req.max_prompts,
                        log=lambda msg: print_log(msg, logger='current'))
        del generate
        release_memory()
    from mmengine.dist import barrier, is_main_process
    barrier()  # every process has written its method folders
    if not is_main_process():
        return ''
    table, _ = write_results(out_root, req.compare)
    print_log(f'[benchmark] results in {out_root}:\n{table}', logger='current')
    return table


def _model_config(cfg: Config, req: BenchmarkRequest, cli_options: dict | None) -> Config:
    if cfg.get('stages'):
        from rtdmd.apis.loading import stage_of
        return stage_of(cfg, req.stage, cli_options)
    return cfg


def _student_checkpoint(cfg: Config, req: BenchmarkRequest) -> str:
    if req.checkpoint:
        return req.checkpoint
    if cfg.get('stages'):
        from rtdmd.apis.stages import final_checkpoint
        return final_checkpoint(cfg, req.stage or cfg.stages[-1]['name'])
    if cfg.get('load_from'):
        return cfg.load_from
    raise FileNotFoundError('no checkpoint to evaluate: pass --checkpoint (or evaluate '
                            '--models teacher)')


def _build_generator(cfg: Config, req: BenchmarkRequest, kind: str, bench: dict,
                     cli_options: dict | None) -> tuple[Any, dict]:
    from rtdmd.evaluation.generators import PipelineGenerator, StudentGenerator, TeacherGenerator

    if kind == 'pipeline':
        gen = PipelineGenerator(req.pipeline, device=req.device)
        return gen, gen.settings()
    model_cfg = _model_config(cfg, req, cli_options)
    common = dict(config=osp.abspath(cfg.filename) if cfg.filename else None,
                  backbone=model_cfg.backbone.get('type'),
                  pretrained=model_cfg.backbone.get('pretrained'),
                  dtype=model_cfg.backbone.get('dtype'))
    if kind == 'student':
        from rtdmd.apis.loading import load_trained_model
        checkpoint = _student_checkpoint(cfg, req)
        model, ema = load_trained_model(model_cfg, checkpoint, req.use_ema)
        gen = StudentGenerator(model.to(req.device))
        return gen, dict(gen.settings(), checkpoint=osp.abspath(checkpoint), ema=ema, **common)
    from rtdmd.registry import MODELS
    from rtdmd.utils.setup_env import register_all_modules
    register_all_modules()
    teacher = dict(bench.get('teacher') or {})
    steps = req.teacher_steps or teacher.get('steps') or 50
    guidance = req.teacher_guidance
    if guidance is None:
        guidance = teacher.get('guidance_scale')
    if guidance is None:
        guidance = (model_cfg.model.get('matching') or {}).get('teacher_guidance', 1.0)
    model = MODELS.build(model_cfg.model).eval().to(req.device)  # builds no reward model
    gen = TeacherGenerator(model, int(steps), float(guidance))
    return gen, dict(gen.settings(), **common)


def _default_name(cfg: Config, kind: str, settings: dict) -> str:
    stem = osp.splitext(osp.basename(cfg.filename or 'model'))[0]
    if kind == 'student':
        return stem
    if kind == 'teacher':
        return f"{stem}_teacher_{settings['steps']}steps_cfg{settings['guidance_scale']:g}"
    return osp.basename(osp.normpath(settings['path']))


__all__ = ['BenchmarkRequest', 'MODEL_KINDS', 'check_request', 'run_benchmarks']
