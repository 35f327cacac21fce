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
from rtdmd.evaluation.shapes_table import (
    SHAPES_EVALUATION_DEFAULTS,
    check_shapes_evaluation,
    evaluate_shapes_models,
)
from rtdmd.rewards.geneval_rules import TAGS


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
    assert table[2].startswith('| world | 4 | 1.000 ± 0.000')
    assert (tmp_path / 'grid.png').is_file()


@pytest.mark.parametrize('bad', [dict(per_tag=0), dict(seeds=[])])
def test_check_rejects_empty_sets(bad: dict) -> None:
    assert check_shapes_evaluation(dict(SHAPES_EVALUATION_DEFAULTS, **bad), [])
