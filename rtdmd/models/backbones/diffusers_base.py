"""Shared machinery of the real (diffusers) backbones.

Roles (ALGORITHM.md 2, 4.2, 6.1):

- ``fake_score``: the base transformer (``pretrained``) plus a trainable LoRA;
- ``teacher``: the *same* base with adapters disabled (no third copy of the weights);
- ``generator``: its own copy of the base (``generator_init`` or ``pretrained``; FLUX.2 starts it
  from the step-distilled model) plus a trainable LoRA.

Only LoRA weights are trainable, and only they are saved in checkpoints (frozen base weights are
dropped from the state dict; they come back from ``pretrained``). Weights are held in ``dtype``
(bf16 by default); the sampler and loss math stay in fp32 (``predict_velocity`` returns fp32).

A family declares what it is (class attributes: the transformer and pipeline classes, the
snapshot's components, the Hub repository, the LoRA targets) and implements three hooks:
:meth:`load_components` (its frozen text encoders, tokenizers, VAE and scheduler),
:meth:`_encode_texts` (distinct prompts to a condition) and the protocol's velocity / schedule /
decode methods. The base constructor needs nothing else from the family, so a family sets its own
attributes after ``super().__init__()``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rtdmd.models.lora import (
    FROZEN_STAGE,
    AdapterDisabledView,
    add_frozen_stage,
    attach_lora,
    has_frozen_stage,
    load_lora_state,
    lora_config,
    lora_state_dict,
    reinit_lora,
)

from .base import Backbone, Condition, condition_batch_size, index_condition
from .pretrained import check_pretrained_dir, resolve_weights_path

DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': torch.float32}
LORA_DEFAULTS = dict(rank=32, alpha=64, init='gaussian', target_modules=None)
TRAINABLE_ROLES = ('generator', 'fake_score')


class DiffusersBackbone(Backbone):
    """Base of the diffusers families.

    Args:
        pretrained: base model directory (teacher and fake score), relative to ``weights_root``.
        generator_init: the generator's base directory; ``None`` uses ``pretrained``.
        weights_root: root of relative paths (default ``$RTDMD_WEIGHTS`` or ``weights``).
        lora: ``dict(rank=32, alpha=64, init='gaussian', target_modules=None)``; ``None``
            targets use the family's list (:meth:`default_lora_targets`).
        dtype: weight dtype of transformers, text encoders and VAE.
        gradient_checkpointing: checkpoint the trainable transformers' blocks.
        vae_gradient_checkpointing: checkpoint the VAE decoder's blocks whenever gradients flow
            through it (reward back-propagation; no effect on no-grad decodes).
        lora_compute: ``'autocast'``: the networks run under ``torch.autocast`` in ``dtype``
            (the release's bf16 autocast), so an adapted layer's LoRA branch computes in the
            base dtype while its trainable weights stay fp32 masters; ``'float32'``: peft's
            default, the LoRA branch casts its input to fp32 (an fp32 copy of every adapted
            layer's input is kept for backward). No difference when ``dtype`` is float32.
        resolution: image side in pixels (sets the latent shape and the FLUX shift).
        repo_id: the Hub repository of ``pretrained`` (named by the missing-weights error);
            ``None`` is the family's :attr:`default_repo_id`.
        generator_repo_id: the same for ``generator_init``; ``None`` is the family's default.
    """

    #: The family's transformer class (``from_pretrained`` of ``<snapshot>/transformer``).
    transformer_class: ClassVar[type]
    #: The family's diffusers pipeline and the backbone attributes that are its components.
    pipeline_class: ClassVar[type]
    pipeline_component_names: ClassVar[tuple[str, ...]]
    #: ``{subfolder: [required file patterns]}`` of a snapshot (the missing-weights check).
    components: ClassVar[Mapping[str, Sequence[str]]]
    #: Hub repositories of the base snapshot and of the generator's (``None``: the same).
    default_repo_id: ClassVar[str]
    default_generator_repo_id: ClassVar[str | None] = None
    #: The release's LoRA target-module suffixes (see :meth:`default_lora_targets`).
    lora_targets: ClassVar[tuple[str, ...]]
    dict_arg_keys: ClassVar[dict] = {'lora': tuple(LORA_DEFAULTS)}

    def __init__(self, pretrained: str, generator_init: str | None = None,
                 weights_root: str | None = None, lora: dict | None = None,
                 dtype: str = 'bfloat16', gradient_checkpointing: bool = True,
                 resolution: int = 512, repo_id: str | None = None,
                 generator_repo_id: str | None = None, vae_gradient_checkpointing: bool = True,
                 lora_compute: str = 'autocast') -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
        if lora_compute not in ('autocast', 'float32'):
            raise ValueError(f"lora_compute must be 'autocast' or 'float32', got "
                             f'{lora_compute!r}')
        lora_cfg = dict(LORA_DEFAULTS)
        unknown = set(lora or {}) - set(lora_cfg)
        if unknown:
            raise TypeError(f'lora got unknown keys {sorted(unknown)}; valid: {sorted(lora_cfg)}')
        lora_cfg.update(lora or {})
        self.dtype = DTYPES[dtype]
        self.resolution = resolution
        self.autocast = lora_compute == 'autocast' and self.dtype != torch.float32
        self.repo_id = repo_id or self.default_repo_id
        self.generator_repo_id = (generator_repo_id or self.default_generator_repo_id
                                  or self.repo_id)
        base_dir = resolve_weights_path(weights_root, pretrained)
        gen_dir = resolve_weights_path(weights_root, generator_init) if generator_init else None
        check_pretrained_dir(base_dir, self.components, self.repo_id, 'teacher / fake score')
        if gen_dir is not None:
            check_pretrained_dir(gen_dir, {'transformer': ['config.json', '*weights']},
                                 self.generator_repo_id, 'generator')
        self.load_components(base_dir)
        self.freeze_frozen_modules()
        if vae_gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        transformer_config = self.transformer_class.load_config(base_dir, subfolder='transformer')
        self.lora = lora_config(lora_cfg['rank'], lora_cfg['alpha'],
                                lora_cfg['target_modules']
                                or self.default_lora_targets(transformer_config),
                                lora_cfg['init'])
        self.fake_score = self._load_transformer(base_dir, gradient_checkpointing)
        self.generator = self._load_transformer(gen_dir or base_dir, gradient_checkpointing)
        self.teacher = AdapterDisabledView(self.fake_score)
        self._null_cache: Condition | None = None
        self._register_state_dict_hook(_drop_frozen_base)

    # ------------------------------------------------------------------ what a family provides
    def load_components(self, path: str) -> None:
        """Load the frozen text encoders, tokenizers, VAE and scheduler from ``path`` (the
        base freezes what :meth:`frozen_modules` lists afterwards)."""
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> Condition:
        """Encode distinct prompts (``encode_prompts`` de-duplicates and repeats)."""
        raise NotImplementedError

    def default_lora_targets(self, transformer_config: Mapping[str, Any]) -> Sequence[str]:
        """The release's LoRA targets for a transformer of this config (default:
        :attr:`lora_targets`; a family whose list depends on the block count overrides it)."""
        return self.lora_targets

    # ------------------------------------------------------------------------------ shared
    def text_encoders(self) -> list[nn.Module]:
        """Every frozen module but the VAE (a family's ``frozen_modules`` are its text
        encoders and its VAE)."""
        return [m for m in self.frozen_modules() if m is not self.vae]

    @property
    def device(self) -> torch.device:
        return next(self.fake_score.parameters()).device

    def _load_transformer(self, path: str, gradient_checkpointing: bool) -> nn.Module:
        net = self.transformer_class.from_pretrained(path, subfolder='transformer',
                                                     torch_dtype=self.dtype)
        if gradient_checkpointing:
            net.enable_gradient_checkpointing()
        attach_lora(net, self.lora)
        if self.autocast:  # autocast casts the LoRA branch; peft's own cast would undo it
            for module in net.modules():
                if hasattr(module, 'cast_input_dtype_enabled'):
                    module.cast_input_dtype_enabled = False
        return net

    def compute_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        """bf16 (``dtype``) autocast with ``lora_compute='autocast'``, else none."""
        if not self.autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(device).type, dtype=self.dtype)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[Any]) -> Condition:
        """Each distinct prompt is encoded once (a group of K copies costs one encoder row);
        the condition is then repeated to the batch."""
        texts = [str(p) for p in prompts]
        unique = list(dict.fromkeys(texts))
        cond = self._encode_texts(unique)
        if len(unique) == len(texts):
            return cond
        rows = {text: i for i, text in enumerate(unique)}
        return index_condition(cond, torch.tensor([rows[t] for t in texts]))

    def null_condition(self, cond: Condition) -> Condition:
        """The empty prompt's condition, encoded once and repeated to the batch size."""
        if self._null_cache is None:
            self._null_cache = self.encode_prompts([''])
        batch = condition_batch_size(cond)
        return {k: (v.expand(batch, *v.shape[1:]) if isinstance(v, Tensor) and v.shape[0] == 1
                    else v) for k, v in self._null_cache.items()}

    # -------------------------------------------------------------------------- warm start
    def prepare_warm_start(self) -> None:
        """Each trainable role gets a frozen adapter for the previous stage's LoRA under a fresh
        trainable one: ``W + s1 B1 A1 + s2 B2 A2``, what merging stage 1 and adding a fresh LoRA
        computes, with the shared base pristine for the teacher."""
        for role in TRAINABLE_ROLES:
            add_frozen_stage(getattr(self, role), self.lora)

    def warm_start(self, role: str, state: dict[str, Tensor],
                   fresh: tuple[float, torch.Generator] | None = None) -> None:
        """The previous stage's trainable LoRA of ``role`` into its frozen adapter; with
        ``fresh = (std, generator)`` the trainable adapter restarts at ``lora_A ~ N(0, std^2)``,
        ``lora_B = 0`` (the release's stage-2 re-init, ALGORITHM.md 4.2 and pitfall 19)."""
        lora = {k.replace('.default.', '.'): v for k, v in state.items()
                if 'lora_' in k and f'.{FROZEN_STAGE}.' not in k}
        if not lora:
            raise KeyError(f'the previous stage holds no LoRA weights of the {role}')
        net = getattr(self, role)
        if not has_frozen_stage(net):
            raise RuntimeError('warm_start needs prepare_warm_start() first (at construction)')
        load_lora_state(net, lora, FROZEN_STAGE)
        if fresh is not None:
            reinit_lora(net, *fresh)

    def prepare_for_state(self, state: dict[str, Tensor], prefix: str = '') -> None:
        """A stage-2 state holds the frozen stage-1 adapters: add them when missing."""
        tag = f'.{FROZEN_STAGE}.'
        if any(k.startswith(prefix) and tag in k for k in state) and not all(
                has_frozen_stage(getattr(self, role)) for role in TRAINABLE_ROLES):
            self.prepare_warm_start()

    def trainable_lora(self, role: str) -> dict[str, Tensor]:
        return lora_state_dict(getattr(self, role))


def _drop_frozen_base(module: nn.Module, state: dict, prefix: str, local_metadata: Any) -> None:
    """State-dict hook: keep the LoRA weights of the trainable roles, drop frozen bases."""
    for key in list(state):
        if not key.startswith(prefix):
            continue  # the parent's own entries (e.g. the distiller's iteration counter)
        rel = key[len(prefix):]
        if rel.startswith(('generator.', 'fake_score.')) and 'lora_' not in rel:
            del state[key]
        elif not rel.startswith(('generator.', 'fake_score.')):
            del state[key]  # text encoders, VAE: frozen, reloaded from `pretrained`

