"""GenEval2: Soft-TIFA with Qwen3-VL-8B-Instruct (not differentiable).

Every GenEval2 prompt comes with its VQA atoms, ``metadata['vqa_list'] = [[question, answer],
...]`` (and ``metadata['skills']``, one skill per atom), which the prompt loader puts into the
metadata. For each atom the VLM is asked ``"<question> Answer in one word."`` about the image; the
atom's probability is the probability mass that the **first generated token** puts on the
answer's variants, and the prompt's score is the geometric mean of its atom probabilities, in
[0, 1]. A prompt with no atoms scores ``-10``, the failure value that the benchmark harness drops
as invalid. That is all the release description gives (ALGORITHM.md §5.1); no reference code
was found on the package registry (``geneval2`` / ``geneval-2`` are not served), so the
remaining choices are made here and stated:

* **Answer variants.** For an answer ``a`` (stripped): ``a``, ``a.lower()``, ``a.capitalize()``;
  a number word gets its digits and a digit string gets its word (``"two"`` <-> ``"2"``, 0-20);
  each of these with and without a leading space (Qwen's byte-level BPE keeps the space in the
  token, ``" yes"`` != ``"yes"``). The first token of each variant is taken and the token ids are
  deduplicated, so each token counts once; a first token that decodes to whitespace only is
  dropped (Qwen's pre-tokenizer splits digits off, ``" 2"`` -> ``" "`` + ``"2"``, and a bare
  space is no answer). Short answer words are single tokens in Qwen's vocabulary; with another
  tokenizer a multi-token variant contributes its first piece.
* **Prompt.** One user message holding the image then the text
  ``question + " Answer in one word."``, rendered with the checkpoint's chat template,
  ``add_generation_prompt=True`` and ``enable_thinking=False`` (honoured by Qwen3 templates that
  have a thinking switch, ignored by the Instruct template that has none).
* **Probability.** ``softmax`` over the full vocabulary of the logits at the last position (the
  next-token distribution after the generation prompt), computed in float32, without sampling
  or temperature.
* **Geometric mean.** ``exp(mean(log(max(p, floor))))`` in float64 with ``floor = 0`` by default:
  the exact geometric mean, ``0`` as soon as one atom has probability 0 (set ``floor`` e.g. to
  ``1e-6`` to keep such prompts distinguishable).
* **Images.** Float images in [0, 1] are quantised to uint8 (``round(255 x)``), as a PIL image
  the release would hand the processor, and resized / normalised by the checkpoint's
  ``Qwen2VLImageProcessor`` settings (``preprocessor_config.json``).

Batching: all atoms of all images of a call are flattened into ``(image, question)`` pairs and run
in forward passes of at most ``max_batch`` pairs, left-padded so that the last position of every
row is the next-token position; scores do not depend on the chunking.

Weights: the transformers snapshot of ``Qwen/Qwen3-VL-8B-Instruct`` in
``<root>/Qwen3-VL-8B-Instruct`` (``root`` resolved by
:func:`rtdmd.rewards.weights.reward_weights_root`), loaded in float16 by default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from rtdmd.registry import REWARDS

from .base import MAIN_SCORE, RewardScorer
from .weights import WeightFiles, require_weights, resolve_weights_path

QWEN3_VL_PATH = 'Qwen3-VL-8B-Instruct'
QWEN3_VL_SOURCE = 'Qwen/Qwen3-VL-8B-Instruct'
#: What the model folder must hold (``a|b``: either file).
QWEN3_VL_FILES = ('config.json', 'model.safetensors.index.json|model.safetensors',
                  'preprocessor_config.json|processor_config.json',
                  'tokenizer.json|vocab.json')
#: Appended to every atom question.
QUESTION_SUFFIX = ' Answer in one word.'
#: Score of a prompt without atoms; the benchmark harness drops it as invalid.
FAILURE_SCORE = -10.0
#: The GenEval2 skills, always reported (NaN where a sample has none); others found are added.
GENEVAL2_SKILLS = ('attribute', 'count', 'object', 'position', 'verb')
SKILL_PREFIX = 'skill/'

_NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine',
                 'ten', 'eleven', 'twelve', 'thirteen', 'fourteen', 'fifteen', 'sixteen',
                 'seventeen', 'eighteen', 'nineteen', 'twenty')


def answer_variants(answer: str) -> list[str]:
    """The strings whose first tokens count as ``answer``, in a fixed order, without repeats.

    ``"two"`` -> ``two, Two, 2`` each also with a leading space; ``"Yes"`` -> ``Yes, yes`` and
    `` Yes, yes``.
    """
    base = answer.strip()
    forms = [base, base.lower(), base.capitalize()]
    word = base.lower()
    if word in _NUMBER_WORDS:
        forms.append(str(_NUMBER_WORDS.index(word)))
    elif base.isdigit() and int(base) < len(_NUMBER_WORDS):
        forms += [_NUMBER_WORDS[int(base)], _NUMBER_WORDS[int(base)].capitalize()]
    variants = forms + [' ' + f for f in forms]
    return list(dict.fromkeys(v for v in variants if v.strip()))


def geometric_mean(probs: Tensor, floor: float = 0.0) -> Tensor:
    """``exp(mean(log(max(p, floor))))`` of atom probabilities ``(N,)`` -> scalar, float64."""
    return probs.double().clamp_min(floor).log().mean().exp()


def _vqa_atoms(metadata: Sequence[dict] | None, n: int) -> list[list[tuple[str, str, str]]]:
    """Per sample ``[(question, answer, skill), ...]`` from the metadata; clear errors."""
    if metadata is None or len(metadata) != n:
        got = 'none' if metadata is None else f'{len(metadata)} entries'
        raise ValueError(f'GenEval2Reward needs one metadata dict per image ({n}) with the '
                         f"field 'vqa_list' = [[question, answer], ...]; got {got}. Load the "
                         f"prompts with TextPromptDataset(benchmark='geneval2').")
    atoms = []
    for i, meta in enumerate(metadata):
        if not isinstance(meta, dict) or 'vqa_list' not in meta:
            raise ValueError(f"GenEval2Reward: metadata[{i}] has no field 'vqa_list' "
                             f'([[question, answer], ...]); load the prompts with '
                             f"TextPromptDataset(benchmark='geneval2').")
        vqa, skills = meta['vqa_list'], meta.get('skills')
        if not isinstance(vqa, Sequence) or isinstance(vqa, str) or not all(
                isinstance(p, Sequence) and len(p) == 2 and all(isinstance(x, str) for x in p)
                for p in vqa):
            raise ValueError(f"GenEval2Reward: metadata[{i}]['vqa_list'] must be a list of "
                             f'[question, answer] strings, got {vqa!r}')
        if skills is None:
            skills = [''] * len(vqa)
        elif len(skills) != len(vqa):
            raise ValueError(f"GenEval2Reward: metadata[{i}]['skills'] has {len(skills)} entries "
                             f"but 'vqa_list' has {len(vqa)}; they go in pairs")
        atoms.append([(q, a, str(s)) for (q, a), s in zip(vqa, skills, strict=True)])
    return atoms


@REWARDS.register_module()
class GenEval2Reward(RewardScorer):
    """Soft-TIFA GenEval2 score with Qwen3-VL: geometric mean of atom answer probabilities.

    Args:
        path: the Qwen3-VL model folder; relative paths are taken under ``root``.
        root: reward-weights root (see :func:`reward_weights_root`).
        max_batch: most ``(image, question)`` pairs per forward pass (bounds the memory).
        dtype: weight dtype (``'float16'`` as in the release; tests use ``'float32'``).
        floor: probabilities are floored here before the log of the geometric mean (0: none).
        name: key under which the reward is logged.
    """

    differentiable = False
    upper_bound = 1.0
    output_scale = 'geometric mean of atom probabilities in [0, 1] (-10: no atoms, invalid)'

    def __init__(self, path: str = QWEN3_VL_PATH, root: str | None = None, max_batch: int = 16,
                 dtype: str = 'float16', floor: float = 0.0, name: str | None = None) -> None:
        super().__init__(name)
        if max_batch < 1:
            raise ValueError(f'max_batch must be >= 1, got {max_batch}')
        if not 0.0 <= floor < 1.0:
            raise ValueError(f'floor must be in [0, 1), got {floor}')
        require_weights(self.required_weights(path=path, root=root), type(self).__name__)
        path = resolve_weights_path(path, root)
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.path, self.max_batch, self.floor = path, max_batch, floor
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(
            path, dtype=getattr(torch, dtype)).eval().requires_grad_(False)
        self.processor = AutoProcessor.from_pretrained(path)
        if getattr(self.processor, 'chat_template', None) is None:
            raise ValueError(f'{path}: the processor has no chat template (chat_template.json or '
                             f'chat_template.jinja of {QWEN3_VL_SOURCE})')
        # Left padding: the last position of every row is its next-token position.
        self.processor.tokenizer.padding_side = 'left'
        self._variant_ids: dict[str, list[int]] = {}

    @classmethod
    def required_weights(cls, path: str = QWEN3_VL_PATH, root: str | None = None,
                         **init_args: Any) -> list[WeightFiles]:
        """The Qwen3-VL folder (a relative path under ``root``)."""
        return [WeightFiles(resolve_weights_path(path, root), QWEN3_VL_FILES, QWEN3_VL_SOURCE)]

    def train(self, mode: bool = True) -> GenEval2Reward:
        """A frozen scorer: the VLM stays in eval mode."""
        super().train(mode)
        self.model.eval()
        return self

    def answer_token_ids(self, answer: str) -> list[int]:
        """Deduplicated first-token ids of :func:`answer_variants` of ``answer`` (cached)."""
        if answer not in self._variant_ids:
            tok = self.processor.tokenizer
            firsts = [tok.encode(v, add_special_tokens=False)[:1] for v in answer_variants(answer)]
            # A bare-space first piece (Qwen splits " 2" into " " + "2") is no answer.
            self._variant_ids[answer] = list(dict.fromkeys(
                i[0] for i in firsts if i and tok.decode(i).strip()))
        return self._variant_ids[answer]

    def chat_text(self, question: str) -> str:
        """The rendered chat prompt of one atom: image, then ``question + QUESTION_SUFFIX``."""
        messages = [{'role': 'user', 'content': [
            {'type': 'image'}, {'type': 'text', 'text': question + QUESTION_SUFFIX}]}]
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True,
                                                  enable_thinking=False)

    @torch.no_grad()
    def answer_probs(self, images: Sequence[Tensor], questions: Sequence[str],
                     answers: Sequence[str]) -> Tensor:
        """First-token probability mass on each answer's variants, ``(N,)`` float32.

        Args:
            images: ``N`` uint8 ``(3, H, W)`` images (repeats allowed), one per question.
            questions: ``N`` atom questions (without the suffix).
            answers: ``N`` expected answers.
        """
        device = next(self.model.parameters()).device
        out = []
        for start in range(0, len(questions), self.max_batch):
            stop = start + self.max_batch
            inputs = self.processor(text=[self.chat_text(q) for q in questions[start:stop]],
                                    images=list(images[start:stop]), padding=True,
                                    return_tensors='pt').to(device)
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
            probs = logits.float().softmax(dim=-1)
            for row, answer in zip(probs, answers[start:stop], strict=True):
                out.append(row[self.answer_token_ids(answer)].sum())
        return torch.stack(out).cpu() if out else torch.zeros(0)

    def score_details(self, samples: Tensor, prompts: Sequence[Any] | Tensor | None = None,
                      metadata: Sequence[dict] | None = None) -> dict[str, Tensor]:
        """``{'': (B,) score, 'skill/<name>': (B,) mean atom probability (NaN: no such atom)}``.

        Args:
            samples: ``(B, 3, H, W)`` images, floats in [0, 1].
            prompts: the prompt texts (unused: the atoms carry the questions).
            metadata: ``B`` dicts with ``vqa_list`` (and optionally ``skills``).
        """
        if samples.ndim != 4 or samples.shape[1] != 3:
            raise ValueError(f'expected images (B, 3, H, W), got shape {tuple(samples.shape)}')
        atoms = _vqa_atoms(metadata, samples.shape[0])
        pixels = (samples.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
        flat = [(i, q, a) for i, sample in enumerate(atoms) for q, a, _ in sample]
        probs = self.answer_probs([pixels[i] for i, _, _ in flat], [q for _, q, _ in flat],
                                  [a for _, _, a in flat])
        skills = list(GENEVAL2_SKILLS) + sorted(
            {s for sample in atoms for _, _, s in sample if s} - set(GENEVAL2_SKILLS))
        scores = torch.full((len(atoms),), FAILURE_SCORE, dtype=torch.float64)
        per_skill = {s: torch.full((len(atoms),), math.nan, dtype=torch.float64) for s in skills}
        start = 0
        for i, sample in enumerate(atoms):
            p = probs[start:start + len(sample)]
            start += len(sample)
            if len(sample):
                scores[i] = geometric_mean(p, self.floor)
            for skill in skills:
                mask = torch.tensor([s == skill for _, _, s in sample], dtype=torch.bool)
                if mask.any():
                    per_skill[skill][i] = p[mask].double().mean()
        out = {MAIN_SCORE: scores.float().to(samples.device)}
        out.update({SKILL_PREFIX + s: v.float().to(samples.device) for s, v in per_skill.items()})
        return out


    def extra_repr(self) -> str:
        return f'path={self.path!r}, max_batch={self.max_batch}, floor={self.floor}'


__all__ = ['GenEval2Reward', 'answer_variants', 'geometric_mean']
