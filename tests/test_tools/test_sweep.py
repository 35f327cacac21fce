"""tools/sweep.py and rtdmd/apis/sweep.py: grid, command lines, strict specs, a real sweep."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

from rtdmd.apis.sweep import (
    SweepError,
    collect,
    format_options,
    format_value,
    load_sweep,
    plan_jobs,
)
from tests.conftest import REPO

AC_DMD = str(REPO / 'configs' / 'ac_dmd' / 'toy2d_4step.py')
ABLATION = REPO / 'configs' / 'ablations' / 'toy2d_gamma_subset.py'


def load_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f'rtdmd_tools_{name}', REPO / 'tools' / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_sweep(path: Path, **spec) -> Path:
    spec = {'config': AC_DMD, 'metrics': ['toy/sw2_teacher'],
            'axes': {'ratio': {'values': [1, 2], 'keys': ['model.fake_update_ratio']}}, **spec}
    path.write_text(f'sweep = {spec!r}\n')
    return path


def test_grid_expansion_and_point_names(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path / 's.py', axes={
        'gamma': {'values': [0.0, 0.1], 'keys': ['a.w', 'stages.0.cfg_options.a.w']},
        'steps': {'values': [[1000, 500], 'final_step', None], 'keys': ['b']}}))
    points = sweep.points()
    assert [p.name for p in points] == [
        'gamma=0.0,steps=[1000,500]', 'gamma=0.0,steps=final_step', 'gamma=0.0,steps=None',
        'gamma=0.1,steps=[1000,500]', 'gamma=0.1,steps=final_step', 'gamma=0.1,steps=None']
    assert points[4].options == {'a.w': 0.1, 'stages.0.cfg_options.a.w': 0.1, 'b': 'final_step'}
    assert sweep.config == AC_DMD


VALUES = [0.0, 0.01, 1e-5, 1.0, 3, -2, True, False, None, 'final_step', 'x/y', [1000, 500],
          (1, 2), (7,), [], ['teacher', 'ac_dmd', 'rtdmd'], [[1, 2], (3.5, None)], [True, 's']]


def test_values_round_trip_through_the_train_tools_dict_action() -> None:
    options = {f'k{i}': v for i, v in enumerate(VALUES)}
    args = load_module('train.py').parse_args(['c.py', '--cfg-options', *format_options(options)])
    assert args.cfg_options == options
    for key, value in options.items():  # same types too (True == 1, (1,) != [1])
        assert repr(args.cfg_options[key]) == repr(value)


@pytest.mark.parametrize('value', ['a b', 'x,y', '1', 'None', 'true', {'a': 1}, ['a b']])
def test_values_that_would_change_on_the_command_line_are_refused(value) -> None:
    with pytest.raises(SweepError, match='cannot pass|carries'):
        format_value(value)


@pytest.mark.parametrize('spec, message', [
    (dict(metric=['x']), "sweep.metric: unknown key; valid: config, axes, cfg_options, metrics"),
    (dict(axes={'g': {'values': [1]}}), 'sweep.axes.g.keys: missing'),
    (dict(axes={'g': {'keys': ['a']}}), 'sweep.axes.g.values: missing'),
    (dict(axes={'g': {'values': [1], 'keys': ['a'], 'key': 1}}),
     'sweep.axes.g.key: unknown key; valid: values, keys'),
    (dict(axes={'g': {'values': [], 'keys': ['a']}}), 'sweep.axes.g.values: a non-empty list'),
    (dict(axes={'g': {'values': ['a b'], 'keys': ['a']}}), 'sweep.axes.g.values:'),
    (dict(axes={'g': {'values': [1], 'keys': ['a']}, 'h': {'values': [2], 'keys': ['a']}}),
     "key 'a' is set by two axes"),
    (dict(axes={}), 'sweep.axes: a non-empty dict'),
    (dict(metrics=[]), 'sweep.metrics: a non-empty list'),
    (dict(config='nope.py'), 'nope.py does not exist'),
])
def test_strict_spec_errors_name_the_key(tmp_path: Path, spec: dict, message: str) -> None:
    with pytest.raises(SweepError) as err:
        load_sweep(write_sweep(tmp_path / 's.py', **spec))
    assert message in str(err.value)


def test_missing_keys_and_stray_top_level_keys(tmp_path: Path) -> None:
    (tmp_path / 's.py').write_text("sweep = dict(config='x.py')\nsweeps = 1\n")
    with pytest.raises(SweepError) as err:
        load_sweep(tmp_path / 's.py')
    for message in ('sweeps: unknown top-level key', 'sweep.axes: missing',
                    'sweep.metrics: missing'):
        assert message in str(err.value)


def test_metric_found_nowhere_lists_the_available_ones(tmp_path: Path) -> None:
    metrics = ['toy/sw2_teacher', 'rtdmd.beta_hat']
    sweep = load_sweep(write_sweep(tmp_path / 's.py', metrics=metrics))
    expected = r"\['rtdmd.beta_hat'\].*available: \['toy/mode_tv_teacher', "
    with pytest.raises(SweepError, match=expected):
        collect(sweep, {'ratio=1': {'toy/mode_tv_teacher': 0.1, 'toy/sw2_teacher': 0.2}})
    # ratio=1 failed: its row stays empty
    rows = collect(sweep, {'ratio=2': {'toy/sw2_teacher': 0.5, 'rtdmd.beta_hat': 0.1}})
    assert rows == [{'ratio': '1', 'toy/sw2_teacher': None, 'rtdmd.beta_hat': None},
                    {'ratio': '2', 'toy/sw2_teacher': 0.5, 'rtdmd.beta_hat': 0.1}]


def test_a_mistyped_key_fails_every_point_before_anything_runs(tmp_path: Path) -> None:
    sweep = load_sweep(write_sweep(tmp_path / 's.py', axes={
        'r': {'values': [1], 'keys': ['model.fake_update_ratoi']}}))
    with pytest.raises(SweepError, match='r=1: model.fake_update_ratoi.*fake_update_ratio'):
        plan_jobs(sweep, str(tmp_path / 'w'), {})
    assert not (tmp_path / 'w').exists()


def test_ablation_grid_reaches_both_stages_and_names_real_metrics(tmp_path: Path) -> None:
    """The stage-scoped gamma key (`ac_dmd:...`) reaches stage 1 only; the plain keys reach the
    RTDMD stage, which uses the pipeline's own file."""
    from rtdmd.apis.stages import split_stage_options, stage_config
    from rtdmd.evaluation.analytic_report import COLUMNS
    from rtdmd.utils.config import load_config

    sweep = load_sweep(str(ABLATION))
    jobs = plan_jobs(sweep, str(tmp_path), sweep.cfg_options)
    assert len(jobs) == 9 and all(job.pipeline for job in jobs)
    job = next(j for j in jobs if j.point.name == 'gamma=0.1,subset=3')
    cfg = load_config(sweep.config, split_stage_options(job.options)[0])
    cfg.work_dir = job.work_dir
    assert [s.name for s in cfg.stages] == ['ac_dmd', 'rtdmd']
    assert cfg.evaluation.models == ['teacher', 'ac_dmd', 'rtdmd']
    ac_dmd = stage_config(cfg, cfg.stages[0], job.options)
    rtdmd = stage_config(cfg, {'name': 'rtdmd'}, job.options)
    assert ac_dmd.model.type == 'ACDMDDistiller' and rtdmd.model.type == 'RTDMDDistiller'
    assert ac_dmd.model.matching.consistency_loss.loss_weight == 0.1
    assert ac_dmd.model.fake_update_ratio == 5  # the rest of the stage-1 file is untouched
    assert rtdmd.model.matching.consistency_loss.loss_weight == 0.1
    assert rtdmd.model.subgrpo.num_train_steps == 3
    assert {m.split('.', 1)[1] for m in sweep.metrics} <= set(COLUMNS)


def test_backbone_axis_swaps_the_whole_backbone_in_every_stage(tmp_path: Path) -> None:
    """A backbone axis refers to a named preset (`'${backbones.sd3}'`): the point is named by the
    preset, and both stages build that preset's backbone, with no key of the other left over."""
    from rtdmd.apis.stages import split_stage_options, stage_config
    from rtdmd.utils.config import load_config

    sweep = load_sweep(str(REPO / 'configs' / 'ablations' / 'shapes_backbone_gamma.py'))
    jobs = plan_jobs(sweep, str(tmp_path), sweep.cfg_options)
    assert [j.point.name for j in jobs][::3] == ['backbone=flux2,gamma=0.0',
                                                 'backbone=sd3,gamma=0.0']
    for job, preset, backbone in ((jobs[0], 'flux2', 'Flux2KleinBackbone'),
                                  (jobs[-1], 'sd3', 'SD3Backbone')):
        cfg = load_config(sweep.config, split_stage_options(job.options)[0])
        cfg.work_dir = job.work_dir
        for stage in (dict(cfg.stages[0]), {'name': 'rtdmd'}):
            sub = stage_config(cfg, stage, job.options)
            assert sub.backbone == cfg.backbones[preset]
            assert sub.backbone.type == backbone
    assert 'text_encoder_out_layers' not in sub.backbone  # a FLUX.2 key, not an SD3 argument


def test_single_stage_points_resume_then_test(tmp_path: Path) -> None:
    tool = load_module('sweep.py')
    sweep = load_sweep(write_sweep(tmp_path / 's.py'))
    job = plan_jobs(sweep, str(tmp_path / 'w'), {'train_cfg.max_iters': 6})[0]
    assert not job.pipeline and job.max_iters == 6
    fresh = tool.commands(job, 'c.py')
    assert [c[1].split('/')[-1] for c in fresh] == ['train.py', 'test.py']
    assert fresh[0][-2:] == ['train_cfg.max_iters=6', 'model.fake_update_ratio=1']
    assert fresh[1][fresh[1].index('--checkpoint') + 1] == tool.CHECKPOINT
    os.makedirs(job.work_dir)
    last = Path(job.work_dir) / 'last_checkpoint'
    last.write_text(f'{job.work_dir}/iter_3.pth')  # interrupted: resume
    assert '--resume' in tool.commands(job, 'c.py')[0]
    last.write_text(f'{job.work_dir}/iter_6.pth')  # trained, not evaluated: test only
    assert [c[1].split('/')[-1] for c in tool.commands(job, 'c.py')] == ['test.py']


def test_failed_point_is_reported_and_the_sweep_goes_on(tmp_path: Path, monkeypatch,
                                                        capsys) -> None:
    tool = load_module('sweep.py')

    def fake_commands(job, config, launch=None):  # ratio=1 crashes, ratio=2 writes its metrics
        metrics = json.dumps({'toy/sw2_teacher': 0.25})
        code = ('import sys; sys.exit(3)' if job.point.name == 'ratio=1' else
                f'open({str(Path(job.work_dir) / "metrics.json")!r}, "w").write({metrics!r})')
        return [[sys.executable, '-c', code]]

    monkeypatch.setattr(tool, 'commands', fake_commands)
    work_dir = tmp_path / 'w'
    assert tool.main([str(write_sweep(tmp_path / 's.py')), '--work-dir', str(work_dir)]) == 1
    out = capsys.readouterr().out
    assert f'ratio=1: FAILED, see {work_dir / "ratio=1" / "sweep.log"}' in out
    assert '| 1 | - |' in out and '| 2 | 0.250 |' in out
