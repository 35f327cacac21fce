"""Memory planner: the per-rank GPU memory of every phase of a config's training, without a GPU.

For each stage of a config (a pipeline's stage 1 and stage 2, or the one stage of a plain
config) the planner builds the backbone the config names at real size with its own constructor
from the shipped architecture folders (:mod:`rtdmd.apis.planning.meta`: no weights, meta device,
then FakeTensors), builds the training rewards' networks likewise, runs every phase of an
iteration (:mod:`rtdmd.apis.planning.phases`) under torch's memory tracker
(:mod:`rtdmd.apis.planning.tracker`) and adds the resident and distributed parts
(:mod:`rtdmd.apis.planning.accounting`). For each phase that runs on a micro-batch it also
finds the largest micro-batch that fits: memory is affine in the micro-batch, so two measured
points give the line, the second taken near the predicted answer.

Micro-batches: stage 1 runs on the rank's batch (``train_dataloader.batch_size``); stage 2's
local batch is ``batch_size x model.group_size`` samples, split into the chunks of
``model.micro_batch = dict(rollout=, fake_score=, generator=)`` (``None``: the whole local
batch), or of the ``micro_batch`` option.
"""

from __future__ import annotations

import contextlib
import copy
import math
import multiprocessing
import os.path as osp
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from torch._subclasses.fake_tensor import FakeTensorMode

from rtdmd.utils.config import load_config

from .planning.accounting import (
    Layout,
    PhaseBytes,
    Residents,
    encoder_gather_bytes,
    phase_bytes,
    unsharded_bytes,
)
from .planning.meta import (
    architecture_source,
    meta_loading,
    module_bytes,
    to_fake,
    weightless_snapshot,
)
from .planning.phases import (
    STAGE1_PHASES,
    STAGE2_PHASES,
    Workload,
    encode,
    prompts,
    rollout_buffers,
    rows,
    transformer_fwd_bwd,
)
from .planning.rewards import build_reward_models
from .planning.tracker import measure
from .stages import default_work_dir, split_stage_options, stage_config

GIB = 2 ** 30
#: Stage-2 GPU counts of the release (ALGORITHM.md 6.3) by the base snapshot's folder name;
#: stage 1 ran on 8 GPUs for every family (6.2).
RELEASE_STAGE2_GPUS = {'stable-diffusion-3-medium-diffusers': 16,
                       'stable-diffusion-3.5-medium': 8, 'FLUX.1-dev': 32,
                       'FLUX.2-klein-base-4B': 16, 'FLUX.2-klein-base-9B': 32}
RELEASE_STAGE1_GPUS = 8
CALIBRATION = 'transformer-fwd-bwd'
CHUNKS = {'rollout': 'rollout', 'fake-update': 'fake_score', 'policy-step': 'generator',
          'final-step': 'generator'}
UPDATES = {'fake-update': 'fake_score', 'generator-update': 'generator',
           'policy-step': 'generator', 'final-step': 'generator'}
KINDS = {'ACDMDDistiller': 'ac_dmd', 'RTDMDDistiller': 'rtdmd'}


@dataclass
class PlanOptions:
    """What to plan; ``None`` fields come from the config.

    Attributes:
        gpu_memory: GiB a rank may use.
        nproc: ranks (default: the release's GPU count of the stage).
        strategy: ``'ddp'`` or ``'fsdp'`` (default: ``model_wrapper_cfg.type``).
        micro_batch: stage-2 chunk sizes ``{rollout, fake_score, generator}``.
        batch: one micro-batch for every phase (stage 1's batch, every stage-2 chunk).
        gradient_checkpointing: override ``backbone.gradient_checkpointing`` (it also switches
            the VAE decoder's checkpointing on the reward back-propagation path).
        only: plan this phase only (``transformer-fwd-bwd`` is the calibration phase).
        text_encoders: ``'replicate'``, ``'shard'`` or ``'offload'`` (FSDP only; default:
            ``model_wrapper_cfg.text_encoders`` under FSDP, else ``'replicate'``).
        search: find the largest micro-batch that fits (one more measurement per phase).
        cfg_options: ``--cfg-options`` of the config.
        stages: plan only the stages of these names (e.g. ``['rtdmd']``).
    """

    gpu_memory: float = 70.0
    nproc: int | None = None
    strategy: str | None = None
    micro_batch: dict | None = None
    batch: int | None = None
    gradient_checkpointing: bool | None = None
    only: str | None = None
    text_encoders: str | None = None
    search: bool = True
    cfg_options: dict | None = None
    stages: list[str] | None = None


@dataclass
class PhaseRow:
    """One planned phase of one stage (bytes per rank)."""

    stage: str
    phase: str
    micro_batch: int
    bytes: PhaseBytes
    fits: bool
    max_micro_batch: int | None = None

    def to_json(self) -> dict:
        b = self.bytes
        return {'stage': self.stage, 'phase': self.phase, 'peak_gib': _gib(b.peak),
                'fits': self.fits, 'micro_batch': self.micro_batch,
                'max_micro_batch': self.max_micro_batch, 'weights_gib': _gib(b.weights),
                'optimizer_gib': _gib(b.optimizer), 'activations_gib': _gib(b.activations),
                'fsdp_gather_gib': _gib(b.gather),
                'bytes': {'weights': b.weights, 'optimizer': b.optimizer,
                          'activations': b.activations, 'fsdp_gather': b.gather, 'peak': b.peak}}


@dataclass
class StagePlan:
    """A stage's rows and the facts they rest on."""

    name: str
    kind: str
    layout: Layout
    local_batch: int
    rows: list[PhaseRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _gib(n: float) -> float:
    return round(n / GIB, 2)


@dataclass
class StageConfig:
    """One stage to plan: its name, kind (``'ac_dmd'`` / ``'rtdmd'``), resolved config, and
    whether it starts from a previous stage (stage 2 then holds stage 1's LoRA, frozen)."""

    name: str
    kind: str
    cfg: object
    from_previous: bool


def load_stages(config: str, cfg_options: dict | None = None) -> list[StageConfig]:
    """The stages of ``config``: a pipeline's ``stages``, or the config itself.

    ``cfg_options`` are ``--cfg-options`` as for ``tools/train.py``: ``NAME:key=value`` reaches
    stage ``NAME`` only, ``backbone.*`` / ``weights_root`` every stage.
    """
    cfg = load_config(config, split_stage_options(cfg_options)[0])
    if cfg.get('work_dir') is None:
        cfg.work_dir = default_work_dir(config)
    subs = ([(s['name'], stage_config(cfg, {k: v for k, v in s.items() if k != 'init_from'},
                                      cfg_options), bool(s.get('init_from')))
             for s in cfg.stages] if cfg.get('stages') else [(None, cfg, False)])
    stages = []
    for name, sub, init_from in subs:
        kind = KINDS.get(sub.model.get('type'))
        if kind is None:
            raise ValueError(f'{config}: the planner plans {sorted(KINDS)} on a diffusers '
                             f'backbone; model.type is {sub.model.get("type")!r}')
        stages.append(StageConfig(name or kind, kind, sub,
                                  init_from or bool(sub.model.get('init_checkpoint'))))
    return stages


def strategy_of(cfg: object) -> tuple[str, bool]:
    """``(strategy, reshard_after_forward)`` a config trains with.

    Read from a top-level ``strategy`` (``'ddp'`` / ``'fsdp'``, or an mmengine strategy dict
    whose ``type`` names FSDP) when the config has one, else from ``model_wrapper_cfg.type``:
    a wrapper whose name says ``FullyShard`` or ``FSDP`` (``rtdmd.DistillerFullyShard``) is
    FSDP, anything else DDP. ``model_wrapper_cfg.reshard_after_forward`` (default ``True``)
    says whether FSDP frees a block's gathered weights after its forward.
    """
    wrapper = cfg.get('model_wrapper_cfg') or {}
    given = cfg.get('strategy')
    if isinstance(given, dict):
        given = given.get('type', '')
    name = str(given if given else wrapper.get('type', ''))
    fsdp = name.lower() == 'fsdp' or any(k in name for k in ('FullyShard', 'FSDP'))
    return ('fsdp' if fsdp else 'ddp'), bool(wrapper.get('reshard_after_forward', True))


def _layout(cfg: object, kind: str, opts: PlanOptions, base: str) -> Layout:
    strategy, reshard = strategy_of(cfg)
    strategy = opts.strategy or strategy
    nproc = opts.nproc or (RELEASE_STAGE1_GPUS if kind == 'ac_dmd'
                           else RELEASE_STAGE2_GPUS.get(base, 1))
    # a config's placement belongs to its FSDP wrapper: switched to DDP, the key is dropped
    configured = ((cfg.get('model_wrapper_cfg') or {}).get('text_encoders', 'replicate')
                  if strategy == 'fsdp' else 'replicate')
    return Layout(strategy, nproc, opts.text_encoders or configured, reshard)


def _build(stage: StageConfig, opts: PlanOptions, tmp: str
           ) -> tuple[Workload, Residents, FakeTensorMode, list[str]]:
    """The stage's backbone and rewards on FakeTensors, the phases' settings, its residents."""
    import rtdmd.models  # noqa: F401  (registers the backbones)
    from rtdmd.registry import MODELS

    cfg, kind, model = stage.cfg, stage.kind, stage.cfg.model
    bb_cfg = copy.deepcopy(model.backbone.to_dict())
    for key in ('pretrained', 'generator_init'):
        if bb_cfg.get(key):
            source = architecture_source(bb_cfg[key], bb_cfg.get('weights_root'))
            bb_cfg[key] = weightless_snapshot(source, tmp)
    if opts.gradient_checkpointing is not None:
        bb_cfg['gradient_checkpointing'] = opts.gradient_checkpointing
        bb_cfg['vae_gradient_checkpointing'] = opts.gradient_checkpointing
    with meta_loading():
        backbone = MODELS.build(bb_cfg)
        if stage.from_previous:  # stage 1's LoRA frozen under a fresh one, as the distiller does
            backbone.prepare_warm_start()
    notes = []
    rewards, skipped = build_reward_models(model.get('rewards') if kind == 'rtdmd' else {})
    if skipped:
        notes.append(f'rewards not planned (no planner architecture): {", ".join(skipped)}')
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    to_fake(backbone, mode)
    for reward in rewards:
        for module in reward.modules:
            to_fake(module, mode)
    sampler = model.get('sampler') or {}
    step_list = sampler.get('step_list', [1000, 750, 500, 250])
    sigmas = backbone.sigma_schedule(step_list, backbone.latent_shape()).tolist()
    matching = model.get('matching') or {}
    guidance = matching.get('teacher_guidance', 1.0)
    terms = _term_classes(model.get('terms') if kind == 'rtdmd' else None)
    workload = Workload(
        backbone=backbone, sigmas=sigmas, eta=sampler.get('eta', 0.9),
        teacher_guidance=max(guidance) if isinstance(guidance, (list, tuple)) else guidance,
        consistency=matching.get('consistency_loss') is not None,
        policy=any(not cls.needs_differentiable_reward for cls in terms),
        distribution_matching=bool(matching) and matching.get('dmd_loss') is not None,
        reward_bp=any(cls.needs_differentiable_reward for cls in terms), rewards=rewards)
    return workload, _residents(cfg, backbone, rewards), mode, notes


def _term_classes(terms: dict | None) -> list[type]:
    """The registered classes of a stage-2 config's generator ``terms`` (``None`` entries off)."""
    from rtdmd.registry import LOSSES

    out = []
    for name, spec in (terms or {}).items():
        if spec is None:
            continue
        cls = LOSSES.get(spec['type']) if isinstance(spec, dict) else type(spec)
        if cls is None:
            raise ValueError(f'model.terms.{name}: no registered loss {spec["type"]!r}')
        out.append(cls)
    return out


def _residents(cfg: object, backbone: object, rewards: list) -> Residents:
    """What lives through the stage; ``text_gather`` is set by :class:`StagePlanner` once
    prompts have been encoded (which of an encoder's roots runs)."""
    text = backbone.text_encoders()
    others = [m for m in backbone.frozen_modules() if not any(m is t for t in text)]
    trainable = {role: module_bytes(getattr(backbone, role), trainable=True)
                 for role in ('generator', 'fake_score')}
    ema_roles = {h.get('role', 'generator') for h in cfg.get('custom_hooks') or []
                 if h.get('type') == 'TrainableEMAHook'}
    return Residents(
        transformers=module_bytes(backbone.generator, backbone.fake_score),
        transformer_gather=unsharded_bytes(backbone.generator),
        transformer_full=module_bytes(backbone.generator),
        text_encoders=module_bytes(*text) if text else 0,
        text_gather=0,
        other_frozen=module_bytes(*others, *(m for r in rewards for m in r.modules))
        if others or rewards else 0,
        trainable=trainable, ema=sum(trainable[r] for r in ema_roles if r in trainable))


@contextlib.contextmanager
def _forwards_run(modules: Sequence[object]) -> Iterator[set[int]]:
    """Inside, the ids of those of ``modules`` whose own forward is called (an encoder whose
    caller runs only its base model is not)."""
    ran: set[int] = set()
    handles = [m.register_forward_pre_hook(lambda mod, args: ran.add(id(mod)))
               for m in modules]
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()


def _text_note(layout: Layout, res: Residents) -> str:
    """The text encoders' placement and their per-rank GiB, for the stage's notes."""
    on_gpu = res.text_encoders * layout.text_share
    line = (f'text encoders {layout.text_encoders}: {res.text_encoders / GIB:.1f} GiB whole, '
            f'{on_gpu / GIB:.1f} GiB per rank on the GPU')
    if layout.text_encoders == 'offload':
        line += f' ({res.text_encoders * layout.shard / GIB:.1f} GiB in CPU memory per rank)'
    if layout.text_encoders != 'replicate':
        line += f', {res.text_gather / GIB:.1f} GiB gathered while encoding (root, two layers)'
    return line


def fresh_rows(cond: dict, batch: int) -> dict:
    """A condition of ``batch`` samples shaped like ``cond``'s, newly allocated (stage 1 encodes
    its batch every iteration)."""
    import torch

    return {k: torch.empty((batch, *v.shape[1:]), dtype=v.dtype) if hasattr(v, 'shape') else v
            for k, v in cond.items()}


def largest_fitting(b0: int, act0: int, avail: int, cap: int,
                    measure_at: Callable[[int], int]) -> int:
    """The largest micro-batch in ``[0, cap]`` whose activations fit in ``avail`` bytes.

    Activations are affine in the micro-batch ``b``, ``a(b) = a0 + s b`` with ``a0 >= 0``, so
    ``act0 / b0 >= s`` and ``avail b0 / act0`` is a lower bound of the answer: the second point
    is measured there (or next to ``b0``), and the line through both gives the answer.
    """
    if avail <= 0:
        return 0
    bound = math.floor(avail * b0 / max(act0, 1))
    if bound >= cap:
        return cap
    guess = max(1, bound)
    b1 = guess if guess != b0 else (b0 + 1 if b0 < cap else b0 - 1)
    if b1 < 1:  # b0 = cap = 1
        return b0 if act0 <= avail else 0
    act1 = measure_at(b1)
    slope = (act1 - act0) / (b1 - b0)
    if slope <= 0:
        return cap if max(act0, act1) <= avail else 0
    return max(0, min(cap, math.floor((avail - (act0 - slope * b0)) / slope)))


class StagePlanner:
    """One stage's modules on FakeTensors, ready to measure any phase at any micro-batch.

    Building encodes the local batch's prompts once (the ``text-encode`` phase); in stage 2 the
    conditions and the rollout buffers of the whole local batch stay live in every later phase,
    as they do through an epoch.
    """

    def __init__(self, stage: StageConfig, opts: PlanOptions) -> None:
        cfg, kind = stage.cfg, stage.kind
        self.stage, self.opts, self.kind = stage, opts, kind
        self.layout = _layout(cfg, kind, opts, osp.basename(osp.normpath(
            cfg.model.backbone.pretrained)))
        with tempfile.TemporaryDirectory() as tmp:
            self.workload, self.residents, self.mode, notes = _build(stage, opts, tmp)
        w = self.workload
        group = cfg.model.get('group_size', 1) if kind == 'rtdmd' else 1
        self.batch = cfg.train_dataloader.batch_size
        self.local_batch = self.batch * group
        self.notes = notes
        self.modules = [w.backbone, *(m for r in w.rewards for m in r.modules)]
        holder: dict = {}
        self.texts = prompts(self.local_batch, group)
        encoders = w.backbone.text_encoders()
        with _forwards_run(encoders) as ran:
            self.text = measure(lambda: encode(w, self.texts, holder), self.mode,
                                self.modules).transient
        self.residents.text_gather = max(
            (encoder_gather_bytes(m, whole=id(m) in ran) for m in encoders), default=0)
        self.notes.append(_text_note(self.layout, self.residents))
        self.cond = holder.pop('cond')
        self.epoch: list = []
        if kind == 'rtdmd':
            with self.mode:
                self.epoch = [*(v for v in self.cond.values() if hasattr(v, 'shape')),
                              *rollout_buffers(self.local_batch, w.backbone.latent_shape(),
                                               len(w.sigmas) - 1)]
        self.chunks = _chunks(cfg, opts, self.local_batch) if kind == 'rtdmd' else {}
        self.budget = int(opts.gpu_memory * GIB)

    @property
    def phases(self) -> dict[str, Callable]:
        return STAGE1_PHASES if self.kind == 'ac_dmd' else STAGE2_PHASES

    def micro_batch(self, name: str) -> int:
        """The phase's micro-batch as configured (or as the options set it)."""
        if name == 'text-encode':
            return len(self.texts)
        if self.chunks and name in CHUNKS:
            return self.chunks[CHUNKS[name]]
        return self.opts.batch or self.batch

    def transient(self, name: str, batch: int) -> int:
        """Measured activations (bytes) of phase ``name`` on ``batch`` samples."""
        if name == 'text-encode':
            return self.text
        fn = transformer_fwd_bwd if name == CALIBRATION else self.phases[name]
        cond = self.cond

        def body() -> None:
            fn(self.workload, rows(cond, batch) if self.kind == 'rtdmd'
               else fresh_rows(cond, batch))

        usage = measure(body, self.mode, [*self.modules, *self.epoch])
        for module in self.modules:
            module.zero_grad(set_to_none=True)
        return usage.transient

    def row(self, name: str, batch: int | None = None) -> PhaseRow:
        """Phase ``name`` planned at ``batch`` (default: its configured micro-batch)."""
        batch = batch or self.micro_batch(name)
        act = self.transient(name, batch)
        res, lay = self.residents, self.layout
        if name == CALIBRATION:  # the transformer alone, as it was measured on the GPU
            pb = PhaseBytes(int(res.transformer_full * lay.shard), 0, act,
                            lay.gathered(res) if lay.strategy == 'fsdp' else 0)
        else:
            pb = phase_bytes(res, lay, act, UPDATES.get(name), name != 'text-encode',
                             name == 'text-encode')
        return PhaseRow(self.stage.name, name, batch, pb, pb.peak <= self.budget)

    def largest(self, row: PhaseRow) -> int:
        """The largest micro-batch of ``row``'s phase that fits (:func:`largest_fitting`)."""
        cap = self.local_batch if self.kind == 'rtdmd' else 64
        avail = self.budget - (row.bytes.peak - row.bytes.activations)
        return largest_fitting(row.micro_batch, row.bytes.activations, avail, cap,
                               lambda b: self.transient(row.phase, b))

    def plan(self) -> StagePlan:
        """Every phase (or ``opts.only``) at its micro-batch, with the search when asked."""
        only = self.opts.only
        out = StagePlan(self.stage.name, self.kind, self.layout, self.local_batch,
                        notes=list(self.notes))
        if self.chunks:
            out.notes.append('micro-batches of the local batch of {} samples: {}'.format(
                self.local_batch, ', '.join(f'{k}={v}' for k, v in self.chunks.items())))
        names = ['text-encode', *self.phases] if only is None else [only]
        w = self.workload
        skipped = {'policy-step': not w.policy,  # a config without the term has no such pass
                   'fake-update': self.kind == 'rtdmd' and not w.distribution_matching}
        for name in names:
            if name not in ('text-encode', CALIBRATION, *self.phases) or skipped.get(name):
                continue
            row = self.row(name)
            if self.opts.search and name not in ('text-encode', CALIBRATION):
                row.max_micro_batch = self.largest(row)
            out.rows.append(row)
        return out


def plan_stage(stage: StageConfig, opts: PlanOptions) -> StagePlan:
    """Build the stage's modules and plan each of its phases (see module docstring)."""
    return StagePlanner(stage, opts).plan()


def _chunks(cfg: object, opts: PlanOptions, local: int) -> dict[str, int]:
    """Stage-2 chunk sizes: ``opts.batch``, else ``opts.micro_batch``, else the config's
    ``model.micro_batch``; ``None`` (or missing) is the whole local batch."""
    given = dict(cfg.model.get('micro_batch') or {})
    given.update(opts.micro_batch or {})
    unknown = set(given) - set(CHUNKS.values())
    if unknown:
        raise ValueError(f'micro_batch got unknown keys {sorted(unknown)}; valid: '
                         f'{sorted(set(CHUNKS.values()))}')
    out = {}
    for key in ('rollout', 'fake_score', 'generator'):
        size = opts.batch or given.get(key) or local
        if size < 1:
            raise ValueError(f'micro_batch.{key} must be >= 1 or None, got {size}')
        out[key] = min(int(size), local)
    return out


def plan(config: str, opts: PlanOptions | None = None, jobs: int = 2) -> list[StagePlan]:
    """Plan every stage of ``config`` (the calibration phase: the first stage only).

    Args:
        jobs: stages planned at once, each in its own process (FakeTensor runs are
            single-threaded Python, so a second core halves a two-stage plan).
    """
    opts = opts or PlanOptions()
    stages = load_stages(config, opts.cfg_options)
    if opts.stages:
        unknown = set(opts.stages) - {st.name for st in stages}
        if unknown:
            raise ValueError(f'{config} has no stage {sorted(unknown)}; its stages are '
                             f'{[st.name for st in stages]}')
        stages = [st for st in stages if st.name in opts.stages]
    if opts.only == CALIBRATION:
        stages = stages[:1]
    if jobs <= 1 or len(stages) <= 1:
        return [plan_stage(stage, opts) for stage in stages]
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context('fork' if 'fork' in methods else 'spawn')
    with ProcessPoolExecutor(min(jobs, len(stages)), mp_context=context) as pool:
        return list(pool.map(plan_stage, stages, [opts] * len(stages)))


__all__ = ['CALIBRATION', 'PhaseRow', 'PlanOptions', 'RELEASE_STAGE1_GPUS',
           'RELEASE_STAGE2_GPUS', 'StageConfig', 'StagePlan', 'StagePlanner', 'largest_fitting',
           'load_stages', 'plan', 'plan_stage', 'strategy_of']
