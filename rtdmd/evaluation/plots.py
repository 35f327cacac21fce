"""Figures of the analytic world: samples of each model over the target's density contours."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from rtdmd.models.backbones.gaussian_mixture import GaussianMixtureTeacher

MAX_POINTS = 2000
GRID_POINTS = 200
#: Metrics shown under a panel's name (those the model has), with their short labels.
TITLE_METRICS = (('sw2_teacher', 'SW2 teacher'), ('sw2_target', 'SW2 target'),
                 ('beta_hat', 'beta_hat'), ('off_support', 'off-support'))


def view_plane(target: GaussianMixtureTeacher) -> np.ndarray:
    """``(d, 2)`` orthonormal basis of the figure's plane: the identity for ``d = 2``, else the
    two principal directions of the target's component means (where the modes spread most)."""
    means = target.means.double().numpy()
    if means.shape[1] == 2:
        return np.eye(2)
    centred = means - means.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=True)
    return vt[:2].T


def _extent(target: GaussianMixtureTeacher, xs: list[np.ndarray],
            plane: np.ndarray | None = None) -> tuple[float, ...]:
    """Box holding the target (means +- 4 std) and the central 98% of the samples ``xs``.

    Called per panel: a model whose samples run away gets a larger box of its own instead of
    shrinking every other model's view.
    """
    plane = view_plane(target) if plane is None else plane
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


def panel_title(name: str, metrics: Mapping[str, float] | None, outside: float) -> str:
    """The model's name, its headline metrics and the share of its samples outside the view."""
    parts = [f'{label} {metrics[key]:.3g}' for key, label in TITLE_METRICS
             if metrics and key in metrics and math.isfinite(metrics[key])]
    if outside > 0.01:
        parts.append(f'{100 * outside:.1f}% outside view')
    lines = [name] + [', '.join(parts[i:i + 2]) for i in range(0, len(parts), 2)]
    return '\n'.join(lines)


def _square(box: tuple[float, ...], margin: float = 0.06) -> tuple[float, ...]:
    """``box`` grown by ``margin`` of its larger side and made square (equal-aspect panels)."""
    cx, cy = (box[0] + box[1]) / 2, (box[2] + box[3]) / 2
    half = (1 + 2 * margin) * max(box[1] - box[0], box[3] - box[2]) / 2
    return cx - half, cx + half, cy - half, cy + half


def _reward_marker(ax, reward: torch.nn.Module | None, box: tuple[float, ...],
                   plane: np.ndarray) -> None:
    """An arrow along a linear reward's direction in the panel's top-left corner (or a star at
    a quadratic reward's peak)."""
    if reward is None:
        return
    direction, center = getattr(reward, 'direction', None), getattr(reward, 'center', None)
    if direction is not None:
        d = direction.detach().double().cpu().numpy() @ plane
        if not np.linalg.norm(d) > 0:
            return
        side = box[1] - box[0]
        d = d / np.linalg.norm(d) * 0.12 * side
        middle = np.array([box[0] + 0.12 * side, box[3] - 0.14 * side])
        ax.annotate('', xy=middle + d / 2, xytext=middle - d / 2,
                    arrowprops=dict(arrowstyle='->', color='k', lw=1.4))
        ax.text(middle[0], middle[1] + 0.09 * side, 'reward', fontsize=7, ha='center',
                va='bottom')
    elif center is not None:
        c = center.detach().double().cpu().numpy() @ plane
        ax.plot(c[0], c[1], marker='*', ms=10, color='k', ls='', label='reward peak')


def plot_samples(samples: dict[str, tuple[Tensor, Tensor]], teacher: GaussianMixtureTeacher,
                 path: str, title: str | None = None, *,
                 tilted: GaussianMixtureTeacher | None = None, beta: float | None = None,
                 metrics: Mapping[str, Mapping[str, float]] | None = None,
                 reward: torch.nn.Module | None = None) -> list[dict]:
    """One panel per model: up to 2000 samples coloured by class over a target's contours.

    Contours are the log-density (levels 1, 2, 4, 6, 9 nats below its maximum), averaged over
    the classes present, of the teacher on the ``'teacher'`` panel and of ``tilted`` (the exact
    tilted teacher at ``beta``, when given) on every other, each panel saying which. Each panel
    has its own axes box (:func:`_extent`), its metrics (``metrics[name]``) in its title and,
    with a ``reward``, its direction. For ``d > 2`` the samples are projected on the plane of
    :func:`view_plane` (the principal directions of the teacher's means) and contours skipped
    (a projected density is not the target's).

    Returns:
        Per panel: ``dict(name, box (x0, x1, y0, y1), contours (what they show, or None),
        title)``.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = list(samples)
    plane = view_plane(teacher)
    data = [(samples[n][0].detach().cpu().double().numpy() @ plane,
             samples[n][1].detach().cpu().long().numpy()) for n in names]
    classes = sorted({int(k) for _, c in data for k in np.unique(c)})
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 4.1 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    panels = []
    for ax, name, (x, c) in zip(axes.ravel(), names, data, strict=False):
        target, kind = ((tilted, f'tilted teacher, beta={beta:g}')
                        if tilted is not None and name != 'teacher' else (teacher, 'teacher'))
        box = _square(_extent(target, [x], plane))
        if target.dim == 2:
            xx, yy, log_p = _log_density(target, classes, box)
            levels = sorted(log_p.max() - np.array([9.0, 6.0, 4.0, 2.0, 1.0]))
            ax.contour(xx, yy, log_p, levels=levels, colors='0.55', linewidths=0.7,
                       linestyles='solid')
            ax.text(0.02, 0.02, f'contours: {kind}', transform=ax.transAxes, fontsize=6.5,
                    color='0.35', va='bottom')
        idx = rng.permutation(len(x))[:MAX_POINTS]  # random order: no class drawn on top
        ax.scatter(x[idx, 0], x[idx, 1], s=2, alpha=0.6, c=[f'C{k % 10}' for k in c[idx]])
        inside = ((x[:, 0] >= box[0]) & (x[:, 0] <= box[1]) & (x[:, 1] >= box[2])
                  & (x[:, 1] <= box[3]))
        _reward_marker(ax, reward, box, plane)
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect('equal')
        xlabel, ylabel = ('x[0]', 'x[1]') if target.dim == 2 else ('principal 1', 'principal 2')
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        text = panel_title(name, (metrics or {}).get(name), 1 - inside.mean())
        ax.set_title(text, fontsize=8.5)
        panels.append(dict(name=name, box=box, contours=kind if target.dim == 2 else None,
                           title=text))
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
    return panels
