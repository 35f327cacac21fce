"""tools/shapes_table.py: the runs of a sweep pooled into one table with bootstrap intervals."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from rtdmd.datasets.shapes import ShapesPromptDataset
from rtdmd.datasets.shapes_prompts import scene_for
from rtdmd.datasets.shapes_world import BACKGROUND, render
from rtdmd.evaluation.shapes_report import score_record, summarise_record
from rtdmd.evaluation.shapes_table import save_scores
from tests.conftest import REPO


def _tool():
    spec = importlib.util.spec_from_file_location('rtdmd_shapes_table',
                                                  REPO / 'tools/shapes_table.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _run(blank_every: int) -> dict:
    """One run's record: the world's renderings, every ``blank_every``-th image left blank."""
    metadata = [it['metadata'] for it in ShapesPromptDataset('heldout', per_tag=2).items]
    images = torch.from_numpy(np.stack([render(scene_for(m, np.random.default_rng([5, i])))
                                        for i, m in enumerate(metadata)]))
    images = images.permute(0, 3, 1, 2).float() / 255
    images[::blank_every] = torch.tensor(BACKGROUND).view(1, 3, 1, 1) / 255
    return score_record(images, metadata)


def test_pools_runs_of_a_sweep_dir(tmp_path: Path, capsys) -> None:
    runs = {'seed=1': _run(2), 'seed=2': _run(3)}
    for name, record in runs.items():
        save_scores(str(tmp_path / 'sweep' / name / 'eval' / 'scores.npz'), {'student': record},
                    {'student': 4})
    out = tmp_path / 'pooled.md'
    _tool().main([str(tmp_path / 'sweep'), '--out', str(out), '--resamples', '200'])
    printed = capsys.readouterr().out
    assert printed.count('run: ') == 2
    table = out.read_text()
    row = next(line for line in table.splitlines() if line.startswith('| student | 4 |'))
    # Column 8 (after model, nfe and six tags) is strict: the mean of the two runs' figures.
    strict = [summarise_record(r)['strict'] for r in runs.values()]
    mean, low, high = map(float, re.match(r'\s*([0-9.]+) \[([0-9.]+), ([0-9.]+)\]',
                                          row.split('|')[9]).groups())
    assert mean == pytest.approx(np.mean(strict), abs=5e-4)
    assert low <= mean <= high and high > low  # the two runs differ, so does the resample
    assert f'| student | 2 | {min(strict):.3f} - {max(strict):.3f} |' in table


def test_names_a_path_without_scores(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match='no scores.npz below'):
        _tool().main([str(tmp_path)])
