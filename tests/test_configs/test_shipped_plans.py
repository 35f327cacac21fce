"""The shipped real-model configs fit an 80 GB GPU: their planned memory, and that the plans
belong to the configs as they are now.

A full plan of a real-size config takes minutes of CPU (``tools/plan.py``), too long for the
suite, so the plans are made by the benchmark commands of docs/scale.md and committed under
docs/results/plan/. This test reads them and checks (a) every phase of both stages planned at
<= 70 GiB per rank, with the layout the release trains on, and (b) each plan was made with the
batch, the group size, the micro-batches and the text-encoder placement the config holds now:
a config that changes them fails here until it is planned again. The planner itself is tested
against hand counts and the H200 calibration in tests/test_apis/test_plan.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rtdmd.apis.plan import CHUNKS, PlanOptions, _chunks, load_stages

REPO = Path(__file__).resolve().parents[2]
PLANS = REPO / 'docs' / 'results' / 'plan'
BUDGET_GIB = 70.0
#: config name: (strategy, stage-1 ranks, stage-2 ranks), the release's (ALGORITHM.md 6.2, 6.3)
SHIPPED = {'sd3m': ('ddp', 8, 16), 'sd35m': ('ddp', 8, 8), 'flux2_klein_4b': ('ddp', 8, 16),
           'flux1_dev': ('fsdp', 8, 32), 'flux2_klein_9b': ('fsdp', 8, 32)}
STAGE1 = ('text-encode', 'fake-update', 'generator-update')
STAGE2 = ('text-encode', 'rollout', 'fake-update', 'policy-step', 'final-step')


@pytest.fixture(autouse=True)
def _no_weights_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv('RTDMD_WEIGHTS', raising=False)


@pytest.mark.parametrize('name', list(SHIPPED))
def test_every_phase_of_the_shipped_config_plans_within_70_gib(name: str) -> None:
    strategy, nproc1, nproc2 = SHIPPED[name]
    phases = json.loads((PLANS / f'{name}.json').read_text())['phases']
    assert [(p['stage'], p['phase']) for p in phases] == [
        *(('ac_dmd', ph) for ph in STAGE1), *(('rtdmd', ph) for ph in STAGE2)]
    for p in phases:
        assert p['gpu_memory_gib'] == BUDGET_GIB
        assert p['strategy'] == strategy
        assert p['nproc'] == (nproc1 if p['stage'] == 'ac_dmd' else nproc2)
        assert p['peak_gib'] <= BUDGET_GIB and p['fits'], f'{name} {p["stage"]} {p["phase"]}'
        assert p['micro_batch'] <= (p['max_micro_batch'] or p['micro_batch'])


@pytest.mark.parametrize('name', list(SHIPPED))
def test_the_committed_plan_is_of_the_config_as_it_is(name: str) -> None:
    """Local batch, micro-batches and text-encoder placement of each planned phase equal the
    config's."""
    phases = json.loads((PLANS / f'{name}.json').read_text())['phases']
    stages = {st.name: st for st in load_stages(str(REPO / f'configs/rtdmd/{name}_4step.py'))}
    stage1, stage2 = stages['ac_dmd'].cfg, stages['rtdmd'].cfg
    local = stage2.train_dataloader.batch_size * stage2.model.group_size
    chunks = _chunks(stage2, PlanOptions(), local)
    for p in phases:
        wrapper = stages[p['stage']].cfg.get('model_wrapper_cfg') or {}
        # plans made before the placement was recorded are of replicated encoders
        assert p.get('text_encoders', 'replicate') == wrapper.get('text_encoders', 'replicate')
        assert p['local_batch'] == (stage1.train_dataloader.batch_size
                                    if p['stage'] == 'ac_dmd' else local)
        if p['stage'] == 'rtdmd' and p['phase'] in CHUNKS:
            assert p['micro_batch'] == chunks[CHUNKS[p['phase']]], (name, p['phase'])
        elif p['phase'] != 'text-encode':
            assert p['micro_batch'] == p['local_batch']
