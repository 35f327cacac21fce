"""tools/test.py --benchmarks end to end on a tiny SD3 backbone and tiny prompt sets.

A checkpoint, its exported pipeline and the teacher are evaluated with two real offline rewards
(brightness, the ImageNet classifier on its real weights); the outputs, the resume and the
side-by-side table are checked against the per-sample scores the harness wrote.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rtdmd.evaluation.benchmark import summarize
from rtdmd.rewards import geneval_rules as G
from rtdmd.testing.lora import train_like_checkpoint
from rtdmd.testing.rewards import build_tiny_geneval_dirs
from rtdmd.testing.sd3 import TINY_RESOLUTION, build_sd3_dir
from rtdmd.utils.config import load_config
from tests.conftest import REPO

CONFIG = """
_base_ = ['{repo}/configs/ac_dmd/sd3m_4step.py']
benchmark = dict(
    rewards=dict(brightness=dict(type='ImageBrightnessReward'),
                 tabby=dict(type='ImageNetClassifierReward', class_index=281),
                 geneval=dict(type='GenEvalReward', detector_size=(128, 128))),
    suites=dict(tiny=dict(prompts='{prompts}', rewards=['brightness', 'tabby']),
                geneval=dict(prompts='geneval', file='{geneval}',
                             rewards=['brightness', 'geneval'])),
    default_suites=['tiny', 'geneval'],
    seeds=[1, 2], batch_size=2, teacher=dict(steps=2))
"""
PROMPTS = ['a red car', 'a cat on the table', 'two green apples']


def tiny_options(root: Path) -> dict:
    return {'weights_root': str(root), 'backbone.resolution': TINY_RESOLUTION,
            'backbone.dtype': 'float32', 'backbone.max_sequence_length': 16,
            'backbone.gradient_checkpointing': False, 'backbone.lora.rank': 4,
            'backbone.lora.alpha': 8}


def run_test_tool(args: list[str], rewards: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1',
               RTDMD_REWARD_WEIGHTS=str(rewards))
    return subprocess.run([sys.executable, 'tools/test.py', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()[1:]]


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp('bench')
    build_sd3_dir(str(tmp / 'weights'))
    build_tiny_geneval_dirs(str(tmp / 'rewards'))  # GenEvalReward's detector and CLIP
    (tmp / 'prompts.txt').write_text('\n'.join(PROMPTS) + '\n')
    geneval = (REPO / 'rtdmd/datasets/prompts/geneval_metadata.jsonl').read_text().splitlines()
    (tmp / 'geneval.jsonl').write_text('\n'.join(geneval[:2]) + '\n')
    config = tmp / 'bench_config.py'
    config.write_text(CONFIG.format(repo=REPO, prompts=tmp / 'prompts.txt',
                                    geneval=tmp / 'geneval.jsonl'))
    cfg = load_config(str(config), tiny_options(tmp / 'weights'))
    options = [f'{k}={v}' for k, v in tiny_options(tmp / 'weights').items()]
    train_like_checkpoint(cfg, tmp / 'iter_1.pth')
    base = [str(config), '--checkpoint', str(tmp / 'iter_1.pth'), '--work-dir', str(tmp / 'work'),
            '--benchmarks']
    result = run_test_tool(base + ['--models', 'student', 'teacher', '--cfg-options', *options],
                           tmp / 'rewards')
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return dict(tmp=tmp, config=config, options=options, base=base,
                log=result.stdout + result.stderr,
                out=tmp / 'work' / 'benchmarks')


def test_writes_metrics_grids_and_the_side_by_side_table(world: dict) -> None:
    out = world['out']
    student, teacher = out / 'bench_config', out / 'bench_config_teacher_2steps_cfg7'
    for method in (student, teacher):
        metrics = json.loads((method / 'metrics.json').read_text())
        # GenEval adds its accuracies and one accuracy per tag (score_details)
        tags = [f'geneval/geneval/accuracy/{t}' for t in G.TAGS]
        assert set(k for k in metrics if not k.startswith('_')) == {
            'tiny/brightness', 'tiny/tabby', 'geneval/brightness', 'geneval/geneval',
            'geneval/geneval/accuracy', 'geneval/geneval/strict_accuracy', *tags}
        # the two prompts are a counting and a color_attr one, 2 seeds each
        assert {t: metrics[t]['count'] for t in tags} == {
            t: 2 if t.endswith(('/counting', '/color_attr')) else 0 for t in tags}
        assert metrics['geneval/geneval/accuracy/position']['mean'] is None
        assert metrics['geneval/geneval']['mean'] <= 1.0
        for suite, n_prompts in (('tiny', 3), ('geneval', 2)):
            folder = method / suite
            assert (folder / 'grid.png').is_file()
            assert len(list((folder / 'samples').glob('*.png'))) == n_prompts * 2
            recs = records(folder / 'scores.jsonl')
            assert sorted((r['index'], r['seed']) for r in recs) == sorted(
                (i, s) for i in range(n_prompts) for s in (1, 2))
            # metrics.json is the summary of the per-sample scores written next to it
            for reward in recs[0]['scores']:
                if '/' in reward:
                    continue  # GenEval's accuracies: checked above
                expected = summarize([r['scores'][reward] for r in sorted(
                    recs, key=lambda r: (r['seed'], r['index']))])
                got = metrics[f'{suite}/{reward}']
                assert got['count'] == n_prompts * 2
                assert got['mean'] == pytest.approx(expected['mean'], rel=1e-12)
                assert got['ci_low'] <= got['mean'] <= got['ci_high']
                assert got['std'] == pytest.approx(expected['std'], rel=1e-12)
    s_settings = json.loads((student / 'metrics.json').read_text())['_settings']['tiny']
    assert s_settings['model'] == 'student' and s_settings['ema'] is True
    assert s_settings['step_list'] == [1000, 750, 500, 250] and s_settings['eta'] == 0.9
    assert s_settings['seeds'] == [1, 2] and s_settings['resolution'] == TINY_RESOLUTION
    t_settings = json.loads((teacher / 'metrics.json').read_text())['_settings']['tiny']
    assert t_settings['steps'] == 2 and t_settings['guidance_scale'] == 7.0  # teacher_guidance
    # The two methods produced different images from the same seeds.
    assert records(student / 'tiny' / 'scores.jsonl') != records(teacher / 'tiny' / 'scores.jsonl')
    table = [[cell.strip() for cell in row.strip('|').split('|')]
             for row in (out / 'results.md').read_text().splitlines()]
    assert table[0][:7] == ['method', 'tiny/brightness', 'tabby', 'geneval/brightness',
                            'geneval', 'geneval/accuracy', 'geneval/strict_accuracy']
    assert '-' in table[2]  # a tag without prompts
    assert {row[0] for row in table[2:]} == {'bench_config', 'bench_config_teacher_2steps_cfg7'}
    csv_rows = (out / 'results.csv').read_text().splitlines()
    assert len(csv_rows) == 3 and csv_rows[0].startswith('method,tiny/brightness_mean')
    assert re.search(r'\d+/\d+ \[', world['log'])  # tqdm's progress bar


def test_interrupted_evaluation_resumes_to_the_same_scores(world: dict) -> None:
    scores = world['out'] / 'bench_config' / 'tiny' / 'scores.jsonl'
    full = scores.read_text()
    lines = full.splitlines()
    scores.write_text('\n'.join(lines[:3]) + '\n' + lines[3][:20])  # cut mid-line
    result = run_test_tool(world['base'] + ['tiny', '--cfg-options', *world['options']],
                           world['tmp'] / 'rewards')
    assert result.returncode == 0, result.stderr[-3000:]
    # 2 samples kept (the progress bar starts at them), the cut one regenerated
    bars = re.findall(r'\[benchmark\] tiny:[^\r\n]*?\| (\d+)/6 \[', result.stderr)
    assert bars[0] == '2' and bars[-1] == '6', bars
    before = {(r['index'], r['seed']): r['scores'] for r in records_from(full)}
    after = {(r['index'], r['seed']): r['scores'] for r in records(scores)}
    assert after.keys() == before.keys()
    for key, value in before.items():  # per-sample seeds: the same images, the same scores
        for reward, score in value.items():
            assert after[key][reward] == pytest.approx(score, rel=1e-6, abs=1e-7)


def records_from(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()[1:]]


def test_exported_pipeline_scores_like_its_checkpoint(world: dict) -> None:
    tmp = world['tmp']
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    export = subprocess.run(
        [sys.executable, 'tools/export.py', str(world['config']), '--checkpoint',
         str(tmp / 'iter_1.pth'), '--out', str(tmp / 'exported'), '--merged',
         '--copy-unchanged', '--scheduler', 'cps', '--cfg-options',
         *world['options']], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    result = run_test_tool(world['base'] + ['tiny', '--pipeline', str(tmp / 'exported'),
                                            '--cfg-options', *world['options']],
                           tmp / 'rewards')
    assert result.returncode == 0, result.stderr[-3000:]
    ours = records(world['out'] / 'exported' / 'tiny' / 'scores.jsonl')
    student = records(world['out'] / 'bench_config' / 'tiny' / 'scores.jsonl')
    by_key = {(r['index'], r['seed']): r['scores'] for r in student}
    # Same per-sample noise through diffusers' list-of-generators path and rtdmd's sampler;
    # merged vs unmerged LoRA differ by float rounding only.
    diffs = [abs(r['scores'][k] - by_key[(r['index'], r['seed'])][k])
             for r in ours for k in ('brightness', 'tabby')]
    assert len(diffs) == 12 and max(diffs) < 1e-3
    table = (world['out'] / 'results.md').read_text()
    assert re.search(r'\| exported +\|', table) and re.search(r'\| bench_config +\|', table)


def test_two_processes_share_a_suite_and_score_like_one(world: dict) -> None:
    """torchrun with 2 CPU processes (gloo): each takes every other sample; the merged scores
    are the single-process ones (per-sample seeds), the metrics count every sample once."""
    out = world['tmp'] / 'dist'
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1',
               MASTER_PORT=str(29500 + os.getpid() % 1000))
    base = [a if a != str(world['tmp'] / 'work') else str(world['tmp'] / 'dist_work')
            for a in world['base'][1:]]
    result = subprocess.run(
        ['bash', 'tools/dist_test.sh', str(world['config']), '2', *base, 'tiny', '--out',
         str(out), '--cfg-options', *world['options']],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = out / 'bench_config' / 'tiny'
    shards = [records(folder / f'scores.rank{r}.jsonl') for r in (0, 1)]
    assert all(len(s) == 3 for s in shards) and not (folder / 'scores.jsonl').exists()
    single = {(r['index'], r['seed']): r['scores']
              for r in records(world['out'] / 'bench_config' / 'tiny' / 'scores.jsonl')}
    merged = {(r['index'], r['seed']): r['scores'] for s in shards for r in s}
    assert merged.keys() == single.keys()
    for key, scores in single.items():
        for reward, value in scores.items():
            assert merged[key][reward] == pytest.approx(value, rel=1e-5, abs=1e-6)
    metrics = json.loads((folder / 'metrics.json').read_text())
    assert metrics['brightness']['count'] == metrics['tabby']['count'] == 6
    assert (folder / 'grid.png').is_file() and (out / 'results.md').is_file()


def test_bad_requests_fail_before_any_model_is_built(world: dict, monkeypatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location('rtdmd_test_tool', REPO / 'tools/test.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    base = world['base'][:-1] + ['--cfg-options', *world['options'], '--benchmarks']
    with pytest.raises(SystemExit, match="benchmark suite 'nope' is not defined"):
        tool.main(base + ['nope'])
    with pytest.raises(SystemExit, match='--models pipeline needs --pipeline'):
        tool.main(base + ['--models', 'pipeline'])
    with pytest.raises(SystemExit, match='has no benchmark section'):
        tool.main([str(REPO / 'configs/rtdmd/toy2d_4step.py'), '--work-dir',
                   str(world['tmp'] / 'toy'), '--benchmarks'])
    monkeypatch.setenv('RTDMD_REWARD_WEIGHTS', str(world['tmp'] / 'no_rewards'))
    with pytest.raises(SystemExit, match='the CLIPScore reward weights are not at'):
        tool.main(base[:-1] + ['benchmark.rewards.clip.type=CLIPScore',
                               'benchmark.suites.tiny.rewards=[clip]', '--benchmarks', 'tiny'])
