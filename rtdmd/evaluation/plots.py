"""Figures of the analytic world: samples of each model over the target's density contours."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher

MAX_POINTS = 2000
GRID_POINTS = 200


def view_plane(target: GaussianMixtureTeacher) -> np.ndarray:
    """``(d, 2)`` orthonormal basis of the figure's plane: the identity for ``d = 2``, else the
    two principal directions of the target's component means (where the modes spread most)."""
    means = target.means.double().numpy()
    if means.shape[1] == 2:
        return np.eye(2)
    centred = means - means.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=True)
    return vt[:2].T


def _extent(target: GaussianMixtureTeacher, xs: list[np.ndarray], plane: np.ndarray
            ) -> tuple[float, ...]:
    """Box holding the target (means +- 4 std) and the central 98% of every model's samples."""
    means = target.means.double().numpy() @ plane
    stds = target.stds.double().numpy()[:, None]
    lo, hi = (means - 4 * stds).min(0), (means + 4 * stds).max(0)
    for x in xs:
        finite = x[np.isfinite(x).all(1)]
        if len(finite):
            lo = np.minimum(lo, np.quantile(finite, 0.01, axis=0))
            hi = np.maximum(hi, np.quantile(finite, 0.99, axis=0))
    return float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])


def _log_density(target: GaussianMixtureTeacher, classes: list[int],
                 box: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    """Log of the class-averaged target density on a grid over ``box``."""
    gx = np.linspace(box[0], box[1], GRID_POINTS)
    gy = np.linspace(box[2], box[3], GRID_POINTS)
    xx, yy = np.meshgrid(gx, gy)
    pts = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], 1))
    log_p = torch.stack([target.log_prob(pts, 0.0, torch.full((pts.shape[0],), c))
                         for c in classes])
    log_p = torch.logsumexp(log_p, dim=0) - math.log(len(classes))
    return xx, yy, log_p.reshape(xx.shape).numpy()


def plot_samples(samples: dict[str, tuple[Tensor, Tensor]], target: GaussianMixtureTeacher,
                 path: str, title: str | None = None) -> None:
    """One panel per model: up to 2000 samples coloured by class over the target's contours.

    Contours are the log-density (levels 1, 2, 4, 6, 9 nats below its maximum) of the target
    averaged over the classes present; for ``d > 2`` the samples are projected on the plane of
    :func:`view_plane` and contours skipped (a projected density is not the target's).
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(samples)
    plane = view_plane(target)
    data = [(samples[n][0].detach().cpu().double().numpy() @ plane,
             samples[n][1].detach().cpu().long().numpy()) for n in names]
    box = _extent(target, [x for x, _ in data], plane)
    classes = sorted({int(k) for _, c in data for k in np.unique(c)})
    contours = _log_density(target, classes, box) if target.dim == 2 else None
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    for ax, name, (x, c) in zip(axes.ravel(), names, data, strict=False):
        if contours is not None:
            xx, yy, log_p = contours
            levels = sorted(log_p.max() - np.array([9.0, 6.0, 4.0, 2.0, 1.0]))
            ax.contour(xx, yy, log_p, levels=levels, colors='0.55', linewidths=0.7,
                       linestyles='solid')
        idx = rng.permutation(len(x))[:MAX_POINTS]  # random order: no class drawn on top
        ax.scatter(x[idx, 0], x[idx, 1], s=2, alpha=0.6, c=[f'C{k % 10}' for k in c[idx]])
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect('equal')
        ax.set_title(name if target.dim == 2 else f'{name} (principal plane)', fontsize=10)
    for ax in axes.ravel()[len(names):]:
        ax.axis('off')
    handles = [plt.Line2D([], [], ls='', marker='o', ms=4, color=f'C{k % 10}', label=f'class {k}')
               for k in classes]
    axes.ravel()[0].legend(handles=handles, loc='upper right', fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
