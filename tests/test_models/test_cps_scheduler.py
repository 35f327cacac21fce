"""CPSScheduler: the diffusers face of the CPS sampler (ALGORITHM.md 1.3)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rtdmd.functional.cps import cps_step
from rtdmd.models.samplers.cps_scheduler import CPSScheduler

SIGMAS = [1.0, 0.958, 0.884, 0.718]


def _run(scheduler, velocity, x: torch.Tensor, **step_kwargs) -> list[torch.Tensor]:
    """Every step's output for a fixed velocity field ``velocity(x, t)``."""
    scheduler.set_timesteps(28, device='cpu', sigmas=[1.0, 0.5], mu=1.2)  # pipeline-style args
    outs = []
    for t in scheduler.timesteps:
        x = scheduler.step(velocity(x, t), t, x, return_dict=False, **step_kwargs)[0]
        outs.append(x)
    return outs


def _velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * (t / 1000) - 0.3 * x


def test_schedule_is_the_configured_one_whatever_the_pipeline_asks() -> None:
    scheduler = CPSScheduler(sigmas=SIGMAS, eta=0.9)
    scheduler.set_timesteps(num_inference_steps=50, device='cpu', sigmas=[1.0, 0.2], mu=2.0,
                            timesteps=None)
    expected = torch.tensor(SIGMAS + [0.0], dtype=torch.float32)
    assert torch.equal(scheduler.sigmas, expected)  # never re-shifted, trailing 0 appended
    assert torch.equal(scheduler.timesteps, expected[:-1] * 1000)
    assert scheduler.order == 1 and scheduler.init_noise_sigma == 1.0
    assert not scheduler.config.get('use_dynamic_shifting')
    with pytest.raises(ValueError, match='decreasing'):
        CPSScheduler(sigmas=[1.0, 1.0, 0.5])
    with pytest.raises(ValueError, match='eta'):
        CPSScheduler(sigmas=SIGMAS, eta=1.5)


def test_step_equals_cps_step_with_the_same_noise() -> None:
    scheduler = CPSScheduler(sigmas=SIGMAS, eta=0.9)
    x0 = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    outs = _run(scheduler, _velocity, x0, generator=torch.Generator().manual_seed(7))
    gen, x, sigmas = torch.Generator().manual_seed(7), x0, SIGMAS + [0.0]
    for k, out in enumerate(outs):
        z = torch.randn(x.shape, generator=gen) if sigmas[k + 1] > 0 else None
        ref, _, _ = cps_step(x, _velocity(x, torch.tensor(sigmas[k] * 1000)),
                             torch.tensor(sigmas[k]), torch.tensor(sigmas[k + 1]), 0.9, z)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        x = ref


def test_noise_generator_attribute_when_the_pipeline_passes_none() -> None:
    x0 = torch.randn(2, 4, 3, 3)
    a, b = CPSScheduler(sigmas=SIGMAS), CPSScheduler(sigmas=SIGMAS)
    a.noise_generator = torch.Generator().manual_seed(3)
    out_a = _run(a, _velocity, x0)
    out_b = _run(b, _velocity, x0, generator=torch.Generator().manual_seed(3))
    for u, v in zip(out_a, out_b, strict=True):
        assert torch.equal(u, v)


def test_eta_zero_is_the_flow_match_euler_step() -> None:
    ours = CPSScheduler(sigmas=SIGMAS, eta=0.0)
    euler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    ours.set_timesteps(4)
    euler.set_timesteps(sigmas=SIGMAS)  # shift 1: the explicit sigmas stay as they are
    assert torch.equal(ours.timesteps, euler.timesteps)
    a = b = x
    for t in ours.timesteps:
        a = ours.step(_velocity(a, t), t, a).prev_sample
        b = euler.step(_velocity(b, t), t, b).prev_sample
        assert torch.equal(a, b)


def test_last_step_is_deterministic_and_returns_x0_hat() -> None:
    scheduler = CPSScheduler(sigmas=SIGMAS, eta=1.0)
    x = torch.randn(2, 4, 3, 3)
    v = torch.randn(2, 4, 3, 3)
    outs = []
    for seed in (0, 1):
        scheduler.set_timesteps()
        scheduler.set_begin_index(len(SIGMAS) - 1)  # start at the last step
        out = scheduler.step(v, scheduler.timesteps[-1], x,
                             generator=torch.Generator().manual_seed(seed))
        outs.append(out.prev_sample)
        torch.testing.assert_close(out.prev_sample, out.pred_original_sample)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], x - SIGMAS[-1] * v)
    # A stochastic step does depend on the noise.
    first = []
    for seed in (0, 1):
        scheduler.set_timesteps()
        first.append(scheduler.step(v, scheduler.timesteps[0], x,
                                    generator=torch.Generator().manual_seed(seed)).prev_sample)
    assert not torch.equal(first[0], first[1])


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    scheduler = CPSScheduler(sigmas=SIGMAS, eta=0.7)
    scheduler.save_pretrained(tmp_path)
    assert json.loads((tmp_path / 'scheduler_config.json').read_text())['sigmas'] == SIGMAS
    loaded = CPSScheduler.from_pretrained(tmp_path)
    for key, value in scheduler.config.items():
        if not key.startswith('_'):  # diffusers' private bookkeeping
            assert loaded.config[key] == value, key
    assert torch.equal(loaded.sigmas, scheduler.sigmas)


def test_rtdmd_exposes_it_for_diffusers_loading() -> None:
    from diffusers import SchedulerMixin

    import rtdmd

    assert rtdmd.CPSScheduler is CPSScheduler
    assert rtdmd.SchedulerMixin is SchedulerMixin  # diffusers' load-method lookup needs it


# Tiny pipelines of the families (fixtures written per family); skipped where not there yet.
_FAMILIES = {
    'sd3': ('rtdmd.testing.sd3', 'build_sd3_pipeline', {}),
    'flux': ('rtdmd.testing.flux', 'build_flux_pipeline', dict(max_sequence_length=16)),
    'flux2': ('rtdmd.testing.flux2', 'build_flux2_klein_pipeline',
              dict(max_sequence_length=16, text_encoder_out_layers=(1, 2, 3))),
}


@pytest.mark.parametrize('family', sorted(_FAMILIES))
def test_pipelines_run_it_and_eta_zero_matches_euler(family: str) -> None:
    module, builder, call_kwargs = _FAMILIES[family]
    try:
        build = getattr(importlib.import_module(module), builder)
    except (ImportError, AttributeError):
        pytest.skip(f'no tiny {family} pipeline fixture yet')
    pipe = build()
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(prompt=['a red car', 'two dogs'], height=64, width=64, guidance_scale=1.0,
                  output_type='latent', **call_kwargs)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    reference = pipe(sigmas=SIGMAS, generator=torch.Generator().manual_seed(0), **kwargs)[0]
    pipe.scheduler = CPSScheduler(sigmas=SIGMAS, eta=0.0)
    # Default step count: the pipeline asks for 28 steps or a 28-entry linspace; 4 are run.
    ours = pipe(generator=torch.Generator().manual_seed(0), **kwargs)[0]
    assert torch.equal(ours, reference)
    pipe.scheduler = CPSScheduler(sigmas=SIGMAS, eta=0.9)
    runs = []
    for _ in range(2):
        pipe.scheduler.noise_generator = torch.Generator().manual_seed(5)
        runs.append(pipe(generator=torch.Generator().manual_seed(0), **kwargs)[0])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], reference)
