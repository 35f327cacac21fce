"""GenEval's rules as pure functions: metadata, detection selection, position, scoring.

GenEval (Ghosh et al., 2023, ``evaluation/evaluate_images.py``) decides from the detected objects
whether an image satisfies its prompt's metadata; Flow-GRPO's reward server adds a partial-credit
score and an exact-count ("strict") accuracy. Everything here works on :class:`Detection` lists
and tensors, without any model, so each rule is tested on hand-built detections; the scorer
(:class:`rtdmd.rewards.geneval.GenEvalReward`) runs the detector and the colour classifier and
calls these.

Metadata per prompt: ``{tag, include: [{class, count, color?, position?: [relation, group]}],
exclude?: [{class, count}]}``.
"""

from __future__ import annotations

import math
import os.path as osp
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: The checkpoint the detector-label check names.
DETECTOR_SOURCE = 'facebook/mask2former-swin-small-coco-instance'
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
#: mmdet's Mask2Former COCO test config keeps the 100 best (query, class) pairs per image.
MAX_PER_IMAGE = 100
COLORS = ('red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink', 'brown', 'black', 'white')
COLOR_TEMPLATES = ('a photo of a {c} {classname}', 'a photo of a {c}-colored {classname}',
                   'a photo of a {c} object')
RELATIONS = ('left of', 'right of', 'above', 'below')
TAGS = ('single_object', 'two_object', 'counting', 'colors', 'position', 'color_attr')
#: GenEval's crop background (``bgcolor='#999'``).
BACKGROUND = 0x99

CLASS_NAMES_FILE = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'datasets',
                            'prompts', 'geneval_object_names.txt')
#: Detector label spellings (COCO / detectron2 / VOC) of GenEval's COCO-80 names.
LABEL_ALIASES = {'mouse': 'computer mouse', 'remote': 'tv remote', 'keyboard': 'computer keyboard',
                 'tvmonitor': 'tv', 'tv monitor': 'tv', 'hair dryer': 'hair drier',
                 'motorbike': 'motorcycle', 'aeroplane': 'airplane', 'sofa': 'couch',
                 'pottedplant': 'potted plant', 'diningtable': 'dining table'}


class GenEvalMetadataError(ValueError):
    """A prompt's GenEval metadata is missing or malformed."""


@dataclass
class Detection:
    """One detected object.

    Attributes:
        box: ``(x0, y0, x1, y1)`` in pixels of the scored image, ``x1``/``y1`` exclusive (the
            mask's extent, as mmdet's ``mask2bbox``).
        score: detection confidence in [0, 1].
        mask: ``(H, W)`` bool instance mask, or ``None`` (pure-logic tests).
        color: the zero-shot colour (one of :data:`COLORS`) once classified, else ``None``.
    """

    box: tuple[float, float, float, float]
    score: float
    mask: Tensor | None = None
    color: str | None = None


Detections = dict[str, list[Detection]]


# ----------------------------------------------------------------------------- names, metadata
def load_class_names(path: str = CLASS_NAMES_FILE) -> list[str]:
    """GenEval's 80 object names in COCO order, one per line."""
    with open(path, encoding='utf-8') as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != len(set(names)):
        raise ValueError(f'{path}: duplicate class names')
    return names


def detector_class_names(id2label: Mapping[Any, str], class_names: Sequence[str]) -> list[str]:
    """GenEval name of each detector label id (``id2label`` of the detector config).

    Labels are matched case-insensitively with ``_``/``-`` read as spaces, and through
    :data:`LABEL_ALIASES` (COCO's ``mouse`` is GenEval's ``computer mouse``, ...).

    Raises:
        ValueError: if a GenEval class has no detector label, or a label maps to none / twice.
    """
    known = set(class_names)
    by_id = {int(k): str(v) for k, v in id2label.items()}
    names, unmapped = [], []
    for i in range(len(by_id)):
        raw = by_id.get(i, f'<no label {i}>')
        key = ' '.join(raw.lower().replace('_', ' ').replace('-', ' ').split())
        name = key if key in known else LABEL_ALIASES.get(key)
        names.append(name)
        if name is None:
            unmapped.append(raw)
    missing = [c for c in class_names if c not in names]
    twice = sorted({n for n in names if n is not None and names.count(n) > 1})
    if missing or unmapped or twice:
        raise ValueError(
            f'the detector labels do not match GenEval\'s COCO-80 classes: classes without a '
            f'label {missing}, labels matching no class {unmapped}, classes matched twice '
            f'{twice}. Expected a COCO instance-segmentation checkpoint ({DETECTOR_SOURCE}) whose '
            f'config.json id2label names the 80 COCO classes.')
    return names


def _fail(index: int, field: str, why: str) -> GenEvalMetadataError:
    return GenEvalMetadataError(
        f'GenEval metadata of sample {index}: field {field!r} {why}. Expected {{"tag": str, '
        f'"include": [{{"class", "count", "color"?, "position"?: [relation, group]}}], '
        f'"exclude"?: [{{"class", "count"}}]}} as in geneval_metadata.jsonl.')


def validate_metadata(metadata: Any, class_names: Sequence[str], index: int = 0) -> None:
    """Check one prompt's metadata; raise :class:`GenEvalMetadataError` naming the bad field."""
    if not isinstance(metadata, Mapping):
        raise _fail(index, 'metadata', f'is {type(metadata).__name__}, not a dict')
    if not isinstance(metadata.get('tag'), str) or not metadata['tag']:
        raise _fail(index, 'tag', 'is missing or not a non-empty string')
    for key in ('include', 'exclude'):
        reqs = metadata.get(key, [] if key == 'exclude' else None)
        if not isinstance(reqs, list) or (key == 'include' and not reqs):
            raise _fail(index, key, 'is missing or not a (non-empty) list of requirements')
        for i, req in enumerate(reqs):
            name = f'{key}[{i}]'
            if not isinstance(req, Mapping):
                raise _fail(index, name, 'is not a dict')
            if req.get('class') not in class_names:
                raise _fail(index, f'{name}.class', f'{req.get("class")!r} is missing or not '
                            f'one of the 80 GenEval classes')
            count = req.get('count')
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise _fail(index, f'{name}.count', f'{count!r} is missing or not an int >= 1')
            if 'color' in req and req['color'] not in COLORS:
                raise _fail(index, f'{name}.color', f'{req["color"]!r} is not one of {COLORS}')
            if 'position' in req:
                pos = req['position']
                if not (isinstance(pos, Sequence) and len(pos) == 2 and pos[0] in RELATIONS
                        and isinstance(pos[1], int) and 0 <= pos[1] < i):
                    raise _fail(index, f'{name}.position', f'{pos!r} is not [one of '
                                f'{RELATIONS}, index of an earlier include entry]')


def confidence_threshold(tag: str) -> float:
    """0.9 for ``counting`` prompts, 0.3 otherwise."""
    return COUNTING_THRESHOLD if tag == 'counting' else THRESHOLD


# ----------------------------------------------------------------------------- detections
def masks_to_boxes(masks: Tensor) -> Tensor:
    """mmdet's ``mask2bbox``: ``(N, H, W)`` bool -> ``(N, 4)`` ``(x0, y0, x1 + 1, y1 + 1)``.

    An empty mask gets ``(0, 0, 0, 0)``.
    """
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # (N, W), (N, H)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    return torch.where(cols.any(1, keepdim=True), boxes, torch.zeros_like(boxes))


def instance_postprocess(class_logits: Tensor, mask_logits: Tensor, input_hw: tuple[int, int],
                         valid_hw: tuple[int, int], out_hw: tuple[int, int],
                         max_per_image: int = MAX_PER_IMAGE, min_score: float = 0.0
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mmdet Mask2Former instance results of one image.

    Mask logits are upsampled (bilinear) to the padded network input, cropped to the resized
    image ``valid_hw`` and upsampled to ``out_hw``; the ``max_per_image`` best (query, class)
    scores of ``softmax(class_logits)[:, :-1]`` are kept, each mask binarised at logit 0 and
    scored ``class prob * mean sigmoid over the mask``, its box being the mask's extent.

    Args:
        class_logits: ``(Q, C + 1)`` (last: no object).
        mask_logits: ``(Q, h, w)`` (1/4 of the network input for Mask2Former).
        input_hw: size of the (padded) network input.
        valid_hw: size of the resized image inside the padded input.
        out_hw: size of the scored image.
        max_per_image: number of (query, class) pairs kept.
        min_score: pairs whose class probability is <= ``min_score`` are dropped before the
            masks are upsampled; exact for any later ``score > min_score`` filter, since the
            detection score is the class probability times a mask score <= 1.

    Returns:
        ``scores (K,)``, ``labels (K,)`` int64, ``masks (K, H, W)`` bool, ``boxes (K, 4)``.
    """
    num_classes = class_logits.shape[1] - 1
    probs = class_logits.float().softmax(-1)[:, :-1].flatten()
    top, index = probs.topk(min(max_per_image, probs.numel()), sorted=True)
    keep = top > min_score
    top, index = top[keep], index[keep]
    labels, queries = index % num_classes, index // num_classes
    if queries.numel() == 0:
        empty = torch.zeros((0, *out_hw), dtype=torch.bool, device=mask_logits.device)
        return top, labels, empty, masks_to_boxes(empty)
    masks = mask_logits[queries].float()[None]
    masks = F.interpolate(masks, size=input_hw, mode='bilinear', align_corners=False)
    masks = masks[..., :valid_hw[0], :valid_hw[1]]
    masks = F.interpolate(masks, size=out_hw, mode='bilinear', align_corners=False)[0]
    binary = masks > 0
    mask_scores = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
    return top * mask_scores, labels, binary, masks_to_boxes(binary)


def select_detections(scores: Tensor, labels: Tensor, boxes: Tensor, masks: Tensor | None,
                      label_names: Sequence[str], threshold: float,
                      max_objects: int = MAX_OBJECTS) -> Detections:
    """GenEval's per-class selection: score-descending, ``score > threshold``, the first
    ``max_objects``; no NMS.

    Args:
        scores: ``(N,)`` detection scores.
        labels: ``(N,)`` detector label ids.
        boxes: ``(N, 4)`` ``(x0, y0, x1, y1)``.
        masks: ``(N, H, W)`` bool or ``None``.
        label_names: GenEval class name of each label id.
        threshold: confidence threshold (see :func:`confidence_threshold`).
        max_objects: cap per class.

    Returns:
        ``{class name: [Detection, ...]}`` best first; classes without detections are absent.
    """
    out: Detections = {}
    scores, labels, boxes = scores.cpu(), labels.cpu(), boxes.cpu()
    for label in labels.unique().tolist():
        idx = (labels == label).nonzero().flatten()
        idx = idx[scores[idx].argsort(descending=True, stable=True)]
        idx = idx[scores[idx] > threshold][:max_objects].tolist()
        if idx:
            out[label_names[label]] = [
                Detection(tuple(boxes[i].tolist()), float(scores[i]),
                          None if masks is None else masks[i]) for i in idx]
    return out


# ----------------------------------------------------------------------------- evaluation
def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of box A to box B (``'left of'``, ``'right of'``, ``'above'``, ``'below'``).

    The centre offset ``c_a - c_b`` is shrunk per axis by ``threshold * (d_a + d_b)`` (``d``:
    box width / height, clipped at 0); if both shrunk offsets are < 1e-3 there is no relation,
    else a relation holds when its axis carries more than half of the (unshrunk) offset's norm:
    ``dx = shrunk_x / |offset|`` < -0.5 is "left of", > 0.5 "right of"; ``dy`` < -0.5 "above",
    > 0.5 "below" (image y grows downwards).
    """
    ax0, ay0, ax1, ay1 = (float(v) for v in box_a[:4])
    bx0, by0, bx1, by1 = (float(v) for v in box_b[:4])
    offset = ((ax0 + ax1 - bx0 - bx1) / 2, (ay0 + ay1 - by0 - by1) / 2)
    dims = (abs(ax1 - ax0) + abs(bx1 - bx0), abs(ay1 - ay0) + abs(by1 - by0))
    revised = [max(abs(o) - threshold * d, 0.0) * float(np.sign(o))
               for o, d in zip(offset, dims, strict=True)]
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    norm = math.hypot(*offset)
    dx, dy = revised[0] / norm, revised[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add('left of')
    if dx > 0.5:
        relations.add('right of')
    if dy < -0.5:
        relations.add('above')
    if dy > 0.5:
        relations.add('below')
    return relations


def _n_color(found: Sequence[Detection], color: str) -> int:
    if any(d.color is None for d in found):
        raise ValueError('a colour requirement needs Detection.color of the objects it checks '
                         '(see objects_needing_color)')
    return sum(d.color == color for d in found)


def _related(found: Sequence[Detection], targets: Sequence[Detection] | None, relation: str,
             threshold: float) -> bool:
    """Every found object has ``relation`` to every target (``False`` without targets)."""
    return targets is not None and all(relation in relative_position(d.box, t.box, threshold)
                                       for d in found for t in targets)


def _excluded_ok(detections: Detections, metadata: Mapping[str, Any]) -> bool:
    return all(len(detections.get(r['class'], [])) < r['count']
               for r in metadata.get('exclude', []))


def geneval_accuracy(detections: Detections, metadata: Mapping[str, Any],
                     position_threshold: float = POSITION_THRESHOLD) -> bool:
    """The original GenEval correctness (at-least counts; colour / position on the best objects).

    Each include requirement takes ``found = detections[class][:count]`` and fails if fewer than
    ``count`` were found, if fewer than ``count`` of them have the colour, or (position) if its
    target group failed or any found object lacks the relation to any target object. Exclude
    fails if ``len(detections[class]) >= count``.
    """
    correct = True
    groups: list[list[Detection] | None] = []
    for req in metadata['include']:
        count = req['count']
        found = detections.get(req['class'], [])[:count]
        matched = len(found) >= count
        if matched and 'color' in req:
            matched = _n_color(found, req['color']) >= count
        if matched and 'position' in req:
            relation, group = req['position']
            matched = _related(found, groups[group], relation, position_threshold)
        correct &= matched
        groups.append(found if matched else None)
    return correct and _excluded_ok(detections, metadata)


def geneval_partial(detections: Detections, metadata: Mapping[str, Any],
                    position_threshold: float = POSITION_THRESHOLD) -> tuple[float, bool]:
    """Flow-GRPO's partial-credit score and strict (exact-count) correctness.

    Per include requirement, with ``n`` = all detections of the class: append
    ``1 - |count - n| / count`` (not clipped: it is negative when ``n > 2 count``); if
    ``n != count`` the requirement fails and a colour / position requirement appends 0; else
    colour appends the fraction of the ``n`` objects with the colour (fails unless all have it)
    and position (if still matched) appends 1 or 0 (0 when the target group failed).

    Returns:
        ``(mean of the appended values, strict)``, ``strict`` being True iff every include
        requirement holds with exact counts and no exclude requirement is violated.
    """
    values: list[float] = []
    strict = True
    groups: list[list[Detection] | None] = []
    for req in metadata['include']:
        count = req['count']
        found = detections.get(req['class'], [])
        values.append(1.0 - abs(count - len(found)) / count)
        matched = len(found) == count
        if not matched and ('color' in req or 'position' in req):
            values.append(0.0)
        if matched and 'color' in req:
            n_color = _n_color(found, req['color'])
            values.append(n_color / len(found))
            matched = n_color == count
        if matched and 'position' in req:
            relation, group = req['position']
            matched = _related(found, groups[group], relation, position_threshold)
            values.append(float(matched))
        strict &= matched
        groups.append(found if matched else None)
    score = sum(values) / len(values) if values else 0.0
    return score, strict and _excluded_ok(detections, metadata)


def objects_needing_color(detections: Detections, metadata: Mapping[str, Any]
                          ) -> list[Detection]:
    """The detections whose colour the two evaluations read: ``detections[class][:count]`` of
    each colour requirement with at least ``count`` detections (the strict path reads them only
    when there are exactly ``count``)."""
    out: dict[int, Detection] = {}
    for req in metadata['include']:
        found = detections.get(req['class'], [])
        if 'color' in req and len(found) >= req['count']:
            out.update((id(d), d) for d in found[:req['count']])
    return list(out.values())


def crop_object(image: np.ndarray, det: Detection) -> np.ndarray:
    """GenEval's colour crop: the object over a #999999 background, cut to its box.

    Args:
        image: ``(H, W, 3)`` uint8.
        det: a detection with a mask.

    Returns:
        ``(y1 - y0, x1 - x0, 3)`` uint8.
    """
    mask = det.mask.cpu().numpy() if det.mask is not None else np.ones(image.shape[:2], bool)
    composite = np.where(mask[..., None], image, np.uint8(BACKGROUND))
    x0, y0, x1, y1 = (int(round(v)) for v in det.box)
    return composite[y0:y1, x0:x1]
