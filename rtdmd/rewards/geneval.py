"""GenEval: object detection + zero-shot colour + relative position, as a reward and a benchmark.

Reference: GenEval (Ghosh et al., 2023, ``evaluation/evaluate_images.py``) and Flow-GRPO's reward
server, which adds a partial-credit score and an exact-count ("strict") accuracy. The release
detects objects with mmdet's Mask2Former Swin-S (COCO-80 instance segmentation) and classifies
colours zero-shot with open_clip ViT-L-14 (openai weights). Here both run on transformers:

- detector: ``Mask2FormerForUniversalSegmentation`` from ``<root>/mask2former-swin-small-coco-
  instance`` (HF ``facebook/mask2former-swin-small-coco-instance``: the same architecture trained
  on COCO instance segmentation by the Mask2Former authors, **not** mmdet's retrained checkpoint,
  so detections differ slightly). Input: ``Mask2FormerImageProcessor`` with mmdet's test scale
  (shorter side 800, longer <= 1333, ImageNet mean / std). Post-processing is mmdet's
  ``MaskFormerFusionHead.instance_postprocess`` (:func:`instance_postprocess`): transformers'
  ``post_process_instance_segmentation`` resizes every mask through a fixed 384 x 384 grid and
  does not remove padding, so it is used only as a reference in the tests.
- colour: ``CLIPModel`` from ``<root>/clip-vit-large-patch14`` (shared with ``CLIPScore``; the
  same weights as open_clip's openai ViT-L-14).

GenEval's rules are pure functions over :class:`Detection` lists in
:mod:`rtdmd.rewards.geneval_rules` (tested without models): ``select_detections`` (threshold,
per-class cap), ``relative_position``, ``geneval_accuracy`` (the original GenEval),
``geneval_partial`` (Flow-GRPO's partial score and strict accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rtdmd.registry import REWARDS

from .base import MAIN_SCORE, RewardScorer
from .clip_score import CLIP_FILES
from .geneval_rules import (
    CLASS_NAMES_FILE,
    COLOR_TEMPLATES,
    COLORS,
    DETECTOR_SOURCE,
    TAGS,
    Detection,
    Detections,
    GenEvalMetadataError,
    confidence_threshold,
    crop_object,
    detector_class_names,
    geneval_accuracy,
    geneval_partial,
    instance_postprocess,
    load_class_names,
    objects_needing_color,
    relative_position,
    select_detections,
    validate_metadata,
)
from .preprocess import CLIP_MEAN, CLIP_STD
from .weights import WeightFiles, require_weights, resolve_weights_path

DETECTOR_DIR = 'mask2former-swin-small-coco-instance'
DETECTOR_FILES = ('config.json', 'model.safetensors|pytorch_model.bin')
CLIP_DIR = 'clip-vit-large-patch14'
CLIP_SOURCE = 'openai/clip-vit-large-patch14'


# ----------------------------------------------------------------------------- the scorer
@REWARDS.register_module()
class GenEvalReward(RewardScorer):
    """GenEval reward: Flow-GRPO's partial score, with GenEval / strict accuracies as details.

    ``forward`` returns the partial score ``(B,)`` (mean of per-requirement credits, <= 1; it
    can be negative for heavy over-counting, as in the release). :meth:`score_details` adds
    ``accuracy`` (original GenEval, 0/1), ``strict_accuracy`` (exact counts, 0/1) and
    ``accuracy/<tag>`` for the six GenEval tags (NaN for samples of another tag). Images are
    quantised to uint8 as the release's PNGs are; not differentiable.

    Args:
        detector_path: the Mask2Former folder; relative paths are taken under ``root``.
        clip_path: the CLIP ViT-L/14 folder; relative paths are taken under ``root``.
        root: reward-weights root (see :func:`reward_weights_root`).
        class_names_file: GenEval's object names (COCO-80 order).
        detector_size: ``(shorter, longer)`` side limits of the detector input (mmdet's test
            scale 800 / 1333; tests use small sizes).
        name: key under which the reward is logged.
    """

    differentiable = False
    upper_bound = 1.0
    output_scale = 'partial credit <= 1 (mean of count / colour / position credits)'

    def __init__(self, detector_path: str = DETECTOR_DIR, clip_path: str = CLIP_DIR,
                 root: str | None = None, class_names_file: str = CLASS_NAMES_FILE,
                 detector_size: tuple[int, int] = (800, 1333), name: str | None = None) -> None:
        super().__init__(name)
        require_weights(self.required_weights(detector_path=detector_path, clip_path=clip_path,
                                              root=root), type(self).__name__)
        detector_path = resolve_weights_path(detector_path, root)
        clip_path = resolve_weights_path(clip_path, root)
        from transformers import AutoTokenizer, CLIPModel, Mask2FormerImageProcessor
        from transformers import Mask2FormerForUniversalSegmentation as Mask2Former

        self.detector_path, self.clip_path = detector_path, clip_path
        self.class_names = load_class_names(class_names_file)
        self.detector = Mask2Former.from_pretrained(detector_path)
        self.label_names = detector_class_names(self.detector.config.id2label, self.class_names)
        self.processor = Mask2FormerImageProcessor(
            size={'shortest_edge': detector_size[0], 'longest_edge': detector_size[1]},
            size_divisor=32, do_reduce_labels=False)
        self.clip = CLIPModel.from_pretrained(clip_path)
        self.tokenizer = AutoTokenizer.from_pretrained(clip_path)
        self.requires_grad_(False).eval()
        self._classifiers: dict[str, Tensor] = {}

    @classmethod
    def required_weights(cls, detector_path: str = DETECTOR_DIR, clip_path: str = CLIP_DIR,
                         root: str | None = None, **init_args: Any) -> list[WeightFiles]:
        """The detector and CLIP folders (relative paths under ``root``)."""
        return [WeightFiles(resolve_weights_path(detector_path, root), DETECTOR_FILES,
                            DETECTOR_SOURCE),
                WeightFiles(resolve_weights_path(clip_path, root), CLIP_FILES, CLIP_SOURCE)]

    def train(self, mode: bool = True) -> GenEvalReward:
        """A frozen scorer: the models stay in eval mode."""
        return super().train(False)

    # -- detection
    @torch.no_grad()
    def detect(self, images: Tensor, thresholds: Sequence[float]) -> list[Detections]:
        """Selected detections of ``(B, H, W, 3)`` uint8 images, one threshold per image."""
        param = next(self.detector.parameters())
        inputs = self.processor(images=list(images.permute(0, 3, 1, 2).cpu()),
                                return_tensors='pt')
        pixels = torch.as_tensor(inputs['pixel_values']).to(param.device, param.dtype)
        valid = torch.as_tensor(inputs['pixel_mask']).bool()
        out = self.detector(pixel_values=pixels)
        results = []
        for i, threshold in enumerate(thresholds):
            valid_hw = (int(valid[i].any(1).sum()), int(valid[i].any(0).sum()))
            scores, labels, masks, boxes = instance_postprocess(
                out.class_queries_logits[i], out.masks_queries_logits[i],
                tuple(pixels.shape[-2:]), valid_hw, tuple(images.shape[1:3]), min_score=threshold)
            results.append(select_detections(scores, labels, boxes, masks, self.label_names,
                                             threshold))
        return results

    # -- colour
    def color_classifier(self, classname: str) -> Tensor:
        """``(D, len(COLORS))`` zero-shot weights: per colour, the mean of the L2-normalised
        template embeddings, L2-normalised (open_clip's ``zero_shot_classifier``)."""
        if classname not in self._classifiers:
            param = next(self.clip.parameters())
            texts = [t.format(c=c, classname=classname) for c in COLORS for t in COLOR_TEMPLATES]
            context = min(self.tokenizer.model_max_length,
                          self.clip.config.text_config.max_position_embeddings)
            tokens = self.tokenizer(texts, padding='max_length', truncation=True,
                                    max_length=context, return_tensors='pt').to(param.device)
            with torch.no_grad():
                emb = self.clip.get_text_features(**tokens).pooler_output.float()
            emb = F.normalize(emb, dim=-1).view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(1)
            self._classifiers[classname] = F.normalize(emb, dim=-1).T
        return self._classifiers[classname]

    def clip_transform(self, crop: np.ndarray) -> Tensor:
        """open_clip's eval transform of a uint8 ``(h, w, 3)`` crop -> ``(3, S, S)``: PIL
        bicubic resize of the shorter side to S, center crop, OpenAI CLIP normalisation."""
        import torchvision.transforms as T
        from PIL import Image

        size = self.clip.config.vision_config.image_size
        transform = T.Compose([T.Resize(size, T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                               T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
        return transform(Image.fromarray(crop))

    @torch.no_grad()
    def classify_colors(self, image: np.ndarray, classname: str,
                        objects: Sequence[Detection]) -> list[str]:
        """Zero-shot colour of each object (of class ``classname``) in ``(H, W, 3)`` uint8."""
        if not objects:
            return []
        param = next(self.clip.parameters())
        pixels = torch.stack([self.clip_transform(crop_object(image, d)) for d in objects])
        feats = self.clip.get_image_features(
            pixel_values=pixels.to(param.device, param.dtype)).pooler_output.float()
        logits = F.normalize(feats, dim=-1) @ self.color_classifier(classname)
        return [COLORS[i] for i in logits.argmax(1).tolist()]

    # -- evaluation
    def evaluate(self, samples: Tensor, metadata: Sequence[dict] | None
                 ) -> list[tuple[float, bool, bool]]:
        """``(partial score, accuracy, strict accuracy)`` per image ``(B, 3, H, W)`` in [0, 1]."""
        if samples.ndim != 4 or samples.shape[1] != 3:
            raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
        if metadata is None or len(metadata) != samples.shape[0]:
            raise GenEvalMetadataError(
                f'GenEvalReward needs one GenEval metadata dict per image ({samples.shape[0]}), '
                f'got {"none" if metadata is None else len(metadata)}; use a GenEval .jsonl '
                f'prompt file (field "metadata" of each item)')
        for i, meta in enumerate(metadata):
            validate_metadata(meta, self.class_names, i)
        uint8 = (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        uint8 = uint8.permute(0, 2, 3, 1).cpu()
        found = self.detect(uint8, [confidence_threshold(m['tag']) for m in metadata])
        results = []
        for image, dets, meta in zip(uint8.numpy(), found, metadata, strict=True):
            for classname, objs in dets.items():
                todo = objects_needing_color({classname: objs}, meta)
                colors = self.classify_colors(image, classname, todo)
                for d, color in zip(todo, colors, strict=True):
                    d.color = color
            score, strict = geneval_partial(dets, meta)
            results.append((score, geneval_accuracy(dets, meta), strict))
        return results

    def score_details(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                      metadata: Sequence[dict] | None = None) -> dict[str, Tensor]:
        """``{'': partial score, 'accuracy', 'strict_accuracy', 'accuracy/<tag>'}``, each ``(B,)``
        float32 (0/1 accuracies; NaN for ``accuracy/<tag>`` of samples of another tag)."""
        results = self.evaluate(samples, metadata)
        score, acc, strict = (torch.tensor(c, dtype=torch.float32, device=samples.device)
                              for c in zip(*results, strict=True))
        details = {MAIN_SCORE: score, 'accuracy': acc, 'strict_accuracy': strict}
        tags = [m['tag'] for m in metadata]
        for tag in TAGS:
            is_tag = torch.tensor([t == tag for t in tags], device=samples.device)
            details[f'accuracy/{tag}'] = torch.where(is_tag, acc, torch.full_like(acc, math.nan))
        return details


    def extra_repr(self) -> str:
        return f'detector_path={self.detector_path!r}, clip_path={self.clip_path!r}'


__all__ = ['COLORS', 'Detection', 'GenEvalMetadataError', 'GenEvalReward', 'confidence_threshold',
           'detector_class_names', 'geneval_accuracy', 'geneval_partial', 'instance_postprocess',
           'relative_position', 'select_detections']
