"""The one way to build a trained model: a config and a checkpoint (EMA or raw generator).

Evaluation (the analytic world's stage comparison), export and the benchmarks all load through
:func:`load_trained_model`. A model built to sample reads nothing but the checkpoint: its reward
models are never built (the stage-2 distiller builds them on first use in training) and a
stage-2 warm start is never read (``init_weights`` runs in training only); the checkpoint holds
every LoRA, stage 1's frozen one included.
"""

from __future__ import annotations

from mmengine.config import Config
from mmengine.logging import print_log
from torch import Tensor, nn

from rtdmd.registry import MODELS
from rtdmd.utils.checkpoint import model_state, read_checkpoint
from rtdmd.utils.setup_env import register_all_modules

from .stages import stage_config

__all__ = ['load_trained_model', 'stage_of']


def stage_of(cfg: Config, stage: str | None = None, cli_options: dict | None = None) -> Config:
    """The config of one stage of a pipeline config (``stages``); default the last stage.

    The RTDMD leaf configs train stage 1 and then stage 2 (their ``stages``); a checkpoint belongs
    to one of them. ``init_from`` is dropped: the checkpoint holds every LoRA.
    """
    stages = {s['name']: s for s in cfg.stages}
    name = stage or cfg.stages[-1]['name']
    if name not in stages:
        raise KeyError(f'no stage {name!r} in this config; its stages are {list(stages)}')
    if cfg.get('work_dir') is None:
        cfg.work_dir = 'work_dirs'  # stage_config names the stage's work dir below it
    return stage_config(cfg, {k: v for k, v in stages[name].items() if k != 'init_from'},
                        cli_options)


def load_trained_model(cfg: Config, checkpoint: str, use_ema: bool = True
                       ) -> tuple[nn.Module, bool]:
    """The distiller of ``cfg`` with ``checkpoint`` loaded and, if asked, its EMA generator.

    Args:
        cfg: the (validated) config of the stage that wrote ``checkpoint``.
        checkpoint: a training checkpoint (``state_dict``; ``ema_state`` when EMA ran).
        use_ema: swap the generator's EMA weights in when the checkpoint has them.

    Returns:
        ``(model, ema_applied)``; the model is in eval mode on the CPU.

    Raises:
        KeyError: the checkpoint does not fit the config's model (names what is missing or
            unexpected).
    """
    register_all_modules()
    model = MODELS.build(cfg.model)
    ckpt = read_checkpoint(checkpoint)
    state = model_state(ckpt)
    model.backbone.prepare_for_state(state, prefix='backbone.')
    _load_exactly(model, state, checkpoint)
    ema = ckpt.get('ema_state') if use_ema else None
    if ema:
        _load_ema(model.backbone.generator, ema, checkpoint)
    elif use_ema:
        print_log(f'{checkpoint} has no ema_state: using the live generator weights',
                  logger='current', level=30)
    return model.eval(), bool(ema)


def _load_exactly(model: nn.Module, state: dict[str, Tensor], path: str) -> None:
    """Load ``state`` and fail unless it covers exactly what the model saves.

    Real backbones save only their LoRA weights (frozen bases come from ``pretrained``), so the
    check is against ``model.state_dict()``'s keys rather than every parameter.
    """
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise KeyError(f'{path} does not fit the config\'s model: missing {missing[:5]}, '
                       f'unexpected {unexpected[:5]}')
    model.load_state_dict(state, strict=False)


def _load_ema(generator: nn.Module, ema: dict[str, Tensor], path: str) -> None:
    unexpected = generator.load_state_dict(ema, strict=False).unexpected_keys
    if unexpected:
        raise KeyError(f'ema_state of {path} names parameters the generator lacks: '
                       f'{sorted(unexpected)[:5]}')
