"""The memory planner: its accounting against hand counts, its calibration against an H200, its
command line.

The accounting tests build small modules whose saved tensors can be counted by hand; the
calibration plans the FLUX.2-klein 4B transformer at real size (about 10-20 s of CPU per run);
the command-line tests run tools/plan.py on the tiny FLUX.2-klein snapshots of rtdmd.testing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from rtdmd.apis.plan import (
    CALIBRATION,
    PlanOptions,
    StagePlanner,
    _chunks,
    largest_fitting,
    load_stages,
    plan,
    strategy_of,
)
from rtdmd.apis.planning.accounting import (
    Layout,
    Residents,
    encoder_gather_bytes,
    phase_bytes,
    unsharded_bytes,
)
from rtdmd.apis.planning.meta import (
    architecture_dir,
    meta_loading,
    module_bytes,
    to_fake,
    weightless_snapshot,
)
from rtdmd.apis.planning.tracker import _FusedRMSNorm, cuda_rms_norm, measure

REPO = Path(__file__).resolve().parents[2]
FLUX2_4B = str(REPO / 'configs/rtdmd/flux2_klein_4b_4step.py')
GIB = 2 ** 30
BLOCK = 512  # the CUDA caching allocator's (and the tracker's) allocation granularity


def _fake_linears(sizes: list[int], requires_grad: bool, mode: FakeTensorMode) -> nn.Module:
    with torch.device('meta'):
        net = nn.Sequential(*(nn.Linear(a, b, bias=False)
                              for a, b in zip(sizes[:-1], sizes[1:], strict=True)))
    net.requires_grad_(requires_grad)
    return to_fake(net, mode)


# --------------------------------------------------------------------- accounting, by hand
def test_a_linear_stack_saves_each_layer_input() -> None:
    """Trainable weights, input without grad: autograd keeps every layer's input (for the
    weight gradient) and the output, (L + 1) B D fp32 values. Without grad, three: the stack's
    input (its caller holds it), the current layer's input and its output."""
    batch, width, layers = 64, 256, 5  # B D 4 bytes = 64 KiB, a multiple of the 512-byte block
    mode = FakeTensorMode()
    net = _fake_linears([width] * (layers + 1), True, mode)
    kept = {}

    def forward() -> None:
        kept['out'] = net(torch.randn(batch, width))

    with_grad = measure(forward, mode, [net])
    assert with_grad.resident == layers * width * width * 4
    assert with_grad.transient == (layers + 1) * batch * width * 4

    def no_grad() -> None:
        with torch.no_grad():
            net(torch.randn(batch, width))

    assert measure(no_grad, mode, [net]).transient == 3 * batch * width * 4


def test_backward_gradients_are_counted_apart() -> None:
    batch, width, layers = 32, 128, 3
    mode = FakeTensorMode()
    net = _fake_linears([width] * (layers + 1), True, mode)
    usage = measure(lambda: net(torch.randn(batch, width)).sum().backward(), mode, [net])
    weight = width * width * 4
    assert usage.resident == layers * weight
    assert usage.grads % weight == 0 and 0 < usage.grads <= layers * weight  # .grad as GRAD
    assert usage.peak == usage.resident + usage.grads + usage.transient
    assert all(p.grad is not None for p in net.parameters())


def test_checkpointing_keeps_block_inputs_instead_of_their_insides() -> None:
    """Frozen weights, input with grad, layers ``gelu(linear(h))``: autograd keeps each gelu's
    input. At the peak (the last layer) live: the input, the L gelu inputs, the last layer's
    input and output, L + 3 tensors. Checkpointing each layer keeps the input and the L - 1
    block inputs after it, plus the last block's linear output and its output: L + 2."""
    batch, width, layers = 64, 256, 4
    mode = FakeTensorMode()
    net = _fake_linears([width] * (layers + 1), False, mode)
    kept = {}

    def forward(checkpoint: bool) -> None:
        h = torch.randn(batch, width, requires_grad=True)
        for layer in net:
            fn = lambda t, layer=layer: F.gelu(layer(t))  # noqa: E731
            h = torch.utils.checkpoint.checkpoint(fn, h, use_reentrant=False) if checkpoint \
                else fn(h)
        kept['out'] = h

    one = batch * width * 4
    assert measure(lambda: forward(False), mode, [net]).transient == (layers + 3) * one
    assert measure(lambda: forward(True), mode, [net]).transient == (layers + 2) * one


def test_rms_norm_keeps_what_the_cuda_kernel_keeps() -> None:
    """Input and output in bf16 plus an fp32 rstd per row; the CPU decomposition keeps fp32
    copies of the input as well."""
    rows_, width = 4096, 128
    mode = FakeTensorMode()
    with mode:
        norm = nn.RMSNorm(width, dtype=torch.bfloat16)
    kept = {}

    def forward() -> None:
        kept['out'] = norm(torch.randn(rows_, width, dtype=torch.bfloat16, requires_grad=True))

    fused = measure(forward, mode, [norm]).transient
    assert fused == 2 * rows_ * width * 2 + rows_ * 4
    decomposed = measure(forward, mode, [norm], cuda_kernels=False).transient
    assert decomposed >= fused + rows_ * width * 4


def test_the_rms_norm_stand_in_has_the_kernels_shapes_and_passes_real_tensors() -> None:
    """On real tensors F.rms_norm is untouched; on FakeTensors output, rstd and gradients have
    the shapes and dtypes of the real op's."""
    torch.manual_seed(0)
    x = torch.randn(6, 16, requires_grad=True)
    w = torch.randn(16, requires_grad=True)
    reference = F.rms_norm(x, (16,), w, 1e-6)
    with cuda_rms_norm():
        torch.testing.assert_close(F.rms_norm(x, (16,), w, 1e-6), reference)
    mode = FakeTensorMode()
    with mode:
        fx = torch.randn(3, 6, 16, dtype=torch.bfloat16, requires_grad=True)
        fw = torch.randn(16, dtype=torch.bfloat16, requires_grad=True)
        real_out, real_rstd = torch.ops.aten._fused_rms_norm(fx, [16], fw, 1e-6)
        out = _FusedRMSNorm.apply(fx, fw, [16], 1e-6)
        gx, gw = torch.autograd.grad(out.float().sum(), (fx, fw))
    assert (out.shape, out.dtype) == (real_out.shape, real_out.dtype)
    assert (gx.shape, gx.dtype, gw.shape) == (fx.shape, fx.dtype, fw.shape)
    assert real_rstd.dtype == torch.float32 and real_rstd.shape == (3, 6, 1)


def test_tied_weights_count_once_after_the_fake_conversion() -> None:
    with torch.device('meta'):
        embed = nn.Embedding(1000, 64)
        head = nn.Linear(64, 1000, bias=False)
    head.weight = embed.weight
    model = nn.ModuleDict({'embed': embed, 'head': head})
    to_fake(model, FakeTensorMode())
    assert module_bytes(model) == 1000 * 64 * 4  # one storage for the two parameters


class _Blocks(nn.Module):
    _no_split_modules = ['Linear']

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(n, n, bias=False) for n in (8, 16, 32))
        self.root = nn.Parameter(torch.zeros(10))


def test_fsdp_gathers_the_root_and_the_two_largest_blocks() -> None:
    assert unsharded_bytes(_Blocks()) == (10 + 32 * 32 + 16 * 16) * 4


def test_phase_bytes_divide_what_fsdp_shards() -> None:
    res = Residents(transformers=800, transformer_gather=90, transformer_full=400,
                    text_encoders=400, text_gather=60, other_frozen=50,
                    trainable={'generator': 16, 'fake_score': 8}, ema=16)
    fsdp = phase_bytes(res, Layout('fsdp', 4), 1000, 'generator', True, False)
    assert fsdp.weights == 50 + 400 + (800 + 16) / 4
    assert fsdp.optimizer == (2 * 24 + 16) / 4
    assert (fsdp.gather, fsdp.activations) == (90, 1000)
    assert fsdp.peak == fsdp.weights + fsdp.optimizer + 1000 + 90
    sharded_text = phase_bytes(res, Layout('fsdp', 4, 'shard'), 10, None, False, True)
    assert (sharded_text.weights, sharded_text.gather) == (50 + 100 + 204, 60)
    offloaded = phase_bytes(res, Layout('fsdp', 4, 'offload'), 10, None, False, True)
    assert (offloaded.weights, offloaded.gather) == (50 + 0 + 204, 60)  # shards on the CPU
    later = phase_bytes(res, Layout('fsdp', 4, 'offload'), 10, 'generator', True, False)
    assert (later.weights, later.gather) == (50 + 204, 90)  # no encoder runs: nothing gathered
    ddp = phase_bytes(res, Layout('ddp', 8), 1000, 'fake_score', True, False)
    assert (ddp.weights, ddp.optimizer, ddp.gather) == (1266, 48 + 8 + 8, 0)
    assert phase_bytes(res, Layout('ddp', 1), 0, 'fake_score', True, False).optimizer == 56
    kept = phase_bytes(res, Layout('fsdp', 4, reshard_after_forward=False), 1000, 'generator',
                       True, False)
    assert kept.gather == 400 and kept.weights == fsdp.weights  # every block stays gathered
    with pytest.raises(ValueError, match='strategy'):
        Layout('zero3', 2)
    with pytest.raises(ValueError, match=r"text_encoders must be one of \['replicate', 'shard', "):
        Layout('fsdp', 2, 'cpu')
    with pytest.raises(ValueError, match="text_encoders='shard' needs the FSDP wrapper"):
        Layout('ddp', 2, 'shard')


class _CausalLM(nn.Module):
    """A decoder stack (``base_model``) of two layers and a head outside it, like a causal LM."""

    _no_split_modules = ['Linear']

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.embed = nn.Embedding(100, 8)  # 800 elements, not a unit
        self.model.layers = nn.ModuleList(nn.Linear(8, 8, bias=False) for _ in range(3))
        self.head = nn.Embedding(50, 8)  # 400 elements, outside the base model

    @property
    def base_model(self) -> nn.Module:
        return self.model


def test_an_encoder_gathers_the_root_that_runs_and_two_layers() -> None:
    lm = _CausalLM()
    assert encoder_gather_bytes(lm, whole=True) == (800 + 400 + 2 * 64) * 4
    assert encoder_gather_bytes(lm, whole=False) == (800 + 2 * 64) * 4  # the head never runs


@pytest.mark.parametrize('keys, expected', [
    ({}, ('ddp', True)),
    ({'model_wrapper_cfg': {'type': 'rtdmd.DistillerDataParallel'}}, ('ddp', True)),
    ({'model_wrapper_cfg': {'type': 'rtdmd.DistillerFullyShard',
                            'reshard_after_forward': False}}, ('fsdp', False)),
    ({'model_wrapper_cfg': {'type': 'MMFullyShardedDataParallel'}}, ('fsdp', True)),
    ({'strategy': 'fsdp', 'model_wrapper_cfg': {'type': 'rtdmd.DistillerDataParallel'}},
     ('fsdp', True)),
    ({'strategy': {'type': 'FSDPStrategy'}}, ('fsdp', True)),
    ({'strategy': {'type': 'DDPStrategy'}}, ('ddp', True)),
])
def test_the_strategy_comes_from_the_strategy_key_or_the_wrapper(keys: dict,
                                                                  expected: tuple) -> None:
    from mmengine.config import Config

    assert strategy_of(Config(keys)) == expected


def test_the_micro_batch_search_on_an_affine_memory() -> None:
    calls = []

    def act(b: int) -> int:
        calls.append(b)
        return 1000 + 70 * b

    assert largest_fitting(8, act(8), 5000, 96, act) == (5000 - 1000) // 70
    assert largest_fitting(8, act(8), 1000 + 70 * 200, 96, act) == 96  # fits at the cap
    assert largest_fitting(8, act(8), 900, 96, act) == 0  # not even one sample
    assert largest_fitting(1, act(1), 1000 + 70, 1, act) == 1
    assert largest_fitting(4, act(4), 0, 96, act) == 0


def test_micro_batches_come_from_the_config_key_or_the_options() -> None:
    from mmengine.config import Config

    cfg = Config(dict(model=dict(micro_batch=dict(rollout=8, fake_score=None))))
    assert _chunks(cfg, PlanOptions(), 96) == {'rollout': 8, 'fake_score': 96, 'generator': 96}
    opts = PlanOptions(micro_batch={'generator': 4})
    assert _chunks(cfg, opts, 96) == {'rollout': 8, 'fake_score': 96, 'generator': 4}
    assert _chunks(Config(dict(model=dict())), PlanOptions(batch=200), 96)['rollout'] == 96
    with pytest.raises(ValueError, match='unknown keys'):
        _chunks(cfg, PlanOptions(micro_batch={'decode': 2}), 96)


# ---------------------------------------------------------------- shipped architectures
@pytest.mark.parametrize('folder, params', [
    ('stable-diffusion-3-medium-diffusers', 2.028e9), ('stable-diffusion-3.5-medium', 2.243e9),
    ('FLUX.1-dev', 11.90e9), ('FLUX.2-klein-base-4B', 3.876e9), ('FLUX.2-klein-9B', 9.079e9)])
def test_shipped_transformers_have_the_real_sizes(folder: str, params: float) -> None:
    """Parameter counts of the real-size transformers (measured on the real modules)."""
    import diffusers

    index = json.loads((architecture_dir(folder) / 'model_index.json').read_text())
    cls = getattr(diffusers, index['transformer'][1])
    with meta_loading():
        net = cls.from_pretrained(str(architecture_dir(folder)), subfolder='transformer')
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(params, rel=2e-3)


def test_a_weightless_snapshot_passes_the_backbone_checks(tmp_path: Path) -> None:
    from rtdmd.models.backbones.pretrained import check_pretrained_dir
    from rtdmd.models.backbones.sd3 import SD3Backbone

    path = weightless_snapshot(architecture_dir('stable-diffusion-3.5-medium'), tmp_path)
    check_pretrained_dir(path, SD3Backbone.components, 'repo', 'test')
    placeholders = list(Path(path).rglob('*.safetensors'))
    assert len(placeholders) == 5 and all(p.stat().st_size == 0 for p in placeholders)
    assert (Path(path) / 'tokenizer_3' / 'tokenizer_config.json').is_file()
    with pytest.raises(FileNotFoundError, match='shipped'):
        architecture_dir('FLUX.3-giant')


# --------------------------------------------------------------------------- calibration
@pytest.mark.slow
@pytest.mark.parametrize('checkpointing, measured', [(False, 37.0), (True, 11.4)])
def test_calibration_against_the_h200(checkpointing: bool, measured: float) -> None:
    """FLUX.2-klein 4B, frozen weights, bf16, 512 px (1024 image + 512 text tokens), batch 8:
    forward + backward measured at 37.0 GiB peak without and 11.4 GiB with checkpointing."""
    stages = plan(FLUX2_4B, PlanOptions(only=CALIBRATION, batch=8,
                                        gradient_checkpointing=checkpointing))
    (row,) = stages[0].rows
    assert row.phase == CALIBRATION and row.micro_batch == 8
    assert row.bytes.peak / GIB == pytest.approx(measured, rel=0.2)


# --------------------------------------------------------------------------- command line
def _tiny_options(root: Path) -> list[str]:
    from rtdmd.testing.flux2 import build_flux2_klein_dirs

    dirs = build_flux2_klein_dirs(str(root))
    return ['--cfg-options', f"backbone.pretrained={dirs['pretrained']}",
            f"backbone.generator_init={dirs['generator_init']}", 'backbone.dtype=float32',
            'backbone.resolution=64', 'backbone.max_sequence_length=32',
            'backbone.gradient_checkpointing=False',
            'backbone.text_encoder_out_layers=[1,2,3]', 'backbone.lora.rank=4',
            'backbone.lora.alpha=8', 'train_dataloader.batch_size=1', 'model.group_size=4',
            'ac_dmd:train_dataloader.batch_size=2', 'train_rewards._delete_=True',
            'train_rewards.bright.scorer.type=ImageBrightnessReward',
            'train_rewards.bright.weight=1.0']


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    sys.path.insert(0, str(REPO / 'tools'))
    try:
        import plan as tool
    finally:
        sys.path.pop(0)
    tool.main(argv)
    return capsys.readouterr().out


def test_the_json_has_one_entry_per_phase(tmp_path: Path, capsys) -> None:
    out = _run_cli([FLUX2_4B, '--json', '--gpu-memory', '0.05', '--strategy', 'fsdp',
                    '--nproc', '2', '--jobs', '1', '--no-search', *_tiny_options(tmp_path)],
                   capsys)
    report = json.loads(out)
    assert list(report) == ['phases']
    phases = [(p['stage'], p['phase']) for p in report['phases']]
    assert phases == [('ac_dmd', 'text-encode'), ('ac_dmd', 'fake-update'),
                      ('ac_dmd', 'generator-update'), ('rtdmd', 'text-encode'),
                      ('rtdmd', 'rollout'), ('rtdmd', 'fake-update'), ('rtdmd', 'policy-step'),
                      ('rtdmd', 'final-step')]
    for p in report['phases']:
        assert list(p)[:4] == ['stage', 'phase', 'peak_gib', 'fits']
        assert isinstance(p['fits'], bool) and isinstance(p['peak_gib'], float)
        b = p['bytes']
        assert b['peak'] == b['weights'] + b['optimizer'] + b['activations'] + b['fsdp_gather']
        assert p['peak_gib'] == pytest.approx(b['peak'] / GIB, abs=0.006)
        assert p['fits'] == (b['peak'] <= int(0.05 * GIB))
        assert (b['fsdp_gather'] > 0) == (p['phase'] != 'text-encode')
        assert b['activations'] > 0
        assert (p['strategy'], p['nproc']) == ('fsdp', 2)


def test_the_largest_micro_batch_fits_and_one_more_does_not(tmp_path: Path) -> None:
    """The search's answer, measured again at that micro-batch and at one more."""
    from mmengine.config import DictAction

    options = argparse.Namespace()
    DictAction(['--cfg-options'], 'cfg_options')(None, options, _tiny_options(tmp_path)[1:])
    (stage,) = [s for s in load_stages(FLUX2_4B, options.cfg_options) if s.name == 'ac_dmd']
    planner = StagePlanner(stage, PlanOptions())
    low, high = planner.row('fake-update', 1), planner.row('fake-update', 8)
    assert high.bytes.activations > low.bytes.activations
    planner.budget = (low.bytes.peak + high.bytes.peak) // 2
    found = planner.largest(planner.row('fake-update', 8))
    assert 1 <= found < 8
    assert planner.row('fake-update', found).fits
    assert not planner.row('fake-update', found + 1).fits


def test_the_table_names_every_phase(tmp_path: Path, capsys) -> None:
    out = _run_cli([FLUX2_4B, '--jobs', '1', '--stage', 'rtdmd', '--only', 'rollout',
                    '--no-search', *_tiny_options(tmp_path)], capsys)
    assert '| phase' in out and '| rollout' in out and 'rtdmd (rtdmd): ddp over 16' in out
    assert 'ac_dmd' not in out and out.count('| rollout') == 1
    assert 'ImageBrightnessReward' in out  # the notes name rewards the planner cannot build


def _tiny_stage(root: Path, name: str = 'ac_dmd'):
    from mmengine.config import DictAction

    options = argparse.Namespace()
    DictAction(['--cfg-options'], 'cfg_options')(None, options, _tiny_options(root)[1:])
    (stage,) = [s for s in load_stages(FLUX2_4B, options.cfg_options) if s.name == name]
    return stage


def test_text_encoder_placements_of_a_plan(tmp_path: Path) -> None:
    """Tiny FLUX.2's Qwen3 under FSDP over 4 ranks: replicated whole, sharded 1/4, offloaded
    none on the GPU; sharded or offloaded it gathers the decoder's root and two layers (the
    backbone runs the decoder stack alone, not the causal LM with its head)."""
    stage = _tiny_stage(tmp_path)
    rows, planners = {}, {}
    for placement in ('replicate', 'shard', 'offload'):
        planners[placement] = planner = StagePlanner(stage, PlanOptions(
            strategy='fsdp', nproc=4, text_encoders=placement, only='text-encode'))
        rows[placement] = planner.row('text-encode').bytes
        assert f'text encoders {placement}:' in ' '.join(planner.notes)
    backbone = planners['shard'].workload.backbone
    (encoder,) = backbone.text_encoders()
    whole = module_bytes(encoder)
    res = planners['shard'].residents
    assert res.text_encoders == whole
    assert res.text_gather == encoder_gather_bytes(encoder, whole=False) > 0
    rep, shard, off = rows['replicate'], rows['shard'], rows['offload']
    assert rep.weights - shard.weights == pytest.approx(whole * 3 / 4, abs=1)
    assert rep.weights - off.weights == whole
    assert (rep.gather, shard.gather, off.gather) == (0, res.text_gather, res.text_gather)
    assert rep.activations == shard.activations == off.activations


def test_the_config_places_the_text_encoders_under_fsdp_only() -> None:
    from mmengine.config import Config

    from rtdmd.apis.plan import _layout

    cfg = Config({'model_wrapper_cfg': {'type': 'rtdmd.DistillerFullyShard',
                                        'text_encoders': 'shard'}})
    assert _layout(cfg, 'ac_dmd', PlanOptions(), 'x').text_encoders == 'shard'
    assert _layout(cfg, 'ac_dmd', PlanOptions(text_encoders='offload'),
                   'x').text_encoders == 'offload'
    # switched to DDP the wrapper's key is dropped (rtdmd.utils.config), so is its placement
    assert _layout(cfg, 'ac_dmd', PlanOptions(strategy='ddp'), 'x').text_encoders == 'replicate'
    assert _layout(Config({}), 'ac_dmd', PlanOptions(), 'x').text_encoders == 'replicate'
