"""GenEval2 (Soft-TIFA): a tiny random Qwen3-VL with an offline Qwen2 BPE tokenizer, saved to a
folder and loaded through the scorer, checked against an independent per-atom computation."""

from __future__ import annotations

import math

import pytest
import torch

from rtdmd.registry import REWARDS
from rtdmd.testing.flux2 import qwen_tokenizer

# Qwen3-VL's chat template, reduced to one user turn of image / text parts; like Qwen3's it closes
# an empty think block after the generation prompt when enable_thinking is False.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- for part in message['content'] %}"
    "{%- if part['type'] == 'image' %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' %}{{- part['text'] }}{%- endif %}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")
SPECIAL = ('<|endoftext|>', '<|im_start|>', '<|im_end|>', '<think>', '</think>',
           '<|vision_start|>', '<|vision_end|>', '<|image_pad|>', '<|video_pad|>')
# Single tokens for the case / space variants of "Yes" and "two"; "seven" stays in pieces.
MERGES = (('Y', 'e'), ('Ye', 's'), ('y', 'e'), ('ye', 's'), ('t', 'w'), ('tw', 'o'), ('T', 'w'),
          ('Tw', 'o'), ('Ġ', 'Yes'), ('Ġ', 'yes'), ('Ġ', 'two'), ('Ġ', 'Two'))
SIDE = 64  # image side: 4 x 4 patches of 16 -> 4 merged image tokens
QUESTION_SUFFIX = ' Answer in one word.'


def _tokenizer():
    """The tokenizer and its vocabulary (token -> id)."""
    tok = qwen_tokenizer(MERGES, SPECIAL, chat_template=None)
    return tok, tok.get_vocab()


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok, vocab = _tokenizer()
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
        image_std=[0.5] * 3, size={'shortest_edge': 32 * 32, 'longest_edge': SIDE * SIDE})
    video_processor = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2)
    processor = Qwen3VLProcessor(image_processor=image_processor, tokenizer=tok,
                                 video_processor=video_processor, chat_template=CHAT_TEMPLATE)
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         head_dim=16, max_position_embeddings=256,
                         rope_parameters=dict(rope_type='default', rope_theta=10000.0,
                                              mrope_section=[2, 3, 3], mrope_interleaved=True)),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=32, num_position_embeddings=16,
                           deepstack_visual_indexes=[0, 1]),
        image_token_id=vocab['<|image_pad|>'], video_token_id=vocab['<|video_pad|>'],
        vision_start_token_id=vocab['<|vision_start|>'],
        vision_end_token_id=vocab['<|vision_end|>'])
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    with torch.no_grad():  # large answer-token logits, so the atom probabilities vary widely
        answers = [vocab[t] for t in ('Yes', 'yes', 'ĠYes', 'two', 'Two', '2', 'Ġtwo')]
        model.lm_head.weight[answers] = torch.randn(len(answers), 32) * 0.5
    root = tmp_path_factory.mktemp('rewards')
    folder = root / 'Qwen3-VL-8B-Instruct'
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return root


@pytest.fixture(scope='module')
def reward(root):
    import rtdmd.rewards.geneval2  # noqa: F401  (registers)

    return REWARDS.build(dict(type='GenEval2Reward', root=str(root), dtype='float32',
                              max_batch=4))


@pytest.fixture(scope='module')
def reference(root):
    """The per-atom probability computed here: model and processor loaded independently."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    folder = root / 'Qwen3-VL-8B-Instruct'
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    _, vocab = _tokenizer()
    variants = {  # the variants' first tokens, read off the vocabulary by hand
        'Yes': [vocab[t] for t in ('Yes', 'yes', 'ĠYes', 'Ġyes')],
        'two': [vocab[t] for t in ('two', 'Two', '2', 'Ġtwo', 'ĠTwo')],
    }

    def atom_prob(image: torch.Tensor, question: str, answer: str) -> float:
        text = ('<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>' + question
                + QUESTION_SUFFIX + '<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n')
        pixels = (image * 255).round().to(torch.uint8)
        inputs = processor(text=[text], images=[pixels], return_tensors='pt')
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        return logits.double().softmax(-1)[variants[answer]].sum().item()

    return atom_prob


VQA = [
    {'vqa_list': [['Is the cat black?', 'Yes'], ['How many cats are in the image?', 'two'],
                  ['Are there any cats in the image?', 'Yes']],
     'skills': ['attribute', 'count', 'object']},
    {'vqa_list': [['How many dogs?', 'two']], 'skills': ['count']},
    {'vqa_list': [['Is the large red bicycle to the left of the small wooden table?', 'Yes'],
                  ['Are there any bicycles in the image?', 'Yes']],
     'skills': ['position', 'object']},
]
PROMPTS = ['two black cats', 'two dogs', 'a bicycle left of a table']


def _images(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def test_score_equals_the_independent_geometric_mean(reward, reference) -> None:
    images = _images()
    details = reward.score_details(images, PROMPTS, VQA)
    scores = details['']
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    torch.testing.assert_close(reward(images, PROMPTS, VQA), scores, atol=0, rtol=0)
    for i, meta in enumerate(VQA):
        probs = [reference(images[i], q, a) for q, a in meta['vqa_list']]
        expected = math.prod(probs) ** (1 / len(probs))
        assert scores[i].item() == pytest.approx(expected, rel=1e-4, abs=1e-7)
        for skill in ('attribute', 'count', 'object', 'position', 'verb'):
            mine = [p for p, s in zip(probs, meta['skills'], strict=True) if s == skill]
            got = details[f'skill/{skill}'][i].item()
            if mine:
                assert got == pytest.approx(sum(mine) / len(mine), rel=1e-4, abs=1e-7)
            else:
                assert math.isnan(got)
    # the scores depend on the image and vary across atoms (a non-degenerate check)
    assert not torch.allclose(reward(_images(seed=2), PROMPTS, VQA), scores)
    assert scores.max() - scores.min() > 0.05, scores


def test_batch_size_and_max_batch_invariance(root, reward) -> None:
    images = _images()
    batch = reward(images, PROMPTS, VQA)
    single = torch.cat([reward(images[i:i + 1], PROMPTS[i:i + 1], VQA[i:i + 1])
                        for i in range(3)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-4)
    for max_batch in (1, 3, 64):  # every chunking pads differently (6 atoms of 3 lengths)
        other = REWARDS.build(dict(type='GenEval2Reward', root=str(root), dtype='float32',
                                   max_batch=max_batch))
        torch.testing.assert_close(other(images, PROMPTS, VQA), batch, atol=1e-5, rtol=1e-4)


def test_no_atoms_scores_minus_ten(reward) -> None:
    images = _images()
    metadata = [VQA[0], {'vqa_list': [], 'skills': []}, VQA[2]]
    details = reward.score_details(images, PROMPTS, metadata)
    assert details[''][1].item() == -10.0
    assert all(math.isnan(v[1].item()) for k, v in details.items() if k)
    torch.testing.assert_close(details[''][[0, 2]],
                               reward(images[[0, 2]], [PROMPTS[0], PROMPTS[2]],
                                      [VQA[0], VQA[2]]), atol=1e-5, rtol=1e-4)


def test_answer_variants_and_token_ids(reward) -> None:
    from rtdmd.rewards.geneval2 import answer_variants, geometric_mean

    assert answer_variants('two') == ['two', 'Two', '2', ' two', ' Two', ' 2']
    assert answer_variants('Yes') == ['Yes', 'yes', ' Yes', ' yes']
    assert answer_variants('3') == ['3', 'three', 'Three', ' 3', ' three', ' Three']
    _, vocab = _tokenizer()
    assert sorted(reward.answer_token_ids('Yes')) == sorted(
        vocab[t] for t in ('Yes', 'yes', 'ĠYes', 'Ġyes'))
    # " 2" is split as space + digit (as in Qwen): its bare-space first piece is not counted
    assert sorted(reward.answer_token_ids('two')) == sorted(
        vocab[t] for t in ('two', 'Two', '2', 'Ġtwo', 'ĠTwo'))
    # "seven" is split by the tiny BPE: first pieces 's', 'S', '7' ('Ġ' of " seven" skipped)
    assert sorted(reward.answer_token_ids('seven')) == sorted(vocab[t] for t in 'sS7')
    p = torch.tensor([0.25, 1.0, 0.0625])
    assert geometric_mean(p).item() == pytest.approx(0.25)
    assert geometric_mean(torch.tensor([0.5, 0.0])).item() == 0.0
    assert geometric_mean(torch.tensor([1.0, 0.0]), floor=1e-6).item() == pytest.approx(1e-3)


def test_real_geneval2_metadata_runs(reward) -> None:
    from rtdmd.datasets.text_prompts import load_benchmark

    items = load_benchmark('geneval2', max_prompts=2)
    scores = reward(_images(2), [it['prompt'] for it in items], [it['metadata'] for it in items])
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()
    assert not reward.differentiable and reward.upper_bound == 1.0


def test_missing_metadata_and_weights(tmp_path, reward) -> None:
    from rtdmd.rewards.weights import MissingRewardWeightsError

    with pytest.raises(ValueError, match="vqa_list"):
        reward(_images(2), PROMPTS[:2])
    with pytest.raises(ValueError, match=r"metadata\[1\] has no field 'vqa_list'"):
        reward(_images(2), PROMPTS[:2], [VQA[0], {'skills': ['count']}])
    with pytest.raises(ValueError, match=r"\['skills'\] has 2 entries"):
        reward(_images(1), PROMPTS[:1], [{'vqa_list': [['Is it?', 'Yes']], 'skills': ['a', 'b']}])
    with pytest.raises(MissingRewardWeightsError,
                       match='(?s)GenEval2Reward.*Qwen3-VL-8B-Instruct.*config.json.*'
                             'Qwen/Qwen3-VL-8B-Instruct'):
        REWARDS.build(dict(type='GenEval2Reward', root=str(tmp_path)))
