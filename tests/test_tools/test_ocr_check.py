"""tools/ocr_check.py: the OCR reward on rendered OCR-benchmark targets prints its figures."""

from __future__ import annotations

import importlib.util
import re

from tests.conftest import REPO


def test_prints_mean_reward_exact_share_and_time(capsys) -> None:
    spec = importlib.util.spec_from_file_location('rtdmd_ocr_check', REPO / 'tools/ocr_check.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main(['--num', '3', '--size', '256', '--font-size', '24'])
    out = capsys.readouterr().out
    assert out.startswith('3 OCR-benchmark targets rendered at 256 px')
    mean = float(re.search(r'mean reward\s+([0-9.]+)', out).group(1))
    exact = float(re.search(r'read exactly\s+([0-9.]+)', out).group(1))
    assert 0.0 <= exact <= mean <= 1.0  # exact reads score 1, so their share bounds the mean
    assert mean > 0.5  # clean black-on-white text is read (the real engine, real weights)
    assert float(re.search(r'seconds per image\s+([0-9.]+)', out).group(1)) > 0
