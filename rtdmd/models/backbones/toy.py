"""The analytic world as a backbone: an exact Gaussian-mixture teacher and small MLP students.

A class id plays the role of a prompt (``num_classes`` is the empty prompt). Generator and fake
score are time- and class-conditioned MLPs that both start from one MLP fitted to the exact
teacher velocity, the toy's stand-in for "both start from the pretrained teacher".
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from mmengine.logging import print_log
from torch import Tensor, nn

from rtdmd.functional.flow import interpolate
from rtdmd.functional.timesteps import step_list_to_sigmas
from rtdmd.registry import MODELS

from .base import Backbone, Condition
from .gaussian_mixture import GaussianMixtureTeacher


class VelocityMLP(nn.Module):
    """``v(x, sigma, c)``: an MLP on ``[x, Fourier(sigma)]`` with an additive class embedding."""

    def __init__(self, dim: int, num_classes: int, hidden_dim: int = 128, depth: int = 3,
                 num_frequencies: int = 8) -> None:
        super().__init__()
        self.register_buffer('frequencies', 2.0 ** torch.arange(num_frequencies) * math.pi,
                             persistent=False)
        self.inp = nn.Linear(dim + 2 * num_frequencies + 1, hidden_dim)
        self.class_embed = nn.Embedding(num_classes + 1, hidden_dim)  # last row: empty prompt
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [nn.SiLU(), nn.Linear(hidden_dim, hidden_dim)]
        self.body = nn.Sequential(*layers, nn.SiLU())
        self.out = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor, sigma: Tensor, class_ids: Tensor) -> Tensor:
        angles = sigma[:, None] * self.frequencies[None]
        feats = torch.cat([x, sigma[:, None], torch.sin(angles), torch.cos(angles)], dim=1)
        h = self.inp(feats) + self.class_embed(class_ids)
        return self.out(self.body(h))


def fit_velocity_mlp(mlp: VelocityMLP, teacher: GaussianMixtureTeacher, iters: int,
                     batch_size: int, lr: float, seed: int) -> float:
    """Regress ``mlp`` onto the exact teacher velocity; returns the final MSE.

    ``sigma ~ U(0, 1)``, classes uniform over the real classes and the empty prompt, ``x`` drawn
    from the exact interpolant marginal.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(mlp.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(iters, 1))
    mse = torch.tensor(float('nan'))
    for _ in range(iters):
        c = torch.randint(0, teacher.num_classes + 1, (batch_size,), generator=gen)
        sigma = torch.rand(batch_size, generator=gen)
        x0 = teacher.sample(c, gen)
        x = interpolate(x0, torch.randn(x0.shape, generator=gen), sigma)
        with torch.no_grad():
            target = teacher(x, sigma, c)
        mse = (mlp(x, sigma, c) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        sched.step()
    # No gradient may outlive the fit: the first training step would add it to its own, and a
    # first run (which fits) would then train differently from a rerun (which loads the fit).
    mlp.zero_grad(set_to_none=True)
    return float(mse.detach())


INIT_FIT_DEFAULTS = dict(iters=2000, batch_size=1024, lr=2e-3, seed=0)


@MODELS.register_module()
class GaussianMixtureBackbone(Backbone):
    """Backbone of the analytic world (exact teacher, MLP generator and fake score).

    Args:
        world: ``dict(means=K x d, stds=K, class_weights=C x K)``, the mixture (see
            :class:`GaussianMixtureTeacher`); configs pass the top-level ``world``.
        hidden_dim, depth: MLP size of generator and fake score.
        init_fit: ``dict(iters, batch_size, lr, seed)`` for the teacher-velocity fit both
            students start from. The fitted weights are cached under ``cache_dir`` (default
            ``$RTDMD_CACHE`` or ``~/.cache/rtdmd``), keyed by everything that determines them.
        shift: optional static SD3-style shift of the few-step schedule (1.0 = none).
    """

    dict_arg_keys = {'init_fit': tuple(INIT_FIT_DEFAULTS)}

    def __init__(self, world: dict[str, Any], hidden_dim: int = 128,
                 depth: int = 3, init_fit: dict[str, Any] | None = None, shift: float = 1.0,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        self.teacher = GaussianMixtureTeacher.from_world(world)
        self.freeze_frozen_modules()
        self.shift = shift
        fit = dict(INIT_FIT_DEFAULTS)
        unknown = set(init_fit or {}) - set(fit)
        if unknown:
            raise TypeError(f'init_fit got unknown keys {sorted(unknown)}; valid: {sorted(fit)}')
        fit.update(init_fit or {})
        arch = dict(dim=self.teacher.dim, num_classes=self.teacher.num_classes,
                    hidden_dim=hidden_dim, depth=depth)
        base = VelocityMLP(**arch)
        self._load_or_fit(base, arch, fit, dict(world), cache_dir)
        self.generator = base
        self.fake_score = copy.deepcopy(base)

    def _load_or_fit(self, mlp: VelocityMLP, arch: dict, fit: dict, world: dict,
                     cache_dir: str | None) -> None:
        key = json.dumps(dict(arch=arch, fit=fit, world=world, torch=torch.__version__),
                         sort_keys=True, default=str)
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        root = Path(cache_dir or os.environ.get('RTDMD_CACHE', '~/.cache/rtdmd')).expanduser()
        path = root / 'toy_init' / f'{digest}.pt'
        if path.exists():
            mlp.load_state_dict(torch.load(path, map_location='cpu', weights_only=True))
            return
        # The fit draws from the global RNG: isolate it, so a run that fits (cache miss) leaves
        # the same global state as one that loads (cache hit) and a resumed run is identical.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(fit['seed'])
            mlp.load_state_dict(VelocityMLP(**arch).state_dict())
            mse = fit_velocity_mlp(mlp, self.teacher, **fit)
        print_log(f'fitted the toy students to the exact teacher velocity: mse {mse:.4f}',
                  logger='current')
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f'.{os.getpid()}.tmp')
        torch.save(mlp.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: concurrent ranks or tests never read half a file

    # ------------------------------------------------------------------------------ protocol
    def frozen_modules(self) -> list[nn.Module]:
        return [self.teacher]

    def encode_prompts(self, prompts: Sequence[Any] | Tensor) -> Condition:
        class_ids = torch.as_tensor(prompts, dtype=torch.long, device=self.teacher.means.device)
        if bool(((class_ids < 0) | (class_ids > self.teacher.num_classes)).any()):
            raise ValueError(f'class prompts must lie in [0, {self.teacher.num_classes}] '
                             f'({self.teacher.num_classes} is the empty prompt)')
        return {'class_ids': class_ids}

    def null_condition(self, cond: Condition) -> Condition:
        return {'class_ids': torch.full_like(cond['class_ids'], self.teacher.num_classes)}

    def _velocity(self, net: nn.Module, role: str, x: Tensor, sigma: Tensor,
                  cond: Condition) -> Tensor:
        return net(x, sigma, cond['class_ids'])

    def sigma_schedule(self, step_list: Sequence[int], latent_shape: Sequence[int]) -> Tensor:
        shift = None if self.shift == 1.0 else self.shift
        return step_list_to_sigmas(step_list, shift=shift).to(self.teacher.means.device)

    def latent_shape(self) -> tuple[int, ...]:
        return (self.teacher.dim,)

    def decode(self, x: Tensor) -> Tensor:
        return x
