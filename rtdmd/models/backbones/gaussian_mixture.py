"""Exact class-conditional Gaussian mixtures under the rectified-flow interpolant.

The analytic world's teacher: ``p(x0 | c) = sum_k w_ck N(mu_k, s_k^2 I)`` in R^d. Under
``x = (1 - sigma) x0 + sigma eps`` every component stays Gaussian:
``x | k ~ N((1 - sigma) mu_k, v_k I)`` with ``v_k = (1 - sigma)^2 s_k^2 + sigma^2``, so the
posterior responsibilities ``r_k(x)`` and the per-component conditional expectations

    E[x0 | x, k]  = mu_k + (1 - sigma) s_k^2 / v_k * (x - (1 - sigma) mu_k)
    E[eps | x, k] = sigma / v_k * (x - (1 - sigma) mu_k)

give the exact marginal velocity ``v(x) = sum_k r_k(x) (E[eps | x, k] - E[x0 | x, k])``.
The class index ``C`` (one past the last class) is the empty prompt: the class-marginal mixture
with a uniform class prior, so classifier-free guidance exists in this world.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn


class GaussianMixtureTeacher(nn.Module):
    """Closed-form velocity, density and sampling of a class-conditional Gaussian mixture.

    Args:
        means: component means, ``K x d``.
        stds: component standard deviations, ``K``.
        class_weights: mixture weights per class, ``C x K`` (rows are normalised).
    """

    def __init__(self, means: Sequence[Sequence[float]], stds: Sequence[float],
                 class_weights: Sequence[Sequence[float]]) -> None:
        super().__init__()
        means_t = torch.as_tensor(means, dtype=torch.float64)
        stds_t = torch.as_tensor(stds, dtype=torch.float64)
        weights_t = torch.as_tensor(class_weights, dtype=torch.float64)
        if means_t.ndim != 2:
            raise ValueError(f'world.means must be a K x d list of lists, got shape '
                             f'{tuple(means_t.shape)}')
        if stds_t.shape != (means_t.shape[0],):
            raise ValueError(f'world.stds must have one entry per component ({means_t.shape[0]}),'
                             f' got shape {tuple(stds_t.shape)}')
        if weights_t.ndim != 2 or weights_t.shape[1] != means_t.shape[0]:
            raise ValueError(f'world.class_weights must be C x K with K={means_t.shape[0]}, got '
                             f'shape {tuple(weights_t.shape)}')
        if bool((stds_t <= 0).any()) or bool((weights_t < 0).any()):
            raise ValueError('world.stds must be > 0 and world.class_weights >= 0')
        weights_t = weights_t / weights_t.sum(dim=1, keepdim=True)
        # Row C is the empty prompt: the class-marginal mixture under a uniform class prior.
        weights_t = torch.cat([weights_t, weights_t.mean(dim=0, keepdim=True)])
        self.register_buffer('means', means_t.float())
        self.register_buffer('stds', stds_t.float())
        self.register_buffer('weights', weights_t.float())

    @classmethod
    def from_world(cls, world: dict[str, Any]) -> GaussianMixtureTeacher:
        """Build from the config's ``world = dict(means=..., stds=..., class_weights=...)``."""
        expected = {'means', 'stds', 'class_weights'}
        if not isinstance(world, dict) or set(world) != expected:
            got = sorted(world) if isinstance(world, dict) else type(world).__name__
            raise ValueError(f'world must be a dict with exactly the keys {sorted(expected)}, '
                             f'got {got}')
        return cls(world['means'], world['stds'], world['class_weights'])

    @property
    def num_classes(self) -> int:
        return self.weights.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _log_joint(self, x: Tensor, sigma: Tensor | float, class_ids: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor]:
        """``log w_ck + log N(x; (1 - sigma) mu_k, v_k I)`` ``(B, K)`` in float64, with the
        centred ``x - (1 - sigma) mu_k`` ``(B, K, d)`` and ``v_k = (1 - sigma)^2 s_k^2 + sigma^2``
        ``(B, K)``."""
        sigma = torch.as_tensor(sigma, device=x.device).expand(x.shape[0])
        sig = sigma.double().reshape(-1, 1)                              # (B, 1)
        means, var0 = self.means.double(), self.stds.double().pow(2)     # (K, d), (K,)
        var = (1 - sig).pow(2) * var0 + sig.pow(2)                        # (B, K)
        centred = x.double()[:, None, :] - (1 - sig)[:, :, None] * means[None]  # (B, K, d)
        log_n = -0.5 * (centred.pow(2).sum(-1) / var + x.shape[1] * torch.log(2 * torch.pi * var))
        return torch.log(self.weights.double()[class_ids]) + log_n, centred, var

    def posterior(self, x: Tensor, sigma: Tensor | float, class_ids: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """Responsibilities ``(B, K)``, centred ``x - (1 - sigma) mu_k`` ``(B, K, d)``, ``v_k``."""
        log_joint, centred, var = self._log_joint(x, sigma, class_ids)
        return torch.softmax(log_joint, dim=1), centred, var

    def log_prob(self, x: Tensor, sigma: Tensor | float, class_ids: Tensor) -> Tensor:
        """``log p_sigma(x | c)``, ``(B,)`` in float64."""
        return torch.logsumexp(self._log_joint(x, sigma, class_ids)[0], dim=1)

    def forward(self, x: Tensor, sigma: Tensor, class_ids: Tensor) -> Tensor:
        """Exact velocity ``E[eps - x0 | x_sigma = x, c]``.

        Shapes: ``x (B, d)``, ``sigma (B,)``, ``class_ids (B,)`` -> ``(B, d)``.
        """
        resp, centred, var = self.posterior(x, sigma, class_ids)
        sig = sigma.double().reshape(-1, 1, 1)
        var = var[:, :, None]
        e_x0 = self.means.double()[None] + (1 - sig) * self.stds.double().pow(2)[None, :, None] \
            / var * centred
        e_eps = sig / var * centred
        v = (resp[:, :, None] * (e_eps - e_x0)).sum(dim=1)
        return v.to(x.dtype)

    def component_ids(self, class_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return torch.multinomial(self.weights[class_ids], 1, generator=generator).squeeze(1)

    def sample(self, class_ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact samples of ``p(x0 | c)``, ``(B, d)``."""
        k = self.component_ids(class_ids, generator)
        z = torch.randn(class_ids.shape[0], self.dim, generator=generator,
                        device=self.means.device)
        return self.means[k] + self.stds[k, None] * z
