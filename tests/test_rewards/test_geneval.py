"""GenEval: the evaluation functions on hand-built detections, and the scorer on tiny models.

The pure functions are checked against hand-computed results. The scorer runs a tiny
random-weight ``Mask2FormerForUniversalSegmentation`` (tiny Swin backbone, 80 labels named as
GenEval's classes) and a tiny ``CLIPModel``, both saved with ``save_pretrained`` and read back
through the production path. The detector's class head is biased towards ``dog`` so that random
weights produce detections around the thresholds.
"""

from __future__ import annotations

import math
import os.path as osp
import re

import numpy as np
import pytest
import torch

from rtdmd.registry import REWARDS
from rtdmd.rewards import geneval as G
from rtdmd.rewards import geneval_rules as R
from rtdmd.rewards.geneval_rules import Detection
from rtdmd.rewards.weights import MissingRewardWeightsError
from rtdmd.testing.rewards import build_tiny_geneval_dirs

NAMES = R.load_class_names()
SIZE = 384  # the scorer's detector input in the tests (transformers' fixed post-processing grid)


def det(box: tuple[float, float, float, float], score: float = 0.95,
        color: str | None = None) -> Detection:
    return Detection(box=box, score=score, color=color)


def dogs(n: int) -> list[Detection]:
    """``n`` dogs side by side, best first."""
    return [det((20.0 * i, 0.0, 20.0 * i + 10, 10.0), 0.99 - 0.01 * i) for i in range(n)]


# ----------------------------------------------------------------------------- positions
@pytest.mark.parametrize('box_a, box_b, expected', [
    ((0, 0, 10, 10), (20, 0, 30, 10), {'left of'}),    # offset (-20, 0): dx = -18 / 20
    ((20, 0, 30, 10), (0, 0, 10, 10), {'right of'}),
    ((0, 0, 10, 10), (0, 20, 10, 30), {'above'}),
    ((0, 20, 10, 30), (0, 0, 10, 10), {'below'}),
    ((0, 0, 10, 10), (20, 20, 30, 30), {'left of', 'above'}),  # dx = dy = -18 / 28.28 = -0.64
    ((0, 5, 10, 15), (20, 0, 30, 10), {'left of'}),    # dy = 3 / 20.6 = 0.15: no vertical relation
    ((0, 0, 10, 10), (1.5, 0, 11.5, 10), set()),       # |offset| 1.5 < 0.1 * (10 + 10): no relation
    ((0, 0, 10, 10), (0, 0, 10, 10), set()),
])
def test_relative_position(box_a, box_b, expected) -> None:
    assert R.relative_position(box_a, box_b) == expected


def test_position_margin() -> None:
    """The 0.1 margin is what removes the relation of near-overlapping boxes."""
    a, b = (0, 0, 10, 10), (1.5, 0, 11.5, 10)
    assert R.relative_position(a, b, threshold=0.0) == {'left of'}
    # Offset 3 > margin 2: revised offset 1 of norm 3 -> dx = -1/3, above -0.5: still no relation.
    assert R.relative_position((0, 0, 10, 10), (3, 0, 13, 10)) == set()
    # Offset 5: revised 3 / 5 = 0.6 > 0.5.
    assert R.relative_position((0, 0, 10, 10), (5, 0, 15, 10)) == {'left of'}


# ----------------------------------------------------------------------------- counting / exclude
COUNT_2 = {'tag': 'counting', 'include': [{'class': 'dog', 'count': 2}],
           'exclude': [{'class': 'dog', 'count': 3}]}


@pytest.mark.parametrize('n, partial, accuracy, strict', [
    (0, 0.0, False, False),
    (1, 0.5, False, False),   # 1 - |2 - 1| / 2
    (2, 1.0, True, True),
    (3, 0.5, False, False),   # at least 2 found, but the exclude (>= 3) fails
])
def test_counting(n, partial, accuracy, strict) -> None:
    d = {'dog': dogs(n)} if n else {}
    assert R.geneval_partial(d, COUNT_2) == (pytest.approx(partial), strict)
    assert R.geneval_accuracy(d, COUNT_2) is accuracy


def test_over_counting_without_exclude() -> None:
    meta = {'tag': 'single_object', 'include': [{'class': 'dog', 'count': 1}]}
    d = {'dog': dogs(3)}
    assert R.geneval_accuracy(d, meta)   # GenEval: at least one dog
    assert R.geneval_partial(d, meta) == (pytest.approx(-1.0), False)   # 1 - 2 / 1, not clipped


def test_exclude_and_two_objects() -> None:
    meta = {'tag': 'two_object', 'include': [{'class': 'cat', 'count': 1},
                                             {'class': 'dog', 'count': 1}],
            'exclude': [{'class': 'bus', 'count': 1}]}
    d = {'cat': [det((0, 0, 5, 5))], 'dog': dogs(1)}
    assert R.geneval_accuracy(d, meta) and R.geneval_partial(d, meta) == (1.0, True)
    d['bus'] = [det((50, 50, 60, 60))]
    assert not R.geneval_accuracy(d, meta)
    assert R.geneval_partial(d, meta) == (1.0, False)   # the partial score ignores exclude
    del d['bus'], d['cat']
    assert R.geneval_partial(d, meta) == (pytest.approx(0.5), False)


# ----------------------------------------------------------------------------- colour
RED_CAR = {'tag': 'colors', 'include': [{'class': 'car', 'count': 1, 'color': 'red'}]}


def test_color_match_and_mismatch() -> None:
    assert R.geneval_partial({'car': [det((0, 0, 5, 5), color='red')]}, RED_CAR) == (1.0, True)
    assert R.geneval_accuracy({'car': [det((0, 0, 5, 5), color='red')]}, RED_CAR)
    blue = {'car': [det((0, 0, 5, 5), color='blue')]}
    assert R.geneval_partial(blue, RED_CAR) == (0.5, False)   # mean(count 1, colour 0)
    assert not R.geneval_accuracy(blue, RED_CAR)
    # Two cars, the best one red: GenEval checks the best one only; the partial score gives no
    # count credit (1 - 1/1) and 0 for colour, as the count is wrong.
    two = {'car': [det((0, 0, 5, 5), 0.9, 'red'), det((9, 0, 14, 5), 0.8, 'blue')]}
    assert R.geneval_accuracy(two, RED_CAR)
    assert R.geneval_partial(two, RED_CAR) == (0.0, False)
    assert R.objects_needing_color(two, RED_CAR) == two['car'][:1]
    # Too few: the count credit 1 - 1/2 and a 0 for the unchecked colour.
    two_red = {'tag': 'colors', 'include': [{'class': 'car', 'count': 2, 'color': 'red'}]}
    one = {'car': [det((0, 0, 5, 5), color='red')]}
    assert R.geneval_partial(one, two_red) == (pytest.approx(0.25), False)
    assert not R.geneval_accuracy(one, two_red) and R.objects_needing_color(one, two_red) == []


def test_color_attr_fraction_and_unclassified_colour() -> None:
    meta = {'tag': 'color_attr', 'include': [{'class': 'handbag', 'count': 1, 'color': 'pink'},
                                             {'class': 'car', 'count': 2, 'color': 'black'}]}
    d = {'handbag': [det((0, 0, 5, 5), color='pink')],
         'car': [det((9, 0, 14, 5), color='black'), det((20, 0, 25, 5), color='white')]}
    assert R.geneval_partial(d, meta) == (pytest.approx((1 + 1 + 1 + 0.5) / 4), False)
    assert not R.geneval_accuracy(d, meta)
    d['car'][1].color = None
    with pytest.raises(ValueError, match='Detection.color'):
        R.geneval_accuracy(d, meta)


# ----------------------------------------------------------------------------- position reqs
COW_RIGHT_OF_LAPTOP = {'tag': 'position', 'include': [
    {'class': 'laptop', 'count': 1}, {'class': 'cow', 'count': 1, 'position': ['right of', 0]}]}


def test_position_requirement() -> None:
    laptop, right, left = det((0, 0, 10, 10)), det((30, 0, 40, 10)), det((-30, 0, -20, 10))
    ok = {'laptop': [laptop], 'cow': [right]}
    assert R.geneval_accuracy(ok, COW_RIGHT_OF_LAPTOP)
    assert R.geneval_partial(ok, COW_RIGHT_OF_LAPTOP) == (1.0, True)
    wrong = {'laptop': [laptop], 'cow': [left]}
    assert not R.geneval_accuracy(wrong, COW_RIGHT_OF_LAPTOP)
    assert R.geneval_partial(wrong, COW_RIGHT_OF_LAPTOP) == (pytest.approx(2 / 3), False)
    # No cow: laptop 1, cow count 0 and 0 for the unchecked position.
    no_cow = {'laptop': [laptop]}
    assert R.geneval_partial(no_cow, COW_RIGHT_OF_LAPTOP) == (pytest.approx(1 / 3), False)


def test_failed_target_group() -> None:
    cow = det((30, 0, 40, 10))
    # No laptop: the laptop requirement fails, its group is None, so the position fails too.
    no_target = {'cow': [cow]}
    assert not R.geneval_accuracy(no_target, COW_RIGHT_OF_LAPTOP)
    assert R.geneval_partial(no_target, COW_RIGHT_OF_LAPTOP) == (pytest.approx(1 / 3), False)
    # Two laptops: GenEval uses the best one as target (the cow is right of it); the strict
    # path fails the laptop requirement (2 != 1), hence the cow's target group.
    laptops = {'laptop': [det((0, 0, 10, 10), 0.9), det((50, 0, 60, 10), 0.8)], 'cow': [cow]}
    assert R.geneval_accuracy(laptops, COW_RIGHT_OF_LAPTOP)
    assert R.geneval_partial(laptops, COW_RIGHT_OF_LAPTOP) == (pytest.approx(1 / 3), False)


# ----------------------------------------------------------------------------- selection
def test_thresholds_and_cap() -> None:
    assert R.confidence_threshold('counting') == 0.9
    assert all(R.confidence_threshold(t) == 0.3 for t in R.TAGS if t != 'counting')
    dog, cat = NAMES.index('dog'), NAMES.index('cat')
    scores = torch.tensor([0.5, 0.95, 0.3, 0.31, 0.2, 0.92])
    labels = torch.tensor([dog, dog, dog, dog, dog, cat])
    boxes = torch.arange(24.0).view(6, 4)
    low = R.select_detections(scores, labels, boxes, None, NAMES, 0.3)
    assert [d.score for d in low['dog']] == pytest.approx([0.95, 0.5, 0.31])  # 0.3 is not > 0.3
    assert low['dog'][0].box == (4.0, 5.0, 6.0, 7.0)
    high = R.select_detections(scores, labels, boxes, None, NAMES, 0.9)
    assert {k: len(v) for k, v in high.items()} == {'dog': 1, 'cat': 1}
    # 20 dogs above the threshold: the 16 best are kept.
    many = torch.rand(20, generator=torch.Generator().manual_seed(0)) * 0.6 + 0.35
    kept = R.select_detections(many, torch.full((20,), dog), torch.zeros(20, 4), None, NAMES,
                               0.3)
    assert [d.score for d in kept['dog']] == pytest.approx(many.sort(descending=True)[0][:16])


def test_masks_to_boxes() -> None:
    masks = torch.zeros(3, 6, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4, 7] = True
    masks[1, 0, 0] = True
    assert R.masks_to_boxes(masks).tolist() == [[2, 1, 5, 3], [0, 0, 8, 5], [0, 0, 0, 0]]


def test_detector_labels_map_to_geneval_names() -> None:
    coco = [{'computer mouse': 'mouse', 'tv remote': 'remote',
             'computer keyboard': 'keyboard'}.get(n, n) for n in NAMES]
    assert R.detector_class_names(dict(enumerate(coco)), NAMES) == NAMES
    broken = dict(enumerate(coco))
    broken[16] = 'puppy'
    with pytest.raises(ValueError,
                       match=r"without a label \['dog'\].*matching no class \['puppy'\]"):
        R.detector_class_names(broken, NAMES)


@pytest.mark.parametrize('metadata, field', [
    ({'include': [{'class': 'dog', 'count': 1}]}, 'tag'),
    ({'tag': 'single_object'}, 'include'),
    ({'tag': 'single_object', 'include': [{'class': 'dog'}]}, 'include[0].count'),
    ({'tag': 'single_object', 'include': [{'class': 'puppy', 'count': 1}]}, 'include[0].class'),
    ({'tag': 'colors', 'include': [{'class': 'dog', 'count': 1, 'color': 'teal'}]},
     'include[0].color'),
    ({'tag': 'position', 'include': [{'class': 'dog', 'count': 1, 'position': ['left of', 0]}]},
     'include[0].position'),
    ({'tag': 'counting', 'include': [{'class': 'dog', 'count': 1}], 'exclude': [{'count': 2}]},
     'exclude[0].class'),
])
def test_metadata_errors_name_the_field(metadata, field) -> None:
    with pytest.raises(R.GenEvalMetadataError, match=re.escape(f"field '{field}'")):
        R.validate_metadata(metadata, NAMES, 0)


# ----------------------------------------------------------------------------- tiny models
@pytest.fixture(scope='module')
def root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('rewards'))
    return build_tiny_geneval_dirs(root)


@pytest.fixture(scope='module')
def scorer(root):
    return REWARDS.build(dict(type='GenEvalReward', root=root, detector_size=(SIZE, SIZE)))


def _photos() -> torch.Tensor:
    """Three real photographs resized to 384 x 384, floats in [0, 1]."""
    import skimage.data
    from PIL import Image

    imgs = [np.asarray(Image.fromarray(f()).resize((SIZE, SIZE), Image.BICUBIC))
            for f in (skimage.data.chelsea, skimage.data.astronaut, skimage.data.coffee)]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


METADATA = [
    {'tag': 'single_object', 'include': [{'class': 'dog', 'count': 1}]},
    {'tag': 'colors', 'include': [{'class': 'dog', 'count': 1, 'color': 'red'}]},
    {'tag': 'counting', 'include': [{'class': 'dog', 'count': 2}],
     'exclude': [{'class': 'dog', 'count': 3}]},
]


@pytest.fixture(scope='module')
def reference(scorer):
    """The detector's raw outputs on :func:`_photos` and transformers' post-processing of them."""
    uint8 = (_photos() * 255).round().to(torch.uint8)
    inputs = scorer.processor(images=list(uint8), return_tensors='pt')
    assert tuple(inputs['pixel_values'].shape[-2:]) == (SIZE, SIZE)
    with torch.no_grad():
        out = scorer.detector(pixel_values=inputs['pixel_values'])
    ref = scorer.processor.post_process_instance_segmentation(
        out, threshold=0.0, target_sizes=[(SIZE, SIZE)] * 3, return_binary_maps=True)
    return out, ref


def test_postprocess_matches_transformers(reference) -> None:
    """At a 384 x 384 unpadded input and output (where transformers' fixed 384 grid is exact),
    :func:`instance_postprocess` gives transformers' instances, scores and masks."""
    out, ref = reference
    num_queries = out.class_queries_logits.shape[1]
    for i, r in enumerate(ref):
        scores, labels, masks, boxes = R.instance_postprocess(
            out.class_queries_logits[i], out.masks_queries_logits[i], (SIZE, SIZE),
            (SIZE, SIZE), (SIZE, SIZE), max_per_image=num_queries)
        nonempty = masks.flatten(1).any(1)
        ours = sorted(zip(scores[nonempty].tolist(), labels[nonempty].tolist(),
                          masks[nonempty], strict=True), key=lambda t: -t[0])
        theirs = sorted(zip([s['score'] for s in r['segments_info']],
                            [s['label_id'] for s in r['segments_info']],
                            r['segmentation'].bool(), strict=True), key=lambda t: -t[0])
        assert len(ours) == len(theirs) > 0
        for (s, label, mask), (s_ref, label_ref, mask_ref) in zip(ours, theirs, strict=True):
            assert label == label_ref and s == pytest.approx(s_ref, abs=1e-6)
            assert torch.equal(mask, mask_ref)
        assert (scores > 0.3).any()  # the biased head gives detections to score


def test_scorer_counts_like_an_independent_detection_count(scorer, reference) -> None:
    """Single-object and counting prompts: the partial score is ``1 - |count - n| / count``
    with ``n`` counted from transformers' post-processing at the tag's threshold (cap 16)."""
    images, ref = _photos(), reference[1]
    dog = NAMES.index('dog')
    counts = {}
    for count, tag, threshold in [(1, 'single_object', 0.3), (2, 'counting', 0.9)]:
        meta = [{'tag': tag, 'include': [{'class': 'dog', 'count': count}]}] * 3
        n = [min(16, sum(s['label_id'] == dog and s['score'] > threshold
                         for s in r['segments_info'])) for r in ref]
        expected = torch.tensor([1 - abs(count - k) / count for k in n])
        torch.testing.assert_close(scorer(images, None, meta), expected)
        counts[tag] = n
    # The biased head finds dogs above 0.3 but none above 0.9: the two thresholds differ.
    assert any(k > 0 for k in counts['single_object']) and counts['counting'] == [0, 0, 0]


def test_shape_determinism_and_batch_invariance(scorer) -> None:
    images = _photos()
    assert not scorer.differentiable and scorer.upper_bound == 1.0 and scorer.output_scale
    details = scorer.score_details(images, ['p'] * 3, METADATA)
    keys = {'', 'accuracy', 'strict_accuracy', *(f'accuracy/{t}' for t in R.TAGS)}
    assert set(details) == keys
    assert all(v.shape == (3,) and v.dtype == torch.float32 for v in details.values())
    assert torch.all(details[''] <= 1)
    torch.testing.assert_close(scorer(images, ['p'] * 3, METADATA), details[''])
    # accuracy/<tag> is the accuracy on that tag's samples and NaN elsewhere.
    for j, meta in enumerate(METADATA):
        for tag in R.TAGS:
            value = details[f'accuracy/{tag}'][j]
            assert math.isnan(value) if tag != meta['tag'] else value == details['accuracy'][j]
    again = scorer.score_details(images, ['p'] * 3, METADATA)
    one_by_one = [scorer.score_details(images[i:i + 1], ['p'], METADATA[i:i + 1])
                  for i in range(3)]
    for k in keys:
        torch.testing.assert_close(again[k], details[k], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(torch.cat([o[k] for o in one_by_one]), details[k],
                                   equal_nan=True)


def test_color_classifier_matches_an_independent_computation(scorer) -> None:
    """Crop (release: ``Image.composite`` over #999, ``crop(box)``), open_clip's eval transform,
    and the zero-shot classifier computed from ``CLIPModel.forward``'s normalised embeddings."""
    import open_clip
    from PIL import Image

    image = (_photos()[1] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    mask = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    mask[100:300, 50:200] = True
    mask[150:160, 60:100] = False
    objects = [Detection(box=tuple(R.masks_to_boxes(m[None])[0].tolist()), score=0.9, mask=m)
               for m in (mask, torch.roll(mask, (40, 120), (0, 1)))]
    pil = Image.fromarray(image)
    crops = [Image.composite(pil, Image.new('RGB', pil.size, '#999'),
                             Image.fromarray(d.mask.numpy())).crop(d.box) for d in objects]
    np.testing.assert_array_equal(R.crop_object(image, objects[0]), np.asarray(crops[0]))
    transform = open_clip.image_transform(224, is_train=False, mean=G.CLIP_MEAN, std=G.CLIP_STD)
    pixels = torch.stack([transform(c) for c in crops])
    torch.testing.assert_close(torch.stack([scorer.clip_transform(np.asarray(c)) for c in crops]),
                               pixels, rtol=0, atol=1e-6)

    texts = [t.format(c=c, classname='teddy bear') for c in R.COLORS for t in R.COLOR_TEMPLATES]
    tokens = scorer.tokenizer(texts, padding='max_length', max_length=77, return_tensors='pt')
    with torch.no_grad():
        out = scorer.clip(pixel_values=pixels, **tokens)
    weights = out.text_embeds.view(len(R.COLORS), len(R.COLOR_TEMPLATES), -1).mean(1)
    weights = weights / weights.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(scorer.color_classifier('teddy bear'), weights.T,
                               rtol=1e-5, atol=1e-6)
    logits = out.image_embeds @ weights.T
    assert logits.argmax(1).tolist() != [] and logits[0].std() > 0
    expected = [R.COLORS[i] for i in logits.argmax(1).tolist()]
    assert scorer.classify_colors(image, 'teddy bear', objects) == expected


def test_missing_weights_and_metadata(tmp_path, root, scorer) -> None:
    import shutil

    with pytest.raises(MissingRewardWeightsError, match='GenEvalReward') as err:
        REWARDS.build(dict(type='GenEvalReward', root=str(tmp_path)))
    assert R.DETECTOR_SOURCE in str(err.value) and 'config.json' in str(err.value)
    shutil.copytree(osp.join(root, G.DETECTOR_DIR), tmp_path / G.DETECTOR_DIR)
    with pytest.raises(MissingRewardWeightsError, match=G.CLIP_SOURCE):
        REWARDS.build(dict(type='GenEvalReward', root=str(tmp_path)))
    images = _photos()[:1]
    with pytest.raises(R.GenEvalMetadataError, match='one GenEval metadata dict per image'):
        scorer(images, ['a photo of a dog'])
    with pytest.raises(R.GenEvalMetadataError, match="field 'include'"):
        scorer(images, ['a photo of a dog'], [{'tag': 'single_object'}])


def test_non_square_images_get_masks_and_boxes_in_their_own_frame(scorer) -> None:
    images = (_photos()[:2, :, :200, :] * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    found = scorer.detect(images, [0.0, 0.0])
    for dets in found:
        objs = [d for v in dets.values() for d in v]
        assert objs and all(d.mask.shape == (200, SIZE) for d in objs)
        boxes = torch.tensor([d.box for d in objs])
        torch.testing.assert_close(boxes, R.masks_to_boxes(torch.stack([d.mask for d in objs])))
        assert (boxes[:, 2] <= SIZE).all() and (boxes[:, 3] <= 200).all()
