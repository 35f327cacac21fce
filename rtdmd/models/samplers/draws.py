"""The random numbers of one update, asked for by name.

Loss components and rollouts ask a :class:`Draws` object for what they need:

- per sample: :meth:`Draws.uniform` (renoise times), :meth:`Draws.normal` (latents, transition
  and renoising noise), :meth:`Draws.randint` (consistency jumps), each ``(B, ...)``;
- per update: :meth:`Draws.scalar` (a teacher CFG scale in a range) and :meth:`Draws.stop`
  (the random stop), identical on every rank.

Two implementations:

- :class:`StreamDraws` (stage 1): per-update generators in call order. The per-sample uniform
  and integer draws come from the stream shared by all ranks (the release broadcasts its
  renoise times and jumps from rank 0 in the cold start), the normals from the rank's own.
- :class:`GroupDraws` (stage 2): every group of samples (the K copies of a prompt) has its own
  stream per name, so a sample's numbers depend only on its group, its copy index and the name:
  a micro-batch draws exactly its rows of what the whole batch would draw, and a run on N
  processes draws what one process with the same global batch draws. The draws differ from rank
  to rank, as the release's rank-local stage-2 renoising does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from rtdmd.utils.rng import stream

from .noise import NoiseSource


class Draws:
    """Random numbers of one update by name (see module docstring)."""

    def uniform(self, name: str, device: torch.device | str) -> Tensor:
        """``(B,)`` uniform in [0, 1)."""
        raise NotImplementedError

    def normal(self, name: str, shape: Sequence[int], device: torch.device | str) -> Tensor:
        """``(B, *shape)`` standard normal (float32); ``shape`` excludes the batch."""
        raise NotImplementedError

    def randint(self, name: str, low: int, high: int, device: torch.device | str) -> Tensor:
        """``(B,)`` integers uniform in ``[low, high)``."""
        raise NotImplementedError

    def scalar(self, name: str) -> float:
        """One uniform number in [0, 1) for the whole update, the same on every rank."""
        raise NotImplementedError

    def stop(self, name: str, num_steps: int) -> int:
        """A random stop uniform in ``1..num_steps`` for the whole update, on every rank."""
        raise NotImplementedError


class StreamDraws(Draws):
    """Stage 1's draws: ``shared`` (identical on every rank) and ``local`` generators, consumed
    in call order; names are not used.

    Args:
        shared: the stream shared by all ranks (per-sample uniforms and integers, scalars).
        local: the rank's own stream (normals).
        batch: the number of samples.
    """

    def __init__(self, shared: torch.Generator, local: torch.Generator, batch: int) -> None:
        self.shared, self.local, self.batch = shared, local, batch

    def uniform(self, name: str, device: torch.device | str) -> Tensor:
        return torch.rand(self.batch, generator=self.shared, device=device)

    def normal(self, name: str, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return torch.randn((self.batch, *shape), generator=self.local, device=device,
                           dtype=torch.float32)

    def randint(self, name: str, low: int, high: int, device: torch.device | str) -> Tensor:
        return torch.randint(low, high, (self.batch,), generator=self.shared, device=device)

    def scalar(self, name: str) -> float:
        return float(torch.rand(1, generator=self.shared, device=self.shared.device))

    def stop(self, name: str, num_steps: int) -> int:
        return int(torch.randint(1, num_steps + 1, (1,), generator=self.shared,
                                 device=self.shared.device))


class GroupDraws(Draws):
    """Stage 2's draws: one stream per (name, group); see module docstring.

    Args:
        keys: ``(seed, step, tag)``-like keys of the update; every stream is seeded by them,
            the name and (per sample) the group key.
        groups: the group key of every sample of the *whole* batch (the K copies of a prompt
            share one).
        rows: the samples this object serves (a micro-batch); default all.
    """

    def __init__(self, keys: Sequence[int | str], groups: Sequence[str],
                 rows: slice | None = None) -> None:
        self.keys = tuple(keys)
        self.groups = list(groups)
        self.rows = rows or slice(0, len(self.groups))
        # copy index of every sample within its group, and each group's size
        self._copy: list[int] = []
        self._size: dict[str, int] = {}
        for g in self.groups:
            self._copy.append(self._size.get(g, 0))
            self._size[g] = self._size.get(g, 0) + 1
        self._cached_plan: tuple[list[str], Tensor] | None = None

    def slice(self, start: int, stop: int) -> GroupDraws:
        """The draws of samples ``start:stop`` of this object's."""
        base = self.rows.start
        return GroupDraws(self.keys, self.groups, slice(base + start, base + stop))

    @property
    def batch(self) -> int:
        return self.rows.stop - self.rows.start

    def _plan(self) -> tuple[list[str], Tensor]:
        """The groups of this object's rows (first-appearance order) and where each row sits
        in their blocks laid end to end."""
        order: list[str] = []
        offset: dict[str, int] = {}
        for i in range(self.rows.start, self.rows.stop):
            group = self.groups[i]
            if group not in offset:
                offset[group] = sum(self._size[g] for g in order)
                order.append(group)
        index = [offset[self.groups[i]] + self._copy[i]
                 for i in range(self.rows.start, self.rows.stop)]
        return order, torch.tensor(index, dtype=torch.long)

    def _rows(self, name: str, draw: Callable[[int, torch.Generator], Tensor],
              device: torch.device | str) -> Tensor:
        """Each group's whole block from its own stream, then this object's rows."""
        if self._cached_plan is None:
            self._cached_plan = self._plan()
        order, index = self._cached_plan
        blocks = [draw(self._size[g], stream(*self.keys, name, g, device=device))
                  for g in order]
        return torch.cat(blocks).index_select(0, index.to(blocks[0].device))

    def uniform(self, name: str, device: torch.device | str) -> Tensor:
        return self._rows(name, lambda n, g: torch.rand(n, generator=g, device=g.device),
                          device)

    def normal(self, name: str, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self._rows(name, lambda n, g: torch.randn((n, *shape), generator=g,
                                                         device=g.device), device)

    def randint(self, name: str, low: int, high: int, device: torch.device | str) -> Tensor:
        return self._rows(name, lambda n, g: torch.randint(low, high, (n,), generator=g,
                                                           device=g.device), device)

    def scalar(self, name: str) -> float:
        return float(torch.rand(1, generator=stream(*self.keys, name, 'shared')))

    def stop(self, name: str, num_steps: int) -> int:
        return int(torch.randint(1, num_steps + 1, (1,),
                                 generator=stream(*self.keys, name, 'shared')))


class DrawsNoise(NoiseSource):
    """A rollout's noise from a :class:`Draws` object under ``prefix`` (``<prefix>/initial``,
    ``<prefix>/step<j>``)."""

    def __init__(self, draws: Draws, prefix: str) -> None:
        self.draws = draws
        self.prefix = prefix

    def initial(self, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self.draws.normal(f'{self.prefix}/initial', shape[1:], device)

    def step(self, j: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return self.draws.normal(f'{self.prefix}/step{j}', shape[1:], device)


__all__ = ['Draws', 'DrawsNoise', 'GroupDraws', 'StreamDraws']
