"""OCR reward: how closely the text read off an image matches the text its prompt quotes.

The release scores text rendering with PaddleOCR (English, no angle classifier, CPU):

* target = the text between the first pair of double quotes in the prompt
  (:func:`rtdmd.datasets.text_prompts.ocr_target`);
* recognised = the concatenation of the text of every detected line (top to bottom, left to
  right) whose recognition confidence passes the engine's ``drop_score`` (0.5);
* both have their spaces removed and are lowercased;
* reward = 1 if the target is a substring of the recognised text, else
  ``1 - min(Lev(recognised, target), len(target)) / len(target)``, in [0, 1];
* an OCR failure (the engine raising) gives the sample 0, as the release does.

Here the engine is RapidOCR (``rapidocr-onnxruntime``): the PP-OCR detection / recognition
networks of PaddleOCR exported to ONNX and run on onnxruntime, with PaddleOCR's pre- and
post-processing. Its wheel ships real weights, so this scorer works offline with no download:
``ch_PP-OCRv4_det_infer.onnx`` (DB text detector), ``ch_PP-OCRv4_rec_infer.onnx`` (SVTR-LCNet
CTC recogniser, Chinese + English dictionary of 6623 characters stored in the model's metadata)
and ``ch_ppocr_mobile_v2.0_cls_infer.onnx`` (the angle classifier, unused: the release runs
without it). The release's ``lang='en'`` uses PaddleOCR's English models
(``en_PP-OCRv3_det`` / ``en_PP-OCRv4_rec`` with ``en_dict.txt``); ONNX exports of those load
through ``det_model_path`` / ``rec_model_path`` / ``rec_keys_path``, relative paths being taken
under :func:`rtdmd.rewards.weights.reward_weights_root`.

Images reach the engine as the release sends them: ``(x * 255).round().clamp(0, 255)`` uint8
``(H, W, 3)`` arrays in RGB order (PaddleOCR, like RapidOCR, takes arrays for OpenCV's BGR; the
release does not swap the channels and neither does this scorer). Not differentiable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rtdmd.datasets.text_prompts import ocr_target
from rtdmd.registry import REWARDS

from .base import MAIN_SCORE, RewardScorer
from .weights import (
    MissingRewardWeightsError,
    WeightFiles,
    require_weights,
    resolve_weights_path,
)

#: Where ONNX exports of PaddleOCR's English models come from (for the missing-file message).
EN_MODELS_SOURCE = (
    "PaddleOCR's English PP-OCR models (en_PP-OCRv3_det_infer.tar under "
    'https://paddleocr.bj.bcebos.com/PP-OCRv3/english/, en_PP-OCRv4_rec_infer.tar under '
    'https://paddleocr.bj.bcebos.com/PP-OCRv4/english/, ppocr/utils/en_dict.txt of '
    'https://github.com/PaddlePaddle/PaddleOCR) exported to ONNX with paddle2onnx, or the '
    "ready-made ONNX exports published by the RapidOCR project")


def levenshtein(a: str, b: str) -> int:
    """Edit distance (unit-cost insertions, deletions, substitutions) between ``a`` and ``b``.

    Two-row dynamic programme, ``O(len(a) * len(b))`` time and ``O(min(len))`` memory.
    """
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalize_ocr_text(text: str) -> str:
    """The release's normalisation: spaces (``' '`` only) removed, lowercased."""
    return text.replace(' ', '').lower()


def ocr_similarity(recognized: str, target: str) -> float:
    """The release's reward of ``recognized`` text for ``target``, in [0, 1].

    Both are normalised (:func:`normalize_ocr_text`); 1 if the target is a substring of the
    recognised text, else ``1 - min(Lev(recognized, target), len(target)) / len(target)``.

    Raises:
        ValueError: if ``target`` is empty after normalisation.
    """
    recognized, target = normalize_ocr_text(recognized), normalize_ocr_text(target)
    if not target:
        raise ValueError('the OCR target text is empty (after removing spaces)')
    dist = 0 if target in recognized else min(levenshtein(recognized, target), len(target))
    return 1.0 - dist / len(target)


def prompt_ocr_target(prompt: Any) -> str:
    """The quoted target text of an OCR prompt, or a ``ValueError`` naming the prompt."""
    if not isinstance(prompt, str):
        raise TypeError(f'the OCR reward needs text prompts, got {type(prompt).__name__}: '
                        f'{prompt!r}')
    target = ocr_target(prompt)
    if not target or not normalize_ocr_text(target):
        raise ValueError(f'OCR prompt {prompt!r} quotes no target text: the OCR reward scores '
                         f'the text between the first pair of double quotes, e.g. '
                         f'\'a sign that says "Open"\'')
    return target


def to_uint8_hwc(samples: Tensor) -> np.ndarray:
    """``(B, 3, H, W)`` floats in [0, 1] -> ``(B, H, W, 3)`` uint8 as the release quantises."""
    if samples.ndim != 4 or samples.shape[1] != 3:
        raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
    uint8 = (samples.detach().float() * 255).round().clamp(0, 255).to(torch.uint8)
    return np.ascontiguousarray(uint8.permute(0, 2, 3, 1).cpu().numpy())


def _resolve(path: str | None, root: str | None) -> str | None:
    return None if path is None else resolve_weights_path(path, root)


@REWARDS.register_module()
class OCRReward(RewardScorer):
    """Edit-similarity of the OCR'd text to the prompt's quoted text, ``(B,)`` in [0, 1].

    Args:
        det_model_path: an ONNX PP-OCR text detector replacing the wheel's
            ``ch_PP-OCRv4_det``; relative paths are taken under ``root``.
        rec_model_path: an ONNX PP-OCR CTC recogniser replacing the wheel's ``ch_PP-OCRv4_rec``
            (e.g. ``en_PP-OCRv4_rec_infer.onnx``); relative paths are taken under ``root``.
        rec_keys_path: its character dictionary, one character per line (``en_dict.txt``);
            needed unless the model stores it in its ``character`` metadata. Only with
            ``rec_model_path``.
        root: reward-weights root (see :func:`reward_weights_root`); used for relative paths.
        text_score: lines recognised with a lower confidence are dropped (PaddleOCR's
            ``drop_score``).
        det_limit_side_len / det_limit_type: detector input size. ``'max'`` (PaddleOCR's
            default, 960) keeps images up to 960 px as they are; RapidOCR enlarges the limit to
            1500 / 2000 for larger images where PaddleOCR would shrink them to 960.
        det_box_thresh / det_unclip_ratio / det_use_dilation: DB post-processing; the defaults
            are PaddleOCR's (0.6, 1.5, no dilation), not RapidOCR's (0.5, 1.6, dilation).
        num_threads: onnxruntime intra-op threads (``None``: onnxruntime's default).
        name: key under which the reward is logged.
    """

    differentiable = False
    upper_bound = 1.0
    output_scale = 'edit similarity in [0, 1]; 1 = the quoted text is read in the image'

    def __init__(self, det_model_path: str | None = None, rec_model_path: str | None = None,
                 rec_keys_path: str | None = None, root: str | None = None,
                 text_score: float = 0.5, det_limit_side_len: int = 960,
                 det_limit_type: str = 'max', det_box_thresh: float = 0.6,
                 det_unclip_ratio: float = 1.5, det_use_dilation: bool = False,
                 num_threads: int | None = None, name: str | None = None) -> None:
        super().__init__(name)
        if rec_keys_path is not None and rec_model_path is None:
            raise ValueError('rec_keys_path is the dictionary of a replacement recogniser: '
                             'give rec_model_path too (the wheel\'s recogniser has its own)')
        if det_limit_type not in ('max', 'min'):
            raise ValueError(f"det_limit_type must be 'max' or 'min', got {det_limit_type!r}")
        require_weights(self.required_weights(det_model_path=det_model_path,
                                              rec_model_path=rec_model_path,
                                              rec_keys_path=rec_keys_path, root=root),
                        type(self).__name__)
        paths = {'det_model_path': _resolve(det_model_path, root),
                 'rec_model_path': _resolve(rec_model_path, root),
                 'rec_keys_path': _resolve(rec_keys_path, root)}
        self.det_model_path, self.rec_model_path, self.rec_keys_path = paths.values()
        options: dict[str, Any] = dict(
            use_cls=False, text_score=text_score, det_limit_side_len=det_limit_side_len,
            det_limit_type=det_limit_type, det_box_thresh=det_box_thresh,
            det_unclip_ratio=det_unclip_ratio, det_donot_use_dilation=not det_use_dilation)
        if num_threads is not None:
            options['intra_op_num_threads'] = num_threads
        self.engine = self._build_engine(paths, options)

    @classmethod
    def required_weights(cls, det_model_path: str | None = None,
                         rec_model_path: str | None = None, rec_keys_path: str | None = None,
                         root: str | None = None, **init_args: Any) -> list[WeightFiles]:
        """The user-given model files only (relative paths under ``root``); the wheel ships
        the default models."""
        paths = (_resolve(p, root) for p in (det_model_path, rec_model_path, rec_keys_path))
        return [WeightFiles.single(p, EN_MODELS_SOURCE) for p in paths if p is not None]

    def _build_engine(self, paths: dict[str, str | None], options: dict[str, Any]) -> Any:
        """RapidOCR with the given models (``None``: the wheel's), failing clearly on bad ones."""
        from rapidocr_onnxruntime import RapidOCR

        given = {k: v for k, v in paths.items() if v is not None}
        try:
            return RapidOCR(**given, **options)
        except ValueError as e:
            if 'character' not in str(e):
                raise
            raise MissingRewardWeightsError(
                f'the recogniser {paths["rec_model_path"]!r} stores no character dictionary: '
                f'pass rec_keys_path=<its dictionary, e.g. en_dict.txt> ({EN_MODELS_SOURCE})'
            ) from e
        except Exception as e:  # onnxruntime's InvalidProtobuf / Fail on a file that is no model
            if not given or type(e).__module__.split('.')[0] != 'onnxruntime':
                raise
            raise MissingRewardWeightsError(
                f'cannot load {sorted(given.values())} as ONNX PP-OCR models '
                f'({EN_MODELS_SOURCE}): {e}') from e

    def read_text(self, image: np.ndarray) -> str:
        """The raw recognised text of one uint8 ``(H, W, 3)`` image: kept lines, concatenated.

        Raises whatever the engine raises; ``''`` when no text is detected.
        """
        lines, _ = self.engine(image)
        return ''.join(text for _, text, score in (lines or ()) if float(score) > 0)

    def recognize(self, samples: Tensor) -> list[str | None]:
        """Raw recognised text of each image ``(B, 3, H, W)`` in [0, 1]; ``None``: OCR failed."""
        texts: list[str | None] = []
        for image in to_uint8_hwc(samples):
            try:
                texts.append(self.read_text(image))
            except Exception as e:  # the release scores a failing sample 0 and goes on
                from mmengine.logging import print_log

                print_log(f'OCRReward: OCR failed on an image ({type(e).__name__}: {e}); '
                          f'it scores 0', logger='current', level=logging.WARNING)
                texts.append(None)
        return texts

    @torch.no_grad()
    def score_details(self, samples: Tensor, prompts: Sequence[Any] | Tensor,
                      metadata: Sequence[dict] | None = None) -> dict[str, Tensor]:
        """``{'': (B,) reward, 'exact_match': (B,) 1.0 where the target is read in full}``."""
        if isinstance(prompts, Tensor) or len(prompts) != samples.shape[0]:
            raise ValueError(f'the OCR reward needs one text prompt per image: '
                             f'{samples.shape[0]} images, prompts {type(prompts).__name__} of '
                             f'length {len(prompts)}')
        targets = [prompt_ocr_target(p) for p in prompts]  # fail before the slow OCR
        texts = self.recognize(samples)
        rewards = [0.0 if text is None else ocr_similarity(text, target)
                   for text, target in zip(texts, targets, strict=True)]
        reward = torch.tensor(rewards, dtype=torch.float32, device=samples.device)
        return {MAIN_SCORE: reward, 'exact_match': (reward == 1).float()}


    def extra_repr(self) -> str:
        return (f'det_model_path={self.det_model_path!r}, '
                f'rec_model_path={self.rec_model_path!r}, rec_keys_path={self.rec_keys_path!r}')


__all__ = ['OCRReward', 'levenshtein', 'normalize_ocr_text', 'ocr_similarity',
           'prompt_ocr_target', 'to_uint8_hwc']
