"""Shared machinery of the real (diffusers) backbones.

Roles (ALGORITHM.md 2, 4.2, 6.1):

- ``fake_score``: the base transformer (``pretrained``) plus a trainable LoRA;
- ``teacher``: the *same* base with adapters disabled (no third copy of the weights);
- ``generator``: its own copy of the base (``generator_init`` or ``pretrained``; FLUX.2 starts it
  from the step-distilled model) plus a trainable LoRA.

Only LoRA weights are trainable, and only they are saved in checkpoints (frozen base weights are
dropped from the state dict; they come back from ``pretrained``). Weights are held in ``dtype``
(bf16 by default); the sampler and loss math stay in fp32 (``predict_velocity`` returns fp32).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from rtdmd.models.lora import (
    AdapterDisabledView,
    attach_lora,
    lora_config,
    lora_state_dict,
    stack_under_fresh_lora,
)

from .base import Backbone, Condition, condition_batch_size
from .pretrained import check_pretrained_dir, resolve_weights_path

DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16, 'float32': torch.float32}


class DiffusersBackbone(Backbone):
    """Base of the diffusers families; subclasses fill in the family-specific hooks.

    Args:
        pretrained: base model directory (teacher and fake score), relative to ``weights_root``.
        generator_init: the generator's base directory; ``None`` uses ``pretrained``.
        weights_root: root of relative paths (default ``$RTDMD_WEIGHTS`` or ``weights``).
        lora: ``dict(rank=32, alpha=64, init='gaussian', target_modules=None)``; ``None``
            targets use the family's list.
        dtype: weight dtype of transformers, text encoders and VAE.
        gradient_checkpointing: checkpoint the trainable transformers' blocks.
        resolution: image side in pixels (sets the latent shape and the FLUX shift).
    """

    transformer_class: ClassVar[type]
    lora_targets: ClassVar[tuple[str, ...]]
    repo_id: ClassVar[str]
    components: ClassVar[Mapping[str, Sequence[str]]]

    def __init__(self, pretrained: str, generator_init: str | None = None,
                 weights_root: str | None = None, lora: dict | None = None,
                 dtype: str = 'bfloat16', gradient_checkpointing: bool = True,
                 resolution: int = 512) -> None:
        super().__init__()
        if dtype not in DTYPES:
            raise ValueError(f'dtype must be one of {sorted(DTYPES)}, got {dtype!r}')
        self.dtype = DTYPES[dtype]
        self.resolution = resolution
        lora_cfg = dict(rank=32, alpha=64, init='gaussian', target_modules=None)
        unknown = set(lora or {}) - set(lora_cfg)
        if unknown:
            raise TypeError(f'lora got unknown keys {sorted(unknown)}; valid: {sorted(lora_cfg)}')
        lora_cfg.update(lora or {})
        self.lora = lora_config(lora_cfg['rank'], lora_cfg['alpha'],
                                lora_cfg['target_modules'] or self.lora_targets,
                                lora_cfg['init'])
        base_dir = resolve_weights_path(weights_root, pretrained)
        gen_dir = resolve_weights_path(weights_root, generator_init) if generator_init else None
        check_pretrained_dir(base_dir, self.components, self.repo_id, 'teacher / fake score')
        if gen_dir is not None:
            check_pretrained_dir(gen_dir, {'transformer': ['config.json', '*weights']},
                                 self.generator_repo_id(), 'generator')
        self.load_components(base_dir)
        self.fake_score = self._load_transformer(base_dir, gradient_checkpointing)
        self.generator = self._load_transformer(gen_dir or base_dir, gradient_checkpointing)
        self.teacher = AdapterDisabledView(self.fake_score)
        self._null_cache: Condition | None = None
        self._register_state_dict_hook(_drop_frozen_base)

    # ------------------------------------------------------------------ family-specific hooks
    def load_components(self, path: str) -> None:
        """Load (frozen) text encoders, tokenizers and VAE from ``path``."""
        raise NotImplementedError

    def generator_repo_id(self) -> str:
        return self.repo_id

    # ------------------------------------------------------------------------------ shared
    def _load_transformer(self, path: str, gradient_checkpointing: bool) -> nn.Module:
        net = self.transformer_class.from_pretrained(path, subfolder='transformer',
                                                     torch_dtype=self.dtype)
        if gradient_checkpointing:
            net.enable_gradient_checkpointing()
        attach_lora(net, self.lora)
        return net

    def null_condition(self, cond: Condition) -> Condition:
        """The empty prompt's condition, encoded once and repeated to the batch size."""
        if self._null_cache is None:
            self._null_cache = self.encode_prompts([''])
        batch = condition_batch_size(cond)
        return {k: (v.expand(batch, *v.shape[1:]) if isinstance(v, Tensor) and v.shape[0] == 1
                    else v) for k, v in self._null_cache.items()}

    def load_role_state(self, role: str, state: dict[str, Tensor]) -> None:
        """Start ``role`` from a previous stage: its LoRA frozen under a fresh trainable one."""
        lora = {k: v for k, v in state.items() if 'lora_' in k}
        if not lora:
            raise KeyError(f'the previous stage holds no LoRA weights of the {role}')
        net = getattr(self, role)
        stack_under_fresh_lora(net, {k.replace('.default.', '.'): v for k, v in lora.items()},
                               self.lora)

    def trainable_lora(self, role: str) -> dict[str, Tensor]:
        return lora_state_dict(getattr(self, role))

    def frozen_modules(self) -> list[nn.Module]:
        """Modules that never train (text encoders, VAE); subclasses list theirs."""
        return []

    def train(self, mode: bool = True) -> DiffusersBackbone:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self


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
