"""Training the shapes world's teachers from scratch: a VAE, then a flow-matching transformer.

Two registered mmengine models, run as the two stages of ``configs/teachers/shapes_<family>.py``:

- :class:`ShapesVAETrainer`: the family's VAE on rendered images, ``loss_rec`` (L1 + MSE of the
  reconstruction from a posterior sample) plus ``loss_kl`` (small weight);
- :class:`ShapesFlowTeacher`: the family's transformer and text encoders, trained jointly by
  rectified flow matching (``x_sigma = (1 - sigma) x0 + sigma eps``, target ``eps - x0``,
  ``loss_fm``) on the frozen VAE's normalised latents, with classifier-free-guidance dropout
  (the prompt replaced by ``""``); an EMA of the trained weights is what
  :meth:`ShapesFlowTeacher.export_weights` writes, as a diffusers folder the backbones load.

Every random draw of iteration ``i`` comes from a counter-based stream ``(seed, i, tag)``
(:mod:`rtdmd.utils.rng`) and the iteration counter is a buffer, so a resumed run draws what the
uninterrupted one drew.
"""

from __future__ import annotations

import copy
import os.path as osp
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.model import BaseModel
from mmengine.optim import OptimWrapper
from torch import Tensor, nn

from rtdmd.functional.ema import ema_update_, ema_warmup_decay
from rtdmd.functional.flow import interpolate
from rtdmd.functional.timesteps import sample_sigmas, shift_sigmas
from rtdmd.registry import MODELS
from rtdmd.utils.atomic import atomic_write_json
from rtdmd.utils.checkpoint import model_state, read_checkpoint
from rtdmd.utils.rng import stream

from .base import BACKBONE_RECORD, TeacherFamily


def _images(data: dict) -> Tensor:
    images = data['image']
    return torch.stack(list(images)) if isinstance(images, (list, tuple)) else images


class _ShapesTrainer(BaseModel):
    """Family, seed and iteration counter; ``forward`` is not used (``train_step`` is)."""

    def __init__(self, family: dict, seed: int) -> None:
        super().__init__()
        self.family: TeacherFamily = MODELS.build(family)
        self.seed = seed
        self.register_buffer('iteration', torch.zeros((), dtype=torch.long))

    def _stream(self, tag: str) -> torch.Generator:
        return stream(self.seed, int(self.iteration), tag, device=self.iteration.device)

    def _step(self, losses: dict[str, Tensor], optim_wrapper: OptimWrapper) -> dict[str, Tensor]:
        total = sum(v for k, v in losses.items() if k.startswith('loss_'))
        if not torch.isfinite(total):
            raise FloatingPointError(f'non-finite loss at iteration {int(self.iteration)}: '
                                     f'{ {k: float(v) for k, v in losses.items()} }')
        optim_wrapper.update_params(total)
        self.iteration += 1
        return {k: v.detach() for k, v in losses.items()}

    def forward(self, inputs: Any = None, data_samples: Any = None, mode: str = 'tensor') -> Any:
        raise RuntimeError(f'{type(self).__name__} is driven through train_step')


@MODELS.register_module()
class ShapesVAETrainer(_ShapesTrainer):
    """Trains the family's VAE on the world's renderings.

    Args:
        family: the teacher family config (``SD3ShapesFamily`` / ``Flux2ShapesFamily``).
        kl_weight: weight of the posterior's KL to N(0, I) (``loss_kl``).
        seed: seed of the posterior-sample streams.
    """

    def __init__(self, family: dict, kl_weight: float = 1e-6, seed: int = 0) -> None:
        super().__init__(family, seed)
        self.vae = self.family.make_vae()
        self.kl_weight = kl_weight

    def train_step(self, data: dict, optim_wrapper: OptimWrapper) -> dict[str, Tensor]:
        x = _images(data).to(self.iteration.device) * 2 - 1
        posterior = self.vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=self._stream('posterior'),
                            device=x.device)
        z = posterior.mean + posterior.std * noise
        rec = self.vae.decode(z).sample
        losses = {'loss_rec': (rec - x).abs().mean() + (rec - x).pow(2).mean(),
                  'loss_kl': self.kl_weight * posterior.kl().mean()}
        return self._step(losses, optim_wrapper)


@MODELS.register_module()
class ShapesFlowTeacher(_ShapesTrainer):
    """Trains the family's transformer and text encoders by flow matching with CFG dropout.

    Args:
        family: the teacher family config.
        init_checkpoint: the VAE stage's checkpoint, whose ``vae.*`` weights are loaded and
            frozen (``init_from`` in a pipeline config sets it); ``None`` keeps a randomly
            initialised VAE (smoke tests only).
        cfg_dropout: probability of training a sample on the empty prompt.
        sigma_sampling: ``dict(mean, std, shift)``: ``sigma = shift(sigmoid(N(mean, std)))``
            (logit-normal, then the static shift ``shift u / (1 + (shift - 1) u)``).
        ema_decay: EMA decay of the trained weights (warm-up decay ``(1 + s) / (10 + s)``
            below it).
        latent_stats_images: renderings whose latents set the VAE's latent normalisation.
        seed: seed of every stream.
    """

    def __init__(self, family: dict, init_checkpoint: str | None = None,
                 cfg_dropout: float = 0.1, sigma_sampling: dict | None = None,
                 ema_decay: float = 0.999, latent_stats_images: int = 2048,
                 seed: int = 0) -> None:
        super().__init__(family, seed)
        if not 0 <= cfg_dropout < 1:
            raise ValueError(f'cfg_dropout must lie in [0, 1), got {cfg_dropout}')
        sampling = dict(mean=0.0, std=1.0, shift=1.0)
        unknown = set(sigma_sampling or {}) - set(sampling)
        if unknown:
            raise TypeError(f'sigma_sampling got unknown keys {sorted(unknown)}; valid: '
                            f'{sorted(sampling)}')
        sampling.update(sigma_sampling or {})
        self.sigma_sampling, self.cfg_dropout, self.ema_decay = sampling, cfg_dropout, ema_decay
        self.vae = self.family.make_vae()
        if init_checkpoint is not None:
            self.vae.load_state_dict(_vae_state(init_checkpoint))
        self.vae.requires_grad_(False).eval()
        self.fit_latent_stats(latent_stats_images)
        self.text = self.family.make_text_encoders()
        self.transformer = self.family.make_transformer()
        self.ema = nn.ModuleDict(dict(text=copy.deepcopy(self.text),
                                      transformer=copy.deepcopy(self.transformer)))
        self.ema.requires_grad_(False)

    @torch.no_grad()
    def fit_latent_stats(self, count: int) -> None:
        """Set the VAE's latent normalisation from ``count`` renderings (fixed seed)."""
        from rtdmd.datasets.shapes import ShapesImageDataset  # datasets import rewards, models

        dataset = ShapesImageDataset(count, split='all', seed=self.seed + 1)
        images = torch.stack([dataset[i]['image'] for i in range(count)])
        raw = torch.cat([self.family.raw_latents(self.vae, chunk)
                         for chunk in images.split(256)])
        self.family.fit_latent_stats(self.vae, raw)

    def train(self, mode: bool = True) -> ShapesFlowTeacher:
        super().train(mode)
        self.vae.eval()
        self.ema.eval()
        return self

    def _prompts(self, prompts: Sequence[str]) -> list[str]:
        drop = torch.rand(len(prompts), generator=self._stream('cfg_dropout'),
                          device=self.iteration.device) < self.cfg_dropout
        return ['' if d else str(p) for p, d in zip(prompts, drop.tolist(), strict=True)]

    def train_step(self, data: dict, optim_wrapper: OptimWrapper) -> dict[str, Tensor]:
        device = self.iteration.device
        with torch.no_grad():
            x0 = self.family.to_latents(self.vae, _images(data).to(device))
        gen = self._stream('flow')
        s = self.sigma_sampling
        u = sample_sigmas(x0.shape[0], 'logit_normal', generator=gen, device=device,
                          logit_mean=s['mean'], logit_std=s['std'])
        sigma = shift_sigmas(u, s['shift'])
        eps = torch.randn(x0.shape, generator=gen, device=device)
        cond = self.family.encode_prompts(self.text, self._prompts(data['prompt']))
        v = self.family.velocity(self.transformer, interpolate(x0, eps, sigma), sigma, cond)
        log_vars = self._step({'loss_fm': (v.float() - (eps - x0)).pow(2).mean()},
                              optim_wrapper)
        decay = ema_warmup_decay(int(self.iteration) - 1, self.ema_decay)
        live = [*self.text.parameters(), *self.transformer.parameters()]
        ema_update_([*self.ema['text'].parameters(), *self.ema['transformer'].parameters()],
                    live, decay)
        return log_vars

    def save_teacher(self, path: str, use_ema: bool = True,
                     dtype: torch.dtype = torch.float16) -> None:
        """Write the teacher as the family's diffusers pipeline folder (weights in ``dtype``),
        with :data:`~rtdmd.models.teachers.base.BACKBONE_RECORD` (the backbone config that
        loads it)."""
        text = self.ema['text'] if use_ema else self.text
        transformer = self.ema['transformer'] if use_ema else self.transformer
        self.family.save_pretrained(path, self.vae, text, transformer, dtype)
        atomic_write_json(osp.join(path, BACKBONE_RECORD), self.family.backbone_args(), indent=2)

    def export_weights(self, path: str) -> None:
        """The teacher with its EMA weights (what :class:`ExportWeightsHook` writes)."""
        self.save_teacher(path, use_ema=True)


def _vae_state(path: str) -> dict[str, Tensor]:
    state = model_state(read_checkpoint(path))  # the safe loader: weights_only=True
    vae = {k[len('vae.'):]: v for k, v in state.items() if k.startswith('vae.')}
    if not vae:
        raise KeyError(f'{path} holds no VAE weights (vae.*): is it a checkpoint of '
                       f'ShapesVAETrainer?')
    return vae


__all__ = ['ShapesFlowTeacher', 'ShapesVAETrainer']
