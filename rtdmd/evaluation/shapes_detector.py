"""A programmatic detector of the shapes world and its GenEval-style scoring.

Detection of an image ``(3, H, W)`` in [0, 1], in four steps:

1. **palette segmentation**: a pixel ``p`` is explained, for each palette colour ``c``, as the
   blend ``alpha c + (1 - alpha) bg`` closest to it (``alpha`` = projection of ``p - bg`` on
   ``c - bg``, clipped to [0, 1]; 0-255 units). The colour with the smallest residual wins and
   the pixel is foreground when its ``alpha >= 0.5``. Blending with the background is what
   anti-aliasing (and a decoder's blur) does, so edge pixels keep their object's colour: the
   nearest palette entry would call a half-covered blue pixel purple.
2. **objects**: 8-connected components of each colour's foreground (``scipy.ndimage.label``);
   components under ``min_area`` pixels are specks, not objects.
3. **shape**, from the component's mask in its bounding box: fill ratio (area / box area; a
   square fills 1, a disc ~0.79, an upright triangle ~0.5), corner count (which box corners the
   mask covers: 4, 0, and the 2 bottom ones) and the bottom-to-top mass ratio (1, 1, ~3). A
   square needs fill >= 0.9 and 3 corners, a triangle a ratio >= 1.8, fill < 0.85 and no top
   corner (a decoder's blur may eat its thin base corners), a circle fill in [0.65, 0.9), a
   ratio in [0.6, 1.6] and at most one corner. A component matching no shape, or whose box is
   not roughly square or not of an object's size, gets no class and is not counted.
4. **scoring**: the detections, as :class:`~rtdmd.rewards.geneval_rules.Detection` lists with
   the colour set, go through GenEval's rules (``geneval_accuracy``; Flow-GRPO's
   ``geneval_partial`` and strict accuracy), the shapes being the classes.

:func:`clean_image` decides whether an image is "clean": every pixel is explained by the
palette, the background away from objects is pure, there are no specks and every object is one
colour. A reward hack that paints colour patches, noise or mixed blobs fails it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from rtdmd.datasets.shapes_world import BACKGROUND, COLOR_NAMES, PALETTE, SHAPES
from rtdmd.rewards.geneval_rules import (
    Detection,
    Detections,
    geneval_accuracy,
    geneval_partial,
    validate_metadata,
)

MIN_AREA = 12
MIN_SIDE, MAX_SIDE = 5, 16
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Segmentation:
    """Per-pixel palette segmentation of one image (``(H, W)`` numpy arrays).

    Attributes:
        labels: 0 background, ``k`` = ``COLOR_NAMES[k - 1]`` foreground.
        alpha: blend weight of the winning colour.
        residual: distance (0-255 units) of the pixel to the winning blend line.
        image: the ``(H, W, 3)`` image in 0-255 float.
    """

    labels: np.ndarray
    alpha: np.ndarray
    residual: np.ndarray
    image: np.ndarray


def segment(images: Tensor) -> list[Segmentation]:
    """Palette segmentation of ``(B, 3, H, W)`` images in [0, 1] (see module docstring)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(images.shape)}')
    pixels = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().double() * 255
    bg = torch.tensor(BACKGROUND, dtype=torch.float64)
    dirs = torch.tensor([PALETTE[c] for c in COLOR_NAMES], dtype=torch.float64) - bg  # (K, 3)
    d = pixels - bg  # (B, H, W, 3)
    alpha = ((d @ dirs.T) / dirs.pow(2).sum(1)).clamp(0, 1)  # (B, H, W, K)
    residual = (d[..., None, :] - alpha[..., None] * dirs).norm(dim=-1)  # (B, H, W, K)
    best = residual.argmin(-1)
    best_alpha = alpha.gather(-1, best[..., None])[..., 0]
    labels = torch.where(best_alpha >= 0.5, best + 1, 0)
    best_res = residual.gather(-1, best[..., None])[..., 0]
    return [Segmentation(labels[i].numpy(), best_alpha[i].numpy(), best_res[i].numpy(),
                         pixels[i].numpy()) for i in range(images.shape[0])]


def classify_shape(mask: np.ndarray) -> str | None:
    """The shape of a component's ``(h, w)`` mask cropped to its box, or ``None``."""
    h, w = mask.shape
    if not (MIN_SIDE <= max(h, w) <= MAX_SIDE and 0.7 <= h / w <= 1.4):
        return None
    fill = mask.mean()
    top, bottom = mask[:h // 2].sum(), mask[(h + 1) // 2:].sum()
    ratio = bottom / max(top, 1)
    top_corners = int(mask[0, 0]) + int(mask[0, -1])
    bottom_corners = int(mask[-1, 0]) + int(mask[-1, -1])
    if fill >= 0.9 and top_corners + bottom_corners >= 3:
        return 'square'
    if fill < 0.85 and ratio >= 1.8 and top_corners == 0:
        return 'triangle'
    if 0.65 <= fill < 0.9 and 0.6 <= ratio <= 1.6 and top_corners + bottom_corners <= 1:
        return 'circle'
    return None


@dataclass
class ShapeDetection:
    """One component: its shape (``None``: none), colour, box, area and mask (image size)."""

    shape: str | None
    color: str
    box: tuple[int, int, int, int]
    area: int
    mask: np.ndarray


def components(seg: Segmentation, min_area: int = MIN_AREA
               ) -> tuple[list[ShapeDetection], int]:
    """Objects of one segmentation, and the number of specks (components under ``min_area``)."""
    found, specks = [], 0
    for k, color in enumerate(COLOR_NAMES, start=1):
        comp, n = ndimage.label(seg.labels == k, structure=_EIGHT)
        for index, sl in enumerate(ndimage.find_objects(comp), start=1):
            mask = comp == index
            area = int(mask.sum())
            if area < min_area:
                specks += 1
                continue
            ys, xs = sl
            box = (xs.start, ys.start, xs.stop, ys.stop)
            found.append(ShapeDetection(classify_shape(mask[sl]), color, box, area, mask))
    found.sort(key=lambda d: (-d.area, d.box))
    return found, specks


def to_geneval(objects: Sequence[ShapeDetection]) -> Detections:
    """GenEval detections ``{shape: [Detection]}`` (score 1, colour set) of recognised objects."""
    out: Detections = {}
    for obj in objects:
        if obj.shape is not None:
            out.setdefault(obj.shape, []).append(
                Detection(tuple(float(v) for v in obj.box), 1.0, torch.from_numpy(obj.mask),
                          obj.color))
    return out


def detect(images: Tensor, min_area: int = MIN_AREA) -> list[list[ShapeDetection]]:
    """Objects of each image ``(B, 3, H, W)`` in [0, 1] (largest first)."""
    return [components(seg, min_area)[0] for seg in segment(images)]


def score_metadata(objects: Sequence[ShapeDetection], metadata: Mapping[str, Any],
                   index: int = 0) -> tuple[float, bool, bool]:
    """``(partial score, GenEval accuracy, strict accuracy)`` of one image's objects."""
    validate_metadata(metadata, SHAPES, index)
    detections = to_geneval(objects)
    partial, strict = geneval_partial(detections, metadata)
    return partial, geneval_accuracy(detections, metadata), strict


def clean_image(seg: Segmentation, max_residual: float = 40.0, max_background: float = 24.0,
                min_purity: float = 0.9, min_area: int = MIN_AREA) -> bool:
    """Whether an image is clean (see module docstring).

    Args:
        seg: the image's segmentation.
        max_residual: largest distance of any pixel to its palette blend line (0-255).
        max_background: largest channel deviation from the background of pixels more than one
            pixel away from every foreground pixel (24 levels: a trained decoder's background
            is off by up to ~18; a tinted or noisy background by far more).
        min_purity: smallest share of an object's majority colour among its pixels (objects:
            8-connected components of the foreground, whatever the colour).
        min_area: components smaller than this are specks, and a speck makes an image unclean.
    """
    if seg.residual.max() > max_residual:
        return False
    foreground = seg.labels > 0
    near = ndimage.binary_dilation(foreground, structure=_EIGHT)
    deviation = np.abs(seg.image - np.asarray(BACKGROUND, dtype=np.float64)).max(-1)
    if (deviation[~near] > max_background).any():
        return False
    comp, n = ndimage.label(foreground, structure=_EIGHT)
    for index in range(1, n + 1):
        labels = seg.labels[comp == index]
        if labels.size < min_area:
            return False
        if np.bincount(labels).max() < min_purity * labels.size:
            return False
    return True


def clean_fraction(images: Tensor) -> float:
    """Share of clean images in a batch ``(B, 3, H, W)`` in [0, 1]."""
    segs = segment(images)
    return sum(clean_image(s) for s in segs) / max(len(segs), 1)


__all__ = ['MIN_AREA', 'Segmentation', 'ShapeDetection', 'classify_shape', 'clean_fraction',
           'clean_image', 'components', 'detect', 'score_metadata', 'segment', 'to_geneval']
