"""tools/profile_step.py: the figures it prints and its FLOP counts against analytic ones.

FLOP conventions: fvcore counts one multiply-add as 1 flop, torch's ``FlopCounterMode`` as 2.
The analytic count below uses 2 (``2 * in * out * B`` per Linear), so it must equal twice the
fvcore figure and exactly the ``FlopCounterMode`` one. Timings are printed, never asserted.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rtdmd.utils.config import load_config
from tests.conftest import REPO, TINY_TOY_OPTIONS

CONFIG = 'configs/ac_dmd/toy2d_4step.py'
FVCORE = 'generator forward flops, fvcore (1 mult-add = 1 flop)'
TORCH = 'generator forward flops, FlopCounterMode (1 mult-add = 2)'


def load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location('rtdmd_tools_profile_step',
                                                  REPO / 'tools' / 'profile_step.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def value(output: str, label: str) -> str:
    match = re.search(rf'^{re.escape(label)}\s+(.+?)\s*$', output, flags=re.MULTILINE)
    assert match, f'{label!r} missing from:\n{output}'
    return match.group(1)


def test_profile_step_prints_figures_and_exact_linear_flops() -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS='1')
    result = subprocess.run(
        [sys.executable, 'tools/profile_step.py', CONFIG, '--iters', '2', '--warmup', '1',
         '--device', 'cpu', '--cfg-options', *TINY_TOY_OPTIONS],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert 'on cpu: batch 16, 2 iterations after 1 warm-up' in out
    for label in ('train_step seconds (mean)', 'train_step seconds (std)', 'samples / s',
                  'peak memory (MiB, process max RSS)'):
        float(value(out, label))  # a number; its size is the machine's business

    tool = load_tool()
    cfg = load_config(CONFIG, tool.parse_args([CONFIG, '--cfg-options',
                                                *TINY_TOY_OPTIONS]).cfg_options)
    from rtdmd.registry import MODELS
    from rtdmd.utils.setup_env import register_all_modules
    register_all_modules()
    backbone = MODELS.build(cfg.model.backbone)  # cached fit: same RTDMD_CACHE as the tool
    for role in ('teacher', 'generator', 'fake_score'):
        params = list(getattr(backbone, role).parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        total = sum(p.numel() for p in params)
        assert value(out, f'params {role} (total / trainable)') == f'{total} / {trainable}'

    batch = cfg.train_dataloader.batch_size
    linears = [m for m in backbone.generator.modules() if isinstance(m, nn.Linear)]
    assert linears
    analytic = sum(2 * m.in_features * m.out_features * batch for m in linears)
    assert 2 * int(value(out, FVCORE)) == analytic
    assert int(value(out, TORCH)) == analytic
    assert 'aten::embedding' in value(out, 'ops fvcore did not count')


class _Attention(nn.Module):
    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_handle_counts_both_attention_matmuls() -> None:
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    tool = load_tool()
    b, h, lq, lk, d, dv = 2, 3, 5, 7, 8, 4
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, dv)
    analysis = FlopCountAnalysis(_Attention(), (q, k, v))
    analysis.set_op_handle('aten::scaled_dot_product_attention', tool.sdpa_flop_jit)
    analysis.unsupported_ops_warnings(False)
    macs = analysis.total()
    assert macs == b * h * lq * lk * (d + dv)  # 2 B H Lq Lk D multiply-adds when Dv = D
    with FlopCounterMode(display=False) as counter:
        _Attention()(q, k, v)
    assert counter.get_total_flops() == 2 * macs
