"""The shapes world's prompt grammar, its GenEval metadata and the fixed held-out split.

Four templates cover GenEval's six tags; ``{colour}`` is an optional slot in the first two, and
leaving it empty gives the tag that does not check colour (as GenEval's ``single_object`` and
``two_object`` prompts name no colour):

==========================================================  ===============  =================
template                                                    colour slot      GenEval tag
==========================================================  ===============  =================
``a photo of a [{colour} ]{shape}``                         empty / filled   single_object /
                                                                             colors
``a photo of a [{c1} ]{s1} and a [{c2} ]{s2}`` (s1 != s2)   empty / filled   two_object /
                                                                             color_attr
``a photo of {two|three|four} {colour} {shape}s``           filled           counting
``a photo of a {c1} {s1} {left of|right of|above|below}     filled           position
a {c2} {s2}`` (s1 != s2)
==========================================================  ===============  =================

The metadata follow GenEval's ``evaluation_metadata.jsonl`` (``tag``, ``include`` with
``class`` / ``count`` / ``color`` / ``position``, ``exclude``), so
:mod:`rtdmd.rewards.geneval_rules` scores them; the shapes are the classes. As in GenEval the
two shapes of a two-object or position prompt differ (the rules count a class once), a counting
prompt excludes ``n + 1`` objects, and a position prompt lists the reference object first:
``include = [{s2, c2}, {s1, c1, position: [relation, 0]}]``. A colour named in a counting or
position prompt is checked too. A scene holds exactly the objects its prompt names (1 to 4); a
colour left free is drawn uniformly.

Held-out split (fixed; ``split='heldout'`` is the benchmark, ``split='train'`` the rest):

- five colour-shape bindings :data:`HELD_OUT_BINDINGS` (one per colour: red circle, green
  square, blue triangle, yellow circle, purple square) never appear in training as a
  ``colors`` or ``counting`` prompt, nor as a ``color_attr`` prompt whose two objects are both
  held-out bindings (each binding is still seen in other prompts);
- four layouts :data:`HELD_OUT_LAYOUTS` (a circle left of a square and its converse, a triangle
  above a square and its converse) never appear in training as ``position`` prompts, in any
  colours;
- ``two_object`` prompts naming the shapes against the order of :data:`SHAPES` ("a square and a
  circle") are held out, their forward order is trained;
- the three ``single_object`` prompts are in both splits (holding one out would remove a shape
  name from training; their colour is free, so no single image is memorised).

That is 142 held-out prompts (3 / 5 / 3 / 16 / 15 / 100 for single_object / colors /
two_object / color_attr / counting / position) and 680 training prompts.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rtdmd.rewards.geneval_rules import RELATIONS, TAGS

from .shapes_world import COLOR_NAMES, IMAGE_SIZE, SHAPES, ObjectSpec, ShapeObject, sample_scene

NUMBERS = {2: 'two', 3: 'three', 4: 'four'}
HELD_OUT_BINDINGS: frozenset[tuple[str, str]] = frozenset({
    ('red', 'circle'), ('green', 'square'), ('blue', 'triangle'), ('yellow', 'circle'),
    ('purple', 'square')})
HELD_OUT_LAYOUTS: frozenset[tuple[str, str, str]] = frozenset({
    ('circle', 'left of', 'square'), ('square', 'right of', 'circle'),
    ('triangle', 'above', 'square'), ('square', 'below', 'triangle')})
SPLITS = ('train', 'heldout', 'all')

Item = dict[str, Any]


def _article(color: str | None, shape: str) -> str:
    return f'a {color} {shape}' if color else f'a {shape}'


def _req(shape: str, count: int = 1, color: str | None = None) -> dict[str, Any]:
    req: dict[str, Any] = {'class': shape, 'count': count}
    if color:
        req['color'] = color
    return req


def _item(prompt: str, tag: str, include: list[dict], exclude: list[dict] | None = None,
          held_out: bool = False) -> Item:
    metadata: dict[str, Any] = {'tag': tag, 'include': include}
    if exclude:
        metadata['exclude'] = exclude
    return {'prompt': prompt, 'metadata': metadata, 'held_out': held_out}


def _single_and_two() -> list[Item]:
    items = [_item(f'a photo of {_article(None, s)}', 'single_object', [_req(s)])
             for s in SHAPES]
    items += [_item(f'a photo of {_article(c, s)}', 'colors', [_req(s, color=c)],
                    held_out=(c, s) in HELD_OUT_BINDINGS)
              for c in COLOR_NAMES for s in SHAPES]
    for s1, s2 in itertools.permutations(SHAPES, 2):
        items.append(_item(f'a photo of a {s1} and a {s2}', 'two_object', [_req(s1), _req(s2)],
                           held_out=SHAPES.index(s1) > SHAPES.index(s2)))
    for (s1, s2), c1, c2 in itertools.product(itertools.permutations(SHAPES, 2), COLOR_NAMES,
                                               COLOR_NAMES):
        held = (c1, s1) in HELD_OUT_BINDINGS and (c2, s2) in HELD_OUT_BINDINGS
        items.append(_item(f'a photo of {_article(c1, s1)} and {_article(c2, s2)}', 'color_attr',
                           [_req(s1, color=c1), _req(s2, color=c2)], held_out=held))
    return items


def _counting_and_position() -> list[Item]:
    items = [_item(f'a photo of {NUMBERS[n]} {c} {s}s', 'counting', [_req(s, n, c)],
                   exclude=[_req(s, n + 1)], held_out=(c, s) in HELD_OUT_BINDINGS)
             for n, c, s in itertools.product(NUMBERS, COLOR_NAMES, SHAPES)]
    for (s1, s2), rel, c1, c2 in itertools.product(itertools.permutations(SHAPES, 2), RELATIONS,
                                                    COLOR_NAMES, COLOR_NAMES):
        include = [_req(s2, color=c2), {**_req(s1, color=c1), 'position': [rel, 0]}]
        items.append(_item(f'a photo of {_article(c1, s1)} {rel} {_article(c2, s2)}', 'position',
                           include, held_out=(s1, rel, s2) in HELD_OUT_LAYOUTS))
    return items


def all_prompts() -> list[Item]:
    """Every prompt of the grammar, in a fixed order: ``{'prompt', 'metadata', 'held_out'}``."""
    return _single_and_two() + _counting_and_position()


def shapes_prompts(split: str = 'train', tags: Sequence[str] | None = None) -> list[Item]:
    """The prompts of ``split`` (``'train'``, ``'heldout'``, ``'all'``), optionally of ``tags``.

    ``single_object`` prompts belong to both splits (see the module docstring).
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    unknown = set(tags or ()) - set(TAGS)
    if unknown:
        raise ValueError(f'unknown tags {sorted(unknown)}; GenEval tags are {TAGS}')
    out = []
    for item in all_prompts():
        tag = item['metadata']['tag']
        shared = tag == 'single_object'
        if split == 'train' and item['held_out'] and not shared:
            continue
        if split == 'heldout' and not (item['held_out'] or shared):
            continue
        if tags is None or tag in tags:
            out.append(item)
    return out


def scene_specs(metadata: Mapping[str, Any]) -> tuple[list[ObjectSpec], str | None]:
    """The objects (in prompt order) and the relation a prompt's metadata ask for.

    A position prompt's metadata lists the reference object first; the specs list the object
    that carries the relation first, as :func:`~rtdmd.datasets.shapes_world.sample_scene`
    expects.
    """
    include = list(metadata['include'])
    relation = None
    if any('position' in req for req in include):
        target, subject = include
        relation = subject['position'][0]
        include = [subject, target]
    specs = [ObjectSpec(req['class'], req.get('color')) for req in include
             for _ in range(req['count'])]
    return specs, relation


def scene_for(metadata: Mapping[str, Any], rng: np.random.Generator,
              image_size: int = IMAGE_SIZE) -> list[ShapeObject]:
    """A random scene that satisfies a prompt's metadata exactly."""
    specs, relation = scene_specs(metadata)
    return sample_scene(specs, rng, relation, image_size)


__all__ = ['HELD_OUT_BINDINGS', 'HELD_OUT_LAYOUTS', 'NUMBERS', 'SPLITS', 'all_prompts',
           'scene_for', 'scene_specs', 'shapes_prompts']
