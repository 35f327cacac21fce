"""What every distiller shares: the backbone, the sampler, random streams, generation."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from mmengine.dist import get_rank
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapperDict
from torch import Tensor

from rtdmd.models.backbones.base import Backbone, Condition, condition_batch_size
from rtdmd.models.losses.base import UpdateContext
from rtdmd.models.samplers.cps import CPSSampler
from rtdmd.models.samplers.draws import StreamDraws
from rtdmd.models.samplers.noise import GeneratorNoise
from rtdmd.registry import MODELS, SAMPLERS
from rtdmd.utils.checkpoint import read_checkpoint, role_states
from rtdmd.utils.rng import stream, stream_seed


class DistillerBase(BaseModel):
    """Owns a backbone (teacher, generator, fake score) and the generator's sampler.

    The iteration counter is a persistent buffer, so it is saved in every checkpoint; all draws
    of an iteration come from counter-based streams (:mod:`rtdmd.utils.rng`), which makes a
    resumed run continue exactly as the uninterrupted one.

    Args:
        backbone: backbone config (builds teacher, generator and fake score).
        sampler: few-step sampler config (``CPSSampler``: step list, eta).
        init_checkpoint: a previous stage's checkpoint to start from. The model is shaped for it
            at construction; its weights are read by :meth:`init_weights`, which the Runner
            calls when training starts (never when a model is only built to sample).
        fresh_lora_std: at the warm start, re-initialise the fresh trainable LoRA with
            ``lora_A ~ N(0, std^2)`` and ``lora_B = 0`` (``None``: keep the backbone's init).
        seed: base seed of the counter-based random streams.
        eval_seed: seed of generation in val / test.
    """

    def __init__(self, backbone: dict, sampler: dict, init_checkpoint: str | None = None,
                 fresh_lora_std: float | None = None, seed: int = 0, eval_seed: int = 42,
                 data_preprocessor: dict | None = None) -> None:
        super().__init__(data_preprocessor=data_preprocessor)
        self.backbone: Backbone = MODELS.build(backbone)
        self.sampler: CPSSampler = SAMPLERS.build(sampler)
        self.init_checkpoint = init_checkpoint
        self.fresh_lora_std = fresh_lora_std
        self.seed = seed
        self.eval_seed = eval_seed
        self.register_buffer('iteration', torch.zeros((), dtype=torch.long))
        if init_checkpoint:
            self.backbone.prepare_warm_start()

    def init_weights(self) -> None:
        """Start the trainable roles from ``init_checkpoint`` (the generator from its EMA).

        Loads in place: the optimizers and distributed wrappers the Runner built before this
        call keep their parameters.
        """
        if not self.init_checkpoint:
            return
        states = role_states(read_checkpoint(self.init_checkpoint), self.init_checkpoint)
        for role, state in states.items():
            # Seeded by the run, not the rank: every rank starts from the same fresh LoRA.
            fresh = (None if self.fresh_lora_std is None else
                     (self.fresh_lora_std, stream(self.seed, 'fresh_lora', role)))
            self.backbone.warm_start(role, state, fresh)

    # ------------------------------------------------------------------------------- helpers
    def streams(self, step: int, tag: str) -> tuple[torch.Generator, torch.Generator]:
        """``(shared, local)`` generators of ``step``: shared is identical on every rank."""
        device = self.iteration.device
        return (stream(self.seed, step, tag, 'shared', device=device),
                stream(self.seed, step, tag, 'local', get_rank(), device=device))

    def context(self, cond: Condition, step: int, tag: str) -> UpdateContext:
        """The context of one update: networks, sampler, condition and ``(step, tag)``'s
        draws (stage 1's shared and rank-local streams, in call order)."""
        return UpdateContext(self.backbone, self.sampler, cond,
                             StreamDraws(*self.streams(step, tag), condition_batch_size(cond)))

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        """A named phase of an update (rollout, decode, rewards, a backward pass, the optimizer
        step): nothing, unless ``phase_recorder`` is set (``tools/gpu_check.py`` measures time,
        memory and FLOPs per phase with one)."""
        recorder = getattr(self, 'phase_recorder', None)
        return recorder(name) if recorder is not None else contextlib.nullcontext()

    def _update(self, role: str, compute: Callable[[], dict[str, Tensor]],
                optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        """One optimizer step of ``role`` on the terms ``compute`` returns."""
        return self.update(role, [(f'{role}_update', lambda: (compute(), 1.0))], optim_wrapper)

    def update(self, role: str, passes: Sequence[tuple[str, Callable[[], tuple[dict, float]]]],
               optim_wrapper: OptimWrapperDict) -> dict[str, Tensor]:
        """One optimizer step of ``role`` accumulated over named backward passes.

        Each pass returns ``(terms, weight)``: its ``loss_*`` terms are summed on purpose,
        scaled by ``weight`` (its micro-batch's share of the batch, and any normalisation) and
        back-propagated; the forward runs inside the role's optimizer context (autocast, ...),
        and every pass but the last without gradient synchronisation (DDP ``no_sync``, FSDP2
        ``set_requires_gradient_sync``). Returns the weighted sums of every term, and the total
        as ``loss_<role>``.
        """
        if not passes:
            return {}
        wrapper, net = optim_wrapper[role], self.backbone.net(role)
        logged: dict[str, Tensor] = {}
        for i, (name, run) in enumerate(passes):
            with self.phase(name), wrapper.optim_context(net), gradient_sync(
                    net, i == len(passes) - 1):
                terms, weight = run()
                total = sum(v for k, v in terms.items() if k.startswith('loss_'))
                if isinstance(total, Tensor) and total.requires_grad:
                    wrapper.backward(total * weight)
            for key, value in terms.items():
                logged[key] = logged.get(key, 0.0) + weight * value.detach().float()
        with self.phase(f'{role}_optimizer_step'):
            wrapper.step()
            wrapper.zero_grad()
        logged[f'loss_{role}'] = sum(v for k, v in logged.items() if k.startswith('loss_'))
        return logged

    # ---------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts: Sequence[Any] | Tensor, seed: int | None = None) -> Tensor:
        """Few-step samples for ``prompts`` (no random stop), decoded by the backbone."""
        cond = self.backbone.encode_prompts(prompts)
        gen = stream(self.eval_seed if seed is None else seed, 'generate',
                     device=self.iteration.device)
        ro = self.sampler.rollout(self.backbone, cond, GeneratorNoise(gen))
        return self.backbone.decode(ro.sample)

    def val_step(self, data: dict | Sequence) -> list[dict[str, Any]]:
        data = self.data_preprocessor(data, False)
        prompts = data['prompt']
        # Seeded by the index of the batch's first sample: evaluation is reproducible.
        index = data.get('index')
        seed_key = int(index[0]) if index is not None else 0
        samples = self.generate(prompts, seed=stream_seed(self.eval_seed, seed_key))
        return [dict(sample=samples[i].cpu(), prompt=item(prompts, i))
                for i in range(samples.shape[0])]

    def test_step(self, data: dict | Sequence) -> list[dict[str, Any]]:
        return self.val_step(data)

    def forward(self, inputs: Any = None, data_samples: Any = None, mode: str = 'tensor'
                ) -> Any:
        raise RuntimeError('distillers are driven through train_step / val_step / test_step')


@contextlib.contextmanager
def gradient_sync(net: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Gradient synchronisation of a distributed ``net`` on (the last backward of an
    accumulated step) or off (every other); nothing for a plain module."""
    if enabled:
        yield
    elif hasattr(net, 'no_sync'):  # DDP
        with net.no_sync():
            yield
    elif hasattr(net, 'set_requires_gradient_sync'):  # FSDP2 (fully_shard)
        net.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            net.set_requires_gradient_sync(True)
    else:
        yield


def chunk_bounds(total: int, size: int | None) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` micro-batches of at most ``size`` (``None``: one) covering
    ``total`` samples."""
    if size is not None and size < 1:
        raise ValueError(f'a micro-batch size must be >= 1 (or None: the whole batch), got {size}')
    step = total if size is None else size
    return [(a, min(a + step, total)) for a in range(0, total, max(step, 1))]


def item(prompts: Sequence[Any] | Tensor, i: int) -> Any:
    return prompts[i].item() if isinstance(prompts, Tensor) else prompts[i]
