"""Reading the project's own training checkpoints (below the Runner: no process-wide patch).

A checkpoint is mmengine's dict: ``state_dict`` (the distiller: LoRA-only for the diffusers
backbones, the iteration counter), ``ema_state`` (the EMA of the generator's trainable
parameters, by parameter name), ``meta``, ``optimizer``, ``message_hub``, ...
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

TRAINABLE_ROLES = ('generator', 'fake_score')


def read_checkpoint(path: str) -> dict:
    """The checkpoint dict at ``path`` (on the CPU), with a clear error when it is unreadable."""
    from .mmengine_compat import load_from_local

    return load_from_local(path, map_location='cpu')


def model_state(checkpoint: Mapping) -> dict[str, Tensor]:
    """The distiller's state dict of a checkpoint (a bare state dict is accepted too)."""
    return dict(checkpoint.get('state_dict', checkpoint))


def role_states(checkpoint: Mapping, path: str, use_ema: bool = True
                ) -> dict[str, dict[str, Tensor]]:
    """``{role: state}`` of the trainable roles, as a next stage starts from them.

    The generator takes the EMA weights (``ema_state``) over its live ones when present and
    ``use_ema`` (the release starts stage 2 from the cold start's ``generator_ema``); the fake
    score takes its trained weights.

    Raises:
        KeyError: a role has no weights in the checkpoint (names ``path``).
    """
    state = model_state(checkpoint)
    out = {}
    for role in TRAINABLE_ROLES:
        prefix = f'backbone.{role}.'
        role_state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if role == 'generator' and use_ema and checkpoint.get('ema_state'):
            role_state.update(checkpoint['ema_state'])
        if not role_state:
            raise KeyError(f'{path} holds no weights of backbone.{role}: is it a checkpoint of '
                           f'an rtdmd distiller?')
        out[role] = role_state
    return out


__all__ = ['model_state', 'read_checkpoint', 'role_states']
