"""Per-rank bytes of a phase: what stays resident, what FSDP or DDP add, what the phase adds.

The measured part of a phase is its transient memory (activations, temporaries, the epoch's
samples) on an unsharded model; the resident part is counted from the modules:

- **weights**: the frozen bases (generator and fake score; the teacher is the fake score's base
  with adapters off, no third copy), the LoRA weights (fp32: they are the optimizer's master
  weights, there is no other copy), the EMA of the averaged role's LoRA, text encoders, VAE and
  reward models;
- **optimizer**: AdamW's two moments of every trainable LoRA parameter (both roles' optimizers
  live for the whole run) plus the gradients of the role the phase updates (they persist across
  gradient-accumulation micro-batches);
- **FSDP2** (``fully_shard`` per transformer block and the root): the transformers' weights,
  LoRA, EMA, gradients and moments are divided by the number of ranks; while a transformer
  runs, a rank holds its unsharded root parameters and two blocks (the one computing and the
  one prefetched), or, with ``reshard_after_forward=False``, the whole unsharded transformer
  (every block stays gathered from its forward to its backward); text encoders as placed by
  the wrapper's ``text_encoders``: whole on every rank (``'replicate'``), 1/N per rank
  (``'shard'``) or none on the GPU (``'offload'``: the shards are in CPU memory), plus, while
  one encodes under either of the last two, the root that runs and its two largest layers
  (:func:`encoder_gather_bytes`);
- **DDP**: the gradient buckets, one more copy of the trainable gradients during backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .meta import fsdp_units, module_bytes

STRATEGIES = ('ddp', 'fsdp')
TEXT_ENCODERS = ('replicate', 'shard', 'offload')


def unsharded_bytes(module: nn.Module) -> int:
    """Bytes a rank gathers while ``module`` runs under FSDP2: its root parameters (those in no
    block) and two blocks (current and prefetched), the largest ones."""
    units = fsdp_units(module)
    if not units:
        return module_bytes(module)
    sizes = sorted((module_bytes(u) for u in units), reverse=True)
    root = module_bytes(module) - sum(sizes)
    return root + sum(sizes[:2])


def encoder_gather_bytes(encoder: nn.Module, whole: bool) -> int:
    """Bytes a rank gathers while a sharded (or offloaded) text encoder runs: the root units
    that run and the two largest layers (current and prefetched).

    The wrapper's units are the layers, the base model and the model itself
    (:func:`rtdmd.engine.fsdp.shard_frozen`); a caller that runs the base model alone
    (``whole=False``: a causal LM's decoder stack) gathers the base model's own weights, not
    the head's.
    """
    units = fsdp_units(encoder)
    root = encoder if whole else getattr(encoder, 'base_model', encoder)
    inside = {id(m) for m in root.modules()}
    root_bytes = module_bytes(root) - sum(module_bytes(u) for u in units if id(u) in inside)
    sizes = sorted((module_bytes(u) for u in units), reverse=True)
    return root_bytes + sum(sizes[:2])


@dataclass
class Residents:
    """Unsharded bytes of everything that lives through a stage (see module docstring)."""

    transformers: int
    transformer_gather: int
    transformer_full: int
    text_encoders: int
    text_gather: int
    other_frozen: int
    trainable: dict[str, int] = field(default_factory=dict)
    ema: int = 0


@dataclass
class Layout:
    """How a stage is distributed: ``strategy`` over ``nproc`` ranks, the text encoders placed
    as ``text_encoders`` (one of :data:`TEXT_ENCODERS`; other than ``'replicate'`` needs FSDP).
    """

    strategy: str = 'ddp'
    nproc: int = 1
    text_encoders: str = 'replicate'
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f'strategy must be one of {STRATEGIES}, got {self.strategy!r}')
        if self.nproc < 1:
            raise ValueError(f'nproc must be >= 1, got {self.nproc}')
        if self.text_encoders not in TEXT_ENCODERS:
            raise ValueError(f'text_encoders must be one of {list(TEXT_ENCODERS)}, got '
                             f'{self.text_encoders!r}')
        if self.text_encoders != 'replicate' and self.strategy != 'fsdp':
            raise ValueError(f"text_encoders={self.text_encoders!r} needs the FSDP wrapper "
                             f"(strategy 'fsdp'); DDP replicates them")

    @property
    def shard(self) -> float:
        return 1.0 / self.nproc if self.strategy == 'fsdp' else 1.0

    @property
    def text_share(self) -> float:
        """The part of the text encoders' weights a rank holds on its GPU between forwards."""
        return {'replicate': 1.0, 'shard': self.shard, 'offload': 0.0}[self.text_encoders]

    def gathered(self, res: Residents) -> int:
        """Unsharded transformer bytes a rank holds while one runs under FSDP2."""
        return res.transformer_gather if self.reshard_after_forward else res.transformer_full


@dataclass
class PhaseBytes:
    """One phase's per-rank bytes; ``peak`` is their sum."""

    weights: int
    optimizer: int
    activations: int
    gather: int

    @property
    def peak(self) -> int:
        return self.weights + self.optimizer + self.activations + self.gather


def phase_bytes(res: Residents, layout: Layout, activations: int, updates: str | None,
                runs_transformer: bool, runs_text_encoders: bool) -> PhaseBytes:
    """Per-rank bytes of a phase that updates ``updates`` (a role or ``None``)."""
    shard = layout.shard
    fsdp = layout.strategy == 'fsdp'
    weights = (res.other_frozen + res.text_encoders * layout.text_share
               + (res.transformers + res.ema) * shard)
    grads = res.trainable.get(updates, 0) if updates else 0
    optimizer = (2 * sum(res.trainable.values()) + grads) * shard
    if layout.strategy == 'ddp' and layout.nproc > 1:
        optimizer += grads  # DDP's gradient buckets
    gather = 0
    if fsdp and runs_transformer:
        gather += layout.gathered(res)
    if layout.text_encoders != 'replicate' and runs_text_encoders:
        gather += res.text_gather
    return PhaseBytes(int(weights), int(optimizer), int(activations), int(gather))


__all__ = ['Layout', 'PhaseBytes', 'Residents', 'STRATEGIES', 'TEXT_ENCODERS',
           'encoder_gather_bytes', 'phase_bytes', 'unsharded_bytes']
