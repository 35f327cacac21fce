"""Fidelity of images to the shapes world: a Frechet distance on a small classifier's features.

:class:`ShapesFeatureNet` is a small CNN trained on the world's renderings
(``configs/evaluation/shapes_features.py``; weights shipped in ``rtdmd/assets/shapes``) to
recognise what the detector reads off a rendering: how many objects of each colour-shape pair
it holds (15 heads of 0-4) and which colour dominates each cell of a 4 x 4 grid, and whether the
image was corrupted after rendering (:func:`corrupt`: noise, blur, colour shift, contrast loss;
without this head the features are blind to texture, as a scene classifier should be). Its
penultimate features (``feature_dim``) describe an image; :func:`frechet_distance` compares the
Gaussian fits of two feature sets (FID's formula; :func:`weighted_frechet_distances` computes it
for many resamples of the two sets at once, the bootstrap's case).

The reference is always a set of renderings (exact samples of the world) for the same prompts,
so the distance measures how far generated images are from the world itself, not from another
model: a reward hack that paints the right colours in the wrong way (blobs, noise, colour
patches, saturated backgrounds) moves the features off the world's and shows here, whatever the
reward says.
"""

from __future__ import annotations

import json
import os.path as osp
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from rtdmd.datasets.shapes_prompts import scene_for
from rtdmd.datasets.shapes_world import COLOR_NAMES, IMAGE_SIZE, MAX_OBJECTS, SHAPES, render

from .shapes_detector import components, segment

ASSETS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'assets', 'shapes')
FEATURES_FILE = osp.join(ASSETS, 'features', 'model.safetensors')
GRID = 4
CORRUPTIONS = ('none', 'noise', 'blur', 'color_shift', 'contrast')
PAIRS = [(c, s) for c in COLOR_NAMES for s in SHAPES]


class ShapesFeatureNet(nn.Module):
    """A small CNN: 3 conv stages (32 -> 4 px) and a ``feature_dim`` embedding, with heads.

    Args:
        width: channels of the first stage (doubled at each of the next two).
        feature_dim: size of the embedding the Frechet distance uses.
    """

    def __init__(self, width: int = 16, feature_dim: int = 64) -> None:
        super().__init__()
        self.config = dict(width=width, feature_dim=feature_dim)
        layers: list[nn.Module] = []
        channels = 3
        for out in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GroupNorm(4, out), nn.SiLU(),
                       nn.Conv2d(out, out, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2)]
            channels = out
        self.body = nn.Sequential(*layers, nn.Flatten(),
                                  nn.Linear(channels * (IMAGE_SIZE // 8) ** 2, feature_dim),
                                  nn.SiLU())
        self.count_head = nn.Linear(feature_dim, len(PAIRS) * (MAX_OBJECTS + 1))
        self.grid_head = nn.Linear(feature_dim, GRID * GRID * (len(COLOR_NAMES) + 1))
        self.corruption_head = nn.Linear(feature_dim, len(CORRUPTIONS))

    def features(self, images: Tensor) -> Tensor:
        """``(B, feature_dim)`` embedding of ``(B, 3, 32, 32)`` images in [0, 1]."""
        return self.body(images * 2 - 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Count logits ``(B, 15, 5)``, grid-colour logits ``(B, 16, 6)`` and corruption logits
        ``(B, 5)``."""
        feats = self.features(images)
        counts = self.count_head(feats).view(-1, len(PAIRS), MAX_OBJECTS + 1)
        grid = self.grid_head(feats).view(-1, GRID * GRID, len(COLOR_NAMES) + 1)
        return counts, grid, self.corruption_head(feats)


def corrupt(images: Tensor, generator: torch.Generator, p: float = 0.5) -> tuple[Tensor, Tensor]:
    """Corrupt each image with probability ``p`` by one of :data:`CORRUPTIONS` (uniform), at a
    random strength; returns the images and the corruption index of each (0: none).

    Noise: Gaussian, std U[0.02, 0.15]; blur: Gaussian, sigma U[0.5, 1.2]; colour shift: a
    per-channel offset U[-0.1, 0.1]; contrast: towards mid-grey by a factor U[0.6, 0.9].
    """
    n = images.shape[0]

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(n, 1, 1, 1, generator=generator)

    kind = torch.randint(1, len(CORRUPTIONS), (n,), generator=generator)
    kind = torch.where(torch.rand(n, generator=generator) < p, kind, 0)
    noise = torch.randn(images.shape, generator=generator) * uniform(0.02, 0.15)
    shift = (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * 0.2
    contrast = 0.5 + (images - 0.5) * uniform(0.6, 0.9)
    sigma = uniform(0.5, 1.2)
    taps = torch.arange(-2, 3, dtype=images.dtype).view(1, 5)
    kernel = torch.exp(-taps ** 2 / (2 * sigma.view(n, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)  # (n, 5), separable
    padded = nn.functional.pad(images, (2, 2, 2, 2), mode='replicate')
    rows = sum(kernel[:, i].view(n, 1, 1, 1) * padded[..., i:i + images.shape[-2], :]
               for i in range(5))
    blur = sum(kernel[:, i].view(n, 1, 1, 1) * rows[..., i:i + images.shape[-1]]
               for i in range(5))
    options = torch.stack([images, images + noise, blur, images + shift, contrast])
    out = options[kind, torch.arange(n)]
    return out.clamp(0, 1), kind


def feature_targets(images: Tensor) -> tuple[Tensor, Tensor]:
    """Count targets ``(B, 15)`` and grid targets ``(B, 16)`` read off renderings by the detector
    (exact on renderings): objects per colour-shape pair, and the dominant segmentation label
    (0 background, ``k`` colour) of each cell."""
    counts, grids = [], []
    side = images.shape[-1] // GRID
    for seg in segment(images):
        objects, _ = components(seg)
        found = [(o.color, o.shape) for o in objects]
        counts.append([min(found.count(pair), MAX_OBJECTS) for pair in PAIRS])
        cells = seg.labels.reshape(GRID, side, GRID, side).transpose(0, 2, 1, 3)
        cells = cells.reshape(GRID * GRID, -1)
        grids.append([int(np.bincount(c, minlength=len(COLOR_NAMES) + 1).argmax())
                      for c in cells])
    return torch.tensor(counts), torch.tensor(grids)


def save_feature_net(net: ShapesFeatureNet, path: str) -> None:
    """Weights (safetensors) and ``config.json`` into folder ``path``."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              osp.join(path, 'model.safetensors'))
    with open(osp.join(path, 'config.json'), 'w') as f:
        json.dump(net.config, f, indent=2)


def load_feature_net(path: str | None = None) -> ShapesFeatureNet:
    """The feature network from folder ``path`` (default: the shipped one), in eval mode."""
    from safetensors.torch import load_file

    folder = path or osp.dirname(FEATURES_FILE)
    weights = osp.join(folder, 'model.safetensors')
    if not osp.isfile(weights):
        raise FileNotFoundError(f'no feature network at {folder} (model.safetensors); train one '
                                f'with python tools/train.py configs/evaluation/'
                                f'shapes_features.py')
    with open(osp.join(folder, 'config.json')) as f:
        net = ShapesFeatureNet(**json.load(f))
    net.load_state_dict(load_file(weights))
    return net.eval().requires_grad_(False)


def _moments(features: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means ``(B, D)`` and unbiased covariances ``(B, D, D)`` of rows repeated by ``weights``."""
    n = weights.sum(1, keepdims=True)
    mean = weights @ features / n
    second = np.einsum('bn,nd,ne->bde', weights, features, features, optimize=True)  # BLAS
    cov = (second - n[:, :, None] * mean[:, :, None] * mean[:, None, :]) / (n[:, :, None] - 1)
    return mean, cov


def weighted_frechet_distances(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray
                               ) -> np.ndarray:
    """``(B,)`` Frechet distances of the Gaussian fits of ``a`` and ``b``, rows repeated.

    ``a`` ``(N, D)`` and ``b`` ``(M, D)`` are feature sets, ``wa`` ``(B, N)`` and ``wb``
    ``(B, M)`` how often each row counts in each of ``B`` pairs (a bootstrap resample's
    counts; all ones for the sets themselves). ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a
    S_b)^(1/2))``, with the trace of the root from the eigenvalues of ``S_a S_b``: the product
    of two PSD matrices has real non-negative eigenvalues (rounding's tiny negative or
    imaginary parts are dropped), which also holds for a singular product and batches over B.
    """
    mu_a, cov_a = _moments(a, wa)
    mu_b, cov_b = _moments(b, wb)
    root_trace = np.sqrt(np.clip(np.linalg.eigvals(cov_a @ cov_b).real, 0, None)).sum(-1)
    return (((mu_a - mu_b) ** 2).sum(-1) + np.trace(cov_a, axis1=1, axis2=2)
            + np.trace(cov_b, axis1=1, axis2=2) - 2 * root_trace)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance of the Gaussian fits of feature sets ``(N, D)`` and ``(M, D)``."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f'need two (N >= 2, D) feature sets, got {a.shape} and {b.shape}')
    return float(weighted_frechet_distances(a, np.ones((1, len(a))), b,
                                            np.ones((1, len(b))))[0])


@torch.no_grad()
def embed(net: ShapesFeatureNet, images: Tensor, batch_size: int = 256) -> np.ndarray:
    """``(N, D)`` float64 features of ``(N, 3, 32, 32)`` images in [0, 1]."""
    device = next(net.parameters()).device
    return torch.cat([net.features(chunk.to(device).float().clamp(0, 1)).cpu()
                      for chunk in images.split(batch_size)]).double().numpy()


def render_references(metadata: Sequence[dict[str, Any]], seed: int = 0,
                      copies: int = 1) -> Tensor:
    """``copies`` renderings per metadata entry (``(copies N, 3, 32, 32)`` in [0, 1]).

    Rendering ``j`` of entry ``i`` uses ``numpy.random.default_rng([seed, j, i])``.
    """
    images = [render(scene_for(meta, np.random.default_rng([seed, j, i])))
              for j in range(copies) for i, meta in enumerate(metadata)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def fidelity_distance(images: Tensor, metadata: Sequence[dict[str, Any]],
                      net: ShapesFeatureNet | None = None, seed: int = 0,
                      copies: int = 4) -> float:
    """Frechet distance of ``images`` to renderings of the same prompts (``copies`` each)."""
    net = net or load_feature_net()
    reference = render_references(metadata, seed, copies)
    return frechet_distance(embed(net, images), embed(net, reference))


__all__ = ['CORRUPTIONS', 'ShapesFeatureNet', 'corrupt', 'embed', 'feature_targets',
           'fidelity_distance',
           'frechet_distance', 'load_feature_net', 'render_references', 'save_feature_net',
           'weighted_frechet_distances']
