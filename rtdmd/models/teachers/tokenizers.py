"""Offline tokenizers for the shapes world's grammar: CLIP BPE, T5 Unigram, Qwen2 byte-level BPE.

Each is the real ``transformers`` class built from an in-memory vocabulary (no hub): every word
of the grammar (:func:`grammar_words`) is one token, and any other text falls back to letters
(CLIP, T5) or bytes (Qwen), so an arbitrary prompt still tokenizes. BPE merges are chains that
build each word left to right, longest words first, so a short word's merge never splits a
longer word; :func:`check_word_tokens` verifies that every word comes out whole.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from rtdmd.datasets.shapes_prompts import all_prompts

#: Qwen3's chat template, reduced to one user turn; like the real one it closes an empty think
#: block after the generation prompt when ``enable_thinking`` is False.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}")
QWEN_SPECIAL = ('<|endoftext|>', '<|im_start|>', '<|im_end|>', '<think>', '</think>')


def grammar_words() -> list[str]:
    """The words of every prompt of the grammar, longest first (then alphabetical)."""
    words = {w for item in all_prompts() for w in item['prompt'].split()}
    return sorted(words, key=lambda w: (-len(w), w))


def _chain(symbols: Sequence[str]) -> list[tuple[str, str]]:
    """Merges that join ``symbols`` left to right into one token."""
    merges, head = [], symbols[0]
    for sym in symbols[1:]:
        merges.append((head, sym))
        head += sym
    return merges


def _dedupe(merges: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(merges))


def clip_tokenizer(pad_token: str = '<|endoftext|>', model_max_length: int = 16):
    """A ``CLIPTokenizer`` with one token per grammar word (``word</w>``), letters otherwise.

    ``model_max_length`` is the number of CLIP tokens per prompt (start and end included): the
    SD3 pipeline pads every prompt to it.
    """
    from transformers import CLIPTokenizer

    letters = list(string.ascii_lowercase)
    merges = _dedupe([m for w in grammar_words() if len(w) > 1
                      for m in _chain([*w[:-1], w[-1] + '</w>'])])
    vocab: dict[str, int] = {}
    for token in ['<|startoftext|>', '<|endoftext|>', '!', *letters,
                  *(c + '</w>' for c in letters), *(a + b for a, b in merges)]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad_token,
                         model_max_length=model_max_length)


def t5_tokenizer():
    """A ``T5Tokenizer`` (Unigram) with one piece per grammar word, letters otherwise."""
    from transformers import T5Tokenizer

    pieces = [('<pad>', 0.0), ('</s>', 0.0), ('<unk>', 0.0), ('\u2581', -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase]
    pieces += [('\u2581' + w, -1.0) for w in grammar_words()]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def qwen_tokenizer():
    """A byte-level BPE ``Qwen2Tokenizer`` with Qwen3's chat template (reduced).

    Words after a space are one ``Ġword`` token, the first word of a message one ``word`` token;
    the chat template's words (``user``, ``assistant``) and blank lines are single tokens too.
    """
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    words = grammar_words()
    symbols = [['Ġ', *w] for w in words] + [list(w) for w in words if len(w) > 1]
    symbols += [list('user'), list('assistant'), ['Ċ', 'Ċ']]
    symbols.sort(key=len, reverse=True)  # longest first, as for CLIP
    merges = _dedupe([m for syms in symbols for m in _chain(syms)])
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for token in QWEN_SPECIAL:
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token='<|im_end|>',
                         pad_token=QWEN_SPECIAL[0], chat_template=CHAT_TEMPLATE)
    tok.add_special_tokens({'additional_special_tokens': list(QWEN_SPECIAL[1:])})
    return tok


def check_word_tokens(tokenizer, words: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` unless every word (default: the grammar's), inside a sentence, is
    one token."""
    for word in words or grammar_words():
        ids = tokenizer(f'a {word}', add_special_tokens=False)['input_ids']
        first = tokenizer('a', add_special_tokens=False)['input_ids']
        if len(ids) != len(first) + 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ValueError(f'{type(tokenizer).__name__}: {word!r} splits into {pieces}')


__all__ = ['CHAT_TEMPLATE', 'check_word_tokens', 'clip_tokenizer', 'grammar_words',
           'qwen_tokenizer', 't5_tokenizer']
