"""Counter-based random streams.

Every random draw of a training step comes from a generator seeded by
``(seed, iteration, stream[, rank])``. Randomness is then a pure function of the iteration
counter, so a resumed run draws exactly what the uninterrupted run drew, and streams marked
*shared* are identical on every rank without any collective (random stop, CFG scale, renoise
times: what the release broadcasts from rank 0).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def stream_seed(*keys: int | str) -> int:
    """A 63-bit seed from a tuple of keys (stable across processes and Python versions)."""
    digest = hashlib.sha256(repr(keys).encode()).digest()
    return int.from_bytes(digest[:8], 'little') & ((1 << 63) - 1)


def stream(*keys: int | str, device: torch.device | str = 'cpu') -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded from ``keys``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(stream_seed(*keys))
    return gen


def global_rng_states() -> dict[str, Any]:
    """Python's, NumPy's and torch's (CPU and, when present, CUDA) global generator states."""
    return dict(python=random.getstate(), numpy=np.random.get_state(),
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_global_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`global_rng_states` returned."""
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if states['cuda'] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])
