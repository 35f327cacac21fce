"""Offline tokenizers of the shapes grammar: one token per word, no prompt truncated."""

from __future__ import annotations

import pytest

from rtdmd.datasets.shapes_prompts import all_prompts
from rtdmd.models.teachers.tokenizers import (
    check_word_tokens,
    clip_tokenizer,
    grammar_words,
    qwen_tokenizer,
    t5_tokenizer,
)


def test_grammar_words() -> None:
    words = grammar_words()
    assert len(words) == 22 and {'triangles', 'purple', 'above', 'four'} <= set(words)
    assert [len(w) for w in words] == sorted((len(w) for w in words), reverse=True)


@pytest.mark.parametrize('build', [clip_tokenizer, t5_tokenizer, qwen_tokenizer])
def test_every_word_is_one_token(build) -> None:
    check_word_tokens(build())


def test_prompts_fit_the_families_token_budgets() -> None:
    clip, t5, qwen = clip_tokenizer(), t5_tokenizer(), qwen_tokenizer()
    prompts = [it['prompt'] for it in all_prompts()]
    assert max(len(clip(p)['input_ids']) for p in prompts) <= 16  # SD3: text_tokens 16
    assert max(len(t5(p)['input_ids']) for p in prompts) <= 16
    chat = [qwen.apply_chat_template([{'role': 'user', 'content': p}], tokenize=False,
                                     add_generation_prompt=True, enable_thinking=False)
            for p in prompts]
    assert max(len(qwen(c)['input_ids']) for c in chat) <= 24  # FLUX.2: text_tokens 24
    pieces = qwen.convert_ids_to_tokens(qwen(chat[0])['input_ids'])
    assert pieces[:3] == ['<|im_start|>', 'user', 'Ċ'] and 'assistant' in pieces


def test_unknown_text_still_tokenizes() -> None:
    for tok in (clip_tokenizer(), t5_tokenizer(), qwen_tokenizer()):
        assert len(tok('a photo of a zebra')['input_ids']) > 5
