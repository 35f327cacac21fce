"""The planner's output: one table per stage (tabulate), or JSON for scripts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

GIB = 2 ** 30
HEADERS = ('stage', 'phase', 'micro-batch', 'weights', 'optimizer', 'activations',
           'FSDP gather', 'peak', 'fits', 'max micro-batch')


def _gib(n: int) -> str:
    return f'{n / GIB:.1f}'


def format_tables(stages: Sequence[Any], gpu_memory: float) -> str:
    """A GitHub-markdown table per stage (GiB per rank) with the stage's layout and notes."""
    from tabulate import tabulate

    blocks = []
    for st in stages:
        lay = st.layout
        head = (f'{st.name} ({st.kind}): {lay.strategy} over {lay.nproc} rank(s), text '
                f'encoders {lay.text_encoders}, local batch {st.local_batch}, GiB per rank, '
                f'fits = peak <= {gpu_memory:g} GiB')
        table = [(r.stage, r.phase, r.micro_batch, _gib(r.bytes.weights), _gib(r.bytes.optimizer),
                  _gib(r.bytes.activations), _gib(r.bytes.gather), _gib(r.bytes.peak),
                  'yes' if r.fits else 'NO',
                  '-' if r.max_micro_batch is None else (r.max_micro_batch or 'none'))
                 for r in st.rows]
        notes = ''.join(f'\n- {n}' for n in st.notes)
        blocks.append(f'{head}\n\n{tabulate(table, HEADERS, tablefmt="github")}{notes}')
    return '\n\n'.join(blocks)


def to_json(stages: Sequence[Any], gpu_memory: float) -> str:
    """``{"phases": [{"stage", "phase", "peak_gib", "fits", ...}, ...]}``: one entry per planned
    phase, every figure GiB per rank (``fits``: ``peak_gib <= gpu_memory``). Each entry also
    carries the row's parts, its micro-batch, the largest that fits and the stage's layout
    (strategy, ranks, text-encoder placement)."""
    phases = []
    for st in stages:
        for row in st.rows:
            entry = row.to_json()
            entry.update(strategy=st.layout.strategy, nproc=st.layout.nproc,
                         text_encoders=st.layout.text_encoders,
                         local_batch=st.local_batch, gpu_memory_gib=gpu_memory)
            phases.append(entry)
    return json.dumps({'phases': phases}, indent=2)


__all__ = ['format_tables', 'to_json']
