"""OCR reward on the real PP-OCR networks shipped in the rapidocr-onnxruntime wheel.

Images are rendered here with PIL and matplotlib's DejaVuSans; the reference reward is computed
independently from the engine's own reading of the same uint8 array.
"""

from __future__ import annotations

import os.path as osp
import random
import re
import shutil
from functools import cache

import numpy as np
import pytest
import torch

from rtdmd.registry import REWARDS
from rtdmd.rewards.ocr import (
    OCRReward,
    levenshtein,
    ocr_similarity,
    prompt_ocr_target,
    to_uint8_hwc,
)
from rtdmd.rewards.weights import MissingRewardWeightsError

pytest.importorskip('rapidocr_onnxruntime')


def render(text: str, size: int = 256, font_size: int = 40) -> torch.Tensor:
    """Black DejaVuSans ``text`` centred on white, ``(3, size, size)`` in [0, 1]."""
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(
        osp.join(matplotlib.get_data_path(), 'fonts', 'ttf', 'DejaVuSans.ttf'), font_size)
    image = Image.new('RGB', (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size - right + left) / 2 - left, (size - bottom + top) / 2 - top), text,
              fill=(0, 0, 0), font=font)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255


@pytest.fixture(scope='module')
def reward() -> OCRReward:
    return REWARDS.build(dict(type='OCRReward'))


# ---- the formula ---------------------------------------------------------------------------

@cache
def _lev_recursive(a: str, b: str) -> int:
    """Independent reference: the textbook recursion, memoised."""
    if not a or not b:
        return len(a) + len(b)
    return min(_lev_recursive(a[1:], b) + 1, _lev_recursive(a, b[1:]) + 1,
               _lev_recursive(a[1:], b[1:]) + (a[0] != b[0]))


@pytest.mark.parametrize('a, b, d', [
    ('', '', 0), ('', 'abc', 3), ('abc', '', 3), ('kitten', 'sitting', 3), ('flaw', 'lawn', 2),
    ('saturday', 'sunday', 3), ('abc', 'abc', 0), ('abc', 'acb', 2), ('a', 'b', 1),
    ('intention', 'execution', 5)])
def test_levenshtein_known_values(a: str, b: str, d: int) -> None:
    assert levenshtein(a, b) == d


def test_levenshtein_is_a_metric_and_matches_the_recursion() -> None:
    rng = random.Random(0)

    def word() -> str:
        return ''.join(rng.choice('abc') for _ in range(rng.randint(0, 7)))

    for _ in range(300):
        a, b, c = word(), word(), word()
        d_ab = levenshtein(a, b)
        assert d_ab == _lev_recursive(a, b)
        assert levenshtein(a, a) == 0 and (d_ab == 0) == (a == b)
        assert d_ab == levenshtein(b, a)
        assert levenshtein(a, c) <= d_ab + levenshtein(b, c)
        assert abs(len(a) - len(b)) <= d_ab <= max(len(a), len(b))


@pytest.mark.parametrize('recognized, target, expected', [
    ('OPEN 24 Hours daily', 'open 24 hours', 1.0),  # substring after normalisation
    ('xxHelloWorldxx', 'hello world', 1.0),
    ('helo', 'hello', 0.8),  # one insertion
    ('hallo', 'Hello', 0.8),  # one substitution
    ('hollow', 'hello', 0.6),
    ('', 'abc', 0.0),  # distance = len
    ('a completely different sentence', 'ab', 0.0),  # distance capped at len
    ('zz', 'abcd', 0.0),
    ('abXd', 'abcd', 0.75),
])
def test_reward_formula_hand_computed(recognized: str, target: str, expected: float) -> None:
    assert ocr_similarity(recognized, target) == pytest.approx(expected, abs=1e-12)


def test_target_is_the_first_quoted_text_and_its_absence_is_named() -> None:
    assert prompt_ocr_target('a sign "Open" next to "Closed"') == 'Open'
    for prompt in ('a sign with no quotes', 'one " quote only', 'empty "" quotes', 'blank " "'):
        with pytest.raises(ValueError, match=re.escape(repr(prompt)) + ' quotes no target text'):
            prompt_ocr_target(prompt)
    with pytest.raises(TypeError, match='text prompts'):
        prompt_ocr_target(3)


def test_images_reach_the_engine_as_the_release_quantises_them() -> None:
    x = torch.rand(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)) * 1.2 - 0.1
    ref = np.clip(np.round(x.numpy() * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    out = to_uint8_hwc(x)
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, ref)
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        to_uint8_hwc(x[:, :1])


# ---- the real engine -----------------------------------------------------------------------

def test_clear_rendering_of_the_target_scores_one(reward: OCRReward) -> None:
    images = torch.stack([render('Hello'), render('OPEN 24 HOURS', font_size=28)])
    prompts = ['a neon sign that says "hello" on a wall', 'a shop sign reading "Open 24 hours"']
    details = reward.score_details(images, prompts)
    assert details[''].tolist() == [1.0, 1.0]
    assert details['exact_match'].tolist() == [1.0, 1.0]
    assert not reward.differentiable and reward.upper_bound == 1.0


def test_other_word_scores_the_formula_on_what_the_engine_read(reward: OCRReward) -> None:
    image = render('Hello')
    r = reward(image[None], ['a sign that says "Hollow"'])
    # the engine's own reading of the same array, scored with the reference recursion
    lines, _ = reward.engine(to_uint8_hwc(image[None])[0])
    read = ''.join(text for _, text, _ in lines).replace(' ', '').lower()
    assert read == 'hello'
    expected = 1 - min(_lev_recursive(read, 'hollow'), 6) / 6
    assert r.item() == pytest.approx(expected, abs=1e-6) and r.item() < 1


def test_blank_images_score_zero(reward: OCRReward) -> None:
    images = torch.stack([torch.ones(3, 256, 256), torch.zeros(3, 256, 256),
                          torch.full((3, 256, 256), 0.5)])
    details = reward.score_details(images, ['"Open"'] * 3)
    assert details[''].tolist() == [0.0, 0.0, 0.0]
    assert details['exact_match'].tolist() == [0.0, 0.0, 0.0]
    assert reward.recognize(images[:1]) == ['']


def test_batch_invariance(reward: OCRReward) -> None:
    images = torch.stack([render('Hello'), render('Coffee'), torch.ones(3, 256, 256)])
    prompts = ['"Hello"', 'a cup labelled "Toffee"', '"blank"']
    batch = reward(images, prompts)
    single = torch.cat([reward(images[i:i + 1], prompts[i:i + 1]) for i in range(3)])
    assert batch.shape == (3,) and batch.dtype == torch.float32
    torch.testing.assert_close(batch, single, atol=0, rtol=0)
    assert batch[0] == 1 and 0 < batch[1] < 1 and batch[2] == 0


def test_bad_inputs_fail_clearly(reward: OCRReward) -> None:
    image = render('Hello')[None]
    with pytest.raises(ValueError, match="'a plain prompt' quotes no target text"):
        reward(image, ['a plain prompt'])
    with pytest.raises(ValueError, match='one text prompt per image'):
        reward(image.expand(2, -1, -1, -1), ['"a"'])
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        reward(image[:, :1], ['"a"'])


# ---- model overrides -----------------------------------------------------------------------

def _wheel_rec_model() -> str:
    import rapidocr_onnxruntime

    return osp.join(osp.dirname(rapidocr_onnxruntime.__file__), 'models',
                    'ch_PP-OCRv4_rec_infer.onnx')


def test_override_models_load_from_the_weights_root(tmp_path, reward: OCRReward) -> None:
    (tmp_path / 'ocr').mkdir()
    shutil.copy(_wheel_rec_model(), tmp_path / 'ocr' / 'rec.onnx')
    # The recogniser's own dictionary with the case of every letter swapped: reading through
    # this file (not the one in the model's metadata) turns 'Hello' into 'hELLO'.
    chars = reward.engine.text_rec.session.get_character_list()
    (tmp_path / 'ocr' / 'keys.txt').write_text('\n'.join(c.swapcase() for c in chars) + '\n',
                                               encoding='utf-8')
    image = render('Hello')[None]
    same = OCRReward(rec_model_path='ocr/rec.onnx', root=str(tmp_path))
    assert same.recognize(image) == ['Hello']
    swapped = OCRReward(rec_model_path=str(tmp_path / 'ocr' / 'rec.onnx'),
                        rec_keys_path='ocr/keys.txt', root=str(tmp_path))
    assert swapped.recognize(image) == ['hELLO']


def test_missing_or_broken_override_models(tmp_path) -> None:
    with pytest.raises(MissingRewardWeightsError, match='(?s)OCRReward.*en_rec.onnx.*PaddleOCR'):
        OCRReward(rec_model_path='ocr/en_rec.onnx', root=str(tmp_path))
    with pytest.raises(MissingRewardWeightsError, match='(?s)det.onnx'):
        OCRReward(det_model_path=str(tmp_path / 'det.onnx'))
    shutil.copy(_wheel_rec_model(), tmp_path / 'rec.onnx')
    with pytest.raises(MissingRewardWeightsError, match='(?s)en_dict.txt'):
        OCRReward(rec_model_path='rec.onnx', rec_keys_path='en_dict.txt', root=str(tmp_path))
    with pytest.raises(ValueError, match='give rec_model_path too'):
        OCRReward(rec_keys_path='en_dict.txt', root=str(tmp_path))
    (tmp_path / 'junk.onnx').write_bytes(b'not an onnx model')
    with pytest.raises(MissingRewardWeightsError, match='(?s)junk.onnx.*ONNX PP-OCR'):
        OCRReward(rec_model_path='junk.onnx', root=str(tmp_path))
