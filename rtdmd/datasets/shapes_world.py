"""The shapes world: flat coloured circles, squares and triangles on a light-grey background.

A scene is a list of :class:`ShapeObject` (shape, colour, integer bounding box); :func:`render`
draws it exactly: every pixel is ``alpha * colour + (1 - alpha) * background`` rounded to uint8,
``alpha`` being the object's coverage of the pixel measured on a ``supersample x supersample``
grid of sub-pixel centres (light anti-aliasing, no noise, no texture). A pixel fully inside an
object therefore has exactly its palette colour, and a pixel outside every bounding box is
exactly the background.

Geometry (image side ``S``, 32 by default):

- bounding boxes are squares of side 7-12 px with integer corners, at least :data:`MARGIN` px
  from the border and at least :data:`MIN_GAP` px apart (so objects never overlap nor share a
  pixel, and every object is its own connected component);
- ``circle``: the disc inscribed in the box; ``square``: the box; ``triangle``: upright isosceles,
  apex at the middle of the box's top edge, base on its bottom edge;
- an object's centre is its box's centre.

Scenes are drawn by :func:`sample_scene` from a list of :class:`ObjectSpec` (shape, colour or
``None`` for "any colour") and an optional relation of the first object to the second, by
rejection: a relation holds when the first centre is at least :data:`RELATION_MARGIN` px further
in that direction *and* GenEval's own rule (``relative_position``) agrees, so that scoring a
rendering with the GenEval rules always accepts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rtdmd.rewards.geneval_rules import RELATIONS, relative_position

#: The palette (RGB, uint8). Names are GenEval colour names.
PALETTE: dict[str, tuple[int, int, int]] = {
    'red': (220, 40, 40),
    'green': (40, 170, 60),
    'blue': (40, 80, 220),
    'yellow': (230, 200, 40),
    'purple': (150, 60, 190),
}
COLOR_NAMES: tuple[str, ...] = tuple(PALETTE)
BACKGROUND: tuple[int, int, int] = (235, 235, 235)
SHAPES: tuple[str, ...] = ('circle', 'square', 'triangle')
IMAGE_SIZE = 32
MIN_SIZE, MAX_SIZE = 7, 12
MARGIN = 1
MIN_GAP = 2
SUPERSAMPLE = 4
RELATION_MARGIN = 4.0
MAX_OBJECTS = 4
_MAX_TRIES = 2000


@dataclass(frozen=True)
class ObjectSpec:
    """What a prompt asks of one object: its shape and its colour (``None``: any colour)."""

    shape: str
    color: str | None = None


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object: shape, colour and its box ``[x0, x0 + size) x [y0, y0 + size)``."""

    shape: str
    color: str
    x0: int
    y0: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)``, ``x1``/``y1`` exclusive (GenEval's box convention)."""
        return (self.x0, self.y0, self.x0 + self.size, self.y0 + self.size)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.size / 2, self.y0 + self.size / 2)


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points ``(u, v)`` in box units (``[0, 1]^2``, ``v`` downwards)."""
    if shape == 'circle':
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == 'square':
        return np.ones_like(u, dtype=bool)
    if shape == 'triangle':
        return np.abs(u - 0.5) <= v / 2
    raise ValueError(f'unknown shape {shape!r}; expected one of {SHAPES}')


def coverage(obj: ShapeObject, supersample: int = SUPERSAMPLE) -> np.ndarray:
    """``(size, size)`` float coverage of the object's box pixels, multiples of 1/supersample^2."""
    n = obj.size * supersample
    centers = (np.arange(n) + 0.5) / n
    v, u = np.meshgrid(centers, centers, indexing='ij')
    inside = _inside(obj.shape, u, v).astype(np.float64)
    return inside.reshape(obj.size, supersample, obj.size, supersample).mean(axis=(1, 3))


def check_object(obj: ShapeObject, image_size: int = IMAGE_SIZE) -> None:
    """Raise ``ValueError`` naming the violated rule of the world (shape, colour, size, margin)."""
    if obj.shape not in SHAPES:
        raise ValueError(f'unknown shape {obj.shape!r}; expected one of {SHAPES}')
    if obj.color not in PALETTE:
        raise ValueError(f'unknown colour {obj.color!r}; expected one of {COLOR_NAMES}')
    if not MIN_SIZE <= obj.size <= MAX_SIZE:
        raise ValueError(f'object size {obj.size} outside [{MIN_SIZE}, {MAX_SIZE}]')
    x0, y0, x1, y1 = obj.box
    if min(x0, y0) < MARGIN or max(x1, y1) > image_size - MARGIN:
        raise ValueError(f'box {obj.box} closer than {MARGIN} px to the border of a '
                         f'{image_size} px image')


def boxes_apart(a: Sequence[float], b: Sequence[float], gap: float = MIN_GAP) -> bool:
    """Whether boxes ``(x0, y0, x1, y1)`` are separated by at least ``gap`` px on some axis."""
    return a[0] >= b[2] + gap or b[0] >= a[2] + gap or a[1] >= b[3] + gap or b[1] >= a[3] + gap


def render(objects: Sequence[ShapeObject], image_size: int = IMAGE_SIZE,
           supersample: int = SUPERSAMPLE) -> np.ndarray:
    """``(S, S, 3)`` uint8 image of a scene (objects must be valid and apart)."""
    image = np.empty((image_size, image_size, 3), dtype=np.float64)
    image[:] = BACKGROUND
    for i, obj in enumerate(objects):
        check_object(obj, image_size)
        for other in objects[:i]:
            if not boxes_apart(obj.box, other.box):
                raise ValueError(f'objects {other} and {obj} are closer than {MIN_GAP} px')
        alpha = coverage(obj, supersample)[..., None]
        x0, y0, x1, y1 = obj.box
        color = np.asarray(PALETTE[obj.color], dtype=np.float64)
        image[y0:y1, x0:x1] = alpha * color + (1 - alpha) * image[y0:y1, x0:x1]
    return np.round(image).astype(np.uint8)


def _trimmed_top(box: Sequence[float]) -> tuple[float, ...]:
    return (box[0], box[1] + 1, box[2], box[3])


def relation_holds(a: ShapeObject, b: ShapeObject, relation: str,
                   margin: float = RELATION_MARGIN) -> bool:
    """``a`` is ``relation`` ``b``: its centre is ``margin`` px further that way, and GenEval's
    ``relative_position`` agrees on the boxes (also with a triangle's apex row trimmed, the
    one row a detector may not see)."""
    (ax, ay), (bx, by) = a.center, b.center
    offset = {'left of': bx - ax, 'right of': ax - bx, 'above': by - ay, 'below': ay - by}
    if relation not in offset:
        raise ValueError(f'unknown relation {relation!r}; expected one of {RELATIONS}')
    if offset[relation] < margin:
        return False
    boxes_a = [a.box, _trimmed_top(a.box)] if a.shape == 'triangle' else [a.box]
    boxes_b = [b.box, _trimmed_top(b.box)] if b.shape == 'triangle' else [b.box]
    return all(relation in relative_position(box_a, box_b)
               for box_a in boxes_a for box_b in boxes_b)


def sample_scene(specs: Sequence[ObjectSpec], rng: np.random.Generator,
                 relation: str | None = None, image_size: int = IMAGE_SIZE) -> list[ShapeObject]:
    """Objects for ``specs`` (``relation``: object 0 relative to object 1), drawn by rejection.

    Sizes, colours left free and positions are uniform; a scene that cannot be completed is
    redrawn from scratch.
    """
    if not 1 <= len(specs) <= MAX_OBJECTS:
        raise ValueError(f'a scene holds 1 to {MAX_OBJECTS} objects, got {len(specs)}')
    if relation is not None and len(specs) != 2:
        raise ValueError('a relation needs exactly two objects')
    for _ in range(_MAX_TRIES):
        objects: list[ShapeObject] = []
        for spec in specs:
            obj = _place(spec, objects, rng, image_size)
            if obj is None:
                break
            objects.append(obj)
        if len(objects) == len(specs) and (
                relation is None or relation_holds(objects[0], objects[1], relation)):
            return objects
    raise RuntimeError(f'could not place {specs} (relation {relation}) in {_MAX_TRIES} tries')


def _place(spec: ObjectSpec, placed: Sequence[ShapeObject], rng: np.random.Generator,
           image_size: int, tries: int = 50) -> ShapeObject | None:
    color = spec.color if spec.color is not None else COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    high = image_size - MARGIN - size
    for _ in range(tries):
        x0, y0 = (int(v) for v in rng.integers(MARGIN, high + 1, size=2))
        obj = ShapeObject(spec.shape, color, x0, y0, size)
        if all(boxes_apart(obj.box, other.box) for other in placed):
            return obj
    return None


__all__ = ['BACKGROUND', 'COLOR_NAMES', 'IMAGE_SIZE', 'MAX_SIZE', 'MIN_GAP', 'MIN_SIZE', 'PALETTE',
           'SHAPES', 'ObjectSpec', 'ShapeObject', 'boxes_apart', 'check_object', 'coverage',
           'relation_holds', 'render', 'sample_scene']
