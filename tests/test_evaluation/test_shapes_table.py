"""The shapes world's results table and benchmark prompts: a generator that renders the world
exactly scores 1 and is near the renderings; a blank one scores 0 and is far."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rtdmd.datasets.shapes import ShapesPromptDataset
from rtdmd.datasets.shapes_prompts import scene_for
from rtdmd.datasets.shapes_world import BACKGROUND, render
from rtdmd.datasets.text_prompts import load_benchmark
from rtdmd.evaluation.shapes_bootstrap import FIELDS
from rtdmd.evaluation.shapes_fidelity import fidelity_distance, load_feature_net
from rtdmd.evaluation.shapes_report import score_record, summarise_record
from rtdmd.evaluation.shapes_table import (
    SHAPES_EVALUATION_DEFAULTS,
    check_shapes_evaluation,
    evaluate_shapes_models,
    find_scores,
    load_scores,
    pooled_table,
)
from rtdmd.rewards.geneval_rules import TAGS
from rtdmd.rewards.shapes import ShapesGenEvalReward


def test_shipped_benchmark_is_the_held_out_split_16_per_tag() -> None:
    items = load_benchmark('shapes')
    expected = ShapesPromptDataset('heldout', per_tag=16).items
    assert [(it['prompt'], it['metadata']) for it in items] == \
        [(it['prompt'], it['metadata']) for it in expected]
    train = {it['prompt'] for it in ShapesPromptDataset('train').items}
    # Only the three single-object prompts are in both splits (documented in shapes_prompts).
    shared = {it['prompt'] for it in items} & train
    assert {it['metadata']['tag'] for it in items if it['prompt'] in shared} == {'single_object'}


def test_check_names_every_bad_key() -> None:
    good = dict(SHAPES_EVALUATION_DEFAULTS, models=['teacher', 'ac_dmd'])
    assert check_shapes_evaluation(good, ['ac_dmd']) == []
    errors = check_shapes_evaluation(
        dict(good, models=['teacher', 'nope'], colour=1, seeds=[1, 1],
             teacher=[dict(steps=0, guidance_scale=4.0)]), ['ac_dmd'])
    text = '\n'.join(errors)
    assert len(errors) == 4 and "['nope']" in text and "['colour']" in text
    assert 'teacher[0]' in text and 'seeds' in text


def _render(metadata: list[dict], seeds: list[int]) -> torch.Tensor:
    images = [render(scene_for(m, np.random.default_rng([7, s]))) for m, s in
              zip(metadata, seeds, strict=True)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def test_world_renderer_scores_one_and_blank_scores_zero(tmp_path: Path) -> None:
    data = ShapesPromptDataset('heldout', per_tag=2)
    lookup = {it['prompt']: it['metadata'] for it in data.items}
    calls = []

    def world(prompts, seeds):
        calls.append((list(prompts), list(seeds)))
        return _render([lookup[p] for p in prompts], seeds)

    def blank(prompts, seeds):
        return (torch.tensor(BACKGROUND).view(1, 3, 1, 1) / 255).expand(len(prompts), 3, 32, 32)

    settings = dict(SHAPES_EVALUATION_DEFAULTS, per_tag=2, seeds=[0, 3])
    metrics = evaluate_shapes_models({'world': (world, 4), 'blank': (blank, 8)}, settings,
                                     str(tmp_path))
    n = len(data.items)
    # Each seed samples every prompt once, with per-sample seeds 1000 * seed + i.
    assert [s for _, s in calls] == [list(range(n)), [3000 + i for i in range(n)]]
    world_m, blank_m = metrics['world'], metrics['blank']
    assert world_m['nfe'] == 4 and blank_m['nfe'] == 8
    for tag in TAGS:
        assert world_m[f'strict/{tag}'] == 1.0 and blank_m[f'strict/{tag}'] == 0.0
        assert world_m[f'n/{tag}'] == 4  # 2 prompts x 2 seeds
    assert world_m['strict'] == world_m['clean'] == 1.0
    assert blank_m['strict'] == 0.0 and world_m['soft'] > blank_m['soft']
    assert world_m['fidelity'] < 0.2 * blank_m['fidelity']
    saved = json.loads((tmp_path / 'metrics.json').read_text())
    assert saved['world']['strict'] == 1.0 and saved['_settings']['seeds'] == [0, 3]
    table = (tmp_path / 'table.md').read_text().splitlines()
    assert table[0].startswith('| model | nfe | strict/single_object')
    # A renderer of the world scores 1 on every resample of the prompts: a degenerate interval.
    assert table[2].startswith('| world | 4 | 1.000 [1.000, 1.000]')
    for model in ('world', 'blank'):
        for column in ('strict', 'partial', 'soft', 'fidelity', 'clean'):
            m = metrics[model]
            assert m[f'{column}_low'] <= m[column] <= m[f'{column}_high'], (model, column)
    assert (tmp_path / 'grid.png').is_file()

    # The per-image scores come back as written; pooling one run reproduces its figures.
    records, nfe = load_scores(str(tmp_path / 'scores.npz'))
    assert list(records) == ['world', 'blank'] and nfe == {'world': 4, 'blank': 8}
    assert set(records['world']) == set(FIELDS)
    assert list(records['world']['prompt']) == list(range(n)) * 2
    assert summarise_record(records['world'])['fidelity'] == pytest.approx(world_m['fidelity'])
    pooled = pooled_table(find_scores([str(tmp_path)]), num_resamples=50)
    assert pooled.splitlines()[2].startswith('| world | 4 | 1.000 [1.000, 1.000]')
    assert '| blank | 1 | 0.000 - 0.000 |' in pooled


def test_record_figures_match_an_independent_computation() -> None:
    """summarise_record's figures (the bootstrap's statistics on the full set) equal the
    reward's own means and the reference Frechet distance of shapes_fidelity."""
    data = ShapesPromptDataset('heldout', per_tag=3)
    metadata = [it['metadata'] for it in data.items]
    rng = np.random.default_rng(0)
    scenes = [scene_for(m, np.random.default_rng([9, i])) for i, m in enumerate(metadata)]
    images = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2) / 255
    # Perturb some images so that the scores vary: noise on half of them, blanks on a few.
    images[::2] = (images[::2] + 0.25 * torch.from_numpy(rng.normal(size=images[::2].shape))
                   ).clamp(0, 1).float()
    images[1::5] = torch.tensor(BACKGROUND).view(1, 3, 1, 1) / 255
    net = load_feature_net()
    figures = summarise_record(score_record(images, metadata, net=net))
    details = ShapesGenEvalReward().score_details(images, None, metadata)
    for tag in TAGS:
        assert figures[f'strict/{tag}'] == pytest.approx(
            float(details[f'strict_accuracy/{tag}'].nanmean()))
    assert figures['strict'] == pytest.approx(np.mean([figures[f'strict/{t}'] for t in TAGS]))
    assert figures['partial'] == pytest.approx(float(details[''].mean()))
    assert figures['clean'] == pytest.approx(float(details['clean'].mean()))
    assert 0 < figures['clean'] < 1
    assert figures['fidelity'] == pytest.approx(fidelity_distance(images, metadata, net, seed=0),
                                                rel=1e-6)


@pytest.mark.parametrize('bad', [dict(per_tag=0), dict(seeds=[])])
def test_check_rejects_empty_sets(bad: dict) -> None:
    assert check_shapes_evaluation(dict(SHAPES_EVALUATION_DEFAULTS, **bad), [])
