"""The shapes world: renderer invariants, scene sampling, prompt grammar, split, datasets."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from rtdmd.datasets.shapes import ShapesImageDataset, ShapesPromptDataset
from rtdmd.datasets.shapes_prompts import (
    HELD_OUT_BINDINGS,
    HELD_OUT_LAYOUTS,
    all_prompts,
    scene_for,
    scene_specs,
    shapes_prompts,
)
from rtdmd.datasets.shapes_world import (
    BACKGROUND,
    COLOR_NAMES,
    MARGIN,
    MAX_SIZE,
    MIN_GAP,
    MIN_SIZE,
    PALETTE,
    SHAPES,
    ObjectSpec,
    ShapeObject,
    boxes_apart,
    coverage,
    relation_holds,
    render,
    sample_scene,
)
from rtdmd.rewards.geneval_rules import TAGS, relative_position, validate_metadata


def _scenes(n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    items = all_prompts()
    for _ in range(n):
        item = items[rng.integers(len(items))]
        yield item, scene_for(item['metadata'], rng)


def test_every_pixel_is_a_blend_of_its_object_colour_and_the_background() -> None:
    bg = np.asarray(BACKGROUND, dtype=np.float64)
    for _, scene in _scenes(200):
        image = render(scene).astype(np.float64)
        expected = np.broadcast_to(bg, image.shape).copy()
        covered = np.zeros(image.shape[:2], dtype=bool)
        for obj in scene:
            x0, y0, x1, y1 = obj.box
            alpha = coverage(obj)[..., None]
            expected[y0:y1, x0:x1] = alpha * np.asarray(PALETTE[obj.color]) + (1 - alpha) * bg
            covered[y0:y1, x0:x1] |= coverage(obj) > 0
            full = coverage(obj) == 1
            assert (image[y0:y1, x0:x1][full] == PALETTE[obj.color]).all()  # exact palette
        assert np.abs(image - np.round(expected)).max() == 0
        assert (image[~covered] == bg).all()  # untouched pixels are exactly the background


def test_objects_keep_size_margin_and_gap() -> None:
    for _, scene in _scenes(300):
        assert 1 <= len(scene) <= 4
        for obj in scene:
            assert MIN_SIZE <= obj.size <= MAX_SIZE
            x0, y0, x1, y1 = obj.box
            assert min(x0, y0) >= MARGIN and max(x1, y1) <= 32 - MARGIN
            # The visible extent (coverage > 0) is exactly the box.
            ys, xs = np.nonzero(coverage(obj) > 0)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (0, 0, obj.size, obj.size)
        for a, b in itertools.combinations(scene, 2):
            assert boxes_apart(a.box, b.box, MIN_GAP)


def test_shape_coverage_matches_the_geometry() -> None:
    fills = {s: coverage(ShapeObject(s, 'red', 1, 1, 12), supersample=16).mean() for s in SHAPES}
    assert fills['square'] == 1.0
    assert fills['circle'] == pytest.approx(np.pi / 4, abs=0.01)
    assert fills['triangle'] == pytest.approx(0.5, abs=0.01)
    tri = coverage(ShapeObject('triangle', 'red', 1, 1, 12))
    assert tri[:6].sum() < tri[6:].sum() / 2  # upright: the base is at the bottom


def test_render_rejects_what_the_world_forbids() -> None:
    ok = ShapeObject('circle', 'red', 2, 2, 8)
    with pytest.raises(ValueError, match='size'):
        render([ShapeObject('circle', 'red', 2, 2, 13)])
    with pytest.raises(ValueError, match='border'):
        render([ShapeObject('circle', 'red', 0, 2, 8)])
    with pytest.raises(ValueError, match='closer'):
        render([ok, ShapeObject('square', 'blue', 11, 2, 8)])
    with pytest.raises(ValueError, match='colour'):
        render([ShapeObject('circle', 'orange', 2, 2, 8)])


@pytest.mark.parametrize('relation', ['left of', 'right of', 'above', 'below'])
def test_position_scenes_satisfy_the_margin_and_geneval(relation: str) -> None:
    rng = np.random.default_rng(1)
    offsets = {'left of': (-1, 0), 'right of': (1, 0), 'above': (0, -1), 'below': (0, 1)}
    for _ in range(40):
        a, b = sample_scene([ObjectSpec('triangle', 'red'), ObjectSpec('circle', 'blue')], rng,
                            relation)
        d = np.subtract(a.center, b.center) @ np.asarray(offsets[relation])
        assert d >= 4 and relation in relative_position(a.box, b.box)
        assert relation_holds(a, b, relation)


def test_grammar_counts_tags_and_metadata() -> None:
    items = all_prompts()
    tags = Counter(it['metadata']['tag'] for it in items)
    assert tags == {'single_object': 3, 'colors': 15, 'two_object': 6, 'color_attr': 150,
                    'counting': 45, 'position': 600}
    assert len({it['prompt'] for it in items}) == len(items)
    for i, it in enumerate(items):
        validate_metadata(it['metadata'], SHAPES, i)
    pos = next(it for it in items if it['prompt'] == 'a photo of a red circle left of a blue '
                                                     'square')
    assert pos['metadata']['include'] == [
        {'class': 'square', 'count': 1, 'color': 'blue'},
        {'class': 'circle', 'count': 1, 'color': 'red', 'position': ['left of', 0]}]
    count = next(it for it in items if it['prompt'] == 'a photo of three green triangles')
    assert count['metadata']['exclude'] == [{'class': 'triangle', 'count': 4}]


def test_held_out_split_is_fixed_and_disjoint() -> None:
    train = shapes_prompts('train')
    held = shapes_prompts('heldout')
    assert len(train) == 680 and len(held) == 142
    shared = {it['prompt'] for it in train} & {it['prompt'] for it in held}
    assert shared == {f'a photo of a {s}' for s in SHAPES}  # single_object: in both
    assert Counter(it['metadata']['tag'] for it in held) == {
        'single_object': 3, 'colors': 5, 'two_object': 3, 'color_attr': 16, 'counting': 15,
        'position': 100}
    for it in train:
        meta = it['metadata']
        reqs = meta['include']
        if meta['tag'] in ('colors', 'counting'):
            assert (reqs[0]['color'], reqs[0]['class']) not in HELD_OUT_BINDINGS
        if meta['tag'] == 'position':
            layout = (reqs[1]['class'], reqs[1]['position'][0], reqs[0]['class'])
            assert layout not in HELD_OUT_LAYOUTS
    # Every held-out binding still appears in training, in other prompts.
    seen = {(r['color'], r['class']) for it in train for r in it['metadata']['include']
            if 'color' in r}
    assert HELD_OUT_BINDINGS <= seen


def test_scene_specs_put_the_related_object_first() -> None:
    item = next(it for it in all_prompts() if it['metadata']['tag'] == 'position')
    specs, relation = scene_specs(item['metadata'])
    subject = item['metadata']['include'][1]
    assert specs[0] == ObjectSpec(subject['class'], subject['color'])
    assert relation == subject['position'][0]
    specs, relation = scene_specs({'tag': 'counting', 'include': [
        {'class': 'square', 'count': 3, 'color': 'red'}]})
    assert specs == [ObjectSpec('square', 'red')] * 3 and relation is None


def test_image_dataset_is_deterministic_and_follows_tag_weights() -> None:
    ds = ShapesImageDataset(400, seed=3, tag_weights=dict(counting=1, colors=3))
    again = ShapesImageDataset(400, seed=3, tag_weights=dict(counting=1, colors=3))
    item = ds[17]
    assert item['image'].shape == (3, 32, 32) and item['image'].dtype == torch.float32
    assert torch.equal(item['image'], again[17]['image']) and item['prompt'] == again[17]['prompt']
    tags = Counter(ds[i]['metadata']['tag'] for i in range(400))
    assert set(tags) == {'counting', 'colors'} and 2.2 < tags['colors'] / tags['counting'] < 4.5
    train = {it['prompt'] for it in shapes_prompts('train')}
    assert all(ds[i]['prompt'] in train for i in range(50))
    with pytest.raises(ValueError, match='tag_weights'):
        ShapesImageDataset(10, tag_weights=dict(nonsense=1))


def test_prompt_dataset_balances_tags() -> None:
    ds = ShapesPromptDataset('heldout', per_tag=7)
    assert len(ds) == 7 * len(TAGS)
    assert Counter(ds[i]['metadata']['tag'] for i in range(len(ds))) == dict.fromkeys(TAGS, 7)
    assert set(ds[0]) == {'prompt', 'metadata', 'index'}
    full = ShapesPromptDataset('train', tags=['counting'])
    assert len(full) == 30 and {it['metadata']['tag'] for it in full.items} == {'counting'}
    assert COLOR_NAMES == ('red', 'green', 'blue', 'yellow', 'purple')
